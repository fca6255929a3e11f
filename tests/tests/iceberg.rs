//! Iceberg scans are planned by the iceberg crate: partition values and file
//! bounds prune data files before DataFusion reads any, and the policy's row
//! filter prunes like any other predicate.

use arrow::array::AsArray;

use crate::common::{run, session_as};

async fn explain(principal: &str, sql: &str) -> String {
    let session = session_as(principal).await;
    let batches = run(&session, &format!("EXPLAIN {sql}")).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// The data files the physical plan of `sql` reads.
async fn files_read(principal: &str, sql: &str) -> Vec<String> {
    let session = session_as(principal).await;
    let batches = run(&session, &format!("EXPLAIN {sql}")).await.unwrap();
    let plan = batches
        .iter()
        .flat_map(|b| {
            let types = b.column(0).as_string::<i32>();
            let plans = b.column(1).as_string::<i32>();
            (0..b.num_rows())
                .filter(|&i| types.value(i) == "physical_plan")
                .map(|i| plans.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect::<String>();
    let mut files: Vec<String> = plan
        .split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
        .filter(|t| t.ends_with(".parquet") && t.contains("shipments"))
        .map(|t| t.rsplit("shipments/data/").next().unwrap().to_string())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn partition_values_file_bounds_and_row_filters_prune_iceberg_files() {
    // gina has no row filter: every file of the 3 days x 3 regions.
    let all = files_read("gina", "SELECT count(*) FROM logistics.shipments").await;
    assert_eq!(
        all.len(),
        9,
        "{all:?}\n{}",
        explain("gina", "SELECT count(*) FROM logistics.shipments").await
    );
    // A filter on the partition column reads that region's files only.
    let amer = files_read(
        "gina",
        "SELECT count(*) FROM logistics.shipments WHERE region = 'AMER'",
    )
    .await;
    assert_eq!(amer.len(), 3, "{amer:?}");
    assert!(
        amer.iter().all(|f| f.starts_with("region=AMER/")),
        "{amer:?}"
    );
    // ana's row filter (region = EMEA) prunes the same way, and the bounds of
    // shipped_at drop the days that shipped later.
    let ana = files_read(
        "ana",
        "SELECT count(*) FROM logistics.shipments WHERE shipped_at < TIMESTAMP '2026-10-02T00:00:00Z'",
    )
    .await;
    assert!(!ana.is_empty());
    assert!(ana.iter().all(|f| f.starts_with("region=EMEA/")), "{ana:?}");
    assert!(ana.len() < 3, "the last day's file is not pruned: {ana:?}");
}

/// The scan of an Iceberg table states each column's bounds and null count
/// from the manifests, as a Parquet table does from its footers: DataFusion
/// picks the build side of a join and estimates its size from them.
#[tokio::test]
async fn iceberg_scans_state_the_manifests_column_statistics() {
    use datafusion::common::ScalarValue;
    use datafusion::physical_plan::ExecutionPlan;
    use std::sync::Arc;

    let session = session_as("gina").await;
    let plan = session
        .sql("SELECT shipment_id, shipped_at, delivered_at, weight_kg FROM logistics.shipments")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    fn scan(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
        if plan.name() == "DataSourceExec" {
            return Some(Arc::clone(plan));
        }
        plan.children().into_iter().find_map(scan)
    }
    let scan = scan(&plan).expect("a DataSourceExec");
    let stats = datafusion::physical_plan::statistics::StatisticsContext::new()
        .compute(scan.as_ref(), &Default::default())
        .unwrap();
    let schema = scan.schema();
    let column = |name: &str| &stats.column_statistics[schema.index_of(name).unwrap()];
    // The bounds are those of the data, inexact (never used to answer).
    let rows = run(
        &session,
        "SELECT min(shipped_at), max(shipped_at), count(*) - count(delivered_at) \
         FROM logistics.shipments",
    )
    .await
    .unwrap();
    let value = |i: usize| ScalarValue::try_from_array(rows[0].column(i), 0).unwrap();
    let shipped = column("shipped_at");
    let ty = schema.field_with_name("shipped_at").unwrap().data_type();
    let bound = |i: usize| value(i).cast_to(ty).unwrap();
    assert_eq!(shipped.min_value.get_value(), Some(&bound(0)), "{stats:?}");
    assert_eq!(shipped.max_value.get_value(), Some(&bound(1)), "{stats:?}");
    assert!(!shipped.min_value.is_exact().unwrap());
    assert_eq!(
        column("delivered_at")
            .null_count
            .get_value()
            .map(|n| *n as i64),
        Some(value(2).to_string().parse::<i64>().unwrap()),
        "{stats:?}"
    );
    assert!(column("shipment_id").max_value.get_value().is_some());
    // Floats have none: a NaN lies outside every bound.
    assert!(column("weight_kg").max_value.get_value().is_none());
}
