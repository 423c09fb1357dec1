//! Peer authentication between real QUIC endpoints on 127.0.0.1: a member with the cluster
//! secret reaches the peer's Raft handler; a process with the wrong secret or cluster id is
//! refused before any frame is served, so it can neither vote nor append. Also what a call
//! costs on the wire once connected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kalamdb_log::types::Raft;
use kalamdb_log::{EncodedCommand, GroupId, MetaGroup};
use kalamdb_transport::frame::FrameKind;
use kalamdb_transport::wire::{self, ForwardResponse, ReadIndexResponse, StatusResponse, VoteRequest, WVote};
use kalamdb_transport::{Handler, Transport, TransportConfig};

#[derive(Default)]
struct Counting {
    raft_lookups: AtomicUsize,
}

#[async_trait]
impl Handler for Counting {
    fn raft(&self, _group: GroupId) -> Option<Raft> {
        self.raft_lookups.fetch_add(1, Ordering::SeqCst);
        None
    }
    async fn forward(&self, _group: GroupId, _command: EncodedCommand) -> ForwardResponse {
        ForwardResponse::Ok { results: Vec::new(), index: 0 }
    }
    async fn read_index(&self, _group: GroupId) -> ReadIndexResponse {
        ReadIndexResponse::Ok { index: 7 }
    }
    fn status(&self) -> StatusResponse {
        StatusResponse { node_id: 1, groups: Vec::new() }
    }
    fn info(&self) -> wire::NodeInfo {
        wire::NodeInfo { node_id: 1, apply_format_max: 7 }
    }
    async fn leadership(&self, _group: GroupId, _request: wire::LeadershipRequest) -> wire::LeadershipResponse {
        wire::LeadershipResponse::Ok { leader: Some(1) }
    }
    async fn membership(&self, _group: GroupId, _request: wire::MembershipRequest) -> wire::MembershipResponse {
        wire::MembershipResponse::Ok { voters: vec![1, 2] }
    }
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(node_id: u64, cluster: &str, secret: &str, ports: &[(u64, u16)]) -> TransportConfig {
    let port = ports.iter().find(|(n, _)| *n == node_id).map(|(_, p)| *p).unwrap();
    TransportConfig {
        node_id,
        cluster_id: cluster.into(),
        secret: secret.as_bytes().to_vec(),
        bind: format!("127.0.0.1:{port}").parse().unwrap(),
        members: ports.iter().map(|(n, p)| (*n, format!("127.0.0.1:{p}"))).collect::<BTreeMap<_, _>>(),
        layout: format!("members {ports:?}"),
    }
}

fn vote_body() -> Vec<u8> {
    wire::to_bytes(&VoteRequest { vote: WVote { term: 99, node: 2, committed: false }, last: None }).unwrap()
}

const SECRET: &str = "the-right-cluster-secret";
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_with_the_secret_reach_raft() {
    let group = GroupId::Meta(MetaGroup::Catalog).to_u32();
    let ports = [(1, udp_port()), (2, udp_port()), (3, udp_port()), (4, udp_port()), (5, udp_port())];
    let a = Transport::bind(config(1, "c", SECRET, &ports)).unwrap();
    let handler = Arc::new(Counting::default());
    a.serve(handler.clone());

    // A member with the secret: its vote reaches the handler (which hosts no group here).
    let good = Transport::bind(config(2, "c", SECRET, &ports)).unwrap();
    let resp = good.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.unwrap();
    let resp: wire::VoteResponse = wire::from_bytes(&resp).unwrap();
    assert!(matches!(resp, wire::VoteResponse::Error(m) if m.contains("not hosted")));
    assert_eq!(handler.raft_lookups.load(Ordering::SeqCst), 1);
    assert!(good.is_connected(1));
    let ri = good.read_index(1, GroupId::Meta(MetaGroup::Catalog), CALL_TIMEOUT).await.unwrap();
    assert_eq!(ri, ReadIndexResponse::Ok { index: 7 });
    let moved = good
        .leadership(
            1,
            GroupId::Meta(MetaGroup::Catalog),
            wire::LeadershipRequest::TransferTo { target: 2 },
            CALL_TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(moved, wire::LeadershipResponse::Ok { leader: Some(1) });

    // Wrong secret: refused at the hello, nothing reaches Raft, for votes and appends alike.
    let bad = Transport::bind(config(3, "c", "not-the-cluster-secret", &ports)).unwrap();
    let err = bad.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("refused") || err.to_string().contains("auth"), "{err}");
    let append = wire::to_bytes(&wire::AppendRequest {
        vote: WVote { term: 99, node: 3, committed: true },
        prev: None,
        commit: None,
        entries: Vec::new(),
    })
    .unwrap();
    assert!(bad.call(1, FrameKind::AppendRequest, group, &append, CALL_TIMEOUT).await.is_err());
    assert!(!bad.is_connected(1));

    // Right secret, wrong cluster id: refused too.
    let other = Transport::bind(config(4, "other-cluster", SECRET, &ports)).unwrap();
    let err = other.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("is in cluster 'c', this node in 'other-cluster'"), "{err}");

    // Right secret and cluster id, a different layout (shard counts): refused, naming both.
    let mut cfg = config(5, "c", SECRET, &ports);
    cfg.layout = "members 1,2,3,4,5".into();
    let drifted = Transport::bind(cfg).unwrap();
    let err = drifted.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.unwrap_err();
    assert!(err.to_string().contains("different cluster layout: theirs [members [(1,"), "{err}");
    assert!(err.to_string().contains("ours [members 1,2,3,4,5]"), "{err}");
    assert!(!drifted.is_connected(1));

    assert_eq!(handler.raft_lookups.load(Ordering::SeqCst), 1, "refused peers never reached the handler");

    // The fault switch cuts traffic both ways, and restores it.
    a.set_isolated(true);
    assert!(good.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.is_err());
    a.set_isolated(false);
    let mut ok = false;
    for _ in 0..50 {
        if good.call(1, FrameKind::VoteRequest, group, &vote_body(), CALL_TIMEOUT).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "traffic resumes after the fault switch is cleared");
}

/// A node tells its peers what it is. A request its peer cannot read comes back as `Refused`,
/// not as a failed stream: that is how a build older than `InfoRequest` answers it (it resets
/// the stream as a bad frame, as every build does for a frame it cannot read), and `info`
/// reads it as `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_is_answered_and_an_unreadable_request_is_refused() {
    let ports = [(1, udp_port()), (2, udp_port())];
    let server = Transport::bind(config(1, "c", SECRET, &ports)).unwrap();
    server.serve(Arc::new(Counting::default()));
    let client = Transport::bind(config(2, "c", SECRET, &ports)).unwrap();
    let info = client.info(1, CALL_TIMEOUT).await.unwrap();
    assert_eq!(info, Some(wire::NodeInfo { node_id: 1, apply_format_max: 7 }));
    let group = GroupId::Meta(MetaGroup::Catalog).to_u32();
    let err =
        client.call(1, FrameKind::ForwardRequest, group, b"not an archived request", CALL_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, kalamdb_transport::Error::Refused { node: 1 }), "{err}");
    // The connection outlives the refused stream.
    assert!(client.is_connected(1));
    assert!(client.info(1, CALL_TIMEOUT).await.unwrap().is_some());
}

/// A call is one request packet and one reply packet, plus whatever ACKs QUIC adds. Each side
/// reads its stream to the end, so neither answers with STOP_SENDING (a packet of its own,
/// and an ACK of that, per message when it did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_costs_no_stop_sending_and_few_datagrams() {
    const CALLS: u64 = 200;
    let ports = [(1, udp_port()), (2, udp_port())];
    let server = Transport::bind(config(1, "c", SECRET, &ports)).unwrap();
    server.serve(Arc::new(Counting::default()));
    let client = Transport::bind(config(2, "c", SECRET, &ports)).unwrap();
    let group = GroupId::Meta(MetaGroup::Catalog);
    // Dial and authenticate first: the handshake's packets are not a call's.
    client.read_index(1, group, CALL_TIMEOUT).await.unwrap();
    let before = client.peer_stats(1).unwrap();
    for _ in 0..CALLS {
        assert_eq!(client.read_index(1, group, CALL_TIMEOUT).await.unwrap(), ReadIndexResponse::Ok { index: 7 });
    }
    let after = client.peer_stats(1).unwrap();
    assert_eq!(after.stop_sending_frames, 0, "{after:?}");
    let sent = after.datagrams_sent - before.datagrams_sent;
    let received = after.datagrams_received - before.datagrams_received;
    // One request (or reply) each, at most one ACK-only packet a call each way, a keep-alive
    // or two. How many ACKs go alone depends on timing (a loaded CI machine let the delayed-ACK
    // timer fire before the next call 65% of the time), so the bound is the structural one;
    // STOP_SENDING itself is counted above.
    const SLACK: u64 = 8;
    assert!(sent <= CALLS * 2 + SLACK, "{sent} datagrams sent for {CALLS} calls");
    assert!(received <= CALLS * 2 + SLACK, "{received} datagrams received for {CALLS} calls");
    assert!(sent >= CALLS && received >= CALLS, "sent {sent}, received {received}");
    assert_eq!(client.peers(), vec![1]);
}
