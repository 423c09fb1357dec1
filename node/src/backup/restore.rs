//! `kalamdb-server restore --from <folder or s3 URL> --config <server.toml>`: rebuild this
//! node from a backup, offline, before it first starts. A backup in a bucket is first
//! downloaded into a staging folder under the data path, each file checked on the way. Everything in the backup is checked against the
//! manifest (sizes and SHA-256s) before anything is written, so a damaged backup leaves the node
//! untouched. Each group's state is installed at the backup's position with the *configured*
//! members as its membership, and its log starts after that position; run it on every node of
//! the new cluster with the same backup, then start them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kalamdb_log::types::{LogId, NodeAddr, NodeId, StoredMembership, Vote};
use kalamdb_log::{GroupId, LogDb, LogStore};
use kalamdb_projections::{Catalog, PROJECTION_CFS, Projection, StorageEnv};

use kalamdb_projections::cold::Remote;

use super::{
    LATEST, MANIFEST_BYTES_MAX, Manifest, check_backup_id, checked_rel, copy_verified, manifest_rel, read_manifest,
    verify_file, write_verified,
};
use crate::config::Config;
use crate::error::{Error, Result};

/// Largest log index or term a manifest may name.
const LOG_INDEX_MAX: u64 = 1 << 62;

/// What a restore did, for the operator.
#[derive(Debug, Clone)]
pub struct Restored {
    pub backup_id: String,
    /// (group, restored log index).
    pub groups: Vec<(String, u64)>,
    pub files: u64,
}

/// Check every file the manifest names, before anything is written.
fn verify_backup(from: &Path, manifest: &Manifest) -> Result<()> {
    for g in &manifest.groups {
        for entry in std::iter::once(&g.state).chain(&g.files) {
            verify_file(&from.join(checked_rel(&entry.path)?), entry.bytes, &entry.sha256)?;
        }
    }
    Ok(())
}

/// Whether `dir` is missing or an empty directory.
fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// What can be checked before any file of the backup is read: the node's shard layout, the
/// groups, the positions, and that the node never started.
fn check_restorable(cfg: &Config, manifest: &Manifest) -> Result<()> {
    let (user_shards, shared_shards) = cfg.shards();
    if (manifest.user_shards, manifest.shared_shards) != (user_shards, shared_shards) {
        return Err(Error::Backup(format!(
            "backup {} has {} user and {} shared shard(s); this node is configured with {user_shards} and {shared_shards}",
            manifest.backup_id, manifest.user_shards, manifest.shared_shards
        )));
    }
    let layout = kalamdb_log::GroupLayout::new(user_shards, shared_shards);
    let mut expected: Vec<u32> = layout.all().iter().map(|g| g.to_u32()).collect();
    let mut present: Vec<u32> = manifest.groups.iter().map(|g| g.group_id).collect();
    expected.sort_unstable();
    present.sort_unstable();
    if expected != present {
        return Err(Error::Backup(format!("backup {} does not hold every group of the layout", manifest.backup_id)));
    }
    for (dir, what) in [(&cfg.rocksdb_path(), "a database"), (&cfg.snapshot_path(), "snapshots")] {
        if !is_empty_dir(dir)? {
            return Err(Error::Backup(format!(
                "{} already holds {what}: restore needs a node that has never started (move its data folder away first)",
                dir.display()
            )));
        }
    }
    for g in &manifest.groups {
        // Positions far past anything a log reaches are not from a backup we wrote.
        if g.last_log_id.is_some_and(|l| l.index > LOG_INDEX_MAX || l.leader_id.term > LOG_INDEX_MAX) {
            return Err(Error::Backup(format!("manifest gives group {} an impossible position", g.group)));
        }
    }
    Ok(())
}

/// Restore the node configured by `cfg` from backup `backup_id` (the newest if `None`) in
/// `from`.
pub fn restore(cfg: &Config, from: &Path, backup_id: Option<&str>) -> Result<Restored> {
    let manifest = read_manifest(from, backup_id)?;
    check_restorable(cfg, &manifest)?;
    verify_backup(from, &manifest)?;
    let rocksdb_path = cfg.rocksdb_path();

    std::fs::create_dir_all(&cfg.storage.data_path)?;
    // With a bucket, restored files are queued for upload and go there when the server starts.
    let (files, _bucket) = crate::bucket::open_files(cfg)?;
    let env = StorageEnv::with_files(cfg.snapshot_path(), files);
    let log_db = LogDb::open(&rocksdb_path, &PROJECTION_CFS)?;
    let catalog = Catalog::new();
    let members = crate::groups::initial_members(cfg);
    let mut restored = Restored { backup_id: manifest.backup_id.clone(), groups: Vec::new(), files: 0 };
    for part in &manifest.groups {
        let group = GroupId::from_u32(part.group_id)
            .ok_or_else(|| Error::Backup(format!("manifest names unknown group {}", part.group_id)))?;
        for file in &part.files {
            // `files/<path under the storage root>`, as the job wrote it.
            let rel = checked_rel(&file.path)?
                .strip_prefix("files/")
                .ok_or_else(|| Error::Backup(format!("manifest names a file outside files/: {}", file.path)))?;
            let target = env.files.path(rel);
            // A storage root shared by the nodes may have it already (same name, same bytes);
            // another file under that name belongs to some other history and stays untouched.
            if target.exists() {
                verify_file(&target, file.bytes, &file.sha256)
                    .map_err(|e| Error::Backup(format!("the storage root holds another file under this name: {e}")))?;
            } else {
                env.files.will_write(rel)?;
                copy_verified(&from.join(&file.path), &target, file.bytes, &file.sha256)?;
            }
            restored.files += 1;
        }
        let mut projection = Projection::open(log_db.clone(), group, catalog.clone(), env.clone())?;
        let membership = restored_membership(part.last_log_id, &members);
        let mut state = std::fs::File::open(from.join(checked_rel(&part.state.path)?))?;
        projection.install_state(&mut state, part.last_log_id, membership)?;
        if let Some(last) = part.last_log_id {
            let vote = Vote::new(last.leader_id.term, cfg.server.node_id);
            LogStore::new(log_db.clone(), group)?.seed_restored(last, &vote)?;
        }
        restored.groups.push((group.to_string(), part.last_log_id.map_or(0, |l| l.index)));
    }
    log_db.sync_wal()?;
    Ok(restored)
}

/// The configured members as the membership in effect at `last`: every node restored from the
/// same backup with the same cluster config holds the same one.
fn restored_membership(last: Option<LogId>, members: &BTreeMap<NodeId, NodeAddr>) -> StoredMembership {
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    StoredMembership::new(last, openraft::Membership::new(vec![voters], members.clone()))
}

/// Restore from backup `backup_id` (the newest if `None`) under the bucket prefix `url`: the
/// backup is downloaded into `<data_path>/restore-staging` (removed afterwards, whatever
/// happens), every file checked against the manifest, then restored as from a folder.
pub fn restore_from_bucket(cfg: &Config, url: &str, backup_id: Option<&str>) -> Result<Restored> {
    let bucket = crate::bucket::Bucket::open(cfg, url)?;
    let staging = cfg.storage.data_path.join("restore-staging");
    let _ = std::fs::remove_dir_all(&staging);
    let result = stage(cfg, &bucket, &staging, backup_id).and_then(|id| restore(cfg, &staging, Some(&id)));
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// A `Write` that passes at most `left` bytes on to `inner`, then fails.
struct Capped<'a> {
    inner: &'a mut dyn std::io::Write,
    left: u64,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() as u64 > self.left {
            return Err(std::io::Error::other("the object is larger than the manifest records"));
        }
        self.left -= b.len() as u64;
        self.inner.write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A `Write` that refuses to take more than `limit` bytes.
struct Bounded {
    buf: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + b.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!("larger than {} bytes", self.limit)));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fetch_small(bucket: &crate::bucket::Bucket, rel: &str) -> Result<Vec<u8>> {
    let mut out = Bounded { buf: Vec::new(), limit: MANIFEST_BYTES_MAX };
    bucket.fetch(rel, &mut out).map_err(|e| Error::Backup(format!("cannot read {rel} of the backup: {e}")))?;
    Ok(out.buf)
}

/// Download backup `backup_id` (or the newest) into `staging`; returns its id.
fn stage(cfg: &Config, bucket: &crate::bucket::Bucket, staging: &Path, backup_id: Option<&str>) -> Result<String> {
    let id = match backup_id {
        Some(id) => id.to_string(),
        None => String::from_utf8_lossy(&fetch_small(bucket, LATEST)?).trim().to_string(),
    };
    check_backup_id(&id)?;
    let manifest = fetch_small(bucket, &manifest_rel(&id))?;
    write_verified(&staging.join(manifest_rel(&id)), None, |out| Ok(out.write_all(&manifest)?))?;
    let manifest = read_manifest(staging, Some(&id))?;
    check_restorable(cfg, &manifest)?;
    for g in &manifest.groups {
        for entry in std::iter::once(&g.state).chain(&g.files) {
            let rel = checked_rel(&entry.path)?;
            write_verified(&staging.join(rel), Some((entry.bytes, &entry.sha256)), |out| {
                // One byte past the record is enough to fail the check: a hostile bucket does
                // not get to fill the disk.
                let mut capped = Capped { inner: out, left: entry.bytes.saturating_add(1) };
                bucket.fetch(rel, &mut capped).map_err(|e| Error::Backup(format!("cannot download {rel}: {e}")))?;
                Ok(())
            })?;
        }
    }
    Ok(id)
}
