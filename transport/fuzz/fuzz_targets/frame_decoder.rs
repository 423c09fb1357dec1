//! Fuzz target: arbitrary bytes through the frame decoder and every body reader. Run with
//! `cd transport/fuzz && cargo +nightly fuzz run frame_decoder`. Nothing may panic.
#![no_main]

use bytes::Bytes;
use kalamdb_transport::frame::decode_frame;
use kalamdb_transport::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, body)) = decode_frame(data) {
        let frame = Bytes::copy_from_slice(body);
        let _ = wire::read_append(&frame, &frame);
    }
    let raw = Bytes::copy_from_slice(data);
    let _ = wire::read_append(&raw, &raw);
    let _ = wire::from_bytes::<wire::VoteRequest>(data);
    let _ = wire::from_bytes::<wire::VoteResponse>(data);
    let _ = wire::from_bytes::<wire::AppendResponse>(data);
    let _ = wire::from_bytes::<wire::SnapshotRequest>(data);
    let _ = wire::from_bytes::<wire::ForwardRequest>(data);
    let _ = wire::from_bytes::<wire::ForwardResponse>(data);
    let _ = wire::from_bytes::<wire::Hello>(data);
    let _ = wire::from_bytes::<wire::StatusResponse>(data);
    let _ = wire::from_bytes::<wire::LeadershipRequest>(data);
    let _ = wire::from_bytes::<wire::LeadershipResponse>(data);
    let _ = wire::from_bytes::<wire::MembershipRequest>(data);
    let _ = wire::from_bytes::<wire::MembershipResponse>(data);
});
