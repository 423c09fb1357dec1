//! Backup and restore (issue 19): `BACKUP DATABASE TO '<folder>'` while a writer runs, a second
//! backup that copies no file twice, `kalamdb-server restore` into a fresh 3-node cluster whose
//! digests equal the backup's and which takes writes; a damaged or truncated backup is refused
//! before anything is written, and so is a restore over a node that already has data; the same
//! with backups in a bucket of a real S3 server (moto on loopback).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Server;
use common::cluster::Cluster;
use common::s3::S3Server;

/// How long a backup job may take here.
const JOB_WAIT: Duration = Duration::from_secs(60);
/// Rows written before the backups, half of them flushed to Parquet.
const BASE_ROWS: u64 = 200;

/// Run `BACKUP DATABASE` on `node`, wait for its job to finish, and return (job id, files
/// copied, message).
async fn backup(node: &Server, dest: &Path) -> (String, u64, String) {
    backup_to(node, &dest.display().to_string()).await
}

async fn backup_to(node: &Server, dest: &str) -> (String, u64, String) {
    let r = node.sql_ok(&format!("BACKUP DATABASE TO '{dest}'")).await;
    let job_id = r["rows"][0][0].as_str().expect("job id").to_string();
    let deadline = Instant::now() + JOB_WAIT;
    loop {
        let j = node.sql_ok(&format!("SELECT status, files, message FROM system.jobs WHERE job_id = '{job_id}'")).await;
        let row = &j["rows"][0];
        match row[0].as_str() {
            Some("completed") => {
                return (job_id, row[1].as_u64().unwrap_or_default(), row[2].as_str().unwrap_or_default().into());
            }
            Some("running") => {}
            other => panic!("backup job {job_id} ended {other:?}: {row}"),
        }
        assert!(Instant::now() < deadline, "backup job {job_id} still running after {JOB_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kalamdb-server restore`; returns (success, stdout + stderr).
fn restore(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kalamdb-server"))
        .arg("restore")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run kalamdb-server restore");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Group name → state SHA-256 (the group's digest at the backup's index), from a manifest.
fn manifest_digests(dest: &Path, job_id: &str) -> BTreeMap<String, String> {
    let text = std::fs::read(dest.join("backups").join(job_id).join("manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_slice(&text).expect("manifest json");
    m["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (g["group"].as_str().unwrap().to_string(), g["state"]["sha256"].as_str().unwrap().to_string()))
        .collect()
}

async fn ids(node: &Server) -> BTreeSet<u64> {
    let r = node.sql_ok("SELECT id FROM app.t").await;
    r["rows"].as_array().expect("rows").iter().map(|row| row[0].as_u64().expect("id")).collect()
}

async fn seed(node: &Server) {
    node.sql_ok("CREATE NAMESPACE app").await;
    node.sql_ok("CREATE SHARED TABLE app.t (id BIGINT PRIMARY KEY, v BIGINT)").await;
    for chunk in 0..BASE_ROWS / 50 {
        let values: Vec<String> = (chunk * 50..(chunk + 1) * 50).map(|i| format!("({i}, {})", i * 10)).collect();
        node.sql_ok(&format!("INSERT INTO app.t (id, v) VALUES {}", values.join(", "))).await;
        if chunk == BASE_ROWS / 100 {
            node.sql_ok("FLUSH TABLE app.t").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_writes_restores_into_a_fresh_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backups");
    let source = Cluster::start(&dir.path().join("a"), &[]).await;
    seed(source.node(1)).await;

    // A writer on node 1 while node 2 takes the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (stop, acked, port) = (stop.clone(), acked.clone(), source.node(1).port);
        tokio::spawn(async move {
            let mut id = 100_000u64;
            while !stop.load(Ordering::Relaxed) && id < 100_000 + 5_000 {
                if let Ok((200, _)) =
                    common::post_sql(port, &format!("INSERT INTO app.t (id, v) VALUES ({id}, 1)")).await
                {
                    acked.lock().unwrap().push(id);
                }
                id += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked_before: Vec<u64> = acked.lock().unwrap().clone();
    let (first, copied, message) = backup(source.node(2), &dest).await;
    assert!(copied > 0, "the first backup copies the flushed files: {message}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked_all: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked_all.len() > acked_before.len(), "the writer kept writing during the backup");

    // No new flush since: the second backup finds every file already there.
    let (second, copied_again, message) = backup(source.node(3), &dest).await;
    assert_ne!(first, second);
    assert_eq!(copied_again, 0, "{message}");
    let expected = manifest_digests(&dest, &first);
    assert_eq!(expected.len(), 3 + 4 + 1, "every group is in the manifest");
    drop(source);

    // A fresh cluster on other ports and folders, each node restored from the first backup; its
    // nodes share one storage root, so the second and third restore find the files in place.
    let shared = dir.path().join("b-shared-storage").display().to_string();
    let shared_env = [("KALAMDB_STORAGE_STORAGE_PATH", shared.as_str())];
    let mut restored = Cluster::configure(&dir.path().join("b"), &shared_env);
    for i in 1..=3 {
        let cfg = restored.config_path(i);
        let args = ["--from", dest.to_str().unwrap(), "--backup", &first, "--config", cfg.to_str().unwrap()];
        let (ok, out) = restore(&args, &shared_env);
        assert!(ok, "restore of node {i} failed: {out}");
        assert!(out.contains(&format!("restored backup {first}")), "{out}");
    }
    restored.start_configured().await;
    let digests = restored.assert_converged().await;
    assert_eq!(digests, expected, "the restored cluster's digests equal the backup's");

    let got = ids(restored.node(2)).await;
    for i in 0..BASE_ROWS {
        assert!(got.contains(&i), "row {i} written before the backup is restored");
    }
    for id in &acked_before {
        assert!(got.contains(id), "row {id}, acknowledged before BACKUP was sent, is restored");
    }
    assert!(got.iter().all(|id| *id < BASE_ROWS || acked_all.contains(id)), "no row that was never acknowledged");
    eprintln!(
        "restored {} rows: {} acknowledged before BACKUP, {} by the end; first backup copied {copied} file(s)",
        got.len(),
        acked_before.len(),
        acked_all.len()
    );

    // Writes go on, flushed rows included.
    restored.node(3).sql_ok("INSERT INTO app.t (id, v) VALUES (900000, 9)").await;
    restored.node(1).sql_ok("UPDATE app.t SET v = 11 WHERE id = 1").await;
    restored.node(1).sql_ok("FLUSH TABLE app.t").await;
    let r = restored.node(2).sql_ok("SELECT v FROM app.t WHERE id IN (1, 900000) ORDER BY id").await;
    assert_eq!(r["rows"], serde_json::json!([[11], [9]]));
    restored.assert_converged().await;
}

/// Copy a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn find(dir: &Path, ext: &str) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                return p;
            }
        }
    }
    panic!("no .{ext} file under {}", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_backups_and_used_nodes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("bk");
    let node = Server::start(&dir.path().join("n1")).await;
    seed(&node).await;

    // Who may back up, and where to.
    node.sql_ok("CREATE USER 'ann' WITH PASSWORD 'secret-pass-1' ROLE user").await;
    let ann = node.login("ann", "secret-pass-1").await;
    let (status, r) = node.sql_as(Some(&ann), &format!("BACKUP DATABASE TO '{}'", dest.display())).await;
    assert_eq!((status, r["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{r}");
    let (status, r) = node.sql("BACKUP DATABASE TO 'relative/folder'").await;
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "{r}");
    let (status, r) = node.sql(&format!("BACKUP DATABASE TO '{}'", node.data.display())).await;
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "a folder with other files: {r}");
    let (status, r) = node.sql("BACKUP DATABASE TO 'gs://bucket/prefix'").await;
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "{r}");

    let (job, _, _) = backup(&node, &dest).await;
    let before = ids(&node).await;
    assert_eq!(before.len() as u64, BASE_ROWS);
    let port = common::free_port();
    let env_for = |data: &Path| -> Vec<(String, String)> {
        vec![
            ("KALAMDB_STORAGE_DATA_PATH".into(), data.display().to_string()),
            ("KALAMDB_SHARDING_USER_SHARDS".into(), "4".into()),
            ("KALAMDB_SERVER_PORT".into(), port.to_string()),
        ]
    };
    let run = |from: &Path, data: &Path| {
        let env = env_for(data);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        restore(&["--from", from.to_str().unwrap()], &env)
    };

    // A node that has run refuses: restore never merges into a live database.
    let (ok, out) = run(&dest, &node.data);
    assert!(!ok && out.contains("already holds a database"), "{out}");

    // One flipped byte in a group's state.
    let flipped = dir.path().join("flipped");
    copy_tree(&dest, &flipped);
    let state = find(&flipped, "state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&state, bytes).unwrap();
    let fresh = dir.path().join("fresh-1");
    let (ok, out) = run(&flipped, &fresh);
    assert!(!ok && out.contains("damaged") && out.contains("SHA-256"), "{out}");
    assert!(!fresh.join("rocksdb").exists(), "nothing is written from a damaged backup");

    // A truncated Parquet file.
    let truncated = dir.path().join("truncated");
    copy_tree(&dest, &truncated);
    let parquet = find(&truncated.join("files"), "parquet");
    let len = std::fs::metadata(&parquet).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&parquet).unwrap().set_len(len / 2).unwrap();
    let fresh = dir.path().join("fresh-2");
    let (ok, out) = run(&truncated, &fresh);
    assert!(!ok && out.contains("damaged") && out.contains("bytes"), "{out}");
    assert!(!fresh.join("rocksdb").exists());

    // A folder that holds no backup.
    let (ok, out) = run(&dir.path().join("nothing-here"), &dir.path().join("fresh-3"));
    assert!(!ok && out.contains("not a backup folder"), "{out}");

    // The intact backup restores, and the node serves the same rows and takes writes.
    drop(node);
    let fresh = dir.path().join("fresh-4");
    let (ok, out) = run(&dest, &fresh);
    assert!(ok && out.contains(&job), "{out}");
    let node = Server::start_on(&fresh, port).await;
    assert_eq!(ids(&node).await, before);
    node.sql_ok("INSERT INTO app.t (id, v) VALUES (5000, 1)").await;
    assert_eq!(ids(&node).await.len() as u64, BASE_ROWS + 1);
}

/// Restore one node of a new cluster and start the other two empty: the restored node leads,
/// builds a snapshot of the restored state at startup and the empty ones install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_restored_node_seeds_empty_members() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backups");
    let source = Cluster::start(&dir.path().join("a"), &[]).await;
    seed(source.node(1)).await;
    let (job, _, _) = backup(source.node(1), &dest).await;
    let expected = manifest_digests(&dest, &job);
    let rows = ids(source.node(1)).await;
    drop(source);

    let mut restored = Cluster::configure(&dir.path().join("b"), &[]);
    let cfg = restored.config_path(1);
    let (ok, out) = restore(&["--from", dest.to_str().unwrap(), "--config", cfg.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    restored.start_configured().await;
    assert_eq!(restored.assert_converged().await, expected, "the empty members took the restored state");
    for i in 1..=3 {
        assert_eq!(ids(restored.node(i)).await, rows, "node {i}");
    }
    restored.node(2).sql_ok("INSERT INTO app.t (id, v) VALUES (777777, 1)").await;
    assert_eq!(ids(restored.node(3)).await.len(), rows.len() + 1);
}

/// Backups to a bucket (`s3://`), of a node whose own files live in a bucket: the layout is the
/// folder's, a second backup uploads no Parquet file twice, `restore --from s3://...` rebuilds
/// a fresh node (downloading and checking every file), and a damaged object is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_a_bucket_restore_a_fresh_node() {
    let s3 = S3Server::start().await;
    s3.create_bucket("data").await;
    s3.create_bucket("bkp").await;
    let dir = tempfile::tempdir().unwrap();
    let env_of = |prefix: &str, data: &Path, port: u16| -> Vec<(String, String)> {
        let mut env = s3.env("data", prefix);
        env.push(("KALAMDB_STORAGE_DATA_PATH".into(), data.display().to_string()));
        env.push(("KALAMDB_SHARDING_USER_SHARDS".into(), "4".into()));
        env.push(("KALAMDB_SERVER_PORT".into(), port.to_string()));
        env
    };
    let port = common::free_port();
    let env = env_of("a", &dir.path().join("a"), port);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Server::start_with(&dir.path().join("a"), port, &env_refs).await;
    seed(&node).await;

    // Another prefix's objects are not a backup: refused, nothing written.
    let (status, r) = node.sql("BACKUP DATABASE TO 's3://data/a'").await;
    assert_eq!((status, r["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "{r}");

    let (job, copied, message) = backup_to(&node, "s3://bkp/nightly").await;
    assert!(copied > 0, "{message}");
    let keys: Vec<String> = s3.list("bkp", "nightly").await.into_iter().map(|(k, _)| k).collect();
    assert!(keys.contains(&"nightly/LATEST".to_string()), "{keys:?}");
    assert!(keys.contains(&format!("nightly/backups/{job}/manifest.json")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with(".state")), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("nightly/files/") && k.ends_with(".parquet")), "{keys:?}");
    node.sql_ok("INSERT INTO app.t (id, v) VALUES (9000, 1)").await;
    let (job2, copied2, message2) = backup_to(&node, "s3://bkp/nightly").await;
    assert_eq!(copied2, 0, "the second backup uploads no Parquet file twice: {message2}");
    let rows = ids(&node).await;
    drop(node);

    let run = |env: Vec<(String, String)>, backup: Option<&str>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut args = vec!["--from", "s3://bkp/nightly"];
        if let Some(b) = backup {
            args.extend(["--backup", b]);
        }
        restore(&args, &env)
    };
    // Restored into a fresh node whose files go to another prefix of the data bucket.
    let fresh = dir.path().join("b");
    let (ok, out) = run(env_of("b", &fresh, port), None);
    assert!(ok && out.contains(&job2), "{out}");
    assert!(!fresh.join("restore-staging").exists(), "the staging folder is removed");
    let env = env_of("b", &fresh, port);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = Server::start_with(&fresh, port, &env_refs).await;
    assert_eq!(ids(&node).await, rows);
    node.sql_ok("INSERT INTO app.t (id, v) VALUES (9001, 1)").await;
    node.sql_ok("FLUSH TABLE app.t").await;
    assert_eq!(ids(&node).await.len(), rows.len() + 1);
    drop(node);

    // The first backup, by id; then one damaged object (same size, other bytes) is refused.
    let (ok, out) = run(env_of("c", &dir.path().join("c"), port), Some(&job));
    assert!(ok && out.contains(&job), "{out}");
    let state = s3
        .list("bkp", &format!("nightly/backups/{job2}"))
        .await
        .into_iter()
        .find(|(k, _)| k.ends_with(".state"))
        .unwrap();
    s3.put("bkp", &state.0, vec![b'x'; state.1 as usize]).await;
    let fresh = dir.path().join("d");
    let (ok, out) = run(env_of("d", &fresh, port), None);
    assert!(!ok && out.contains("does not match its record"), "{out}");
    assert!(!fresh.join("rocksdb").exists(), "nothing is written from a damaged backup");
}
