//! The `BACKUP DATABASE TO '<folder or s3 URL>'` job: after a linearizable read barrier on every group
//! (so every write acknowledged before the statement is in the backup), it pins the groups'
//! files, reads every group under one RocksDB snapshot and writes each group's state, the
//! Parquet files the folder lacks, the manifest and then `LATEST`. Writes go on meanwhile; one
//! backup runs at a time per node. Progress and outcome are rows of `system.jobs`.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use kalamdb_log::GroupId;
use kalamdb_projections::{JobRecord, cold, sm, snapshot};

use super::sink::Sink;
use super::{BACKUP_FORMAT, FileEntry, GroupBackup, LATEST, Manifest, manifest_rel};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::groups::Groups;

/// What one backup wrote.
#[derive(Debug, Default, Clone, Copy)]
struct Written {
    files_copied: u64,
    files_present: u64,
    bytes_copied: u64,
}

/// The node's backup runner: at most one backup at a time.
pub struct Backups {
    groups: Arc<Groups>,
    /// For bucket destinations: the `storage.s3_*` settings and the staging folder.
    cfg: Arc<Config>,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backups")
    }
}

impl Backups {
    pub fn new(groups: Arc<Groups>, cfg: Config) -> Backups {
        Backups { groups, cfg: Arc::new(cfg), running: Arc::new(tokio::sync::Mutex::new(())) }
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

#[async_trait]
impl kalamdb_query::ports::BackupRunner for Backups {
    async fn start_backup(&self, destination: &str) -> std::result::Result<String, kalamdb_query::Error> {
        let dest = super::parse_destination(destination)?;
        let running = self.running.clone().try_lock_owned().map_err(|_| {
            kalamdb_query::Error::JobRunning("a backup is already running on this node; see system.jobs".into())
        })?;
        let (cfg, opening) = (self.cfg.clone(), dest.clone());
        let sink = tokio::task::spawn_blocking(move || Sink::open(&cfg, &opening))
            .await
            .map_err(|e| kalamdb_query::Error::Internal(e.to_string()))??;
        for group in self.groups.layout.all() {
            self.groups.read_barrier(group).await?;
        }
        let started = now_micros();
        let backup_id = format!("backup-{started}-n{}", self.groups.node_id);
        self.groups.storage.jobs.push(JobRecord {
            job_id: backup_id.clone(),
            job_type: "backup",
            namespace: String::new(),
            table_name: String::new(),
            group: "all".into(),
            scope: dest.to_string(),
            log_start: 0,
            log_end: 0,
            files: 0,
            rows: 0,
            bytes: 0,
            state: "running",
            started_at_micros: started,
            duration_ms: 0,
            message: format!("backing up to {dest}"),
        });
        let groups = self.groups.clone();
        let id = backup_id.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = running;
            let clock = Instant::now();
            let outcome = write_backup(&groups, &sink, &id, started);
            let duration_ms = clock.elapsed().as_millis() as u64;
            match &outcome {
                Ok(w) => {
                    tracing::info!(target: "kalamdb_storage", backup = %id, dest = %dest, files_copied = w.files_copied, files_present = w.files_present, bytes = w.bytes_copied, duration_ms, "backup written")
                }
                Err(e) => {
                    tracing::warn!(target: "kalamdb_storage", backup = %id, dest = %dest, error = %e, "backup failed");
                    // Its state files are of no use without a manifest; copied Parquet files
                    // stay for the next backup.
                    sink.discard(&id);
                }
            }
            groups.storage.jobs.update(&id, |job| {
                job.duration_ms = duration_ms;
                match outcome {
                    Ok(w) => {
                        job.state = "completed";
                        job.files = w.files_copied;
                        job.bytes = w.bytes_copied;
                        job.message = format!(
                            "backup written to {dest}: {} file(s) copied, {} already there",
                            w.files_copied, w.files_present
                        );
                    }
                    Err(e) => {
                        job.state = "failed";
                        job.message = e.to_string();
                    }
                }
            });
        });
        Ok(backup_id)
    }
}

/// Write backup `backup_id` of every group into `sink`. Runs on a blocking thread.
fn write_backup(groups: &Groups, sink: &Sink, backup_id: &str, started: i64) -> Result<Written> {
    let db = groups.rows.db();
    let env = &groups.storage;
    let all: Vec<GroupId> = groups.layout.all();
    // Pinned before the RocksDB snapshot is taken, so no file the snapshot names can be deleted
    // while it is copied (see `cold::FilePins`).
    let mut pins = Vec::with_capacity(all.len());
    for group in &all {
        pins.push(env.pins.pin(*group, sm::applied_index(db, *group)?));
    }
    let snap = db.snapshot();
    let mut written = Written::default();
    let mut parts = Vec::with_capacity(all.len());
    for group in all {
        if kalamdb_projections::install::installing_at(db, &snap, group)? {
            return Err(Error::Backup(format!(
                "group {group} is installing a snapshot on this node; run the backup again shortly"
            )));
        }
        let (last_log_id, _) = sm::position_at(db, Some(&snap), group)?;
        let state_rel = format!("backups/{backup_id}/group-{:08x}.state", group.to_u32());
        let (bytes, sha256) = sink.write(&state_rel, |out| {
            snapshot::export_records(db, &snap, group, &mut &mut *out)?;
            Ok(())
        })?;
        let mut files = Vec::new();
        for meta in cold::live_files_at(db, &snap, group)? {
            let rel = format!("files/{}", super::checked_rel(&meta.path)?);
            // Names repeat across cluster histories (a restored cluster reuses them), so a file
            // already there counts only if its bytes are this file's; a different one is never
            // overwritten, as earlier backups may name it.
            if sink.has_file(&rel, meta.bytes, &meta.sha256)? {
                written.files_present += 1;
            } else {
                sink.copy_in(&rel, &env.files.local(&meta.path, meta.bytes, &meta.sha256)?, meta.bytes, &meta.sha256)?;
                written.files_copied += 1;
                written.bytes_copied += meta.bytes;
            }
            files.push(FileEntry { path: rel, bytes: meta.bytes, sha256: meta.sha256 });
        }
        written.bytes_copied += bytes;
        parts.push(GroupBackup {
            group: group.to_string(),
            group_id: group.to_u32(),
            last_log_id,
            state: FileEntry { path: state_rel, bytes, sha256 },
            files,
        });
    }
    drop(snap);
    drop(pins);
    let (user_shards, shared_shards) = (groups.layout.user_shards, groups.layout.shared_shards);
    let manifest = Manifest {
        format: BACKUP_FORMAT,
        backup_id: backup_id.to_string(),
        created_at_micros: started,
        node_id: groups.node_id,
        cluster_id: groups.cluster_id.clone(),
        user_shards,
        shared_shards,
        groups: parts,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Backup(e.to_string()))?;
    sink.write(&manifest_rel(backup_id), |out| Ok(out.write_all(&json)?))?;
    sink.write(LATEST, |out| Ok(out.write_all(backup_id.as_bytes())?))?;
    Ok(written)
}
