//! Identity and access through the real server: logins and tokens, the role × table type ×
//! statement matrix, row isolation between users (joins, subqueries, system tables, time
//! travel, EXECUTE AS), login rate limiting, and secrets never appearing in logs or answers.

mod common;

use common::Server;
use serde_json::json;

/// The access rules, written down independently of the implementation: may `role` run a
/// statement of `kind` on a table of `table`?
fn expected(role: &str, table: &str, kind: &str) -> bool {
    let privileged = role != "user";
    match (table, kind) {
        ("ut" | "st", _) => true,
        ("pub", "select") => true,
        ("pub" | "priv" | "res", _) => privileged,
        _ => unreachable!(),
    }
}

const ROLES: [&str; 4] = ["user", "service", "dba", "system"];
const TABLES: [&str; 5] = ["ut", "st", "pub", "priv", "res"];

async fn create_fixture(s: &Server) {
    for r in ROLES {
        s.sql_ok(&format!("CREATE USER 'as_{r}' WITH PASSWORD 'pw-{r}-123' ROLE {r}")).await;
    }
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE USER TABLE app.ut (id BIGINT PRIMARY KEY, v TEXT)").await;
    s.sql_ok("CREATE STREAM TABLE app.st (id BIGINT PRIMARY KEY, v TEXT)").await;
    s.sql_ok("CREATE TABLE app.pub (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED', ACCESS_LEVEL = 'PUBLIC')")
        .await;
    s.sql_ok("CREATE TABLE app.priv (id BIGINT PRIMARY KEY, v TEXT) WITH (TYPE = 'SHARED')").await;
    s.sql_ok("CREATE TABLE app.res (id BIGINT PRIMARY KEY, v TEXT) WITH (ACCESS_LEVEL = 'restricted')").await;
    for t in ["pub", "priv", "res"] {
        s.sql_ok(&format!("INSERT INTO app.{t} (id, v) VALUES (0, 'seed')")).await;
    }
}

fn outcome(status: u16, body: &serde_json::Value) -> bool {
    match status {
        200 => true,
        403 => {
            assert_eq!(body["error"]["code"], "PERMISSION_DENIED", "{body}");
            false
        }
        other => panic!("unexpected HTTP {other}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tables_and_statements_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;

    // No way in for strangers.
    let (st, b) = s.sql_as(None, "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("AUTH_REQUIRED")), "{b}");
    let (st, b) = s.sql_as(Some("Bearer v4.local.bogus"), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_TOKEN")), "{b}");
    let (st, b) = s.sql_as(Some("Basic bm9ib2R5Om5vcGU="), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_CREDENTIALS")), "{b}");
    let (st, _) = s.sql_as(Some("Token abc"), "SELECT 1").await;
    assert_eq!(st, 401);

    create_fixture(&s).await;
    let mut tokens = Vec::new();
    for r in ROLES {
        tokens.push((r, s.login(&format!("as_{r}"), &format!("pw-{r}-123")).await));
    }
    let mut cells = 0;
    for (i, (role, tok)) in tokens.iter().enumerate() {
        for (j, t) in TABLES.iter().enumerate() {
            let id = 100 + (i * 10 + j) as i64;
            let stmts = [
                ("select", format!("SELECT count(*) FROM app.{t}")),
                ("select", format!("SELECT * FROM app.{t} WHERE id = 0")),
                ("insert", format!("INSERT INTO app.{t} (id, v) VALUES ({id}, 'x')")),
                ("update", format!("UPDATE app.{t} SET v = 'y' WHERE id = {id}")),
                ("delete", format!("DELETE FROM app.{t} WHERE id = {id}")),
            ];
            for (kind, sql) in stmts {
                let (st, b) = s.sql_as(Some(tok), &sql).await;
                assert_eq!(outcome(st, &b), expected(role, t, kind), "role {role}: {sql} -> {b}");
                cells += 1;
            }
        }
        // DDL, storage jobs and user management: dba and system only.
        let admin = [
            format!("CREATE NAMESPACE ns_{role}"),
            format!("CREATE TABLE app.t_{role} (id BIGINT PRIMARY KEY)"),
            "FLUSH TABLE app.priv".to_string(),
            format!("CREATE USER 'made_by_{role}' WITH PASSWORD 'long-enough-pw'"),
            format!("DROP TABLE IF EXISTS app.t_{role}"),
        ];
        for sql in admin {
            let (st, b) = s.sql_as(Some(tok), &sql).await;
            assert_eq!(outcome(st, &b), *role == "dba" || *role == "system", "role {role}: {sql} -> {b}");
            cells += 1;
        }
    }
    assert_eq!(cells, ROLES.len() * (TABLES.len() * 5 + 5));
    // Only system may create another system user; nobody may touch root through SQL.
    let dba = &tokens[2].1;
    let (st, b) = s.sql_as(Some(dba), "CREATE USER 'sys2' WITH PASSWORD 'long-enough-pw' ROLE system").await;
    assert_eq!(st, 403, "{b}");
    s.sql_ok("CREATE USER 'sys2' WITH PASSWORD 'long-enough-pw' ROLE system").await;
    let (st, b) = s.sql("ALTER USER 'root' SET PASSWORD 'something-else'").await;
    assert_eq!(st, 400, "{b}");
    // A PUBLIC table's rows are readable by a plain user; a PRIVATE one's never are, by any path.
    let user = &tokens[0].1;
    let (st, b) = s.sql_as(Some(user), "SELECT v FROM app.pub WHERE id = 0").await;
    assert_eq!((st, &b["results"][0]["rows"]), (200, &json!([["seed"]])), "{b}");
    for sql in [
        "SELECT p.v FROM app.pub p JOIN app.priv q ON p.id = q.id",
        "SELECT v FROM app.pub WHERE id IN (SELECT id FROM app.res)",
        "SELECT * FROM app.priv AS OF 1",
        "INSERT INTO app.ut (id, v) SELECT id, v FROM app.priv",
        "EXPLAIN SELECT * FROM app.priv",
    ] {
        let (st, b) = s.sql_as(Some(user), sql).await;
        assert_eq!((st, b["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")), "{sql} -> {b}");
    }
    let (st, b) = s.sql_as(Some(user), "EXECUTE AS USER 'as_service' (SELECT * FROM app.priv)").await;
    assert_eq!(st, 403, "a user cannot impersonate: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_only_their_own_rows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path()).await;
    s.sql_ok("CREATE NAMESPACE app").await;
    s.sql_ok("CREATE USER TABLE app.notes (id BIGINT PRIMARY KEY, body TEXT)").await;
    s.sql_ok("CREATE USER 'alice' WITH PASSWORD 'alice-password' ROLE user EMAIL 'alice@example.com'").await;
    s.sql_ok("CREATE USER 'bob' WITH PASSWORD 'bob-password' ROLE user").await;
    s.sql_ok("CREATE USER 'svc' WITH PASSWORD 'svc-password' ROLE service").await;
    let alice = s.login("alice", "alice-password").await;
    let bob = s.login("bob", "bob-password").await;
    let svc = s.login("svc", "svc-password").await;
    let ok = |st: u16, b: &serde_json::Value| assert_eq!(st, 200, "{b}");

    let (st, b) = s.sql_as(Some(&alice), "INSERT INTO app.notes (id, body) VALUES (1, 'a1'), (2, 'a2')").await;
    ok(st, &b);
    // The same keys in bob's scope do not collide with alice's.
    let (st, b) = s.sql_as(Some(&bob), "INSERT INTO app.notes (id, body) VALUES (1, 'b1')").await;
    ok(st, &b);
    let rows = |b: &serde_json::Value| b["results"][0]["rows"].clone();
    let (_, b) = s.sql_as(Some(&alice), "SELECT id, body FROM app.notes ORDER BY id").await;
    assert_eq!(rows(&b), json!([[1, "a1"], [2, "a2"]]));
    let (_, b) = s.sql_as(Some(&bob), "SELECT id, body FROM app.notes ORDER BY id").await;
    assert_eq!(rows(&b), json!([[1, "b1"]]));
    let (_, b) = s.sql_as(Some(&bob), "SELECT body FROM app.notes WHERE id = 2").await;
    assert_eq!(rows(&b), json!([]), "point lookup stays in bob's scope");
    // Joins and subqueries see the caller's rows only.
    let (_, b) = s
        .sql_as(Some(&bob), "SELECT x.body, y.body FROM app.notes x JOIN app.notes y ON x.id = y.id ORDER BY x.id")
        .await;
    assert_eq!(rows(&b), json!([["b1", "b1"]]));
    let (_, b) = s.sql_as(Some(&bob), "SELECT count(*) FROM app.notes WHERE id IN (SELECT id FROM app.notes)").await;
    assert_eq!(rows(&b), json!([[1]]));
    // Bob's row as of now, for time travel after he deletes it (positions are per group, and
    // bob's rows may live in another user shard than alice's).
    let (_, b) = s.sql_as(Some(&bob), "SELECT _seq FROM app.notes").await;
    let bob_at = b["results"][0]["rows"][0][0].as_i64().unwrap() >> 20;
    // Bob cannot change or delete alice's rows: they are not there for him.
    let (_, b) = s.sql_as(Some(&bob), "UPDATE app.notes SET body = 'hacked' WHERE id = 2").await;
    assert_eq!(b["results"][0]["row_count"], 0, "{b}");
    let (_, b) = s.sql_as(Some(&bob), "DELETE FROM app.notes WHERE id >= 0").await;
    assert_eq!(b["results"][0]["row_count"], 1, "only his own row: {b}");
    let (_, b) = s.sql_as(Some(&alice), "SELECT id, body, _seq FROM app.notes ORDER BY id").await;
    assert_eq!(b["results"][0]["row_count"], 2, "{b}");
    assert_eq!(b["results"][0]["rows"][1][1], "a2");
    // Time travel stays in the caller's scope too.
    let at = b["results"][0]["rows"][1][2].as_i64().unwrap() >> 20;
    let (_, b) = s.sql_as(Some(&bob), &format!("SELECT id, body FROM app.notes AS OF {bob_at}")).await;
    assert_eq!(rows(&b), json!([[1, "b1"]]), "bob's past, not alice's: {b}");
    let (_, b) = s.sql_as(Some(&bob), "SELECT count(*) FROM app.notes").await;
    assert_eq!(rows(&b), json!([[0]]), "deleted now");
    let (_, b) = s.sql_as(Some(&alice), &format!("SELECT id, body FROM app.notes AS OF {at} ORDER BY id")).await;
    assert_eq!(rows(&b), json!([[1, "a1"], [2, "a2"]]), "alice's past, not bob's: {b}");
    // Flushed rows keep their owner.
    s.sql_ok("FLUSH TABLE app.notes").await;
    let (_, b) = s.sql_as(Some(&alice), "SELECT count(*) FROM app.notes").await;
    assert_eq!(rows(&b), json!([[2]]));
    let (_, b) = s.sql_as(Some(&bob), "SELECT count(*) FROM app.notes").await;
    assert_eq!(rows(&b), json!([[0]]));

    // system.users: one's own row, never a hash; dba sees everyone.
    let (_, b) = s.sql_as(Some(&alice), "SELECT * FROM system.users").await;
    assert_eq!(b["results"][0]["row_count"], 1, "{b}");
    assert_eq!(b["results"][0]["rows"][0][1], "alice");
    assert_eq!(b["results"][0]["rows"][0][3], "alice@example.com");
    assert!(!b.to_string().contains("argon2"), "{b}");
    let r = s.sql_ok("SELECT username, role FROM system.users ORDER BY username").await;
    assert_eq!(r["rows"], json!([["alice", "user"], ["bob", "user"], ["svc", "service"]]));

    // EXECUTE AS USER: a service writes into bob's scope.
    let (st, b) =
        s.sql_as(Some(&svc), "EXECUTE AS USER 'bob' (INSERT INTO app.notes (id, body) VALUES (9, 'from svc'))").await;
    ok(st, &b);
    let (_, b) = s.sql_as(Some(&bob), "SELECT id, body FROM app.notes").await;
    assert_eq!(rows(&b), json!([[9, "from svc"]]));
    let (_, b) = s.sql_as(Some(&svc), "SELECT count(*) FROM app.notes").await;
    assert_eq!(rows(&b), json!([[0]]), "the service's own scope is empty");
    let (st, b) = s.sql_as(Some(&svc), "EXECUTE AS USER 'nobody' (SELECT 1)").await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("USER_NOT_FOUND")), "{b}");
    // The built-in root (KalamDB's CLI `\as root`): only a system caller may act as it.
    let (st, b) = s.sql_as(Some(&svc), "EXECUTE AS USER 'root' (SELECT 1)").await;
    assert_eq!(st, 403, "{b}");
    let r = s.sql_ok("EXECUTE AS USER 'root' (SELECT count(*) FROM system.users)").await;
    assert_eq!(r["as_user"], "root", "{r}");
    let (st, b) = s.sql_as(Some(&svc), "EXECUTE AS USER 'anonymous' (SELECT 1)").await;
    assert_eq!(st, 400, "{b}");

    // /me, password change, role change, drop: tokens follow the user's current state.
    let (st, b) = s.request_as(Some(&alice), "GET", "/v1/api/auth/me", None, Vec::new()).await.unwrap();
    assert_eq!((st, &b["user"]["username"], &b["user"]["role"]), (200, &json!("alice"), &json!("user")), "{b}");
    // KalamDB's clients decode these too: RFC 3339 times, and whether its admin UI lets them in.
    assert_eq!(b["admin_ui_access"], json!(false), "{b}");
    for field in ["created_at", "updated_at"] {
        let t = b["user"][field].as_str().unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{field}: {b}");
    }
    let body = json!({"user": "root", "password": ""}).to_string().into_bytes();
    let (st, b) = s.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.unwrap();
    assert_eq!((st, &b["admin_ui_access"], &b["user"]["role"]), (200, &json!(true), &json!("system")), "{b}");
    assert!(b["user"]["created_at"].is_string() && b["user"].get("email").is_some(), "{b}");
    let (st, b) = s.sql_as(Some(&alice), "ALTER USER 'alice' SET PASSWORD 'alice-new-password'").await;
    ok(st, &b);
    let (st, _) = s.sql_as(Some(&alice), "ALTER USER 'bob' SET PASSWORD 'not-yours-to-set'").await;
    assert_eq!(st, 403);
    let body = json!({"user": "alice", "password": "alice-password"}).to_string().into_bytes();
    let (st, b) = s.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.unwrap();
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_CREDENTIALS")), "{b}");
    let alice2 = s.login("alice", "alice-new-password").await;
    s.sql_ok("ALTER USER 'alice' SET ROLE service").await;
    let (st, b) = s.request_as(Some(&alice2), "GET", "/v1/api/auth/me", None, Vec::new()).await.unwrap();
    assert_eq!((st, &b["user"]["role"]), (200, &json!("service")), "{b}");
    s.sql_ok("DROP USER 'bob'").await;
    let (st, b) = s.sql_as(Some(&bob), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_TOKEN")), "{b}");
    // Basic works for users too.
    use base64::Engine as _;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("svc:svc-password"));
    let (st, b) = s.sql_as(Some(&basic), "SELECT count(*) FROM app.notes").await;
    ok(st, &b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_and_secrets_never_leak() {
    const ROOT_PW: &str = "Root-Pw-Zq81-never-logged";
    const TOKEN_SECRET: &str = "Token-Secret-Xy77-never-logged";
    const USER_PW: &str = "User-Pw-Kk42-never-logged";
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("KALAMDB_ROOT_PASSWORD", ROOT_PW),
        ("KALAMDB_AUTH_JWT_SECRET", TOKEN_SECRET),
        ("RUST_LOG", "debug,openraft=info"),
    ];
    let s = Server::start_with(dir.path(), common::free_port(), &env).await;
    let mut answers = Vec::new();
    let root = s.login("root", ROOT_PW).await;
    let (st, b) = s.sql_as(Some(&root), &format!("CREATE USER 'carol' WITH PASSWORD '{USER_PW}' ROLE dba")).await;
    assert_eq!(st, 200, "{b}");
    answers.push(b.to_string());
    let (st, b) = s.sql_as(Some(&root), &format!("CREATE USER 'carol' WITH PASSWORD '{USER_PW}'")).await;
    assert_eq!(st, 400, "{b}");
    answers.push(b.to_string());
    let (st, b) = s.sql_as(Some(&root), &format!("CREATE USER 'x' WITH PASSWORD '{USER_PW}' ROLE nope")).await;
    assert_eq!(st, 400, "{b}");
    answers.push(b.to_string());

    let login = |user: &'static str, pw: String| {
        let body = json!({"user": user, "password": pw}).to_string().into_bytes();
        let s = &s;
        async move { s.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.unwrap() }
    };
    for i in 0..kalamdb_node::auth::LOGIN_FAILURES_MAX {
        let (st, b) = login("carol", format!("wrong-{i}")).await;
        assert_eq!(st, 401, "{b}");
        answers.push(b.to_string());
    }
    let (st, b) = login("carol", USER_PW.to_string()).await;
    assert_eq!((st, b["error"]["code"].as_str()), (429, Some("TOO_MANY_ATTEMPTS")), "{b}");
    answers.push(b.to_string());
    // The block is per user and per address: this test's address is blocked for root too.
    let (st, _) = login("root", ROOT_PW.to_string()).await;
    assert_eq!(st, 429);
    // A token already issued still works.
    let (st, b) = s.sql_as(Some(&root), "SELECT username FROM system.users").await;
    assert_eq!(st, 200, "{b}");
    answers.push(b.to_string());

    // With a root password set, root's empty loopback login is gone (and this address is
    // still blocked).
    let (st, b) = s.sql("SELECT 1").await;
    assert!(st == 401 || st == 429, "{b}");
    answers.push(b.to_string());

    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("CREATE USER"), "debug logging of statements is on: {log}");
    for secret in [ROOT_PW, TOKEN_SECRET, USER_PW] {
        assert!(!log.contains(secret), "{secret} appears in the log");
        for a in &answers {
            assert!(!a.contains(secret), "{secret} appears in an answer: {a}");
        }
    }
    // Not even the token key file exists: the configured secret is used.
    assert!(!dir.path().join("auth/token.key").exists());
}

/// POST with an optional `Authorization` header and no body; status and JSON answer.
async fn post_auth(s: &Server, path: &str, authorization: Option<&str>) -> (u16, serde_json::Value) {
    s.request_as(authorization, "POST", path, None, Vec::new()).await.expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_logout_revokes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("n")).await;
    s.sql_ok("CREATE USER 'carol' WITH PASSWORD 'pw-carol-123456' ROLE user").await;
    let body = json!({"user": "carol", "password": "pw-carol-123456"}).to_string().into_bytes();
    let (st, login) = s.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.unwrap();
    assert_eq!(st, 200, "{login}");
    for field in ["access_token", "refresh_token", "expires_at", "refresh_expires_at"] {
        assert!(login[field].is_string(), "{field} in {login}");
    }
    assert!(login["refresh_expires_at"].as_str() > login["expires_at"].as_str());
    let access = format!("Bearer {}", login["access_token"].as_str().unwrap());
    let refresh = format!("Bearer {}", login["refresh_token"].as_str().unwrap());

    // A refresh token is not an access token, and an access token does not refresh.
    let (st, b) = s.sql_as(Some(&refresh), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("INVALID_TOKEN")), "{b}");
    let (st, _) = post_auth(&s, "/v1/api/auth/refresh", Some(&access)).await;
    assert_eq!(st, 401);
    let (st, _) = post_auth(&s, "/v1/api/auth/refresh", None).await;
    assert_eq!(st, 401);

    // Rotation: the refresh token works once and yields a new pair.
    let (st, r1) = post_auth(&s, "/v1/api/auth/refresh", Some(&refresh)).await;
    assert_eq!(st, 200, "{r1}");
    assert_eq!(r1["user"]["id"], login["user"]["id"]);
    assert_ne!(r1["refresh_token"], login["refresh_token"]);
    let access2 = format!("Bearer {}", r1["access_token"].as_str().unwrap());
    let refresh2 = format!("Bearer {}", r1["refresh_token"].as_str().unwrap());
    let (st, _) = s.sql_as(Some(&access2), "SELECT 1").await;
    assert_eq!(st, 200);
    let (st, b) = post_auth(&s, "/v1/api/auth/refresh", Some(&refresh)).await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("TOKEN_REVOKED")), "a used refresh token: {b}");
    // Presenting a used refresh token revokes its session: the new pair dies with it.
    let (st, b) = s.sql_as(Some(&access2), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("TOKEN_REVOKED")), "{b}");
    let (st, _) = post_auth(&s, "/v1/api/auth/refresh", Some(&refresh2)).await;
    assert_eq!(st, 401);

    // Logout: a fresh session's access and refresh tokens stop working; other sessions live.
    let login_once = || async {
        let body = json!({"user": "carol", "password": "pw-carol-123456"}).to_string().into_bytes();
        let (_, b) = s.request_as(None, "POST", "/v1/api/auth/login", Some("application/json"), body).await.unwrap();
        (
            format!("Bearer {}", b["access_token"].as_str().unwrap()),
            format!("Bearer {}", b["refresh_token"].as_str().unwrap()),
        )
    };
    let (a, r) = login_once().await;
    let (other, _) = login_once().await;
    let (st, out) = post_auth(&s, "/v1/api/auth/logout", Some(&a)).await;
    assert_eq!((st, out["message"].as_str()), (200, Some("Logged out successfully")), "{out}");
    let (st, b) = s.sql_as(Some(&a), "SELECT 1").await;
    assert_eq!((st, b["error"]["code"].as_str()), (401, Some("TOKEN_REVOKED")), "{b}");
    let (st, _) = post_auth(&s, "/v1/api/auth/refresh", Some(&r)).await;
    assert_eq!(st, 401);
    let (st, _) = s.sql_as(Some(&other), "SELECT 1").await;
    assert_eq!(st, 200, "another session of the same user is untouched");
    // Logout twice, or with no token, is fine.
    assert_eq!(post_auth(&s, "/v1/api/auth/logout", Some(&a)).await.0, 200);
    assert_eq!(post_auth(&s, "/v1/api/auth/logout", None).await.0, 200);
    // Revocations survive a restart (they are in the users group's projection).
    drop(s);
    let s = Server::start(&dir.path().join("n")).await;
    let (st, _) = s.sql_as(Some(&a), "SELECT 1").await;
    assert_eq!(st, 401, "still revoked after a restart");
    let (st, _) = s.sql_as(Some(&other), "SELECT 1").await;
    assert_eq!(st, 200);
}
