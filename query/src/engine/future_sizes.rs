//! Bounds on the size of a statement's futures: a future held inline is copied whole each
//! time its parent is boxed or moved, and every request boxes a few levels of them. An INSERT
//! once copied ~110 KiB of mostly DataFusion state it never used (a 3.5% memcpy in the
//! 64-client write profile); these keep the boxing in `run`, `execute_sql` and
//! `run_query_as_of` from being undone.

use std::sync::Arc;

use async_trait::async_trait;
use kalamdb_log::{GroupId, GroupLayout, LogDb, Op, OpResult, Role};
use kalamdb_projections::cold::FileStore;
use kalamdb_projections::{Catalog, PROJECTION_CFS, RowReader};

use super::{Engine, ExecContext};
use crate::error::Result;
use crate::parse::{parse, split_request};
use crate::ports::Proposer;

struct Refusing;

#[async_trait]
impl Proposer for Refusing {
    async fn propose(&self, _group: GroupId, _op: Op) -> Result<OpResult> {
        Err(crate::error::Error::Internal("no proposals here".into()))
    }
}

/// The futures a single-row INSERT boxes, level by level, and their bounds in bytes.
#[test]
fn statement_futures_stay_small() {
    const EXECUTE_BYTES_MAX: usize = 1024;
    const RUN_BYTES_MAX: usize = 8 * 1024;
    const EXECUTE_SQL_BYTES_MAX: usize = 12 * 1024;
    const QUERY_BYTES_MAX: usize = 10 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let db = LogDb::open(&dir.path().join("db"), &PROJECTION_CFS).unwrap();
    let rows = RowReader::new(db, Arc::new(FileStore::folder(dir.path().join("files"))));
    let engine = Engine::new(Catalog::new(), rows, GroupLayout::new(1, 1), 1);
    let ctx = ExecContext {
        user_id: "u".into(),
        role: Role::Dba,
        namespace: None,
        params: Vec::new(),
        barrier: None,
        impersonated_by: None,
        batch: None,
    };
    let sql = "INSERT INTO app.t (id, v) VALUES (1, 'a')";
    let parsed = || parse(split_request(sql).unwrap().remove(0)).unwrap();
    let execute = std::mem::size_of_val(&engine.execute(sql, &ctx, &Refusing));
    let run = std::mem::size_of_val(&engine.run(parsed(), &ctx, &Refusing));
    let crate::parse::Statement::Sql(stmt) = parsed().statement else { panic!("an INSERT is plain SQL") };
    let execute_sql = std::mem::size_of_val(&engine.execute_sql((*stmt).clone(), &ctx, &Refusing));
    let query = std::mem::size_of_val(&engine.run_query(*stmt, &ctx));
    assert!(execute <= EXECUTE_BYTES_MAX, "execute: {execute} bytes");
    assert!(run <= RUN_BYTES_MAX, "run: {run} bytes");
    assert!(execute_sql <= EXECUTE_SQL_BYTES_MAX, "execute_sql: {execute_sql} bytes");
    assert!(query <= QUERY_BYTES_MAX, "run_query: {query} bytes");
}
