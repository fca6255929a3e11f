//! [`DeltaNativeProvider`]: a Delta snapshot read by DataFusion's own
//! Parquet scan.
//!
//! delta-rs gives the snapshot: the active files with their partition
//! values, sizes and statistics. The files are then read by DataFusion's
//! Parquet source, as for Iceberg, so file pruning (from partition values
//! and the log's statistics), row-group and page pruning and filter
//! pushdown are DataFusion's, predicates are evaluated once, no file-id
//! column is added, and the plan is an ordinary `DataSourceExec`.
//!
//! Tables whose rows this path would get wrong stay on delta-rs's own scan:
//! files with deletion vectors (their deleted rows must not come back) and
//! column mapping (physical column names differ from the schema's). See
//! [`native_provider`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Result, ScalarValue, Statistics, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::path::Path;
use url::Url;

/// One Delta table version, its files listed once when it was opened.
#[derive(Debug)]
pub struct DeltaNativeProvider {
    /// The table's columns: data columns, then partition columns.
    schema: SchemaRef,
    /// Data columns (what the Parquet files hold).
    file_schema: SchemaRef,
    /// Partition columns, in the table's partition order.
    partition_fields: Vec<Arc<Field>>,
    store_url: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
    /// Rows and bytes of the whole version, for join ordering.
    statistics: Statistics,
}

/// Why a table stays on delta-rs's own scan, or `None` when the native
/// path reads it exactly.
pub(crate) fn needs_delta_scan(table: &deltalake::DeltaTable) -> Option<String> {
    let snapshot = table.snapshot().ok()?.snapshot();
    let mode = snapshot
        .metadata()
        .configuration()
        .get("delta.columnMapping.mode")
        .map(String::as_str)
        .unwrap_or("none");
    if mode != "none" {
        return Some(format!("column mapping mode `{mode}`"));
    }
    if snapshot
        .log_data()
        .iter()
        .any(|f| f.deletion_vector_descriptor().is_some())
    {
        return Some("deletion vectors".into());
    }
    None
}

/// The native provider of `table` (loaded from `url`, with a trailing
/// slash), or `None` when it needs delta-rs's own scan (see
/// [`needs_delta_scan`]).
pub(crate) fn native_provider(
    table: &deltalake::DeltaTable,
    url: &Url,
    view_types: bool,
) -> std::result::Result<Option<DeltaNativeProvider>, String> {
    if let Some(why) = needs_delta_scan(table) {
        tracing::debug!(table = %url, reason = %why, "Delta table read by delta-rs's scan");
        return Ok(None);
    }
    let state = table.snapshot().map_err(|e| e.to_string())?;
    let snapshot = state.snapshot();
    // Strings and binaries as views when the session reads Parquet that
    // way (`schema_force_view_types`), like every other Parquet table.
    let full = snapshot.arrow_schema();
    let full = Schema::new(
        full.fields()
            .iter()
            .map(|f| match (view_types, f.data_type()) {
                (true, DataType::Utf8 | DataType::LargeUtf8) => {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View))
                }
                (true, DataType::Binary | DataType::LargeBinary) => {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::BinaryView))
                }
                _ => Arc::clone(f),
            })
            .collect::<Vec<_>>(),
    );
    let partition_columns: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let mut data_fields = Vec::new();
    for f in full.fields() {
        if !partition_columns.contains(f.name()) {
            data_fields.push(Arc::clone(f));
        }
    }
    let mut partition_fields = Vec::new();
    for name in &partition_columns {
        let field = full
            .field_with_name(name)
            .map_err(|_| format!("partition column `{name}` is not in the table's schema"))?;
        partition_fields.push(Arc::new(field.clone()));
    }
    let file_schema = Arc::new(Schema::new(data_fields));
    let schema = Arc::new(Schema::new(
        file_schema
            .fields()
            .iter()
            .cloned()
            .chain(partition_fields.iter().cloned())
            .collect::<Vec<_>>(),
    ));
    let store_url =
        ObjectStoreUrl::parse(&url[..url::Position::BeforePath]).map_err(|e| e.to_string())?;
    let root = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;

    let mut files = Vec::new();
    let (mut rows, mut bytes) = (Some(0usize), 0usize);
    for view in snapshot.log_data().iter() {
        let raw = view.path();
        let path = if raw.contains("://") {
            // An absolute file URL (a shallow clone); same store only.
            let u = Url::parse(&raw).map_err(|e| format!("data file `{raw}`: {e}"))?;
            if u[..url::Position::BeforePath] != url[..url::Position::BeforePath] {
                return Err(format!(
                    "data file `{raw}` is in another store than the table; meshq reads a table from one store"
                ));
            }
            Path::from_url_path(u.path()).map_err(|e| e.to_string())?
        } else {
            let rel = view.object_store_path();
            Path::from_iter(root.parts().chain(rel.parts()))
        };
        let size = view.size().max(0) as u64;
        bytes += size as usize;
        let num_records = view.num_records();
        rows = rows.zip(num_records).map(|(a, b)| a + b);
        let partitions = view.partition_values_map();
        let mut partition_values = Vec::with_capacity(partition_fields.len());
        for f in &partition_fields {
            let value = match partitions.get(f.name()).cloned().flatten() {
                Some(text) => {
                    ScalarValue::try_from_string(text.clone(), f.data_type()).map_err(|e| {
                        format!(
                            "data file `{raw}`: partition value `{text}` of `{}` is not a {}: {e}",
                            f.name(),
                            f.data_type()
                        )
                    })?
                }
                None => ScalarValue::try_from(f.data_type()).map_err(|e| e.to_string())?,
            };
            partition_values.push(value);
        }
        let mut file = PartitionedFile::new(path, size);
        file.partition_values = partition_values.clone();
        file = file.with_statistics(Arc::new(file_statistics(
            &file_schema,
            &partition_values,
            num_records,
            view.stats().as_deref(),
            size,
        )));
        files.push(file);
    }
    let mut statistics = Statistics::new_unknown(&schema);
    if let Some(rows) = rows {
        statistics.num_rows = Precision::Exact(rows);
    }
    statistics.total_byte_size = Precision::Inexact(bytes);
    Ok(Some(DeltaNativeProvider {
        schema,
        file_schema,
        partition_fields,
        store_url,
        files,
        statistics,
    }))
}

impl DeltaNativeProvider {
    /// The same files read as `schema`: the same column names in the same
    /// order (a table without partitions), each column's type one the
    /// Parquet scan casts the file's to. Statistics of a column whose type
    /// changes are dropped (their bounds are of the file's type).
    pub(crate) fn with_table_schema(
        mut self,
        schema: SchemaRef,
    ) -> std::result::Result<Self, String> {
        if !self.partition_fields.is_empty() {
            return Err("a partitioned Delta table cannot be read in another schema".into());
        }
        let names = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
        };
        if names(&schema) != names(&self.file_schema) {
            return Err(format!(
                "the Delta table's columns ({}) are not the product's ({})",
                names(&self.file_schema).join(", "),
                names(&schema).join(", ")
            ));
        }
        let changed: Vec<bool> = schema
            .fields()
            .iter()
            .zip(self.file_schema.fields())
            .map(|(a, b)| a.data_type() != b.data_type())
            .collect();
        let forget = |stats: &mut Statistics| {
            for (c, changed) in stats.column_statistics.iter_mut().zip(&changed) {
                if *changed {
                    *c = ColumnStatistics::new_unknown();
                }
            }
        };
        forget(&mut self.statistics);
        for f in &mut self.files {
            if let Some(stats) = &f.statistics {
                let mut stats = stats.as_ref().clone();
                forget(&mut stats);
                f.statistics = Some(Arc::new(stats));
            }
        }
        self.file_schema = Arc::clone(&schema);
        self.schema = schema;
        Ok(self)
    }

    /// Bytes of the version's data files.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.object_meta.size).sum()
    }
}

/// A file's statistics in the table's column order (data columns, then
/// partition columns). Only bounds that cannot mislead are used: integers
/// and dates as written and partition values, exact (the Delta protocol
/// makes them authoritative, and join planning estimates only from exact
/// figures); timestamps with the maximum moved up by one millisecond (the
/// log keeps milliseconds), inexact; strings (the log may keep a truncated
/// prefix), floats and decimals are left unknown and pruned inside the file
/// from its footer instead. Row counts are exact: a file under a deletion
/// vector is never read this way.
fn file_statistics(
    file_schema: &Schema,
    partition_values: &[ScalarValue],
    num_records: Option<usize>,
    stats: Option<&str>,
    size: u64,
) -> Statistics {
    let parsed: Option<serde_json::Value> = stats.and_then(|s| serde_json::from_str(s).ok());
    let section = |name: &str, col: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.get(col))
            .cloned()
    };
    let mut columns = Vec::with_capacity(file_schema.fields().len() + partition_values.len());
    for f in file_schema.fields() {
        let mut c = ColumnStatistics::new_unknown();
        let exact = !matches!(f.data_type(), DataType::Timestamp(..));
        let wrap = |v| {
            if exact {
                Precision::Exact(v)
            } else {
                Precision::Inexact(v)
            }
        };
        if let Some(n) = section("nullCount", f.name()).and_then(|v| v.as_u64()) {
            c.null_count = Precision::Exact(n as usize);
        }
        if let Some(v) =
            section("minValues", f.name()).and_then(|v| bound(&v, f.data_type(), false))
        {
            c.min_value = wrap(v);
        }
        if let Some(v) = section("maxValues", f.name()).and_then(|v| bound(&v, f.data_type(), true))
        {
            c.max_value = wrap(v);
        }
        columns.push(c);
    }
    for v in partition_values {
        let mut c = ColumnStatistics::new_unknown();
        c.min_value = Precision::Exact(v.clone());
        c.max_value = Precision::Exact(v.clone());
        if let Some(n) = num_records {
            c.null_count = Precision::Exact(if v.is_null() { n } else { 0 });
        }
        columns.push(c);
    }
    Statistics {
        num_rows: num_records.map_or(Precision::Absent, Precision::Exact),
        total_byte_size: Precision::Inexact(size as usize),
        column_statistics: columns,
    }
}

/// A usable bound for a column of `data_type` from its JSON statistic.
fn bound(value: &serde_json::Value, data_type: &DataType, is_max: bool) -> Option<ScalarValue> {
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            ScalarValue::Int64(Some(value.as_i64()?))
                .cast_to(data_type)
                .ok()
        }
        DataType::Date32 | DataType::Date64 => {
            ScalarValue::try_from_string(value.as_str()?.to_string(), data_type).ok()
        }
        DataType::Timestamp(unit, _) => {
            let v = ScalarValue::try_from_string(value.as_str()?.to_string(), data_type).ok()?;
            if !is_max {
                return Some(v);
            }
            let step = match unit {
                TimeUnit::Second => 1,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            match v {
                ScalarValue::TimestampSecond(Some(t), tz) => {
                    Some(ScalarValue::TimestampSecond(Some(t + step), tz))
                }
                ScalarValue::TimestampMillisecond(Some(t), tz) => {
                    Some(ScalarValue::TimestampMillisecond(Some(t + step), tz))
                }
                ScalarValue::TimestampMicrosecond(Some(t), tz) => {
                    Some(ScalarValue::TimestampMicrosecond(Some(t + step), tz))
                }
                ScalarValue::TimestampNanosecond(Some(t), tz) => {
                    Some(ScalarValue::TimestampNanosecond(Some(t + step), tz))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

#[async_trait]
impl TableProvider for DeltaNativeProvider {
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
        Some(self.statistics.clone())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(
                &self.schema,
                projection,
            )?)));
        }
        let table_schema = TableSchema::builder(Arc::clone(&self.file_schema))
            .with_table_partition_cols(self.partition_fields.clone())
            .build();
        crate::file_groups::parquet_scan(
            state,
            self.store_url.clone(),
            table_schema,
            self.files.clone(),
            projection,
            limit,
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounds_that_cannot_mislead_pruning_are_used() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            bound(&json("5"), &DataType::Int32, false),
            Some(ScalarValue::Int32(Some(5)))
        );
        assert_eq!(
            bound(&json("\"2026-10-01\""), &DataType::Date32, true),
            ScalarValue::try_from_string("2026-10-01".into(), &DataType::Date32).ok()
        );
        // The log keeps milliseconds: the maximum moves up by one.
        let min = bound(&json("\"2026-10-01T10:00:00.123Z\""), &ts, false).unwrap();
        let max = bound(&json("\"2026-10-01T10:00:00.123Z\""), &ts, true).unwrap();
        let (
            ScalarValue::TimestampMicrosecond(Some(a), _),
            ScalarValue::TimestampMicrosecond(Some(b), _),
        ) = (min, max)
        else {
            panic!("timestamps")
        };
        assert_eq!(b - a, 1_000);
        // Strings (maybe truncated), floats and decimals: unknown.
        assert_eq!(bound(&json("\"abc\""), &DataType::Utf8, false), None);
        assert_eq!(bound(&json("1.5"), &DataType::Float64, false), None);
        assert_eq!(
            bound(&json("1.5"), &DataType::Decimal128(12, 2), false),
            None
        );
    }

    #[test]
    fn statistics_follow_the_table_columns() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]);
        let stats = file_statistics(
            &schema,
            &[ScalarValue::Utf8(Some("EMEA".into()))],
            Some(10),
            Some(
                r#"{"numRecords":10,"minValues":{"id":1,"name":"a"},"maxValues":{"id":9,"name":"z"},"nullCount":{"id":0,"name":2}}"#,
            ),
            100,
        );
        assert_eq!(stats.column_statistics.len(), 3);
        assert_eq!(
            stats.column_statistics[0].min_value,
            Precision::Exact(ScalarValue::Int64(Some(1)))
        );
        assert_eq!(stats.column_statistics[1].min_value, Precision::Absent);
        assert_eq!(stats.column_statistics[1].null_count, Precision::Exact(2));
        assert_eq!(
            stats.column_statistics[2].max_value,
            Precision::Exact(ScalarValue::Utf8(Some("EMEA".into())))
        );
        assert_eq!(stats.num_rows, Precision::Exact(10));
    }

    /// A Delta table from a hand-written first commit.
    async fn table_with(
        dir: &std::path::Path,
        protocol: &str,
        configuration: &str,
        add: &str,
    ) -> deltalake::DeltaTable {
        let log = dir.join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        // Column mapping needs each field's id and physical name.
        let field_metadata = if configuration.contains("columnMapping") {
            r#"\"delta.columnMapping.id\":1,\"delta.columnMapping.physicalName\":\"col-1\""#
        } else {
            ""
        };
        let schema = format!(
            r#"{{\"type\":\"struct\",\"fields\":[{{\"name\":\"id\",\"type\":\"long\",\"nullable\":true,\"metadata\":{{{field_metadata}}}}}]}}"#
        );
        let mut commit = format!(
            "{{\"protocol\":{protocol}}}\n{{\"metaData\":{{\"id\":\"t\",\"format\":{{\"provider\":\"parquet\",\"options\":{{}}}},\"schemaString\":\"{schema}\",\"partitionColumns\":[],\"configuration\":{configuration},\"createdTime\":1}}}}\n"
        );
        if !add.is_empty() {
            commit.push_str(add);
            commit.push('\n');
        }
        std::fs::write(log.join("00000000000000000000.json"), commit).unwrap();
        let url = Url::from_directory_path(dir).unwrap();
        deltalake::DeltaTableBuilder::from_url(url)
            .unwrap()
            .load()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn deletion_vectors_and_column_mapping_stay_on_delta_rs_scan() {
        let add = r#"{"add":{"path":"part-0.parquet","partitionValues":{},"size":100,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":3}"}}"#;
        let plain = tempfile::tempdir().unwrap();
        let t = table_with(
            plain.path(),
            r#"{"minReaderVersion":1,"minWriterVersion":2}"#,
            "{}",
            add,
        )
        .await;
        assert_eq!(needs_delta_scan(&t), None);

        let dv = tempfile::tempdir().unwrap();
        let add_dv = r#"{"add":{"path":"part-0.parquet","partitionValues":{},"size":100,"modificationTime":1,"dataChange":true,"stats":"{\"numRecords\":3}","deletionVector":{"storageType":"i","pathOrInlineDv":"wi5b=000010000siXQKl0rr91000f55c8Xg0@@D72lkbi5=-{L","sizeInBytes":40,"cardinality":1}}}"#;
        let t = table_with(
            dv.path(),
            r#"{"minReaderVersion":3,"minWriterVersion":7,"readerFeatures":["deletionVectors"],"writerFeatures":["deletionVectors"]}"#,
            r#"{"delta.enableDeletionVectors":"true"}"#,
            add_dv,
        )
        .await;
        assert_eq!(needs_delta_scan(&t).as_deref(), Some("deletion vectors"));

        let cm = tempfile::tempdir().unwrap();
        let t = table_with(
            cm.path(),
            r#"{"minReaderVersion":2,"minWriterVersion":5}"#,
            r#"{"delta.columnMapping.mode":"name","delta.columnMapping.maxColumnId":"1"}"#,
            "",
        )
        .await;
        assert_eq!(
            needs_delta_scan(&t).as_deref(),
            Some("column mapping mode `name`")
        );
    }
}
