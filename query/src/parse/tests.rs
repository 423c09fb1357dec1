//! Parser tests: every statement form, and literals that must stay literals.

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use kalamdb_log::{DefaultExpr, Role, Value};

use super::*;

/// `(query, positions)` of an AS OF statement.
fn as_of(sql: &str) -> Result<Option<(ast::Statement, Vec<(TableName, u64)>)>> {
    Ok(match parse_statement(sql)? {
        Statement::AsOf { query, positions } => Some((*query, positions)),
        _ => None,
    })
}

fn standard(sql: &str) -> ast::Statement {
    Parser::parse_sql(&GenericDialect {}, sql).unwrap().remove(0)
}

#[test]
fn statement_kinds_are_a_fixed_set() {
    let kind = |sql: &str| parse(split_request(sql).unwrap().remove(0)).unwrap().kind;
    assert_eq!(kind("select 1"), "select");
    assert_eq!(kind("  INSERT INTO t VALUES (1)"), "insert");
    assert_eq!(kind("-- c\nSUBSCRIBE TO a.b"), "subscribe");
    assert_eq!(kind("BEGIN"), "transaction");
    assert_eq!(kind("EXECUTE AS USER 'bob' (SELECT 1)"), "execute_as");
    assert_eq!(kind("SHOW DATABASES"), "show");
}

#[test]
fn extracts_as_of() {
    let (query, found) = as_of("SELECT * FROM app.t AS OF 42 WHERE id > 1").unwrap().unwrap();
    assert_eq!(query, standard("SELECT * FROM app.t WHERE id > 1"));
    assert_eq!(found, vec![(TableName { namespace: Some("app".into()), name: "t".into() }, 42)]);
    let (_, found) = as_of("select count(*) from T as of 7").unwrap().unwrap();
    assert_eq!(found, vec![(TableName { namespace: None, name: "t".into() }, 7)]);
    assert!(as_of("SELECT 'as of 3' FROM t").unwrap().is_none(), "inside a string it is text");
    assert!(as_of("SELECT * FROM t AS OF x").is_err());
    assert!(as_of("SELECT * FROM t AS OF -1").is_err());
    assert!(as_of("DELETE FROM t AS OF 3").is_err(), "only SELECT travels in time");
    assert!(matches!(parse_statement("REBUILD PROJECTION a.b").unwrap(), Statement::Rebuild { .. }));
    assert!(parse_statement("REBUILD a.b").is_err());
}

/// Literals with quotes, `;`, comments and doubled quotes stay literals in every statement
/// form that takes one: nothing is printed back to SQL and parsed again.
#[test]
fn literals_stay_literals() {
    let nasty = [
        ("'it''s'", "it's"),
        ("'a'' OR ''1''=''1'", "a' OR '1'='1"),
        ("'x''; DROP TABLE app.t; --'", "x'; DROP TABLE app.t; --"),
        ("'/* not a comment */'", "/* not a comment */"),
        ("'-- not a comment'", "-- not a comment"),
        ("'é''ü'''", "é'ü'"),
    ];
    for (lit, value) in nasty {
        let expected = standard(&format!("SELECT * FROM app.t WHERE v = {lit}"));
        let sql = format!("SELECT * FROM app.t AS OF 42 WHERE v = {lit} -- trailing\n");
        let (query, _) = as_of(&sql).unwrap().unwrap();
        assert_eq!(query, expected, "{sql}");
        assert!(format!("{query:?}").contains(&format!("{value:?}")), "{query:?}");

        let sql = format!("EXECUTE AS USER 'bob' (INSERT INTO app.t (id, v) VALUES (1, {lit}))");
        let Statement::ExecuteAs { statement, .. } = parse_statement(&sql).unwrap() else { panic!("{sql}") };
        let Statement::Sql(inner) = statement.statement else { panic!("{sql}") };
        assert_eq!(*inner, standard(&format!("INSERT INTO app.t (id, v) VALUES (1, {lit})")));

        let sql = format!("SUBSCRIBE TO app.t WHERE v = {lit} OPTIONS (last_rows = 3)");
        let Statement::Subscribe { filter, .. } = parse_statement(&sql).unwrap() else { panic!("{sql}") };
        assert_eq!(filter.as_deref(), Some(format!("v = {lit}").as_str()));

        let sql = format!("SELECT * FROM app.t WHERE id = {lit}");
        let Statement::PointSelect { point, .. } = parse_statement(&sql).unwrap() else { panic!("{sql}") };
        assert_eq!(point.key, PointKey::Literal(crate::values::Literal::String(value.into())));
    }
    // A long one-line statement (near the 1 MiB SQL cap) is handled in one pass over its text.
    let long = format!("SELECT * FROM t AS OF 3 WHERE v IN ({})", vec!["'é''x'"; 100_000].join(","));
    let (query, _) = as_of(&long).unwrap().unwrap();
    assert_eq!(query, standard(&long.replacen("AS OF 3", "", 1)));
    // Quoted names keep their quotes and case, and the multi-line form works too.
    let (query, found) = as_of("SELECT \"V\" FROM \"App\".\"T x\" AS OF 5\nWHERE \"V\" = 'a''b'").unwrap().unwrap();
    assert_eq!(query, standard("SELECT \"V\" FROM \"App\".\"T x\" \nWHERE \"V\" = 'a''b'"));
    assert_eq!(found, vec![(TableName { namespace: Some("App".into()), name: "T x".into() }, 5)]);
}

#[test]
fn splits_respecting_quotes_and_comments() {
    let text = |sql: &str| split_request(sql).map(|s| s.iter().map(|s| s.text().to_string()).collect::<Vec<_>>());
    let s = text("SELECT 'a;b'; -- c;\nSELECT \"x;\" /* ; */ ;;").unwrap();
    assert_eq!(s, vec!["SELECT 'a;b'".to_string(), "SELECT \"x;\"".to_string()]);
    assert!(text("SELECT 'oops").is_err());
    assert!(text("  ;  ").unwrap().is_empty());
    assert!(text("-- only a comment\n;/* and another */").unwrap().is_empty());
}

#[test]
fn parses_transaction_control() {
    for (sql, want) in [
        ("BEGIN", "begin"),
        ("begin transaction", "begin"),
        ("START TRANSACTION", "begin"),
        ("COMMIT", "commit"),
        ("END", "commit"),
        ("commit work", "commit"),
        ("ROLLBACK", "rollback"),
    ] {
        let got = match parse_statement(sql).unwrap() {
            Statement::Begin => "begin",
            Statement::Commit => "commit",
            Statement::Rollback => "rollback",
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(got, want, "{sql}");
    }
    assert!(parse_statement("BEGIN ISOLATION LEVEL SERIALIZABLE").is_err());
    assert!(parse_statement("START").is_err());
    assert!(parse_statement("EXECUTE AS USER 'bob' (COMMIT)").is_err());
    assert!(parse_statement("EXECUTE AS USER 'bob' (EXECUTE AS USER 'eve' (SELECT 1))").is_err());
}

#[test]
fn parses_flush_policies() {
    assert_eq!(FlushPolicy::parse("rows:10").unwrap(), FlushPolicy { rows: Some(10), interval_secs: None });
    assert_eq!(
        FlushPolicy::parse("rows:5, interval:60").unwrap(),
        FlushPolicy { rows: Some(5), interval_secs: Some(60) }
    );
    for bad in ["", "rows", "rows:x", "rows:0", "bytes:5", "rows:1,rows:2"] {
        assert!(FlushPolicy::parse(bad).is_err(), "{bad} must fail");
    }
}

#[test]
fn parses_storage_statements() {
    let t = |ns: &str, n: &str| TableName { namespace: Some(ns.into()), name: n.into() };
    let cases = [
        ("FLUSH TABLE a.b", false, StorageTarget::Table(t("a", "b"))),
        ("STORAGE FLUSH TABLE a.b", false, StorageTarget::Table(t("a", "b"))),
        ("flush all tables", false, StorageTarget::All { namespace: None }),
        ("FLUSH ALL TABLES IN ns", false, StorageTarget::All { namespace: Some("ns".into()) }),
        ("STORAGE FLUSH ALL", false, StorageTarget::All { namespace: None }),
        ("STORAGE COMPACT TABLE a.b", true, StorageTarget::Table(t("a", "b"))),
        ("STORAGE COMPACT ALL IN ns", true, StorageTarget::All { namespace: Some("ns".into()) }),
    ];
    for (sql, compact, target) in cases {
        match parse_statement(sql).unwrap() {
            Statement::Storage { compact: c, target: got } => {
                assert_eq!((c, got), (compact, target), "{sql}");
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    for bad in ["FLUSH ALL", "FLUSH TABLE", "STORAGE PURGE TABLE a.b", "FLUSH TABLE a.b extra", "COMPACT TABLE a"] {
        assert!(parse_statement(bad).is_err(), "{bad} must fail");
    }
}

#[test]
fn parses_create_table_with_type_option() {
    let st = parse_statement(
        "CREATE TABLE test_cluster.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL DEFAULT 'x') WITH (TYPE = 'SHARED')",
    )
    .unwrap();
    let Statement::CreateTable(t) = st else { panic!("not a create table") };
    assert_eq!(t.table, TableName { namespace: Some("test_cluster".into()), name: "items".into() });
    assert_eq!(t.columns.len(), 2);
    assert!(t.columns[0].primary_key);
    assert!(t.columns[1].not_null);
    assert_eq!(t.columns[1].default, Some(DefaultExpr::Literal(Value::Text("x".into()))));
    assert_eq!(t.options, vec![("TYPE".to_string(), "SHARED".to_string())]);
}

#[test]
fn parses_own_statements() {
    assert!(matches!(parse_statement("create namespace if not exists App").unwrap(),
        Statement::CreateNamespace { name, if_not_exists: true } if name == "app"));
    assert!(matches!(
        parse_statement("DROP NAMESPACE x CASCADE").unwrap(),
        Statement::DropNamespace { cascade: true, .. }
    ));
    assert!(matches!(parse_statement("SHOW TABLES IN app").unwrap(), Statement::ShowTables { namespace: Some(_) }));
    assert!(matches!(parse_statement("SELECT 1").unwrap(), Statement::Sql(_)));
    assert!(parse_statement("CREATE TABLE t (a WEIRDTYPE)").is_err());
    assert!(parse_statement("CREATE NAMESPACE").is_err());
    assert!(matches!(parse_statement("  -- c\n /* x */ select 1").unwrap(), Statement::Sql(_)));
    assert!(parse_statement("/* unterminated").is_err());
}

#[test]
fn parses_user_statements() {
    match parse_statement("CREATE USER 'alice' WITH PASSWORD 's3cret-pw' ROLE dba EMAIL 'a@x.io'").unwrap() {
        Statement::CreateUser { username, password, role, email, if_not_exists: false } => {
            assert_eq!((username.as_str(), password.as_str()), ("alice", "s3cret-pw"));
            assert_eq!((role, email.as_deref()), (Some(Role::Dba), Some("a@x.io")));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse_statement("create user if not exists bob with role service password 'pw123456'").unwrap(),
        Statement::CreateUser { role: Some(Role::Service), if_not_exists: true, .. }
    ));
    assert!(matches!(
        parse_statement("ALTER USER 'alice' SET ROLE user").unwrap(),
        Statement::AlterUser { change: UserChange::Role(Role::User), .. }
    ));
    assert!(matches!(
        parse_statement("ALTER USER alice SET PASSWORD 'n3w-password'").unwrap(),
        Statement::AlterUser { change: UserChange::Password(p), .. } if p == "n3w-password"
    ));
    assert!(matches!(
        parse_statement("DROP USER IF EXISTS 'alice'").unwrap(),
        Statement::DropUser { if_exists: true, .. }
    ));
    match parse_statement("EXECUTE AS USER 'bob' (SELECT * FROM app.t WHERE (id > 1))").unwrap() {
        Statement::ExecuteAs { username, statement } => {
            assert_eq!(username, "bob");
            let Statement::Sql(inner) = statement.statement else { panic!("not a query") };
            assert_eq!(*inner, standard("SELECT * FROM app.t WHERE (id > 1)"));
        }
        other => panic!("{other:?}"),
    }
    assert!(parse_statement("EXECUTE AS USER 'bob' SELECT 1").is_err());
    assert!(parse_statement("CREATE USER 'x y' WITH PASSWORD 'p'").is_err());
    assert!(parse_statement("CREATE USER 'alice' WITH ROLE dba").is_err(), "password required");
    assert!(parse_statement("CREATE USER 'alice' WITH PASSWORD 'p' ROLE king").is_err());
    // A misplaced password is never echoed back in the error.
    let e = parse_statement("CREATE USER 'alice' WITH 'hunter2-secret'").unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
    let e = parse_statement("CREATE USER 'alice' WITH PASSWORD hunter2secret").unwrap_err().to_string();
    assert!(!e.contains("hunter2"), "{e}");
    // CREATE USER TABLE is still a table.
    assert!(matches!(
        parse_statement("CREATE USER TABLE app.n (id BIGINT PRIMARY KEY)").unwrap(),
        Statement::CreateTable(_)
    ));
}

#[test]
fn redacts_passwords_for_logs() {
    let r = redact_passwords("CREATE USER 'a' WITH PASSWORD 'hunter2-secret' ROLE dba");
    assert!(!r.contains("hunter2") && r.contains("'***'") && r.contains("ROLE dba"), "{r}");
    assert_eq!(redact_passwords("SELECT 1"), "SELECT 1");
}

#[test]
fn backup_takes_one_quoted_destination() {
    let parsed = parse_statement("backup database to '/srv/backups/it''s'").unwrap();
    assert!(matches!(&parsed, Statement::Backup { destination } if destination == "/srv/backups/it's"), "{parsed:?}");
    let kind = |sql: &str| parse(split_request(sql).unwrap().remove(0)).unwrap().kind;
    assert_eq!(kind("BACKUP DATABASE TO '/b'"), "backup");
    for bad in
        ["BACKUP DATABASE '/b'", "BACKUP TABLE t TO '/b'", "BACKUP DATABASE TO /b", "BACKUP DATABASE TO '/b' NOW"]
    {
        assert!(matches!(parse_statement(bad), Err(Error::InvalidSql(_))), "{bad}");
    }
}

#[test]
fn cluster_leadership_statements() {
    use kalamdb_log::GroupId;
    let cmd = |sql: &str| match parse_statement(sql) {
        Ok(Statement::Cluster(c)) => c,
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(cmd("CLUSTER TRANSFER-LEADER 2"), ClusterCommand::TransferLeader { group: None, to: 2 });
    assert_eq!(cmd("cluster transfer leader all to node 3"), ClusterCommand::TransferLeader { group: None, to: 3 });
    assert_eq!(
        cmd("CLUSTER TRANSFER LEADER 'shared:0' TO 1"),
        ClusterCommand::TransferLeader { group: Some(GroupId::SharedShard(0)), to: 1 }
    );
    assert_eq!(
        cmd("CLUSTER TRANSFER LEADER 65537 TO NODE 2"),
        ClusterCommand::TransferLeader { group: Some(GroupId::UserShard(1)), to: 2 }
    );
    assert_eq!(cmd("CLUSTER STEPDOWN"), ClusterCommand::StepDown);
    assert_eq!(cmd("CLUSTER STEP-DOWN"), ClusterCommand::StepDown);
    assert_eq!(cmd("CLUSTER REBALANCE"), ClusterCommand::Rebalance);
    assert_eq!(
        cmd("CLUSTER JOIN 4 '127.0.0.1:9094' 'kalamdb-node4:8084'"),
        ClusterCommand::Join { node: 4, raft_addr: "127.0.0.1:9094".into(), http_addr: "kalamdb-node4:8084".into() }
    );
    assert_eq!(cmd("CLUSTER REMOVE NODE 1"), ClusterCommand::RemoveNode { node: 1 });
    assert_eq!(cmd("cluster leave 3"), ClusterCommand::RemoveNode { node: 3 });
    let kind = |sql: &str| parse(split_request(sql).unwrap().remove(0)).unwrap().kind;
    assert_eq!(kind("CLUSTER REBALANCE"), "cluster");
    for bad in [
        "CLUSTER",
        "CLUSTER TRANSFER-LEADER",
        "CLUSTER TRANSFER-LEADER 0",
        "CLUSTER TRANSFER-LEADER 99999999999999999999999",
        "CLUSTER TRANSFER LEADER 'nope:1' TO 2",
        "CLUSTER TRANSFER LEADER 7 TO 2",
        "CLUSTER TRANSFER LEADER ALL 2",
        "CLUSTER STEPDOWN NOW",
        "CLUSTER EXPLODE",
        "CLUSTER JOIN 4 127.0.0.1:9094 127.0.0.1:8084",
        "CLUSTER JOIN 4 '127.0.0.1' '127.0.0.1:8084'",
        "CLUSTER JOIN 4 '127.0.0.1:99999' '127.0.0.1:8084'",
        "CLUSTER JOIN 4 'a b:1' 'h:2'",
        "CLUSTER JOIN 4 'h:1'",
        "CLUSTER REMOVE NODE",
        "CLUSTER REMOVE NODE 2000",
    ] {
        assert!(matches!(parse_statement(bad), Err(Error::InvalidSql(_))), "{bad}");
    }
}
