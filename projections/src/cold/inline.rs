//! A flush settling its own rows: when a scope had nothing left to settle before the flush and
//! the flushed rows make few stub records, the flush writes their stubs and removes them from
//! `rows` itself, instead of leaving them to `Settle` ops.
//!
//! At apply format 1 that needs few *rows* ([`SETTLE_INLINE_ROWS_MAX`]: a user table's flush
//! meets many small scopes). From format 2 ([`crate::format::FORMAT_SETTLE_IN_FLUSH`]) it
//! needs few *stub records* ([`SETTLE_INLINE_STUBS_MAX`]): a bulk load's rows make one run per
//! statement, so its flush settles 100,000 rows with about a hundred records and one range
//! deletion. The rows then leave RocksDB while they are still in the memtable, so they are never
//! written to a table file and merged there, and no `Settle` entry follows the flush.

use super::stubs::pk_int;
use super::*;

/// Rows of one scope that a flush settles itself at format 1.
pub const SETTLE_INLINE_ROWS_MAX: usize = 256;

/// Stub records a flush writes at most to settle a scope itself, from format 2: what one
/// `Settle` op writes at most ([`super::SETTLE_ROWS_MAX`]), so a flush's apply grows by no
/// more than one such op per scope.
pub const SETTLE_INLINE_STUBS_MAX: usize = super::SETTLE_ROWS_MAX;

/// One stub record a flush's rows make: `count` keys from `pk` on at versions from `seq` on
/// (a run when `count > 1`), or a tombstone, which drops its key's stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InlineStub {
    pk: Vec<u8>,
    seq: u64,
    count: u64,
    deleted: bool,
}

/// What a flush keeps of a scope's rows to settle them itself; given up (`None` in
/// [`super::apply`]) once past its bound.
#[derive(Debug)]
pub(super) enum Inline {
    /// At format 1: every row, removed from `rows` one by one.
    Rows(Vec<(Vec<u8>, u64, bool)>),
    /// From format 2: the stub records the rows make, in key order; the rows leave `rows`
    /// with one range deletion. `runs` is the scope's [`ScopeHead::runs`].
    Stubs { stubs: Vec<InlineStub>, runs: bool },
}

impl Inline {
    /// How a flush at `format` keeps a scope whose stubs may be runs (`runs`).
    pub(super) fn new(format: u32, runs: bool) -> Inline {
        if format >= crate::format::FORMAT_SETTLE_IN_FLUSH {
            Inline::Stubs { stubs: Vec::new(), runs }
        } else {
            Inline::Rows(Vec::new())
        }
    }

    /// Take the next flushed row (in key order); `false` when the scope is past the bound
    /// and must be settled by `Settle` ops.
    pub(super) fn push(&mut self, pk: &[u8], seq: u64, deleted: bool) -> bool {
        match self {
            Inline::Rows(rows) => {
                if rows.len() == SETTLE_INLINE_ROWS_MAX {
                    return false;
                }
                rows.push((pk.to_vec(), seq, deleted));
            }
            Inline::Stubs { stubs, runs } => {
                let key = pk_int(pk).filter(|_| *runs && !deleted);
                if let (Some(k), Some(last)) = (key, stubs.last_mut())
                    && !last.deleted
                    && pk_int(&last.pk).and_then(|start| start.checked_add(last.count)) == Some(k)
                    && last.seq.checked_add(last.count) == Some(seq)
                {
                    last.count += 1;
                    return true;
                }
                if stubs.len() == SETTLE_INLINE_STUBS_MAX {
                    return false;
                }
                stubs.push(InlineStub { pk: pk.to_vec(), seq, count: 1, deleted });
            }
        }
        true
    }

    /// Settle the rows in `batch`: what `Settle` ops would write for them. `sp` is the scope's
    /// prefix, `runs` its [`ScopeHead::runs`], and `ranges` the primary-key ranges (first and
    /// last, inclusive, in order) that hold the flush's rows and no other hot row.
    pub(super) fn settle(
        self,
        db: &DB,
        batch: &mut WriteBatch,
        (sp, runs): (&[u8], bool),
        ranges: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let rows_cf = cf(db, CF_ROWS)?;
        let mut settler = RunSettler::new(db, sp, runs);
        let mut key = sp.to_vec();
        let settled = match self {
            Inline::Rows(rows) => {
                for (pk, seq, deleted) in &rows {
                    settler.row(batch, pk, *seq, *deleted)?;
                    key.truncate(sp.len());
                    key.extend_from_slice(pk);
                    batch.delete_cf(rows_cf, &key);
                }
                rows.len() as u64
            }
            Inline::Stubs { stubs, .. } => {
                if stubs.is_empty() {
                    return Ok(());
                }
                let mut rows = 0;
                for s in &stubs {
                    settler.rows(batch, &s.pk, s.seq, s.count, s.deleted)?;
                    rows += s.count;
                }
                // The flush read every hot row of the scope (nothing was left to settle before
                // it) in key order, so each range holds exactly flushed rows.
                for (first, last) in ranges {
                    key.truncate(sp.len());
                    key.extend_from_slice(first);
                    let mut end = sp.to_vec();
                    end.extend_from_slice(last);
                    end.push(0);
                    batch.delete_range_cf(rows_cf, key.as_slice(), end.as_slice());
                }
                rows
            }
        };
        settler.finish(batch)?;
        metrics::counter!("kalamdb_storage_settled_rows_total").increment(settled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(k: u64) -> Vec<u8> {
        k.to_be_bytes().to_vec()
    }

    #[test]
    fn rows_that_continue_each_other_make_one_stub() {
        let mut inline = Inline::new(crate::format::FORMAT_SETTLE_IN_FLUSH, true);
        for k in 10..20 {
            assert!(inline.push(&pk(k), 100 + k, false));
        }
        // A version that does not continue, a tombstone, then a run again.
        assert!(inline.push(&pk(20), 500, false));
        assert!(inline.push(&pk(21), 600, true));
        assert!(inline.push(&pk(22), 601, false));
        assert!(inline.push(&pk(23), 602, false));
        let Inline::Stubs { stubs, .. } = inline else { panic!("format 2 keeps stubs") };
        let got: Vec<(u64, u64, u64, bool)> =
            stubs.iter().map(|s| (pk_int(&s.pk).unwrap(), s.seq, s.count, s.deleted)).collect();
        assert_eq!(got, vec![(10, 110, 10, false), (20, 500, 1, false), (21, 600, 1, true), (22, 601, 2, false)]);
    }

    #[test]
    fn the_bound_counts_stub_records_from_format_2_and_rows_before() {
        let mut stubs = Inline::new(crate::format::FORMAT_SETTLE_IN_FLUSH, true);
        let mut rows = Inline::new(crate::format::FORMAT_FIRST, true);
        // One run of many rows: one record, far past the row bound.
        for k in 0..(4 * SETTLE_INLINE_ROWS_MAX as u64) {
            assert!(stubs.push(&pk(k), k, false));
        }
        assert!((0..SETTLE_INLINE_ROWS_MAX as u64).all(|k| rows.push(&pk(k), k, false)));
        assert!(!rows.push(&pk(SETTLE_INLINE_ROWS_MAX as u64), 0, false), "past the row bound");
        // Keys that never continue: one record each, up to the bound.
        let mut single = Inline::new(crate::format::FORMAT_SETTLE_IN_FLUSH, false);
        assert!((0..SETTLE_INLINE_STUBS_MAX as u64).all(|k| single.push(&pk(k), k, false)));
        assert!(!single.push(&pk(u64::MAX), 0, false), "past the stub bound");
    }
}
