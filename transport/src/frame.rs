//! The frame codec: a fixed 24-byte header followed by an rkyv body. The only place that knows
//! the byte layout of node-to-node traffic.
//!
//! Header (little-endian): `magic [4] | version u8 | kind u8 | reserved u16 | group u32 |
//! request_id u64 | body_len u32`. A frame is checked in this order: magic, version, kind,
//! length against [`FRAME_BYTES_MAX`]; the body is then validated by rkyv's bytecheck
//! when it is accessed, so a peer can never make us read out of bounds.

use crate::error::{Error, Result};

pub const MAGIC: [u8; 4] = *b"KDBR";
pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 24;
/// The largest frame (header + body) we send or accept. Larger AppendEntries batches are
/// split by the sender; a single log entry is kept below this by the proposer.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// What a frame carries. Requests and their responses travel on one QUIC stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    HelloAck = 2,
    AppendRequest = 3,
    AppendResponse = 4,
    VoteRequest = 5,
    VoteResponse = 6,
    SnapshotRequest = 7,
    SnapshotResponse = 8,
    ForwardRequest = 9,
    ForwardResponse = 10,
    ReadIndexRequest = 11,
    ReadIndexResponse = 12,
    StatusRequest = 13,
    StatusResponse = 14,
    LeadershipRequest = 15,
    LeadershipResponse = 16,
    MembershipRequest = 17,
    MembershipResponse = 18,
    /// What a node is (`wire::NodeInfo`). Builds before it reset the stream as a bad frame,
    /// which the caller reads as "a node older than this request".
    InfoRequest = 19,
    InfoResponse = 20,
}

impl FrameKind {
    pub const ALL: [FrameKind; 20] = [
        FrameKind::Hello,
        FrameKind::HelloAck,
        FrameKind::AppendRequest,
        FrameKind::AppendResponse,
        FrameKind::VoteRequest,
        FrameKind::VoteResponse,
        FrameKind::SnapshotRequest,
        FrameKind::SnapshotResponse,
        FrameKind::ForwardRequest,
        FrameKind::ForwardResponse,
        FrameKind::ReadIndexRequest,
        FrameKind::ReadIndexResponse,
        FrameKind::StatusRequest,
        FrameKind::StatusResponse,
        FrameKind::LeadershipRequest,
        FrameKind::LeadershipResponse,
        FrameKind::MembershipRequest,
        FrameKind::MembershipResponse,
        FrameKind::InfoRequest,
        FrameKind::InfoResponse,
    ];

    pub fn from_u8(b: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The response kind a request kind expects.
    pub fn response(self) -> Option<FrameKind> {
        match self {
            FrameKind::Hello => Some(FrameKind::HelloAck),
            FrameKind::AppendRequest => Some(FrameKind::AppendResponse),
            FrameKind::VoteRequest => Some(FrameKind::VoteResponse),
            FrameKind::SnapshotRequest => Some(FrameKind::SnapshotResponse),
            FrameKind::ForwardRequest => Some(FrameKind::ForwardResponse),
            FrameKind::ReadIndexRequest => Some(FrameKind::ReadIndexResponse),
            FrameKind::StatusRequest => Some(FrameKind::StatusResponse),
            FrameKind::LeadershipRequest => Some(FrameKind::LeadershipResponse),
            FrameKind::MembershipRequest => Some(FrameKind::MembershipResponse),
            FrameKind::InfoRequest => Some(FrameKind::InfoResponse),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::HelloAck => "hello_ack",
            FrameKind::AppendRequest => "append",
            FrameKind::AppendResponse => "append_response",
            FrameKind::VoteRequest => "vote",
            FrameKind::VoteResponse => "vote_response",
            FrameKind::SnapshotRequest => "snapshot",
            FrameKind::SnapshotResponse => "snapshot_response",
            FrameKind::ForwardRequest => "forward",
            FrameKind::ForwardResponse => "forward_response",
            FrameKind::ReadIndexRequest => "read_index",
            FrameKind::ReadIndexResponse => "read_index_response",
            FrameKind::StatusRequest => "status",
            FrameKind::StatusResponse => "status_response",
            FrameKind::LeadershipRequest => "leadership",
            FrameKind::LeadershipResponse => "leadership_response",
            FrameKind::MembershipRequest => "membership",
            FrameKind::MembershipResponse => "membership_response",
            FrameKind::InfoRequest => "info",
            FrameKind::InfoResponse => "info_response",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    pub group: u32,
    pub request_id: u64,
    pub body_len: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[5] = self.kind as u8;
        // out[6..8] reserved, zero.
        out[8..12].copy_from_slice(&self.group.to_le_bytes());
        out[12..20].copy_from_slice(&self.request_id.to_le_bytes());
        out[20..24].copy_from_slice(&self.body_len.to_le_bytes());
        out
    }

    /// Parse and check a header. Errors name what was wrong; nothing here can panic.
    pub fn decode(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < HEADER_BYTES {
            return Err(Error::Frame(format!("header of {} bytes, expected {HEADER_BYTES}", bytes.len())));
        }
        if bytes[0..4] != MAGIC {
            return Err(Error::Frame("bad magic".into()));
        }
        if bytes[4] != FORMAT_VERSION {
            return Err(Error::Frame(format!("unsupported format version {}", bytes[4])));
        }
        let kind =
            FrameKind::from_u8(bytes[5]).ok_or_else(|| Error::Frame(format!("unknown frame kind {}", bytes[5])))?;
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(Error::Frame("reserved header bytes are not zero".into()));
        }
        let group = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let mut rid = [0u8; 8];
        rid.copy_from_slice(&bytes[12..20]);
        let body_len = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        if body_len as usize > FRAME_BYTES_MAX - HEADER_BYTES {
            return Err(Error::Frame(format!("body of {body_len} bytes exceeds frame_bytes_max {FRAME_BYTES_MAX}")));
        }
        Ok(Header { kind, group, request_id: u64::from_le_bytes(rid), body_len })
    }
}

/// Encode a whole frame: header then body.
pub fn encode_frame(kind: FrameKind, group: u32, request_id: u64, body: &[u8]) -> Result<Vec<u8>> {
    if body.len() > FRAME_BYTES_MAX - HEADER_BYTES {
        return Err(Error::Frame(format!("body of {} bytes exceeds frame_bytes_max {FRAME_BYTES_MAX}", body.len())));
    }
    let header = Header { kind, group, request_id, body_len: body.len() as u32 };
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    Ok(out)
}

/// Decode a whole frame held in memory (the fuzz target and tests use this; streams read
/// the header first so they never buffer an oversized body).
pub fn decode_frame(bytes: &[u8]) -> Result<(Header, &[u8])> {
    let header = Header::decode(bytes)?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() != header.body_len as usize {
        return Err(Error::Frame(format!("body is {} bytes, header says {}", body.len(), header.body_len)));
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(k in 0usize..14, group in any::<u32>(), rid in any::<u64>(),
                              body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let kind = FrameKind::ALL[k];
            let bytes = encode_frame(kind, group, rid, &body).unwrap();
            let (h, b) = decode_frame(&bytes).unwrap();
            prop_assert_eq!(h, Header { kind, group, request_id: rid, body_len: body.len() as u32 });
            prop_assert_eq!(b, &body[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_frame(&bytes);
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_size() {
        let good = encode_frame(FrameKind::VoteRequest, 1, 2, b"x").unwrap();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(decode_frame(&bad).unwrap_err().to_string().contains("magic"));
        let mut bad = good.clone();
        bad[4] = 99;
        assert!(decode_frame(&bad).unwrap_err().to_string().contains("version"));
        let mut bad = good.clone();
        bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_frame(&bad).unwrap_err().to_string().contains("frame_bytes_max"));
        let mut bad = good;
        bad[5] = 200;
        assert!(decode_frame(&bad).unwrap_err().to_string().contains("kind"));
    }
}
