//! Snapshot export/import of one group's projection, and the state digest built on the same
//! canonical byte stream (so "same digest" means "same projection bytes").
//!
//! Stream: `MAGIC`, then records `cf u8 | key_len u32 BE | key (group prefix stripped) |
//! val_len u32 BE | val`, in column-family then key order. After them, in a snapshot (not in
//! the digest, which covers each file through the SHA-256 its manifest record carries), one
//! record per cold file: tag [`FILE_TAG`], relative path, file bytes. So a node whose storage
//! directory is its own receives the files its new manifest names.

use std::io::{Read, Write};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, Snapshot, WriteBatch};
use sha2::{Digest, Sha256};

use kalamdb_log::GroupId;

use crate::cold::{ColdGroup, check_received_path, install_file, live_files_at};
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

/// Visit every record of the group as the RocksDB snapshot `snap` of `db` holds it.
fn visit_group(
    db: &DB,
    snap: &Snapshot<'_>,
    group: GroupId,
    mut f: impl FnMut(u8, &[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let prefix = group.prefix();
    for (tag, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        for item in snap.iterator_cf_opt(cf, opts, IteratorMode::From(&prefix, Direction::Forward)) {
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

/// Write the group's records, as the RocksDB snapshot `snap` holds them, as the canonical byte
/// stream (magic and records, no files) to `out`: a backup's state file, and the first part of
/// a snapshot. Its SHA-256 is the group's digest at that position.
pub fn export_records(db: &DB, snap: &Snapshot<'_>, group: GroupId, out: &mut impl Write) -> Result<()> {
    out.write_all(MAGIC)?;
    visit_group(db, snap, group, |tag, k, v| Ok(put_record(out, tag, k, v)?))
}

/// The stream header of a cold file of `len` bytes at storage path `path`; its bytes follow.
pub fn file_header(path: &str, len: u64) -> Result<Vec<u8>> {
    if len > FILE_RECORD_BYTES_MAX as u64 {
        return Err(Error::Snapshot(format!("cold file {path} exceeds {FILE_RECORD_BYTES_MAX} bytes")));
    }
    let mut out = Vec::with_capacity(9 + path.len());
    put_header(&mut out, FILE_TAG, path.as_bytes(), len as usize)?;
    Ok(out)
}

/// A cold file a stored snapshot holds by a hard link (or a copy) instead of in its stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LinkedFile {
    /// Its path under the storage root.
    pub path: String,
    pub bytes: u64,
}

/// Write the group's records, as the RocksDB snapshot `snap` holds them, to `out`, and put the
/// live cold files they name into the folder `links`, as `links/0`, `links/1`, ... in that
/// order: hard links, so a snapshot costs no second copy of the files (a copy where the
/// storage folder is on another file system). The stream of the snapshot is the records
/// followed by each file behind its [`file_header`] (see `snapshot_store`). Memory stays
/// bounded whatever the group's size; apply goes on meanwhile (the caller pins the files, see
/// [`crate::cold::FilePins`], until the links exist). Returns the files.
pub fn export_linked(
    at: ColdGroup<'_>,
    snap: &Snapshot<'_>,
    out: &mut impl Write,
    links: &std::path::Path,
) -> Result<Vec<LinkedFile>> {
    let ColdGroup { db, files: store, group } = at;
    export_records(db, snap, group, out)?;
    out.flush()?;
    // Retired files are not carried: no reader needs them, and the receiver's delete of them
    // is idempotent (see `cold::retire`).
    let files = live_files_at(db, snap, group)?;
    let mut linked = Vec::with_capacity(files.len());
    if files.is_empty() {
        return Ok(linked);
    }
    crate::cold::create_dir_all_synced(links)?;
    for (i, meta) in files.iter().enumerate() {
        let source = store.local(&meta.path, meta.bytes, &meta.sha256)?;
        let cold_err = |e: std::io::Error| Error::Snapshot(format!("cold file {} for the snapshot: {e}", meta.path));
        let target = links.join(i.to_string());
        if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target).map_err(cold_err)?;
            std::fs::File::open(&target).and_then(|f| f.sync_all()).map_err(cold_err)?;
        }
        let len = std::fs::metadata(&target).map_err(cold_err)?.len();
        if len != meta.bytes {
            return Err(Error::Snapshot(format!(
                "cold file {} has {len} bytes, its manifest says {}",
                meta.path, meta.bytes
            )));
        }
        // Checked here, not when the snapshot is sent: a stream must not fail half way.
        file_header(&meta.path, len)?;
        linked.push(LinkedFile { path: meta.path.clone(), bytes: len });
    }
    crate::cold::sync_dir(links)?;
    Ok(linked)
}

/// On-disk bytes (SST files, compressed, as RocksDB estimates them) of what a snapshot of the
/// group carries besides its files: how big its next snapshot's records would be, roughly.
pub fn approximate_state_bytes(db: &DB, group: GroupId) -> Result<u64> {
    let prefix = group.prefix();
    let end = prefix_end(&prefix);
    let mut total = 0u64;
    for (_, name) in SNAPSHOT_CFS {
        total = total.saturating_add(kalamdb_log::storage::approximate_range_bytes(db, name, &prefix, &end)?);
    }
    Ok(total)
}

/// SHA-256 of the group's canonical byte stream, hex encoded.
pub fn digest_group(db: &DB, group: GroupId) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    let mut scratch = Vec::new();
    let snap = db.snapshot();
    visit_group(db, &snap, group, |tag, k, v| {
        scratch.clear();
        put_record(&mut scratch, tag, k, v)?;
        hasher.update(&scratch);
        Ok(())
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// Bytes of records one install batch stages before it is written: what bounds an install's
/// memory, whatever the group's size.
pub const INSTALL_BATCH_BYTES_MAX: usize = 8 << 20;

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

/// One item of a state stream.
enum Item {
    /// A record of column family `cf`: key (without the group prefix) and value in the reader.
    Record { cf: &'static str },
    /// A cold file: its path; its `len` bytes follow in the input and must be consumed before
    /// the next item is read.
    File { path: String, len: u64 },
}

/// Reads a state stream item by item, checking framing, tags and limits.
struct StreamReader<R> {
    input: R,
    key: Vec<u8>,
    val: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    fn open(mut input: R) -> Result<StreamReader<R>> {
        let mut magic = [0u8; 8];
        if !read_exact_or_end(&mut input, &mut magic)? || &magic != MAGIC {
            return Err(Error::Snapshot("bad snapshot magic".into()));
        }
        Ok(StreamReader { input, key: Vec::new(), val: Vec::new() })
    }

    fn next(&mut self) -> Result<Option<Item>> {
        let mut tag = [0u8; 1];
        if !read_exact_or_end(&mut self.input, &mut tag)? {
            return Ok(None);
        }
        let tag = tag[0];
        let klen = read_len(&mut self.input, RECORD_BYTES_MAX)?;
        self.key.resize(klen, 0);
        read_exact(&mut self.input, &mut self.key)?;
        if tag == FILE_TAG {
            let len = read_len(&mut self.input, FILE_RECORD_BYTES_MAX)? as u64;
            let path = String::from_utf8(self.key.clone())
                .map_err(|_| Error::Snapshot("cold file path is not UTF-8".into()))?;
            return Ok(Some(Item::File { path, len }));
        }
        let cf = SNAPSHOT_CFS
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, name)| *name)
            .ok_or_else(|| Error::Snapshot(format!("unknown snapshot record tag {tag}")))?;
        let vlen = read_len(&mut self.input, RECORD_BYTES_MAX)?;
        self.val.resize(vlen, 0);
        read_exact(&mut self.input, &mut self.val)?;
        Ok(Some(Item::Record { cf }))
    }
}

/// Read the state stream `input` to its end, checking framing, tags, limits and that every
/// cold file is whole, without writing anything: an install checks its stream first, so the
/// only failures left once it starts writing are the machine's own. Returns the records.
pub fn check_stream(input: &mut impl Read) -> Result<u64> {
    let mut reader = StreamReader::open(input)?;
    let mut records = 0u64;
    while let Some(item) = reader.next()? {
        match item {
            Item::Record { .. } => records += 1,
            Item::File { path, len } => {
                check_received_path(&path)?;
                let copied = std::io::copy(&mut (&mut reader.input).take(len), &mut std::io::sink())?;
                if copied != len {
                    return Err(Error::Snapshot(format!(
                        "snapshot ends inside cold file {path} ({copied} of {len} bytes)"
                    )));
                }
            }
        }
    }
    Ok(records)
}

/// Replace the group's projection by the state stream `input`, in batches of at most
/// [`INSTALL_BATCH_BYTES_MAX`] handed to `write` in order (the first one deletes the group's
/// records); cold files are written to the storage root as they arrive (after the records that
/// name them: the stream carries files last). Returns the last batch unwritten, for the caller
/// to commit together with the new position. The group is half installed until then and must
/// not be read: callers check the stream first ([`check_stream`]) and mark the install so a
/// crash in between redoes it, and readers of whole groups refuse a marked one.
pub fn import_group(
    at: ColdGroup<'_>,
    input: &mut impl Read,
    mut write: impl FnMut(WriteBatch) -> Result<()>,
) -> Result<WriteBatch> {
    let ColdGroup { db, files, group } = at;
    let mut reader = StreamReader::open(input)?;
    let prefix = group.prefix();
    let mut batch = WriteBatch::default();
    for (_, name) in SNAPSHOT_CFS {
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt(format!("no cf {name}")))?;
        batch.delete_range_cf(cf, prefix.to_vec(), prefix_end(&prefix));
    }
    let mut key = Vec::new();
    while let Some(item) = reader.next()? {
        match item {
            Item::File { path, len } => {
                install_file(files, &path, &mut (&mut reader.input).take(len), len)?;
            }
            Item::Record { cf } => {
                let cf = db.cf_handle(cf).ok_or_else(|| Error::Corrupt(format!("no cf {cf}")))?;
                key.clear();
                key.extend_from_slice(&prefix);
                key.extend_from_slice(&reader.key);
                batch.put_cf(cf, &key, &reader.val);
                if batch.size_in_bytes() >= INSTALL_BATCH_BYTES_MAX {
                    write(std::mem::take(&mut batch))?;
                }
            }
        }
    }
    Ok(batch)
}
