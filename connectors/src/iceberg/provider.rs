//! [`IcebergTableProvider`]: an Iceberg snapshot scanned by DataFusion.
//!
//! The `iceberg` crate plans the scan (snapshot, manifest list, manifests,
//! partition and file-statistics pruning with the pushed filters); the data
//! files are then read by DataFusion's own Parquet scan, so page-index
//! pruning, filter pushdown, parallel reads and plan serialisation are the
//! same as for any Parquet table. Columns are matched by field id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{Result, Statistics, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use futures::TryStreamExt;
use iceberg::Runtime;
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataContentType, DataFileFormat, Transform};
use iceberg::table::Table;

use super::adapter::FieldIdAdapterFactory;
use super::predicate::to_predicate;
use super::storage::{location_to_url, store_root};

/// One Iceberg table at one snapshot.
#[derive(Debug)]
pub struct IcebergTableProvider {
    /// `domain.table (product p)`, for error messages.
    label: String,
    table: Table,
    /// `None`: the table has no snapshot yet (no data).
    snapshot_id: Option<i64>,
    schema: SchemaRef,
    /// Each data file's statistics from the snapshot's manifests, read at
    /// the first scan (`stats.rs`).
    file_stats: tokio::sync::OnceCell<HashMap<String, Arc<Statistics>>>,
}

impl IcebergTableProvider {
    /// A provider over `table` at `snapshot_id`, whose rows have `schema`.
    pub fn new(
        label: impl Into<String>,
        table: Table,
        snapshot_id: Option<i64>,
        schema: SchemaRef,
    ) -> Self {
        Self {
            label: label.into(),
            table,
            snapshot_id,
            schema,
            file_stats: tokio::sync::OnceCell::new(),
        }
    }

    /// The statistics of the snapshot's data files; none when the manifests
    /// cannot be read (the scan's own planning reports that).
    async fn file_stats(&self, snapshot_id: i64) -> Option<&HashMap<String, Arc<Statistics>>> {
        self.file_stats
            .get_or_try_init(|| {
                super::stats::file_statistics(&self.table, snapshot_id, &self.schema)
            })
            .await
            .inspect_err(|e| {
                tracing::debug!(table = %self.label, "no file statistics from the manifests: {e}");
            })
            .ok()
    }

    /// The snapshot read.
    pub fn snapshot_id(&self) -> Option<i64> {
        self.snapshot_id
    }

    /// Source field ids of every identity partition field, in any spec.
    fn identity_sources(&self) -> HashSet<i32> {
        self.table
            .metadata()
            .partition_specs_iter()
            .flat_map(|spec| spec.fields().iter())
            .filter(|f| f.transform == Transform::Identity)
            .map(|f| f.source_id)
            .collect()
    }

    /// The identity-partition source ids of the field-id adapter this
    /// table's scans carry, sorted: what a node that receives a scan
    /// without its adapter (a cluster worker) makes it again from.
    pub fn field_id_spec(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.identity_sources().into_iter().collect();
        ids.sort_unstable();
        ids
    }

    /// Whether the snapshot's summary counts any data files.
    fn snapshot_has_data(&self, snapshot_id: i64) -> bool {
        self.table
            .metadata()
            .snapshot_by_id(snapshot_id)
            .and_then(|s| {
                s.summary()
                    .additional_properties
                    .get("total-data-files")
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    fn external(&self, msg: impl std::fmt::Display) -> DataFusionError {
        DataFusionError::Execution(format!("Iceberg table {}: {msg}", self.label))
    }

    /// An error from planning: a storage failure when a file could not be
    /// read (so the server answers UNAVAILABLE and names the product), else
    /// an error of the table.
    fn planning_error(&self, e: iceberg::Error) -> DataFusionError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
        while let Some(s) = source {
            if s.downcast_ref::<object_store::Error>().is_some()
                || s.downcast_ref::<std::io::Error>().is_some()
            {
                return DataFusionError::IoError(std::io::Error::other(format!(
                    "Iceberg table {}: {e}",
                    self.label
                )));
            }
            source = s.source();
        }
        self.external(e)
    }

    /// The table bound to the runtime the query runs on. The `iceberg` crate
    /// plans on the runtime a table was built with; a table kept from an
    /// earlier runtime (the shell, tests, a reload) would plan on a runtime
    /// that no longer runs tasks, and its planning would end with no files.
    fn table_for_scan(&self) -> Result<Table> {
        let mut builder = Table::builder()
            .file_io(self.table.file_io().clone())
            .metadata(self.table.metadata_ref())
            .identifier(self.table.identifier().clone())
            .readonly(true)
            .runtime(Runtime::try_current().map_err(|e| self.external(e))?);
        if let Some(location) = self.table.metadata_location() {
            builder = builder.metadata_location(location);
        }
        builder.build().map_err(|e| self.external(e))
    }

    async fn plan_files(&self, snapshot_id: i64, filters: &[Expr]) -> Result<Vec<FileScanTask>> {
        let table = self.table_for_scan()?;
        let table = &table;
        let plan = |predicate: Option<iceberg::expr::Predicate>| async move {
            let mut builder = table.scan().select_all().snapshot_id(snapshot_id);
            if let Some(p) = predicate {
                builder = builder.with_filter(p);
            }
            let scan = builder.build()?;
            scan.plan_files().await?.try_collect::<Vec<_>>().await
        };
        let predicate = to_predicate(filters);
        let pruned = predicate.is_some();
        match plan(predicate).await {
            Ok(tasks) => Ok(tasks),
            // Pruning is an optimisation: a filter Iceberg cannot bind (e.g.
            // a literal of another type) must not fail the query.
            Err(_) if pruned => plan(None).await.map_err(|e| self.planning_error(e)),
            Err(e) => Err(self.planning_error(e)),
        }
    }
}

/// Refuses table features whose rows meshq would get wrong: data files in
/// other formats than Parquet, and row-level deletes (position and equality
/// delete files, deletion vectors), which meshq does not apply yet.
fn check_task(label: &str, snapshot_id: i64, task: &FileScanTask) -> Result<()> {
    let refuse = |msg: String| DataFusionError::Execution(format!("Iceberg table {label}: {msg}"));
    if task.data_file_format != DataFileFormat::Parquet {
        return Err(refuse(format!(
            "data file `{}` is {:?}; meshq reads Parquet data files only",
            task.data_file_path, task.data_file_format
        )));
    }
    if let Some(delete) = task.deletes.first() {
        let kind = match delete.file_type {
            DataContentType::PositionDeletes if delete.file_path.ends_with(".puffin") => {
                "deletion vectors"
            }
            DataContentType::PositionDeletes => "position delete files",
            DataContentType::EqualityDeletes => "equality delete files",
            DataContentType::Data => "delete files",
        };
        return Err(refuse(format!(
            "snapshot {snapshot_id} has {kind} (e.g. `{}` for data file `{}`); meshq does not apply Iceberg row-level deletes yet, so it refuses to read this snapshot rather than return deleted rows. Compact the table (rewrite its data files) or write deletes copy-on-write",
            delete.file_path, task.data_file_path
        )));
    }
    Ok(())
}

#[async_trait]
impl TableProvider for IcebergTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning and in the Parquet scan; DataFusion still checks
        // every row.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    fn statistics(&self) -> Option<Statistics> {
        // From the snapshot summary, for join ordering; inexact, so never
        // used to answer a query.
        let summary = &self
            .table
            .metadata()
            .snapshot_by_id(self.snapshot_id?)?
            .summary()
            .additional_properties;
        let number = |key: &str| summary.get(key).and_then(|v| v.parse::<usize>().ok());
        let mut stats = Statistics::new_unknown(&self.schema);
        if let Some(rows) = number("total-records") {
            stats.num_rows = Precision::Inexact(rows);
        }
        if let Some(bytes) = number("total-files-size") {
            stats.total_byte_size = Precision::Inexact(bytes);
        }
        Some(stats)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let tasks = match self.snapshot_id {
            // No snapshot: the table has never had data.
            None => Vec::new(),
            Some(snapshot_id) => {
                let tasks = self.plan_files(snapshot_id, filters).await?;
                if tasks.is_empty() && filters.is_empty() && self.snapshot_has_data(snapshot_id) {
                    // Fail closed: an empty plan for a snapshot that has data
                    // files would silently answer "no rows".
                    return Err(self.external(format!(
                        "planning snapshot {snapshot_id} found no data files, but its summary lists some; refusing to answer with no rows"
                    )));
                }
                tasks
            }
        };
        if tasks.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        let stats = match self.snapshot_id {
            Some(id) => self.file_stats(id).await,
            None => None,
        };
        // Files grouped by object store; one store in practice.
        let mut by_store: BTreeMap<String, Vec<PartitionedFile>> = BTreeMap::new();
        for task in &tasks {
            check_task(&self.label, self.snapshot_id.unwrap_or_default(), task)?;
            let url = location_to_url(&task.data_file_path).map_err(|e| self.external(e))?;
            let path = object_store::path::Path::from_url_path(url.path())
                .map_err(|e| self.external(format!("data file `{}`: {e}", task.data_file_path)))?;
            let mut file = PartitionedFile::new(path, task.file_size_in_bytes);
            if task.start != 0 || task.length != task.file_size_in_bytes {
                file = file.with_range(task.start as i64, (task.start + task.length) as i64);
            } else if let Some(file_stats) = stats.and_then(|s| s.get(&task.data_file_path)) {
                // The manifest's row count, null counts and bounds, for join
                // planning (a split file's are not known per range).
                file = file.with_statistics(Arc::clone(file_stats));
            } else if let Some(rows) = task.record_count {
                let mut stats = Statistics::new_unknown(&self.schema);
                stats.num_rows = Precision::Inexact(rows as usize);
                stats.total_byte_size = Precision::Inexact(task.file_size_in_bytes as usize);
                file = file.with_statistics(Arc::new(stats));
            }
            by_store
                .entry(store_root(&url).to_string())
                .or_default()
                .push(file);
        }
        if by_store.len() > 1 {
            return Err(self.external(format!(
                "data files are spread over several stores ({}); meshq reads a table from one store",
                by_store.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let (root, files) = by_store.into_iter().next().expect("one store");
        let store_url = ObjectStoreUrl::parse(&root)?;
        crate::file_groups::parquet_scan(
            state,
            store_url,
            TableSchema::from(Arc::clone(&self.schema)),
            files,
            projection,
            limit,
            Some(Arc::new(FieldIdAdapterFactory::new(
                self.identity_sources(),
            ))),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use iceberg::scan::FileScanTaskDeleteFile;
    use iceberg::spec::Schema as IcebergSchema;

    use super::*;

    fn task(format: DataFileFormat, deletes: Vec<FileScanTaskDeleteFile>) -> FileScanTask {
        FileScanTask::builder()
            .with_file_size_in_bytes(100)
            .with_start(0)
            .with_length(100)
            .with_data_file_path("s3://b/t/data/f.parquet".to_string())
            .with_data_file_format(format)
            .with_schema(Arc::new(IcebergSchema::builder().build().unwrap()))
            .with_project_field_ids(vec![])
            .with_deletes(deletes)
            .with_case_sensitive(true)
            .build()
    }

    fn delete(path: &str, kind: DataContentType) -> FileScanTaskDeleteFile {
        FileScanTaskDeleteFile::builder()
            .with_file_path(path.to_string())
            .with_file_size_in_bytes(10)
            .with_file_type(kind)
            .with_partition_spec_id(0)
            .build()
    }

    #[test]
    fn row_level_deletes_and_other_formats_are_refused_by_name() {
        let label = "`a.t` (product `urn:p`)";
        assert!(check_task(label, 7, &task(DataFileFormat::Parquet, vec![])).is_ok());
        for (file, kind, word) in [
            (
                "s3://b/t/data/d.parquet",
                DataContentType::PositionDeletes,
                "position delete files",
            ),
            (
                "s3://b/t/data/e.parquet",
                DataContentType::EqualityDeletes,
                "equality delete files",
            ),
            (
                "s3://b/t/data/dv.puffin",
                DataContentType::PositionDeletes,
                "deletion vectors",
            ),
        ] {
            let err = check_task(
                label,
                7,
                &task(DataFileFormat::Parquet, vec![delete(file, kind)]),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!(
                    "Iceberg table `a.t` (product `urn:p`): snapshot 7 has {word} (e.g. `{file}`"
                )),
                "{err}"
            );
            assert!(err.contains("refuses to read this snapshot"), "{err}");
        }
        let err = check_task(label, 7, &task(DataFileFormat::Orc, vec![]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is Orc; meshq reads Parquet data files only"),
            "{err}"
        );
    }
}
