//! `BEGIN; ...; COMMIT;` in one request: the writes of the statements in between are gathered
//! as their net effect per row and proposed as one `Op::Transaction`, which applies all or
//! nothing. Reads inside the batch see its own earlier writes (table scans lay the pending rows
//! over what is stored). Row versions the batch read and then wrote are preconditions of the
//! commit, so a concurrent change to one of them fails the commit with a conflict and the
//! whole batch runs again, a bounded number of times. Rows only read are not checked (the
//! batch is snapshot-isolated on what it writes).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use datafusion::sql::sqlparser::ast;
use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{GroupId, Op, OpResult, RowWrite, TableDef, TxWrite, Value, WriteKind};
use kalamdb_projections::keys::encode_pk;

use super::{CONFLICT_RETRIES_MAX, Engine, ExecContext, QueryResult, STATEMENT_ROWS_MAX, apply_failure};
use crate::error::{Error, Result};
use crate::parse::{Parsed, Statement};
use crate::ports::Proposer;

/// Rows one batch may write in total (net, after rows written twice are folded).
pub const TRANSACTION_ROWS_MAX: usize = STATEMENT_ROWS_MAX;

/// One row's pending change: its version before the batch (`None`: no live row) and what the
/// batch leaves of it (`None`: deleted).
#[derive(Debug, Clone)]
pub struct Pending {
    pub pk: Value,
    pub base_seq: Option<u64>,
    pub row: Option<Vec<Value>>,
    /// The row as the batch's last DELETE of it read it: the delete op carries it, so its
    /// change record names the row even when the deleted version lived in a Parquet file.
    pub deleted: Vec<Value>,
}

/// The writes of one batch so far. Shared by the statements of the batch (and the scans they
/// run) through their [`ExecContext`].
#[derive(Debug, Default)]
pub struct Batch {
    state: Mutex<BatchState>,
}

#[derive(Debug, Default)]
struct BatchState {
    /// The one group every write of the batch goes to.
    group: Option<GroupId>,
    /// Keyed by (table id, scope, encoded primary key).
    rows: BTreeMap<(u64, String, Vec<u8>), Pending>,
    /// The oldest schema version of each table a statement of the batch was planned on: the
    /// commit is refused (and the batch run again) if a change fenced it meanwhile.
    versions: HashMap<u64, u32>,
}

fn row_key(table_id: u64, scope: &str, pk: &Value) -> (u64, String, Vec<u8>) {
    let mut key = Vec::new();
    encode_pk(pk, &mut key);
    (table_id, scope.to_string(), key)
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pending rows of one table scope: what its scans lay over the stored rows.
    pub fn overlay(&self, table_id: u64, scope: &str) -> Vec<Pending> {
        let state = self.lock();
        let from = (table_id, scope.to_string(), Vec::new());
        state
            .rows
            .range(from..)
            .take_while(|((t, s, _), _)| *t == table_id && s == scope)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Whether the batch already holds a live row under this key, or deleted it (`Some(false)`).
    pub(super) fn pending_live(&self, table_id: u64, scope: &str, pk: &Value) -> Option<bool> {
        self.lock().rows.get(&row_key(table_id, scope, pk)).map(|p| p.row.is_some())
    }

    /// Record writes. Inserts must already be known not to collide with a stored live row;
    /// updates and deletes carry the `_seq` they read, which becomes the commit's precondition
    /// when the row was not written by the batch before.
    pub(super) fn stage(
        &self,
        group: GroupId,
        def: &TableDef,
        scope: &str,
        kind: WriteKind,
        writes: Vec<RowWrite>,
    ) -> Result<()> {
        let table_id = def.table_id;
        let mut state = self.lock();
        let version = state.versions.entry(table_id).or_insert(def.schema_version());
        *version = (*version).min(def.schema_version());
        match state.group {
            Some(g) if g != group => {
                return Err(Error::CrossGroupTransaction(format!(
                    "this batch writes groups {g} and {group}; a BEGIN ... COMMIT batch applies atomically within one \
                     Raft group (the rows of one user, or one shared table), so nothing was written"
                )));
            }
            _ => state.group = Some(group),
        }
        for w in writes {
            let key = row_key(table_id, scope, &w.pk);
            let (row, deleted) =
                if kind == WriteKind::Delete { (None, w.values) } else { (Some(w.values), Vec::new()) };
            match state.rows.get_mut(&key) {
                Some(p) => {
                    if kind == WriteKind::Insert && p.row.is_some() {
                        return Err(Error::ConstraintViolation(format!(
                            "Primary key violation: this batch already wrote a row with key {}",
                            crate::values::value_display_json(&w.pk)
                        )));
                    }
                    p.row = row;
                    p.deleted = deleted;
                }
                None => {
                    let base_seq = if kind == WriteKind::Insert { None } else { w.expected_seq };
                    state.rows.insert(key, Pending { pk: w.pk, base_seq, row, deleted });
                }
            }
        }
        if state.rows.len() > TRANSACTION_ROWS_MAX {
            return Err(Error::InvalidSql(format!(
                "a BEGIN ... COMMIT batch writes at most {TRANSACTION_ROWS_MAX} rows"
            )));
        }
        Ok(())
    }

    /// The batch's net effect as one op for its group; `None` when it changes nothing.
    fn take_op(&self) -> Option<(GroupId, Op)> {
        let state = std::mem::take(&mut *self.lock());
        let group = state.group?;
        let mut writes: Vec<TxWrite> = Vec::new();
        let versions = state.versions;
        for ((table_id, scope, _), p) in state.rows {
            let schema_version = versions.get(&table_id).copied().unwrap_or(1);
            let (kind, values) = match (p.base_seq, p.row) {
                (None, None) => continue,
                (None, Some(values)) => (WriteKind::Insert, values),
                (Some(_), Some(values)) => (WriteKind::Update, values),
                (Some(_), None) => (WriteKind::Delete, p.deleted),
            };
            let write = RowWrite { pk: p.pk, values, expected_seq: p.base_seq };
            match writes.last_mut() {
                Some(w) if w.kind == kind && w.table_id == table_id && w.scope == scope => w.rows.push(write),
                _ => writes.push(TxWrite { kind, table_id, scope, rows: vec![write], schema_version }),
            }
        }
        (!writes.is_empty()).then_some((group, Op::Transaction { writes }))
    }
}

/// Statements a batch may hold: reads and row writes.
fn allowed_in_batch(statement: &Statement) -> bool {
    match statement {
        Statement::PointSelect { .. } | Statement::AsOf { .. } | Statement::InsertValues(_) => true,
        Statement::ExecuteAs { statement, .. } => allowed_in_batch(&statement.statement),
        Statement::Sql(s) => matches!(
            s.as_ref(),
            ast::Statement::Query(_)
                | ast::Statement::Insert(_)
                | ast::Statement::Update(_)
                | ast::Statement::Delete(_)
                | ast::Statement::Explain { .. }
        ),
        _ => false,
    }
}

impl Engine {
    /// Run the statements of a `BEGIN` batch (`body`, each with its index in the request) and
    /// end it with `COMMIT` (`commit`) or `ROLLBACK`. Returns the results of BEGIN, of each
    /// statement and of the end; an error carries the index of the statement it belongs to.
    pub(super) async fn run_batch(
        &self,
        body: Vec<(usize, Parsed)>,
        end: usize,
        commit: bool,
        ctx: &ExecContext,
        proposer: &dyn Proposer,
    ) -> std::result::Result<Vec<QueryResult>, (usize, Error)> {
        for (i, p) in &body {
            if !allowed_in_batch(&p.statement) {
                return Err((
                    *i,
                    Error::InvalidSql(format!(
                        "only SELECT, INSERT, UPDATE and DELETE may run between BEGIN and COMMIT (found a {} statement); \
                         nothing was written",
                        p.kind
                    )),
                ));
            }
        }
        for _attempt in 0..CONFLICT_RETRIES_MAX {
            let seen = self.catalog.changes();
            let batch = Arc::new(Batch::default());
            let inside = ExecContext { batch: Some(batch.clone()), ..ctx.clone() };
            let mut results = vec![transaction_message(0, "Transaction started".into())];
            for (i, p) in &body {
                let kind = p.kind;
                let mut r = self
                    .with_deadline("the statement", self.run(p.clone(), &inside, proposer))
                    .await
                    .map_err(|e| (*i, e))?;
                r.kind = kind;
                results.push(r);
            }
            if !commit {
                results.push(transaction_message(0, "Rolled back: nothing was written".into()));
                return Ok(results);
            }
            let Some((group, op)) = batch.take_op() else {
                results.push(transaction_message(0, "Committed: nothing to write".into()));
                return Ok(results);
            };
            let mut tables: Vec<u64> = match &op {
                Op::Transaction { writes } => writes.iter().map(|w| w.table_id).collect(),
                _ => Vec::new(),
            };
            tables.dedup();
            let outcome = self.with_deadline("COMMIT", proposer.propose(group, op)).await.map_err(|e| (end, e))?;
            match outcome {
                OpResult::Done { affected } => {
                    results.push(transaction_message(affected as usize, format!("Committed {affected} row change(s)")));
                    return Ok(results);
                }
                OpResult::Failed { code: ApplyErrorCode::Conflict, .. } => continue,
                // A table of the batch changed: its statements run again on the new schema,
                // once this node's catalog has it (see `unfenced`).
                OpResult::Failed { code: ApplyErrorCode::StaleSchema, .. } => {
                    self.await_schema_change(seen, &tables, ctx, proposer).await.map_err(|e| (end, e))?;
                    continue;
                }
                OpResult::Failed { code, message } => return Err((end, apply_failure(code, message))),
                other => return Err((end, Error::Internal(format!("unexpected transaction result {other:?}")))),
            }
        }
        Err((
            end,
            Error::Conflict(format!(
                "the batch kept conflicting with concurrent writes after {CONFLICT_RETRIES_MAX} attempts; nothing was written"
            )),
        ))
    }
}

fn transaction_message(rows: usize, message: String) -> QueryResult {
    let mut r = QueryResult::message(rows, message);
    r.kind = "transaction";
    r
}
