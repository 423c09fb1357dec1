//! The group's apply format: which way this group's entries are applied where builds differ
//! (the bytes of table files, stubs and records). A group starts at [`FORMAT_FIRST`] and moves up
//! only through `Op::SetFormat` in its log, which its leader proposes once every member applies
//! the new format. So during a rolling upgrade every replica keeps writing the same bytes,
//! and a build never meets state or entries written in a format it does not know.
//!
//! The format lives in the `catalog` column family under the group's prefix, so snapshots and
//! digests carry it. Format 1 has no record at all: the state of a group that never switched is
//! byte for byte what builds before formats wrote, and they can still read its snapshots.

use kalamdb_log::GroupId;
use rocksdb::{DB, WriteBatch};

use crate::CF_CATALOG;
use crate::error::{Error, Result};

/// Key tag of the format record (after the group prefix).
pub(crate) const KEY_FORMAT: u8 = b'F';

/// The format every group starts at: what the builds just before formats apply (run stubs
/// included, `cold::stubs`). Builds older than run stubs never agreed with those, and no
/// format can change what they do.
pub const FORMAT_FIRST: u32 = 1;
/// A flush settles its rows itself when they make few stub records (`cold::inline`), not only
/// when they are few rows; builds before it leave them to `Settle` ops.
pub const FORMAT_SETTLE_IN_FLUSH: u32 = 2;
/// A compaction joins files whose key ranges do not overlap and that hold no superseded
/// version by copying their encoded column chunks (`cold::concat`); builds before it merge
/// them row by row, which writes other row group and page boundaries.
pub const FORMAT_COPY_COMPACTION: u32 = 3;
/// The group's leader prepares whole flushes off apply (`Op::PrepareFlush`, then
/// `Op::FlushUpto`, `cold::prepared`); builds before it cannot read those ops. Apply writes
/// the same bytes for the ops of earlier formats.
pub const FORMAT_PREPARED_FLUSH: u32 = 4;
/// The highest format this build applies.
pub const FORMAT_MAX: u32 = FORMAT_PREPARED_FLUSH;

fn format_key(group: GroupId) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.prefix());
    k[4] = KEY_FORMAT;
    k
}

/// The group's apply format as last committed.
pub fn load(db: &DB, group: GroupId) -> Result<u32> {
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    match db.get_pinned_cf(cf, format_key(group))? {
        None => Ok(FORMAT_FIRST),
        Some(v) => {
            let b: [u8; 4] = v.as_ref().try_into().map_err(|_| Error::Corrupt("bad format record".into()))?;
            Ok(u32::from_be_bytes(b))
        }
    }
}

/// Stage the group's move from `current` to `format` into `batch`; the format it is at
/// afterwards. Never lowers it. `Err` when this build does not apply `format`: the log has
/// moved past this build, and applying on in an older way would make this replica differ.
pub(crate) fn raise(db: &DB, batch: &mut WriteBatch, group: GroupId, current: u32, format: u32) -> Result<u32> {
    if format > FORMAT_MAX {
        return Err(Error::Format(format!(
            "group {group}: the log switches to apply format {format}, and this build applies formats up to \
             {FORMAT_MAX}; run a build that applies it"
        )));
    }
    if format <= current {
        return Ok(current);
    }
    let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
    batch.put_cf(cf, format_key(group), format.to_be_bytes());
    Ok(format)
}
