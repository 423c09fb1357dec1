//! A bounded, seeded run of generated SQL against a real server (issue 17): valid statements,
//! mutated ones and junk, from every role. Every answer is a coded error or a success, no 5xx
//! but coded 503s, no panic in the log, and the node is alive at the end.
//!
//! Replay a run with `KALAMDB_FUZZ_SEED=<seed> KALAMDB_FUZZ_STATEMENTS=<n>`; a failure prints
//! the seed and the statement.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

const SEED_DEFAULT: u64 = 0x5eed_2026_1203;
const STATEMENTS_DEFAULT: usize = 800;
/// The whole run must end within this (each statement is bounded by the server's deadline).
const RUN_WALL_MAX: Duration = Duration::from_secs(240);

/// splitmix64: tiny, seeded, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const TABLES: [&str; 4] = ["fz.shared_t", "fz.user_t", "fz.stream_t", "fz.nope"];
const COLUMNS: [&str; 5] = ["id", "v", "n", "_seq", "missing"];
const LITERALS: [&str; 16] = [
    "1",
    "-1",
    "0",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "1e308",
    "'x'",
    "''",
    "'it''s'",
    "'; DROP TABLE fz.shared_t; --'",
    "NULL",
    "TRUE",
    "'2026-12-03T00:00:00Z'",
    "$1",
    "'\u{1F600}'",
];

fn valid(r: &mut Rng) -> String {
    let t = r.pick(&TABLES);
    let c = r.pick(&COLUMNS);
    let l = r.pick(&LITERALS);
    match r.below(22) {
        0 => format!("SELECT * FROM {t}"),
        1 => format!("SELECT {c}, count(*) FROM {t} GROUP BY {c} ORDER BY 2 DESC LIMIT {}", r.below(50)),
        2 => format!("SELECT * FROM {t} WHERE {c} = {l}"),
        3 => format!("INSERT INTO {t} (id, v, n) VALUES ({}, {l}, {l})", r.below(1000)),
        4 => format!("UPDATE {t} SET v = {l} WHERE id = {}", r.below(1000)),
        5 => format!("DELETE FROM {t} WHERE {c} > {l}"),
        6 => format!("SELECT a.id FROM {t} a JOIN {t} b ON a.id = b.id WHERE a.{c} < {l}"),
        7 => "SHOW TABLES".into(),
        8 => format!("DESCRIBE {t}"),
        9 => {
            format!("SELECT * FROM system.{}", r.pick(&["tables", "columns", "users", "jobs", "namespaces", "cluster"]))
        }
        10 => format!("FLUSH TABLE {t}"),
        11 => format!("EXECUTE AS USER '{}' (SELECT * FROM {t})", r.pick(&["fz_user", "root", "nobody", "fz_dba"])),
        12 => format!("SELECT * FROM {t} AS OF {}", r.pick(&["1", "0", "18446744073709551615", "-1", "'x'"])),
        13 => {
            format!("CREATE USER 'u{}' WITH PASSWORD {l} ROLE {}", r.below(20), r.pick(&["user", "dba", "system", "x"]))
        }
        14 => format!(
            "ALTER USER '{}' SET PASSWORD 'pw-{}-long-enough'",
            r.pick(&["fz_user", "root", "fz_dba"]),
            r.below(9)
        ),
        15 => format!("DROP TABLE IF EXISTS {t}"),
        16 => format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v TEXT, n BIGINT) WITH (TYPE = 'SHARED')"),
        17 => format!("SELECT sum(n), avg(n), max(v) FROM {t} WHERE v LIKE {l}"),
        18 => format!("SELECT * FROM generate_series(1, {})", r.pick(&["10", "100000", "10000000000"])),
        19 => format!(
            "SELECT {c} FROM {t} ORDER BY {c} LIMIT {} OFFSET {}",
            r.pick(&["1", "-1", "0", "99999999999"]),
            r.below(3)
        ),
        20 => format!("SUBSCRIBE TO {t} WHERE {c} = {l}"),
        _ => "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100) SELECT count(*) FROM r"
            .into(),
    }
}

/// Damage a statement: cut it, splice junk in, repeat a piece, unbalance quotes.
fn mutate(r: &mut Rng, s: String) -> String {
    let mut b: Vec<char> = s.chars().collect();
    for _ in 0..=r.below(3) {
        let at = r.below(b.len() + 1);
        match r.below(6) {
            0 => b.truncate(at),
            1 => {
                let junk = r.pick(&["'", "\"", "(", ")))", ";", "--", "/*", "*/", "\\", "\0", "$99", "`", ",,"]);
                for (k, ch) in junk.chars().enumerate() {
                    b.insert(at.min(b.len()) + k, ch);
                }
            }
            2 if !b.is_empty() => {
                let end = (at + r.below(20)).min(b.len());
                let piece: Vec<char> = b[at.min(end)..end].to_vec();
                for (k, ch) in piece.into_iter().enumerate() {
                    b.insert(end + k, ch);
                }
            }
            3 if at < b.len() => {
                b.remove(at);
            }
            4 => b.extend("(".repeat(r.below(300)).chars()),
            _ => b.extend(" UNION SELECT 1".chars()),
        }
    }
    b.into_iter().collect()
}

fn junk(r: &mut Rng) -> String {
    let n = r.below(200);
    (0..n).map(|_| char::from_u32(32 + (r.next() % 95) as u32).unwrap_or('?')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_sql_never_breaks_the_node() {
    let seed = std::env::var("KALAMDB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED_DEFAULT);
    let count =
        std::env::var("KALAMDB_FUZZ_STATEMENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(STATEMENTS_DEFAULT);
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        dir.path(),
        common::free_port(),
        &[("KALAMDB_LIMITS_QUERY_TIMEOUT_MS", "3000"), ("KALAMDB_LIMITS_QUERY_MEMORY_BYTES_MAX", "268435456")],
    )
    .await;
    s.sql_ok("CREATE NAMESPACE fz").await;
    s.sql_ok("CREATE TABLE fz.shared_t (id BIGINT PRIMARY KEY, v TEXT, n BIGINT) WITH (TYPE = 'SHARED', ACCESS_LEVEL = 'PUBLIC')")
        .await;
    s.sql_ok("CREATE USER TABLE fz.user_t (id BIGINT PRIMARY KEY, v TEXT, n BIGINT)").await;
    s.sql_ok("CREATE STREAM TABLE fz.stream_t (id BIGINT PRIMARY KEY, v TEXT, n BIGINT) WITH (TTL_SECONDS = 60)").await;
    for (name, role) in [("fz_user", "user"), ("fz_service", "service"), ("fz_dba", "dba")] {
        s.sql_ok(&format!("CREATE USER '{name}' WITH PASSWORD '{name}-password' ROLE {role}")).await;
    }
    let mut callers = vec![common::ROOT_BASIC.to_string()];
    for name in ["fz_user", "fz_service", "fz_dba"] {
        callers.push(s.login(name, &format!("{name}-password")).await);
    }

    let mut r = Rng(seed);
    let started = Instant::now();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..count {
        let sql = match r.below(10) {
            0..=4 => valid(&mut r),
            5..=7 => {
                let v = valid(&mut r);
                mutate(&mut r, v)
            }
            8 => (0..=r.below(4)).map(|_| valid(&mut r)).collect::<Vec<_>>().join("; "),
            _ => junk(&mut r),
        };
        let caller = callers[r.below(callers.len())].clone();
        let params = if r.below(4) == 0 { json!([r.pick(&LITERALS)]) } else { json!([]) };
        let body = json!({"sql": sql, "params": params});
        let (st, resp) = common::post_sql_as(s.port, Some(&caller), &body)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, statement {i}: no answer ({e}) to {sql:?}"));
        let code = resp["error"]["code"].as_str().unwrap_or("OK").to_string();
        let coded = resp["status"] == "success" || !code.is_empty() && code != "OK";
        assert!(coded, "seed {seed}, statement {i}: uncoded answer {st} {resp} to {sql:?}");
        assert!(
            st < 500 || (st == 503 && code != "INTERNAL_ERROR"),
            "seed {seed}, statement {i}: {st} {resp} to {sql:?}"
        );
        *codes.entry(format!("{st} {code}")).or_default() += 1;
        assert!(started.elapsed() < RUN_WALL_MAX, "seed {seed}: the run passed {RUN_WALL_MAX:?} at statement {i}");
    }
    eprintln!("seed {seed}: {count} statements in {:?}: {codes:?}", started.elapsed());
    assert!(codes.keys().any(|k| k.starts_with("200")), "some statements succeeded: {codes:?}");
    assert_eq!(s.get("/v1/api/healthcheck").await.unwrap().0, 200);
    s.sql_ok("SELECT count(*) FROM system.tables").await;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(!log.contains("panicked"), "a panic in the server log (seed {seed})");
}
