//! Peer authentication. Every connection starts with a Hello on its first stream: the
//! sender's cluster id, node id and an HMAC-SHA256, keyed by the shared cluster secret, over
//! those and TLS keying material exported from this very connection. The acceptor answers
//! with its own proof once the dialer's has checked out, never before. A proof cannot be replayed on another connection (the exported
//! material differs) and a node without the secret cannot produce one, so such a node can
//! neither append nor vote. TLS certificates are per-process and self-signed; the HMAC is
//! what authenticates.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::quic::TransportConfig;
use crate::wire::Hello;
use kalamdb_log::types::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// Label for TLS keying-material export (RFC 5705).
pub const EXPORTER_LABEL: &[u8] = b"kalamdb peer auth v1";
pub const EXPORTER_BYTES: usize = 32;
pub const ROLE_DIALER: u8 = b'D';
pub const ROLE_ACCEPTOR: u8 = b'A';
/// Highest node id (the node's config accepts 1..=1023).
pub const NODE_ID_MAX: NodeId = 1023;

fn mac(secret: &[u8], role: u8, cluster_id: &str, node_id: u64, exported: &[u8]) -> Result<HmacSha256> {
    // The incarnation is not covered: it only steers connection reuse, and the exported
    // keying material already binds the proof to this one connection.
    let mut m = HmacSha256::new_from_slice(secret).map_err(|e| Error::Auth(e.to_string()))?;
    m.update(b"kalamdb-peer-auth/v1");
    m.update(&[role]);
    m.update(&(cluster_id.len() as u64).to_le_bytes());
    m.update(cluster_id.as_bytes());
    m.update(&node_id.to_le_bytes());
    m.update(exported);
    Ok(m)
}

pub fn prove(secret: &[u8], role: u8, cluster_id: &str, node_id: u64, exported: &[u8]) -> Result<Vec<u8>> {
    Ok(mac(secret, role, cluster_id, node_id, exported)?.finalize().into_bytes().to_vec())
}

/// Constant-time check of a peer's proof.
pub fn verify(secret: &[u8], role: u8, cluster_id: &str, node_id: u64, exported: &[u8], proof: &[u8]) -> Result<()> {
    mac(secret, role, cluster_id, node_id, exported)?
        .verify_slice(proof)
        .map_err(|_| Error::Auth(format!("node {node_id} did not prove the cluster secret")))
}

/// The acceptor's verdict on a dialer's Hello, and the answer to send (if any). Our proof is
/// made only for a dialer whose own proof checked out: handing an HMAC of the secret to
/// anyone who connects would let them guess the secret offline. A dialer of another cluster
/// learns our cluster id (not secret, and its log can then say what differs) and nothing else.
pub(crate) fn check_hello(
    cfg: &TransportConfig,
    incarnation: u64,
    hello: &Hello,
    ekm: &[u8],
) -> (Result<NodeId>, Option<Hello>) {
    let unproven = Hello {
        cluster_id: cfg.cluster_id.clone(),
        node_id: cfg.node_id,
        incarnation,
        layout: String::new(),
        proof: Vec::new(),
    };
    if hello.cluster_id != cfg.cluster_id {
        let why =
            format!("node {} is in cluster '{}', this node in '{}'", hello.node_id, hello.cluster_id, cfg.cluster_id);
        return (Err(Error::Auth(why)), Some(unproven));
    }
    // Any node id may dial: members join at runtime, and the proof below (the cluster secret)
    // is what admits a node; its place in the groups is Raft membership's business.
    if !(1..=NODE_ID_MAX).contains(&hello.node_id) || hello.node_id == cfg.node_id {
        return (Err(Error::Auth(format!("node id {} is not a peer's", hello.node_id))), None);
    }
    if verify(&cfg.secret, ROLE_DIALER, &hello.cluster_id, hello.node_id, ekm, &hello.proof).is_err() {
        return (Err(Error::Auth(format!("node {} does not know our jwt_secret", hello.node_id))), None);
    }
    let proof = match prove(&cfg.secret, ROLE_ACCEPTOR, &cfg.cluster_id, cfg.node_id, ekm) {
        Ok(p) => p,
        Err(e) => return (Err(e), None),
    };
    let ack = Hello { layout: cfg.layout.clone(), proof, ..unproven };
    if hello.layout != cfg.layout {
        // Authenticated, so it may learn our layout: its log then names the difference too.
        let why = format!(
            "node {} has a different cluster layout: theirs [{}], ours [{}]",
            hello.node_id, hello.layout, cfg.layout
        );
        return (Err(Error::Auth(why)), Some(ack));
    }
    (Ok(hello.node_id), Some(ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_secret_role_node_and_connection() {
        let p = prove(b"s3cret", ROLE_DIALER, "c", 2, &[7; 32]).unwrap();
        verify(b"s3cret", ROLE_DIALER, "c", 2, &[7; 32], &p).unwrap();
        assert!(verify(b"other", ROLE_DIALER, "c", 2, &[7; 32], &p).is_err());
        assert!(verify(b"s3cret", ROLE_ACCEPTOR, "c", 2, &[7; 32], &p).is_err());
        assert!(verify(b"s3cret", ROLE_DIALER, "c", 3, &[7; 32], &p).is_err());
        assert!(verify(b"s3cret", ROLE_DIALER, "d", 2, &[7; 32], &p).is_err());
        assert!(verify(b"s3cret", ROLE_DIALER, "c", 2, &[8; 32], &p).is_err());
    }

    fn cfg() -> TransportConfig {
        TransportConfig {
            node_id: 1,
            cluster_id: "c".into(),
            secret: b"an-example-secret-for-this-test-only".to_vec(),
            bind: "127.0.0.1:0".parse().expect("addr"),
            members: [(1, "a:1".to_string()), (2, "b:2".to_string())].into_iter().collect(),
            layout: "layout".into(),
        }
    }

    fn hello(cfg: &TransportConfig, cluster: &str, node: NodeId, secret: &[u8], ekm: &[u8]) -> Hello {
        Hello {
            cluster_id: cluster.into(),
            node_id: node,
            incarnation: 9,
            layout: cfg.layout.clone(),
            proof: prove(secret, ROLE_DIALER, cluster, node, ekm).expect("prove"),
        }
    }

    #[test]
    fn the_acceptor_proves_the_secret_only_to_a_proven_dialer() {
        let cfg = cfg();
        let ekm = [7u8; 32];
        // Another cluster id: our id comes back, no proof (nothing to guess the secret from).
        let (verdict, answer) = check_hello(&cfg, 1, &hello(&cfg, "other", 2, &cfg.secret, &ekm), &ekm);
        assert!(verdict.is_err());
        let answer = answer.expect("the dialer learns which cluster it reached");
        assert!(answer.proof.is_empty() && answer.layout.is_empty());
        // Wrong secret, our own or an impossible node id, or a proof for other keying
        // material: no answer at all.
        for (h, e) in [
            (hello(&cfg, "c", 2, b"a-guess", &ekm), ekm),
            (hello(&cfg, "c", 1, &cfg.secret, &ekm), ekm),
            (hello(&cfg, "c", 0, &cfg.secret, &ekm), ekm),
            (hello(&cfg, "c", 2, &cfg.secret, &[8u8; 32]), ekm),
        ] {
            let (verdict, answer) = check_hello(&cfg, 1, &h, &e);
            assert!(verdict.is_err());
            assert!(answer.is_none(), "an unproven dialer gets no answer");
        }
        // A proven member gets our proof.
        // A node not in the configured list (joining at runtime) is admitted by the secret.
        let (verdict, _) = check_hello(&cfg, 1, &hello(&cfg, "c", 7, &cfg.secret, &ekm), &ekm);
        assert_eq!(verdict.expect("a joiner with the secret"), 7);
        let (verdict, answer) = check_hello(&cfg, 1, &hello(&cfg, "c", 2, &cfg.secret, &ekm), &ekm);
        assert_eq!(verdict.expect("accepted"), 2);
        let answer = answer.expect("ack");
        verify(&cfg.secret, ROLE_ACCEPTOR, "c", 1, &ekm, &answer.proof).expect("our proof checks out");
    }
}
