//! Disk retention by size on one real server: after a bulk load and a flush, the Raft log is
//! snapshotted and purged by its bytes on disk, the tail's change records are trimmed by
//! theirs, the snapshot holds the Parquet file by a hard link rather than a copy, and a
//! restart from that snapshot loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::{ROOT_BASIC, Server, TailStream};

/// Statements of the load, and rows per statement.
const STATEMENTS: u64 = 120;
const ROWS_PER_STATEMENT: u64 = 50;
/// Bytes of text per row (incompressible, so the on-disk sizes are what the rows weigh).
const ROW_TEXT_BYTES: usize = 1000;
/// Bound on waiting for the background retention (5 s and 2 s ticks, a snapshot build).
const RETENTION_WAIT: Duration = Duration::from_secs(60);

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `id`'s text: hex of a splitmix sequence seeded by the id (rows share no runs, so
/// neither LZ4 nor Parquet shrinks them much), the same for every call.
fn text(id: u64) -> String {
    let mut x = mix(id ^ 0x5EED);
    let mut out = String::with_capacity(ROW_TEXT_BYTES);
    while out.len() < ROW_TEXT_BYTES {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        out.push_str(&format!("{:016x}", mix(x)));
    }
    out.truncate(ROW_TEXT_BYTES);
    out
}

/// The value of the gauge `name{group="<group>"}` in a Prometheus text answer.
fn gauge(metrics: &str, name: &str, group: &str) -> Option<f64> {
    let prefix = format!("{name}{{group=\"{group}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_change_records_are_bounded_by_their_bytes_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let port = common::free_port();
    let env = [
        ("KALAMDB_RAFT_SNAPSHOT_LOGS_SINCE_LAST_BYTES", "2097152"),
        ("KALAMDB_RAFT_LOGS_TO_KEEP_BYTES", "1048576"),
        ("KALAMDB_TAIL_RETENTION_BYTES", "1048576"),
    ];
    let mut s = Server::start_with(&data, port, &env).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.blobs (id BIGINT PRIMARY KEY, body TEXT) WITH (TYPE = 'SHARED')").await;
    for st in 0..STATEMENTS {
        let rows: Vec<String> = (0..ROWS_PER_STATEMENT)
            .map(|r| {
                let id = st * ROWS_PER_STATEMENT + r;
                format!("({id}, '{}')", text(id))
            })
            .collect();
        s.sql_ok(&format!("INSERT INTO app.blobs (id, body) VALUES {}", rows.join(", "))).await;
    }
    // The flush writes the Parquet file and then every memtable out (the sizes the retention
    // reads are those of SST files).
    s.sql_ok("FLUSH TABLE app.blobs").await;

    // The table's group, from the answer to a position the change records no longer hold.
    let deadline = Instant::now() + RETENTION_WAIT;
    let oldest = loop {
        let r = TailStream::open(s.port, "/v1/api/tail?table=app.blobs&from=1", Some(ROOT_BASIC), &[], None).await;
        if r.status == 410 {
            let body = r.json_body().await;
            break body["error"]["details"]["oldest"].as_str().expect("oldest").to_string();
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("leadership changed")).collect();
            panic!(
                "change records never trimmed by bytes (status {}); log:\n{}",
                r.status,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (group, at) = oldest.split_once('@').expect("group@index.offset");
    let trimmed_below: u64 = at.split('.').next().unwrap().parse().unwrap();
    // ~6 MB of rows in 120 entries, 1 MiB kept: most entries' records are gone (by entries,
    // 100,000 would be kept).
    assert!(trimmed_below > STATEMENTS / 2, "records kept from {trimmed_below}");

    // The log: a snapshot once 2 MiB piled up, then purged down to about 1 MiB behind it.
    let (purged, snapshot, last) = loop {
        let (_, m) = s.get("/metrics").await.unwrap();
        let m = m.as_str().unwrap_or_default().to_string();
        let purged = gauge(&m, "kalamdb_raft_purged_index", group).unwrap_or(0.0) as u64;
        let snapshot = gauge(&m, "kalamdb_raft_snapshot_index", group).unwrap_or(0.0) as u64;
        let last = gauge(&m, "kalamdb_raft_last_log_index", group).unwrap_or(0.0) as u64;
        if purged > STATEMENTS / 2 {
            break (purged, snapshot, last);
        }
        assert!(
            Instant::now() < deadline,
            "log of {group} never purged by bytes: purged {purged}, snapshot {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(purged <= snapshot && snapshot <= last, "purged {purged}, snapshot {snapshot}, last {last}");

    // The snapshot holds the Parquet file by a hard link, not by a second copy.
    let linked: Vec<std::path::PathBuf> = std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .collect();
    assert!(!linked.is_empty(), "no linked file beside the snapshot");
    for f in &linked {
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(f).unwrap().nlink() >= 2, "{} is a copy, not a link", f.display());
    }

    // A restart rebuilds the projection from what is left (snapshot and the log after it).
    assert!(s.terminate(Duration::from_secs(30)).await, "server did not stop");
    let s = Server::start_with(&data, port, &env).await;
    let r = s.sql_ok("SELECT COUNT(*) FROM app.blobs").await;
    assert_eq!(common::int(&r["rows"][0][0]), Some((STATEMENTS * ROWS_PER_STATEMENT) as i64), "{r}");
    let last_id = STATEMENTS * ROWS_PER_STATEMENT - 1;
    let r = s.sql_ok(&format!("SELECT body FROM app.blobs WHERE id = {last_id}")).await;
    assert_eq!(r["rows"][0][0].as_str(), Some(text(last_id).as_str()), "{r}");
}
