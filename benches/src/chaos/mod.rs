//! The chaos run behind `scripts/chaos.sh`: a bounded workload against a 3-node cluster while
//! a seeded nemesis kills, partitions and pauses nodes, then checks of what the clients saw.

pub mod api;
pub mod check;
pub mod cluster;
pub mod nemesis;
pub mod tail;
pub mod transfers;
pub mod workload;
pub mod ws;
