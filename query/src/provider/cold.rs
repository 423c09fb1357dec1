//! The Parquet side of a table scan, and the filtering of both sides: the table's live files
//! read by DataFusion's Parquet scan, minus superseded versions, filtered and narrowed to the
//! columns the query asked for.
//!
//! The provider takes its filters as exact, so each side applies them below its own final
//! projection. That is what lets a text column a filter compares be read from Parquet as a
//! dictionary (where every page of it is dictionary-encoded): the comparison then runs once
//! per distinct value and is spread over the rows by their keys, and only the surviving rows
//! are cast back to the column's type. With the filter above the scan instead, DataFusion
//! pushes it below that cast and compares every row's string.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{ARROW_SCHEMA_META_KEY, encode_arrow_schema, parquet_to_arrow_schema};
use datafusion::parquet::basic::Encoding;
use datafusion::parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataBuilder};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, col, in_list, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use futures::FutureExt;
use futures::future::BoxFuture;
use kalamdb_log::DataType;
use kalamdb_projections::TableView;

use super::{KalamTable, SEQ_COLUMN};

/// The Arrow type a dictionary-encoded text column is read as: the only value type the Parquet
/// reader decodes dictionaries into without copying every row's string.
fn dictionary_type() -> ArrowType {
    ArrowType::Dictionary(Box::new(ArrowType::Int32), Box::new(ArrowType::Utf8))
}

/// A file's live columns, as keys of the scans they can share: the added columns the file
/// predates (indexes into the storage schema, read as their backfill) and the text columns
/// read as dictionaries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FileShape {
    missing: Vec<usize>,
    dictionary: Vec<usize>,
}

impl KalamTable {
    /// The storage columns a scan reads: `proj`, then whatever else `filters` name.
    pub(super) fn needed_columns(&self, proj: &[usize], filters: &[Expr]) -> Vec<usize> {
        let mut need = proj.to_vec();
        for filter in filters {
            for column in filter.column_refs() {
                if let Ok(i) = self.storage.index_of(&column.name)
                    && !need.contains(&i)
                {
                    need.push(i);
                }
            }
        }
        need
    }

    /// `input` filtered by `filters` (storage names), then narrowed to the storage columns
    /// `proj`, dictionary columns cast back to their storage type. `input` holds at least
    /// those columns and the ones the filters name.
    pub(super) fn filter_and_project(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        filters: &[Expr],
        proj: &[usize],
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let input: Arc<dyn ExecutionPlan> = match conjunction(filters.to_vec()) {
            Some(filter) => {
                let df_schema = DFSchema::try_from(input.schema().as_ref().clone())?;
                Arc::new(FilterExec::try_new(state.create_physical_expr(filter, &df_schema)?, input)?)
            }
            None => input,
        };
        let s = input.schema();
        let fields_match = s.fields().len() == proj.len()
            && proj.iter().zip(s.fields()).all(|(&i, f)| {
                let want = self.storage.field(i);
                f.name() == want.name() && f.data_type() == want.data_type()
            });
        if fields_match {
            return Ok(input);
        }
        let exprs = proj
            .iter()
            .map(|&i| {
                let want = self.storage.field(i);
                let column = col(want.name(), &s)?;
                let expr: Arc<dyn PhysicalExpr> = if s.field_with_name(want.name())?.data_type() == want.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, want.data_type().clone(), None))
                };
                Ok((expr, want.name().clone()))
            })
            .collect::<Result<Vec<(Arc<dyn PhysicalExpr>, String)>, DataFusionError>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
    }

    /// The Parquet side of a scan, `filters` (storage names) applied, columns `proj`: only the
    /// needed columns (`need`) are read, filters also prune row groups and pages by their
    /// statistics, superseded versions are filtered out by `_seq`. Files are scanned in groups
    /// of one [`FileShape`]: files written before a column was added (with a backfill value)
    /// apart, without it, the backfill standing in for it. Also returns the filters in the
    /// order they should run in (see `selectivity`), for the hot side.
    pub(super) async fn cold_plan(
        &self,
        state: &dyn Session,
        proj: &[usize],
        need: &[usize],
        filters: &[Expr],
        view: &TableView,
    ) -> Result<(Arc<dyn ExecutionPlan>, Vec<Expr>), DataFusionError> {
        let compared = self.compared_text_columns(filters);
        let store = state.runtime_env().object_store(ObjectStoreUrl::local_filesystem())?;
        let metadata = state.runtime_env().cache_manager.get_file_metadata_cache();
        let filtered: Vec<&str> =
            self.needed_columns(&[], filters).iter().map(|&i| self.storage.field(i).name().as_str()).collect();
        let mut ranges = super::selectivity::ColumnRanges::default();
        let mut groups: BTreeMap<FileShape, Vec<(PathBuf, u64)>> = BTreeMap::new();
        for (i, file) in view.files.iter().enumerate() {
            let held = view.file_columns.get(i);
            let missing: Vec<usize> = self
                .def
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.backfill.is_some() && held.is_some_and(|h| !h.iter().any(|n| n == c.storage_name())))
                .map(|(j, _)| j)
                .collect();
            let mut dictionary = Vec::new();
            if filters.len() > 1 || !compared.is_empty() {
                // The footer comes from (and stays in) the runtime's metadata cache, which the
                // scan reads it from next.
                let object = PartitionedFile::new(file.0.to_string_lossy(), file.1).object_meta;
                let meta = DFParquetMetadata::new(store.as_ref(), &object)
                    .with_file_metadata_cache(Some(metadata.clone()))
                    .fetch_metadata()
                    .await?;
                ranges.add_file(&meta, &filtered);
                if missing.is_empty() {
                    dictionary = compared
                        .iter()
                        .copied()
                        .filter(|&c| all_pages_dictionary(&meta, self.storage.field(c).name()))
                        .collect();
                }
            }
            groups.entry(FileShape { missing, dictionary }).or_default().push(file.clone());
        }
        let filters = super::selectivity::order(filters.to_vec(), &ranges);
        let mut plans = Vec::with_capacity(groups.len());
        for (shape, files) in groups {
            let names: Vec<&str> = shape.dictionary.iter().map(|&i| self.storage.field(i).name().as_str()).collect();
            let filters: Vec<Expr> = filters.iter().map(|f| on_dictionaries(f, &names)).collect::<Result<_, _>>()?;
            let scan = self.cold_files(state, need, &files, &view.superseded, &shape, &metadata)?;
            plans.push(self.filter_and_project(state, scan, &filters, proj)?);
        }
        let plan = match plans.len() {
            1 => plans.remove(0),
            _ => UnionExec::try_new(plans)?,
        };
        Ok((plan, filters))
    }

    /// TEXT columns (storage indexes) that `filters` name, in storage order.
    fn compared_text_columns(&self, filters: &[Expr]) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .needed_columns(&[], filters)
            .into_iter()
            .filter(|&i| self.def.columns.get(i).is_some_and(|c| c.data_type == DataType::Text))
            .collect();
        out.sort_unstable();
        out
    }

    /// One scan over files of one shape, the columns `need` (plus `_seq` when versions are
    /// superseded; a missing column as its backfill), unfiltered but for statistics pruning.
    fn cold_files(
        &self,
        state: &dyn Session,
        need: &[usize],
        files: &[(PathBuf, u64)],
        superseded: &[u64],
        shape: &FileShape,
        metadata: &Arc<FileMetadataCache>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let missing = &shape.missing;
        // These files' schema: the storage schema less the columns they predate, dictionary
        // columns as dictionaries.
        let kept: Vec<usize> = (0..self.storage.fields().len()).filter(|i| !missing.contains(i)).collect();
        let fields: Vec<Field> = kept
            .iter()
            .map(|&i| {
                let f = self.storage.field(i);
                match shape.dictionary.contains(&i) {
                    true => f.clone().with_data_type(dictionary_type()),
                    false => f.clone(),
                }
            })
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields, self.storage.metadata().clone()));
        let seq_idx = self.storage.fields().len() - 2;
        let mut wanted: Vec<usize> = need.iter().copied().filter(|i| !missing.contains(i)).collect();
        if !superseded.is_empty() && !wanted.contains(&seq_idx) {
            wanted.push(seq_idx);
        }
        let read: Vec<usize> = wanted.iter().filter_map(|i| kept.iter().position(|k| k == i)).collect::<Vec<usize>>();
        // Footers and page indexes come from the runtime's bounded metadata cache, so a point
        // lookup does not parse them again on every query. Files are immutable under their
        // path (a rewrite of the same path holds the same bytes), so a cached entry stays right.
        let store = state.runtime_env().object_store(ObjectStoreUrl::local_filesystem())?;
        let cached = CachedParquetFileReaderFactory::new(store, metadata.clone());
        let factory: Arc<dyn ParquetFileReaderFactory> = match shape.dictionary.is_empty() {
            true => Arc::new(cached),
            false => Arc::new(DictionaryReaderFactory {
                inner: cached,
                columns: shape.dictionary.iter().map(|&i| self.storage.field(i).name().clone()).collect(),
            }),
        };
        let source = ParquetSource::new(schema.clone()).with_parquet_file_reader_factory(factory);
        // No predicate is set here: DataFusion's filter pushdown hands the scan the filters of
        // the `FilterExec` above it (see `filter_and_project`) for pruning row groups and pages
        // (a second copy would be evaluated twice).
        // One file group per partition (round robin), so the files are scanned in parallel
        // rather than one after another by a single partition.
        let partitions = state.config_options().execution.target_partitions.clamp(1, files.len().max(1));
        let mut file_groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
        for (i, (path, size)) in files.iter().enumerate() {
            file_groups[i % partitions].push(PartitionedFile::new(path.to_string_lossy(), *size));
        }
        let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
            .with_file_groups(file_groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(Some(read.clone()))?
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        let s = scan.schema();
        let input: Arc<dyn ExecutionPlan> = if superseded.is_empty() {
            scan
        } else {
            let list = superseded.iter().map(|q| lit(*q as i64)).collect();
            let keep = in_list(col(SEQ_COLUMN, &s)?, list, &true, &s)?;
            Arc::new(FilterExec::try_new(keep, scan)?)
        };
        if missing.is_empty() {
            return Ok(input);
        }
        let exprs = need
            .iter()
            .map(|&i| {
                let name = self.storage.field(i).name();
                if missing.contains(&i) {
                    Ok((lit(self.backfill_scalar(i)?), name.clone()))
                } else {
                    Ok((col(name, &s)?, name.clone()))
                }
            })
            .collect::<Result<Vec<(Arc<dyn PhysicalExpr>, String)>, DataFusionError>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
    }

    /// The backfill of column `i` as a value of its storage type.
    fn backfill_scalar(&self, i: usize) -> Result<datafusion::common::ScalarValue, DataFusionError> {
        let c = &self.def.columns[i];
        let v = c.backfill.clone().unwrap_or(kalamdb_log::Value::Null);
        let array = kalamdb_projections::columnar::build_array(c.data_type, std::iter::once(&v), 1);
        datafusion::common::ScalarValue::try_from_array(&array, 0)
    }
}

/// `filter` for a scan that reads the columns `dictionaries` as dictionaries of strings.
/// Comparisons of such a column with string literals (`=`, `<>`, `<`, ..., `IN`, `IS NULL`,
/// under AND, OR and NOT) run on the dictionary: their literals become plain strings, the
/// dictionary's value type. Anything else that names such a column (a function, LIKE, a
/// comparison with another column) sees it cast to its storage type first, row by row, as
/// before: DataFusion's coercion does not handle every form between a dictionary and string
/// views (LIKE fails), and this keeps the fast path to the forms tested.
fn on_dictionaries(filter: &Expr, dictionaries: &[&str]) -> Result<Expr, DataFusionError> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    if dictionaries.is_empty() {
        return Ok(filter.clone());
    }
    let names = |e: &Expr| e.column_refs().into_iter().any(|c| dictionaries.contains(&c.name.as_str()));
    if !names(filter) {
        return Ok(filter.clone());
    }
    if dictionary_safe(filter, dictionaries) {
        return filter
            .clone()
            .transform(|e| match e {
                Expr::Literal(ScalarValue::Utf8View(v), meta) => {
                    Ok(Transformed::yes(Expr::Literal(ScalarValue::Utf8(v), meta)))
                }
                other => Ok(Transformed::no(other)),
            })
            .map(|t| t.data);
    }
    filter
        .clone()
        .transform(|e| match e {
            Expr::Column(c) if dictionaries.contains(&c.name.as_str()) => {
                Ok(Transformed::yes(datafusion::logical_expr::cast(Expr::Column(c), ArrowType::Utf8View)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
}

/// Whether `e` uses the columns `dictionaries` only in comparisons with string literals.
fn dictionary_safe(e: &Expr, dictionaries: &[&str]) -> bool {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let dictionary = |e: &Expr| matches!(e, Expr::Column(c) if dictionaries.contains(&c.name.as_str()));
    let string = |e: &Expr| matches!(e, Expr::Literal(ScalarValue::Utf8(_) | ScalarValue::Utf8View(_), _));
    let untouched = |e: &Expr| !e.column_refs().into_iter().any(|c| dictionaries.contains(&c.name.as_str()));
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And | Operator::Or, right }) => {
            dictionary_safe(left, dictionaries) && dictionary_safe(right, dictionaries)
        }
        Expr::Not(inner) => dictionary_safe(inner, dictionaries),
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq,
            right,
        }) => (dictionary(left) && string(right)) || (string(left) && dictionary(right)) || untouched(e),
        Expr::IsNull(inner) | Expr::IsNotNull(inner) => dictionary(inner) || untouched(e),
        Expr::InList(list) => (dictionary(&list.expr) && list.list.iter().all(string)) || untouched(e),
        other => untouched(other),
    }
}

/// The leaf index of the top-level column `name` in a file.
pub(super) fn column_index(meta: &ParquetMetaData, name: &str) -> Option<usize> {
    let schema = meta.file_metadata().schema_descr();
    (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == [name.to_string()])
}

/// Whether every data page of the top-level column `name`, in every row group, is
/// dictionary-encoded (a writer falls back to plain pages once a chunk's dictionary is full;
/// reading those as a dictionary would hash every value).
fn all_pages_dictionary(meta: &ParquetMetaData, name: &str) -> bool {
    let Some(idx) = column_index(meta, name) else { return false };
    meta.num_row_groups() > 0
        && meta.row_groups().iter().all(|rg| {
            let chunk = rg.column(idx);
            let only_dictionary = match (chunk.page_encoding_stats_mask(), chunk.page_encoding_stats()) {
                (Some(mask), _) => mask.is_only(Encoding::RLE_DICTIONARY) || mask.is_only(Encoding::PLAIN_DICTIONARY),
                (None, Some(stats)) => stats.iter().all(|s| {
                    !matches!(
                        s.page_type,
                        datafusion::parquet::basic::PageType::DATA_PAGE
                            | datafusion::parquet::basic::PageType::DATA_PAGE_V2
                    ) || matches!(s.encoding, Encoding::RLE_DICTIONARY | Encoding::PLAIN_DICTIONARY)
                }),
                (None, None) => false,
            };
            chunk.dictionary_page_offset().is_some() && only_dictionary
        })
}

/// Opens files through DataFusion's caching reader, but hands the Parquet reader a footer
/// whose Arrow schema declares `columns` as dictionaries, which makes it decode their pages
/// into dictionary arrays (keys plus the page's values) instead of one string per row. Only
/// files whose pages of those columns are all dictionary-encoded are opened through it.
#[derive(Debug)]
struct DictionaryReaderFactory {
    inner: CachedParquetFileReaderFactory,
    columns: Arc<[String]>,
}

impl ParquetFileReaderFactory for DictionaryReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>, DataFusionError> {
        let inner = self.inner.create_reader(partition_index, partitioned_file, metadata_size_hint, metrics)?;
        Ok(Box::new(DictionaryReader { inner, columns: self.columns.clone() }))
    }
}

struct DictionaryReader {
    inner: Box<dyn AsyncFileReader + Send>,
    columns: Arc<[String]>,
}

type ParquetResult<T> = datafusion::parquet::errors::Result<T>;

impl AsyncFileReader for DictionaryReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let meta = self.inner.get_metadata(options).await?;
            with_dictionary_hint(&meta, &self.columns).map(Arc::new)
        }
        .boxed()
    }
}

/// `meta` with its Arrow schema hint naming `columns` dictionaries of strings.
fn with_dictionary_hint(meta: &ParquetMetaData, columns: &[String]) -> ParquetResult<ParquetMetaData> {
    let file = meta.file_metadata();
    let arrow = parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata())?;
    let fields: Vec<Field> = arrow
        .fields()
        .iter()
        .map(|f| match columns.contains(f.name()) {
            true => f.as_ref().clone().with_data_type(dictionary_type()),
            false => f.as_ref().clone(),
        })
        .collect();
    let hint = encode_arrow_schema(&Schema::new_with_metadata(fields, arrow.metadata().clone()));
    let mut key_values: Vec<KeyValue> =
        file.key_value_metadata().into_iter().flatten().filter(|kv| kv.key != ARROW_SCHEMA_META_KEY).cloned().collect();
    key_values.push(KeyValue::new(ARROW_SCHEMA_META_KEY.to_string(), hint));
    let file = FileMetaData::new(
        file.version(),
        file.num_rows(),
        file.created_by().map(str::to_string),
        Some(key_values),
        file.schema_descr_ptr(),
        file.column_orders().cloned(),
    );
    Ok(ParquetMetaDataBuilder::new(file)
        .set_row_groups(meta.row_groups().to_vec())
        .set_column_index(meta.column_index().cloned())
        .set_offset_index(meta.offset_index().cloned())
        .build())
}
