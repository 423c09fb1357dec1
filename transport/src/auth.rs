//! Peer authentication. Every connection starts with a Hello on its first stream: the
//! sender's cluster id, node id and an HMAC-SHA256, keyed by the shared cluster secret, over
//! those and TLS keying material exported from this very connection. The acceptor answers
//! with its own proof. A proof cannot be replayed on another connection (the exported
//! material differs) and a node without the secret cannot produce one, so such a node can
//! neither append nor vote. TLS certificates are per-process and self-signed; the HMAC is
//! what authenticates.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Label for TLS keying-material export (RFC 5705).
pub const EXPORTER_LABEL: &[u8] = b"kalamdb peer auth v1";
pub const EXPORTER_BYTES: usize = 32;
pub const ROLE_DIALER: u8 = b'D';
pub const ROLE_ACCEPTOR: u8 = b'A';

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
}
