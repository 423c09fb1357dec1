//! `BEGIN; ...; COMMIT;` batches against a real server: all or nothing, reads see the batch's
//! own writes (hot and flushed rows), ROLLBACK, refusals (cross-group, DDL, unterminated), and
//! concurrent transfers that must conserve a total (issue 18).

mod common;

use common::{Server, post_sql};
use serde_json::json;

fn results(b: &serde_json::Value) -> &Vec<serde_json::Value> {
    b["results"].as_array().expect("results")
}

async fn count(s: &Server, sql: &str) -> i64 {
    s.sql_ok(sql).await["rows"][0][0].as_i64().unwrap_or_else(|| panic!("{sql}: no count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_apply_all_or_nothing_and_see_their_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE bank").await;
    s.sql_ok("CREATE TABLE bank.acct (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, bal BIGINT NOT NULL) WITH (TYPE = 'SHARED')")
        .await;
    s.sql_ok("INSERT INTO bank.acct (id, owner, bal) VALUES (1, 'ann', 100), (2, 'bob', 100)").await;

    // Reads inside the batch see its earlier writes; the batch's rows land together.
    let sql = "BEGIN;
        INSERT INTO bank.acct (id, owner, bal) VALUES (3, 'cy', 0);
        UPDATE bank.acct SET bal = bal - 30 WHERE id = 1;
        UPDATE bank.acct SET bal = bal + 30 WHERE id = 3;
        SELECT id, bal FROM bank.acct ORDER BY id;
        SELECT bal FROM bank.acct WHERE id = 3;
        COMMIT;";
    let (st, b) = s.sql(sql).await;
    assert_eq!(st, 200, "{b}");
    let r = results(&b);
    assert_eq!(r.len(), 7, "{b}");
    assert_eq!(r[4]["rows"], json!([[1, 70], [2, 100], [3, 30]]), "the batch reads its own writes: {b}");
    assert_eq!(r[5]["rows"], json!([[30]]), "a point select inside the batch sees it too: {b}");
    assert_eq!(
        r[6]["message"], "Committed 2 row change(s)",
        "an insert (its later update folded in) and an update: {b}"
    );
    assert_eq!(
        s.sql_ok("SELECT id, bal FROM bank.acct ORDER BY id").await["rows"],
        json!([[1, 70], [2, 100], [3, 30]])
    );

    // A failure anywhere in the batch writes nothing, and says which statement failed.
    let sql = "BEGIN;
        UPDATE bank.acct SET bal = 0 WHERE id = 1;
        INSERT INTO bank.acct (id, owner, bal) VALUES (4, 'dee', 5);
        INSERT INTO bank.acct (id, owner, bal) VALUES (2, 'dup', 5);
        COMMIT;";
    let (st, b) = s.sql(sql).await;
    assert_eq!(st, 400, "{b}");
    assert_eq!(b["error"]["code"], "CONSTRAINT_VIOLATION", "{b}");
    assert!(b["error"]["message"].as_str().unwrap().starts_with("statement 4:"), "{b}");
    assert_eq!(
        s.sql_ok("SELECT id, bal FROM bank.acct ORDER BY id").await["rows"],
        json!([[1, 70], [2, 100], [3, 30]])
    );

    // A syntax error in the batch is found before anything runs.
    let (st, b) = s.sql("BEGIN; DELETE FROM bank.acct; SELEC oops; COMMIT;").await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("INVALID_SQL")), "{b}");
    assert_eq!(count(&s, "SELECT count(*) FROM bank.acct").await, 3);

    // ROLLBACK: the reads still answer, the writes are dropped.
    let (st, b) = s.sql("BEGIN; DELETE FROM bank.acct WHERE id = 2; SELECT count(*) FROM bank.acct; ROLLBACK;").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(results(&b)[2]["rows"], json!([[2]]), "{b}");
    assert_eq!(count(&s, "SELECT count(*) FROM bank.acct").await, 3);

    // Refusals: unterminated, nested, stray COMMIT, DDL inside.
    for (sql, code) in [
        ("BEGIN; DELETE FROM bank.acct", "INVALID_SQL"),
        ("BEGIN; BEGIN; COMMIT", "INVALID_SQL"),
        ("COMMIT", "INVALID_SQL"),
        ("BEGIN; DELETE FROM bank.acct; CREATE NAMESPACE nope; COMMIT", "INVALID_SQL"),
    ] {
        let (st, b) = s.sql(sql).await;
        assert_eq!((st, b["error"]["code"].as_str()), (400, Some(code)), "{sql}: {b}");
    }
    assert_eq!(count(&s, "SELECT count(*) FROM bank.acct").await, 3, "nothing was written");
    let (_, b) = s.sql("SHOW NAMESPACES").await;
    assert!(!b.to_string().contains("nope"), "{b}");

    // Flushed rows: the batch's new version hides the one in Parquet, inside and after.
    s.sql_ok("FLUSH TABLE bank.acct").await;
    let sql = "BEGIN;
        UPDATE bank.acct SET bal = bal + 1 WHERE id = 2;
        DELETE FROM bank.acct WHERE id = 3;
        SELECT id, bal FROM bank.acct ORDER BY id;
        COMMIT;";
    let (st, b) = s.sql(sql).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(results(&b)[3]["rows"], json!([[1, 70], [2, 101]]), "{b}");
    assert_eq!(s.sql_ok("SELECT id, bal FROM bank.acct ORDER BY id").await["rows"], json!([[1, 70], [2, 101]]));
    assert_eq!(s.sql_ok("SELECT bal FROM bank.acct WHERE id = 2").await["rows"], json!([[101]]));

    // A batch that would write two groups (a shared table and a user table) is refused
    // before anything is written, with a code that says why.
    s.sql_ok("CREATE USER TABLE bank.notes (id BIGINT PRIMARY KEY, body TEXT)").await;
    let sql = "BEGIN;
        UPDATE bank.acct SET bal = 0 WHERE id = 1;
        INSERT INTO bank.notes (id, body) VALUES (1, 'x');
        COMMIT;";
    let (st, b) = s.sql(sql).await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("CROSS_GROUP_TRANSACTION")), "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("shared") && message.contains("user"), "the groups are named: {message}");
    assert_eq!(count(&s, "SELECT count(*) FROM bank.notes").await, 0);
    assert_eq!(count(&s, "SELECT bal FROM bank.acct WHERE id = 1").await, 70);
}

/// Concurrent transfers between the rows of one table: each batch reads two balances and
/// moves an amount; conflicting batches run again. The total never changes, and every
/// acknowledged transfer is in the final state exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_conserve_the_total() {
    const ACCOUNTS: i64 = 4;
    const CLIENTS: i64 = 6;
    const TRANSFERS_PER_CLIENT: i64 = 15;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE bank").await;
    s.sql_ok("CREATE TABLE bank.acct (id BIGINT PRIMARY KEY, bal BIGINT NOT NULL, moves BIGINT NOT NULL) WITH (TYPE = 'SHARED')")
        .await;
    let values: Vec<String> = (0..ACCOUNTS).map(|i| format!("({i}, 1000, 0)")).collect();
    s.sql_ok(&format!("INSERT INTO bank.acct (id, bal, moves) VALUES {}", values.join(", "))).await;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let port = s.port;
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            for t in 0..TRANSFERS_PER_CLIENT {
                let (from, to) = ((c + t) % ACCOUNTS, (c + 2 * t + 1) % ACCOUNTS);
                if from == to {
                    continue;
                }
                let sql = format!(
                    "BEGIN;
                     UPDATE bank.acct SET bal = bal - 7, moves = moves + 1 WHERE id = {from};
                     UPDATE bank.acct SET bal = bal + 7, moves = moves + 1 WHERE id = {to};
                     COMMIT;"
                );
                let (st, b) = post_sql(port, &sql).await.expect("request");
                match st {
                    200 => done += 1,
                    409 => assert_eq!(b["error"]["code"], "WRITE_CONFLICT", "{b}"),
                    _ => panic!("transfer failed: {b}"),
                }
            }
            done
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.unwrap();
    }
    assert!(committed > 0, "no transfer committed");
    let r = s.sql_ok("SELECT sum(bal), sum(moves) FROM bank.acct").await;
    assert_eq!(r["rows"], json!([[ACCOUNTS * 1000, 2 * committed]]), "{committed} transfers committed");
}
