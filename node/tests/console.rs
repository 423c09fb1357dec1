//! The web console (`/ui`) in a real headless browser (Debian's chromium): log in, create a
//! table, follow it live, insert through the SQL box and see the row arrive in the live view
//! opened before the insert, see a coded error for bad SQL, browse tables and the cluster
//! panel. A screenshot is kept as a test artifact (`$KALAMDB_ARTIFACTS_DIR`, else the target
//! directory's `artifacts/`).

mod common;

use std::time::Duration;

use common::Server;
use common::browser::Browser;

const WAIT: Duration = Duration::from_secs(20);

/// Where test artifacts go.
fn artifacts_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("KALAMDB_ARTIFACTS_DIR") {
        return d.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::path::Path::new(&target).join("artifacts")
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn run_sql(b: &mut Browser, sql: &str) {
    b.eval(&format!("document.getElementById('sql').value = {}; document.getElementById('run').click();", js(sql)))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_logs_in_runs_sql_and_follows_a_table_live() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE USER 'admin' WITH PASSWORD 'console-pass-123' ROLE dba").await;
    let mut b = Browser::launch(1280, 900).await;
    let base = format!("http://127.0.0.1:{}", s.port);
    b.goto(&format!("{base}/ui")).await;

    // A wrong password shows the server's code; the right one opens the console.
    b.eval("document.getElementById('login-user').value = 'admin'; document.getElementById('login-password').value = 'nope'; document.getElementById('login-form').requestSubmit();").await;
    b.wait_for("!document.getElementById('login-error').hidden", WAIT).await;
    let err = b.eval("document.getElementById('login-error').textContent").await;
    assert!(err.as_str().unwrap().contains("INVALID_CREDENTIALS"), "{err}");
    b.eval("document.getElementById('login-password').value = 'console-pass-123'; document.getElementById('login-form').requestSubmit();").await;
    b.wait_for("!document.getElementById('app-view').hidden", WAIT).await;
    // Shown and hidden as the user sees it (styles included), not only as attributes say.
    let shown = |id: &str| format!("getComputedStyle(document.getElementById('{id}')).display !== 'none'");
    assert_eq!(b.eval(&shown("login-view")).await, false, "the login form is gone after login");
    assert_eq!(b.eval(&shown("app-view")).await, true);
    assert_eq!(b.eval("document.getElementById('who-role').textContent").await, "dba");

    // DDL through the SQL box; the table list picks the table up.
    run_sql(&mut b, "CREATE NAMESPACE shop; CREATE TABLE shop.orders (id BIGINT PRIMARY KEY, item TEXT, qty INT) WITH (TYPE = 'SHARED')").await;
    b.wait_for("document.getElementById('results').textContent.includes('created')", WAIT).await;
    b.wait_for("[...document.querySelectorAll('#table-list li')].some(li => li.dataset.table === 'shop.orders')", WAIT)
        .await;

    // Follow the table before anything is in it, then insert through the console.
    b.eval(
        "document.getElementById('live-table').value = 'shop.orders'; document.getElementById('live-follow').click();",
    )
    .await;
    b.wait_for("document.getElementById('live-status').textContent.includes('live')", WAIT).await;
    run_sql(&mut b, "INSERT INTO shop.orders (id, item, qty) VALUES (1, 'teapot', 2), (2, 'kettle', 1)").await;
    b.wait_for("document.getElementById('live-rows').textContent.includes('teapot')", WAIT).await;
    b.wait_for("document.querySelectorAll('#live-rows tr.fresh').length === 2", WAIT).await;
    // A write from elsewhere arrives too, and an update replaces the row in place.
    s.sql_ok("UPDATE shop.orders SET qty = 5 WHERE id = 2").await;
    b.wait_for("[...document.querySelectorAll('#live-rows tbody tr')].some(tr => tr.textContent.includes('kettle') && tr.textContent.includes('5'))", WAIT).await;
    assert_eq!(b.eval("document.querySelectorAll('#live-rows tbody tr').length").await, 2);

    // A query's rows as a table.
    run_sql(&mut b, "SELECT id, item, qty FROM shop.orders ORDER BY id").await;
    b.wait_for("document.querySelectorAll('#results tbody tr').length === 2", WAIT).await;
    let first = b.eval("document.querySelector('#results tbody tr').textContent").await;
    assert!(first.as_str().unwrap().contains("teapot"), "{first}");
    // Typed cells come as numbers (KalamDB's encoding) and are shown as dates.
    run_sql(&mut b, "SELECT CAST('2024-01-02T03:04:05Z' AS TIMESTAMP) AS at, CAST('2024-01-02' AS DATE) AS day").await;
    b.wait_for("document.querySelector('#results tbody tr')?.textContent.includes('2024-01-02T03:04:05.000Z')", WAIT)
        .await;
    let typed = b.eval("document.querySelector('#results tbody tr').textContent").await;
    assert!(typed.as_str().unwrap().ends_with("2024-01-02"), "the date is shown as one: {typed}");

    // Bad SQL: the error with its code.
    run_sql(&mut b, "SELEC * FROM shop.orders").await;
    b.wait_for("!document.getElementById('sql-error').hidden", WAIT).await;
    let code = b.eval("document.querySelector('#sql-error .code').textContent").await;
    assert_eq!(code, "INVALID_SQL");

    // Hostile data is shown as text, never run as markup.
    s.sql_ok("INSERT INTO shop.orders (id, item, qty) VALUES (3, '<img src=x onerror=\"window.pwned=1\">', 1)").await;
    b.wait_for("document.getElementById('live-rows').textContent.includes('<img')", WAIT).await;
    assert_eq!(b.eval("window.pwned === undefined").await, true);

    // The cluster panel lists the groups with their leaders.
    b.wait_for("document.querySelectorAll('#cluster tbody tr').length >= 3", WAIT).await;
    let groups = b.eval("document.getElementById('cluster').textContent").await;
    assert!(groups.as_str().unwrap().contains("meta:catalog"), "{groups}");

    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let out = artifacts_dir();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("console.png"), &png).unwrap();
    eprintln!("screenshot: {}", out.join("console.png").display());

    // Logging out revokes the session: the console is back at the login form, and the token
    // it held no longer works.
    let token = b.eval("sessionStorage.getItem('kalamdb.access')").await.as_str().unwrap().to_string();
    b.eval("document.getElementById('logout').click();").await;
    b.wait_for("!document.getElementById('login-view').hidden", WAIT).await;
    assert_eq!(b.eval(&shown("app-view")).await, false, "the console is gone after logout");
    let (st, body) = s.sql_as(Some(&format!("Bearer {token}")), "SELECT 1").await;
    assert_eq!((st, body["error"]["code"].as_str()), (401, Some("TOKEN_REVOKED")), "{body}");
}
