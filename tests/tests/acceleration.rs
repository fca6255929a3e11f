//! Accelerated ports: the same answers per principal as from the source,
//! the copy refreshed when the source changes, the last good copy kept
//! while refreshes fail (until `maxStaleness`), and memory refused clearly.

use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use meshq_engine::acceleration::RefreshOutcome;
use meshq_engine::{Engine, MeshSession};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

use crate::common::{error_problems, run_served, sorted_rows};

const SERVER: &str = "customProperties: [ { property: server, value: local } ]";

/// Sets the acceleration of the product in `odps` (relative to `dir`):
/// `value` as written in the port, or none.
pub(crate) fn set_acceleration(dir: &Path, odps: &str, value: Option<&str>) {
    let path = dir.join(odps);
    // The demo writes some ports' properties as a block list: one line.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "customProperties:\n      - { property: server, value: local }\n      - { property: acceleration, value: { engine: memory, refresh: on-change, maxStaleness: 10m } }",
            SERVER,
        );
    let port = text
        .lines()
        .find(|l| l.contains("property: server"))
        .unwrap_or_else(|| panic!("{odps} has no server property"))
        .trim()
        .to_string();
    let new = match value {
        Some(v) => format!(
            "customProperties: [ {{ property: server, value: local }}, {{ property: acceleration, value: {v} }} ]"
        ),
        None => SERVER.to_string(),
    };
    std::fs::write(&path, text.replace(&port, &new)).unwrap();
}

/// Accelerates `ops.region_totals` through its contract's server entry.
fn accelerate_region_totals(dir: &Path, value: &str) {
    let path = dir.join("ops/region_totals.odcs.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let old = "path: ./data/region_totals/ }";
    assert!(text.contains(old));
    let new = format!(
        "path: ./data/region_totals/, customProperties: [ {{ property: acceleration, value: {value} }} ] }}"
    );
    std::fs::write(&path, text.replace(old, &new)).unwrap();
}

/// The fixture mesh in `dir`, with `accelerate` ((product file, value)) and
/// `extra` appended to `meshq.yaml`.
async fn mesh(dir: &Path, accelerate: &[(&str, Option<&str>)], extra: &str) -> Engine {
    write_fixture_mesh(dir).await.unwrap();
    for (odps, value) in accelerate {
        if *odps == REGION_TOTALS {
            accelerate_region_totals(dir, value.unwrap());
        } else {
            set_acceleration(dir, odps, *value);
        }
    }
    let platform = dir.join("meshq.yaml");
    let text = std::fs::read_to_string(&platform).unwrap() + extra;
    std::fs::write(&platform, text).unwrap();
    Engine::load(fixture_engine_config(dir)).await.unwrap()
}

/// The outcomes of the tables this file accelerates, without the fixture's
/// materialised product.
fn without_materialized(outcomes: Vec<(String, RefreshOutcome)>) -> Vec<(String, RefreshOutcome)> {
    outcomes
        .into_iter()
        .filter(|(t, _)| t != "marketing.segments")
        .collect()
}

fn session(engine: &Engine, name: &str) -> MeshSession {
    engine.session(&engine.mesh().config.principal(name).unwrap())
}

async fn rows(s: &MeshSession, sql: &str) -> Result<Vec<String>, String> {
    match s.sql(sql).await {
        Ok(df) => df
            .collect()
            .await
            .map(|b| sorted_rows(&b))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Through the path servers use, where the result cache sits (the demo
/// mesh turns it on): the rows and whether they came from the cache.
async fn rows_served(s: &MeshSession, sql: &str) -> (Vec<String>, bool) {
    let (batches, hit) = run_served(s, sql).await.unwrap();
    (sorted_rows(&batches), hit)
}

const ORDERS: &str = "sales/orders.odps.yaml";
const PROFILES: &str = "customers/profiles.odps.yaml";
/// Marks `ops.region_totals` (accelerated through its contract server).
const REGION_TOTALS: &str = "ops/region_totals";

const QUERIES: &[&str] = &[
    "SELECT * FROM sales.orders",
    "SELECT region, count(*), sum(total_amount) FROM sales.orders GROUP BY region",
    "SELECT count(*) FROM sales.orders WHERE customer_id LIKE 'a%'",
    "SELECT o.order_id, p.email, p.full_name FROM sales.orders o JOIN customers.profiles p ON o.customer_id = p.customer_id WHERE o.total_amount > 50",
    "SELECT * FROM customers.profiles WHERE email LIKE '%@%' ORDER BY customer_id LIMIT 7",
];

#[tokio::test]
async fn accelerated_answers_equal_the_sources_for_every_principal() {
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = mesh(plain_dir.path(), &[(ORDERS, None), (PROFILES, None)], "").await;
    let dir = tempfile::tempdir().unwrap();
    let fast = mesh(
        dir.path(),
        &[
            (ORDERS, Some("{ engine: memory, refresh: on-change }")),
            (PROFILES, Some("{ engine: parquet }")),
        ],
        "",
    )
    .await;
    // The fixture's materialised `marketing.segments` is built too.
    let built = without_materialized(fast.refresh_accelerations().await);
    assert_eq!(built.len(), 2, "{built:?}");
    for (table, outcome) in &built {
        assert!(
            matches!(outcome, RefreshOutcome::Built { bytes, .. } if *bytes > 0),
            "{table}: {outcome:?}"
        );
    }
    for t in ["sales.orders", "customers.profiles"] {
        assert!(
            fast.served_table(t).unwrap().provider.is_accelerated(),
            "{t}"
        );
        assert!(
            !plain.served_table(t).unwrap().provider.is_accelerated(),
            "{t}"
        );
    }
    // A second refresh with nothing changed builds nothing.
    assert!(
        fast.refresh_accelerations()
            .await
            .iter()
            .all(|(_, o)| *o == RefreshOutcome::Current)
    );
    for who in ["ana", "ben", "gina", "pat"] {
        for sql in QUERIES {
            let expected = rows(&session(&plain, who), sql).await;
            let got = rows(&session(&fast, who), sql).await;
            assert_eq!(got, expected, "{who}: {sql}");
        }
    }
    let meta = session(&fast, "pat")
        .sql("SELECT table_name, accelerated, accelerated_version, acceleration_error FROM meta.tables WHERE accelerated AND materialized_at IS NULL")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let listed = sorted_rows(&meta);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed[0].starts_with("orders|true|delta:"), "{listed:?}");
    assert!(listed[1].starts_with("profiles|true|files:"), "{listed:?}");
}

#[tokio::test]
async fn a_copy_follows_its_source_and_outlives_failures_within_max_staleness() {
    let dir = tempfile::tempdir().unwrap();
    let engine = mesh(
        dir.path(),
        &[(
            REGION_TOTALS,
            Some("{ engine: memory, refresh: on-change, maxStaleness: 2s }"),
        )],
        "",
    )
    .await;
    let table = "ops.region_totals";
    assert!(engine.acceleration_of(table).is_some());
    engine.refresh_accelerations().await;
    let gina = session(&engine, "gina");
    let sql = "SELECT count(*) AS n FROM ops.region_totals";
    let before = rows(&gina, sql).await.unwrap();
    assert_eq!(rows_served(&gina, sql).await, (before.clone(), false));
    assert_eq!(rows_served(&gina, sql).await, (before.clone(), true));
    // A new file: the copy is of the old file set until the refresh.
    let part = dir.path().join("ops/data/region_totals/region=EMEA");
    let existing = std::fs::read_dir(&part)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .unwrap()
        .path();
    let extra = part.join("extra.parquet");
    std::fs::copy(&existing, &extra).unwrap();
    assert_eq!(
        rows(&gina, sql).await.unwrap(),
        before,
        "served from the copy"
    );
    let refreshed = engine.refresh_accelerations().await;
    assert!(
        refreshed
            .iter()
            .any(|(t, o)| t == table && matches!(o, RefreshOutcome::Built { .. })),
        "{refreshed:?}"
    );
    let after = rows(&gina, sql).await.unwrap();
    assert_ne!(after, before);
    // The result cache follows the copy: the new copy is a new version.
    assert_eq!(rows_served(&gina, sql).await, (after.clone(), false));
    // A corrupt file: the refresh fails, the last good copy still serves.
    std::fs::write(&extra, vec![7u8; 64]).unwrap();
    let failed = engine.refresh_accelerations().await;
    assert!(
        failed.iter().any(|(t, o)| t == table
            && matches!(o, RefreshOutcome::Failed(e) if e.contains("region_totals"))),
        "{failed:?}"
    );
    assert_eq!(rows(&gina, sql).await.unwrap(), after);
    let status = engine.acceleration_of(table).unwrap().status();
    assert!(status.serving && status.error.is_some(), "{status:?}");
    // Past maxStaleness, queries read the source, which is corrupt.
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert!(!engine.acceleration_of(table).unwrap().status().serving);
    let e = rows(&gina, sql).await.unwrap_err();
    assert!(e.contains("extra.parquet") || e.contains("Parquet"), "{e}");
    // Repaired: the next refresh serves a copy again.
    std::fs::copy(&existing, &extra).unwrap();
    engine.refresh_accelerations().await;
    assert_eq!(rows(&gina, sql).await.unwrap(), after);
    assert!(engine.acceleration_of(table).unwrap().status().serving);
}

#[tokio::test]
async fn a_copy_that_does_not_fit_in_memory_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let engine = mesh(
        dir.path(),
        &[(ORDERS, Some("{ engine: memory }"))],
        "limits: { memory: 8KiB }\n",
    )
    .await;
    let outcome = engine.refresh_accelerations().await;
    let (_, o) = outcome.iter().find(|(t, _)| t == "sales.orders").unwrap();
    let RefreshOutcome::Failed(e) = o else {
        panic!("{o:?}")
    };
    assert!(
        e.contains("sales.orders") && e.contains("limits.memory") && e.contains("engine: parquet"),
        "{e}"
    );
    // Served from the source meanwhile.
    assert!(
        !engine
            .served_table("sales.orders")
            .unwrap()
            .provider
            .is_accelerated()
    );
    let n = session(&engine, "pat")
        .sql("SELECT count(*) FROM sales.orders")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n: &RecordBatch = &n[0];
    assert!(
        n.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
            > 0
    );
}

/// The bypass corpus, against accelerated tables, with scans applying
/// joins' dynamic filters off, as by default (`IN` lists and bounds) and
/// all of them (hash table probes too).
#[tokio::test]
async fn accelerated_tables_reveal_nothing_a_policy_hides() {
    let dir = tempfile::tempdir().unwrap();
    let default = mesh(
        dir.path(),
        &[
            (ORDERS, Some("{ engine: memory }")),
            (PROFILES, Some("{ engine: parquet }")),
        ],
        "",
    )
    .await;
    let with = |settings: &[(&str, &str)]| {
        let mut config = fixture_engine_config(dir.path());
        for (k, v) in settings {
            config.settings.push((k.to_string(), v.to_string()));
        }
        Engine::load(config)
    };
    let off = with(&[("meshq_scan.dynamic_filters", "false")])
        .await
        .unwrap();
    let all = with(&[("meshq_scan.dynamic_filter_probes", "all")])
        .await
        .unwrap();
    let mesh_path = dir.path().canonicalize().unwrap().display().to_string();
    for engine in [&off, &default, &all] {
        engine.refresh_accelerations().await;
        let (found, answered) =
            crate::bypass::corpus_leaks(&session(engine, "ana"), &mesh_path).await;
        assert!(found.is_empty(), "leaks as ana: {found:#?}");
        assert!(answered >= 20, "only {answered} answered");
        let (found, _) = crate::bypass::corpus_leaks(&session(engine, "pat"), &mesh_path).await;
        assert!(found.len() >= 10, "the detector found only {found:?}");
    }
}

/// Local copies hold raw rows: no `files:` location may include them.
#[tokio::test]
async fn sql_file_locations_may_not_include_local_copies() {
    // The mesh outside the system temp directory, so that only the copies
    // are in the way of a scratch location there.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let temp = std::env::temp_dir().display().to_string();
    let engine = mesh(
        dir.path(),
        &[(PROFILES, Some("{ engine: parquet }"))],
        &format!("files: {{ scratch: '{temp}' }}\n"),
    )
    .await;
    let refused = error_problems(&engine);
    assert!(
        refused.iter().any(|p| p.contains("meshq-acceleration-")),
        "{refused:?}"
    );
}

/// A reload that does not change a table keeps its copy; one that changes
/// its definition starts a new one.
#[tokio::test]
async fn copies_outlive_reloads_that_do_not_change_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let first = mesh(
        dir.path(),
        &[
            (ORDERS, Some("{ engine: memory }")),
            (PROFILES, Some("{ engine: memory }")),
        ],
        "",
    )
    .await;
    assert_eq!(
        without_materialized(first.refresh_accelerations().await).len(),
        2
    );
    let second = Engine::load_after(fixture_engine_config(dir.path()), Some(&first))
        .await
        .unwrap();
    for t in ["sales.orders", "customers.profiles"] {
        assert!(
            second.served_table(t).unwrap().provider.is_accelerated(),
            "{t}"
        );
    }
    assert!(
        second
            .refresh_accelerations()
            .await
            .iter()
            .all(|(_, o)| *o == RefreshOutcome::Current)
    );
    // Profiles now read through its parquet engine: a new, empty slot.
    set_acceleration(dir.path(), PROFILES, Some("{ engine: parquet }"));
    let third = Engine::load_after(fixture_engine_config(dir.path()), Some(&second))
        .await
        .unwrap();
    assert!(
        third
            .served_table("sales.orders")
            .unwrap()
            .provider
            .is_accelerated()
    );
    assert!(
        !third
            .served_table("customers.profiles")
            .unwrap()
            .provider
            .is_accelerated()
    );
    let outcomes = third.refresh_accelerations().await;
    assert!(
        outcomes
            .iter()
            .any(|(t, o)| t == "customers.profiles" && matches!(o, RefreshOutcome::Built { .. })),
        "{outcomes:?}"
    );
    // Acceleration removed: the table reads its source.
    set_acceleration(dir.path(), PROFILES, None);
    let fourth = Engine::load_after(fixture_engine_config(dir.path()), Some(&third))
        .await
        .unwrap();
    assert!(fourth.acceleration_of("customers.profiles").is_none());
    assert!(
        !fourth
            .served_table("customers.profiles")
            .unwrap()
            .provider
            .is_accelerated()
    );
}

/// A memory copy reports its columns' bounds to the planner (inexact, so
/// nothing is answered from them), as the files it was copied from do:
/// without them DataFusion planned every join of TPC-H q7 over copies on
/// one side.
#[tokio::test]
async fn a_memory_copy_gives_the_planner_its_column_bounds() {
    use datafusion::common::ScalarValue;
    use datafusion::common::stats::Precision;
    use datafusion::physical_plan::ExecutionPlan;

    let dir = tempfile::tempdir().unwrap();
    let engine = mesh(dir.path(), &[(ORDERS, Some("{ engine: memory }"))], "").await;
    engine.refresh_accelerations().await;
    assert!(
        engine
            .served_table("sales.orders")
            .unwrap()
            .provider
            .is_accelerated()
    );
    let s = session(&engine, "pat");
    let bounds = s
        .sql("SELECT min(total_amount), max(total_amount) FROM sales.orders")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let min = ScalarValue::try_from_array(bounds[0].column(0), 0).unwrap();
    let max = ScalarValue::try_from_array(bounds[0].column(1), 0).unwrap();
    assert!(min < max, "{min} {max}");

    let plan = s
        .sql("SELECT order_id, total_amount FROM sales.orders")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    fn scan(plan: &std::sync::Arc<dyn ExecutionPlan>) -> Option<std::sync::Arc<dyn ExecutionPlan>> {
        if plan.name() == "MeshScanExec" {
            return Some(std::sync::Arc::clone(plan));
        }
        plan.children().into_iter().find_map(scan)
    }
    let scan = scan(&plan).expect("a scan of sales.orders");
    let stats = datafusion::physical_plan::statistics::StatisticsContext::new()
        .compute(scan.as_ref(), &Default::default())
        .unwrap();
    let schema = scan.schema();
    let amount = &stats.column_statistics[schema.index_of("total_amount").unwrap()];
    assert_eq!(amount.min_value, Precision::Inexact(min));
    assert_eq!(amount.max_value, Precision::Inexact(max));
    assert!(matches!(
        stats.column_statistics[schema.index_of("order_id").unwrap()].min_value,
        Precision::Inexact(_)
    ));
}

/// A join's dynamic filter reaches a memory copy's scan and drops the rows
/// the join would drop, there, before they are repartitioned and probed
/// (DataFusion's memory scan applies no filter); the answer is the same
/// as without the copy. A filter that probes the join's hash table is
/// applied as `meshq_scan.dynamic_filter_probes` says.
#[tokio::test]
async fn a_join_filters_a_memory_copy_at_its_scan() {
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use std::sync::Arc;

    let plain_dir = tempfile::tempdir().unwrap();
    let plain = mesh(plain_dir.path(), &[(ORDERS, None)], "").await;
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &[(ORDERS, Some("{ engine: memory }"))], "").await;
    let sql = "SELECT count(*) FROM sales.orders o JOIN (SELECT order_id AS k FROM sales.orders WHERE total_amount < 20) s ON o.order_id = s.k";
    let expected = rows(&session(&plain, "pat"), sql).await.unwrap();
    fn pruned(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let here = if plan.name() == "MeshScanExec" {
            plan.metrics()
                .and_then(|m| m.sum_by_name("dynamic_filter_rows_pruned"))
                .map_or(0, |v| v.as_usize())
        } else {
            0
        };
        here + plan.children().into_iter().map(pruned).sum::<usize>()
    }
    // Rows the scan drops, with these engine settings; the answer must
    // not change.
    let pruned_with = |settings: &'static [(&'static str, &'static str)]| {
        let dir = dir.path().to_path_buf();
        let expected = expected.clone();
        async move {
            let mut config = fixture_engine_config(&dir);
            for (k, v) in settings {
                config.settings.push((k.to_string(), v.to_string()));
            }
            let engine = Engine::load(config).await.unwrap();
            engine.refresh_accelerations().await;
            let df = session(&engine, "pat").sql(sql).await.unwrap();
            let task = Arc::new(df.task_ctx());
            let plan = df.create_physical_plan().await.unwrap();
            let got = collect(Arc::clone(&plan), task).await.unwrap();
            assert_eq!(sorted_rows(&got), expected, "{settings:?}");
            pruned(&plan)
        }
    };
    let s = session(&plain, "pat");
    let total: usize = rows(&s, "SELECT count(*) FROM sales.orders").await.unwrap()[0]
        .parse()
        .unwrap();
    let kept: usize = rows(
        &s,
        "SELECT count(*) FROM sales.orders WHERE total_amount < 20",
    )
    .await
    .unwrap()[0]
        .parse()
        .unwrap();
    assert!(
        kept < total,
        "the filter must select fewer rows: {kept} of {total}"
    );
    // By default, a join's few keys become an `IN` list, applied at the
    // scan. (DataFusion sizes the list by the memory its key arrays hold,
    // and a copy's string views share larger buffers: the limit is raised
    // so that two keys are always a list.)
    const LIST: (&str, &str) = (
        "datafusion.optimizer.hash_join_inlist_pushdown_max_size",
        "67108864",
    );
    assert_eq!(pruned_with(&[LIST]).await, total - kept);
    assert_eq!(
        pruned_with(&[LIST, ("meshq_scan.dynamic_filters", "false")]).await,
        0
    );
    // Keys past DataFusion's `IN` list limit are looked up in the join's
    // hash table instead: applied by default (`selective`: the table has
    // fewer rows than a scan partition samples before it judges a probe),
    // not with `none`, applied with `collect_left` (this join builds one
    // table) and `all`.
    const PROBE: (&str, &str) = (
        "datafusion.optimizer.hash_join_inlist_pushdown_max_distinct_values",
        "0",
    );
    assert_eq!(pruned_with(&[PROBE]).await, total - kept);
    assert_eq!(
        pruned_with(&[PROBE, ("meshq_scan.dynamic_filter_probes", "none")]).await,
        0
    );
    assert_eq!(
        pruned_with(&[PROBE, ("meshq_scan.dynamic_filter_probes", "collect_left")]).await,
        total - kept
    );
    assert_eq!(
        pruned_with(&[PROBE, ("meshq_scan.dynamic_filter_probes", "all")]).await,
        total - kept
    );
}

/// A scan waits, before it reads, for the dynamic filters of the hash joins
/// above it (a scan that started before the join had built its table would
/// keep every row), and never for a TopK's, which is complete only once the
/// scan has been read. `meshq.yaml` `settings` can turn the wait off.
#[tokio::test]
async fn scans_wait_for_hash_join_filters_and_never_for_a_topk() {
    use datafusion::physical_plan::ExecutionPlan;
    use meshq_connectors::MeshScanExec;
    use std::sync::Arc;

    // (dynamic filters, of which waited for) of each scan of `sql`'s plan.
    async fn scans(engine: &Engine, sql: &str) -> Vec<(usize, usize)> {
        fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(usize, usize)>) {
            if let Some(scan) = plan.downcast_ref::<MeshScanExec>() {
                out.push((scan.dynamic_filters().len(), scan.join_filter_waits().len()));
            }
            for child in plan.children() {
                walk(child, out);
            }
        }
        let plan = session(engine, "pat")
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let mut out = Vec::new();
        walk(&plan, &mut out);
        out
    }
    let join = "SELECT count(*) FROM sales.orders o JOIN (SELECT order_id AS k FROM sales.orders WHERE total_amount < 20) s ON o.order_id = s.k";
    let topk = "SELECT o.order_id FROM sales.orders o JOIN (SELECT order_id AS k FROM sales.orders WHERE total_amount < 20) s ON o.order_id = s.k ORDER BY o.total_amount DESC LIMIT 3";

    let dir = tempfile::tempdir().unwrap();
    let engine = mesh(dir.path(), &[], "").await;
    let joined = scans(&engine, join).await;
    assert!(
        joined
            .iter()
            .any(|&(filters, waits)| filters > 0 && waits == filters),
        "the probe side's scan waits for the join's filter: {joined:?}"
    );
    // A TopK above a join: its filter reaches a scan beside the join's,
    // and only the join's is waited for.
    let sorted = scans(&engine, topk).await;
    assert!(
        sorted.iter().any(|&(filters, waits)| filters > waits),
        "the TopK's filter reaches a scan and is not waited for: {sorted:?}"
    );
    assert!(
        sorted.iter().any(|&(_, waits)| waits > 0),
        "the join's filter is waited for: {sorted:?}"
    );

    let off_dir = tempfile::tempdir().unwrap();
    let off = mesh(
        off_dir.path(),
        &[],
        "\nsettings: { meshq_scan.join_filter_wait_ms: 0 }\n",
    )
    .await;
    let joined = scans(&off, join).await;
    assert!(
        joined.iter().any(|&(filters, _)| filters > 0) && joined.iter().all(|&(_, w)| w == 0),
        "{joined:?}"
    );
}
