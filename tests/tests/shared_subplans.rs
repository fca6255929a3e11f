//! An aggregation a query names twice (a `WITH` clause used twice) is
//! computed once: the same answers as computing it per use, one scan of its
//! table, and never shared where it could change an answer (volatile
//! functions) or where its size is hidden (above a policy barrier).

use std::path::Path;
use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use meshq_engine::shared_subplan::SharedExec;
use meshq_engine::{Engine, MeshSession};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

use crate::common::sorted_rows;

async fn mesh(dir: &Path, extra: &str) -> Engine {
    write_fixture_mesh(dir).await.unwrap();
    let platform = dir.join("meshq.yaml");
    let text = std::fs::read_to_string(&platform).unwrap() + extra;
    std::fs::write(&platform, text).unwrap();
    Engine::load(fixture_engine_config(dir)).await.unwrap()
}

/// The fixture mesh twice: as configured, and with sharing turned off for
/// every session (with the directories that hold them).
async fn engines() -> ([tempfile::TempDir; 2], Engine, Engine) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let engine = mesh(dirs[0].path(), "").await;
    let off = mesh(
        dirs[1].path(),
        "\nsettings: { meshq_plan.share_subplans: false }\n",
    )
    .await;
    (dirs, engine, off)
}

fn session(engine: &Engine, name: &str) -> MeshSession {
    engine.session(&engine.mesh().config.principal(name).unwrap())
}

async fn plan(s: &MeshSession, sql: &str) -> Arc<dyn ExecutionPlan> {
    s.sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap()
}

/// The `SharedExec` nodes of `plan`.
fn shared(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut out = Vec::new();
    if plan.is::<SharedExec>() {
        out.push(Arc::clone(plan));
    }
    for child in plan.children() {
        out.extend(shared(child));
    }
    out
}

/// The rows each file scan below `plan` produced (after it ran), once per
/// distinct node.
fn scanned_rows(plan: &Arc<dyn ExecutionPlan>) -> Vec<usize> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, seen: &mut Vec<*const ()>, out: &mut Vec<usize>) {
        let ptr = Arc::as_ptr(plan) as *const ();
        if seen.contains(&ptr) {
            return;
        }
        seen.push(ptr);
        if plan.name() == "DataSourceExec" {
            out.push(plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0));
        }
        for child in plan.children() {
            walk(child, seen, out);
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut Vec::new(), &mut out);
    out
}

async fn run(s: &MeshSession, plan: Arc<dyn ExecutionPlan>) -> Vec<String> {
    let batches = datafusion::physical_plan::collect(plan, s.context().task_ctx())
        .await
        .unwrap();
    sorted_rows(&batches)
}

/// Revenue per region, compared with the largest (a scalar subquery) and
/// joined with itself.
const TWICE: &[&str] = &[
    "WITH t AS (SELECT region, sum(total_amount) AS s FROM sales.orders GROUP BY region) \
     SELECT region, s FROM t WHERE s = (SELECT max(s) FROM t)",
    "WITH t AS (SELECT region, count(*) AS n, sum(total_amount) AS s FROM sales.orders GROUP BY region) \
     SELECT a.region, a.n, a.s, b.n, b.s FROM t a JOIN t b ON a.region = b.region",
];

#[tokio::test]
async fn an_aggregation_named_twice_is_computed_once_with_the_same_answers() {
    let (_dirs, engine, off) = engines().await;
    let (on, apart) = (session(&engine, "pat"), session(&off, "pat"));
    for sql in TWICE {
        let shared_plan = plan(&on, sql).await;
        let nodes = shared(&shared_plan);
        assert_eq!(nodes.len(), 2, "{sql}: two uses share one node each");
        let inputs: Vec<_> = nodes.iter().map(|n| Arc::clone(n.children()[0])).collect();
        assert!(
            Arc::ptr_eq(&inputs[0], &inputs[1]),
            "{sql}: both uses read one input"
        );
        let apart_plan = plan(&apart, sql).await;
        assert!(
            shared(&apart_plan).is_empty(),
            "{sql}: the setting turns it off"
        );

        let answer = run(&on, Arc::clone(&shared_plan)).await;
        assert!(!answer.is_empty(), "{sql}");
        assert_eq!(answer, run(&apart, Arc::clone(&apart_plan)).await, "{sql}");

        // The table is read once with sharing, once per use without.
        let once = scanned_rows(&shared_plan);
        let per_use = scanned_rows(&apart_plan);
        assert_eq!(once.len(), 1, "{sql}: {once:?}");
        assert_eq!(per_use.len(), 2, "{sql}: {per_use:?}");
        assert!(once[0] > 0);
        assert_eq!(per_use, vec![once[0], once[0]], "{sql}");

        // A plan reset to run again (as DataFusion requires) computes
        // again: the same answer, not the first run's rows read twice.
        let again =
            datafusion::physical_plan::execution_plan::reset_plan_states(Arc::clone(&shared_plan))
                .unwrap();
        assert_eq!(run(&on, Arc::clone(&again)).await, answer, "{sql}");
    }
}

#[tokio::test]
async fn volatile_or_policy_bound_aggregations_are_computed_per_use() {
    let (_dirs, engine, off) = engines().await;
    // Each use of a volatile aggregation draws its own values.
    let pat = session(&engine, "pat");
    let random = "WITH t AS (SELECT region, sum(total_amount * random()) AS s FROM sales.orders GROUP BY region) \
                  SELECT a.region, a.s, b.s FROM t a JOIN t b ON a.region = b.region";
    assert!(shared(&plan(&pat, random).await).is_empty());

    // ana reads orders and profiles through policies (a row filter and
    // masks): the size above her barrier is not known, so nothing is
    // shared, and she gets what she gets per use.
    let (ana, ana_apart) = (session(&engine, "ana"), session(&off, "ana"));
    for sql in TWICE.iter().copied().chain([
        "WITH p AS (SELECT email, count(*) AS n FROM customers.profiles GROUP BY email) \
         SELECT a.email, a.n + b.n FROM p a JOIN p b ON a.email = b.email",
    ]) {
        let p = plan(&ana, sql).await;
        assert!(shared(&p).is_empty(), "{sql}");
        assert_eq!(
            run(&ana, p).await,
            run(&ana_apart, plan(&ana_apart, sql).await).await,
            "{sql}"
        );
    }
}
