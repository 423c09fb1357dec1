//! What a reader sees of cold storage: the live files of a table scope, the superseded
//! versions to skip, and the files a primary-key range can touch.

use super::*;

pub(crate) fn iter_prefix<'a>(
    db: &'a DB,
    cf: &rocksdb::ColumnFamily,
    prefix: &[u8],
) -> impl Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a {
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(prefix_end(prefix));
    db.iterator_cf_opt(cf, opts, IteratorMode::From(prefix, Direction::Forward))
}

/// Every cold record of a table in a group except its key stubs (and its superseded markers
/// unless `with_markers`), in key order. A table has a stub per flushed key (millions), up to
/// a marker per superseded version, and a few files and heads per scope: each skipped range
/// costs one seek, so the cost follows the records wanted, not the rows.
pub(crate) fn table_records(
    db: &DB,
    group: GroupId,
    table_id: u64,
    with_markers: bool,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let cold = cf(db, CF_COLD)?;
    let prefix = table_prefix(group, table_id);
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(prefix_end(&prefix));
    let mut it = db.raw_iterator_cf_opt(cold, opts);
    it.seek(&prefix);
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        let (_, rest) = split_scope(k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        let skip = match rest.first() {
            Some(&KIND_STUB) => Some(KIND_STUB),
            Some(&KIND_SUPERSEDED) if !with_markers => Some(KIND_SUPERSEDED),
            _ => None,
        };
        if let Some(kind) = skip {
            let past = cold_key(&k[..k.len() - rest.len()], kind + 1, &[]);
            it.seek(&past);
            continue;
        }
        out.push((k.to_vec(), v.to_vec()));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// The manifest of one scope: every file record, in file-number order.
pub fn scope_files(db: &DB, scope_prefix: &[u8]) -> Result<Vec<FileMeta>> {
    let cold = cf(db, CF_COLD)?;
    let prefix = cold_key(scope_prefix, KIND_FILE, &[]);
    iter_prefix(db, cold, &prefix).map(|item| unjson::<FileMeta>(&item?.1)).collect()
}

pub fn scope_head(db: &DB, scope_prefix: &[u8]) -> Result<ScopeHead> {
    Ok(stored_head(db, scope_prefix)?.unwrap_or_default())
}

/// The scope's head record; `None` for a scope never flushed (or whose table was dropped).
pub fn stored_head(db: &DB, scope_prefix: &[u8]) -> Result<Option<ScopeHead>> {
    let cold = cf(db, CF_COLD)?;
    db.get_pinned_cf(cold, cold_key(scope_prefix, KIND_HEAD, &[]))?.map(|b| unjson(&b)).transpose()
}

/// Bounds on the primary key for a hot-tier scan: encoded keys, both inclusive. Callers may
/// pass looser bounds than their filter (the filter is applied again above the scan).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PkRange {
    pub low: Option<kalamdb_log::Value>,
    pub high: Option<kalamdb_log::Value>,
    /// The key column's name: with it, files whose recorded key range misses the bounds are
    /// left out of the view, so a lookup does not open every file of the scope.
    pub column: Option<String>,
}

impl PkRange {
    /// Whether `meta`'s recorded minimum and maximum of the key column can hold a key within
    /// the bounds. Conservative: missing statistics or values that do not compare keep the file.
    fn may_hold(&self, meta: &FileMeta) -> bool {
        let Some(name) = &self.column else { return true };
        let Some(stats) = meta.columns.iter().find(|c| &c.name == name) else { return true };
        let order = |bound: &kalamdb_log::Value, edge: &serde_json::Value| {
            json_order(&crate::columnar::value_json(bound), edge)
        };
        if let (Some(low), Some(max)) = (&self.low, &stats.max)
            && order(low, max) == Some(std::cmp::Ordering::Greater)
        {
            return false;
        }
        if let (Some(high), Some(min)) = (&self.high, &stats.min)
            && order(high, min) == Some(std::cmp::Ordering::Less)
        {
            return false;
        }
        true
    }
}

/// The order of two statistics values as the manifest records them (numbers, text, booleans,
/// hex bytes, whose text order is their byte order); `None` when they do not compare.
pub(super) fn json_order(a: &serde_json::Value, b: &serde_json::Value) -> Option<std::cmp::Ordering> {
    use serde_json::Value as J;
    match (a, b) {
        (J::Number(x), J::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (J::String(x), J::String(y)) => Some(x.cmp(y)),
        (J::Bool(x), J::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Hot rows, live files and superseded versions of one table scope under one snapshot; hot
/// rows only within `range` (a RocksDB range scan).
pub fn table_view(at: ColdGroup<'_>, table_id: u64, scope: &str, range: &PkRange) -> Result<TableView> {
    let ColdGroup { db, files, group } = at;
    let snap = db.snapshot();
    let rows_cf = cf(db, CF_ROWS)?;
    let cold = cf(db, CF_COLD)?;
    let sp = table_scope_prefix(group, table_id, scope);
    let read = |cf: &rocksdb::ColumnFamily, prefix: &[u8]| {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        opts.set_iterate_upper_bound(prefix_end(prefix));
        db.iterator_cf_opt(cf, opts, IteratorMode::From(prefix, Direction::Forward))
    };
    let mut view = TableView::default();
    let mut start = sp.clone();
    if let Some(low) = &range.low {
        crate::keys::encode_pk(low, &mut start);
    }
    let end = match &range.high {
        Some(high) => {
            let mut k = sp.clone();
            crate::keys::encode_pk(high, &mut k);
            prefix_end(&k)
        }
        None => prefix_end(&sp),
    };
    // Hot rows the scope's last flush holds are read from its files (they wait for `Settle`).
    let mut head_opts = ReadOptions::default();
    head_opts.set_snapshot(&snap);
    let head: ScopeHead = match db.get_pinned_cf_opt(cold, cold_key(&sp, KIND_HEAD, &[]), &head_opts)? {
        Some(b) => unjson(&b)?,
        None => ScopeHead::default(),
    };
    let mut opts = ReadOptions::default();
    opts.set_snapshot(&snap);
    opts.set_iterate_upper_bound(end);
    for item in db.iterator_cf_opt(rows_cf, opts, IteratorMode::From(&start, Direction::Forward)) {
        let (_, v) = item?;
        if head.settle_from.is_some() && head.flushed(StoredRow::version(&v)?.0) {
            continue;
        }
        let row = StoredRow::decode(&v)?;
        if !row.deleted {
            view.hot.push(row);
        }
    }
    for item in read(cold, &cold_key(&sp, KIND_FILE, &[])) {
        let (_, v) = item?;
        let meta: FileMeta = unjson(&v)?;
        if meta.retired_at.is_none() && range.may_hold(&meta) {
            view.files.push((files.local(&meta.path, meta.bytes, &meta.sha256)?, meta.bytes));
            view.file_columns.push(meta.columns.iter().map(|c| c.name.clone()).collect());
        }
    }
    for item in read(cold, &cold_key(&sp, KIND_SUPERSEDED, &[])) {
        let (k, _) = item?;
        view.superseded.push(marker_seq(&k)?);
    }
    Ok(view)
}

/// What a compaction of one scope would do: what the automatic compaction weighs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionDue {
    pub scope: String,
    /// Files written after the newest sealed one, merged together.
    pub tail_files: u64,
    /// Sealed ranges to rewrite for their superseded versions.
    pub sealed_rewrites: u64,
}

/// [`CompactionDue`] of every scope of a table in a group that has files (see
/// [`compaction_plan`]).
pub fn compaction_due(db: &DB, group: GroupId, table_id: u64) -> Result<Vec<CompactionDue>> {
    // Per scope, in key order: its file records, then its markers (`F` < `X`).
    let mut scopes: Vec<(String, Vec<FileMeta>, Vec<u64>)> = Vec::new();
    for (k, v) in table_records(db, group, table_id, true)? {
        let (scope, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if scopes.last().is_none_or(|(s, _, _)| s != scope) {
            scopes.push((scope.to_string(), Vec::new(), Vec::new()));
        }
        let (_, files, markers) = scopes.last_mut().expect("pushed above");
        match rest.first() {
            Some(&KIND_FILE) => {
                let meta: FileMeta = unjson(&v)?;
                if meta.retired_at.is_none() {
                    files.push(meta);
                }
            }
            Some(&KIND_SUPERSEDED) => {
                markers.push(marker_seq(&k)?);
            }
            _ => {}
        }
    }
    Ok(scopes
        .into_iter()
        .filter(|(_, files, _)| !files.is_empty())
        .map(|(scope, files, markers)| {
            let live: Vec<&FileMeta> = files.iter().collect();
            let units = compaction_plan(&live, &markers);
            CompactionDue {
                scope,
                tail_files: units.iter().filter(|u| !u.sealed).map(|u| u.inputs.len() as u64).sum(),
                sealed_rewrites: units.iter().filter(|u| u.sealed).count() as u64,
            }
        })
        .collect())
}

/// The live (not retired) files of every scope of a group, as the RocksDB snapshot `snap` holds
/// them.
pub fn live_files_at(db: &DB, snap: &rocksdb::Snapshot<'_>, group: GroupId) -> Result<Vec<FileMeta>> {
    let cold = cf(db, CF_COLD)?;
    let prefix = group.prefix();
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound(prefix_end(&prefix));
    let mut out = Vec::new();
    for item in snap.iterator_cf_opt(cold, opts, IteratorMode::From(&prefix, Direction::Forward)) {
        let (k, v) = item?;
        let (_, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        if rest.first() == Some(&KIND_FILE) {
            let meta: FileMeta = unjson(&v)?;
            if meta.retired_at.is_none() {
                out.push(meta);
            }
        }
    }
    Ok(out)
}

/// The live files of every scope of a table in a group, with the `_seq`s of file rows a newer
/// version superseded (a `_seq` is unique within a group, so one set serves every scope).
pub fn table_files(db: &DB, group: GroupId, table_id: u64) -> Result<(Vec<(String, FileMeta)>, HashSet<u64>)> {
    let (mut files, mut superseded) = (Vec::new(), HashSet::new());
    for (k, v) in table_records(db, group, table_id, true)? {
        let (scope, rest) = split_scope(&k).ok_or_else(|| Error::Corrupt("bad cold key".into()))?;
        match rest.first() {
            Some(&KIND_FILE) => {
                let meta: FileMeta = unjson(&v)?;
                if meta.retired_at.is_none() {
                    files.push((scope.to_string(), meta));
                }
            }
            Some(&KIND_SUPERSEDED) => {
                superseded.insert(marker_seq(&k)?);
            }
            _ => {}
        }
    }
    Ok((files, superseded))
}
