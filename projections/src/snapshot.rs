//! Snapshot export/import of one group's projection, and the state digest built on the same
//! canonical byte stream (so "same digest" means "same projection bytes").
//!
//! Stream: `MAGIC`, then records `cf u8 | key_len u32 BE | key (group prefix stripped) |
//! val_len u32 BE | val`, in column-family then key order. After them, in a snapshot (not in
//! the digest, which covers each file through the SHA-256 its manifest record carries), one
//! record per cold file: tag [`FILE_TAG`], relative path, file bytes. So a node whose storage
//! directory is its own receives the files its new manifest names.

use std::io::{Read, Write};

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

fn visit_group(db: &DB, group: GroupId, mut f: impl FnMut(u8, &[u8], &[u8]) -> Result<()>) -> Result<()> {
    let prefix = group.prefix();
    for (tag, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        for item in db.iterator_cf_opt(cf, opts, IteratorMode::From(&prefix, Direction::Forward)) {
            let (k, v) = item?;
            f(tag, &k[prefix.len()..], &v)?;
        }
    }
    Ok(())
}

fn put_header(out: &mut impl Write, tag: u8, key: &[u8], val_len: usize) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(val_len as u32).to_be_bytes())
}

fn put_record(out: &mut impl Write, tag: u8, key: &[u8], val: &[u8]) -> std::io::Result<()> {
    put_header(out, tag, key, val.len())?;
    out.write_all(val)
}

/// Write the group's projection as a canonical byte stream, followed by its live cold files,
/// to `out`. Records are written as they are iterated and files
/// copied through a small buffer, so memory stays bounded whatever the group's size.
pub fn export_group(at: ColdGroup<'_>, out: &mut impl Write) -> Result<()> {
    let ColdGroup { db, storage_dir, group } = at;
    out.write_all(MAGIC)?;
    visit_group(db, group, |tag, k, v| Ok(put_record(out, tag, k, v)?))?;
    // Retired files are not sent: no reader needs them, and the receiver's delete of them is
    // idempotent (see `cold::retire`).
    for meta in group_files(db, group)?.into_iter().filter(|m| m.retired_at.is_none()) {
        let path = storage_dir.join(&meta.path);
        let cold_err = |e: std::io::Error| Error::Snapshot(format!("cold file {} for the snapshot: {e}", meta.path));
        let mut file = std::fs::File::open(&path).map_err(cold_err)?;
        let len = file.metadata().map_err(cold_err)?.len();
        if len > FILE_RECORD_BYTES_MAX as u64 {
            return Err(Error::Snapshot(format!("cold file {} exceeds {FILE_RECORD_BYTES_MAX} bytes", meta.path)));
        }
        put_header(out, FILE_TAG, meta.path.as_bytes(), len as usize)?;
        let copied = std::io::copy(&mut (&mut file).take(len), out).map_err(cold_err)?;
        if copied != len {
            return Err(Error::Snapshot(format!("cold file {} shrank while being read", meta.path)));
        }
    }
    out.flush()?;
    Ok(())
}

/// SHA-256 of the group's canonical byte stream, hex encoded.
pub fn digest_group(db: &DB, group: GroupId) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    let mut scratch = Vec::new();
    visit_group(db, group, |tag, k, v| {
        scratch.clear();
        put_record(&mut scratch, tag, k, v)?;
        hasher.update(&scratch);
        Ok(())
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// Fill `buf` from `r`; `Ok(false)` at a clean end of stream before the first byte.
fn read_exact_or_end(r: &mut impl Read, buf: &mut [u8]) -> Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(Error::Snapshot("truncated snapshot record".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Snapshot("truncated snapshot record".into()),
        _ => e.into(),
    })
}

fn read_len(r: &mut impl Read, max: usize) -> Result<usize> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b)?;
    let n = u32::from_be_bytes(b) as usize;
    if n > max {
        return Err(Error::Snapshot(format!("snapshot record of {n} bytes exceeds the limit of {max}")));
    }
    Ok(n)
}

/// Stage, into `batch`, the replacement of the group's projection by the snapshot stream read
/// from `input`; cold files are written to the storage root as they arrive (before the batch
/// that names them commits). The caller commits the batch together with the new applied log
/// id: a crash mid-install leaves either the old state or the new one, never a mix. A stream
/// that ends early or breaks a limit fails before anything is committed.
pub fn import_group(at: ColdGroup<'_>, input: &mut impl Read, batch: &mut WriteBatch) -> Result<()> {
    let ColdGroup { db, storage_dir, group } = at;
    let mut magic = [0u8; 8];
    if !read_exact_or_end(input, &mut magic)? || &magic != MAGIC {
        return Err(Error::Snapshot("bad snapshot magic".into()));
    }
    let prefix = group.prefix();
    for (_, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        batch.delete_range_cf(cf, prefix.to_vec(), prefix_end(&prefix));
    }
    let mut key = Vec::new();
    let mut val = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        if !read_exact_or_end(input, &mut tag)? {
            return Ok(());
        }
        let tag = tag[0];
        let klen = read_len(input, RECORD_BYTES_MAX)?;
        key.clear();
        key.extend_from_slice(&prefix);
        key.resize(prefix.len() + klen, 0);
        read_exact(input, &mut key[prefix.len()..])?;
        let vlen = read_len(input, if tag == FILE_TAG { FILE_RECORD_BYTES_MAX } else { RECORD_BYTES_MAX })?;
        if tag == FILE_TAG {
            let path = std::str::from_utf8(&key[prefix.len()..])
                .map_err(|_| Error::Snapshot("cold file path is not UTF-8".into()))?;
            install_file(storage_dir, path, &mut input.take(vlen as u64), vlen as u64)?;
            continue;
        }
        let name = SNAPSHOT_CFS
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
            .ok_or_else(|| Error::Snapshot(format!("unknown snapshot record tag {tag}")))?;
        val.resize(vlen, 0);
        read_exact(input, &mut val)?;
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        batch.put_cf(cf, &key, &val);
    }
}
