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
