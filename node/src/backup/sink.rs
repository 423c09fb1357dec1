//! Where the backup job writes: a folder, or a bucket prefix with the same layout as keys.
//! Files go into a bucket from local disk: state files are written to a staging folder first
//! (checked, then uploaded and removed), Parquet files straight from the node's file store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Destination, copy_verified, unique_suffix, verify_file, write_verified};
use crate::bucket::Bucket;
use crate::config::Config;
use crate::error::{Error, Result};

/// An open backup destination.
pub(super) enum Sink {
    Folder(PathBuf),
    Bucket { bucket: Arc<Bucket>, staging: PathBuf },
}

fn bucket_err(e: String) -> Error {
    Error::Backup(e)
}

impl Sink {
    /// Open `dest` and check it takes a backup: a folder or prefix that is new, empty, or
    /// holds backups already. Blocking (a bucket is asked over the network).
    pub(super) fn open(cfg: &Config, dest: &Destination) -> std::result::Result<Sink, kalamdb_query::Error> {
        match dest {
            Destination::Folder(path) => {
                super::check_destination_folder(path)?;
                Ok(Sink::Folder(path.clone()))
            }
            Destination::Bucket(url) => {
                let unavailable =
                    |e: String| kalamdb_query::Error::StorageUnavailable(format!("backup destination: {e}"));
                let bucket = Bucket::open(cfg, url).map_err(|e| match e {
                    Error::Config(m) => kalamdb_query::Error::InvalidSql(format!("backup destination {url}: {m}")),
                    other => kalamdb_query::Error::Internal(format!("backup destination {url}: {other}")),
                })?;
                if bucket.size_of(super::LATEST).map_err(unavailable)?.is_none()
                    && let Some(key) = bucket.first_key().map_err(unavailable)?
                    && !(key.starts_with("backups/") || key.starts_with("files/"))
                {
                    return Err(kalamdb_query::Error::InvalidSql(format!(
                        "backup destination {url}: it holds other objects ({key}); give a new or empty prefix, or one with earlier backups"
                    )));
                }
                let staging = cfg.storage.data_path.join("backup-staging");
                Ok(Sink::Bucket { bucket, staging })
            }
        }
    }

    /// Whether the backup holds the Parquet file `rel` already. Another file under the name
    /// is an error: earlier backups may name it, so it is never overwritten. (In a bucket
    /// the size is compared; objects are written whole, from checked files.)
    pub(super) fn has_file(&self, rel: &str, bytes: u64, sha256: &str) -> Result<bool> {
        let other = |e: String| Error::Backup(format!("the backup holds another file under this name: {e}"));
        match self {
            Sink::Folder(dest) => {
                let target = dest.join(rel);
                if !target.exists() {
                    return Ok(false);
                }
                verify_file(&target, bytes, sha256).map_err(|e| other(e.to_string()))?;
                Ok(true)
            }
            Sink::Bucket { bucket, .. } => match bucket.size_of(rel).map_err(bucket_err)? {
                None => Ok(false),
                Some(n) if n == bytes => Ok(true),
                Some(n) => Err(other(format!("{rel}: {n} bytes, expected {bytes}"))),
            },
        }
    }

    /// Copy the local file `src` in as `rel`, checked against its record.
    pub(super) fn copy_in(&self, rel: &str, src: &Path, bytes: u64, sha256: &str) -> Result<()> {
        match self {
            Sink::Folder(dest) => copy_verified(src, &dest.join(rel), bytes, sha256),
            Sink::Bucket { bucket, .. } => {
                verify_file(src, bytes, sha256)?;
                bucket.put_path(rel, src).map_err(bucket_err)
            }
        }
    }

    /// Write `rel` from `fill`; returns its (bytes, SHA-256).
    pub(super) fn write(&self, rel: &str, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<(u64, String)> {
        match self {
            Sink::Folder(dest) => write_verified(&dest.join(rel), None, fill),
            Sink::Bucket { bucket, staging } => {
                let local = staging.join(format!("upload-{}", unique_suffix()));
                let result = write_verified(&local, None, fill)
                    .and_then(|got| bucket.put_path(rel, &local).map_err(bucket_err).map(|()| got));
                let _ = std::fs::remove_file(&local);
                result
            }
        }
    }

    /// Drop what a failed backup `backup_id` wrote besides shared Parquet files (best
    /// effort: without a manifest nothing reads them).
    pub(super) fn discard(&self, backup_id: &str) {
        if let Sink::Folder(dest) = self {
            let _ = std::fs::remove_dir_all(dest.join("backups").join(backup_id));
        }
    }
}
