//! One live query of a WebSocket connection: its initial data in batches (on the client's
//! `next_batch`), then every committed change of its table that it may see, in commit order,
//! read from this node's change records like the tail endpoint's (same records, same access
//! rules). A change is rendered as KalamDB's `change` message; a row leaving or entering the
//! filter becomes a delete or an insert.
//!
//! Positions: the client resumes with the last `_seq` it received (`options.from`). A `_seq`
//! names its log entry (`_seq >> SEQ_ORDINAL_BITS`) and the rows within it are ordered by
//! `_seq`, so resuming re-reads that entry and skips the rows at or before it: nothing is
//! sent twice and nothing is skipped, on any node (change records are the same everywhere).

use std::sync::Arc;
use std::time::Duration;

use kalamdb_log::{GroupId, TableDef, Value};
use kalamdb_projections::changes::{self, Change, ChangeKind};
use kalamdb_projections::stored::{SEQ_ORDINAL_BITS, make_seq};
use kalamdb_query::{ExecContext, LiveColumn, LiveQuery, SeqWindow};
use serde_json::{Map, Value as J, json};
use tokio::sync::mpsc;

use super::protocol::{self, BatchControl, code};
use super::session::Outbox;
use crate::api::App;
use crate::api::tail::{READ_ENTRIES_MAX, guard::Entitlement};

/// How a subscription starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Changes after the current position only (no `options`).
    Live,
    /// Initial data: the newest `last_rows`, or every row in batches of `batch_size`.
    Initial { batch_size: u64, last_rows: Option<u64> },
    /// Changes after this `_seq` (`options.from`).
    Resume(u64),
}

/// A change as this subscription shows it: `change_type`, new row, old values.
type Part = (&'static str, Option<J>, Option<J>);

/// Consecutive changes of one entry with the same `change_type`, sent as one `change`
/// message whose `rows` (and `old_values`, pairwise) hold them all: the protocol's arrays,
/// and one frame for a multi-row statement instead of one per row.
#[derive(Default)]
struct Pending {
    kind: Option<&'static str>,
    rows: Vec<J>,
    old: Vec<J>,
}

/// Rows one `change` message carries at most.
const ROWS_PER_MESSAGE_MAX: usize = 256;

impl Pending {
    /// Add a change; returns the message of what was pending when it cannot join it.
    fn push(&mut self, id: &str, committed_at_micros: i64, (kind, row, old): Part) -> Option<J> {
        let full = self.rows.len().max(self.old.len()) >= ROWS_PER_MESSAGE_MAX;
        let out = if self.kind != Some(kind) || full { self.take(id, committed_at_micros) } else { None };
        self.kind = Some(kind);
        self.rows.extend(row);
        self.old.extend(old);
        out
    }

    fn take(&mut self, id: &str, committed_at_micros: i64) -> Option<J> {
        let kind = self.kind.take()?;
        let mut m = json!({
            "type": "change",
            "subscription_id": id,
            "change_type": kind,
            "committed_at_micros": committed_at_micros,
        });
        if !self.rows.is_empty() {
            m["rows"] = J::Array(std::mem::take(&mut self.rows));
        }
        if !self.old.is_empty() {
            m["old_values"] = J::Array(std::mem::take(&mut self.old));
        }
        Some(m)
    }
}

/// What a subscription task needs.
pub struct LiveSub {
    pub app: Arc<App>,
    pub id: String,
    pub query: LiveQuery,
    pub entitlement: Entitlement,
    pub out: Outbox,
}

/// The caller's context for reads (its scope, its role).
fn exec_context(e: &Entitlement) -> ExecContext {
    ExecContext {
        user_id: e.who.user_id.clone(),
        role: e.who.role,
        namespace: None,
        params: Vec::new(),
        barrier: None,
        impersonated_by: None,
        batch: None,
    }
}

/// Why a subscription ended (its last message already queued).
enum End {
    /// The connection is gone or closing.
    Closed,
    /// An error message was sent for it.
    Failed,
}

impl LiveSub {
    fn ctx(&self) -> ExecContext {
        exec_context(&self.entitlement)
    }

    async fn send(&self, message: J) -> Result<(), End> {
        if self.out.send(message).await { Ok(()) } else { Err(End::Closed) }
    }

    async fn fail(&self, code: &str, message: &str) -> End {
        metrics::counter!("kalamdb_ws_subscription_errors_total", "code" => code.to_string()).increment(1);
        let _ = self.out.send(protocol::error(&self.id, code, message)).await;
        End::Failed
    }

    /// A row of the live query as an object keyed by column name; `_seq` always included.
    /// `SELECT *` shows the table's columns as they are now (added ones too).
    fn row_json(&self, def: &TableDef, values: &[Value], seq: u64) -> J {
        let mut obj = Map::new();
        let mut put = |i: usize| {
            let Some(col) = def.columns.get(i).filter(|c| !c.dropped) else { return };
            let v = values.get(i).or(col.backfill.as_ref()).unwrap_or(&Value::Null);
            obj.insert(col.name.clone(), kalamdb_query::values::value_to_json(v));
        };
        if self.query.explicit {
            for c in &self.query.columns {
                if let LiveColumn::Table(i) = c {
                    put(*i);
                }
            }
        } else {
            (0..def.columns.len()).for_each(&mut put);
        }
        obj.insert(kalamdb_query::provider::SEQ_COLUMN.into(), J::String(seq.to_string()));
        J::Object(obj)
    }

    /// The primary key (and `_seq`) alone: what a delete of an unknown row or an update's
    /// old values always carry.
    fn key_json(&self, def: &TableDef, values: &[Value], seq: u64, changed: &[usize]) -> J {
        let mut obj = Map::new();
        for (i, col) in def.visible_columns() {
            let shown = !self.query.explicit || self.query.columns.contains(&LiveColumn::Table(i));
            if col.primary_key || (shown && changed.contains(&i)) {
                let v = values.get(i).or(col.backfill.as_ref()).unwrap_or(&Value::Null);
                obj.insert(col.name.clone(), kalamdb_query::values::value_to_json(v));
            }
        }
        obj.insert(kalamdb_query::provider::SEQ_COLUMN.into(), J::String(seq.to_string()));
        J::Object(obj)
    }

    /// What a change becomes for this subscription, if anything: its `change_type`, the new
    /// row and the old values.
    fn change_parts(&self, def: &TableDef, c: &Change) -> Option<Part> {
        let matches = |row: &[Value]| self.query.filter.as_ref().is_none_or(|f| f.matches(row));
        let message = |kind: &'static str, rows: Option<J>, old: Option<J>| (kind, rows, old);
        match c.kind {
            ChangeKind::Insert => {
                matches(&c.row).then(|| message("insert", Some(self.row_json(def, &c.row, c.seq)), None))
            }
            ChangeKind::Update => {
                let new_in = matches(&c.row);
                let old_in = c.old_row.as_deref().map(matches);
                match (new_in, old_in) {
                    (true, Some(false)) => Some(message("insert", Some(self.row_json(def, &c.row, c.seq)), None)),
                    (true, _) => {
                        let old_seq = c.old_seq.unwrap_or(0);
                        let old = match &c.old_row {
                            Some(old) => {
                                let changed: Vec<usize> =
                                    (0..def.columns.len()).filter(|i| old.get(*i) != c.row.get(*i)).collect();
                                self.key_json(def, old, old_seq, &changed)
                            }
                            None => self.key_json(def, &c.row, old_seq, &[]),
                        };
                        Some(message("update", Some(self.row_json(def, &c.row, c.seq)), Some(old)))
                    }
                    // Left the filter: a delete for this view; `_seq` is the update's own.
                    (false, Some(true)) => {
                        let old = c.old_row.as_deref().unwrap_or_default();
                        Some(message("delete", None, Some(self.row_json(def, old, c.seq))))
                    }
                    // Old version unknown (it was in a Parquet file): the client drops the key
                    // if it holds it.
                    (false, None) => Some(message("delete", None, Some(self.key_json(def, &c.row, c.seq, &[])))),
                    (false, Some(false)) => None,
                }
            }
            ChangeKind::Delete => match c.old_row.as_deref() {
                Some(old) if !matches(old) => None,
                Some(old) => Some(message("delete", None, Some(self.row_json(def, old, c.seq)))),
                // The deleted values are not in the record (written by an earlier version, or a
                // transaction's delete of a flushed row): only `_seq` says what went.
                None => Some(message("delete", None, Some(self.key_json(def, &[], c.seq, &[])))),
            },
            ChangeKind::Ddl | ChangeKind::Flush => None,
        }
    }
}

/// A subscription as the client asked for it, before its query is bound.
pub struct LiveRequest {
    pub app: Arc<App>,
    pub id: String,
    pub sql: String,
    pub entitlement: Entitlement,
    pub out: Outbox,
}

/// Run one subscription until it ends, the connection closes, or the task is aborted
/// (unsubscribe). `next` carries the client's `next_batch` requests.
pub async fn run(req: LiveRequest, start: Start, next: mpsc::Receiver<()>) {
    let app = req.app.clone();
    // A table created through another node a moment ago exists here too: the catalog is read
    // at (at least) its committed position, as a linearizable SELECT would.
    if app.groups.is_cluster()
        && let Err(e) = app.groups.read_barrier(GroupId::Meta(kalamdb_log::MetaGroup::Catalog)).await
    {
        let m = format!("cannot read the catalog: {e}");
        let _ = req.out.send(protocol::error(&req.id, code::SUBSCRIPTION_FAILED, &m)).await;
        return;
    }
    let query = match app.engine.live_query(&req.sql, &exec_context(&req.entitlement)) {
        Ok(q) => q,
        Err(e) => {
            let c = match &e {
                kalamdb_query::Error::TableNotFound(_) | kalamdb_query::Error::NamespaceNotFound(_) => code::NOT_FOUND,
                kalamdb_query::Error::PermissionDenied(_) => code::UNAUTHORIZED,
                _ => code::INVALID_SQL,
            };
            metrics::counter!("kalamdb_ws_subscription_errors_total", "code" => c).increment(1);
            let _ = req.out.send(protocol::error(&req.id, c, &e.to_string())).await;
            return;
        }
    };
    let sub = LiveSub { app, id: req.id, query, entitlement: req.entitlement, out: req.out };
    let _ = run_inner(&sub, start, next).await;
}

async fn run_inner(sub: &LiveSub, start: Start, mut next: mpsc::Receiver<()>) -> Result<(), End> {
    let app = &sub.app;
    let def = sub.query.def.clone();
    let (group, scope) = app.groups.layout.table_location(&def, &sub.entitlement.who.user_id);
    // Reads start at (at least) the group's committed position, as a linearizable SELECT.
    if app.groups.is_cluster()
        && let Err(e) = app.groups.read_barrier(group).await
    {
        return Err(sub.fail(code::SUBSCRIPTION_FAILED, &format!("cannot read the table's group: {e}")).await);
    }
    let at = app.groups.applied_index(group);
    let schema: Vec<J> =
        sub.query.table_columns().enumerate().map(|(k, (_, c))| protocol::schema_field(k, c)).collect();
    // Entries at or before `after_index` are delivered; of entry `after_index + 1`, the rows
    // at or before `skip_upto` too.
    let (after_index, skip_upto) = match start {
        Start::Live => {
            let ready = BatchControl { batch_num: 0, has_more: false, last_seq_id: None };
            sub.send(ack(sub, ready, &schema)).await?;
            (at, None)
        }
        Start::Resume(seq) => {
            let entry = seq >> SEQ_ORDINAL_BITS;
            if entry > crate::api::tail::POSITION_INDEX_MAX {
                return Err(sub.fail(code::INVALID_SQL, &format!("_seq {seq} is out of range")).await);
            }
            let floor = changes::floor(app.groups.rows.db(), group).unwrap_or(1);
            if entry.max(1) < floor {
                let oldest = make_seq(floor, 0);
                let m = format!(
                    "_seq {seq} is older than the changes this node keeps (from _seq {oldest}); subscribe again without `from` for the current rows"
                );
                return Err(sub.fail(code::POSITION_GONE, &m).await);
            }
            let ready = BatchControl { batch_num: 0, has_more: false, last_seq_id: Some(seq) };
            sub.send(ack(sub, ready, &schema)).await?;
            (entry.saturating_sub(1), Some(seq))
        }
        Start::Initial { batch_size, last_rows } => {
            initial(sub, &def, at, batch_size, last_rows, &schema, &mut next).await?;
            (at, None)
        }
    };
    follow(sub, def, group, scope, after_index, skip_upto).await
}

fn ack(sub: &LiveSub, control: BatchControl, schema: &[J]) -> J {
    json!({
        "type": "subscription_ack",
        "subscription_id": sub.id,
        // KalamDB's servers send 0 here as well; the batches carry the rows.
        "total_rows": 0,
        "batch_control": control.json(),
        "schema": schema,
    })
}

/// The initial data: rows whose version is at or before entry `at`, each version once (a row
/// changed after `at` arrives as its change instead), batch by batch.
async fn initial(
    sub: &LiveSub,
    def: &TableDef,
    at: u64,
    batch_size: u64,
    last_rows: Option<u64>,
    schema: &[J],
    next: &mut mpsc::Receiver<()>,
) -> Result<(), End> {
    let upto = make_seq(at + 1, 0) - 1;
    let filter = sub.query.filter.as_ref();
    let ctx = sub.ctx();
    let mut after = None;
    for batch_num in 0u32.. {
        let (window, n) = match last_rows {
            Some(n) => (SeqWindow { after: None, upto: Some(upto), newest: true }, n),
            // One row more than the batch tells whether another batch follows.
            None => (SeqWindow { after, upto: Some(upto), newest: false }, batch_size + 1),
        };
        let result = match sub.app.engine.seq_rows(def, filter, window, n, &ctx).await {
            Ok(rows) => rows,
            Err(e) => return Err(sub.fail(code::BATCH_FETCH_FAILED, &e.to_string()).await),
        };
        let mut rows = result;
        if last_rows.is_some() {
            rows.reverse();
        }
        let has_more = last_rows.is_none() && rows.len() as u64 > batch_size;
        rows.truncate(usize::try_from(batch_size).unwrap_or(usize::MAX));
        let objects: Vec<J> = rows.iter().map(|(values, seq)| sub.row_json(def, values, *seq)).collect();
        if let Some((_, seq)) = rows.last() {
            after = Some(*seq);
        }
        let control = BatchControl { batch_num, has_more, last_seq_id: after };
        if batch_num == 0 {
            sub.send(ack(sub, control, schema)).await?;
        }
        let m = json!({
            "type": "initial_data_batch",
            "subscription_id": sub.id,
            "rows": objects,
            "batch_control": control.json(),
        });
        sub.send(m).await?;
        metrics::counter!("kalamdb_ws_initial_rows_total").increment(rows.len() as u64);
        if !has_more {
            return Ok(());
        }
        // The next batch comes when the client asks (KalamDB's flow control).
        if next.recv().await.is_none() {
            return Err(End::Closed);
        }
    }
    Ok(())
}

/// Every change after `after_index` (of entry `after_index + 1`, the rows after `skip_upto`),
/// live, until the subscription ends.
async fn follow(
    sub: &LiveSub,
    mut def: Arc<TableDef>,
    group: GroupId,
    scope: String,
    mut after_index: u64,
    skip_upto: Option<u64>,
) -> Result<(), End> {
    let app = &sub.app;
    let Some(mut applied_rx) = app.groups.applied_watch(group) else {
        return Err(sub.fail(code::SUBSCRIPTION_FAILED, "the table's group is not hosted here").await);
    };
    let db = app.groups.rows.db().clone();
    let mut recheck = tokio::time::interval(Duration::from_millis(app.tail.heartbeat_ms));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // ALTER TABLE takes effect, DROP TABLE ends the subscription.
        match app.groups.catalog.table_by_id(def.table_id) {
            Some(now) => def = now,
            None => {
                let m = format!("table {}.{} was dropped", def.namespace, def.name);
                return Err(sub.fail(code::NOT_FOUND, &m).await);
            }
        }
        if let Err(why) = sub.entitlement.recheck(&app.auth, Some(&def), false) {
            return Err(sub.fail(code::UNAUTHORIZED, &why).await);
        }
        applied_rx.borrow_and_update();
        let applied = app.groups.applied_index(group);
        if after_index >= applied {
            tokio::select! {
                r = applied_rx.changed() => if r.is_err() { return Err(End::Closed) },
                _ = recheck.tick() => {}
                () = sub.out.closed() => return Err(End::Closed),
            }
            continue;
        }
        let floor = changes::floor(&db, group).unwrap_or(1);
        if after_index + 1 < floor {
            let m = format!(
                "this node no longer keeps the changes this subscription needs (it keeps from _seq {}); subscribe again",
                make_seq(floor, 0)
            );
            return Err(sub.fail(code::POSITION_GONE, &m).await);
        }
        let entries = match app.tail_state.entries(&app.groups.rows, group, after_index + 1, applied, READ_ENTRIES_MAX)
        {
            Ok(e) => e,
            Err(e) => return Err(sub.fail(code::SUBSCRIPTION_FAILED, &format!("cannot read changes: {e}")).await),
        };
        let full = entries.len() == READ_ENTRIES_MAX;
        for (index, entry) in &entries {
            let committed_at = entry.record.as_ref().map_or(0, |r| r.committed_at_micros);
            let mut pending = Pending::default();
            for c in entry.record.iter().flat_map(|r| r.changes.iter()) {
                if c.table_id != def.table_id {
                    continue;
                }
                let row_change = matches!(c.kind, ChangeKind::Insert | ChangeKind::Update | ChangeKind::Delete);
                if !row_change || c.scope != scope || skip_upto.is_some_and(|s| c.seq <= s) {
                    continue;
                }
                if let Some(part) = sub.change_parts(&def, c) {
                    metrics::counter!("kalamdb_ws_changes_total").increment(1);
                    if let Some(m) = pending.push(&sub.id, committed_at, part) {
                        sub.send(m).await?;
                    }
                }
            }
            if let Some(m) = pending.take(&sub.id, committed_at) {
                sub.send(m).await?;
            }
            after_index = *index;
        }
        if !full {
            after_index = applied;
        }
    }
}
