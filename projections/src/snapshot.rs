//! Snapshot export/import of one group's projection, and the state digest built on the same
//! canonical byte stream (so "same digest" means "same projection bytes").
//!
//! Stream: `MAGIC`, then records `cf u8 | key_len u32 BE | key (group prefix stripped) |
//! val_len u32 BE | val`, in column-family then key order. After them, in a snapshot (not in
//! the digest, which covers each file through the SHA-256 its manifest record carries), one
//! record per cold file: tag [`FILE_TAG`], relative path, file bytes. So a node whose storage
//! directory is its own receives the files its new manifest names.
//!
//! A stored snapshot packs the records into zstd blocks (`PACKED_MAGIC`; each block is
//! `BLOCK_TAG u8 | raw_len u32 BE | packed_len u32 BE | zstd frame` of whole records): a
//! flushed table leaves one key stub per row, millions of small records that the raw stream
//! carried at several times their size in RocksDB. The digest and a backup's state file stay
//! the raw stream, and the reader takes both.

use std::io::{Read, Write};

use rocksdb::{DB, Direction, IteratorMode, ReadOptions, Snapshot, WriteBatch};
use sha2::{Digest, Sha256};

use kalamdb_log::GroupId;

use crate::cold::{ColdGroup, check_received_path, install_file, live_files_at};
use crate::error::{Error, Result};
use crate::keys::prefix_end;
use crate::{CF_CATALOG, CF_COLD, CF_ROWS};

const MAGIC: &[u8; 8] = b"KSNAP002";
/// The magic of a stream whose records come in zstd blocks (stored and sent snapshots).
const PACKED_MAGIC: &[u8; 8] = b"KSNAP003";
/// The projection column families a snapshot carries, by their record tag.
const SNAPSHOT_CFS: [(u8, &str); 3] = [(1, CF_CATALOG), (2, CF_ROWS), (3, CF_COLD)];
/// Record tag of a cold file's bytes.
const FILE_TAG: u8 = 9;
/// Largest key or value a snapshot record may carry.
const RECORD_BYTES_MAX: usize = 64 << 20;
/// Largest cold file a snapshot record may carry.
const FILE_RECORD_BYTES_MAX: usize = 1 << 30;
/// Record tag of a zstd block of records (packed streams only).
const BLOCK_TAG: u8 = 8;
/// Raw bytes of records gathered before a block is compressed: large enough for zstd to find
/// the repetition between neighbouring keys, small enough to keep a reader's buffers small.
const BLOCK_TARGET_BYTES: usize = 1 << 20;
/// Largest raw size of a block: the target plus one record at its largest.
const BLOCK_RAW_BYTES_MAX: usize = BLOCK_TARGET_BYTES + 9 + 2 * RECORD_BYTES_MAX;
/// zstd level of snapshot blocks: the fastest, which already takes key stubs to a fraction.
const BLOCK_ZSTD_LEVEL: i32 = 1;

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

/// Write the group's records, as the RocksDB snapshot `snap` holds them, as a packed stream:
/// the same records as [`export_records`], in zstd blocks.
pub fn export_packed(db: &DB, snap: &Snapshot<'_>, group: GroupId, out: &mut impl Write) -> Result<()> {
    out.write_all(PACKED_MAGIC)?;
    let mut raw = Vec::with_capacity(BLOCK_TARGET_BYTES + 1024);
    visit_group(db, snap, group, |tag, k, v| {
        put_record(&mut raw, tag, k, v)?;
        if raw.len() >= BLOCK_TARGET_BYTES {
            put_block(out, &mut raw)?;
        }
        Ok(())
    })?;
    put_block(out, &mut raw)
}

/// Compress the records in `raw` into one block on `out` and empty `raw`; nothing when empty.
fn put_block(out: &mut impl Write, raw: &mut Vec<u8>) -> Result<()> {
    if raw.is_empty() {
        return Ok(());
    }
    assert!(raw.len() <= BLOCK_RAW_BYTES_MAX, "snapshot block of {} raw bytes", raw.len());
    let packed = zstd::bulk::compress(raw, BLOCK_ZSTD_LEVEL)?;
    out.write_all(&[BLOCK_TAG])?;
    out.write_all(&(raw.len() as u32).to_be_bytes())?;
    out.write_all(&(packed.len() as u32).to_be_bytes())?;
    out.write_all(&packed)?;
    raw.clear();
    Ok(())
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
    export_packed(db, snap, group, out)?;
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

/// Reads a state stream item by item, checking framing, tags and limits; records of a packed
/// stream are served from its current block.
struct StreamReader<R> {
    input: R,
    key: Vec<u8>,
    val: Vec<u8>,
    /// Whether the stream is packed (blocks allowed).
    packed: bool,
    /// The current block's raw records, and how far they were read.
    block: Vec<u8>,
    block_at: usize,
}

impl<R: Read> StreamReader<R> {
    fn open(mut input: R) -> Result<StreamReader<R>> {
        let mut magic = [0u8; 8];
        if !read_exact_or_end(&mut input, &mut magic)? || (&magic != MAGIC && &magic != PACKED_MAGIC) {
            return Err(Error::Snapshot("bad snapshot magic".into()));
        }
        let packed = &magic == PACKED_MAGIC;
        Ok(StreamReader { input, key: Vec::new(), val: Vec::new(), packed, block: Vec::new(), block_at: 0 })
    }

    fn next(&mut self) -> Result<Option<Item>> {
        loop {
            if self.block_at < self.block.len() {
                let mut rest = &self.block[self.block_at..];
                let before = rest.len();
                let mut tag = [0u8; 1];
                read_exact(&mut rest, &mut tag)?;
                if tag[0] == FILE_TAG || tag[0] == BLOCK_TAG {
                    return Err(Error::Snapshot(format!("record tag {} inside a snapshot block", tag[0])));
                }
                let item = read_item(&mut rest, tag[0], &mut self.key, &mut self.val)?;
                self.block_at += before - rest.len();
                return Ok(Some(item));
            }
            let mut tag = [0u8; 1];
            if !read_exact_or_end(&mut self.input, &mut tag)? {
                return Ok(None);
            }
            if tag[0] != BLOCK_TAG {
                return read_item(&mut self.input, tag[0], &mut self.key, &mut self.val).map(Some);
            }
            if !self.packed {
                return Err(Error::Snapshot("a snapshot block in a raw stream".into()));
            }
            self.read_block()?;
        }
    }

    /// Read and decompress the block whose tag was just read; its records come next.
    fn read_block(&mut self) -> Result<()> {
        let raw_len = read_len(&mut self.input, BLOCK_RAW_BYTES_MAX)?;
        let packed_len = read_len(&mut self.input, zstd::zstd_safe::compress_bound(BLOCK_RAW_BYTES_MAX))?;
        // Grown as bytes arrive, so a length alone cannot make the reader allocate.
        let mut packed = Vec::new();
        (&mut self.input).take(packed_len as u64).read_to_end(&mut packed)?;
        if packed.len() != packed_len {
            return Err(Error::Snapshot("truncated snapshot block".into()));
        }
        self.block.clear();
        self.block.reserve(raw_len);
        self.block_at = 0;
        // The output buffer's capacity bounds the decompression, whatever the frame claims.
        let got = zstd::bulk::Decompressor::new()?
            .decompress_to_buffer(&packed, &mut self.block)
            .map_err(|e| Error::Snapshot(format!("snapshot block does not decompress: {e}")))?;
        if got != raw_len || self.block.len() != raw_len {
            return Err(Error::Snapshot(format!("snapshot block holds {got} bytes, its header says {raw_len}")));
        }
        Ok(())
    }
}

/// The rest of the item whose `tag` was just read from `r`: a record into `key` and `val`, or
/// a cold file's header (its bytes follow in `r`).
fn read_item(r: &mut impl Read, tag: u8, key: &mut Vec<u8>, val: &mut Vec<u8>) -> Result<Item> {
    let klen = read_len(r, RECORD_BYTES_MAX)?;
    key.resize(klen, 0);
    read_exact(r, key)?;
    if tag == FILE_TAG {
        let len = read_len(r, FILE_RECORD_BYTES_MAX)? as u64;
        let path = String::from_utf8(key.clone()).map_err(|_| Error::Snapshot("cold file path is not UTF-8".into()))?;
        return Ok(Item::File { path, len });
    }
    let cf = SNAPSHOT_CFS
        .iter()
        .find(|(t, _)| *t == tag)
        .map(|(_, name)| *name)
        .ok_or_else(|| Error::Snapshot(format!("unknown snapshot record tag {tag}")))?;
    let vlen = read_len(r, RECORD_BYTES_MAX)?;
    val.resize(vlen, 0);
    read_exact(r, val)?;
    Ok(Item::Record { cf })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        (0..5000u32)
            .map(|i| (2 + (i % 2) as u8, format!("key-{i:08}").into_bytes(), i.to_be_bytes().to_vec()))
            .collect()
    }

    fn read_all(stream: &[u8]) -> Result<(Vec<(&'static str, Vec<u8>, Vec<u8>)>, Vec<(String, Vec<u8>)>)> {
        let mut reader = StreamReader::open(stream)?;
        let (mut recs, mut files) = (Vec::new(), Vec::new());
        while let Some(item) = reader.next()? {
            match item {
                Item::Record { cf } => recs.push((cf, reader.key.clone(), reader.val.clone())),
                Item::File { path, len } => {
                    let mut bytes = Vec::new();
                    (&mut reader.input).take(len).read_to_end(&mut bytes)?;
                    files.push((path, bytes));
                }
            }
        }
        Ok((recs, files))
    }

    /// A packed stream of small blocks, then one cold file, as a stored snapshot sends them.
    fn packed(block_bytes: usize) -> Vec<u8> {
        let mut out = PACKED_MAGIC.to_vec();
        let mut raw = Vec::new();
        for (tag, k, v) in records() {
            put_record(&mut raw, tag, &k, &v).unwrap();
            if raw.len() >= block_bytes {
                put_block(&mut out, &mut raw).unwrap();
            }
        }
        put_block(&mut out, &mut raw).unwrap();
        out.extend(file_header("t/1.parquet", 3).unwrap());
        out.extend(b"abc");
        out
    }

    #[test]
    fn packed_and_raw_streams_read_the_same_records() {
        let mut raw = MAGIC.to_vec();
        for (tag, k, v) in records() {
            put_record(&mut raw, tag, &k, &v).unwrap();
        }
        raw.extend(file_header("t/1.parquet", 3).unwrap());
        raw.extend(b"abc");
        let from_raw = read_all(&raw).unwrap();
        assert_eq!(from_raw.0.len(), 5000);
        for block_bytes in [1, 4096, BLOCK_TARGET_BYTES] {
            let stream = packed(block_bytes);
            assert_eq!(read_all(&stream).unwrap(), from_raw, "blocks of {block_bytes} bytes");
            assert_eq!(check_stream(&mut &stream[..]).unwrap(), 5000);
        }
        // Small keyed records shrink several times over.
        let one_block = packed(BLOCK_TARGET_BYTES);
        assert!(one_block.len() * 3 < raw.len(), "{} packed vs {} raw", one_block.len(), raw.len());
    }

    #[test]
    fn hostile_blocks_are_refused() {
        let good = packed(BLOCK_TARGET_BYTES);
        let body = &good[8..];
        let err = |stream: Vec<u8>| read_all(&stream).unwrap_err().to_string();
        // A block in a raw stream.
        assert!(err([MAGIC.as_slice(), body].concat()).contains("raw stream"));
        // A header that understates or overstates the raw size.
        let mut lie = good.clone();
        let raw_len = u32::from_be_bytes(lie[9..13].try_into().unwrap());
        lie[9..13].copy_from_slice(&(raw_len - 1).to_be_bytes());
        assert!(read_all(&lie).is_err());
        let mut lie = good.clone();
        lie[9..13].copy_from_slice(&(raw_len + 1).to_be_bytes());
        assert!(err(lie).contains("header says"));
        // Sizes past the limits, corrupt bytes, a stream cut inside a block.
        let mut huge = good.clone();
        huge[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(err(huge).contains("exceeds the limit"));
        let mut corrupt = good.clone();
        corrupt[20..40].fill(0xff);
        assert!(read_all(&corrupt).is_err());
        assert!(err(good[..good.len() / 2].to_vec()).contains("truncated"));
        // A file record smuggled inside a block.
        let mut raw = file_header("x", 0).unwrap();
        let mut nested = PACKED_MAGIC.to_vec();
        put_block(&mut nested, &mut raw).unwrap();
        assert!(err(nested).contains("inside a snapshot block"));
    }
}
