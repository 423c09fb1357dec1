//! [`Projection`]: one group's openraft state machine. Applies committed entries to the
//! catalog and row column families in one write batch per `apply` call, with the last-applied
//! log id and membership in that same batch, so the projection and its position never diverge.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::types::{Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use kalamdb_log::{ApplyResponse, GroupId, LogDb, MetaGroup, Op, OpResult, TypeConfig, WriteKind};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, StorageIOError};
use rocksdb::{DB, WriteBatch};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::changes::{Change, ChangeEntry, ChangeKind};
use crate::cold::{ColdApplier, ColdGroup, StorageEnv};
use crate::error::{Error, Result};
use crate::install::Installer;
use crate::rows::RowApplier;
use crate::snapshot::export_linked;
use crate::snapshot_store::{SnapshotStore, StoredSnapshot, links_dir};
use kalamdb_log::snapshot_data::SnapshotData;

/// Run `f`, the apply of a storage job (a flush or compaction: tens of milliseconds to a
/// second of CPU), with the runtime's worker handed to another thread meanwhile. A 3-node
/// cluster on 2 cores runs one worker per node, and a 1 s compaction inside apply held every
/// other task of its node, heartbeats included: under a bulk load its followers timed out and
/// called elections (benches/RESULTS.md, session 26). On a current-thread runtime (tests) `f`
/// just runs.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reserve `n` ordinals of the entry for one row op; returns the first.
fn take_ordinals(ordinal: &mut u64, n: usize) -> u64 {
    let first = *ordinal;
    *ordinal += n as u64;
    first
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::new(&e)).into()
}

/// One group's state machine.
pub struct Projection {
    log_db: Arc<LogDb>,
    group: GroupId,
    catalog: Arc<Catalog>,
    env: Arc<StorageEnv>,
    applied: Option<LogId>,
    membership: StoredMembership,
    applied_tx: watch::Sender<u64>,
    snapshot_seq: u64,
    /// The file the snapshot being received is written to (by openraft, chunk by chunk).
    receiving: Option<PathBuf>,
    /// The group's apply format (`crate::format`) as applied so far, staged ops included: two
    /// raises in one batch must see each other. Atomic only because apply borrows `self`
    /// shared while the future is `Send`.
    format: AtomicU32,
}

impl Projection {
    /// Open the group's projection, loading its applied position (and the catalog for the
    /// catalog group) from the database.
    pub fn open(log_db: Arc<LogDb>, group: GroupId, catalog: Arc<Catalog>, env: Arc<StorageEnv>) -> Result<Projection> {
        std::fs::create_dir_all(&env.snapshot_dir)?;
        std::fs::create_dir_all(env.files.root())?;
        Installer { log_db: &log_db, env: &env, catalog: &catalog, group }.recover()?;
        let db = log_db.db().clone();
        let (applied, membership) = crate::sm::position_at(&db, None, group)?;
        crate::changes::upgrade_format(&db, group, applied.map_or(0, |l| l.index))?;
        if group == GroupId::Meta(MetaGroup::Catalog) {
            catalog.load(&db, group)?;
        }
        if group == GroupId::Meta(MetaGroup::Users) {
            catalog.users.load(&db, group)?;
        }
        let (applied_tx, _) = watch::channel(applied.map_or(0, |l| l.index));
        let format = AtomicU32::new(crate::format::load(&db, group)?);
        Ok(Projection {
            log_db,
            group,
            catalog,
            env,
            applied,
            membership,
            applied_tx,
            snapshot_seq: 0,
            receiving: None,
            format,
        })
    }

    /// Subscribe to the last applied index (for read-your-writes and linearizable reads).
    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn db(&self) -> &DB {
        self.log_db.db()
    }

    fn cold(&self) -> ColdGroup<'_> {
        ColdGroup { db: self.db(), files: &self.env.files, group: self.group }
    }

    fn snapshots(&self) -> SnapshotStore {
        SnapshotStore::new(&self.env.snapshot_dir, self.group)
    }

    fn stage_position(&self, batch: &mut WriteBatch) -> Result<()> {
        crate::sm::stage_position(self.db(), self.group, &self.applied, &self.membership, batch)
    }

    fn installer(&self) -> Installer<'_> {
        Installer { log_db: &self.log_db, env: &self.env, catalog: &self.catalog, group: self.group }
    }

    /// Apply one op of an entry. Takes the rows out of a row op (the values move into the
    /// stored versions and their changes instead of being copied); nothing reads them after.
    fn apply_op(
        &self,
        batch: &mut WriteBatch,
        rows: &mut RowApplier<'_>,
        op: &mut Op,
        log_index: u64,
        ordinal: &mut u64,
    ) -> Result<OpResult> {
        let is_catalog = self.group == GroupId::Meta(MetaGroup::Catalog);
        let is_users = self.group == GroupId::Meta(MetaGroup::Users);
        let is_data = matches!(self.group, GroupId::UserShard(_) | GroupId::SharedShard(_));
        let db = self.log_db.db();
        let kind = op.kind();
        let misrouted = || OpResult::Failed {
            code: ApplyErrorCode::ConstraintViolation,
            message: format!("{kind} op routed to group {}", self.group),
        };
        match op {
            Op::CreateNamespace { name, if_not_exists, created_at_micros } if is_catalog => {
                self.catalog.create_namespace(db, batch, self.group, name, *if_not_exists, *created_at_micros)
            }
            Op::DropNamespace { name, if_exists, cascade, expected } if is_catalog => {
                self.catalog.drop_namespace(db, batch, self.group, name, *if_exists, *cascade, expected)
            }
            Op::CreateTable { table, if_not_exists } if is_catalog => {
                self.catalog.create_table(db, batch, self.group, table, *if_not_exists, log_index)
            }
            Op::AlterTable { namespace, name, change, description, altered_at_micros, expected_version }
                if is_catalog =>
            {
                let alter = crate::catalog::AlterTable {
                    namespace,
                    name,
                    change,
                    description,
                    altered_at_micros: *altered_at_micros,
                    expected_version: *expected_version,
                };
                self.catalog.alter_table(db, batch, self.group, alter, log_index)
            }
            Op::DropTable { namespace, name, if_exists, expected_version } if is_catalog => {
                self.catalog.drop_table(db, batch, self.group, namespace, name, *if_exists, *expected_version)
            }
            Op::Insert { table_id, scope, rows: writes, schema_version } if is_data => {
                let first = take_ordinals(ordinal, writes.len());
                let r =
                    rows.insert(batch, *table_id, scope, std::mem::take(writes), *schema_version, log_index, first)?;
                self.count_hot(*table_id, &r);
                Ok(r)
            }
            Op::Update { table_id, scope, rows: writes, schema_version } if is_data => {
                // Ordinals before the rows are taken: they count them.
                let first = take_ordinals(ordinal, writes.len());
                let r = rows.rewrite(
                    batch,
                    *table_id,
                    scope,
                    std::mem::take(writes),
                    false,
                    *schema_version,
                    log_index,
                    first,
                )?;
                self.count_hot(*table_id, &r);
                Ok(r)
            }
            Op::Delete { table_id, scope, rows: writes, schema_version } if is_data => {
                // Ordinals before the rows are taken: they count them.
                let first = take_ordinals(ordinal, writes.len());
                let r = rows.rewrite(
                    batch,
                    *table_id,
                    scope,
                    std::mem::take(writes),
                    true,
                    *schema_version,
                    log_index,
                    first,
                )?;
                self.count_hot(*table_id, &r);
                Ok(r)
            }
            Op::Transaction { writes } if is_data => {
                // Ordinals are taken for every write whether the transaction applies or not, as
                // for any row op, so later ops' `_seq`s do not depend on the outcome.
                let firsts: Vec<u64> = writes.iter().map(|w| take_ordinals(ordinal, w.rows.len())).collect();
                if let Some(failure) = rows.check_transaction(writes)? {
                    // History replay (AS OF, REBUILD) reads this to skip the transaction: it
                    // cannot re-check preconditions on tables other than the one it rebuilds.
                    let first = firsts.first().copied().unwrap_or(*ordinal);
                    crate::refused::mark(db, batch, self.group, log_index, first)?;
                    return Ok(failure);
                }
                let mut affected = 0;
                for (w, first) in writes.iter_mut().zip(firsts) {
                    let taken = std::mem::take(&mut w.rows);
                    let r = match w.kind {
                        WriteKind::Insert => {
                            rows.insert(batch, w.table_id, &w.scope, taken, w.schema_version, log_index, first)?
                        }
                        WriteKind::Update => {
                            rows.rewrite(batch, w.table_id, &w.scope, taken, false, w.schema_version, log_index, first)?
                        }
                        WriteKind::Delete => {
                            rows.rewrite(batch, w.table_id, &w.scope, taken, true, w.schema_version, log_index, first)?
                        }
                    };
                    let OpResult::Done { affected: n } = r else {
                        panic!("group {}: transaction write failed after its check passed: {r:?}", self.group);
                    };
                    self.count_hot(w.table_id, &r);
                    affected += n;
                }
                Ok(OpResult::Done { affected })
            }
            Op::SchemaFloor { table_id, version } if is_data => rows.raise_floor(batch, *table_id, *version),
            Op::PurgeTable { table_id } if is_data => {
                self.env.flush_starts.forget_table(self.group, *table_id);
                ColdApplier::new(db, self.group, &self.env).purge(batch, *table_id, log_index)?;
                rows.purge_table(batch, *table_id)
            }
            Op::Flush { table, scope } if is_data => {
                let r = ColdApplier::new(db, self.group, &self.env).flush(batch, table, scope.as_deref(), log_index)?;
                // Rows written from here on are all the next whole flush needs to read (if this
                // batch fails to commit, `apply` forgets the group's starts).
                if scope.is_none() {
                    self.env.flush_starts.flushed(self.group, table.table_id);
                } else {
                    // It flushed rows a preparation of the table may hold.
                    self.env.flush_starts.unwatch(self.group, table.table_id);
                }
                Ok(r)
            }
            Op::PrepareFlush { table } if is_data => {
                // Changes no state: only this node's preparation starts (see `cold::prepared`).
                let start = self.env.flush_starts.start(self.group, table.table_id);
                let format = crate::format::load(db, self.group)?;
                let files = self.env.files.clone();
                if self.env.prepared.start(self.log_db.db().clone(), self.group, table, log_index, start, format, files)
                {
                    self.env.flush_starts.prepared(self.group, table.table_id, log_index);
                }
                Ok(OpResult::Done { affected: 0 })
            }
            Op::FlushUpto { table, upto } if is_data => {
                let upto = (*upto).min(log_index);
                let since = self.env.flush_starts.take_written(self.group, table.table_id, upto);
                let format = crate::format::load(db, self.group)?;
                let prepared = self.env.prepared.take(self.group, table, upto, format, since.as_ref());
                let read = if prepared.is_some() { "prepared" } else { "in_apply" };
                let r = ColdApplier::new(db, self.group, &self.env)
                    .flush_upto(batch, table, None, log_index, upto, prepared)?;
                // Counted once the flush's files and job record exist.
                metrics::counter!("kalamdb_storage_flushes_total", "read" => read).increment(1);
                self.env.flush_starts.flushed_upto(self.group, table.table_id, since.as_ref());
                Ok(r)
            }
            Op::Compact { table, scope } if is_data => {
                ColdApplier::new(db, self.group, &self.env).compact(batch, table, scope.as_deref(), log_index)
            }
            Op::Rebuild { table } if is_data => {
                // It rewrites hot rows at any key, outside the row ops that move flush starts.
                self.env.flush_starts.forget_table(self.group, table.table_id);
                match crate::history::rebuild_table(&self.log_db, self.cold(), batch, table, log_index) {
                    Err(Error::History(message)) => {
                        Ok(OpResult::Failed { code: ApplyErrorCode::HistoryUnavailable, message })
                    }
                    other => other,
                }
            }
            Op::Settle { table_id, scope } if is_data => {
                ColdApplier::new(db, self.group, &self.env).settle(batch, *table_id, scope)
            }
            Op::DeleteRetired { upto } if is_data => {
                ColdApplier::new(db, self.group, &self.env).delete_retired(batch, *upto)
            }
            Op::RequireNotNull { table, slot, required } if is_data => {
                rows.require_not_null(batch, &self.env.files, table, *slot, *required)
            }
            Op::CreateUser { user, if_not_exists } if is_users => {
                self.catalog.users.create(db, batch, self.group, user, *if_not_exists)
            }
            Op::AlterUser { username, password_hash, role, updated_at_micros } if is_users => self.catalog.users.alter(
                db,
                batch,
                self.group,
                username,
                password_hash.as_deref(),
                *role,
                *updated_at_micros,
            ),
            Op::DropUser { username, if_exists } if is_users => {
                self.catalog.users.drop_user(db, batch, self.group, username, *if_exists)
            }
            Op::Evict { table_id, before_seq } if is_data => rows.evict(batch, *table_id, *before_seq),
            Op::RevokeToken { token_id, user_id, expires_at_secs, now_secs } if is_users => {
                let revoked = crate::users::Revoked { user_id: user_id.clone(), expires_at_secs: *expires_at_secs };
                self.catalog.users.revoke(db, batch, self.group, token_id, revoked, *now_secs)
            }
            // Every group has a format, so this op is valid in all of them.
            Op::SetFormat { format } => {
                let current = self.format.load(Ordering::SeqCst);
                let now = crate::format::raise(db, batch, self.group, current, *format)?;
                if now != current {
                    tracing::info!(target: "kalamdb_raft", group = %self.group, from = current, to = now, log_index, "apply format raised");
                }
                self.format.store(now, Ordering::SeqCst);
                Ok(OpResult::Done { affected: 0 })
            }
            _ => Ok(misrouted()),
        }
    }

    /// After a flush: the table's scopes left to settle are for the group's leader to settle;
    /// when the flush settled everything itself (small scopes), the space goes back now.
    fn after_flush(&self, db: &Arc<DB>, table_id: u64, result: &OpResult) {
        match crate::cold::unsettled_scopes(db, self.group, table_id) {
            Ok(scopes) if scopes.is_empty() => self.env.reclaim.queue(db, self.group, table_id),
            Ok(_) => {
                if let OpResult::Done { affected } = result {
                    self.env.settles.flushed(self.group, table_id, *affected);
                }
                self.env.settles.mark(self.group, table_id)
            }
            Err(e) => {
                tracing::warn!(target: "kalamdb_storage", group = %self.group, error = %e, "cannot list scopes to settle");
                self.env.settles.mark(self.group, table_id);
            }
        }
    }

    /// Once a `Settle` has found a scope settled, give the space of its removed rows back (a
    /// table queued and not started yet is not queued twice).
    fn after_settle(&self, db: &Arc<DB>, table_id: u64, result: &OpResult) {
        if let OpResult::Settled { rows, more } = result {
            self.env.settles.settled(self.group, table_id, *rows);
            if !more {
                self.env.reclaim.queue(db, self.group, table_id);
            }
        }
    }

    fn count_hot(&self, table_id: u64, result: &OpResult) {
        if let OpResult::Done { affected } = result {
            self.env.hot.record(self.group, table_id, *affected);
        }
    }

    /// Replace the group's projection by the state stream in `file` at position `last` (restore
    /// from a backup; see `crate::install`). Blocking.
    pub fn install_state(
        &mut self,
        file: &mut std::fs::File,
        last: Option<LogId>,
        membership: StoredMembership,
    ) -> Result<()> {
        self.installer().install(file, last, membership.clone(), || Ok(()))?;
        self.format.store(crate::format::load(self.db(), self.group)?, Ordering::SeqCst);
        self.applied = last;
        self.membership = membership;
        self.applied_tx.send_replace(self.applied.map_or(0, |l| l.index));
        Ok(())
    }

    /// Write a batch with the current applied position in it, and publish the position.
    fn commit(&self, mut batch: WriteBatch) -> Result<()> {
        self.stage_position(&mut batch)?;
        // Not synced: the log holds every applied entry until a synced purge, and the WAL is
        // shared, so this batch is durable no later than the next log fsync.
        self.db().write(batch)?;
        self.applied_tx.send_replace(self.applied.map_or(0, |l| l.index));
        Ok(())
    }
}

/// Forgets a group's flush starts when dropped armed: an `apply` call that returns early with
/// an error (its batch maybe uncommitted) must not leave a start past a row it staged.
struct ForgetStartsOnError {
    env: Arc<StorageEnv>,
    group: GroupId,
    armed: bool,
}

impl ForgetStartsOnError {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ForgetStartsOnError {
    fn drop(&mut self) {
        if self.armed {
            self.env.flush_starts.forget_group(self.group);
            self.env.prepared.forget_group(self.group);
        }
    }
}

/// Observe, for each applied entry, the time since its leader stamped it
/// (`kalamdb_apply_lag_seconds`): proposal, fsync, replication, commit and apply. On a
/// follower the figure also holds the clock offset between the two nodes.
fn record_apply_lag(stamps: &[i64]) {
    let now = kalamdb_log::command::now_micros();
    for stamp in stamps.iter().filter(|s| **s > 0) {
        let lag_micros = now.saturating_sub(*stamp).max(0);
        metrics::histogram!("kalamdb_apply_lag_seconds").record(lag_micros as f64 / 1e6);
    }
}

impl RaftStateMachine<TypeConfig> for Projection {
    type SnapshotBuilder = ProjectionSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let db = self.log_db.db().clone();
        // Flush starts are learnt as ops are staged; a call that fails part way may leave
        // them ahead of what was committed, so they are dropped unless it succeeds.
        let starts_guard = ForgetStartsOnError { env: self.env.clone(), group: self.group, armed: true };
        let mut batch = WriteBatch::default();
        let mut rows = RowApplier::new(&db, self.group, &self.env.flush_starts);
        let mut responses = Vec::new();
        // Commit stamps of the entries in the batch, for the apply-lag histogram once they are
        // written (a wall-clock reading: it never reaches the projection's bytes).
        let mut stamps: Vec<i64> = Vec::new();
        for entry in entries {
            // A flush or compaction reads RocksDB directly and rewrites it wholesale: it gets a
            // batch of its own, after everything before it is committed.
            let mut cmd = match &entry.payload {
                EntryPayload::Normal(encoded) => Some(encoded.decode().map_err(|e| sm_err(ErrorVerb::Read, e))?),
                _ => None,
            };
            let storage_job = cmd.as_ref().is_some_and(|c| c.ops.iter().any(|op| op.is_storage_job()));
            if storage_job {
                self.commit(std::mem::take(&mut batch)).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                rows = RowApplier::new(&db, self.group, &self.env.flush_starts);
            }
            let index = entry.log_id.index;
            if let Some(applied) = self.applied {
                assert!(index > applied.index, "group {} applies index {index} after {}", self.group, applied.index);
            }
            let mut response = ApplyResponse::default();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(_) => {
                    let mut ordinal = 0u64;
                    let mut record = ChangeEntry {
                        committed_at_micros: cmd.as_ref().map_or(0, |c| c.committed_at_micros),
                        changes: Vec::new(),
                    };
                    for op in cmd.iter_mut().flat_map(|c| c.ops.iter_mut()) {
                        let result = if op.is_storage_job() {
                            off_worker(|| self.apply_op(&mut batch, &mut rows, op, index, &mut ordinal))
                        } else {
                            self.apply_op(&mut batch, &mut rows, op, index, &mut ordinal)
                        }
                        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                        record.changes.append(&mut rows.changes);
                        record.changes.extend(op_change(op, &result, &self.catalog));
                        response.results.push(result);
                    }
                    stamps.push(record.committed_at_micros);
                    crate::changes::stage(&db, &mut batch, self.group, index, record)
                        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            self.applied = Some(entry.log_id);
            responses.push(response);
            if storage_job {
                // A `PrepareFlush` commits nothing of a flush: the crash points are its `FlushUpto`'s.
                let flushing = cmd.iter().flat_map(|c| c.ops.iter()).any(|op| !matches!(op, Op::PrepareFlush { .. }));
                if flushing {
                    crate::failpoint::hit("flush-before-commit");
                }
                self.commit(std::mem::take(&mut batch)).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                if flushing {
                    crate::failpoint::hit("flush-after-commit");
                }
                for (op, result) in
                    cmd.iter().flat_map(|c| c.ops.iter()).zip(&responses.last().expect("pushed above").results)
                {
                    match op {
                        Op::Flush { table, .. } | Op::FlushUpto { table, .. } => {
                            self.after_flush(&db, table.table_id, result)
                        }
                        Op::Settle { table_id, .. } => self.after_settle(&db, *table_id, result),
                        _ => {}
                    }
                }
                rows = RowApplier::new(&db, self.group, &self.env.flush_starts);
            }
        }
        self.commit(batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        starts_guard.disarm();
        record_apply_lag(&stamps);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        ProjectionSnapshotBuilder {
            log_db: self.log_db.clone(),
            env: self.env.clone(),
            group: self.group,
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        let path = self.snapshots().receiving().map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        self.receiving = Some(path);
        Ok(Box::new(SnapshotData::File(file)))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let mut received = self.receiving.take();
        let file = match *snapshot {
            SnapshotData::File(file) => file.into_std().await,
            // A stored snapshot handed over as it is (not received through
            // `begin_receiving_snapshot`): its stream is copied into a file of its own first.
            mut stored @ SnapshotData::Pieces(_) => {
                use tokio::io::AsyncSeekExt;
                let path = self.snapshots().receiving().map_err(|e| snap_err(ErrorVerb::Write, e))?;
                let copy = async {
                    let mut file = tokio::fs::File::create_new(&path).await?;
                    stored.seek(std::io::SeekFrom::Start(0)).await?;
                    tokio::io::copy(&mut stored, &mut file).await?;
                    Ok::<_, std::io::Error>(file.into_std().await)
                };
                let file = copy.await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
                received = Some(path);
                file
            }
        };
        let (log_db, env, catalog, group, owned_meta) =
            (self.log_db.clone(), self.env.clone(), self.catalog.clone(), self.group, meta.clone());
        // Off the async runtime: checking and writing a large state takes a while.
        let installed = tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut file = file;
            let store = SnapshotStore::new(&env.snapshot_dir, group);
            // The received file becomes this node's current snapshot as it is; a snapshot handed
            // over without `begin_receiving_snapshot` is copied into a file of its own first.
            let received = received.ok_or_else(|| Error::Snapshot("a received snapshot without its file".into()))?;
            let bytes = file.metadata()?.len();
            let installer = Installer { log_db: &log_db, env: &env, catalog: &catalog, group };
            installer.install(&mut file, owned_meta.last_log_id, owned_meta.last_membership.clone(), || {
                let current = store.publish(&received, &owned_meta, Vec::new())?;
                if current.meta.last_log_id != owned_meta.last_log_id {
                    return Err(Error::Snapshot(format!(
                        "a snapshot at {:?} is current; refusing to install the older one at {:?}",
                        current.meta.last_log_id, owned_meta.last_log_id
                    )));
                }
                Ok(())
            })?;
            Ok(bytes)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?;
        let bytes = installed.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let format = crate::format::load(self.db(), self.group).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        self.format.store(format, Ordering::SeqCst);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.applied_tx.send_replace(self.applied.map_or(0, |l| l.index));
        tracing::info!(target: "kalamdb_raft", group = %self.group, last_log_id = ?meta.last_log_id, bytes, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        open_current(&self.snapshots())
    }
}

/// The current snapshot as openraft reads it: its meta and its stream, every file open. A
/// build or install may publish a newer snapshot, and unlink this one's files, between reading
/// the meta and opening them: then the newer one is read instead.
fn open_current(store: &SnapshotStore) -> Result<Option<Snapshot>, StorageError> {
    let mut attempts = 0;
    loop {
        let Some(stored) = store.current().map_err(|e| snap_err(ErrorVerb::Read, e))? else {
            return Ok(None);
        };
        match stored.pieces() {
            Ok(pieces) => {
                return Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(SnapshotData::pieces(pieces)) }));
            }
            Err(Error::Io(e))
                if e.kind() == std::io::ErrorKind::NotFound && attempts < CURRENT_SNAPSHOT_ATTEMPTS_MAX =>
            {
                attempts += 1;
            }
            Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
        }
    }
}

/// Times the current snapshot is read again when a newer one replaced it while it was opened.
const CURRENT_SNAPSHOT_ATTEMPTS_MAX: u32 = 3;

/// How long a snapshot build waits for a state install of its group to finish.
const INSTALL_WAIT: std::time::Duration = std::time::Duration::from_secs(1800);

/// Builds a snapshot beside apply: from a RocksDB snapshot (records and the position they were
/// applied at read together), on a blocking thread, with the group's files pinned meanwhile.
#[derive(Clone)]
pub struct ProjectionSnapshotBuilder {
    log_db: Arc<LogDb>,
    env: Arc<StorageEnv>,
    group: GroupId,
    seq: u64,
}

impl ProjectionSnapshotBuilder {
    fn build_file(&self) -> Result<StoredSnapshot> {
        let db = self.log_db.db();
        let _pin = self.env.pins.pin(self.group, crate::sm::applied_index(db, self.group)?);
        // A state install may be half done (its batches are not one write): wait it out.
        let deadline = std::time::Instant::now() + INSTALL_WAIT;
        let snap = loop {
            let snap = db.snapshot();
            if !crate::install::installing_at(db, &snap, self.group)? {
                break snap;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Snapshot(format!("group {} is still installing a state", self.group)));
            }
            drop(snap);
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let (applied, membership) = crate::sm::position_at(db, Some(&snap), self.group)?;
        let store = SnapshotStore::new(&self.env.snapshot_dir, self.group);
        let path = store.building()?;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let at = ColdGroup { db, files: &self.env.files, group: self.group };
        let linked = export_linked(at, &snap, &mut out, &links_dir(&path))?;
        out.into_inner().map_err(|e| Error::Snapshot(format!("snapshot file: {e}")))?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}-{}", self.group, l.leader_id.term, l.index, self.seq),
            None => format!("{}-0-0-{}", self.group, self.seq),
        };
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
        store.publish(&path, &meta, linked)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ProjectionSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let builder = self.clone();
        let built = tokio::task::spawn_blocking(move || builder.build_file())
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?;
        built.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        // What was just published, or a newer snapshot that replaced it meanwhile.
        let store = SnapshotStore::new(&self.env.snapshot_dir, self.group);
        open_current(&store)?.ok_or_else(|| snap_err(ErrorVerb::Read, Error::Snapshot("no current snapshot".into())))
    }
}

/// The change an op makes beyond rows (those the row applier records): DDL and storage jobs.
/// Failed and skipped ops change nothing.
fn op_change(op: &Op, result: &OpResult, catalog: &Catalog) -> Option<Change> {
    let done = matches!(result, OpResult::Done { .. } | OpResult::TableCreated { .. } | OpResult::Dropped { .. });
    if !done {
        return None;
    }
    let affected = match result {
        OpResult::Done { affected } => *affected,
        _ => 0,
    };
    match op {
        Op::CreateNamespace { name, .. } => Some(Change::ddl(0, name, format!("CREATE NAMESPACE {name}"))),
        Op::DropNamespace { name, cascade, .. } => {
            let suffix = if *cascade { " CASCADE" } else { "" };
            Some(Change::ddl(0, name, format!("DROP NAMESPACE {name}{suffix}")))
        }
        Op::CreateTable { table, .. } => {
            let table_id = match result {
                OpResult::TableCreated { table_id } => *table_id,
                _ => table.table_id,
            };
            let kind = table.table_type.api_name();
            Some(Change::ddl(
                table_id,
                &table.namespace,
                format!("CREATE {kind} TABLE {}.{}", table.namespace, table.name),
            ))
        }
        Op::DropTable { namespace, name, .. } => {
            let table_id = match result {
                OpResult::Dropped { table_ids } => table_ids.first().copied().unwrap_or(0),
                _ => 0,
            };
            Some(Change::ddl(table_id, namespace, format!("DROP TABLE {namespace}.{name}")))
        }
        Op::AlterTable { namespace, name, description, .. } => {
            let table_id = catalog.table(namespace, name).map_or(0, |t| t.table_id);
            Some(Change::ddl(table_id, namespace, format!("ALTER TABLE {namespace}.{name} {description}")))
        }
        Op::PurgeTable { table_id } => Some(Change::ddl(*table_id, "", "table dropped: rows purged".into())),
        Op::Flush { table, scope } | Op::Compact { table, scope } => {
            let verb = if matches!(op, Op::Flush { .. }) { "FLUSH" } else { "COMPACT" };
            let mut c = Change::ddl(table.table_id, &table.namespace, format!("{verb}: {affected} rows"));
            c.kind = ChangeKind::Flush;
            c.scope = scope.clone().unwrap_or_default();
            Some(c)
        }
        // The same change as the `Flush` it stands for; its preparation is none.
        Op::FlushUpto { table, .. } => {
            let mut c = Change::ddl(table.table_id, &table.namespace, format!("FLUSH: {affected} rows"));
            c.kind = ChangeKind::Flush;
            Some(c)
        }
        _ => None,
    }
}
