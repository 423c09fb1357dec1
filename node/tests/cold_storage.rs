//! Cold storage through the real server: FLUSH moves rows into Parquet, queries see hot and
//! cold rows as one table, UPDATE/DELETE of flushed rows work, compaction keeps the same rows,
//! and a crash between any two steps of a flush loses and duplicates nothing. Every test runs
//! twice: with the files in the server's data folder, and in a bucket of a real S3 server
//! (moto, on loopback; see `common::s3`), where the node keeps a local cache.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Server;
use common::s3::S3Server;
use serde_json::json;

/// Where the server under test keeps its cold files.
enum Backend {
    Folder,
    /// The server, and the key prefix the node under test writes under (a test that starts
    /// several fresh nodes gives each its own, see [`Backend::use_prefix`]).
    Bucket(S3Server, String),
}

const BUCKET: &str = "cold";
const PREFIX: &str = "kalam/test";

impl Backend {
    async fn new(bucket: bool) -> Backend {
        if !bucket {
            return Backend::Folder;
        }
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        Backend::Bucket(s3, PREFIX.to_string())
    }

    /// Servers started from now on keep their files under `PREFIX/<sub>` of the bucket: a
    /// fresh data folder must not find an earlier node's files there.
    fn use_prefix(&mut self, sub: &str) {
        if let Backend::Bucket(_, prefix) = self {
            *prefix = format!("{PREFIX}/{sub}");
        }
    }

    /// Config overrides for the server, plus `extra`.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Backend::Bucket(s3, prefix) = self {
            env.extend(s3.env(BUCKET, prefix));
        }
        env
    }

    async fn start(&self, data: &Path, port: u16, extra: &[(&str, &str)]) -> Server {
        let env = self.env(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Server::start_with(data, port, &env).await
    }

    /// The local folder of the Parquet files (the bucket's cache with a bucket).
    fn files_dir(&self, data: &Path) -> PathBuf {
        match self {
            Backend::Folder => data.join("storage"),
            Backend::Bucket(..) => data.join("storage-cache"),
        }
    }

    /// With a bucket: wait until it holds exactly the Parquet files the node has locally
    /// (same paths and sizes), i.e. every flush and compaction was uploaded and every retired
    /// file deleted there too.
    async fn assert_mirrored(&self, data: &Path) {
        let Backend::Bucket(s3, prefix) = self else { return };
        let root = self.files_dir(data);
        let local: Vec<(String, u64)> = parquet_files_in(&root)
            .iter()
            .map(|p| {
                let rel = p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                (format!("{prefix}/{rel}"), std::fs::metadata(p).unwrap().len())
            })
            .collect();
        let parquet =
            |l: &[(String, u64)]| l.iter().filter(|(k, _)| k.ends_with(".parquet")).cloned().collect::<Vec<_>>();
        let listed = s3.wait_for(BUCKET, prefix, Duration::from_secs(30), |l| parquet(l) == local).await;
        assert_eq!(parquet(&listed), local, "bucket and local files differ");
    }
}

/// Run each listed test once per backend: `folder::name` and `bucket::name`.
macro_rules! on_folder_and_bucket {
    ($($name:ident),* $(,)?) => {
        mod folder {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::new(false).await).await
                }
            )*
        }
        mod bucket {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::new(true).await).await
                }
            )*
        }
    };
}

on_folder_and_bucket!(
    flush_query_rewrite_compact_restart,
    automatic_flush_by_row_policy,
    an_automatic_flush_is_prepared_off_apply,
    crash_at_every_flush_step_loses_and_duplicates_nothing,
    time_travel_and_rebuild,
    point_lookups_of_flushed_rows_read_one_file_and_one_page,
    filters_answer_the_same_over_hot_and_flushed_rows,
);

/// Rows of the test table; small enough to keep each restart quick.
const ROWS: i64 = 200;

async fn load(s: &Server) {
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.orders (id BIGINT PRIMARY KEY, category TEXT, amount DOUBLE) WITH (TYPE = 'SHARED')")
        .await;
    let values: Vec<String> = (0..ROWS).map(|i| format!("({i}, 'c{}', {}.5)", i % 4, i)).collect();
    s.sql_ok(&format!("INSERT INTO app.orders (id, category, amount) VALUES {}", values.join(", "))).await;
}

/// (count, count distinct ids, sum of amounts) as the table answers it now.
async fn totals(s: &Server) -> serde_json::Value {
    let r = s.sql_ok("SELECT count(*), count(DISTINCT id), sum(amount) FROM app.orders").await;
    r["rows"][0].clone()
}

fn parquet_files(b: &Backend, data: &Path) -> Vec<PathBuf> {
    parquet_files_in(&b.files_dir(data))
}

fn parquet_files_in(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> =
        walk_files(root).into_iter().filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    out.sort();
    out
}

async fn flush_query_rewrite_compact_restart(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let s = b.start(dir.path(), port, &[("KALAMDB_STORAGE_RETIRED_FILE_GRACE_SECS", "1")]).await;
    load(&s).await;
    let sum: f64 = (0..ROWS).map(|i| i as f64 + 0.5).sum();
    assert_eq!(totals(&s).await, json!([ROWS, ROWS, sum]));

    let r = s.sql_ok("FLUSH TABLE app.orders").await;
    assert!(r["message"].as_str().unwrap().contains(&format!("{ROWS} row(s) written")), "{r}");
    let files = parquet_files(&b, dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().contains("app/orders-t1/shared/"), "{files:?}");
    // Everything is cold now and reads the same, through DataFusion and the point lookup.
    assert_eq!(totals(&s).await, json!([ROWS, ROWS, sum]));
    let r = s.sql_ok("SELECT id, category, amount FROM app.orders WHERE id = 7").await;
    assert_eq!(r["rows"], json!([[7, "c3", 7.5]]));
    let r = s.sql_ok("SELECT category, count(*) FROM app.orders GROUP BY category ORDER BY category").await;
    assert_eq!(r["rows"], json!([["c0", 50], ["c1", 50], ["c2", 50], ["c3", 50]]));

    // Rewrites of flushed rows: new hot versions and tombstones; a flushed key stays taken.
    let r = s.sql_ok("UPDATE app.orders SET amount = 0.0 WHERE id < 10").await;
    assert_eq!(r["row_count"], 10);
    let r = s.sql_ok("DELETE FROM app.orders WHERE id >= 190").await;
    assert_eq!(r["row_count"], 10);
    let (status, body) = s.sql("INSERT INTO app.orders (id, category, amount) VALUES (5, 'dup', 1.0)").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "CONSTRAINT_VIOLATION", "{body}");
    s.sql_ok("INSERT INTO app.orders (id, category, amount) VALUES (195, 'again', 1.0)").await;
    let sum2 =
        sum - (0..10).map(|i| i as f64 + 0.5).sum::<f64>() - (190..200).map(|i| i as f64 + 0.5).sum::<f64>() + 1.0;
    let expected = json!([ROWS - 9, ROWS - 9, sum2]);
    assert_eq!(totals(&s).await, expected);
    let r = s.sql_ok("SELECT amount FROM app.orders WHERE id = 3").await;
    assert_eq!(r["rows"], json!([[0.0]]));
    // Key ranges over both tiers (hot: ids < 10 and 195; cold: the rest), either side of the operator.
    let r = s.sql_ok("SELECT id FROM app.orders WHERE id > 7 AND id <= 12 ORDER BY id").await;
    assert_eq!(r["rows"], json!([[8], [9], [10], [11], [12]]));
    let r = s.sql_ok("SELECT id FROM app.orders WHERE 197 > id AND id >= 188 ORDER BY id").await;
    assert_eq!(r["rows"], json!([[188], [189], [195]]));
    let r = s.sql_ok("SELECT count(*) FROM app.orders WHERE id = 192").await;
    assert_eq!(r["rows"], json!([[0]]));

    // KalamDB's spelling, a second file, then compaction down to one file with the same rows.
    s.sql_ok("STORAGE FLUSH TABLE app.orders").await;
    assert_eq!(totals(&s).await, expected);
    assert_eq!(parquet_files(&b, dir.path()).len(), 2);
    let r = s.sql_ok("STORAGE COMPACT TABLE app.orders").await;
    assert!(r["message"].as_str().unwrap().contains(&format!("{} row(s) kept", ROWS - 9)), "{r}");
    assert_eq!(totals(&s).await, expected);
    // Retired files stay (a running query may still read them) until every member applied
    // past the compaction and the grace period passed (1 s here), then a log entry deletes them.
    s.sql_ok("STORAGE COMPACT TABLE app.orders").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while parquet_files(&b, dir.path()).len() != 1 {
        assert!(std::time::Instant::now() < deadline, "retired files stayed: {:?}", parquet_files(&b, dir.path()));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(totals(&s).await, expected);

    let r = s
        .sql_ok(
            "SELECT job_type, status, table_name, rows FROM system.jobs WHERE namespace_id = 'app' ORDER BY started_at",
        )
        .await;
    assert_eq!(
        r["rows"],
        json!([
            ["flush", "completed", "orders", ROWS],
            ["flush", "completed", "orders", 11],
            ["compact", "completed", "orders", ROWS - 9]
        ])
    );

    // Statements that name nothing to flush fail clearly.
    let (status, body) = s.sql("FLUSH TABLE app.nope").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("TABLE_NOT_FOUND")), "{body}");
    let (status, body) = s.sql("FLUSH ALL TABLES IN nope").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("NAMESPACE_NOT_FOUND")), "{body}");
    let (status, body) =
        s.sql("CREATE TABLE app.bad (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:x')").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("FLUSH_POLICY"), "{body}");

    // A user table flushes per user scope, through FLUSH ALL TABLES IN.
    s.sql_ok("CREATE TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT) WITH (TYPE = 'USER')").await;
    s.sql_ok("INSERT INTO app.notes (id, body) VALUES (1, 'one'), (2, 'two')").await;
    s.sql_ok("FLUSH ALL TABLES IN app").await;
    s.sql_ok("INSERT INTO app.notes (id, body) VALUES (3, 'three')").await;
    let r = s.sql_ok("SELECT id, body FROM app.notes ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1, "one"], [2, "two"], [3, "three"]]));

    // Everything survives kill -9.
    b.assert_mirrored(dir.path()).await;
    let mut s = s;
    s.kill9();
    if let Backend::Bucket(..) = &b {
        // A node whose cache is lost reads every file back from the bucket.
        std::fs::remove_dir_all(b.files_dir(dir.path())).unwrap();
    }
    let s = b.start(dir.path(), port, &[]).await;
    assert_eq!(totals(&s).await, expected);
    let r = s.sql_ok("SELECT id, body FROM app.notes ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1, "one"], [2, "two"], [3, "three"]]));
}

/// Rows of the automatic-flush test: with text keys (one stub record each), more than a flush
/// settles in its own entry at any apply format, so the leader's paced `Settle` ops (several
/// of them) finish the job.
const AUTO_ROWS: usize = 3 * kalamdb_projections::cold::SETTLE_ROWS_MAX + 1;
const _: () = assert!(AUTO_ROWS > kalamdb_projections::cold::SETTLE_INLINE_ROWS_MAX);
const _: () = assert!(AUTO_ROWS > kalamdb_projections::cold::SETTLE_INLINE_STUBS_MAX);

async fn automatic_flush_by_row_policy(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = b.start(dir.path(), common::free_port(), &[]).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok(&format!(
        "CREATE TABLE app.ev (id TEXT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:{}')",
        AUTO_ROWS - 10
    ))
    .await;
    let values: Vec<String> = (0..AUTO_ROWS).map(|i| format!("('k{i:05}', 'v')")).collect();
    s.sql_ok(&format!("INSERT INTO app.ev (id, v) VALUES {}", values.join(", "))).await;
    // The policy is checked every second: wait (bounded) for the flush job.
    let mut flushed = false;
    for _ in 0..100 {
        let r = s.sql_ok("SELECT rows FROM system.jobs WHERE table_name = 'ev' AND job_type = 'flush'").await;
        if r["rows"] == json!([[AUTO_ROWS]]) {
            flushed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(flushed, "no automatic flush");
    assert_eq!(parquet_files(&b, dir.path()).len(), 1);
    // Then the leader settles every flushed row (4 ops of at most 1,024 rows, paced), bounded.
    let mut settled = 0.0;
    for _ in 0..200 {
        settled = metric(&s, "kalamdb_storage_settled_rows_total ").await;
        if settled >= AUTO_ROWS as f64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(settled, AUTO_ROWS as f64, "flushed rows left unsettled");
    let r = s.sql_ok("SELECT count(*) FROM app.ev").await;
    assert_eq!(r["rows"], json!([[AUTO_ROWS]]));
    b.assert_mirrored(dir.path()).await;
}

/// From apply format 4 an automatic flush is prepared off apply (`PrepareFlush`, then
/// `FlushUpto`): the flush names the files its preparation wrote, and the rows read back whole
/// from one file, with no temporary file left.
async fn an_automatic_flush_is_prepared_off_apply(b: Backend) {
    const ROWS: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let s = b.start(dir.path(), common::free_port(), &[]).await;
    // Groups move up to the newest format on the node's format tick (every 5 s): bounded wait.
    let mut format = 0.0;
    for _ in 0..300 {
        format = metric(&s, "kalamdb_group_apply_format{group=\"shared:0\"} ").await;
        if format >= f64::from(kalamdb_projections::format::FORMAT_PREPARED_FLUSH) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(format, f64::from(kalamdb_projections::format::FORMAT_MAX), "the shared shard's format");
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.ev (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED', FLUSH_POLICY = 'rows:1000')")
        .await;
    for part in 0..3 {
        let values: Vec<String> = (part * 500..(part + 1) * 500).map(|i| format!("({i}, 'v{i}')")).collect();
        s.sql_ok(&format!("INSERT INTO app.ev (id, v) VALUES {}", values.join(", "))).await;
    }
    let mut prepared = 0.0;
    for _ in 0..100 {
        prepared = metric(&s, "kalamdb_storage_flushes_total{read=\"prepared\"} ").await;
        if prepared >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(prepared, 1.0, "the automatic flush did not use its preparation");
    let r = s.sql_ok("SELECT rows FROM system.jobs WHERE table_name = 'ev' AND job_type = 'flush'").await;
    assert_eq!(r["rows"], json!([[ROWS]]));
    assert_eq!(parquet_files(&b, dir.path()).len(), 1);
    let r = s.sql_ok("SELECT count(*), sum(id) FROM app.ev").await;
    assert_eq!(r["rows"], json!([[ROWS, (ROWS * (ROWS - 1) / 2)]]));
    let r = s.sql_ok("SELECT v FROM app.ev WHERE id = 777").await;
    assert_eq!(r["rows"], json!([["v777"]]));
    let temp = temp_files(&b, dir.path());
    assert!(temp.is_empty(), "temporary files left: {temp:?}");
    b.assert_mirrored(dir.path()).await;
}

/// Files under a temporary name in the node's cold files (table files, copies, fetches).
fn temp_files(b: &Backend, data: &Path) -> Vec<PathBuf> {
    walk_files(&b.files_dir(data))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.ends_with(".tmp") || name.contains(".tmp-") || name.contains(".fetch-")
        })
        .collect()
}

/// Every file under `root`.
fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A counter's value in the server's /metrics (0 before it is first counted); `wanted` is the
/// line's start up to the value (name, labels, space).
async fn metric(s: &Server, wanted: &str) -> f64 {
    let (_, m) = s.get("/metrics").await.unwrap();
    m.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(wanted))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Kill the process at each step of a flush (`KALAMDB_FAILPOINTS` arms one crash point),
/// with `FLUSH TABLE` applied whole inside one entry (apply format 3) and prepared off apply
/// (format 4, `PrepareFlush` then `FlushUpto`); after a restart the log is applied again and
/// every row is there exactly once.
async fn crash_at_every_flush_step_loses_and_duplicates_nothing(mut b: Backend) {
    let sum: f64 = (0..ROWS).map(|i| i as f64 + 0.5).sum();
    for format in ["3", "4"] {
        for point in [
            "flush-before-write",
            "flush-after-temp",
            "flush-after-rename",
            "flush-before-commit",
            "flush-after-commit",
        ] {
            b.use_prefix(&format!("f{format}-{point}"));
            let dir = tempfile::tempdir().unwrap();
            let port = common::free_port();
            let format_env = ("KALAMDB_STORAGE_APPLY_FORMAT_MAX", format);
            let mut s = b.start(dir.path(), port, &[("KALAMDB_FAILPOINTS", point), format_env]).await;
            load(&s).await;
            // The server aborts while writing or applying the flush: the request fails or times out.
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                common::post_sql(port, "FLUSH TABLE app.orders"),
            )
            .await;
            assert!(!matches!(answer, Ok(Ok((200, _)))), "{format}/{point}: the flush succeeded: {answer:?}");
            for _ in 0..100 {
                if common::post_sql(port, "SELECT 1").await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert!(common::post_sql(port, "SELECT 1").await.is_err(), "{format}/{point}: server still up");
            s.kill9();
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
            assert!(log.contains(&format!("failpoint {point} hit")), "{format}/{point} not reached:\n{log}");

            let s = b.start(dir.path(), port, &[format_env]).await;
            assert_eq!(totals(&s).await, json!([ROWS, ROWS, sum]), "{format}/{point}");
            // A crash while preparing (format 4, before the file has its name) stops the
            // statement before its `FlushUpto` is in the log: nothing was flushed. Any later
            // crash is inside the entry that flushes, which is applied again exactly once.
            let preparing = format == "4" && matches!(point, "flush-before-write" | "flush-after-temp");
            let files = parquet_files(&b, dir.path());
            assert_eq!(files.len(), usize::from(!preparing), "{format}/{point}: {files:?}");
            s.sql_ok("FLUSH TABLE app.orders").await;
            assert_eq!(totals(&s).await, json!([ROWS, ROWS, sum]), "{format}/{point}");
            assert_eq!(parquet_files(&b, dir.path()).len(), 1, "{format}/{point}");
            // The temp file the crash left (after "flush-after-temp") went at startup; a
            // `PrepareFlush` applied again at startup prepares anew and its file goes when
            // the next flush takes or replaces it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let leftovers = temp_files(&b, dir.path());
                if leftovers.is_empty() {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{format}/{point}: temp files {leftovers:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            b.assert_mirrored(dir.path()).await;
        }
    }
}

/// The log index that wrote a row version: `_seq` packs it above 20 ordinal bits.
async fn index_of(s: &Server, table: &str, id: i64) -> u64 {
    let r = s.sql_ok(&format!("SELECT _seq FROM {table} WHERE id = {id}")).await;
    r["rows"][0][0].as_u64().expect("row with _seq") >> 20
}

async fn shared_digest(s: &Server) -> String {
    let (status, d) = s.get("/v1/api/cluster/digest").await.unwrap();
    assert_eq!(status, 200, "{d}");
    let g = d["groups"].as_array().unwrap().iter().find(|g| g["group"] == "shared:0").expect("shared group").clone();
    g["digest"].as_str().unwrap().to_string()
}

async fn time_travel_and_rebuild(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = b.start(dir.path(), common::free_port(), &[]).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    let values: Vec<String> = (0..10).map(|i| format!("({i}, 'a')")).collect();
    s.sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
    let inserted = index_of(&s, "app.t", 0).await;
    s.sql_ok("FLUSH TABLE app.t").await;
    s.sql_ok("UPDATE app.t SET v = 'b' WHERE id < 5").await;
    let updated = index_of(&s, "app.t", 0).await;
    s.sql_ok("DELETE FROM app.t WHERE id = 9").await;
    s.sql_ok("INSERT INTO app.t (id, v) VALUES (10, 'c')").await;
    let last = index_of(&s, "app.t", 10).await;
    assert!(inserted < updated && updated < last, "{inserted} {updated} {last}");

    let at = |i: u64| format!("SELECT id, v FROM app.t AS OF {i} ORDER BY id");
    // Before the flush: replayed from the log alone.
    let r = s.sql_ok(&at(inserted)).await;
    assert_eq!(r["rows"], json!((0..10).map(|i| json!([i, "a"])).collect::<Vec<_>>()));
    // After it: the flushed file plus the log after the flush.
    let r = s.sql_ok(&at(updated)).await;
    let expected: Vec<_> = (0..10).map(|i| json!([i, if i < 5 { "b" } else { "a" }])).collect();
    assert_eq!(r["rows"], json!(expected));
    // The newest position equals the live table, `_seq` included.
    let live = s.sql_ok("SELECT id, v, _seq FROM app.t ORDER BY id").await;
    let past = s.sql_ok(&format!("SELECT id, v, _seq FROM app.t AS OF {last} ORDER BY id")).await;
    assert_eq!(live["rows"], past["rows"]);
    assert_eq!(live["rows"].as_array().unwrap().len(), 10);
    // A position not reached yet, and a write with AS OF, are refused.
    let (status, body) = s.sql(&at(1 << 40)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("HISTORY_UNAVAILABLE")), "{body}");
    let (status, body) = s.sql("DELETE FROM app.t AS OF 3 WHERE id = 1").await;
    assert_eq!(status, 400, "{body}");

    // Rebuilding the projection from files + log gives back the same bytes.
    let before = shared_digest(&s).await;
    let r = s.sql_ok("REBUILD PROJECTION app.t").await;
    assert!(r["message"].as_str().unwrap().contains("Rebuilt projection of app.t"), "{r}");
    assert_eq!(shared_digest(&s).await, before, "rebuilt projection differs from the live one");
    assert_eq!(s.sql_ok("SELECT id, v, _seq FROM app.t ORDER BY id").await["rows"], live["rows"]);

    // Compaction drops superseded versions: older positions are gone, with a clear error.
    s.sql_ok("FLUSH TABLE app.t").await;
    s.sql_ok("STORAGE COMPACT TABLE app.t").await;
    let (status, body) = s.sql(&at(updated)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("HISTORY_UNAVAILABLE")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("the oldest is"), "{body}");
    let before = shared_digest(&s).await;
    s.sql_ok("REBUILD PROJECTION app.t").await;
    assert_eq!(shared_digest(&s).await, before);

    // A row written between a flush and a compaction is in no file the compaction wrote: that
    // compaction is no base. REBUILD refuses rather than deleting the row (it used to).
    s.sql_ok("UPDATE app.t SET v = 'e' WHERE id = 0").await;
    s.sql_ok("FLUSH TABLE app.t").await;
    s.sql_ok("INSERT INTO app.t (id, v) VALUES (12, 'f')").await;
    s.sql_ok("STORAGE COMPACT TABLE app.t").await;
    let live = s.sql_ok("SELECT id, v, _seq FROM app.t ORDER BY id").await;
    let (status, body) = s.sql("REBUILD PROJECTION app.t").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("HISTORY_UNAVAILABLE")), "{body}");
    assert_eq!(s.sql_ok("SELECT id, v, _seq FROM app.t ORDER BY id").await["rows"], live["rows"]);
    assert!(live["rows"].as_array().unwrap().iter().any(|r| r[0] == json!(12)), "{live}");
    // The next flush is a base again.
    s.sql_ok("FLUSH TABLE app.t").await;
    let before = shared_digest(&s).await;
    s.sql_ok("REBUILD PROJECTION app.t").await;
    assert_eq!(shared_digest(&s).await, before);
    assert_eq!(s.sql_ok("SELECT id, v, _seq FROM app.t ORDER BY id").await["rows"], live["rows"]);
}

/// A point lookup of a flushed row opens only the files whose recorded key range can hold
/// the key, and decodes one data page per column there rather than the whole row group
/// (benches/RESULTS.md: 443 lookups/s before, when every lookup decoded every flushed row).
async fn point_lookups_of_flushed_rows_read_one_file_and_one_page(b: Backend) {
    const BIG_ROWS: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let s = b.start(&dir.path().join("n"), common::free_port(), &[]).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.orders (id BIGINT PRIMARY KEY, category TEXT, amount DOUBLE) WITH (TYPE = 'SHARED')")
        .await;
    for chunk in (0..BIG_ROWS).collect::<Vec<_>>().chunks(2_000) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'c{}', {i}.5)", i % 4)).collect();
        s.sql_ok(&format!("INSERT INTO app.orders (id, category, amount) VALUES {}", values.join(", "))).await;
    }
    s.sql_ok("FLUSH TABLE app.orders").await;
    // A second file with keys above the first one's.
    s.sql_ok("INSERT INTO app.orders (id, category, amount) VALUES (50000, 'late', 1.0), (50001, 'late', 2.0)").await;
    s.sql_ok("FLUSH TABLE app.orders").await;
    assert_eq!(parquet_files(&b, &dir.path().join("n")).len(), 2);
    let r = s.sql_ok("SELECT id, category FROM app.orders WHERE id = 50001").await;
    assert_eq!(r["rows"], json!([[50001, "late"]]));

    let r = s.sql_ok("SELECT id, category, amount FROM app.orders WHERE id = 12345").await;
    assert_eq!(r["rows"], json!([[12345, "c1", 12345.5]]));
    let r = s.sql_ok("SELECT count(*) FROM app.orders WHERE id = 30000").await;
    assert_eq!(r["rows"], json!([[0]]));
    let r = s.sql_ok("SELECT count(*) FROM app.orders WHERE id >= 19990").await;
    assert_eq!(r["rows"], json!([[12]]));

    // The primary-key fast path reads the version its stub names from the file, with `_seq`.
    let r = s.sql_ok("SELECT * FROM app.orders WHERE id = 7777").await;
    assert_eq!(r["rows"][0].as_array().unwrap()[..3], [json!(7777), json!("c1"), json!(7777.5)], "{r}");
    assert!(r["rows"][0][3].as_i64().unwrap() > 0 && r["rows"][0][4] == json!(false), "{r}");
    // Again, and a neighbour on the same page: the decoded page comes from the lookup cache.
    let (hits, reads) = (lookup_pages(&s, "hit").await, lookup_pages(&s, "read").await);
    assert!(reads >= 1.0, "the first read decoded a page: {reads}");
    assert_eq!(s.sql_ok("SELECT * FROM app.orders WHERE id = 7777").await["rows"], r["rows"]);
    let r = s.sql_ok("SELECT id, category, amount FROM app.orders WHERE id = 7778").await;
    assert_eq!(r["rows"], json!([[7778, "c2", 7778.5]]));
    assert_eq!(lookup_pages(&s, "hit").await, hits + 2.0);
    assert_eq!(lookup_pages(&s, "read").await, reads);
    // After compaction the row lives in another file under a merged log range.
    s.sql_ok("STORAGE COMPACT TABLE app.orders").await;
    let r = s.sql_ok("SELECT id, category, amount FROM app.orders WHERE id = 12345").await;
    assert_eq!(r["rows"], json!([[12345, "c1", 12345.5]]));
    let r = s.sql_ok("SELECT id, category FROM app.orders WHERE id = 50000").await;
    assert_eq!(r["rows"], json!([[50000, "late"]]));
    // A deleted flushed row is a hot tombstone; an updated one a hot version.
    s.sql_ok("DELETE FROM app.orders WHERE id = 12345").await;
    s.sql_ok("UPDATE app.orders SET amount = 1.25 WHERE id = 12346").await;
    let r = s.sql_ok("SELECT id FROM app.orders WHERE id = 12345").await;
    assert_eq!(r["rows"], json!([]));
    let r = s.sql_ok("SELECT amount FROM app.orders WHERE id = 12346").await;
    assert_eq!(r["rows"], json!([[1.25]]));
    s.sql_ok("FLUSH TABLE app.orders").await;
    let r = s.sql_ok("SELECT amount FROM app.orders WHERE id = 12346").await;
    assert_eq!(r["rows"], json!([[1.25]]));
    let r = s.sql_ok("SELECT id FROM app.orders WHERE id = 12345").await;
    assert_eq!(r["rows"], json!([]));

    // A text key, through the same keyed read.
    s.sql_ok("CREATE TABLE app.tags (name TEXT PRIMARY KEY, n BIGINT) WITH (TYPE = 'SHARED')").await;
    s.sql_ok("INSERT INTO app.tags (name, n) VALUES ('b', 2), ('a', 1), ('c', 3)").await;
    s.sql_ok("FLUSH TABLE app.tags").await;
    let r = s.sql_ok("SELECT name, n FROM app.tags WHERE name = 'b'").await;
    assert_eq!(r["rows"], json!([["b", 2]]));
    let r = s.sql_ok("SELECT name, n FROM app.tags WHERE name = 'bb'").await;
    assert_eq!(r["rows"], json!([]));

    let r = s.sql_ok("EXPLAIN ANALYZE SELECT id, category, amount FROM app.orders WHERE id = 12347").await;
    let plan = r["rows"].to_string();
    assert_eq!(plan.matches(".parquet").count(), 1, "only the file that can hold the key: {plan}");
    // 20,000 rows in pages of `PAGE_ROWS_MAX` rows: the page index leaves one to decode.
    let pages = (BIG_ROWS as usize).div_ceil(kalamdb_projections::cold::PAGE_ROWS_MAX);
    assert!(plan.contains(&format!("page_index_pages_pruned={pages} total → 1 matched")), "{plan}");
}

/// Queries whose filters name text columns, asked of the same rows hot, flushed, and flushed
/// with newer hot versions over them. In the files, `category` (four values and NULL) is all
/// dictionary pages, so it is read as a dictionary and filtered on its codes; `name` (unique,
/// long) overflows its dictionary and falls back to plain pages, so it is read as strings.
async fn filters_answer_the_same_over_hot_and_flushed_rows(b: Backend) {
    const N: i64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let s = b.start(dir.path(), common::free_port(), &[]).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok(
        "CREATE TABLE app.items (id BIGINT PRIMARY KEY, category TEXT, name TEXT, amount DOUBLE) \
         WITH (TYPE = 'SHARED')",
    )
    .await;
    for chunk in (0..N).collect::<Vec<i64>>().chunks(1_000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                let category = if i % 7 == 0 { "NULL".to_string() } else { format!("'c{}'", i % 4) };
                format!("({i}, {category}, 'name-{i:07}-{}', {}.25)", "x".repeat(40), i % 1000)
            })
            .collect();
        s.sql_ok(&format!("INSERT INTO app.items (id, category, name, amount) VALUES {}", values.join(", "))).await;
    }
    let queries = [
        "SELECT count(*), sum(amount) FROM app.items WHERE category = 'c3' AND amount > 900.0",
        "SELECT id, category FROM app.items WHERE category = 'c1' ORDER BY id LIMIT 5",
        "SELECT count(*) FROM app.items WHERE category IN ('c0', 'c2')",
        "SELECT count(*) FROM app.items WHERE category IS NULL",
        "SELECT count(*) FROM app.items WHERE category <> 'c1'",
        "SELECT count(*) FROM app.items WHERE upper(category) = 'C2'",
        "SELECT count(*) FROM app.items WHERE category LIKE 'c%' AND category > 'c1'",
        "SELECT id, name FROM app.items WHERE name = 'name-0000777-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'",
        "SELECT count(*) FROM app.items WHERE name > 'name-0002500' AND category = 'c0'",
        "SELECT category, count(*) FROM app.items WHERE amount < 100.0 GROUP BY category ORDER BY category",
        "SELECT count(*) FROM app.items WHERE category = 'c1' OR name LIKE '%-0000042-%'",
    ];
    let mut hot = Vec::new();
    for q in queries {
        hot.push(s.sql_ok(q).await["rows"].clone());
    }
    assert_eq!(hot[3], json!([[(N + 6) / 7]]), "the NULL categories");
    assert_eq!(hot[7], json!([[777, "name-0000777-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]]));

    s.sql_ok("FLUSH TABLE app.items").await;
    assert_eq!(parquet_files(&b, dir.path()).len(), 1);
    for (q, want) in queries.iter().zip(&hot) {
        assert_eq!(&s.sql_ok(q).await["rows"], want, "flushed: {q}");
    }
    // The dictionary read shows as the cast of the surviving rows; the plain one has none.
    let plan = s.sql_ok("EXPLAIN SELECT id, category FROM app.items WHERE category = 'c1'").await["rows"].to_string();
    assert!(plan.contains("CAST(category@"), "category is read as a dictionary: {plan}");
    let plan = s.sql_ok("EXPLAIN SELECT id, name FROM app.items WHERE name = 'x'").await["rows"].to_string();
    assert!(!plan.contains("CAST(name@"), "name is read as strings: {plan}");

    // Newer hot versions over flushed rows: the files' versions are superseded, the hot ones
    // answer; the same statements on the hot-only answers give the expected counts.
    s.sql_ok("UPDATE app.items SET category = 'c3' WHERE id = 1").await;
    s.sql_ok("DELETE FROM app.items WHERE id = 3").await;
    let r = s.sql_ok("SELECT count(*) FROM app.items WHERE category = 'c3'").await;
    let c3 = (0..N).filter(|i| i % 7 != 0 && i % 4 == 3).count() as i64;
    assert_eq!(r["rows"], json!([[c3 + 1 - 1]]), "id 1 became c3, id 3 (c3) is gone");
    let r = s.sql_ok("SELECT id FROM app.items WHERE category = 'c3' AND id < 12 ORDER BY id").await;
    assert_eq!(r["rows"], json!([[1], [11]]));
}

/// Pages the keyed read of flushed rows took from its cache (`hit`) or decoded (`read`).
async fn lookup_pages(s: &Server, outcome: &str) -> f64 {
    metric(s, &format!("kalamdb_cold_lookup_pages_total{{outcome=\"{outcome}\"}} ")).await
}
