//! Snapshot export/import of one group's projection, and the state digest built on the same
//! canonical byte stream (so "same digest" means "same projection bytes").
//!
//! Stream: `MAGIC`, then records `cf u8 | key_len u32 BE | key (group prefix stripped) |
//! val_len u32 BE | val`, in column-family then key order. After them, in a snapshot (not in
//! the digest, which covers each file through the SHA-256 its manifest record carries), one
//! record per cold file: tag [`FILE_TAG`], relative path, file bytes. So a node whose storage
//! directory is its own receives the files its new manifest names.

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};
use sha2::{Digest, Sha256};

use kalamdb_log::GroupId;

use crate::cold::{ColdGroup, group_files, install_file};
use crate::error::{Error, Result};
use crate::keys::prefix_end;
use crate::{CF_CATALOG, CF_COLD, CF_ROWS};

const MAGIC: &[u8; 8] = b"KSNAP002";
/// The projection column families a snapshot carries, by their record tag.
const SNAPSHOT_CFS: [(u8, &str); 3] = [(1, CF_CATALOG), (2, CF_ROWS), (3, CF_COLD)];
/// Record tag of a cold file's bytes.
const FILE_TAG: u8 = 9;
/// Largest key or value a snapshot record may carry.
const RECORD_BYTES_MAX: usize = 64 << 20;
/// Largest cold file a snapshot record may carry.
const FILE_RECORD_BYTES_MAX: usize = 1 << 30;

fn visit_group(db: &DB, group: GroupId, mut f: impl FnMut(u8, &[u8], &[u8])) -> Result<()> {
    let prefix = group.prefix();
    for (tag, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            f(tag, &k[prefix.len()..], &v);
        }
    }
    Ok(())
}

fn put_record(out: &mut Vec<u8>, tag: u8, key: &[u8], val: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(val.len() as u32).to_be_bytes());
    out.extend_from_slice(val);
}

/// The group's projection as a canonical byte stream, followed by its cold files.
pub fn export_group(at: ColdGroup<'_>) -> Result<Vec<u8>> {
    let ColdGroup { db, storage_dir, group } = at;
    let mut out = MAGIC.to_vec();
    visit_group(db, group, |tag, k, v| put_record(&mut out, tag, k, v))?;
    // Retired files are not sent: no reader needs them, and the receiver's delete of them is
    // idempotent (see `cold::retire`).
    for meta in group_files(db, group)?.into_iter().filter(|m| m.retired_at.is_none()) {
        let bytes = std::fs::read(storage_dir.join(&meta.path))
            .map_err(|e| Error::Snapshot(format!("cold file {} for the snapshot: {e}", meta.path)))?;
        put_record(&mut out, FILE_TAG, meta.path.as_bytes(), &bytes);
    }
    Ok(out)
}

/// SHA-256 of the group's canonical byte stream, hex encoded.
pub fn digest_group(db: &DB, group: GroupId) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    let mut scratch = Vec::new();
    visit_group(db, group, |tag, k, v| {
        scratch.clear();
        put_record(&mut scratch, tag, k, v);
        hasher.update(&scratch);
    })?;
    Ok(hex::encode(hasher.finalize()))
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if data.len() < n {
        return Err(Error::Snapshot("truncated snapshot record".into()));
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Ok(head)
}

fn take_len(data: &mut &[u8], max: usize) -> Result<usize> {
    let b = take(data, 4)?;
    let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if n > max {
        return Err(Error::Snapshot(format!("snapshot record of {n} bytes exceeds the limit of {max}")));
    }
    Ok(n)
}

/// Stage, into `batch`, the replacement of the group's projection by the snapshot stream. The
/// whole stream is validated first, and the caller commits the batch together with the new
/// applied log id: a crash mid-install leaves either the old state or the new one, never a mix.
pub fn import_group(at: ColdGroup<'_>, data: &[u8], batch: &mut WriteBatch) -> Result<()> {
    let ColdGroup { db, storage_dir, group } = at;
    let mut records = Vec::new();
    let mut files = Vec::new();
    let mut rest = data;
    if take(&mut rest, MAGIC.len())? != MAGIC {
        return Err(Error::Snapshot("bad snapshot magic".into()));
    }
    while !rest.is_empty() {
        let tag = take(&mut rest, 1)?[0];
        let klen = take_len(&mut rest, RECORD_BYTES_MAX)?;
        let key = take(&mut rest, klen)?;
        let vlen = take_len(&mut rest, if tag == FILE_TAG { FILE_RECORD_BYTES_MAX } else { RECORD_BYTES_MAX })?;
        let val = take(&mut rest, vlen)?;
        if tag == FILE_TAG {
            let path = std::str::from_utf8(key).map_err(|_| Error::Snapshot("cold file path is not UTF-8".into()))?;
            files.push((path, val));
            continue;
        }
        let cf = SNAPSHOT_CFS
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
            .ok_or_else(|| Error::Snapshot(format!("unknown snapshot record tag {tag}")))?;
        records.push((cf, key, val));
    }
    // Files first: the manifest the batch installs must never name a file that is not there.
    for (path, bytes) in files {
        install_file(storage_dir, path, bytes)?;
    }
    let prefix = group.prefix();
    for (_, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        batch.delete_range_cf(cf, prefix.to_vec(), prefix_end(&prefix));
    }
    let mut key = Vec::new();
    for (name, k, v) in records {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        key.clear();
        key.extend_from_slice(&prefix);
        key.extend_from_slice(k);
        batch.put_cf(cf, &key, v);
    }
    Ok(())
}
