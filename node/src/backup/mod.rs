//! Backups of the whole database and restores from them: the manifest that describes a backup,
//! the layout of a backup folder, and verified file copies. `job.rs` writes a backup (the
//! `BACKUP DATABASE` job), `restore.rs` rebuilds a node from one (`kalamdb-server restore`).
//!
//! A backup folder (or a bucket prefix, `s3://bucket/prefix`: the same layout as object keys)
//! holds any number of backups that share their Parquet files:
//! - `files/<path under the storage root>`: cold files, immutable and named by the log (same name,
//!   same bytes), so a later backup copies only the files the folder lacks;
//! - `backups/<id>/<group>.state`: one group's records at one applied index, the canonical stream
//!   of `kalamdb_projections::snapshot` (its SHA-256 is the group's digest at that index);
//! - `backups/<id>/manifest.json`: groups, indexes, files, sizes and SHA-256s, written last;
//! - `LATEST`: the id of the newest complete backup, replaced after its manifest is durable.

pub mod job;
pub mod restore;
mod sink;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kalamdb_log::types::LogId;
use kalamdb_projections::cold::HashingWriter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use job::Backups;

/// Format of the manifest; a restore refuses any other.
pub const BACKUP_FORMAT: u32 = 1;
/// Bytes a manifest may have: a restore reads it whole.
pub const MANIFEST_BYTES_MAX: u64 = 64 << 20;
/// Bytes of a backup id (also a folder name).
pub const BACKUP_ID_BYTES_MAX: usize = 128;
const LATEST: &str = "LATEST";
const MANIFEST: &str = "manifest.json";

/// One file of a backup, relative to the backup folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// One group's part of a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupBackup {
    /// The group's name (`meta-catalog`, `user-shard-0`, ...), for people.
    pub group: String,
    pub group_id: u32,
    /// The applied position the state was read at.
    pub last_log_id: Option<LogId>,
    pub state: FileEntry,
    /// The live Parquet files the state names.
    pub files: Vec<FileEntry>,
}

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: String,
    pub created_at_micros: i64,
    /// The node that wrote it, and its cluster.
    pub node_id: u64,
    pub cluster_id: Option<String>,
    pub user_shards: u16,
    pub shared_shards: u16,
    pub groups: Vec<GroupBackup>,
}

/// Where a backup goes, or comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// A folder on this node's file system (shared or mounted for a cluster).
    Folder(PathBuf),
    /// `s3://bucket/prefix`, reached with the `storage.s3_*` settings.
    Bucket(String),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Folder(p) => write!(f, "{}", p.display()),
            Destination::Bucket(url) => f.write_str(url),
        }
    }
}

/// A backup destination: an absolute folder, or an `s3://` URL.
pub fn parse_destination(text: &str) -> std::result::Result<Destination, kalamdb_query::Error> {
    if text.contains("://") {
        crate::bucket::BucketUrl::parse(text)
            .map_err(|e| kalamdb_query::Error::InvalidSql(format!("backup destination '{text}': {e}")))?;
        return Ok(Destination::Bucket(text.trim_end_matches('/').to_string()));
    }
    let path = Path::new(text);
    if !path.is_absolute() || text.len() > 4096 || path.components().any(|c| c.as_os_str() == "..") {
        return Err(kalamdb_query::Error::InvalidSql(format!(
            "backup destination '{text}' must be an absolute folder path without '..'"
        )));
    }
    Ok(Destination::Folder(path.to_path_buf()))
}

/// A destination folder is new, empty, or a backup folder already (`LATEST` or `backups/` in
/// it): a backup never writes into a folder that holds something else.
pub fn check_destination_folder(dest: &Path) -> std::result::Result<(), kalamdb_query::Error> {
    let refuse =
        |why: String| kalamdb_query::Error::InvalidSql(format!("backup destination {}: {why}", dest.display()));
    match std::fs::read_dir(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(e.to_string())),
        Ok(mut entries) => {
            let is_backup = dest.join(LATEST).is_file() || dest.join("backups").is_dir();
            if is_backup || entries.next().is_none() {
                Ok(())
            } else {
                Err(refuse("it holds other files; give a new or empty folder, or one with earlier backups".into()))
            }
        }
    }
}

/// Distinct per call within a process and between processes (nodes may share a folder).
pub(crate) fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}-{n}", std::process::id())
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Write `path` through a temp name: `fill` writes the content, which is fsynced and checked
/// against `expect` (bytes, SHA-256) if given, then renamed into place and the directory
/// fsynced. A check that fails leaves nothing behind. Returns (bytes, SHA-256 hex).
pub(crate) fn write_verified(
    path: &Path,
    expect: Option<(u64, &str)>,
    fill: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<(u64, String)> {
    let dir = path.parent().ok_or_else(|| Error::Backup(format!("bad path {}", path.display())))?;
    kalamdb_projections::cold::create_dir_all_synced(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", unique_suffix()));
    let result = (|| {
        // Owner-only: a backup holds every row and the users' password hashes.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&tmp)?;
        let mut out = HashingWriter::new(std::io::BufWriter::new(file));
        fill(&mut out)?;
        out.flush()?;
        let (file, bytes, sha) = out.finish();
        file.into_inner().map_err(|e| Error::Io(e.into_error()))?.sync_all()?;
        let got = (bytes, sha);
        if let Some((bytes, sha)) = expect
            && (got.0 != bytes || got.1 != sha)
        {
            return Err(Error::Backup(format!(
                "{} does not match its record: {} bytes with SHA-256 {}, expected {bytes} bytes with SHA-256 {sha}",
                path.display(),
                got.0,
                got.1
            )));
        }
        Ok(got)
    })();
    match result {
        Ok(got) => {
            std::fs::rename(&tmp, path)?;
            sync_dir(dir)?;
            Ok(got)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Copy `src` to `dest` (temp name, fsync, rename), checking its size and SHA-256 on the way.
pub(crate) fn copy_verified(src: &Path, dest: &Path, bytes: u64, sha256: &str) -> Result<()> {
    let mut input =
        std::fs::File::open(src).map_err(|e| Error::Backup(format!("cannot open {}: {e}", src.display())))?;
    write_verified(dest, Some((bytes, sha256)), |out| {
        std::io::copy(&mut (&mut input).take(bytes.saturating_add(1)), out)?;
        Ok(())
    })
    .map(|_| ())
    .map_err(|e| match e {
        Error::Backup(m) => Error::Backup(format!("copying {}: {m}", src.display())),
        other => other,
    })
}

/// Check that `path` has `bytes` bytes whose SHA-256 is `sha256`, reading it once.
pub(crate) fn verify_file(path: &Path, bytes: u64, sha256: &str) -> Result<()> {
    let mut file =
        std::fs::File::open(path).map_err(|e| Error::Backup(format!("cannot open {}: {e}", path.display())))?;
    let len = file.metadata()?.len();
    if len != bytes {
        return Err(Error::Backup(format!(
            "backup file {} is damaged: {len} bytes, the manifest records {bytes}",
            path.display()
        )));
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        return Err(Error::Backup(format!(
            "backup file {} is damaged: SHA-256 {got}, the manifest records {sha256}",
            path.display()
        )));
    }
    Ok(())
}

/// A relative path from a manifest, checked: plain components only, so no entry reaches
/// outside the backup folder (or, restored, outside the storage root).
pub(crate) fn checked_rel(rel: &str) -> Result<&str> {
    let bad = rel.is_empty()
        || rel.len() > 4096
        || rel.starts_with('/')
        || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        || rel.contains('\\');
    if bad {
        return Err(Error::Backup(format!("manifest names a bad path: {rel:?}")));
    }
    Ok(rel)
}

fn manifest_rel(backup_id: &str) -> String {
    format!("backups/{backup_id}/{MANIFEST}")
}

fn manifest_path(dest: &Path, backup_id: &str) -> PathBuf {
    dest.join(manifest_rel(backup_id))
}

/// A backup id as the job makes them: checked before it becomes part of a path.
fn check_backup_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > BACKUP_ID_BYTES_MAX || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::Backup(format!("bad backup id {id:?}")));
    }
    Ok(())
}

/// Read the manifest of backup `backup_id` in `dest`, or of the newest one (`LATEST`).
pub fn read_manifest(dest: &Path, backup_id: Option<&str>) -> Result<Manifest> {
    let id = match backup_id {
        Some(id) => id.to_string(),
        None => {
            let latest = dest.join(LATEST);
            let text = std::fs::read_to_string(&latest).map_err(|e| {
                Error::Backup(format!("{} is not a backup folder (cannot read {LATEST}: {e})", dest.display()))
            })?;
            text.trim().to_string()
        }
    };
    check_backup_id(&id)?;
    let path = manifest_path(dest, &id);
    let file = std::fs::File::open(&path).map_err(|e| Error::Backup(format!("cannot open {}: {e}", path.display())))?;
    let mut text = Vec::new();
    file.take(MANIFEST_BYTES_MAX + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(Error::Backup(format!("{} exceeds {MANIFEST_BYTES_MAX} bytes", path.display())));
    }
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| Error::Backup(format!("{} is not a readable manifest: {e}", path.display())))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(Error::Backup(format!(
            "backup {id} has format {}; this build reads format {BACKUP_FORMAT}",
            manifest.format
        )));
    }
    if manifest.backup_id != id {
        return Err(Error::Backup(format!("manifest of backup {id} names backup {}", manifest.backup_id)));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_absolute_folders() {
        assert_eq!(parse_destination("/backups/nightly").unwrap(), Destination::Folder("/backups/nightly".into()));
        assert!(matches!(parse_destination("relative/dir"), Err(kalamdb_query::Error::InvalidSql(_))));
        assert!(matches!(parse_destination("/a/../b"), Err(kalamdb_query::Error::InvalidSql(_))));
        assert_eq!(parse_destination("s3://bucket/x/").unwrap(), Destination::Bucket("s3://bucket/x".into()));
        assert!(matches!(parse_destination("gs://bucket/x"), Err(kalamdb_query::Error::InvalidSql(_))));
        assert!(matches!(parse_destination("s3://b/x"), Err(kalamdb_query::Error::InvalidSql(_))));
    }

    #[test]
    fn manifest_paths_stay_inside() {
        assert!(checked_rel("files/ns/t-t1/shared/f.parquet").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(checked_rel(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_copy_that_does_not_match_its_record_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("kalamdb-backup-unit-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("src");
        std::fs::write(&src, b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        copy_verified(&src, &dir.join("ok"), 5, &sha).unwrap();
        assert_eq!(std::fs::read(dir.join("ok")).unwrap(), b"hello");
        assert!(copy_verified(&src, &dir.join("bad"), 5, &"0".repeat(64)).is_err());
        assert!(copy_verified(&src, &dir.join("short"), 4, &sha).is_err());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        verify_file(&dir.join("ok"), 5, &sha).unwrap();
        std::fs::write(dir.join("ok"), b"hellO").unwrap();
        assert!(verify_file(&dir.join("ok"), 5, &sha).unwrap_err().to_string().contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
