//! Order-preserving key encodings for the projection column families.
//!
//! Row key: `group u32 BE | table_id u64 BE | scope_len u16 BE | scope | pk`. The primary key is
//! last, so a prefix scan over `group | table | scope` yields rows in primary-key order.

use kalamdb_log::{GroupId, Value};

/// Longest scope (user id) a row key can carry.
pub const SCOPE_BYTES_MAX: usize = 256;

/// Encode a primary-key value so that byte order equals value order within one column type.
pub fn encode_pk(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Boolean(b) => out.push(u8::from(*b)),
        Value::SmallInt(i) => push_i64(i64::from(*i), out),
        Value::Int(i) => push_i64(i64::from(*i), out),
        Value::BigInt(i) | Value::Timestamp(i) => push_i64(*i, out),
        Value::Date(d) => push_i64(i64::from(*d), out),
        Value::Float(f) => push_f64(f64::from(*f), out),
        Value::Double(f) => push_f64(*f, out),
        Value::Text(s) | Value::Json(s) => out.extend_from_slice(s.as_bytes()),
        Value::Bytes(b) => out.extend_from_slice(b),
    }
}

fn push_i64(i: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
}

fn push_f64(f: f64, out: &mut Vec<u8>) {
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    out.extend_from_slice(&ordered.to_be_bytes());
}

/// `group | table_id | scope`: the prefix of every row of one table (and one user).
pub fn table_scope_prefix(group: GroupId, table_id: u64, scope: &str) -> Vec<u8> {
    assert!(scope.len() <= SCOPE_BYTES_MAX, "scope longer than SCOPE_BYTES_MAX");
    let mut k = Vec::with_capacity(4 + 8 + 2 + scope.len() + 16);
    k.extend_from_slice(&group.prefix());
    k.extend_from_slice(&table_id.to_be_bytes());
    k.extend_from_slice(&(scope.len() as u16).to_be_bytes());
    k.extend_from_slice(scope.as_bytes());
    k
}

/// `group | table_id`: the prefix of every row of one table in one group, all scopes.
pub fn table_prefix(group: GroupId, table_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&group.prefix());
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

pub fn row_key(group: GroupId, table_id: u64, scope: &str, pk: &Value) -> Vec<u8> {
    let mut k = table_scope_prefix(group, table_id, scope);
    encode_pk(pk, &mut k);
    k
}

/// The smallest key strictly greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    // All 0xff: no finite upper bound; callers only use group-prefixed keys, never all-0xff.
    vec![0xff; prefix.len() + 1]
}

/// Split a row key into (scope, pk bytes) given the table prefix length.
pub fn split_scope(key: &[u8]) -> Option<(&str, &[u8])> {
    let rest = key.get(12..)?;
    let len = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize;
    let scope = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    Some((scope, &rest[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pk(v, &mut out);
        out
    }

    proptest! {
        #[test]
        fn bigint_order_preserved(a: i64, b: i64) {
            prop_assert_eq!(a.cmp(&b), enc(&Value::BigInt(a)).cmp(&enc(&Value::BigInt(b))));
        }

        #[test]
        fn double_order_preserved(a in -1e300f64..1e300, b in -1e300f64..1e300) {
            prop_assert_eq!(a.partial_cmp(&b).unwrap(), enc(&Value::Double(a)).cmp(&enc(&Value::Double(b))));
        }
    }

    #[test]
    fn scope_split_round_trips() {
        let g = GroupId::UserShard(3);
        let k = row_key(g, 42, "alice", &Value::BigInt(7));
        let (scope, pk) = split_scope(&k).unwrap();
        assert_eq!(scope, "alice");
        assert_eq!(pk, enc(&Value::BigInt(7)).as_slice());
        assert!(k.starts_with(&table_prefix(g, 42)));
        assert!(prefix_end(&table_prefix(g, 42)) > k);
    }
}
