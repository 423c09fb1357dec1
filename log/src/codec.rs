//! Encoding of log entries for the RocksDB log (and, verbatim, for the wire).
//!
//! Layout: `version u8 | kind u8 | term u64 BE | leader u64 BE | index u64 BE | payload`.
//! Normal payloads are rkyv archives of [`LogCommand`], validated on read; membership
//! payloads are JSON (rare, small, and openraft's type is serde-only).

use openraft::{CommittedLeaderId, EntryPayload};

use crate::command::EncodedCommand;
use crate::error::{Error, Result};
use crate::types::{Entry, LogId};

const FORMAT_VERSION: u8 = 1;
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const HEADER_BYTES: usize = 2 + 8 + 8 + 8;

pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>> {
    let membership;
    let (kind, payload): (u8, &[u8]) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, &[]),
        EntryPayload::Normal(cmd) => (KIND_NORMAL, cmd.bytes()),
        EntryPayload::Membership(m) => {
            membership = serde_json::to_vec(m).map_err(|e| Error::Codec(e.to_string()))?;
            (KIND_MEMBERSHIP, &membership)
        }
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.push(FORMAT_VERSION);
    out.push(kind);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(b)
}

/// The log id of an encoded entry, without decoding its payload.
pub fn decode_log_id(bytes: &[u8]) -> Result<LogId> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::Corrupt(format!("entry of {} bytes is shorter than its header", bytes.len())));
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(Error::Corrupt(format!("unknown entry format version {}", bytes[0])));
    }
    let term = read_u64(bytes, 2);
    let node = read_u64(bytes, 10);
    let index = read_u64(bytes, 18);
    Ok(LogId::new(CommittedLeaderId::new(term, node), index))
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry> {
    let log_id = decode_log_id(bytes)?;
    let payload = &bytes[HEADER_BYTES..];
    let payload = match bytes[1] {
        KIND_BLANK => EntryPayload::Blank,
        // Our own log: apply validates when it decodes.
        KIND_NORMAL => EntryPayload::Normal(EncodedCommand::trusted(bytes::Bytes::copy_from_slice(payload))),
        KIND_MEMBERSHIP => {
            EntryPayload::Membership(serde_json::from_slice(payload).map_err(|e| Error::Codec(e.to_string()))?)
        }
        k => return Err(Error::Corrupt(format!("unknown entry kind {k}"))),
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{LogCommand, Op, RowWrite, Value};
    use proptest::prelude::*;

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::BigInt),
            any::<i32>().prop_map(Value::Int),
            any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan()).prop_map(Value::Double),
            ".{0,20}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
            any::<i64>().prop_map(Value::Timestamp),
        ]
    }

    proptest! {
        #[test]
        fn entry_round_trips(term in 0u64..1000, node in 0u64..8, index in 0u64..u64::MAX / 2,
                             rows in proptest::collection::vec(proptest::collection::vec(value_strategy(), 1..5), 0..5)) {
            let ops = vec![Op::Insert { schema_version: 1,
                table_id: 7,
                scope: "u".into(),
                rows: rows.into_iter().map(|values| RowWrite { pk: values[0].clone(), values, expected_seq: None }).collect(),
            }];
            let entry = Entry { log_id: LogId::new(CommittedLeaderId::new(term, node), index), payload: EntryPayload::Normal(EncodedCommand::encode(&LogCommand { ops, committed_at_micros: 0 }).unwrap()) };
            let bytes = encode_entry(&entry).unwrap();
            let back = decode_entry(&bytes).unwrap();
            prop_assert_eq!(back.log_id, entry.log_id);
            prop_assert_eq!(&back.payload, &entry.payload);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_entry(&bytes);
        }
    }
}
