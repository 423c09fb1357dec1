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

use super::{FILE_ROWS_MAX, FileMeta};

/// A file of at least this many rows is *sealed*: compactions leave it, and every file at or
/// before its log range. Half a file: a compaction of 8 default flushes (800k rows) seals.
pub const COMPACT_SEALED_ROWS_MIN: u64 = (FILE_ROWS_MAX / 2) as u64;

/// The files to merge and the log index they all lie after (0: every live file).
#[derive(Debug, PartialEq)]
pub struct CompactionPlan<'f> {
    pub inputs: Vec<&'f FileMeta>,
    pub after: u64,
}

/// The plan for a scope's live files (retired ones already left out).
pub fn compaction_plan<'f>(live: &[&'f FileMeta]) -> CompactionPlan<'f> {
    let after = live.iter().filter(|f| f.rows >= COMPACT_SEALED_ROWS_MIN).map(|f| f.log_end).max().unwrap_or(0);
    // A file straddling the boundary would break "the merged versions are those after it":
    // never written by this code, but then the old rule (merge everything) is the safe one.
    if live.iter().any(|f| f.log_start <= after && f.log_end > after) {
        return CompactionPlan { inputs: live.to_vec(), after: 0 };
    }
    CompactionPlan { inputs: live.iter().copied().filter(|f| f.log_start > after).collect(), after }
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

    fn nos(plan: &CompactionPlan<'_>) -> Vec<u64> {
        plan.inputs.iter().map(|f| f.file_no).collect()
    }

    #[test]
    fn small_scopes_merge_everything() {
        let files = [file(0, (1, 10), 100), file(1, (11, 20), 100), file(2, (21, 30), 100)];
        let live: Vec<&FileMeta> = files.iter().collect();
        let plan = compaction_plan(&live);
        assert_eq!((nos(&plan), plan.after), (vec![0, 1, 2], 0));
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
        let plan = compaction_plan(&live);
        assert_eq!((nos(&plan), plan.after), (vec![3, 4], 50));
        // The output of merging 3 and 4 seals once it is big enough; the next merge starts after it.
        let more = [file(5, (51, 70), COMPACT_SEALED_ROWS_MIN), file(6, (71, 80), 10)];
        let live: Vec<&FileMeta> = files[..3].iter().chain(more.iter()).collect();
        let plan = compaction_plan(&live);
        assert_eq!((nos(&plan), plan.after), (vec![6], 70));
    }

    #[test]
    fn a_straddling_file_falls_back_to_merging_everything() {
        let files = [file(0, (1, 50), COMPACT_SEALED_ROWS_MIN), file(1, (40, 60), 10), file(2, (61, 70), 10)];
        let live: Vec<&FileMeta> = files.iter().collect();
        let plan = compaction_plan(&live);
        assert_eq!((nos(&plan), plan.after), (vec![0, 1, 2], 0));
    }
}
