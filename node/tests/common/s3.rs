//! A real S3-compatible server for tests: moto's `moto_server` (PyPI `moto[server]`), started
//! on loopback, behind a switchable TCP relay so a test can take the endpoint down and bring
//! it back without losing the bucket. `scripts/install-test-tools.sh` installs moto; its path
//! comes from `KALAMDB_MOTO_SERVER` (else `moto_server` on PATH).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

pub const ACCESS_KEY: &str = "kalamtest";
pub const SECRET_KEY: &str = "kalamtest-secret";

pub struct S3Server {
    child: Child,
    /// moto's own port.
    pub port: u16,
    /// The relay's port: what the database is given as its endpoint.
    pub relay_port: u16,
    relay_up: Arc<AtomicBool>,
    _log: tempfile::TempDir,
}

impl S3Server {
    pub async fn start() -> S3Server {
        S3Server::start_with(&[]).await
    }

    /// A server that checks credentials: it knows no access key, so every request is refused
    /// with 403 (moto's IAM enforcement, `INITIAL_NO_AUTH_ACTION_COUNT=0`).
    pub async fn start_refusing_credentials() -> S3Server {
        S3Server::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await
    }

    async fn start_with(env: &[(&str, &str)]) -> S3Server {
        let program = std::env::var("KALAMDB_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = super::free_port();
        let log = tempfile::tempdir().expect("log dir");
        let out = std::fs::File::create(log.path().join("moto.log")).expect("moto log");
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone().expect("clone")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run the S3 test server '{program}': {e}. Install it with scripts/install-test-tools.sh (sets up moto in a venv) and set KALAMDB_MOTO_SERVER")
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let relay_up = Arc::new(AtomicBool::new(true));
        let relay_port = relay(port, relay_up.clone()).await;
        S3Server { child, port, relay_port, relay_up, _log: log }
    }

    /// The endpoint the database uses (through the relay).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.relay_port)
    }

    /// Config overrides that put a server's cold files in `s3://bucket/prefix`.
    pub fn env(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        vec![
            ("KALAMDB_STORAGE_STORAGE_PATH".into(), format!("s3://{bucket}/{prefix}")),
            ("KALAMDB_STORAGE_S3_ENDPOINT".into(), self.endpoint()),
            ("KALAMDB_STORAGE_S3_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("KALAMDB_STORAGE_S3_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// Endpoint down: the relay refuses every new connection (and drops open ones' traffic).
    pub fn set_reachable(&self, up: bool) {
        self.relay_up.store(up, Ordering::SeqCst);
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.expect("connect moto");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(req.as_bytes()).await.expect("send");
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await.expect("read");
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"), "create bucket: {text}");
    }

    /// Every object key under `prefix` of `bucket`, sorted (straight to moto, not the relay).
    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("test client")
    }

    pub async fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let store = self.client(bucket);
        let prefix = object_store::path::Path::from(prefix);
        let mut out: Vec<(String, u64)> = store
            .list(Some(&prefix))
            .map(|m| {
                let m = m.expect("list objects");
                (m.location.to_string(), m.size)
            })
            .collect()
            .await;
        out.sort();
        out
    }

    /// Write an object straight to moto (to damage a backup).
    pub async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        use object_store::ObjectStoreExt;
        let store = self.client(bucket);
        store.put(&object_store::path::Path::from(key), bytes.into()).await.expect("put object");
    }

    /// Poll `list` until `pred` holds, at most `within`; returns the last listing.
    pub async fn wait_for(
        &self,
        bucket: &str,
        prefix: &str,
        within: Duration,
        pred: impl Fn(&[(String, u64)]) -> bool,
    ) -> Vec<(String, u64)> {
        let deadline = Instant::now() + within;
        loop {
            let l = self.list(bucket, prefix).await;
            if pred(&l) || Instant::now() >= deadline {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay from a fresh loopback port to `target`, passing traffic while `up` holds.
async fn relay(target: u16, up: Arc<AtomicBool>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = listener.local_addr().expect("relay addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { return };
            if !up.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let up = up.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                // Relay until either side closes or the endpoint is taken down.
                let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                let down = async {
                    while up.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = copy => {}
                    () = down => {}
                }
            });
        }
    });
    port
}
