//! Which files of a scope a compaction merges: the files written after the newest *sealed*
//! one, so a compaction's cost follows what was flushed since, not the table's size.
//!
//! Merging every live file made each compaction rewrite the whole scope. With the default
//! policy (flush at 100k rows, compact at 8 files) a scope of 10M rows holds ten 1M-row
//! files, so every automatic flush was followed by a compaction rewriting all 10M rows,
//! holding apply (and every write and subscriber of the group) for seconds each time.
//!
//! File log ranges are disjoint or equal: a flush covers `(last flush, its index]`, and a
//! compaction's outputs share the union of its inputs' ranges. So "every file after log index
//! `b`" splits a scope cleanly, and the superseded markers of the merged versions are exactly
//! the markers whose log index is after `b` (a marker's `_seq` carries its version's index).
//! A sealed range whose superseded versions reach a quarter of its rows is rewritten on its
//! own: its range stays the same, so the invariant holds.

use super::{FILE_ROWS_MAX, FileMeta};
use crate::stored::make_seq;

/// A file of at least this many rows is *sealed*: compactions leave it, and every file at or
/// before its log range. Half a file: a compaction of 8 default flushes (800k rows) seals.
pub const COMPACT_SEALED_ROWS_MIN: u64 = (FILE_ROWS_MAX / 2) as u64;
/// A sealed range is rewritten on its own (its superseded versions dropped) once its
/// superseded versions reach 1 / this of its rows: dead rows cost space and scan time.
pub const COMPACT_SEALED_DEAD_SHARE_DEN: u64 = 4;

/// Files merged together, and the superseded markers of the versions they hold: the
/// `_seq`s in `first_seq..end_seq`, dropped with them.
#[derive(Debug, PartialEq)]
pub struct CompactionUnit<'f> {
    pub inputs: Vec<&'f FileMeta>,
    pub first_seq: u64,
    pub end_seq: u64,
    /// A sealed range rewritten for its dead versions (else: the files after the sealed ones).
    pub sealed: bool,
}

/// The merges a compaction of a scope runs, given its live files (retired ones left out) and
/// the `_seq`s of its superseded markers, ascending. Each unit is worth running: two files or
/// more, or superseded versions to drop. Units cover disjoint log ranges, so each keeps the
/// invariant above on its own.
pub fn compaction_plan<'f>(live: &[&'f FileMeta], markers: &[u64]) -> Vec<CompactionUnit<'f>> {
    let dead_in =
        |first: u64, end: u64| (markers.partition_point(|m| *m < end) - markers.partition_point(|m| *m < first)) as u64;
    let worth = |unit: &CompactionUnit<'_>| {
        unit.inputs.len() >= 2 || (!unit.inputs.is_empty() && dead_in(unit.first_seq, unit.end_seq) > 0)
    };
    let after = live.iter().filter(|f| f.rows >= COMPACT_SEALED_ROWS_MIN).map(|f| f.log_end).max().unwrap_or(0);
    // A file straddling the boundary would break "the merged versions are those after it":
    // never written by this code, but then the old rule (merge everything) is the safe one.
    if live.iter().any(|f| f.log_start <= after && f.log_end > after) {
        let all = CompactionUnit { inputs: live.to_vec(), first_seq: 0, end_seq: u64::MAX, sealed: false };
        return if worth(&all) { vec![all] } else { Vec::new() };
    }
    let mut units = Vec::new();
    let mut ranges: Vec<(u64, u64)> =
        live.iter().filter(|f| f.log_end <= after).map(|f| (f.log_start, f.log_end)).collect();
    ranges.sort_unstable();
    ranges.dedup();
    for (start, end) in ranges {
        let inputs: Vec<&FileMeta> =
            live.iter().copied().filter(|f| (f.log_start, f.log_end) == (start, end)).collect();
        let rows: u64 = inputs.iter().map(|f| f.rows).sum();
        let (first_seq, end_seq) = (make_seq(start, 0), make_seq(end + 1, 0));
        let dead = dead_in(first_seq, end_seq);
        if dead > 0 && dead * COMPACT_SEALED_DEAD_SHARE_DEN >= rows {
            units.push(CompactionUnit { inputs, first_seq, end_seq, sealed: true });
        }
    }
    let tail = CompactionUnit {
        inputs: live.iter().copied().filter(|f| f.log_start > after).collect(),
        first_seq: if after == 0 { 0 } else { make_seq(after + 1, 0) },
        end_seq: u64::MAX,
        sealed: false,
    };
    if worth(&tail) {
        units.push(tail);
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(file_no: u64, log: (u64, u64), rows: u64) -> FileMeta {
        FileMeta {
            file_no,
            path: format!("f{file_no}"),
            log_start: log.0,
            log_end: log.1,
            created_at: log.1,
            rows,
            bytes: rows,
            sha256: String::new(),
            written_by: "flush".into(),
            retired_at: None,
            columns: Vec::new(),
        }
    }

    /// Each unit's file numbers and marker range.
    fn units(live: &[&FileMeta], markers: &[u64]) -> Vec<(Vec<u64>, u64, u64)> {
        compaction_plan(live, markers)
            .iter()
            .map(|u| (u.inputs.iter().map(|f| f.file_no).collect(), u.first_seq, u.end_seq))
            .collect()
    }

    #[test]
    fn small_scopes_merge_everything() {
        let files = [file(0, (1, 10), 100), file(1, (11, 20), 100), file(2, (21, 30), 100)];
        let live: Vec<&FileMeta> = files.iter().collect();
        assert_eq!(units(&live, &[]), vec![(vec![0, 1, 2], 0, u64::MAX)]);
        // One file: only worth rewriting for superseded versions.
        assert!(units(&live[..1], &[]).is_empty());
        assert_eq!(units(&live[..1], &[make_seq(5, 0)]), vec![(vec![0], 0, u64::MAX)]);
    }

    #[test]
    fn sealed_files_and_their_range_stay() {
        let big = FILE_ROWS_MAX as u64;
        // A compaction's outputs (0, 1: full, 2: the short rest) share one range; then flushes.
        let files = [
            file(0, (1, 50), big),
            file(1, (1, 50), big),
            file(2, (1, 50), 1000),
            file(3, (51, 60), 100_000),
            file(4, (61, 70), 100_000),
        ];
        let live: Vec<&FileMeta> = files.iter().collect();
        // A few dead versions in the sealed range stay with it; those of the tail go.
        let markers = [make_seq(3, 0), make_seq(55, 1)];
        assert_eq!(units(&live, &markers), vec![(vec![3, 4], make_seq(51, 0), u64::MAX)]);
        // The output of merging 3 and 4 seals once it is big enough; the next merge starts after it.
        let more = [file(5, (51, 70), COMPACT_SEALED_ROWS_MIN), file(6, (71, 80), 10), file(7, (81, 90), 10)];
        let live: Vec<&FileMeta> = files[..3].iter().chain(more.iter()).collect();
        assert_eq!(units(&live, &[]), vec![(vec![6, 7], make_seq(71, 0), u64::MAX)]);
        // A sealed range with a quarter of its rows dead is rewritten on its own.
        let dead: Vec<u64> = (0..COMPACT_SEALED_ROWS_MIN / 4).map(|i| make_seq(60, i)).collect();
        assert_eq!(
            units(&live, &dead),
            vec![(vec![5], make_seq(51, 0), make_seq(71, 0)), (vec![6, 7], make_seq(71, 0), u64::MAX)]
        );
        assert_eq!(units(&live, &dead[1..]), vec![(vec![6, 7], make_seq(71, 0), u64::MAX)], "just under a quarter");
    }

    #[test]
    fn a_straddling_file_falls_back_to_merging_everything() {
        let files = [file(0, (1, 50), COMPACT_SEALED_ROWS_MIN), file(1, (40, 60), 10), file(2, (61, 70), 10)];
        let live: Vec<&FileMeta> = files.iter().collect();
        assert_eq!(units(&live, &[]), vec![(vec![0, 1, 2], 0, u64::MAX)]);
    }
}
