//! Frame bodies: plain rkyv types, and their conversions to and from openraft's types.
//! Responses are small and are deserialized; AppendEntries requests are read in place.

use bytes::Bytes;
use kalamdb_log::types::{Entry, LogId, Vote};
use kalamdb_log::{EncodedCommand, OpResult};
use openraft::{CommittedLeaderId, EntryPayload};
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Error, Result};

pub const ENTRY_KIND_BLANK: u8 = 0;
pub const ENTRY_KIND_NORMAL: u8 = 1;
pub const ENTRY_KIND_MEMBERSHIP: u8 = 2;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WLogId {
    pub term: u64,
    pub node: u64,
    pub index: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WVote {
    pub term: u64,
    pub node: u64,
    pub committed: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: String,
    pub node_id: u64,
    /// Random per process start: a peer that sees a new incarnation knows the node restarted
    /// and that its own connection to the old process is dead.
    pub incarnation: u64,
    /// The sender's cluster layout (members and shard counts, see
    /// `TransportConfig::layout`): peers that disagree refuse each other, naming the
    /// difference.
    pub layout: String,
    pub proof: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WEntry {
    pub log_id: WLogId,
    pub kind: u8,
    /// For normal entries, the archived `LogCommand` exactly as the proposer encoded it.
    pub payload: Vec<u8>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub vote: WVote,
    pub prev: Option<WLogId>,
    pub commit: Option<WLogId>,
    pub entries: Vec<WEntry>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AppendResponse {
    Success,
    PartialSuccess(Option<WLogId>),
    Conflict,
    HigherVote(WVote),
    Error(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct VoteRequest {
    pub vote: WVote,
    pub last: Option<WLogId>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum VoteResponse {
    Ok { vote: WVote, granted: bool, last: Option<WLogId> },
    Error(String),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub vote: WVote,
    /// openraft's `SnapshotMeta` as JSON: rare, small, serde-only.
    pub meta_json: Vec<u8>,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SnapshotResponse {
    Ok { vote: WVote },
    Error(String),
}

/// A write forwarded to the node that leads its group: an archived `LogCommand`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ForwardRequest {
    pub command: Vec<u8>,
}

/// Failures a remote node reports for forwarded writes and read-index requests.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RemoteError {
    /// The remote node does not lead the group; nothing was proposed.
    NotLeader { leader: Option<u64> },
    /// Anything else, with the code the client should see.
    Failed { code: String, message: String },
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ForwardResponse {
    Ok { results: Vec<OpResult>, index: u64 },
    Err(RemoteError),
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReadIndexResponse {
    Ok { index: u64 },
    Err(RemoteError),
}

/// Moving a group's leadership between its voters (openraft 0.9 has no transfer of its own).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadershipRequest {
    /// To the group's leader: hand leadership to `target`, a voter of the group.
    TransferTo { target: u64 },
    /// To the chosen successor: start an election now. The leader has paused its writes and
    /// the successor holds its whole log, so the leader grants the vote.
    ElectNow,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum LeadershipResponse {
    /// `TransferTo`: the group's leader afterwards; `ElectNow`: the election started.
    Ok {
        leader: Option<u64>,
    },
    Err(RemoteError),
}

/// A membership change of one group, asked of its leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MembershipRequest {
    /// Add the node as a learner, wait until it holds the log, then make it a voter.
    AddVoter { node: u64, raft_addr: String, http_addr: String },
    /// Take the node out of the group (voter or learner).
    Remove { node: u64 },
    /// To a node just removed from the group: stop standing for its elections.
    Retired,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MembershipResponse {
    /// The group's voters once the change committed.
    Ok {
        voters: Vec<u64>,
    },
    Err(RemoteError),
}

/// One group as seen by the node that leads it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The lowest applied index whose files a reader on this node still copies (a snapshot
    /// being built, a backup); `u64::MAX` when none. No file retired after it may be deleted.
    pub files_needed_from: u64,
    /// (member, matched log index) as known by the leader.
    pub matched: Vec<(u64, u64)>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusResponse {
    pub node_id: u64,
    pub groups: Vec<GroupStatus>,
}

/// What a node is, as it tells its peers (`FrameKind::InfoRequest`). A later field needs a
/// request kind of its own: an older peer could not read this body with it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: u64,
    /// The highest apply format this node lets its groups move to: its build's, or lower when
    /// configured (`storage.apply_format_max`).
    pub apply_format_max: u32,
}

/// An empty body, for requests whose header says everything.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Empty;

/// A type that can be written as a frame body.
pub trait Encode:
    for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >
{
}

impl<T> Encode for T where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >
{
}

pub fn to_bytes<T: Encode>(value: &T) -> Result<Vec<u8>> {
    rkyv::to_bytes::<rkyv::rancor::Error>(value).map(|v| v.into_vec()).map_err(|e| Error::Frame(e.to_string()))
}

/// Validate and deserialize a (small) body.
pub fn from_bytes<T>(body: &[u8]) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    rkyv::from_bytes::<T, rkyv::rancor::Error>(body).map_err(|e| Error::Frame(format!("invalid body: {e}")))
}

impl From<LogId> for WLogId {
    fn from(l: LogId) -> WLogId {
        WLogId { term: l.leader_id.term, node: l.leader_id.node_id, index: l.index }
    }
}

impl From<WLogId> for LogId {
    fn from(w: WLogId) -> LogId {
        LogId::new(CommittedLeaderId::new(w.term, w.node), w.index)
    }
}

impl From<&ArchivedWLogId> for LogId {
    fn from(w: &ArchivedWLogId) -> LogId {
        LogId::new(CommittedLeaderId::new(w.term.to_native(), w.node.to_native()), w.index.to_native())
    }
}

impl From<&Vote> for WVote {
    fn from(v: &Vote) -> WVote {
        WVote { term: v.leader_id.term, node: v.leader_id.node_id, committed: v.committed }
    }
}

impl From<WVote> for Vote {
    fn from(w: WVote) -> Vote {
        if w.committed { Vote::new_committed(w.term, w.node) } else { Vote::new(w.term, w.node) }
    }
}

impl From<&ArchivedWVote> for Vote {
    fn from(w: &ArchivedWVote) -> Vote {
        Vote::from(WVote { term: w.term.to_native(), node: w.node.to_native(), committed: w.committed })
    }
}

/// Encode one entry for the wire. Normal payloads are copied as they are, never re-encoded.
pub fn wire_entry(entry: &Entry) -> Result<WEntry> {
    let (kind, payload) = match &entry.payload {
        EntryPayload::Blank => (ENTRY_KIND_BLANK, Vec::new()),
        EntryPayload::Normal(cmd) => (ENTRY_KIND_NORMAL, cmd.bytes().to_vec()),
        EntryPayload::Membership(m) => {
            (ENTRY_KIND_MEMBERSHIP, serde_json::to_vec(m).map_err(|e| Error::Frame(e.to_string()))?)
        }
    };
    Ok(WEntry { log_id: entry.log_id.into(), kind, payload })
}

/// The wire size of an entry, for splitting AppendEntries below the frame limit.
pub fn entry_wire_bytes(entry: &Entry) -> usize {
    let payload = match &entry.payload {
        EntryPayload::Blank => 0,
        EntryPayload::Normal(cmd) => cmd.bytes().len(),
        // Membership entries are a few hundred bytes of JSON.
        EntryPayload::Membership(_) => 1024,
    };
    payload + 64
}

/// Read a received AppendEntries body in place. `frame` owns the bytes `body` points into;
/// each normal entry's payload becomes a slice of it (no copy, no re-encoding), after its
/// archive is validated.
pub fn read_append(
    frame: &Bytes,
    body: &[u8],
) -> Result<openraft::raft::AppendEntriesRequest<kalamdb_log::TypeConfig>> {
    let req = rkyv::access::<ArchivedAppendRequest, rkyv::rancor::Error>(body)
        .map_err(|e| Error::Frame(format!("invalid append body: {e}")))?;
    let mut entries = Vec::with_capacity(req.entries.len());
    for e in req.entries.iter() {
        let log_id = LogId::from(&e.log_id);
        let payload = match e.kind {
            ENTRY_KIND_BLANK => EntryPayload::Blank,
            ENTRY_KIND_NORMAL => {
                let slice = frame.slice_ref(e.payload.as_slice());
                EntryPayload::Normal(EncodedCommand::validated(slice).map_err(|e| Error::Frame(e.to_string()))?)
            }
            ENTRY_KIND_MEMBERSHIP => EntryPayload::Membership(
                serde_json::from_slice(e.payload.as_slice()).map_err(|e| Error::Frame(format!("membership: {e}")))?,
            ),
            k => return Err(Error::Frame(format!("unknown entry kind {k}"))),
        };
        entries.push(Entry { log_id, payload });
    }
    Ok(openraft::raft::AppendEntriesRequest {
        vote: Vote::from(&req.vote),
        prev_log_id: req.prev.as_ref().map(LogId::from),
        leader_commit: req.commit.as_ref().map(LogId::from),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kalamdb_log::{LogCommand, Op, RowWrite, Value};
    use proptest::prelude::*;

    fn any_log_id() -> impl Strategy<Value = WLogId> {
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, node, index)| WLogId { term, node, index })
    }

    fn any_vote() -> impl Strategy<Value = WVote> {
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(term, node, committed)| WVote { term, node, committed })
    }

    fn command_bytes(rows: Vec<i64>) -> Vec<u8> {
        let ops = vec![Op::Insert {
            schema_version: 1,
            table_id: 3,
            scope: String::new(),
            rows: rows
                .into_iter()
                .map(|v| RowWrite { pk: Value::BigInt(v), values: vec![Value::BigInt(v)], expected_seq: None })
                .collect(),
        }];
        EncodedCommand::encode(&LogCommand { ops, committed_at_micros: 0 }).unwrap().bytes().to_vec()
    }

    fn round_trip<T>(v: &T) -> T
    where
        T: Archive + Encode,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let bytes = to_bytes(v).unwrap();
        // Through a frame, at an unaligned offset, as the stream reader would see it.
        let frame = crate::frame::encode_frame(crate::frame::FrameKind::StatusResponse, 0, 0, &bytes).unwrap();
        let (_, body) = crate::frame::decode_frame(&frame).unwrap();
        from_bytes::<T>(body).unwrap()
    }

    proptest! {
        #[test]
        fn append_round_trips_in_place(vote in any_vote(), prev in proptest::option::of(any_log_id()),
                                       commit in proptest::option::of(any_log_id()),
                                       entries in proptest::collection::vec((any_log_id(), 0u8..2, proptest::collection::vec(any::<i64>(), 0..4)), 0..6)) {
            let entries: Vec<WEntry> = entries.into_iter().map(|(log_id, kind, rows)| WEntry {
                log_id, kind, payload: if kind == ENTRY_KIND_NORMAL { command_bytes(rows) } else { Vec::new() },
            }).collect();
            let req = AppendRequest { vote, prev, commit, entries: entries.clone() };
            prop_assert_eq!(&round_trip(&req), &req);
            let frame = Bytes::from(crate::frame::encode_frame(crate::frame::FrameKind::AppendRequest, 1, 9, &to_bytes(&req).unwrap()).unwrap());
            let body = &frame[crate::frame::HEADER_BYTES..];
            let parsed = read_append(&frame, body).unwrap();
            prop_assert_eq!(parsed.entries.len(), entries.len());
            for (p, w) in parsed.entries.iter().zip(&entries) {
                prop_assert_eq!(WLogId::from(p.log_id), w.log_id);
                if let EntryPayload::Normal(cmd) = &p.payload {
                    prop_assert_eq!(&cmd.bytes()[..], &w.payload[..]);
                    // Zero-copy: the payload points into the frame buffer.
                    let start = frame.as_ptr() as usize;
                    let at = cmd.bytes().as_ptr() as usize;
                    prop_assert!(at >= start && at < start + frame.len());
                }
            }
        }

        #[test]
        fn small_bodies_round_trip(vote in any_vote(), last in proptest::option::of(any_log_id()), granted in any::<bool>(),
                                   data in proptest::collection::vec(any::<u8>(), 0..300), off in any::<u64>(), done in any::<bool>(),
                                   msg in ".{0,30}", leader in proptest::option::of(any::<u64>())) {
            prop_assert_eq!(round_trip(&VoteRequest { vote, last }), VoteRequest { vote, last });
            let r = VoteResponse::Ok { vote, granted, last };
            prop_assert_eq!(round_trip(&r), r);
            let s = SnapshotRequest { vote, meta_json: data.clone(), offset: off, data: data.clone(), done };
            prop_assert_eq!(round_trip(&s), s);
            let h = Hello { cluster_id: msg.clone(), node_id: off, incarnation: off ^ 1, layout: msg.clone(), proof: data.clone() };
            prop_assert_eq!(round_trip(&h), h);
            for a in [AppendResponse::Success, AppendResponse::PartialSuccess(last), AppendResponse::Conflict,
                      AppendResponse::HigherVote(vote), AppendResponse::Error(msg.clone())] {
                prop_assert_eq!(round_trip(&a), a);
            }
            let f = ForwardResponse::Ok { results: vec![OpResult::Done { affected: off }], index: off };
            prop_assert_eq!(round_trip(&f), f);
            let f = ForwardResponse::Err(RemoteError::NotLeader { leader });
            prop_assert_eq!(round_trip(&f), f);
            let r = ReadIndexResponse::Err(RemoteError::Failed { code: msg.clone(), message: msg.clone() });
            prop_assert_eq!(round_trip(&r), r);
            let st = StatusResponse { node_id: off, groups: vec![GroupStatus { group: 1, leader, term: off, last_log_index: 1,
                commit_index: 2, applied_index: 3, files_needed_from: off, matched: vec![(1, 2)] }] };
            prop_assert_eq!(round_trip(&st), st);
            let info = NodeInfo { node_id: off, apply_format_max: off as u32 };
            prop_assert_eq!(round_trip(&info), info);
            let fr = ForwardRequest { command: data.clone() };
            prop_assert_eq!(round_trip(&fr), fr);
        }

        #[test]
        fn garbage_bodies_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let frame = Bytes::from(bytes.clone());
            let _ = read_append(&frame, &frame);
            let _ = from_bytes::<VoteResponse>(&bytes);
            let _ = from_bytes::<ForwardResponse>(&bytes);
            let _ = from_bytes::<StatusResponse>(&bytes);
        }
    }
}
