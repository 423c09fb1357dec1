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

/// `kalam-cli` is the binary of another package (`node/cli`): one workspace build puts it next
/// to the server, which is where it is looked for.
fn cli_bin() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kalamdb-server")).with_file_name("kalam-cli");
    assert!(bin.exists(), "{} is missing: build the whole workspace first (scripts/test.sh does)", bin.display());
    bin
}

fn cli(port: u16, args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(cli_bin());
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
        assert_eq!(v["rows"][0], serde_json::json!(["1", "a"]), "JSON output is the API's answer: BIGINT as a string");
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

/// A program under util-linux `script(1)`, so that it runs in a real pseudo-terminal, driven
/// like `expect`: each keystroke is sent only once the output shows the shell is ready for it.
/// Fixed sleeps raced on a loaded CI machine.
struct Terminal {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// How far `expect` has consumed the output.
    seen_bytes: usize,
}

/// How long one expected output may take.
const TERMINAL_EXPECT_MS_MAX: u64 = 30_000;

impl Terminal {
    fn spawn(cmd: &str, history: &std::path::Path) -> Terminal {
        let mut child = Command::new("script")
            .args(["-qec", cmd, "/dev/null"])
            .env("KALAM_HISTORY", history)
            // The same shell whatever the caller's SHELL is: CI's and a developer's differ.
            .env("SHELL", "/bin/sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script(1) from util-linux");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = output.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut stdout, &mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        Terminal { child, stdin, output, reader: Some(reader), seen_bytes: 0 }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).replace('\r', "")
    }

    /// Wait until `marker` appears after what earlier calls consumed.
    fn expect(&mut self, marker: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(TERMINAL_EXPECT_MS_MAX);
        loop {
            {
                let out = self.output.lock().unwrap();
                let tail = String::from_utf8_lossy(&out[self.seen_bytes.min(out.len())..]).into_owned();
                if let Some(at) = tail.find(marker) {
                    // Byte offsets of the lossy text equal the raw ones for the ASCII we expect.
                    self.seen_bytes += at + marker.len();
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {marker:?} within {TERMINAL_EXPECT_MS_MAX} ms: {}",
                self.text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn send(&mut self, keys: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the program to exit; returns its status and the whole output.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(TERMINAL_EXPECT_MS_MAX);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "the shell did not exit: {}", self.text());
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        drop(self.stdin.take());
        self.reader.take().unwrap().join().unwrap();
        (status, self.text())
    }
}

/// The interactive shell in a real pseudo-terminal: a statement over two lines, Ctrl-C dropping
/// a half-typed statement, `\format`, `\tail` until Ctrl-C, Ctrl-D, and the history file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_shell_in_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE TABLE app.t (id BIGINT PRIMARY KEY) WITH (TYPE = 'SHARED')").await;
    let history = dir.path().join("history");
    // `exec`: script(1) runs the command through `$SHELL -c`, and dash (Debian's /bin/sh, used
    // when SHELL is unset, as under CI) stays as the parent in the terminal's foreground process
    // group. Ctrl-C then killed that shell and script exited 130 while the shell itself, which
    // catches SIGINT, was still running.
    let cmd = format!("exec {} -u http://127.0.0.1:{}", cli_bin().display(), s.port);
    let hist = history.clone();
    let port = s.port;
    let (status, text) = tokio::task::spawn_blocking(move || {
        let mut t = Terminal::spawn(&cmd, &hist);
        t.expect("kalam> ");
        t.send("INSERT INTO app.t (id)\n");
        t.expect("   -> ");
        t.send("  VALUES (1);\n");
        t.expect("Inserted 1 row(s)");
        t.expect("kalam> ");
        // Ctrl-C drops a statement that is still being typed.
        t.send("INSERT INTO app.t (id) VALUES (99)\n");
        t.expect("   -> ");
        t.send("\u{3}");
        t.expect("kalam> ");
        t.send("\\format csv\n");
        t.expect("Output format is csv.");
        t.expect("kalam> ");
        t.send("SELECT COUNT(*) AS n FROM app.t;\n");
        t.expect("Took: ");
        t.expect("kalam> ");
        t.send("\\tail app.t\n");
        t.expect("Following app.t (Ctrl-C to stop)");
        // While \tail follows the table, another client writes to it.
        let w = cli(port, &["-c", "INSERT INTO app.t (id) VALUES (5)"], None);
        assert_eq!(w.code, 0, "{}", w.stderr);
        t.expect("insert app.t {\"id\":\"5\"}");
        t.send("\u{3}");
        t.expect("kalam> ");
        t.send("\u{4}");
        t.finish()
    })
    .await
    .unwrap();
    assert!(status.success(), "exit {status:?}: {text}");
    assert!(text.contains("n\n1\n"), "the Ctrl-C'd INSERT did not run: {text}");
    let h = std::fs::read_to_string(&history).expect("history file");
    assert!(h.contains("SELECT COUNT(*) AS n FROM app.t;"), "{h}");
}
