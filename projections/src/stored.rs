//! The stored form of a row version and its `_seq` (log index and ordinal packed into one
//! number): the bottom of the row projection, shared by hot rows, files and history.

use kalamdb_log::Value;
use rkyv::{Archive, Deserialize as RDeserialize, Serialize as RSerialize};

use crate::error::{Error, Result};

/// Rows one log entry may write: `_seq` packs the entry's log index with the row's ordinal.
pub const ENTRY_ROWS_MAX: u64 = 1 << SEQ_ORDINAL_BITS;
/// Low bits of `_seq` that hold the row's ordinal within its entry.
pub const SEQ_ORDINAL_BITS: u32 = 20;

/// `_seq` of the `ordinal`-th row written by the entry at `log_index`: monotonic in log order.
/// Every row op of an entry takes `rows.len()` ordinals whether it succeeds or not, so a row's
/// `_seq` depends only on the entry's ops, never on other tables' state (time travel and
/// rebuild replay one table's ops alone).
pub fn make_seq(log_index: u64, ordinal: u64) -> u64 {
    assert!(ordinal < ENTRY_ROWS_MAX, "entry writes more than ENTRY_ROWS_MAX rows");
    assert!(log_index < (1 << (63 - SEQ_ORDINAL_BITS)), "log index overflows _seq");
    (log_index << SEQ_ORDINAL_BITS) | ordinal
}

/// The log index of the entry that wrote the version `seq` (the inverse of [`make_seq`]).
pub fn seq_log_index(seq: u64) -> u64 {
    seq >> SEQ_ORDINAL_BITS
}

/// The newest version of a row.
#[derive(Archive, RSerialize, RDeserialize, Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub seq: u64,
    pub deleted: bool,
    /// Column values in table order; empty for a tombstone.
    pub values: Vec<Value>,
}

impl StoredRow {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`StoredRow::encode`] into `buf` (cleared first), so a batch of rows reuses one buffer.
    /// The bytes are the same: with rkyv's `unaligned` format nothing depends on where the
    /// buffer lies, and serializing starts at position 0 either way.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.clear();
        let writer = std::mem::take(buf);
        *buf = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, writer).expect("row encoding cannot fail");
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredRow> {
        rkyv::from_bytes::<StoredRow, rkyv::rancor::Error>(bytes).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// An encoded row read in place (checked, nothing allocated).
    pub fn access(bytes: &[u8]) -> Result<&ArchivedStoredRow> {
        rkyv::access::<ArchivedStoredRow, rkyv::rancor::Error>(bytes).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The `_seq` and tombstone flag of an encoded row, read in place: what settling needs,
    /// without decoding the values.
    pub fn version(bytes: &[u8]) -> Result<(u64, bool)> {
        let row = StoredRow::access(bytes)?;
        Ok((row.seq.to_native(), row.deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows must encode to the same bytes on every node and every version: the buffer-reusing
    /// encoder writes what rkyv's own `to_bytes` writes into its aligned buffer.
    #[test]
    fn encoding_into_a_reused_buffer_gives_rkyv_s_bytes() {
        let rows = [
            StoredRow { seq: 1, deleted: true, values: Vec::new() },
            StoredRow {
                seq: make_seq(7, 3),
                deleted: false,
                values: vec![
                    Value::BigInt(-5),
                    Value::Text("v12345".into()),
                    Value::Null,
                    Value::Boolean(true),
                    Value::SmallInt(3),
                    Value::Double(0.5),
                    Value::Bytes(vec![1, 2, 3]),
                    Value::Text("a longer text than any inline form would hold".into()),
                ],
            },
            StoredRow { seq: u64::MAX >> 1, deleted: false, values: vec![Value::Int(1), Value::Float(2.0)] },
        ];
        let mut buf = vec![0xAA; 300];
        for row in &rows {
            let expected = rkyv::to_bytes::<rkyv::rancor::Error>(row).unwrap().into_vec();
            row.encode_into(&mut buf);
            assert_eq!(buf, expected);
            assert_eq!(row.encode(), expected);
            assert_eq!(&StoredRow::decode(&buf).unwrap(), row);
        }
    }
}
