//! The fault schedule of a chaos run, derived from a seed alone: the same seed gives the same
//! faults, on the same nodes, at the same offsets, whatever the cluster does meanwhile.

use std::fmt;

/// What a step does to one node for `hold_ms`, after which the node is brought back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` (or `docker kill`), then start it again on the same data.
    Kill,
    /// Cut it off from its peers (the isolate switch, or `docker network disconnect`), then heal.
    Partition,
    /// SIGSTOP (or `docker pause`), then SIGCONT.
    Pause,
    /// A graceful stop, SIGTERM (or `docker stop`): the node hands its leaderships over
    /// first; then start it again.
    Stop,
    /// `CLUSTER TRANSFER-LEADER n`: every group's leadership to the node, asked through it;
    /// the balancers spread it again afterwards.
    Transfer,
    /// Replace the node as one replaces a failed machine: `CLUSTER REMOVE NODE n` through
    /// another node, stop it, delete its data; then start it empty with `cluster.join`, and it
    /// comes back as a learner, then a voter. (Docker: a graceful stop and start instead.)
    Replace,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill -9",
            Fault::Partition => "partition",
            Fault::Pause => "pause",
            Fault::Stop => "graceful stop",
            Fault::Transfer => "transfer leadership",
            Fault::Replace => "remove and replace",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Offset from the start of the workload.
    pub at_ms: u64,
    pub hold_ms: u64,
    pub fault: Fault,
    /// 1-based node id.
    pub node: usize,
}

/// Faults start after this much undisturbed workload, and the last one ends at least this
/// long before the workload stops (so the end of a run sees a healthy cluster working).
pub const QUIET_MS: u64 = 3_000;
/// Bounds of a fault's length.
pub const HOLD_MS_MIN: u64 = 1_000;
pub const HOLD_MS_MAX: u64 = 6_000;
/// Bounds of the pause between the end of one fault and the start of the next.
pub const GAP_MS_MIN: u64 = 1_000;
pub const GAP_MS_MAX: u64 = 5_000;

/// One fault at a time, so a majority is always up: every acknowledged write must survive
/// and the workload keeps making progress through every fault.
pub fn schedule(seed: u64, workload_ms: u64, nodes: usize) -> Vec<Step> {
    assert!(nodes >= 1, "a schedule needs a node to act on");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut steps = Vec::new();
    let mut at = QUIET_MS;
    loop {
        let hold_ms = rng.u64(HOLD_MS_MIN..=HOLD_MS_MAX);
        if at + hold_ms + QUIET_MS > workload_ms {
            break;
        }
        let fault = match rng.u8(0..6) {
            0 => Fault::Kill,
            1 => Fault::Partition,
            2 => Fault::Pause,
            3 => Fault::Stop,
            4 => Fault::Transfer,
            _ => Fault::Replace,
        };
        steps.push(Step { at_ms: at, hold_ms, fault, node: rng.usize(1..=nodes) });
        at += hold_ms + rng.u64(GAP_MS_MIN..=GAP_MS_MAX);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_faults_never_overlap() {
        let a = schedule(42, 300_000, 3);
        assert_eq!(a, schedule(42, 300_000, 3));
        assert_ne!(a, schedule(43, 300_000, 3));
        assert!(a.len() > 20, "a 5-minute run has faults throughout: {}", a.len());
        for w in a.windows(2) {
            assert!(w[0].at_ms + w[0].hold_ms < w[1].at_ms, "overlap: {w:?}");
        }
        let last = a.last().expect("steps");
        assert!(last.at_ms + last.hold_ms + QUIET_MS <= 300_000);
        assert!(a.iter().all(|s| (1..=3).contains(&s.node)));
        for f in [Fault::Kill, Fault::Partition, Fault::Pause, Fault::Stop, Fault::Transfer, Fault::Replace] {
            assert!(a.iter().any(|s| s.fault == f), "{f} never scheduled");
        }
    }

    #[test]
    fn a_run_too_short_for_a_fault_has_none() {
        assert!(schedule(1, QUIET_MS * 2, 3).is_empty());
    }
}
