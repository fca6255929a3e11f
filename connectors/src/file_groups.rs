//! The Parquet scan the Delta and Iceberg providers share: their files
//! dealt into scan partitions with the statistics join planning reads (as
//! DataFusion's listing tables attach them), read by DataFusion's Parquet
//! source.

use std::sync::Arc;

use arrow::datatypes::Schema;
use datafusion::catalog::Session;
use datafusion::common::{Result, Statistics};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr_adapter::PhysicalExprAdapterFactory;
use datafusion::physical_plan::ExecutionPlan;

/// The Parquet scan of `files` (in `store_url`) for a table whose columns
/// are `table_schema`; `adapter` maps the table's columns to each file's
/// (Iceberg field ids), else DataFusion's default.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn parquet_scan(
    state: &dyn Session,
    store_url: ObjectStoreUrl,
    table_schema: TableSchema,
    files: Vec<PartitionedFile>,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    adapter: Option<Arc<dyn PhysicalExprAdapterFactory>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = Arc::clone(table_schema.table_schema());
    let (groups, statistics) = grouped(files, state.config().target_partitions(), &schema)?;
    let parquet_options = state.table_options().parquet.clone();
    let source =
        ParquetSource::new(table_schema).with_table_parquet_options(parquet_options.clone());
    let mut config =
        FileScanConfigBuilder::new(store_url, Arc::new(source)).with_file_groups(groups);
    if let Some(statistics) = statistics {
        config = config.with_statistics(statistics);
    }
    let config = config
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .with_expr_adapter(adapter)
        .build();
    ParquetFormat::default()
        .with_options(parquet_options)
        .create_physical_plan(state, config)
        .await
}

/// `files` dealt round-robin into at most `partitions` groups, larger
/// files first, each group with the merge of its files' statistics, and
/// the merge over all groups. Without statistics for every file, the
/// groups and the scan carry none (a partial sum would undercount).
fn grouped(
    mut files: Vec<PartitionedFile>,
    partitions: usize,
    schema: &Schema,
) -> Result<(Vec<FileGroup>, Option<Statistics>)> {
    let partitions = partitions.max(1).min(files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let complete = files.iter().all(|f| f.statistics.is_some());
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (i, f) in files.into_iter().enumerate() {
        groups[i % partitions].push(f);
    }
    if !complete {
        return Ok((groups.into_iter().map(FileGroup::new).collect(), None));
    }
    let mut out = Vec::with_capacity(groups.len());
    for files in groups {
        let stats = Statistics::try_merge_iter(
            files.iter().filter_map(|f| f.statistics.as_deref()),
            schema,
        )?;
        out.push(FileGroup::new(files).with_statistics(Arc::new(stats)));
    }
    let total =
        Statistics::try_merge_iter(out.iter().filter_map(|g| g.file_statistics(None)), schema)?;
    Ok((out, Some(total)))
}
