//! The messages of KalamDB's WebSocket protocol as they travel: what a client sends (typed,
//! checked by serde) and the JSON of what the server answers, with the field names and `type`
//! tags KalamDB's clients decode. Server messages at or above [`COMPRESS_BYTES_MIN`] go out
//! gzip-compressed in binary frames, as the protocol describes.

use std::io::Write as _;

use axum::extract::ws::Message;
use kalamdb_log::{ColumnDef, Role};
use serde::Deserialize;
use serde_json::{Value as J, json};

/// Server messages of at least this many bytes are sent gzip-compressed (binary frame) when
/// that makes them smaller, unless the client connected with `?compress=false`.
pub const COMPRESS_BYTES_MIN: usize = 512;
/// Longest subscription id accepted.
pub const SUBSCRIPTION_ID_BYTES_MAX: usize = 128;

/// A message from the client. Unknown fields are ignored, as KalamDB's server does (newer
/// clients add some); an unknown `type` is an error answer, not a closed connection.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Authenticate {
        /// `jwt` (the only method; KalamDB's clients always send it). The token is one of
        /// ours: `POST /v1/api/auth/login` issues it.
        #[serde(default)]
        method: Option<String>,
        token: String,
        #[serde(default)]
        protocol: Option<ProtocolOptions>,
    },
    Subscribe {
        subscription: SubscriptionRequest,
    },
    NextBatch {
        subscription_id: String,
        #[serde(default)]
        last_seq_id: Option<SeqId>,
    },
    Unsubscribe {
        subscription_id: String,
    },
    Ping,
}

impl ClientMessage {
    /// The message's `type`, as `system.sessions.last_method` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Authenticate { .. } => "authenticate",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::NextBatch { .. } => "next_batch",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::Ping => "ping",
        }
    }
}

/// `authenticate.protocol`: only JSON serialization is spoken here; the answer says so.
#[derive(Debug, Deserialize)]
pub struct ProtocolOptions {
    #[serde(default)]
    pub serialization: Option<String>,
    #[serde(default)]
    pub compression: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionRequest {
    pub id: String,
    pub sql: String,
    /// Absent: live changes only, no initial data (KalamDB's rule). `{}`: initial data in
    /// batches of the default size.
    #[serde(default)]
    pub options: Option<SubscriptionOptions>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscriptionOptions {
    #[serde(default)]
    pub batch_size: Option<u64>,
    #[serde(default)]
    pub last_rows: Option<u64>,
    /// Resume after this `_seq` (the last one the client received).
    #[serde(default, alias = "from_seq_id")]
    pub from: Option<SeqId>,
}

/// A `_seq` as clients send it: a JSON number, or a decimal string (how BIGINT values and
/// `_seq` reach them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqId(pub u64);

impl<'de> Deserialize<'de> for SeqId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SeqId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(SeqId(n)),
            Raw::Text(t) => t
                .trim()
                .parse::<u64>()
                .map(SeqId)
                .map_err(|_| serde::de::Error::custom(format!("'{t}' is not a _seq (a non-negative integer)"))),
        }
    }
}

/// Error codes of the protocol's `error` message (KalamDB's names, plus `POSITION_GONE`).
pub mod code {
    pub const AUTH_REQUIRED: &str = "AUTH_REQUIRED";
    pub const INVALID_SUBSCRIPTION_ID: &str = "INVALID_SUBSCRIPTION_ID";
    pub const SUBSCRIPTION_LIMIT_EXCEEDED: &str = "SUBSCRIPTION_LIMIT_EXCEEDED";
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const INVALID_SQL: &str = "INVALID_SQL";
    pub const UNSUPPORTED: &str = "UNSUPPORTED";
    pub const SUBSCRIPTION_FAILED: &str = "SUBSCRIPTION_FAILED";
    pub const BATCH_FETCH_FAILED: &str = "BATCH_FETCH_FAILED";
    pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";
    pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";
    pub const UNSUPPORTED_DATA: &str = "UNSUPPORTED_DATA";
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    /// The resume point is older than the change records this node keeps.
    pub const POSITION_GONE: &str = "POSITION_GONE";
}

pub fn error(subscription_id: &str, code: &str, message: &str) -> J {
    json!({"type": "error", "subscription_id": subscription_id, "code": code, "message": message})
}

pub fn auth_success(user_id: &str, role: Role) -> J {
    json!({
        "type": "auth_success",
        "user": user_id,
        "role": role.name(),
        "protocol": {"serialization": "json", "compression": "gzip"},
    })
}

pub fn auth_error(message: &str) -> J {
    json!({"type": "auth_error", "message": message})
}

/// Where initial data stands: KalamDB's `batch_control`.
#[derive(Debug, Clone, Copy)]
pub struct BatchControl {
    pub batch_num: u32,
    pub has_more: bool,
    pub last_seq_id: Option<u64>,
}

impl BatchControl {
    pub fn json(&self) -> J {
        let status = match (self.has_more, self.batch_num) {
            (false, _) => "ready",
            (true, 0) => "loading",
            (true, _) => "loading_batch",
        };
        json!({
            "batch_num": self.batch_num,
            "has_more": self.has_more,
            "status": status,
            "last_seq_id": self.last_seq_id,
        })
    }
}

/// A column of a subscription's schema: `{name, data_type, index, flags?}`.
pub fn schema_field(index: usize, c: &ColumnDef) -> J {
    let mut f = json!({"name": c.name, "data_type": c.data_type.api_name(), "index": index});
    let flags: Vec<&str> = if c.primary_key {
        vec!["pk", "nn", "uq"]
    } else if !c.nullable {
        vec!["nn"]
    } else {
        Vec::new()
    };
    if !flags.is_empty() {
        f["flags"] = json!(flags);
    }
    f
}

/// A server message as a frame: text, or gzip in a binary frame when large and `compress`.
pub fn frame(message: &J, compress: bool) -> Message {
    let text = message.to_string();
    if compress && text.len() >= COMPRESS_BYTES_MIN {
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 4), flate2::Compression::fast());
        if gz.write_all(text.as_bytes()).is_ok()
            && let Ok(bytes) = gz.finish()
            && bytes.len() < text.len()
        {
            return Message::Binary(bytes.into());
        }
    }
    Message::Text(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_decode_as_kalamdb_clients_send_them() {
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"authenticate","method":"jwt","token":"t","protocol":{"serialization":"json","compression":"gzip"}}"#,
        )
        .unwrap();
        assert!(matches!(m, ClientMessage::Authenticate { token, .. } if token == "t"));
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"subscribe","subscription":{"id":"s1","sql":"SELECT * FROM a.b","options":{"batch_size":10,"from_seq_id":"42"}}}"#,
        )
        .unwrap();
        let ClientMessage::Subscribe { subscription } = m else { panic!() };
        let o = subscription.options.unwrap();
        assert_eq!((o.batch_size, o.from), (Some(10), Some(SeqId(42))));
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"next_batch","subscription_id":"s1","last_seq_id":7}"#).unwrap();
        assert!(matches!(m, ClientMessage::NextBatch { last_seq_id: Some(SeqId(7)), .. }));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","subscription":{"id":"s"}}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"next_batch","subscription_id":"s","last_seq_id":-1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"launch"}"#).is_err());
    }

    #[test]
    fn large_messages_are_gzipped_small_ones_are_text() {
        let small = json!({"type": "ping"});
        assert!(matches!(frame(&small, true), Message::Text(_)));
        let big = json!({"rows": vec!["the same text again"; 100]});
        let Message::Binary(b) = frame(&big, true) else { panic!("expected gzip") };
        assert_eq!(&b[..2], &[0x1f, 0x8b]);
        assert!(matches!(frame(&big, false), Message::Text(_)));
        assert_eq!(BatchControl { batch_num: 0, has_more: true, last_seq_id: None }.json()["status"], "loading");
        assert_eq!(
            BatchControl { batch_num: 2, has_more: true, last_seq_id: Some(5) }.json()["status"],
            "loading_batch"
        );
        assert_eq!(BatchControl { batch_num: 2, has_more: false, last_seq_id: Some(5) }.json()["status"], "ready");
    }
}
