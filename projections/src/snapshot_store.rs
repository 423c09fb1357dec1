//! Where a group's snapshots live on disk: data files (the stream of `snapshot.rs`), beside a
//! built one the folder `<data file>.files/` of hard links to the cold files it holds, and one
//! meta file naming the current data file, its linked files and its `SnapshotMeta`. Renaming
//! the meta file is the commit point, so a crash leaves the old snapshot or the new one, never
//! a data file paired with another's meta. Snapshots are built, sent, received and installed
//! through these files, never held in memory whole; a built snapshot is sent as one stream
//! (records, then each linked file behind its header), the same stream a received one holds.

use std::path::{Path, PathBuf};

use kalamdb_log::GroupId;
use kalamdb_log::snapshot_data::{Piece, Pieces};
use kalamdb_log::types::SnapshotMeta;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::snapshot::{LinkedFile, file_header};

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
    /// The cold files held beside it, in stream order (none in a received snapshot, whose
    /// data file carries them).
    #[serde(default)]
    linked: Vec<LinkedFile>,
}

/// A group's current snapshot on disk.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: PathBuf,
    pub linked: Vec<LinkedFile>,
}

impl StoredSnapshot {
    /// The snapshot's stream: the data file, then each linked file behind its header. Every
    /// file is opened here, so a newer snapshot that replaces this one meanwhile does not cut
    /// a send or an install short (`NotFound` if it did so before they were opened).
    pub fn pieces(&self) -> Result<Pieces> {
        let len = std::fs::metadata(&self.data)?.len();
        let mut pieces = vec![Piece::File { path: self.data.clone(), len }];
        let links = links_dir(&self.data);
        for (i, f) in self.linked.iter().enumerate() {
            pieces.push(Piece::Bytes(file_header(&f.path, f.bytes)?));
            pieces.push(Piece::File { path: links.join(i.to_string()), len: f.bytes });
        }
        Ok(Pieces::open(pieces)?)
    }
}

/// The folder of hard links beside the data file `data`.
pub fn links_dir(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".files");
    PathBuf::from(name)
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

    /// Remove this group's files of `kind` and their folders of links, but `keep`'s.
    fn remove_all(&self, kind: &str, keep: Option<&Path>) -> Result<()> {
        let prefix = self.prefix(kind);
        let kept_links = keep.map(links_dir);
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let ours = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix));
            if !ours || Some(path.as_path()) == keep || Some(&path) == kept_links.as_ref() {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
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

    /// Make the complete data file `data` (built or received; a built one with the files
    /// `linked` in [`links_dir`]`(data)`, already synced) the current snapshot with `meta`:
    /// fsync it, give it and its links their final name, then commit the meta file naming them.
    /// Older snapshots go (a reader that opened a file keeps reading it). A build runs beside
    /// apply and snapshot installs, so it may finish behind the current snapshot: then the
    /// current one stays and `data` goes. Returns the current snapshot.
    pub fn publish(&self, data: &Path, meta: &SnapshotMeta, linked: Vec<LinkedFile>) -> Result<StoredSnapshot> {
        let _one_at_a_time = PUBLISH.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = self.current()?
            && current.meta.last_log_id > meta.last_log_id
        {
            std::fs::remove_file(data)?;
            if links_dir(data).is_dir() {
                std::fs::remove_dir_all(links_dir(data))?;
            }
            return Ok(current);
        }
        std::fs::File::open(data)?.sync_all()?;
        let final_path = self.fresh(DATA_KIND);
        std::fs::rename(data, &final_path)?;
        if !linked.is_empty() {
            std::fs::rename(links_dir(data), links_dir(&final_path))?;
        }
        let file = final_path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Snapshot("snapshot file name".into()))?
            .to_string();
        let current = CurrentSnapshot { meta: meta.clone(), file, linked: linked.clone() };
        let json = serde_json::to_vec(&current).map_err(|e| Error::Snapshot(e.to_string()))?;
        // Also makes the renames above durable (same folder).
        crate::cold::write_small_file(&self.meta_path(), &json)?;
        self.remove_all(DATA_KIND, Some(&final_path))?;
        Ok(StoredSnapshot { meta: meta.clone(), data: final_path, linked })
    }

    /// The current snapshot, if there is one.
    pub fn current(&self) -> Result<Option<StoredSnapshot>> {
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
        Ok(Some(StoredSnapshot { meta: current.meta, data: self.dir.join(current.file), linked: current.linked }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(kalamdb_log::types::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            last_membership: Default::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    /// A built snapshot: records file `records` and one linked file with `cold`.
    fn build(store: &SnapshotStore, records: &[u8], cold: &[u8]) -> (PathBuf, Vec<LinkedFile>) {
        let data = store.building().unwrap();
        std::fs::write(&data, records).unwrap();
        std::fs::create_dir_all(links_dir(&data)).unwrap();
        std::fs::write(links_dir(&data).join("0"), cold).unwrap();
        (data, vec![LinkedFile { path: "t/1.parquet".into(), bytes: cold.len() as u64 }])
    }

    #[test]
    fn a_built_snapshot_reads_as_records_then_its_linked_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path(), GroupId::SharedShard(0));
        let (data, linked) = build(&store, b"RECORDS", b"PARQUET");
        let first = store.publish(&data, &meta(10), linked).unwrap();
        let current = store.current().unwrap().expect("current");
        assert_eq!((current.data.clone(), current.linked.len()), (first.data.clone(), 1));
        let mut stream = Vec::new();
        current.pieces().unwrap().reader().read_to_end(&mut stream).unwrap();
        let expected = [b"RECORDS".as_slice(), &file_header("t/1.parquet", 7).unwrap(), b"PARQUET"].concat();
        assert_eq!(stream, expected);

        // A newer one replaces it, links and all; an older one is dropped, links and all.
        let (data, linked) = build(&store, b"NEWER", b"FILE2");
        let second = store.publish(&data, &meta(20), linked).unwrap();
        assert!(!first.data.exists() && !links_dir(&first.data).exists(), "the old snapshot is gone");
        let (data, linked) = build(&store, b"OLDER", b"FILE3");
        let kept = store.publish(&data, &meta(15), linked).unwrap();
        assert_eq!(kept.data, second.data);
        assert!(!data.exists() && !links_dir(&data).exists(), "the late build is gone");
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert_eq!(names.len(), 3, "meta, data, links: {names:?}");
    }
}
