//! Object storage for cold files (`storage.storage_path = "s3://bucket/prefix"`): the S3
//! client, the fetch that fills the local cache (`kalamdb_projections::cold::FileStore`), the
//! uploader that drains the cache's queue of written and deleted files, and the check a flush
//! or compaction passes before it is proposed.
//!
//! Apply never talks to the bucket for writes: it writes files to local disk and queues them
//! (see `FileStore`), so a store outage never stops a group and loses nothing. The check
//! before proposing keeps rows hot while the store is down: a flush then answers
//! `STORAGE_UNAVAILABLE` instead of moving rows into files that cannot reach the bucket.
//!
//! Network calls run on a small runtime of their own, so a blocking caller (a query's scan
//! thread, apply) can wait for one from any thread without re-entering the node's runtime.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kalamdb_projections::cold::{FileStore, Queued, Remote};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::error::{Error, Result};

/// Objects up to this size are sent in one PUT; larger ones in parts of this size, at most
/// [`UPLOAD_PARTS_IN_FLIGHT_MAX`] at a time (bounded memory whatever the file's size).
pub const UPLOAD_PART_BYTES: usize = 8 << 20;
pub const UPLOAD_PARTS_IN_FLIGHT_MAX: usize = 2;
/// Chunks of a fetched object buffered between the network and the reader.
pub const FETCH_CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Time one request may take, body included: a part of at most [`UPLOAD_PART_BYTES`], or a
/// whole file fetched (at most `FILE_ROWS_MAX` rows, tens of MB).
pub const REQUEST_TIMEOUT_SECS: u64 = 300;
pub const CONNECT_TIMEOUT_SECS: u64 = 5;
/// Retries of one request by the client, and the time they may take in all.
pub const REQUEST_RETRIES_MAX: usize = 3;
pub const REQUEST_RETRY_TIMEOUT_SECS: u64 = 20;
/// The whole pre-flush check, retries included.
pub const CHECK_TIMEOUT_SECS: u64 = 15;
/// How often the uploader looks at its queue without being woken, and its longest wait
/// after failures (it doubles from one second).
pub const UPLOADER_IDLE_SECS: u64 = 10;
pub const UPLOADER_BACKOFF_SECS_MAX: u64 = 60;
/// A cached file unused for less than this is never evicted: a reader may hold its path.
pub const CACHE_IDLE_SECS_MIN: u64 = 600;

/// `s3://bucket/prefix`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketUrl {
    pub bucket: String,
    /// `/`-separated, no leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl BucketUrl {
    pub fn parse(url: &str) -> std::result::Result<BucketUrl, String> {
        let rest = url.strip_prefix("s3://").ok_or("only s3:// URLs are supported (any S3-compatible server)")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err("no bucket named".into());
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if !(3..=63).contains(&bucket.len())
            || !bucket.chars().all(ok_char)
            || !bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(format!("'{bucket}' is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')"));
        }
        let prefix = prefix.trim_end_matches('/');
        let plain = |c: &str| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        };
        if !prefix.is_empty() && !prefix.split('/').all(plain) {
            return Err(format!("prefix '{prefix}' must be plain path components (A-Z, a-z, 0-9, '-', '_', '.')"));
        }
        Ok(BucketUrl { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }
}

/// The bucket cold files live in. Shared by the cache (fetch), the uploader and the check.
#[derive(Debug)]
pub struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    /// The runtime behind `runtime`, shut down on drop.
    owner: Option<tokio::runtime::Runtime>,
    wake: Arc<tokio::sync::Notify>,
    node_id: u64,
}

/// What a failed call says: which bucket, and the likely cause first.
fn describe(url: &str, e: &object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { .. } => format!("{url}: not found (does the bucket exist?): {e}"),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            format!("{url}: credentials refused: {e}")
        }
        _ => format!("{url}: {e}"),
    }
}

/// A runtime for the bucket's network calls, on threads of its own; they stop when the
/// `Bucket` is dropped (a backup's bucket lives as long as its job).
fn bucket_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kalamdb-bucket")
        .enable_all()
        .build()?)
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // Not a plain drop: that blocks, and panics when the last owner is on a runtime thread.
        if let Some(rt) = self.owner.take() {
            rt.shutdown_background();
        }
    }
}

impl Bucket {
    /// The client for `cfg`'s storage URL: config keys first, then the AWS environment.
    pub fn open(cfg: &Config, url: &str) -> Result<Arc<Bucket>> {
        let parsed = BucketUrl::parse(url).map_err(|e| Error::Config(format!("storage.storage_path '{url}': {e}")))?;
        let s = &cfg.storage;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&parsed.bucket);
        if let Some(endpoint) = &s.s3_endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s.s3_region {
            builder = builder.with_region(region);
        } else if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        if let (Some(id), Some(secret)) = (&s.s3_access_key_id, &s.s3_secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let retry = RetryConfig {
            max_retries: REQUEST_RETRIES_MAX,
            retry_timeout: Duration::from_secs(REQUEST_RETRY_TIMEOUT_SECS),
            ..RetryConfig::default()
        };
        // One set of client options: `with_client_options` replaces what `with_allow_http`
        // would have set on the builder.
        let allow_http = s.s3_endpoint.as_ref().is_some_and(|e| e.starts_with("http://"));
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
            .with_connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS));
        let s3 = builder
            .with_retry(retry)
            .with_client_options(client)
            .build()
            .map_err(|e| Error::Config(format!("storage.storage_path '{url}': {e}")))?;
        let store: Arc<dyn ObjectStore> = if parsed.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, parsed.prefix.as_str()))
        };
        let runtime = bucket_runtime()?;
        Ok(Arc::new(Bucket {
            url: url.trim_end_matches('/').to_string(),
            store,
            runtime: runtime.handle().clone(),
            owner: Some(runtime),
            wake: Arc::new(tokio::sync::Notify::new()),
            node_id: cfg.server.node_id,
        }))
    }

    /// Whether the bucket takes writes now: one small PUT of this node's probe object, within
    /// [`CHECK_TIMEOUT_SECS`]. Run before a flush or compaction is proposed.
    pub async fn check(&self) -> std::result::Result<(), String> {
        let store = self.store.clone();
        let url = self.url.clone();
        let location = ObjectPath::from(format!(".kalamdb/probe/node-{}", self.node_id));
        let call = self.runtime.spawn(async move {
            let put = store.put(&location, bytes::Bytes::from_static(b"ok").into());
            match tokio::time::timeout(Duration::from_secs(CHECK_TIMEOUT_SECS), put).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(describe(&url, &e)),
                Err(_) => Err(format!("{url}: no answer within {CHECK_TIMEOUT_SECS} s")),
            }
        });
        call.await.map_err(|e| format!("{}: {e}", self.url))?
    }

    /// Run `call` on the bucket's runtime and wait for it, from any thread.
    fn block<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, String>> + Send + 'static,
    ) -> std::result::Result<T, String> {
        futures::executor::block_on(self.runtime.spawn(call)).map_err(|e| format!("{}: {e}", self.url))?
    }

    /// The size of the object at `rel`, if there is one. Blocking.
    pub fn size_of(&self, rel: &str) -> std::result::Result<Option<u64>, String> {
        let (store, url, location) = (self.store.clone(), self.url.clone(), ObjectPath::from(rel));
        self.block(async move {
            match store.head(&location).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(describe(&url, &e)),
            }
        })
    }

    /// Store the local file `path` as `rel`. Blocking.
    pub fn put_path(&self, rel: &str, path: &std::path::Path) -> std::result::Result<(), String> {
        let len = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
        let (store, url, location, path) =
            (self.store.clone(), self.url.clone(), ObjectPath::from(rel), path.to_path_buf());
        self.block(async move { put_file(store.as_ref(), &url, &location, &path, len).await })
    }

    /// The first object key under the bucket's prefix, if any (relative to it). Blocking.
    pub fn first_key(&self) -> std::result::Result<Option<String>, String> {
        let (store, url) = (self.store.clone(), self.url.clone());
        self.block(async move {
            match store.list(None).next().await {
                None => Ok(None),
                Some(Ok(meta)) => Ok(Some(meta.location.to_string())),
                Some(Err(e)) => Err(describe(&url, &e)),
            }
        })
    }

    /// Start draining `files`' queue into the bucket and evicting its cache down to
    /// `cache_bytes_max`; runs as long as the process.
    pub fn start_uploader(self: &Arc<Self>, files: Arc<FileStore>, cache_bytes_max: u64) {
        let me = self.clone();
        self.runtime.spawn(async move { me.run_uploader(files, cache_bytes_max).await });
    }

    async fn run_uploader(self: Arc<Self>, files: Arc<FileStore>, cache_bytes_max: u64) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.drain(&files).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    Duration::from_secs(UPLOADER_IDLE_SECS)
                }
                Err(e) => {
                    metrics::counter!("kalamdb_storage_upload_errors_total").increment(1);
                    tracing::warn!(target: "kalamdb_storage", error = %e, retry_in_secs = backoff.as_secs(), "bucket upload failed; files stay queued on local disk");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(UPLOADER_BACKOFF_SECS_MAX));
                    wait
                }
            };
            let evicting = files.clone();
            let idle = Duration::from_secs(CACHE_IDLE_SECS_MIN);
            match tokio::task::spawn_blocking(move || evicting.evict(cache_bytes_max, idle)).await {
                Ok(Ok(r)) => {
                    metrics::gauge!("kalamdb_storage_cache_bytes").set(r.cached_bytes as f64);
                    metrics::counter!("kalamdb_storage_cache_evicted_bytes_total").increment(r.evicted_bytes);
                }
                Ok(Err(e)) => tracing::warn!(target: "kalamdb_storage", error = %e, "cache eviction failed"),
                Err(e) => tracing::warn!(target: "kalamdb_storage", error = %e, "cache eviction panicked"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Upload every queued file, then delete every queued delete (a delete queued while its
    /// file was uploading comes after that upload). Stops at the first failure.
    async fn drain(&self, files: &Arc<FileStore>) -> std::result::Result<(), String> {
        let listing = files.clone();
        let uploads = tokio::task::spawn_blocking(move || listing.uploads())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        metrics::gauge!("kalamdb_storage_upload_queue_files").set(uploads.len() as f64);
        for q in &uploads {
            self.upload(files, q).await?;
        }
        let listing = files.clone();
        let deletes = tokio::task::spawn_blocking(move || listing.deletes())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for q in &deletes {
            match self.store.delete(&ObjectPath::from(q.rel.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(describe(&self.url, &e)),
            }
            files.done(q).map_err(|e| e.to_string())?;
        }
        metrics::gauge!("kalamdb_storage_upload_queue_files").set(0.0);
        Ok(())
    }

    /// Copy one queued file to the bucket, unless an object of its size is there already
    /// (names are a function of the log: same name, same bytes; S3 writes are all or nothing).
    async fn upload(&self, files: &FileStore, q: &Queued) -> std::result::Result<(), String> {
        let path = files.path(&q.rel);
        let len = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Its apply is still writing it, or never finished (see `ORPHAN_MARKER_AGE`).
                if files.drop_orphan(q).map_err(|e| e.to_string())? {
                    tracing::warn!(target: "kalamdb_storage", file = %q.rel, "dropped the upload of a file that was never written");
                }
                return Ok(());
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let location = ObjectPath::from(q.rel.as_str());
        match self.store.head(&location).await {
            Ok(meta) if meta.size == len => return files.done(q).map_err(|e| e.to_string()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(describe(&self.url, &e)),
        }
        put_file(self.store.as_ref(), &self.url, &location, &path, len).await?;
        metrics::counter!("kalamdb_storage_uploaded_bytes_total").increment(len);
        tracing::debug!(target: "kalamdb_storage", file = %q.rel, bytes = len, "uploaded to the bucket");
        files.done(q).map_err(|e| e.to_string())
    }
}

/// Upload the local file `path` (`len` bytes) as `location`: one PUT up to
/// [`UPLOAD_PART_BYTES`], else a multipart upload with bounded parts in flight.
async fn put_file(
    store: &dyn ObjectStore,
    url: &str,
    location: &ObjectPath,
    path: &std::path::Path,
    len: u64,
) -> std::result::Result<(), String> {
    let read_err = |e: std::io::Error| format!("{}: {e}", path.display());
    if len as usize <= UPLOAD_PART_BYTES {
        let bytes = tokio::fs::read(path).await.map_err(read_err)?;
        store.put(location, bytes.into()).await.map_err(|e| describe(url, &e))?;
        return Ok(());
    }
    let upload = store.put_multipart(location).await.map_err(|e| describe(url, &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut buf = vec![0u8; 1 << 20];
    let sent: std::result::Result<(), String> = async {
        loop {
            writer.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT_MAX).await.map_err(|e| describe(url, &e))?;
            let n = file.read(&mut buf).await.map_err(read_err)?;
            if n == 0 {
                return Ok(());
            }
            writer.write(&buf[..n]);
        }
    }
    .await;
    match sent {
        Ok(()) => writer.finish().await.map(|_| ()).map_err(|e| describe(url, &e)),
        Err(e) => {
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

impl Remote for Bucket {
    fn fetch(&self, rel: &str, out: &mut dyn Write) -> std::result::Result<u64, String> {
        let (mut tx, mut rx) = futures::channel::mpsc::channel(FETCH_CHUNKS_IN_FLIGHT_MAX);
        let store = self.store.clone();
        let url = self.url.clone();
        let location = ObjectPath::from(rel);
        self.runtime.spawn(async move {
            let mut stream = match store.get(&location).await {
                Ok(r) => r.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(describe(&url, &e))).await;
                    return;
                }
            };
            while let Some(chunk) = stream.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk.map_err(|e| describe(&url, &e))).await.is_err() || failed {
                    return;
                }
            }
        });
        // The futures executor, not tokio's: this may be called on any thread, a runtime
        // worker included (apply), where tokio's blocking calls would panic.
        let mut copied = 0u64;
        while let Some(chunk) = futures::executor::block_on(rx.next()) {
            let chunk = chunk?;
            out.write_all(&chunk).map_err(|e| e.to_string())?;
            copied += chunk.len() as u64;
        }
        Ok(copied)
    }

    fn wake(&self) {
        self.wake.notify_one();
    }

    fn url(&self) -> &str {
        &self.url
    }
}

/// This node's cold files as `cfg` places them: a folder, or a bucket with its local cache
/// (the bucket's uploader is not started here; see [`Bucket::start_uploader`]).
pub fn open_files(cfg: &Config) -> Result<(Arc<FileStore>, Option<Arc<Bucket>>)> {
    let root = cfg.storage_path();
    std::fs::create_dir_all(&root)?;
    // Absolute: DataFusion addresses files by absolute path.
    let root = std::fs::canonicalize(&root)?;
    match cfg.storage_url() {
        None => Ok((Arc::new(FileStore::folder(root).with_writer(cfg.server.node_id)), None)),
        Some(url) => {
            // A node that kept its files in the default folder until now: they are in neither
            // the cache nor the bucket, and starting would lose them from every read.
            let folder = cfg.storage.data_path.join("storage");
            if std::fs::read_dir(&folder).is_ok_and(|mut d| d.next().is_some()) {
                return Err(Error::Config(format!(
                    "storage.storage_path is {url}, but {} still holds cold files: copy them into the bucket under the same relative paths, then remove the folder",
                    folder.display()
                )));
            }
            let bucket = Bucket::open(cfg, url)?;
            Ok((Arc::new(FileStore::cached(root, bucket.clone()).with_writer(cfg.server.node_id)), Some(bucket)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls_are_checked() {
        let ok = BucketUrl::parse("s3://my-bucket/kalam/prod/").unwrap();
        assert_eq!(ok, BucketUrl { bucket: "my-bucket".into(), prefix: "kalam/prod".into() });
        assert_eq!(BucketUrl::parse("s3://abc").unwrap().prefix, "");
        for bad in [
            "s3:/x",
            "http://abc/x",
            "s3:///x",
            "s3://ab",
            "s3://UPPER",
            "s3://-abc",
            "s3://abc/a//b",
            "s3://abc/a/../b",
        ] {
            assert!(BucketUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
