//! [`ContractTableProvider`]: a table seen through its contract.
//!
//! The contract decides which columns exist: columns of the underlying table
//! that the contract does not declare are not exposed (a writer adding a
//! column must not publish it before the contract does), and columns come in
//! contract order.
//!
//! A contract column the table no longer matches (missing, or of another
//! type) has *drifted*. It stays in the schema, so clients see the contract's
//! shape, but reading it fails with an error that names the table, product,
//! column and both types; the other columns keep working.

use std::sync::Arc;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::catalog::{ScanArgs, ScanResult};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Constraints, Statistics};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::mesh_scan::{MAX_PUSHED_FILTERS, MeshScanExec};

/// One column of the contract view.
#[derive(Debug, Clone)]
pub enum ContractColumn {
    /// Served from this column of the inner table.
    Inner(usize),
    /// Drifted from the contract: listed with `field`, refused when read.
    Drifted {
        /// The field shown in the schema.
        field: FieldRef,
        /// Why, naming table, product, column and types.
        reason: String,
    },
}

/// A local copy of a table's rows in the contract's columns (an
/// accelerated port), kept current by the engine.
pub trait LocalCopy: std::fmt::Debug + Send + Sync {
    /// The copy to read now and the source version it was built from;
    /// `None` when there is none or it may no longer be served (too stale),
    /// so the source is read.
    fn current(&self) -> Option<(Arc<dyn TableProvider>, String)>;
}

/// Exposes a subset of an inner provider's columns, reordered.
#[derive(Debug)]
pub struct ContractTableProvider {
    table: String,
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    /// For each exposed column, where it comes from.
    columns: Vec<ContractColumn>,
    constraints: Option<Constraints>,
    /// Rows of a table whose format states none in its statistics (a
    /// Parquet listing), read from its footers when it was opened.
    row_count: std::sync::OnceLock<u64>,
    /// A local folder or file the data must be in when it is read.
    required_path: Option<std::path::PathBuf>,
    /// Read instead of `inner` while it serves: the copy and the version
    /// of `inner`'s data.
    copy: Option<(Arc<dyn LocalCopy>, String)>,
}

impl ContractTableProvider {
    /// The view of table `table` (`domain.name`) exposing `columns`, each an
    /// inner column or a drifted one.
    pub fn with_columns(
        table: impl Into<String>,
        inner: Arc<dyn TableProvider>,
        columns: Vec<ContractColumn>,
    ) -> Self {
        let inner_schema = inner.schema();
        let fields: Vec<_> = columns
            .iter()
            .map(|c| match c {
                ContractColumn::Inner(i) => Arc::clone(&inner_schema.fields()[*i]),
                ContractColumn::Drifted { field, .. } => Arc::clone(field),
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            inner_schema.metadata().clone(),
        ));
        Self {
            table: table.into(),
            inner,
            schema,
            columns,
            constraints: None,
            row_count: std::sync::OnceLock::new(),
            required_path: None,
            copy: None,
        }
    }

    /// The same view, read from `copy` while it serves; `source_version` is
    /// the version of this view's own data (statistics are the source's
    /// only while the copy is of that version).
    pub fn accelerated(&self, copy: Arc<dyn LocalCopy>, source_version: String) -> Self {
        self.with_copy(Some((copy, source_version)))
    }

    /// The same view without a copy: what a copy is built from.
    pub fn source_view(&self) -> Self {
        self.with_copy(None)
    }

    fn with_copy(&self, copy: Option<(Arc<dyn LocalCopy>, String)>) -> Self {
        Self {
            table: self.table.clone(),
            inner: Arc::clone(&self.inner),
            schema: Arc::clone(&self.schema),
            columns: self.columns.clone(),
            constraints: self.constraints.clone(),
            required_path: self.required_path.clone(),
            row_count: self.row_count.clone(),
            copy,
        }
    }

    /// The copy a scan reads now, if the port is accelerated and its copy
    /// serves.
    fn serving_copy(&self) -> Option<(Arc<dyn TableProvider>, bool)> {
        let (copy, version) = self.copy.as_ref()?;
        let (provider, built_from) = copy.current()?;
        Some((provider, &built_from == version))
    }

    /// Whether scans read a local copy now (an accelerated port).
    pub fn is_accelerated(&self) -> bool {
        self.serving_copy().is_some()
    }

    /// Refuses scans while `path` does not exist: a listing of a missing
    /// local folder is empty, and a product whose data folder vanished
    /// must fail as unavailable, not answer with no rows.
    pub fn with_required_path(mut self, path: std::path::PathBuf) -> Self {
        self.required_path = Some(path);
        self
    }

    fn check_present(&self) -> Result<()> {
        match &self.required_path {
            Some(p) if !p.exists() => Err(datafusion::error::DataFusionError::ObjectStore(
                Box::new(object_store::Error::NotFound {
                    path: p.display().to_string(),
                    source: format!("the data of `{}` is missing", self.table).into(),
                }),
            )),
            _ => Ok(()),
        }
    }

    /// Declares constraints (e.g. the contract's primary key).
    pub fn with_constraints(mut self, constraints: Constraints) -> Self {
        self.constraints = Some(constraints);
        self
    }

    /// The table's row count, when its format's statistics state none.
    pub fn set_row_count(&self, rows: u64) {
        let _ = self.row_count.set(rows);
    }

    /// `domain.name` of the mesh table behind this view.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The inner columns behind `projection`; an error naming the first
    /// drifted column it reads.
    fn map_projection(&self, projection: Option<&Vec<usize>>) -> Result<Vec<usize>> {
        let all: Vec<usize>;
        let wanted = match projection {
            Some(p) => p,
            None => {
                all = (0..self.columns.len()).collect();
                &all
            }
        };
        wanted
            .iter()
            .map(|&i| match &self.columns[i] {
                ContractColumn::Inner(idx) => Ok(*idx),
                ContractColumn::Drifted { reason, .. } => {
                    Err(DataFusionError::Plan(reason.clone()))
                }
            })
            .collect()
    }
}

/// The mark over a local copy's scan, with the copy's column bounds (a
/// memory copy's scan reports none) for the columns it reads.
fn copy_scan(
    table: &str,
    copy: &Arc<dyn TableProvider>,
    plan: Arc<dyn ExecutionPlan>,
    projection: Option<&Vec<usize>>,
) -> MeshScanExec {
    let scan = MeshScanExec::new(table.to_string(), plan);
    let Some(stats) = copy.statistics() else {
        return scan;
    };
    let columns = stats.column_statistics;
    let bounds = match projection {
        Some(p) => p.iter().map(|&i| columns.get(i).cloned()).collect(),
        None => Some(columns),
    };
    match bounds {
        Some(b) => scan.with_column_bounds(b),
        None => scan,
    }
}

impl ContractTableProvider {
    /// The field-id adapter spec of the format's scans (an Iceberg table
    /// read by field id), for nodes that receive them without it.
    fn field_id_spec(&self) -> Option<Vec<i32>> {
        self.inner
            .downcast_ref::<crate::iceberg::IcebergTableProvider>()
            .map(|p| p.field_id_spec())
    }
}

#[async_trait]
impl TableProvider for ContractTableProvider {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some((copy, _)) = self.serving_copy() {
            let plan = copy.scan(state, projection, filters, limit).await?;
            return Ok(Arc::new(copy_scan(&self.table, &copy, plan, projection)));
        }
        self.check_present()?;
        let projection = self.map_projection(projection)?;
        let plan = self
            .inner
            .scan(state, Some(&projection), filters, limit)
            .await?;
        Ok(Arc::new(
            MeshScanExec::new(self.table.clone(), plan).with_field_ids(self.field_id_spec()),
        ))
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        if let Some((copy, _)) = self.serving_copy() {
            let projection = args.projection().map(<[usize]>::to_vec);
            let result = copy.scan_with_args(state, args).await?;
            let plan: Arc<dyn ExecutionPlan> = Arc::new(copy_scan(
                &self.table,
                &copy,
                result.into_inner(),
                projection.as_ref(),
            ));
            return Ok(ScanResult::new(plan));
        }
        self.check_present()?;
        let projection = self.map_projection(args.projection().map(<[usize]>::to_vec).as_ref())?;
        let inner_args = ScanArgs::default()
            .with_projection(Some(&projection))
            .with_filters(args.filters())
            .with_limit(args.limit())
            .with_statistics_requests(args.statistics_requests());
        let result = self.inner.scan_with_args(state, inner_args).await?;
        let plan: Arc<dyn ExecutionPlan> = Arc::new(
            MeshScanExec::new(self.table.clone(), result.into_inner())
                .with_field_ids(self.field_id_spec()),
        );
        Ok(ScanResult::new(plan))
    }

    /// Filters are offered to the format's scan for pruning, but never
    /// taken as exact: the formats' partition pruning keeps a partition when
    /// a predicate is NULL for it (`region IN ('AMER', NULL)` kept EMEA, a
    /// bare `NULL` kept everything), so a filter above the scan always
    /// decides which rows pass.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let offered = filters.len().min(MAX_PUSHED_FILTERS);
        let mut out: Vec<TableProviderFilterPushDown> = self
            .inner
            .supports_filters_pushdown(&filters[..offered])?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect();
        out.resize(filters.len(), TableProviderFilterPushDown::Unsupported);
        Ok(out)
    }

    fn statistics(&self) -> Option<Statistics> {
        if let Some((copy, same_version)) = self.serving_copy()
            && !same_version
        {
            // The source's statistics describe other rows than the copy's.
            return copy.statistics();
        }
        let Some(stats) = self.inner.statistics() else {
            let rows = *self.row_count.get()?;
            return Some(Statistics {
                num_rows: Precision::Inexact(usize::try_from(rows).ok()?),
                total_byte_size: Precision::Absent,
                column_statistics: vec![ColumnStatistics::new_unknown(); self.columns.len()],
            });
        };
        let column_statistics = self
            .columns
            .iter()
            .map(|c| match c {
                ContractColumn::Inner(i) => stats.column_statistics.get(*i).cloned(),
                ContractColumn::Drifted { .. } => Some(ColumnStatistics::new_unknown()),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Statistics {
            num_rows: stats.num_rows,
            total_byte_size: stats.total_byte_size,
            column_statistics,
        })
    }
}
