//! Where this node keeps cold files: a storage folder (the embedded default; it may be one
//! volume every node shares), or a bounded local cache in front of an object-store bucket.
//!
//! With a bucket, apply still writes every file to local disk first (fsynced, as with a
//! folder), so apply never waits on the network and never fails because the store is down:
//! the bytes are as durable as the RocksDB batch that names them. Each write also leaves an
//! upload marker; the node's uploader (`node/src/bucket.rs`) copies marked files to the bucket
//! and clears their markers. A read of a file that is not cached fetches it from the bucket,
//! checked against the length and SHA-256 the manifest records. Only uploaded files that no
//! reader touched recently are evicted, oldest first, down to the cache's byte budget.
//!
//! Markers live under the cache root as `.upload/<sha256 of the path>` and
//! `.delete/<sha256 of the path>`, each holding the file's relative path. Stored file names
//! never start with a dot (`scope_dir`), so they cannot collide. The marker is written before
//! the file, under the queue lock that eviction also takes, so eviction can never remove a
//! file that is about to be, or not yet, uploaded.

use super::*;
use std::time::{Duration, SystemTime};

const UPLOAD_DIR: &str = ".upload";
const DELETE_DIR: &str = ".delete";
/// An upload marker whose file has been missing this long belonged to an apply that never
/// finished (a crash before its batch, then a snapshot replaced the state): it is dropped.
/// Temp files of writes and fetches that a crash interrupted are swept after the same time.
pub const ORPHAN_MARKER_AGE: Duration = Duration::from_secs(600);
/// Table files being written are named `.writing-n<writer>-<random>.parquet.tmp`
/// ([`FileStore::temp_table_file_name`]): the writer's node id lets a restarted node remove what
/// its crashed run left at once, even in a folder other nodes share.
const WRITING_PREFIX: &str = ".writing-";
/// Attempts to fetch one file (each with the client's own retries), one second apart and then
/// doubling: apply reads compaction inputs through the cache, and a failed read there stops
/// the group on this node until it restarts.
pub const FETCH_ATTEMPTS_MAX: u32 = 4;

/// The object store behind a cache, as apply and readers need it. Implemented by the node
/// (`node/src/bucket.rs`), which owns the network client.
pub trait Remote: Send + Sync + std::fmt::Debug {
    /// Copy the object at `rel` into `out`; returns the bytes copied.
    fn fetch(&self, rel: &str, out: &mut dyn Write) -> std::result::Result<u64, String>;
    /// A marker was written: the uploader has work.
    fn wake(&self);
    /// The bucket, for messages (`s3://bucket/prefix`).
    fn url(&self) -> &str;
}

/// A queued upload or delete: the marker file and the relative path it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub marker: PathBuf,
    pub rel: String,
}

/// Files and bytes an eviction pass found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheReport {
    pub cached_files: u64,
    pub cached_bytes: u64,
    pub evicted_files: u64,
    pub evicted_bytes: u64,
}

/// The cold files of this node: see the module comment.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    remote: Option<Arc<dyn Remote>>,
    /// Serializes marker changes against eviction.
    queue: Mutex<()>,
    /// This node's id in the names of the temp files it writes (0: not known).
    writer: u64,
}

/// Temp files a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SweepReport {
    pub files: u64,
    pub bytes: u64,
}

/// The entries of `dir`; none when it does not exist (not made yet, or removed meanwhile).
fn entries_of(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `name` is a file being written: a table file, a fetch from the bucket or a copy
/// (markers, restores) through `write_atomically`.
fn is_temp_name(name: &str) -> bool {
    name.starts_with(WRITING_PREFIX) || name.contains(".tmp-") || name.contains(".fetch-")
}

fn marker_name(rel: &str) -> String {
    hex::encode(Sha256::digest(rel.as_bytes()))
}

impl FileStore {
    /// Files kept in `root` and nowhere else.
    pub fn folder(root: PathBuf) -> FileStore {
        FileStore { root, remote: None, queue: Mutex::new(()), writer: 0 }
    }

    /// Files kept in `remote`, cached in `root`.
    pub fn cached(root: PathBuf, remote: Arc<dyn Remote>) -> FileStore {
        FileStore { root, remote: Some(remote), queue: Mutex::new(()), writer: 0 }
    }

    /// The same store, its temp files named as node `node_id`'s (see [`WRITING_PREFIX`]).
    pub fn with_writer(mut self, node_id: u64) -> FileStore {
        self.writer = node_id;
        self
    }

    /// A fresh temp name for a table file this node writes.
    pub(super) fn temp_table_file_name(&self) -> String {
        format!("{WRITING_PREFIX}n{}-{:016x}.parquet.tmp", self.writer, fastrand::u64(..))
    }

    /// Remove the temp files that writes interrupted by a crash left. Call once at startup,
    /// before this node writes any file: its own (named with its writer id; with a bucket the
    /// whole cache is its own) go whatever their age; any other's only once unchanged for
    /// [`ORPHAN_MARKER_AGE`], since a node sharing the folder may still be writing it (a
    /// prepared flush's file is used within [`PREPARED_FLUSH_AGE_MAX`] or not at all).
    pub fn sweep_temp_files(&self) -> Result<SweepReport> {
        let own_prefix = (self.writer != 0).then(|| format!("{WRITING_PREFIX}n{}-", self.writer));
        let mut report = SweepReport::default();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Some(entries) = entries_of(&dir)? else { continue };
            for entry in entries {
                let entry = entry?;
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_temp_name(&name) {
                    continue;
                }
                let own = self.remote.is_some() || own_prefix.as_deref().is_some_and(|p| name.starts_with(p));
                let old = meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a >= ORPHAN_MARKER_AGE);
                if (own || old) && std::fs::remove_file(entry.path()).is_ok() {
                    report.files += 1;
                    report.bytes += meta.len();
                }
            }
        }
        Ok(report)
    }

    /// The folder files are written to and read from on this node.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.as_ref()
    }

    /// Where `rel` is (or is written) on this node.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn marker(&self, dir: &str, rel: &str) -> PathBuf {
        self.root.join(dir).join(marker_name(rel))
    }

    /// Call before writing `rel`: with a bucket, queues its upload (durably) and cancels a
    /// queued delete of the same path.
    pub fn will_write(&self, rel: &str) -> Result<()> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let _queue = self.lock();
        match std::fs::remove_file(self.marker(DELETE_DIR, rel)) {
            // Durably gone, or a power cut could bring the delete back next to the upload.
            Ok(()) => sync_dir(&self.root.join(DELETE_DIR))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        write_small_file(&self.marker(UPLOAD_DIR, rel), rel.as_bytes())?;
        remote.wake();
        Ok(())
    }

    /// Remove `rel` from this node and, with a bucket, queue its delete there.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let _queue = self.lock();
        for path in [self.path(rel), self.marker(UPLOAD_DIR, rel)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(remote) = &self.remote {
            write_small_file(&self.marker(DELETE_DIR, rel), rel.as_bytes())?;
            remote.wake();
        }
        Ok(())
    }

    /// The local path of the file `rel`, which the manifest records with `bytes` and
    /// `sha256`. With a bucket, a file not cached is fetched first and checked against both;
    /// a cached one is marked as just used, so eviction leaves it to the reader.
    pub fn local(&self, rel: &str, bytes: u64, sha256: &str) -> Result<PathBuf> {
        let path = self.path(rel);
        let Some(remote) = &self.remote else { return Ok(path) };
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => {
                f.set_modified(SystemTime::now())?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let dir = path.parent().ok_or_else(|| Error::Storage(format!("bad file path {rel}")))?;
        create_dir_all_synced(dir)?;
        let mut wait = Duration::from_secs(1);
        for attempt in 1.. {
            match self.fetch(remote.as_ref(), rel, &path, bytes, sha256) {
                Ok(()) => break,
                // Other bytes under the name are not a passing fault: no point asking again.
                Err(e) if attempt >= FETCH_ATTEMPTS_MAX || matches!(e, Error::Corrupt(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(target: "kalamdb_storage", file = rel, error = %e, attempt, "cannot fetch a cold file; retrying");
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
        metrics::counter!("kalamdb_storage_cache_fetches_total").increment(1);
        metrics::counter!("kalamdb_storage_cache_fetched_bytes_total").increment(bytes);
        Ok(path)
    }

    /// One fetch of `rel` into `path`: temp name, checked, fsynced, renamed.
    fn fetch(&self, remote: &dyn Remote, rel: &str, path: &Path, bytes: u64, sha256: &str) -> Result<()> {
        let tmp = path.with_extension(format!("fetch-{:016x}", fastrand::u64(..)));
        let fetched = (|| {
            let mut out = HashingWriter::new(std::fs::File::create(&tmp)?);
            remote
                .fetch(rel, &mut out)
                .map_err(|e| Error::StoreUnavailable(format!("cannot fetch cold file {rel}: {e}")))?;
            let (file, got_bytes, got_sha) = out.finish();
            if got_bytes != bytes || got_sha != sha256 {
                return Err(Error::Corrupt(format!(
                    "cold file {rel} in {} does not match the manifest ({got_bytes} bytes, sha256 {got_sha}; expected {bytes} bytes, {sha256})",
                    remote.url()
                )));
            }
            file.sync_all()?;
            Ok(())
        })();
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    fn queued(&self, dir: &str) -> Result<Vec<Queued>> {
        let mut out = Vec::new();
        let Some(entries) = entries_of(&self.root.join(dir))? else { return Ok(out) };
        for entry in entries {
            let marker = entry?.path();
            // A temp file of a marker being written has an extension; markers have none.
            if marker.extension().is_some() {
                continue;
            }
            match std::fs::read_to_string(&marker) {
                Ok(rel) if check_received_path(&rel).is_ok() => out.push(Queued { marker, rel }),
                // Not one of ours (we write only checked paths): leave it, do not stall the rest.
                Ok(rel) => {
                    tracing::warn!(target: "kalamdb_storage", marker = %marker.display(), path = ?rel, "ignoring a queue marker with a bad path");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Files waiting to be uploaded.
    pub fn uploads(&self) -> Result<Vec<Queued>> {
        self.queued(UPLOAD_DIR)
    }

    /// Files waiting to be deleted from the bucket.
    pub fn deletes(&self) -> Result<Vec<Queued>> {
        self.queued(DELETE_DIR)
    }

    /// The upload or delete `q` is done. A marker rewritten meanwhile names the same bytes
    /// (file names are a function of the log), so removing it is right either way.
    pub fn done(&self, q: &Queued) -> Result<()> {
        let _queue = self.lock();
        match std::fs::remove_file(&q.marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drop a queued upload whose file is gone for good: missing, and its marker older than
    /// [`ORPHAN_MARKER_AGE`] (a fresh marker may precede its file by a moment). Checked under
    /// the queue lock, so a `will_write` of the same path meanwhile keeps its marker. Returns
    /// whether it was dropped.
    pub fn drop_orphan(&self, q: &Queued) -> Result<bool> {
        let _queue = self.lock();
        let age = std::fs::metadata(&q.marker).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if self.path(&q.rel).exists() || age.is_none_or(|a| a < ORPHAN_MARKER_AGE) {
            return Ok(false);
        }
        match std::fs::remove_file(&q.marker) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove temp files that crashed writes and fetches left, and those of markers.
    fn sweep_temp(&self, path: &Path, name: &str, modified: SystemTime) {
        if is_temp_name(name) && modified.elapsed().is_ok_and(|a| a >= ORPHAN_MARKER_AGE) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Evict cached files, least recently used first, until at most `bytes_max` remain; only
    /// files uploaded already and unused for `idle` (a reader may hold a path it has not
    /// opened yet). Without a bucket nothing is a cache and nothing is evicted.
    pub fn evict(&self, bytes_max: u64, idle: Duration) -> Result<CacheReport> {
        let mut report = CacheReport::default();
        if self.remote.is_none() {
            return Ok(report);
        }
        let mut files: Vec<(SystemTime, u64, String)> = Vec::new();
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel_dir)) = stack.pop() {
            let Some(entries) = entries_of(&dir)? else { continue };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == UPLOAD_DIR || name == DELETE_DIR {
                    for marker in std::fs::read_dir(entry.path())?.flatten() {
                        if let Ok(m) = marker.metadata().and_then(|m| m.modified()) {
                            self.sweep_temp(&marker.path(), &marker.file_name().to_string_lossy(), m);
                        }
                    }
                    continue;
                }
                let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                if meta.is_dir() {
                    stack.push((entry.path(), rel));
                } else if is_temp_name(&name) {
                    self.sweep_temp(&entry.path(), &name, meta.modified()?);
                } else if name.ends_with(".parquet") || name.ends_with(".json") {
                    report.cached_files += 1;
                    report.cached_bytes += meta.len();
                    files.push((meta.modified()?, meta.len(), rel));
                }
            }
        }
        files.sort();
        let now = SystemTime::now();
        let mut held = report.cached_bytes;
        for (used, len, rel) in files {
            if held <= bytes_max {
                break;
            }
            if now.duration_since(used).unwrap_or_default() < idle {
                continue;
            }
            let _queue = self.lock();
            // Read again under the lock: a reader may have just been handed this file.
            let used_now = std::fs::metadata(self.path(&rel)).and_then(|m| m.modified());
            let recently_used = used_now.is_ok_and(|t| now.duration_since(t).unwrap_or_default() < idle);
            if recently_used || self.marker(UPLOAD_DIR, &rel).exists() {
                continue;
            }
            match std::fs::remove_file(self.path(&rel)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            held -= len;
            report.evicted_files += 1;
            report.evicted_bytes += len;
        }
        report.cached_bytes = held;
        report.cached_files -= report.evicted_files;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket in memory, for the queue and cache logic alone (the real one is tested against
    /// a real S3 server in node/tests).
    #[derive(Debug, Default)]
    struct Memory {
        objects: Mutex<HashMap<String, Vec<u8>>>,
    }

    impl Remote for Memory {
        fn fetch(&self, rel: &str, out: &mut dyn Write) -> std::result::Result<u64, String> {
            let objects = self.objects.lock().unwrap();
            let bytes = objects.get(rel).ok_or_else(|| "not found".to_string())?;
            out.write_all(bytes).map_err(|e| e.to_string())?;
            Ok(bytes.len() as u64)
        }
        fn wake(&self) {}
        fn url(&self) -> &str {
            "memory://"
        }
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn marked_files_stay_until_uploaded_then_evict_and_fetch_back() {
        let dir = tempfile::tempdir().unwrap();
        let remote = Arc::new(Memory::default());
        let store = FileStore::cached(dir.path().join("cache"), remote.clone());
        let rel = "app/t-t1/shared/flush-1.parquet";
        store.will_write(rel).unwrap();
        write_small_file(&store.path(rel), b"0123456789").unwrap();
        let queued = store.uploads().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].rel, rel);
        // Not uploaded yet: never evicted, whatever the budget.
        assert_eq!(store.evict(0, Duration::ZERO).unwrap().evicted_files, 0);
        assert!(store.path(rel).exists());
        remote.objects.lock().unwrap().insert(rel.to_string(), b"0123456789".to_vec());
        store.done(&queued[0]).unwrap();
        assert!(store.uploads().unwrap().is_empty());
        // Recently used files are left to their readers.
        assert_eq!(store.evict(0, Duration::from_secs(3600)).unwrap().evicted_files, 0);
        let r = store.evict(0, Duration::ZERO).unwrap();
        assert_eq!((r.evicted_files, r.evicted_bytes, r.cached_bytes), (1, 10, 0));
        assert!(!store.path(rel).exists());
        // Read back from the bucket, checked against the manifest.
        let p = store.local(rel, 10, &sha(b"0123456789")).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"0123456789");
        std::fs::remove_file(store.path(rel)).unwrap();
        let e = store.local(rel, 10, &sha(b"other")).unwrap_err().to_string();
        assert!(e.contains("does not match the manifest"), "{e}");
        assert!(!store.path(rel).exists(), "a file that fails its check is not kept");
        // Removal: local copy and upload marker go, a delete is queued; a rewrite cancels it.
        store.remove(rel).unwrap();
        assert_eq!(store.deletes().unwrap().len(), 1);
        store.will_write(rel).unwrap();
        assert!(store.deletes().unwrap().is_empty());
        assert_eq!(store.uploads().unwrap().len(), 1);
    }

    #[test]
    fn a_folder_store_queues_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf());
        store.will_write("a/b.parquet").unwrap();
        write_small_file(&store.path("a/b.parquet"), b"x").unwrap();
        assert!(store.uploads().unwrap().is_empty());
        assert_eq!(store.evict(0, Duration::ZERO).unwrap(), CacheReport::default());
        assert_eq!(store.local("a/b.parquet", 1, "whatever").unwrap(), dir.path().join("a/b.parquet"));
        store.remove("a/b.parquet").unwrap();
        assert!(!dir.path().join("a/b.parquet").exists());
        assert!(store.deletes().unwrap().is_empty());
    }

    #[test]
    fn a_sweep_removes_own_temp_files_and_only_old_ones_of_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::folder(dir.path().to_path_buf()).with_writer(2);
        let other = FileStore::folder(dir.path().to_path_buf()).with_writer(3);
        let scope = dir.path().join("app/t-t1/shared");
        std::fs::create_dir_all(&scope).unwrap();
        let write = |name: &str, age: Duration| {
            let path = scope.join(name);
            std::fs::write(&path, b"0123").unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() - age).unwrap();
            path
        };
        let fresh = Duration::ZERO;
        let old = ORPHAN_MARKER_AGE + Duration::from_secs(5);
        let own = write(&store.temp_table_file_name(), fresh);
        let others_fresh = write(&other.temp_table_file_name(), fresh);
        let others_old = write(&other.temp_table_file_name(), old);
        // Named before temp names carried their writer.
        let unnamed_old = write(".writing-00000000000000ff.parquet.tmp", old);
        let unnamed_fresh = write(".writing-00000000000000fe.parquet.tmp", fresh);
        let copy_fresh = write("manifest.tmp-00000000000000fd", fresh);
        let table_file = write("flush-1.parquet", old);
        let report = store.sweep_temp_files().unwrap();
        assert_eq!(report, SweepReport { files: 3, bytes: 12 });
        for gone in [&own, &others_old, &unnamed_old] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        for kept in [&others_fresh, &unnamed_fresh, &copy_fresh, &table_file] {
            assert!(kept.exists(), "{}", kept.display());
        }
        // A node whose id is not known removes only old ones.
        let unknown = FileStore::folder(dir.path().to_path_buf());
        assert_eq!(unknown.sweep_temp_files().unwrap(), SweepReport::default());
        // With a bucket the cache is this node's alone: every temp file is its own.
        let cached = FileStore::cached(dir.path().to_path_buf(), Arc::new(Memory::default()));
        assert_eq!(cached.sweep_temp_files().unwrap().files, 3);
        assert!(table_file.exists());
    }
}
