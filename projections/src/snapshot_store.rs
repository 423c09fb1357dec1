//! Where a group's snapshots live on disk: data files (the stream of `snapshot.rs`) and one meta
//! file naming the current data file with its `SnapshotMeta`. Renaming the meta file is the
//! commit point, so a crash leaves the old snapshot or the new one, never a data file paired
//! with another's meta. Snapshots are built, sent, received and installed through these files,
//! never held in memory whole.

use std::path::{Path, PathBuf};

use kalamdb_log::GroupId;
use kalamdb_log::types::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Data files of snapshots this node built or installed.
const DATA_KIND: &str = "data";
/// Data files being received.
const RECEIVING_KIND: &str = "recv";
/// Data files being built.
const BUILDING_KIND: &str = "build";

/// Publishing compares with the current snapshot, then replaces it: one publish at a time.
static PUBLISH: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    /// The data file's name in the snapshot directory.
    file: String,
}

/// One group's snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    group: GroupId,
}

impl SnapshotStore {
    pub fn new(dir: &Path, group: GroupId) -> SnapshotStore {
        SnapshotStore { dir: dir.to_path_buf(), group }
    }

    fn prefix(&self, kind: &str) -> String {
        format!("group-{:08x}-{kind}-", self.group.to_u32())
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join(format!("group-{:08x}.snapshot.json", self.group.to_u32()))
    }

    /// A fresh data file name of `kind`.
    fn fresh(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{}{:016x}.snap", self.prefix(kind), fastrand::u64(..)))
    }

    /// Remove this group's files of `kind`, but `keep`.
    fn remove_all(&self, kind: &str, keep: Option<&Path>) -> Result<()> {
        let prefix = self.prefix(kind);
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let ours = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix));
            if ours && Some(path.as_path()) != keep {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// A new file to build a snapshot into (earlier unfinished builds are removed).
    pub fn building(&self) -> Result<PathBuf> {
        self.remove_all(BUILDING_KIND, None)?;
        Ok(self.fresh(BUILDING_KIND))
    }

    /// A new file to receive a snapshot into (earlier unfinished receptions are removed: a
    /// group receives one snapshot at a time).
    pub fn receiving(&self) -> Result<PathBuf> {
        self.remove_all(RECEIVING_KIND, None)?;
        Ok(self.fresh(RECEIVING_KIND))
    }

    /// Make the complete data file `data` (built or received) the current snapshot with `meta`:
    /// fsync it, give it its final name, then commit the meta file naming it. Older data files
    /// go (a reader that opened one keeps reading it). A build runs beside apply and snapshot
    /// installs, so it may finish behind the current snapshot: then the current one stays and
    /// `data` goes. Returns the current snapshot's meta and data file.
    pub fn publish(&self, data: &Path, meta: &SnapshotMeta) -> Result<(SnapshotMeta, PathBuf)> {
        let _one_at_a_time = PUBLISH.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, path)) = self.current()?
            && current.last_log_id > meta.last_log_id
        {
            std::fs::remove_file(data)?;
            return Ok((current, path));
        }
        std::fs::File::open(data)?.sync_all()?;
        let final_path = self.fresh(DATA_KIND);
        std::fs::rename(data, &final_path)?;
        let file = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Snapshot("snapshot file name".into()))?
            .to_string();
        let json = serde_json::to_vec(&CurrentSnapshot { meta: meta.clone(), file })
            .map_err(|e| Error::Snapshot(e.to_string()))?;
        crate::cold::write_small_file(&self.meta_path(), &json)?;
        self.remove_all(DATA_KIND, Some(&final_path))?;
        Ok((meta.clone(), final_path))
    }

    /// The current snapshot's meta and data file, if there is one.
    pub fn current(&self) -> Result<Option<(SnapshotMeta, PathBuf)>> {
        let bytes = match std::fs::read(self.meta_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let current: CurrentSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| Error::Snapshot(format!("snapshot meta: {e}")))?;
        if current.file.contains('/') || !current.file.starts_with(&self.prefix(DATA_KIND)) {
            return Err(Error::Snapshot(format!("snapshot meta names a foreign file: {}", current.file)));
        }
        Ok(Some((current.meta, self.dir.join(current.file))))
    }
}
