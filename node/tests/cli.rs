//! `kalam-cli` driven as a real binary against a real server: `-c`, `-f`, piped input, output
//! formats, meta-commands, CSV import, and the error exit codes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Server;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(port: u16, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kalam-cli"));
    cmd.arg("-u").arg(format!("http://127.0.0.1:{port}")).args(args);
    cmd.env_remove("KALAM_USER").env_remove("KALAM_PASSWORD").env_remove("KALAM_TOKEN");
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn kalam-cli");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().expect("kalam-cli output");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_files_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    let port = s.port;
    let r = tokio::task::spawn_blocking(move || {
        let setup = cli(
            port,
            &[
                "-c",
                "CREATE NAMESPACE app; CREATE TABLE app.t (id BIGINT PRIMARY KEY, name TEXT) WITH (TYPE = 'SHARED');",
            ],
            None,
        );
        assert_eq!(setup.code, 0, "{}{}", setup.stdout, setup.stderr);
        assert!(setup.stdout.contains("Table 'app.t' created"), "{}", setup.stdout);

        // -f: multi-line statements, meta-commands, comments.
        let sql = dir.path().join("load.sql");
        std::fs::write(&sql, "-- two rows\nINSERT INTO app.t (id, name)\n  VALUES (1, 'a'),\n         (2, NULL);\n\\dt app\nSELECT * FROM app.t ORDER BY id;\n").unwrap();
        let f = cli(port, &["-f", sql.to_str().unwrap()], None);
        assert_eq!(f.code, 0, "{}{}", f.stdout, f.stderr);
        assert!(f.stdout.contains("Inserted 2 row(s)"), "{}", f.stdout);
        assert!(f.stdout.contains("| t "), "\\dt lists the table: {}", f.stdout);
        assert!(f.stdout.contains("| 2  | NULL |"), "bordered table: {}", f.stdout);
        assert!(f.stdout.contains("(2 rows)") && f.stdout.contains("Took: "), "{}", f.stdout);

        let j = cli(port, &["--format", "json", "-c", "SELECT id, name FROM app.t ORDER BY id"], None);
        assert_eq!(j.code, 0, "{}", j.stderr);
        let v: serde_json::Value = serde_json::from_str(&j.stdout).expect("JSON output");
        assert_eq!(v["rows"][0], serde_json::json!([1, "a"]));
        let c = cli(port, &["--format", "csv", "--no-timing", "-c", "SELECT id, name FROM app.t ORDER BY id"], None);
        assert_eq!(c.stdout.trim(), "id,name\n1,a\n2,");

        // \d, \dn, \health, \cluster.
        let d = cli(port, &["-c", "\\d app.t"], None);
        assert!(d.stdout.contains("column_name") && d.stdout.contains("| name "), "{}", d.stdout);
        let n = cli(port, &["-c", "\\dn"], None);
        assert!(n.stdout.contains("app"), "{}", n.stdout);
        let h = cli(port, &["-c", "\\health"], None);
        assert!(h.code == 0 && h.stdout.contains("healthy"), "{}{}", h.stdout, h.stderr);
        let cl = cli(port, &["-c", "\\cluster"], None);
        assert!(
            cl.code == 0 && cl.stdout.contains("shared:0") && cl.stdout.contains("meta:catalog"),
            "{}{}",
            cl.stdout,
            cl.stderr
        );

        // Errors: the server's code, non-zero exit, nothing on stdout.
        let e = cli(port, &["-c", "SELEC nope"], None);
        assert_eq!(e.code, 1);
        assert!(e.stderr.starts_with("ERROR INVALID_SQL: "), "{}", e.stderr);
        let e = cli(port, &["-c", "SELECT * FROM app.missing"], None);
        assert_eq!(e.code, 1);
        assert!(e.stderr.contains("ERROR TABLE_NOT_FOUND") || e.stderr.contains("ERROR INVALID_SQL"), "{}", e.stderr);
        let e = cli(port, &["-c", "\\frobnicate"], None);
        assert!(e.code == 1 && e.stderr.contains("ERROR INVALID_COMMAND"), "{}", e.stderr);
        // -f stops at the first error.
        std::fs::write(&sql, "INSERT INTO app.t (id) VALUES (1);\nINSERT INTO app.t (id, name) VALUES (3, 'c');\n")
            .unwrap();
        let f = cli(port, &["-f", sql.to_str().unwrap()], None);
        assert_eq!(f.code, 1, "{}", f.stderr);
        let count = cli(port, &["--format", "csv", "--no-timing", "-c", "SELECT COUNT(*) AS n FROM app.t"], None);
        assert_eq!(count.stdout.trim(), "n\n2", "the statement after the error did not run");

        // Piped stdin is a script; \q stops it.
        let p = cli(port, &[], Some("SELECT 40 + 2 AS answer;\n\\q\nSELECT 1/0;\n"));
        assert_eq!(p.code, 0, "{}", p.stderr);
        assert!(p.stdout.contains("| 42 "), "{}", p.stdout);

        // A server that is not there.
        let gone = cli(common::free_port(), &["-c", "SELECT 1"], None);
        assert_ne!(gone.code, 0);
        assert!(gone.stderr.contains("ERROR CONNECTION"), "{}", gone.stderr);
    });
    r.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE USER 'carol' WITH PASSWORD 'carol-password-1' ROLE user").await;
    let token = s.login("carol", "carol-password-1").await;
    let token = token.trim_start_matches("Bearer ").to_string();
    let port = s.port;
    tokio::task::spawn_blocking(move || {
        let ok = cli(port, &["--user", "carol", "--password", "carol-password-1", "-c", "SELECT 1 AS one"], None);
        assert_eq!(ok.code, 0, "{}", ok.stderr);
        let bad = cli(port, &["--user", "carol", "--password", "wrong", "-c", "SELECT 1"], None);
        assert_eq!(bad.code, 2, "a refused login is fatal: {}", bad.stderr);
        assert!(bad.stderr.contains("ERROR INVALID_CREDENTIALS") || bad.stderr.contains("ERROR "), "{}", bad.stderr);
        let t = cli(port, &["--token", &token, "-c", "CREATE NAMESPACE x"], None);
        assert_eq!(t.code, 1, "a user-role token may not run DDL");
        assert!(t.stderr.contains("ERROR PERMISSION_DENIED"), "{}", t.stderr);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_loads_a_csv_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok(
        "CREATE TABLE app.people (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE, ok BOOLEAN) WITH (TYPE = 'SHARED')",
    )
    .await;
    let csv = dir.path().join("people.csv");
    let mut text = String::from("id,name,score,ok\n");
    for i in 0..2500 {
        text.push_str(&format!("{i},\"person, {i}\",{}.5,{}\n", i % 100, i % 2 == 0));
    }
    text.push_str("2500,,,\n");
    std::fs::write(&csv, text).unwrap();
    let port = s.port;
    let path = csv.clone();
    let r = tokio::task::spawn_blocking(move || {
        cli(port, &["import", "app.people", path.to_str().unwrap(), "--batch-rows", "700"], None)
    })
    .await
    .unwrap();
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Imported 2501 rows into app.people"), "{}", r.stdout);
    let n = s.sql_ok("SELECT COUNT(*), SUM(score), COUNT(name) FROM app.people").await;
    assert_eq!(n["rows"][0][0], 2501);
    assert_eq!(n["rows"][0][2], 2500, "an empty field is NULL");
    let one = s.sql_ok("SELECT name, ok FROM app.people WHERE id = 7").await;
    assert_eq!(one["rows"][0], serde_json::json!(["person, 7", false]));
    // A bad row stops the import with its line and the server's error.
    std::fs::write(&csv, "id,name,score,ok\n9000,x,1.0,true\nnot-a-number,y,2.0,false\n").unwrap();
    let path = csv.clone();
    let r = tokio::task::spawn_blocking(move || {
        cli(port, &["import", "app.people", path.to_str().unwrap(), "--batch-rows", "1"], None)
    })
    .await
    .unwrap();
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.starts_with("ERROR ") && r.stderr.contains("after 1 rows"), "{}", r.stderr);
}

/// The interactive shell in a real pseudo-terminal (util-linux `script`): a statement over two
/// lines, Ctrl-C dropping a half-typed statement, `\format`, `\tail` until Ctrl-C, Ctrl-D,
/// and the history file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_shell_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED')").await;
    let history = dir.path().join("history");
    let cmd = format!("{} -u http://127.0.0.1:{}", env!("CARGO_BIN_EXE_kalam-cli"), s.port);
    let hist = history.clone();
    let port = s.port;
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("KALAM_HISTORY", &hist)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        let mut stdin = child.stdin.take().unwrap();
        // Keystrokes, with pauses so that each line reaches the prompt it is meant for.
        for keys in [
            "INSERT INTO app.t (id)\n",
            "  VALUES (1);\n",
            "INSERT INTO app.t (id) VALUES (99)\n",
            "\u{3}",
            "\\format csv\n",
            "SELECT COUNT(*) AS n FROM app.t;\n",
            "\\tail app.t\n",
            "",
            "\u{3}",
            "\u{4}",
        ] {
            std::thread::sleep(std::time::Duration::from_millis(400));
            if keys.is_empty() {
                // While \tail follows the table, another client writes to it.
                let w = cli(port, &["-c", "INSERT INTO app.t (id) VALUES (5)"], None);
                assert_eq!(w.code, 0, "{}", w.stderr);
                std::thread::sleep(std::time::Duration::from_millis(400));
                continue;
            }
            stdin.write_all(keys.as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        drop(stdin);
        child.wait_with_output().expect("script output")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "exit {:?}: {text}", out.status);
    assert!(text.contains("Inserted 1 row(s)"), "{text}");
    assert!(text.contains("Output format is csv."), "{text}");
    assert!(text.contains("n\n1\n"), "the Ctrl-C'd INSERT did not run: {text}");
    assert!(text.contains("insert app.t {\"id\":5}"), "\\tail printed the change: {text}");
    let h = std::fs::read_to_string(&history).expect("history file");
    assert!(h.contains("SELECT COUNT(*) AS n FROM app.t;"), "{h}");
}
