//! Parquet files of cold storage: written under a temporary name, fsynced, renamed, the
//! directory fsynced; read whole or in batches.

use super::*;

/// Recorded as the Parquet `created_by`: fixed, so file bytes do not depend on the build.
pub(super) const PARQUET_CREATED_BY: &str = "kalamdb";

pub(super) fn parquet_err(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// A `Write` that hashes and counts what passes through to `inner`, so a checksum costs no
/// second read (the manifest's, a backup's).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> HashingWriter<W> {
        HashingWriter { inner, hasher: Sha256::new(), bytes: 0 }
    }

    /// The writer, the bytes written and their SHA-256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// `create_dir_all`, with every directory it creates made durable (its parent fsynced), so a
/// file fsynced inside a new directory cannot lose its path to a power cut.
pub fn create_dir_all_synced(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Another writer (a node sharing the volume) made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Write `batches` as the Parquet file `root/rel`: temp name (unique per writer, so nodes
/// sharing a volume never write into each other's temp file), fsync, rename, fsync the
/// directory. Same batches → same bytes; an existing file of that name is replaced by an
/// identical one. Returns (bytes, sha256).
pub(super) fn write_parquet(
    store: &FileStore,
    rel: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    pk_column: &str,
) -> Result<(u64, String)> {
    let props = table_file_props(pk_column);
    write_parquet_with(store, rel, |out| encode_parquet(out, schema, props, batches))
}

/// How a table file is encoded: row groups, pages, compression and dictionaries (see the
/// constants in `cold`).
pub(super) fn table_file_props(pk_column: &str) -> WriterProperties {
    WriterProperties::builder()
        .set_created_by(PARQUET_CREATED_BY.into())
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
        .set_data_page_row_count_limit(PAGE_ROWS_MAX)
        // The writer checks the page limits once per write batch: no larger than a page.
        .set_write_batch_size(PAGE_ROWS_MAX)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES_MAX)
        // Unique in every file: a dictionary saves nothing, and reading any page of a
        // dictionary-encoded column means reading and decoding the whole dictionary first.
        .set_column_dictionary_enabled(ColumnPath::from(pk_column), false)
        .set_column_dictionary_enabled(ColumnPath::from(crate::columnar::SEQ_COLUMN), false)
        .build()
}

/// Write the Parquet file `root/rel` as [`write_parquet`] does, its bytes made by `encode`
/// (which fsyncs the file and returns its size and SHA-256).
pub(super) fn write_parquet_with(
    store: &FileStore,
    rel: &str,
    encode: impl FnOnce(HashingWriter<std::fs::File>) -> Result<(u64, String)>,
) -> Result<(u64, String)> {
    let (dir_rel, _) = rel.rsplit_once('/').ok_or_else(|| Error::Storage(format!("bad file path {rel}")))?;
    let file = TempFile::write_with(store, dir_rel, encode)?;
    let written = (file.bytes, file.sha256.clone());
    file.publish(store, rel)?;
    Ok(written)
}

/// A table file written and fsynced under a temporary name in its final directory, waiting
/// for the name the entry that commits it gives (a flush prepared off apply is named by a
/// later entry). Dropped unpublished, it removes itself.
#[derive(Debug)]
pub(super) struct TempFile {
    tmp: Option<PathBuf>,
    pub(super) bytes: u64,
    pub(super) sha256: String,
}

impl TempFile {
    /// Write `batches` as a table file in the directory `dir_rel` (relative to the store's
    /// root) under a temporary name, fsynced. Same batches → same bytes, whatever the name.
    pub(super) fn write(
        store: &FileStore,
        dir_rel: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        pk_column: &str,
    ) -> Result<TempFile> {
        TempFile::write_with(store, dir_rel, |out| encode_parquet(out, schema, table_file_props(pk_column), batches))
    }

    /// Write a table file whose bytes `encode` makes (fsyncing it, returning its size and
    /// SHA-256) in the directory `dir_rel` under a temporary name, unique per writer, so nodes
    /// sharing a volume never write into each other's.
    pub(super) fn write_with(
        store: &FileStore,
        dir_rel: &str,
        encode: impl FnOnce(HashingWriter<std::fs::File>) -> Result<(u64, String)>,
    ) -> Result<TempFile> {
        let dir = store.path(dir_rel);
        create_dir_all_synced(&dir)?;
        crate::failpoint::hit("flush-before-write");
        let tmp = dir.join(store.temp_table_file_name());
        let out = HashingWriter::new(std::fs::File::create(&tmp)?);
        // Owned from here: an error below removes it.
        let mut file = TempFile { tmp: Some(tmp), bytes: 0, sha256: String::new() };
        (file.bytes, file.sha256) = encode(out)?;
        crate::failpoint::hit("flush-after-temp");
        Ok(file)
    }

    /// Whether the file is still there under its temporary name (a sweep of a folder shared
    /// with other nodes removes temp files left unchanged for `ORPHAN_MARKER_AGE`).
    pub(super) fn exists(&self) -> bool {
        self.tmp.as_deref().is_some_and(Path::exists)
    }

    /// Give the file its final name `rel` (in the directory it was written in): upload marker,
    /// rename, fsync the directory.
    pub(super) fn publish(mut self, store: &FileStore, rel: &str) -> Result<()> {
        let path = store.path(rel);
        let tmp = self.tmp.as_deref().expect("a temp file is published once");
        assert_eq!(path.parent(), tmp.parent(), "a file is published in the directory it was written in");
        store.will_write(rel)?;
        std::fs::rename(tmp, &path)?;
        self.tmp = None;
        sync_dir(path.parent().expect("a file path has a parent"))?;
        crate::failpoint::hit("flush-after-rename");
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Encode `batches` into `out` and fsync it; returns (bytes, sha256).
pub(super) fn encode_parquet(
    out: HashingWriter<std::fs::File>,
    schema: &SchemaRef,
    props: WriterProperties,
    batches: &[RecordBatch],
) -> Result<(u64, String)> {
    let mut writer = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(parquet_err)?;
    for b in batches {
        writer.write(b).map_err(parquet_err)?;
    }
    let mut out = writer.into_inner().map_err(parquet_err)?;
    out.flush()?;
    let (file, bytes, sha) = out.finish();
    file.sync_all()?;
    Ok((bytes, sha))
}

/// Read a whole Parquet file of the table schema.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    open_parquet(path, CONVERT_ROWS_MAX)?.map(|b| b.map_err(parquet_err)).collect()
}

/// A reader of a Parquet file's batches, `batch_rows` rows at a time.
pub(crate) fn open_parquet(
    path: &Path,
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::Storage(format!("cannot open cold file {}: {e}", path.display())))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err)?
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_err)
}

/// Temp name, fsync, rename, fsync dir.
pub(crate) fn write_small_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let len = bytes.len() as u64;
    write_atomically(path, &mut &bytes[..], len).map(|_| ())
}

/// Copy `src` to `path` through a temp name (fsync, rename, fsync dir), but only if exactly
/// `len` bytes came: a short source never replaces a file, which may be shared by every node.
/// Returns the bytes copied.
fn write_atomically(path: &Path, src: &mut impl std::io::Read, len: u64) -> Result<u64> {
    let dir = path.parent().ok_or_else(|| Error::Storage("bad path".into()))?;
    create_dir_all_synced(dir)?;
    let tmp = path.with_extension(format!("tmp-{:016x}", fastrand::u64(..)));
    let copied = {
        let mut f = std::fs::File::create(&tmp)?;
        let copied = std::io::copy(src, &mut f)?;
        f.sync_all()?;
        copied
    };
    if copied != len {
        let _ = std::fs::remove_file(&tmp);
        return Ok(copied);
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    Ok(copied)
}

/// A cold file path from a snapshot: relative, plain components only, so it cannot reach
/// outside the storage root.
pub fn check_received_path(rel: &str) -> Result<()> {
    if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(Error::Snapshot(format!("bad file path in snapshot: {rel}")));
    }
    Ok(())
}

/// Write a file received in a snapshot (same path and bytes as on the sender): `len` bytes
/// copied from `src`.
pub fn install_file(store: &FileStore, rel: &str, src: &mut impl std::io::Read, len: u64) -> Result<()> {
    check_received_path(rel)?;
    store.will_write(rel)?;
    let copied = write_atomically(&store.path(rel), src, len)?;
    if copied != len {
        return Err(Error::Snapshot(format!("snapshot ended inside cold file {rel} ({copied} of {len} bytes)")));
    }
    Ok(())
}
