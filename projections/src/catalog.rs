//! The catalog projection: namespaces and tables, persisted in the `catalog` column family of
//! the catalog meta group and mirrored in memory for the query layer.
//!
//! Keys: `group | 'n' | namespace` → [`NamespaceRecord`] JSON, `group | 't' | ns \0 name` →
//! [`TableDef`] JSON, `group | 'i'` → next table id (u64 BE). Table ids are never reused, so rows
//! left behind by a dropped table can never reappear under a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use kalamdb_log::command::ApplyErrorCode;
use kalamdb_log::{ColumnDef, GroupId, OpResult, PriorColumn, SchemaVersion, TableChange, TableDef};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::CF_CATALOG;
use crate::error::{Error, Result};
use crate::keys::prefix_end;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub created_at_micros: i64,
}

#[derive(Debug, Default, Clone)]
pub struct CatalogState {
    pub namespaces: BTreeMap<String, NamespaceRecord>,
    /// (namespace, table) → definition.
    pub tables: BTreeMap<(String, String), Arc<TableDef>>,
    pub by_id: HashMap<u64, Arc<TableDef>>,
    pub next_table_id: u64,
}

/// The node's in-memory view of the catalog. Written only by the catalog group's apply
/// (namespaces and tables) and the users group's apply (`users`).
#[derive(Debug, Default)]
pub struct Catalog {
    state: RwLock<CatalogState>,
    /// Bumped by every apply that takes the state for writing: a statement planned on this
    /// replica without a read barrier learns from it whether the barrier brought news.
    changes: std::sync::atomic::AtomicU64,
    pub users: crate::users::Users,
}

/// The catalog state held for writing. Counts the change when released, after the state
/// changed and while still locked: a statement that reads the new count and then the state
/// waits for the lock and sees the new state (the other order would let it see the new count
/// with the old state, and take a stale answer for a current one).
struct CatalogWrite<'a> {
    state: std::sync::RwLockWriteGuard<'a, CatalogState>,
    changes: &'a std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for CatalogWrite<'_> {
    type Target = CatalogState;
    fn deref(&self) -> &CatalogState {
        &self.state
    }
}

impl std::ops::DerefMut for CatalogWrite<'_> {
    fn deref_mut(&mut self) -> &mut CatalogState {
        &mut self.state
    }
}

impl Drop for CatalogWrite<'_> {
    fn drop(&mut self) {
        self.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn ns_key(group: GroupId, ns: &str) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(b'n');
    k.extend_from_slice(ns.as_bytes());
    k
}

fn table_key(group: GroupId, ns: &str, name: &str) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(b't');
    k.extend_from_slice(ns.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn next_id_key(group: GroupId) -> Vec<u8> {
    let mut k = group.prefix().to_vec();
    k.push(b'i');
    k
}

fn failed(code: ApplyErrorCode, message: String) -> OpResult {
    OpResult::Failed { code, message }
}

impl Catalog {
    pub fn new() -> Arc<Catalog> {
        Arc::new(Catalog::default())
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, CatalogState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> CatalogWrite<'_> {
        CatalogWrite { state: self.state.write().unwrap_or_else(|p| p.into_inner()), changes: &self.changes }
    }

    /// How many times apply changed (or may have changed) namespaces and tables so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn table(&self, ns: &str, name: &str) -> Option<Arc<TableDef>> {
        self.read().tables.get(&(ns.to_string(), name.to_string())).cloned()
    }

    pub fn table_by_id(&self, id: u64) -> Option<Arc<TableDef>> {
        self.read().by_id.get(&id).cloned()
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.read().namespaces.contains_key(ns)
    }

    /// Reload the in-memory view from the catalog group's column family.
    pub fn load(&self, db: &DB, group: GroupId) -> Result<()> {
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let mut state = CatalogState { next_table_id: 1, ..Default::default() };
        let prefix = group.prefix();
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(prefix_end(&prefix));
        for item in db.iterator_cf_opt(cf, opts, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let (k, v) = item?;
            match k.get(4) {
                Some(b'n') => {
                    let ns: NamespaceRecord = serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
                    state.namespaces.insert(ns.name.clone(), ns);
                }
                Some(b't') => {
                    let t: TableDef = serde_json::from_slice(&v).map_err(|e| Error::Corrupt(e.to_string()))?;
                    let t = Arc::new(t);
                    state.by_id.insert(t.table_id, t.clone());
                    state.tables.insert((t.namespace.clone(), t.name.clone()), t);
                }
                Some(b'i') => {
                    let b: [u8; 8] = v.as_ref().try_into().map_err(|_| Error::Corrupt("bad next id".into()))?;
                    state.next_table_id = u64::from_be_bytes(b);
                }
                Some(&crate::format::KEY_FORMAT) => {}
                _ => return Err(Error::Corrupt("unknown catalog key".into())),
            }
        }
        *self.write() = state;
        Ok(())
    }

    pub fn create_namespace(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        name: &str,
        if_not_exists: bool,
        created_at_micros: i64,
    ) -> Result<OpResult> {
        let mut st = self.write();
        if st.namespaces.contains_key(name) {
            return Ok(if if_not_exists {
                OpResult::Skipped
            } else {
                failed(ApplyErrorCode::AlreadyExists, format!("Namespace '{name}' already exists"))
            });
        }
        let rec = NamespaceRecord { name: name.to_string(), created_at_micros };
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        batch.put_cf(cf, ns_key(group, name), serde_json::to_vec(&rec).map_err(|e| Error::Corrupt(e.to_string()))?);
        st.namespaces.insert(name.to_string(), rec);
        Ok(OpResult::Done { affected: 1 })
    }

    pub fn drop_namespace(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        name: &str,
        if_exists: bool,
        cascade: bool,
        expected: &[(u64, u32)],
    ) -> Result<OpResult> {
        let mut st = self.write();
        if !st.namespaces.contains_key(name) {
            return Ok(if if_exists {
                OpResult::Skipped
            } else {
                failed(ApplyErrorCode::NamespaceNotFound, format!("Namespace '{name}' does not exist"))
            });
        }
        let tables: Vec<Arc<TableDef>> = st.tables.values().filter(|t| t.namespace == name).cloned().collect();
        if !tables.is_empty() && !cascade {
            return Ok(failed(
                ApplyErrorCode::NamespaceNotEmpty,
                format!("Namespace '{name}' has {} table(s); use DROP NAMESPACE {name} CASCADE", tables.len()),
            ));
        }
        // The proposer fenced exactly these tables at these versions (see `Op::DropNamespace`).
        let unfenced = tables.len() != expected.len()
            || tables.iter().any(|t| !expected.contains(&(t.table_id, t.schema_version())));
        if unfenced {
            return Ok(failed(
                ApplyErrorCode::Conflict,
                format!("Namespace '{name}' changed while it was being dropped; nothing was dropped, try again"),
            ));
        }
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let mut table_ids = Vec::with_capacity(tables.len());
        for t in tables {
            batch.delete_cf(cf, table_key(group, &t.namespace, &t.name));
            st.tables.remove(&(t.namespace.clone(), t.name.clone()));
            st.by_id.remove(&t.table_id);
            table_ids.push(t.table_id);
        }
        batch.delete_cf(cf, ns_key(group, name));
        st.namespaces.remove(name);
        Ok(OpResult::Dropped { table_ids })
    }

    pub fn create_table(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        table: &TableDef,
        if_not_exists: bool,
        log_index: u64,
    ) -> Result<OpResult> {
        let mut st = self.write();
        if !st.namespaces.contains_key(&table.namespace) {
            return Ok(failed(
                ApplyErrorCode::NamespaceNotFound,
                format!("Namespace '{}' does not exist", table.namespace),
            ));
        }
        let key = (table.namespace.clone(), table.name.clone());
        if st.tables.contains_key(&key) {
            return Ok(if if_not_exists {
                OpResult::Skipped
            } else {
                failed(
                    ApplyErrorCode::AlreadyExists,
                    format!("Table '{}.{}' already exists", table.namespace, table.name),
                )
            });
        }
        let table_id = st.next_table_id.max(1);
        let mut def = table.clone();
        def.table_id = table_id;
        def.versions = vec![SchemaVersion {
            version: 1,
            log_index,
            change: "CREATE TABLE".into(),
            at_micros: table.created_at_micros,
            prior: None,
        }];
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let bytes = serde_json::to_vec(&def).map_err(|e| Error::Corrupt(e.to_string()))?;
        batch.put_cf(cf, table_key(group, &def.namespace, &def.name), bytes);
        batch.put_cf(cf, next_id_key(group), (table_id + 1).to_be_bytes());
        st.next_table_id = table_id + 1;
        let def = Arc::new(def);
        st.by_id.insert(table_id, def.clone());
        st.tables.insert(key, def);
        Ok(OpResult::TableCreated { table_id })
    }

    pub fn drop_table(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        ns: &str,
        name: &str,
        if_exists: bool,
        expected_version: u32,
    ) -> Result<OpResult> {
        let mut st = self.write();
        let key = (ns.to_string(), name.to_string());
        // 0: the proposer found no table (and fenced none), so one created since is kept.
        if let Some(def) = st.tables.get(&key)
            && def.schema_version() != expected_version
        {
            return Ok(failed(
                ApplyErrorCode::Conflict,
                format!("Table '{ns}.{name}' changed while it was being dropped; nothing was dropped, try again"),
            ));
        }
        let Some(def) = st.tables.remove(&key) else {
            return Ok(if if_exists {
                OpResult::Skipped
            } else if !st.namespaces.contains_key(ns) {
                failed(ApplyErrorCode::NamespaceNotFound, format!("Namespace '{ns}' does not exist"))
            } else {
                failed(ApplyErrorCode::TableNotFound, format!("Table '{ns}.{name}' does not exist"))
            });
        };
        st.by_id.remove(&def.table_id);
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        batch.delete_cf(cf, table_key(group, ns, name));
        Ok(OpResult::Dropped { table_ids: vec![def.table_id] })
    }

    /// Apply one `ALTER TABLE`: the changed definition replaces the old one and records a new
    /// schema version at `log_index`. Checked again here (the proposer checked it against the
    /// catalog it saw), so every replica refuses or applies the same change.
    pub fn alter_table(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
        group: GroupId,
        alter: AlterTable<'_>,
        log_index: u64,
    ) -> Result<OpResult> {
        let mut st = self.write();
        let key = (alter.namespace.to_string(), alter.name.to_string());
        let Some(current) = st.tables.get(&key) else {
            let (ns, name) = (alter.namespace, alter.name);
            return Ok(if !st.namespaces.contains_key(ns) {
                failed(ApplyErrorCode::NamespaceNotFound, format!("Namespace '{ns}' does not exist"))
            } else {
                failed(ApplyErrorCode::TableNotFound, format!("Table '{ns}.{name}' does not exist"))
            });
        };
        if alter.expected_version != 0 && current.schema_version() != alter.expected_version {
            return Ok(failed(
                ApplyErrorCode::Conflict,
                format!(
                    "Table '{}.{}' changed while this ALTER TABLE ran (schema version {}, not {}); nothing was \
                     altered, try again",
                    alter.namespace,
                    alter.name,
                    current.schema_version(),
                    alter.expected_version
                ),
            ));
        }
        let mut def = TableDef::clone(current);
        match alter.change {
            TableChange::Bump => {}
            TableChange::SetOptions { options } => {
                for (k, v) in options {
                    match def.options.iter_mut().find(|(key, _)| key == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => def.options.push((k.clone(), v.clone())),
                    }
                }
            }
            TableChange::SetDefault { column, default } => {
                let c = match visible_mut(&mut def, column) {
                    Ok(c) => c,
                    Err(failure) => return Ok(failure),
                };
                c.default = default.clone();
            }
            TableChange::RenameColumn { from, to } => {
                if def.column_index(to).is_some() {
                    return Ok(failed(
                        ApplyErrorCode::AlreadyExists,
                        format!("column '{to}' already exists in {}.{}", def.namespace, def.name),
                    ));
                }
                let c = match visible_mut(&mut def, from) {
                    Ok(c) => c,
                    Err(failure) => return Ok(failure),
                };
                // The name files know it by stays: they are never rewritten for a rename.
                if c.stored_as.is_empty() {
                    c.stored_as = c.name.clone();
                }
                c.name = to.clone();
                if c.stored_as == c.name {
                    c.stored_as.clear();
                }
            }
            TableChange::AddColumn { column } => {
                let taken = def.column_index(&column.name).is_some();
                let stored = def.columns.iter().any(|c| c.storage_name() == column.storage_name());
                if taken || stored {
                    return Ok(failed(
                        ApplyErrorCode::AlreadyExists,
                        format!("column '{}' already exists in {}.{}", column.name, def.namespace, def.name),
                    ));
                }
                def.columns.push(column.clone());
            }
            TableChange::DropColumn { column } => match non_key_mut(&mut def, column, "cannot be dropped") {
                Ok(c) => c.dropped = true,
                Err(failure) => return Ok(failure),
            },
            TableChange::SetType { column, data_type } => {
                let c = match visible_mut(&mut def, column) {
                    Ok(c) => c,
                    Err(failure) => return Ok(failure),
                };
                if c.primary_key || !c.data_type.widens_to(*data_type) {
                    return Ok(failed(
                        ApplyErrorCode::ConstraintViolation,
                        format!("column '{column}' cannot change from {:?} to {data_type:?}", c.data_type),
                    ));
                }
                c.data_type = *data_type;
            }
            TableChange::DropNotNull { column } => match non_key_mut(&mut def, column, "is always NOT NULL") {
                Ok(c) => c.nullable = true,
                Err(failure) => return Ok(failure),
            },
            TableChange::SetNotNull { column } => match non_key_mut(&mut def, column, "is always NOT NULL") {
                Ok(c) => c.nullable = false,
                Err(failure) => return Ok(failure),
            },
        }
        let version = def.versions.last().map_or(1, |v| v.version) + 1;
        def.versions.push(SchemaVersion {
            version,
            log_index,
            change: alter.description.to_string(),
            at_micros: alter.altered_at_micros,
            prior: prior_column(current, &def),
        });
        let cf = db.cf_handle(CF_CATALOG).ok_or_else(|| Error::Corrupt("no catalog cf".into()))?;
        let bytes = serde_json::to_vec(&def).map_err(|e| Error::Corrupt(e.to_string()))?;
        batch.put_cf(cf, table_key(group, &def.namespace, &def.name), bytes);
        let def = Arc::new(def);
        st.by_id.insert(def.table_id, def.clone());
        st.tables.insert(key, def);
        Ok(OpResult::Done { affected: 1 })
    }
}

/// The column a change altered, as `before` had it: the first slot that differs, or the
/// appended one. At most one column changes per `ALTER TABLE`.
fn prior_column(before: &TableDef, after: &TableDef) -> Option<PriorColumn> {
    if after.columns.len() > before.columns.len() {
        return Some(PriorColumn { slot: before.columns.len() as u32, column: None });
    }
    let slot = before.columns.iter().zip(&after.columns).position(|(b, a)| b != a)?;
    Some(PriorColumn { slot: slot as u32, column: Some(before.columns[slot].clone()) })
}

/// The column statements call `name`, for a change; or the op's failure.
fn visible_mut<'a>(def: &'a mut TableDef, name: &str) -> std::result::Result<&'a mut ColumnDef, OpResult> {
    let table = format!("{}.{}", def.namespace, def.name);
    def.columns.iter_mut().find(|c| !c.dropped && c.name == name).ok_or_else(|| {
        failed(ApplyErrorCode::ConstraintViolation, format!("column '{name}' does not exist in {table}"))
    })
}

/// Like [`visible_mut`], for changes the primary key refuses: `why` ends the refusal.
fn non_key_mut<'a>(def: &'a mut TableDef, name: &str, why: &str) -> std::result::Result<&'a mut ColumnDef, OpResult> {
    let c = visible_mut(def, name)?;
    if c.primary_key {
        return Err(failed(
            ApplyErrorCode::ConstraintViolation,
            format!("column '{name}' is the primary key and {why}"),
        ));
    }
    Ok(c)
}

/// The parts of an `Op::AlterTable` the catalog applies.
#[derive(Debug, Clone, Copy)]
pub struct AlterTable<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub change: &'a TableChange,
    pub description: &'a str,
    pub altered_at_micros: i64,
    /// The schema version the proposer changed (0: not checked).
    pub expected_version: u32,
}
