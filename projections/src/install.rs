//! Installing a group's state from a state stream (a received snapshot, a backup's state
//! file). The stream is checked whole first; then an *installing* marker is written (synced),
//! the records go in bounded batches and the last batch sets the new position and removes the
//! marker. Memory stays bounded whatever the group's size, and a restart that finds the marker
//! redoes the install from the current snapshot (published before the marker), so a crash
//! mid-install never leaves a half-replaced projection in use. While an install runs, local
//! reads of the group are refused (`StorageEnv::installing`); linearizable reads wait anyway,
//! as the applied index moves only with the last batch.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use kalamdb_log::types::{LogId, StoredMembership};
use kalamdb_log::{GroupId, LogDb, MetaGroup};
use rocksdb::{WriteBatch, WriteOptions};

use crate::catalog::Catalog;
use crate::cold::{ColdGroup, StorageEnv};
use crate::error::{Error, Result};
use crate::sm::{KEY_INSTALLING, position_at, sm_cf, sm_key, stage_position};
use crate::snapshot::{check_stream, import_group};
use crate::snapshot_store::SnapshotStore;

/// What an install touches: the node's database, storage and catalog, and the group.
pub(crate) struct Installer<'a> {
    pub log_db: &'a LogDb,
    pub env: &'a StorageEnv,
    pub catalog: &'a Catalog,
    pub group: GroupId,
}

impl Installer<'_> {
    /// Run `before` (a snapshot install publishes the received file there, as early as it can:
    /// openraft may purge the log up to the new snapshot before the install is done, and a
    /// restart then redoes the install from it, see [`Installer::recover`]), check the stream in
    /// `file`, mark the install and write it.
    pub fn install(
        &self,
        file: &mut File,
        last: Option<LogId>,
        membership: StoredMembership,
        before: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        before()?;
        file.seek(SeekFrom::Start(0))?;
        check_stream(&mut BufReader::new(&mut *file))?;
        self.mark(last)?;
        file.seek(SeekFrom::Start(0))?;
        self.install_marked(&mut *file, last, membership)
    }

    /// Write the installing marker for `last`, synced.
    fn mark(&self, last: Option<LogId>) -> Result<()> {
        let db = self.log_db.db();
        let sm = sm_cf(db)?;
        let marker = serde_json::to_vec(&last).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        db.put_cf_opt(sm, sm_key(self.group, KEY_INSTALLING), marker, &synced)?;
        Ok(())
    }

    /// Write the (checked) stream `input` over the group, the marker being set.
    fn install_marked(&self, input: impl Read, last: Option<LogId>, membership: StoredMembership) -> Result<()> {
        // Stays set if this fails: the group is half installed until a restart redoes it.
        self.env.installing.set(self.group, true);
        // Hot rows are replaced here without row ops: flushes read whole until they learn again.
        self.env.flush_starts.forget_group(self.group);
        self.env.prepared.forget_group(self.group);
        let db = self.log_db.db();
        let at = ColdGroup { db, files: &self.env.files, group: self.group };
        let mut input = BufReader::new(input);
        let mut batch = import_group(at, &mut input, |b: WriteBatch| {
            db.write(b)?;
            crate::failpoint::hit("install-after-batch");
            Ok(())
        })?;
        // The entries the state covers were never applied here: their change records cannot
        // exist, so the tail of this node starts after it.
        let new_floor = last.map_or(0, |l| l.index).saturating_add(1);
        if new_floor > crate::changes::floor(db, self.group)? {
            crate::changes::stage_trim(db, &mut batch, self.group, new_floor)?;
        }
        stage_position(db, self.group, &last, &membership, &mut batch)?;
        let sm = sm_cf(db)?;
        batch.delete_cf(sm, sm_key(self.group, KEY_INSTALLING));
        crate::failpoint::hit("install-before-commit");
        db.write(batch)?;
        self.log_db.sync_wal()?;
        if self.group == GroupId::Meta(MetaGroup::Catalog) {
            self.catalog.load(db, self.group)?;
        }
        if self.group == GroupId::Meta(MetaGroup::Users) {
            self.catalog.users.load(db, self.group)?;
        }
        self.env.installing.set(self.group, false);
        Ok(())
    }

    /// At open: finish an install a crash interrupted, from the current snapshot. Either the
    /// marker names it, or there is no marker yet but openraft already purged the log past the
    /// applied position (it purges as it hands the install over); the current snapshot was
    /// published before either. Returns whether there was one.
    pub fn recover(&self) -> Result<bool> {
        let db = self.log_db.db();
        let sm = sm_cf(db)?;
        let marker: Option<Option<LogId>> = match db.get_pinned_cf(sm, sm_key(self.group, KEY_INSTALLING))? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt(e.to_string()))?),
            None => None,
        };
        let (applied, _) = position_at(db, None, self.group)?;
        let purged = self.log_db.last_purged(self.group)?;
        let index = |l: Option<LogId>| l.map(|l| l.index);
        let behind_purge = index(purged) > index(applied);
        if marker.is_none() && !behind_purge {
            return Ok(false);
        }
        let current = SnapshotStore::new(&self.env.snapshot_dir, self.group).current()?;
        let usable = match (&current, marker) {
            (Some(stored), Some(target)) => stored.meta.last_log_id == target,
            (Some(stored), None) => index(stored.meta.last_log_id) >= index(purged),
            (None, _) => false,
        };
        let Some(stored) = current.filter(|_| usable) else {
            return Err(Error::Snapshot(format!(
                "group {}: its projection is at {applied:?}, an install of {marker:?} did not finish and the log is \
                 purged to {purged:?}, but no snapshot covers it; move this node's data folder away and let it \
                 rejoin (or restore it again)",
                self.group
            )));
        };
        let meta = &stored.meta;
        tracing::warn!(target: "kalamdb_raft", group = %self.group, last_log_id = ?meta.last_log_id, "finishing a state install a crash interrupted");
        if marker.is_none() {
            self.mark(meta.last_log_id)?;
        }
        // The current snapshot's stream, whichever way it is stored (received whole, or built
        // with its cold files linked beside it).
        let stream = stored.pieces()?.reader();
        self.install_marked(stream, meta.last_log_id, meta.last_membership.clone())?;
        Ok(true)
    }
}

/// Whether the RocksDB snapshot `snap` holds a half-installed state of `group` (a reader of
/// whole groups, a snapshot build or a backup, must not copy it).
pub fn installing_at(db: &rocksdb::DB, snap: &rocksdb::Snapshot<'_>, group: GroupId) -> Result<bool> {
    let sm = sm_cf(db)?;
    Ok(snap.get_pinned_cf(sm, sm_key(group, KEY_INSTALLING))?.is_some())
}
