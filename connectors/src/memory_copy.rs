//! [`MemoryCopy`]: an accelerated port's rows held in Arrow memory.
//!
//! DataFusion's [`MemTable`] reports row counts and null counts for its
//! scans but no column bounds, so the join planner, which estimates a
//! filtered scan's size from its columns' minimum and maximum, plans a
//! memory copy worse than the files it was copied from (every join built
//! on one side, on TPC-H q7 and q18). A memory copy therefore keeps each
//! column's bounds, computed once when it is built, and the contract
//! view's scan hands them to [`MeshScanExec`](crate::MeshScanExec), which
//! reports them (as inexact) where the memory scan reports none. The rows
//! are also spread evenly over the partitions, whatever the source scan's
//! file groups were.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use datafusion::datasource::memory::MemTable;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::{Accumulator, Expr};
use datafusion::physical_plan::ExecutionPlan;

/// Rows in memory, in balanced partitions, with their column bounds.
#[derive(Debug)]
pub struct MemoryCopy {
    table: MemTable,
    statistics: Statistics,
}

impl MemoryCopy {
    /// Holds `batches` (of `schema`) in `partitions` partitions of about
    /// the same number of rows, keeping the batches' order, and computes
    /// every column's minimum, maximum and null count.
    pub fn try_new(
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        partitions: usize,
    ) -> Result<Self> {
        let statistics = column_bounds(&schema, &batches);
        let table = MemTable::try_new(schema, balance(batches, partitions.max(1)))?;
        Ok(Self { table, statistics })
    }
}

/// Bytes of memory `batches` hold: every buffer allocation they reference,
/// counted once. Arrow's `get_array_memory_size` counts a buffer once per
/// array that references it, and the Parquet reader's string views share
/// buffers across batches, so summing it over a copy of TPC-H SF1
/// counted 2.4 GiB where the process grew by 1.6 GiB.
pub fn held_bytes(batches: &[RecordBatch]) -> usize {
    use datafusion::arrow::array::{Array, ArrayData};
    fn visit(data: &ArrayData, seen: &mut std::collections::HashSet<usize>, total: &mut usize) {
        let nulls = data.nulls().map(|n| n.buffer());
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                *total += buffer.capacity();
            }
        }
        for child in data.child_data() {
            visit(child, seen, total);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for batch in batches {
        for column in batch.columns() {
            visit(&column.to_data(), &mut seen, &mut total);
        }
    }
    total
}

/// `batches` in `n` partitions of consecutive batches, each of about the
/// same number of rows.
fn balance(batches: Vec<RecordBatch>, n: usize) -> Vec<Vec<RecordBatch>> {
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let share = total.div_ceil(n).max(1);
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
    let mut rows = 0usize;
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        // The partition the batch's first row falls in.
        let at = (rows / share).min(n - 1);
        rows += batch.num_rows();
        out[at].push(batch);
    }
    out
}

/// Row count, byte size, and each column's null count, minimum and
/// maximum (absent for types the min/max kernels do not order).
fn column_bounds(schema: &SchemaRef, batches: &[RecordBatch]) -> Statistics {
    let columns = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let mut stats = ColumnStatistics::new_unknown();
            stats.null_count =
                Precision::Exact(batches.iter().map(|b| b.column(i).null_count()).sum());
            if let Some((lo, hi)) = min_max(field.data_type(), batches, i) {
                stats.min_value = Precision::Exact(lo);
                stats.max_value = Precision::Exact(hi);
            }
            stats
        })
        .collect();
    Statistics {
        num_rows: Precision::Exact(batches.iter().map(RecordBatch::num_rows).sum()),
        total_byte_size: Precision::Exact(
            batches.iter().map(RecordBatch::get_array_memory_size).sum(),
        ),
        column_statistics: columns,
    }
}

/// The smallest and largest non-null value of column `i`; `None` when it
/// holds none or its type has no order the kernels know.
fn min_max(
    data_type: &DataType,
    batches: &[RecordBatch],
    i: usize,
) -> Option<(ScalarValue, ScalarValue)> {
    let mut min = MinAccumulator::try_new(data_type).ok()?;
    let mut max = MaxAccumulator::try_new(data_type).ok()?;
    for batch in batches {
        let column = [Arc::clone(batch.column(i))];
        min.update_batch(&column).ok()?;
        max.update_batch(&column).ok()?;
    }
    let (lo, hi) = (min.evaluate().ok()?, max.evaluate().ok()?);
    (!lo.is_null() && !hi.is_null()).then_some((lo, hi))
}

#[async_trait]
impl TableProvider for MemoryCopy {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
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
        self.table.scan(state, projection, filters, limit).await
    }

    /// The copy's own row count, size and column bounds (exact: the copy
    /// does not change once built).
    fn statistics(&self) -> Option<Statistics> {
        Some(self.statistics.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringViewArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(schema: &SchemaRef, ids: Vec<Option<i64>>, names: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringViewArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn bounds_cover_every_batch_and_count_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8View, true),
        ]));
        let batches = vec![
            batch(&schema, vec![Some(5), None], vec![Some("m"), Some("b")]),
            batch(&schema, vec![Some(-3), Some(9)], vec![None, Some("z")]),
        ];
        let copy = MemoryCopy::try_new(Arc::clone(&schema), batches, 2).unwrap();
        let stats = copy.statistics().unwrap();
        assert_eq!(stats.num_rows, Precision::Exact(4));
        let id = &stats.column_statistics[0];
        assert_eq!(id.min_value, Precision::Exact(ScalarValue::Int64(Some(-3))));
        assert_eq!(id.max_value, Precision::Exact(ScalarValue::Int64(Some(9))));
        assert_eq!(id.null_count, Precision::Exact(1));
        let name = &stats.column_statistics[1];
        assert_eq!(
            name.min_value,
            Precision::Exact(ScalarValue::Utf8View(Some("b".into())))
        );
        assert_eq!(
            name.max_value,
            Precision::Exact(ScalarValue::Utf8View(Some("z".into())))
        );
        assert_eq!(name.null_count, Precision::Exact(1));
    }

    #[test]
    fn held_bytes_counts_a_shared_buffer_once() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8View, true),
        ]));
        let names: Vec<Option<String>> = (0..1000)
            .map(|i| Some(format!("a name long enough not to be inlined {i}")))
            .collect();
        let whole = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter((0..1000).map(Some))),
                Arc::new(StringViewArray::from_iter(names)),
            ],
        )
        .unwrap();
        let one = held_bytes(std::slice::from_ref(&whole));
        // At least the ids and the strings themselves.
        assert!(one >= 1000 * 8 + 1000 * 40, "{one}");
        // Slices share their parent's buffers: the same memory.
        let halves = [whole.slice(0, 500), whole.slice(500, 500)];
        assert_eq!(held_bytes(&halves), one);
        let summed: usize = halves.iter().map(RecordBatch::get_array_memory_size).sum();
        assert!(summed > one, "{summed} vs {one}");
    }

    #[test]
    fn an_all_null_column_has_no_bounds() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8View, true),
        ]));
        let batches = vec![batch(&schema, vec![None, None], vec![Some("a"), None])];
        let stats = MemoryCopy::try_new(schema, batches, 1)
            .unwrap()
            .statistics()
            .unwrap();
        assert_eq!(stats.column_statistics[0].min_value, Precision::Absent);
        assert_eq!(stats.column_statistics[0].max_value, Precision::Absent);
        assert_eq!(stats.column_statistics[0].null_count, Precision::Exact(2));
    }

    #[test]
    fn partitions_get_about_the_same_rows_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8View, true),
        ]));
        // Ten batches of 10 rows, as one skewed source partition would give.
        let batches: Vec<_> = (0..10)
            .map(|b| {
                batch(
                    &schema,
                    (0..10).map(|r| Some(b * 10 + r)).collect(),
                    vec![None; 10],
                )
            })
            .collect();
        let parts = balance(batches, 3);
        let rows: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(RecordBatch::num_rows).sum())
            .collect();
        assert_eq!(rows, vec![40, 30, 30]);
        let first_ids: Vec<i64> = parts
            .iter()
            .flatten()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect();
        assert_eq!(first_ids, (0..10).map(|b| b * 10).collect::<Vec<_>>());
        // More partitions than batches: the rest stay empty, none is lost.
        let few = vec![batch(&schema, vec![Some(1)], vec![None])];
        let parts = balance(few, 4);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.iter().flatten().count(), 1);
    }
}
