//! A coordinator over two in-process workers on loopback: what travels
//! beside a plan (the session's settings) reaches the workers.

use crate::common::run;

/// A new directory holding the fixture mesh.
async fn fixture_mesh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    dir
}

/// The fixture mesh (in the returned directory) as a single node and as
/// the coordinator of two in-process workers, with their verifiers.
async fn single_and_cluster() -> (
    tempfile::TempDir,
    meshq_engine::Engine,
    meshq_engine::Engine,
    Vec<meshq_cluster::Verifier>,
) {
    let dir = fixture_mesh().await;
    let (single, cluster, verifiers) = engines_over(dir.path()).await;
    (dir, single, cluster, verifiers)
}

/// The mesh in `dir` as a single node and as the coordinator of two
/// in-process workers, with their verifiers.
async fn engines_over(
    dir: &std::path::Path,
) -> (
    meshq_engine::Engine,
    meshq_engine::Engine,
    Vec<meshq_cluster::Verifier>,
) {
    let single = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir))
        .await
        .unwrap();
    let (cluster, verifiers) = meshq_tests::fixture_cluster_engine(dir).await.unwrap();
    (single, cluster, verifiers)
}

/// `batches` as a table.
fn text(batches: &[arrow::record_batch::RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

/// A session of pat with the admin role, who may `SET`.
fn admin_pat(engine: &meshq_engine::Engine) -> meshq_engine::MeshSession {
    let mut pat = engine.mesh().config.principal("pat").unwrap();
    pat.roles.insert("admin".into());
    engine.session(&pat)
}

/// The text of stage `n` in `EXPLAIN ANALYZE` output `analyzed` (up to the
/// next stage).
fn stage(analyzed: &str, n: usize) -> &str {
    let (_, rest) = analyzed
        .split_once(&format!("Stage {n} ──"))
        .unwrap_or_else(|| panic!("no stage {n}: {analyzed}"));
    rest.split_once(" Stage ").map_or(rest, |(s, _)| s)
}

/// `who`'s physical plan of `sql` on `engine`, within `memory` bytes.
async fn physical(
    engine: &meshq_engine::Engine,
    who: &str,
    sql: &str,
    memory: Option<usize>,
) -> meshq_engine::PhysicalQuery {
    let session = engine.session(&engine.mesh().config.principal(who).unwrap());
    let plan = session.plan(sql).await.unwrap();
    session.execute(plan, memory).await.unwrap()
}

/// Whether `query` runs on workers.
fn distributed(query: &meshq_engine::PhysicalQuery) -> bool {
    use datafusion::common::tree_node::TreeNode;
    query
        .plan
        .exists(|p| Ok(p.is::<datafusion_distributed::DistributedExec>()))
        .unwrap()
}

/// The session's time zone shapes what `to_timestamp` returns; a stage on
/// a worker computes it with the statement's time zone, as a single node
/// does, not the worker's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_a_stage_with_the_sessions_time_zone() {
    let (_dir, single, cluster, verifiers) = single_and_cluster().await;
    // SET is an admin's: pat with the admin role.
    let answer = |engine: meshq_engine::Engine| async move {
        let session = admin_pat(&engine);
        run(&session, "SET datafusion.execution.time_zone = '+05:00'")
            .await
            .unwrap();
        // A statement planned after the SET, as the next call of a client.
        let next = engine.session_for(session.data());
        let sql = "SELECT region, min(to_timestamp(length(order_id) * 86400)) AS first, arrow_typeof(min(to_timestamp(length(order_id) * 86400))) AS t \
                   FROM sales.orders GROUP BY region ORDER BY region";
        let plan = text(&run(&next, &format!("EXPLAIN {sql}")).await.unwrap());
        (text(&run(&next, sql).await.unwrap()), plan)
    };
    let (expected, _) = answer(single).await;
    assert!(expected.contains("+05:00"), "{expected}");
    let before: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
    let (got, plan) = answer(cluster).await;
    assert!(
        plan.contains("Stage 1") && plan.contains("to_timestamp"),
        "the conversion runs in a worker's stage: {plan}"
    );
    assert_eq!(got, expected);
    for (v, b) in verifiers.iter().zip(before) {
        assert!(v.accepted() > b, "a worker ran no fragment");
    }
}

/// The plan verifier checks a distributed plan again, as its tasks run it:
/// ana's plan passes; the same plan with the barrier or the mask taken out
/// of a stage fails, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_verifier_checks_each_distributed_plan_again() {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
    use meshq_cluster::coordinator::{unverified_distributions, verify_distributed};
    use meshq_engine::policy::barrier::PolicyBarrierExec;
    use std::sync::Arc;

    let dir = fixture_mesh().await;
    let (cluster, _) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    let before = unverified_distributions();
    let query = physical(
        &cluster,
        "ana",
        "SELECT email, count(*) AS n FROM sales.orders GROUP BY email",
        None,
    )
    .await;
    let plan = Arc::clone(&query.plan);
    assert!(distributed(&query), "the query is distributed");
    assert_eq!(unverified_distributions(), before);
    let options = meshq_engine::MeshqOptions::of(query.task.session_config().options());
    let tables = cluster.tables();
    verify_distributed(&plan, tables, &options).unwrap();

    // The barrier taken out.
    let no_barrier = Arc::clone(&plan)
        .transform_up(|n| {
            Ok(match n.downcast_ref::<PolicyBarrierExec>() {
                Some(b) => Transformed::yes(Arc::clone(b.children()[0])),
                None => Transformed::no(n),
            })
        })
        .unwrap()
        .data;
    let e = verify_distributed(&no_barrier, tables, &options).unwrap_err();
    assert!(
        e.to_string().contains("no policy barrier above the scan"),
        "{e}"
    );

    // The mask replaced by the raw column.
    let raw = Arc::clone(&plan)
        .transform_up(|n| {
            let Some(p) = n.downcast_ref::<ProjectionExec>() else {
                return Ok(Transformed::no(n));
            };
            if !p
                .expr()
                .iter()
                .any(|e| e.alias == "email" && !e.expr.is::<Column>())
            {
                return Ok(Transformed::no(n));
            }
            let input = Arc::clone(p.input());
            let exprs: Vec<ProjectionExpr> = p
                .expr()
                .iter()
                .map(|e| {
                    if e.alias == "email" {
                        let column = Column::new_with_schema("email", &input.schema()).unwrap();
                        ProjectionExpr::new(Arc::new(column), "email".to_string())
                    } else {
                        e.clone()
                    }
                })
                .collect();
            Ok(Transformed::yes(
                Arc::new(ProjectionExec::try_new(exprs, input)?) as Arc<dyn ExecutionPlan>,
            ))
        })
        .unwrap()
        .data;
    let e = verify_distributed(&raw, tables, &options).unwrap_err();
    assert!(
        e.to_string()
            .contains("`email` is not masked below the barrier"),
        "{e}"
    );

    // A dynamic filter on the scan below the barrier (it would see raw
    // values).
    let filtered = Arc::clone(&plan)
        .transform_up(|n| {
            let Some(scan) = n.downcast_ref::<meshq_connectors::MeshScanExec>() else {
                return Ok(Transformed::no(n));
            };
            let column = Column::new_with_schema("email", &scan.schema()).unwrap();
            let filter: Arc<dyn datafusion::physical_expr::PhysicalExpr> = Arc::new(
                datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr::new(
                    vec![Arc::new(column)],
                    datafusion::physical_expr::expressions::lit(true),
                ),
            );
            let scan = scan
                .with_token(*scan.token().unwrap())
                .with_dynamic_filters(vec![filter])?;
            Ok(Transformed::yes(Arc::new(scan) as Arc<dyn ExecutionPlan>))
        })
        .unwrap()
        .data;
    let e = verify_distributed(&filtered, tables, &options).unwrap_err();
    assert!(e.to_string().contains("carries dynamic filters"), "{e}");
}

/// A port accelerated as a `parquet` copy lives in the coordinator's own
/// directory: a plan reading it runs on the coordinator (a worker on
/// another machine would not find the files), with the same answers. The
/// same query over the port without acceleration goes to the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_reading_a_coordinators_own_copy_stay_on_the_coordinator() {
    let dir = fixture_mesh().await;
    let (from_files, _) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    crate::acceleration::set_acceleration(
        dir.path(),
        "sales/orders.odps.yaml",
        Some("{ engine: parquet }"),
    );
    let (single, cluster, _) = engines_over(dir.path()).await;
    for engine in [&single, &cluster] {
        engine.refresh_accelerations().await;
        assert!(
            engine
                .served_table("sales.orders")
                .unwrap()
                .provider
                .is_accelerated()
        );
    }
    let orders = "SELECT region, count(*), sum(total_amount) FROM sales.orders GROUP BY region";
    assert!(!distributed(&physical(&cluster, "ana", orders, None).await));
    assert!(distributed(
        &physical(&from_files, "ana", orders, None).await
    ));
    let ana = |engine: &meshq_engine::Engine| {
        engine.session(&engine.mesh().config.principal("ana").unwrap())
    };
    let expected = run(&ana(&single), orders).await.unwrap();
    let got = run(&ana(&cluster), orders).await.unwrap();
    assert_eq!(text(&got), text(&expected));
}

/// Answers a name with the addresses it is given (none: the name does not
/// resolve), as a DNS server whose records change would.
#[derive(Debug, Default)]
struct ChangingRecords(std::sync::Mutex<Vec<std::net::SocketAddr>>);

#[async_trait::async_trait]
impl meshq_cluster::transport::Lookup for ChangingRecords {
    async fn lookup(&self, host: &str, _: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        let addrs = self.0.lock().unwrap().clone();
        if addrs.is_empty() {
            return Err(std::io::Error::other(format!("{host}: no such name")));
        }
        Ok(addrs)
    }
}

/// A DNS name of workers (a headless Service): every check looks it up
/// again, so workers that appear are used, those no longer named or not
/// answering are left out, and a name that stops resolving leaves none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_named_by_dns_are_found_dropped_and_found_again() {
    use meshq_cluster::transport::{AuthChannelResolver, WorkerSource, Workers};
    use std::sync::Arc;

    let dir = fixture_mesh().await;
    let fallback = meshq_tests::fixture_engine_config(dir.path()).secret_env_fallback;
    let (w1, _) = meshq_cluster::loopback::serve_loopback_worker(dir.path(), &fallback)
        .await
        .unwrap();
    let (w2, _) = meshq_cluster::loopback::serve_loopback_worker(dir.path(), &fallback)
        .await
        .unwrap();
    let addr = |u: &url::Url| -> std::net::SocketAddr {
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
            .parse()
            .unwrap()
    };
    let dead: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let records = Arc::new(ChangingRecords::default());
    let source = WorkerSource::parse("dns+http://workers.meshq.test:50052").unwrap();
    let workers = Workers::with_lookup(vec![source], Arc::clone(&records) as _);
    assert!(workers.healthy().is_empty(), "known only once looked up");
    let resolver = AuthChannelResolver::new(meshq_cluster::loopback::loopback_key().unwrap(), None);
    let mut steps = vec![
        (vec![addr(&w1)], vec![w1.clone()]),
        (
            vec![addr(&w1), addr(&w2), dead],
            vec![w1.clone(), w2.clone()],
        ),
        (vec![addr(&w2)], vec![w2.clone()]),
        (vec![], vec![]),
        (vec![addr(&w2), addr(&w1)], vec![w2.clone(), w1.clone()]),
    ];
    for (i, (answer, expected)) in steps.drain(..).enumerate() {
        *records.0.lock().unwrap() = answer;
        workers.check(&resolver).await;
        assert_eq!(workers.healthy(), expected, "step {i}");
    }

    // The system's resolver: `localhost` names the first worker (and
    // perhaps ::1, where nothing answers).
    let system = Workers::from_sources(vec![
        WorkerSource::parse(&format!("dns+http://localhost:{}", w1.port().unwrap())).unwrap(),
    ]);
    system.check(&resolver).await;
    assert_eq!(system.healthy(), vec![w1.clone()]);

    for bad in [
        "dns+http://workers.meshq.test",
        "dns+ftp://workers:1",
        "ftp://w:1",
    ] {
        assert!(WorkerSource::parse(bad).is_err(), "{bad}");
    }
}

/// A query's memory limit travels to its workers: a limited statement's
/// requests carry the limit and an id of its own (each worker then runs
/// that query's tasks in one pool of that size, see the worker's tests);
/// an unlimited one carries no limit, but an id of its own all the same
/// (`EXPLAIN ANALYZE` follows a statement's tasks by it). A limit too small fails the query
/// naming `limits.query_memory`; a large one gives the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_querys_memory_limit_travels_to_its_workers() {
    use meshq_cluster::travel::QueryBudget;
    let dir = fixture_mesh().await;
    let (cluster, _) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    let sql = "SELECT customer_id, array_agg(order_id ORDER BY order_id) AS orders FROM sales.orders GROUP BY customer_id";
    let plan_with = |limit: Option<usize>| physical(&cluster, "pat", sql, limit);
    let budget = |q: &meshq_engine::PhysicalQuery| {
        q.task
            .session_config()
            .options()
            .extensions
            .get::<QueryBudget>()
            .cloned()
            .unwrap_or_default()
    };
    let limited = plan_with(Some(64 << 20)).await;
    assert!(distributed(&limited));
    let sent = budget(&limited);
    assert_eq!(sent.memory, Some(64 << 20));
    assert_eq!(sent.id.len(), 32);
    let again = budget(&plan_with(Some(64 << 20)).await);
    assert_ne!(again.id, sent.id, "each query has a pool of its own");
    let unlimited = budget(&plan_with(None).await);
    assert_eq!(unlimited.memory, None);
    assert_eq!(unlimited.id.len(), 32);
    assert_ne!(unlimited.id, sent.id);

    let rows: usize = datafusion::physical_plan::collect(limited.plan, limited.task)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(rows > 0);
    let tiny = plan_with(Some(1024)).await;
    let e = datafusion::physical_plan::collect(tiny.plan, tiny.task)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("limits.query_memory"), "{e}");
}

/// An Iceberg table read by field id (here partitioned by identity, so a
/// file could lack the partition column) goes to the workers: its scan
/// mark carries what the worker needs to make the field-id adapter again.
/// The answers are the single node's, for a principal with masks and a
/// row filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn iceberg_scans_read_by_field_id_run_on_the_workers() {
    use datafusion::common::tree_node::TreeNode;
    let (_dir, single, cluster, verifiers) = single_and_cluster().await;
    let sql = "SELECT s.region, count(*) AS n, count(DISTINCT o.customer_id) AS customers \
               FROM logistics.shipments s JOIN sales.orders o USING (order_id) \
               GROUP BY s.region ORDER BY s.region";
    let ana = |engine: &meshq_engine::Engine| {
        engine.session(&engine.mesh().config.principal("ana").unwrap())
    };
    let query = physical(&cluster, "ana", sql, None).await;
    let mut marks = Vec::new();
    query
        .plan
        .apply(|p| {
            if let Some(scan) = p.downcast_ref::<meshq_connectors::MeshScanExec>() {
                marks.push((scan.table().to_string(), scan.field_ids().is_some()));
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
    assert!(
        marks.contains(&("logistics.shipments".to_string(), true)),
        "{marks:?}"
    );
    assert!(
        distributed(&query),
        "the query with an Iceberg scan is distributed"
    );
    let session = ana(&cluster);
    let before: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
    let got = run(&session, sql).await.unwrap();
    let expected = run(&ana(&single), sql).await.unwrap();
    assert_eq!(text(&got), text(&expected));
    assert!(!got.is_empty());
    for (v, b) in verifiers.iter().zip(before) {
        assert!(v.accepted() > b, "a worker ran no fragment");
    }
}

/// With one target partition, DataFusion aggregates in one step
/// (`AggregateExec: mode=Single`), right above the scan. If the library
/// split that scan between tasks, each task would aggregate only its
/// share of the rows: the sums would be partial, and a query comparing a
/// sum with the maximum of the sums (TPC-H q15's shape) would answer
/// nothing. Such a plan is never sent; the answers are the single node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_scan_never_feeds_an_aggregate_that_needs_all_its_rows() {
    let dir = fixture_mesh().await;
    let mut config = meshq_tests::fixture_engine_config(dir.path());
    config.target_partitions = Some(1);
    let single = meshq_engine::Engine::load(config.clone()).await.unwrap();
    let (cluster, _verifiers) = meshq_tests::fixture_cluster_engine_with(dir.path(), config)
        .await
        .unwrap();
    let q15 = "WITH r AS (SELECT customer_id, sum(amount) AS s FROM payments.transactions GROUP BY customer_id) \
               SELECT customer_id, s FROM r WHERE s = (SELECT max(s) FROM r) ORDER BY customer_id";
    assert!(
        !distributed(&physical(&cluster, "pat", q15, None).await),
        "the plan with split scans under one-step aggregates runs on the coordinator"
    );
    // EXPLAIN says why.
    let session = cluster.session(&cluster.mesh().config.principal("pat").unwrap());
    let explained = text(&run(&session, &format!("EXPLAIN {q15}")).await.unwrap());
    assert!(
        explained.contains("runs on the coordinator: AggregateExec needs all of its input"),
        "{explained}"
    );
    for sql in [
        q15,
        "SELECT count(*) AS n, sum(amount) AS s FROM payments.transactions",
        "SELECT method, count(*) AS n FROM payments.transactions GROUP BY method ORDER BY method",
    ] {
        let pat = |engine: &meshq_engine::Engine| {
            engine.session(&engine.mesh().config.principal("pat").unwrap())
        };
        let expected = run(&pat(&single), sql).await.unwrap();
        assert!(!expected.is_empty() && expected[0].num_rows() > 0, "{sql}");
        let got = run(&pat(&cluster), sql).await.unwrap();
        assert_eq!(text(&got), text(&expected), "{sql}");
    }
}

/// A shared aggregation's node has no codec: with workers answering, the
/// coordinator plans each use in its stages instead (the plan is sent, and
/// holds no `SharedExec`), while a single node, or a coordinator with one
/// worker (where the library cuts no stage), computes it once. All give
/// the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_computes_an_aggregation_named_twice_in_its_stages() {
    use datafusion::common::tree_node::TreeNode;
    use meshq_engine::shared_subplan::SharedExec;
    let (dir, single, cluster, verifiers) = single_and_cluster().await;
    let shares = |query: &meshq_engine::PhysicalQuery| {
        query.plan.exists(|p| Ok(p.is::<SharedExec>())).unwrap()
    };
    let sql = "WITH t AS (SELECT region, count(*) AS n, sum(total_amount) AS s FROM sales.orders GROUP BY region) \
               SELECT a.region, a.n, a.s, b.n, b.s FROM t a JOIN t b ON a.region = b.region ORDER BY a.region";
    let alone = physical(&single, "pat", sql, None).await;
    assert!(shares(&alone), "a single node computes the clause once");
    let spread = physical(&cluster, "pat", sql, None).await;
    assert!(!shares(&spread), "no shared node in a plan for workers");
    assert!(distributed(&spread), "the plan runs on the workers");

    // One worker: the library would cut no stage (one task each), so the
    // plan stays on the coordinator and keeps its shared node.
    let (one, _) = meshq_cluster::loopback::loopback_cluster(
        dir.path(),
        1,
        &meshq_tests::fixture_engine_config(dir.path()).secret_env_fallback,
    )
    .await
    .unwrap();
    let mut config = meshq_tests::fixture_engine_config(dir.path());
    config.distribution = Some(std::sync::Arc::new(one));
    let one = meshq_engine::Engine::load(config).await.unwrap();
    let alone_on_one = physical(&one, "pat", sql, None).await;
    assert!(shares(&alone_on_one) && !distributed(&alone_on_one));

    let pat = |engine: &meshq_engine::Engine| {
        engine.session(&engine.mesh().config.principal("pat").unwrap())
    };
    let expected = run(&pat(&single), sql).await.unwrap();
    assert!(!expected.is_empty() && expected[0].num_rows() > 0);
    assert_eq!(text(&run(&pat(&one), sql).await.unwrap()), text(&expected));
    let before: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
    let got = run(&pat(&cluster), sql).await.unwrap();
    assert_eq!(text(&got), text(&expected));
    assert!(
        verifiers.iter().zip(before).any(|(v, b)| v.accepted() > b),
        "a worker ran a fragment"
    );
}

/// A join whose build side is the few orders under 20: its dynamic filter
/// drops most orders on the probe side.
const JOIN_WITH_FEW_KEYS: &str = "SELECT count(*) AS n FROM sales.orders o JOIN (SELECT order_id AS k FROM sales.orders WHERE total_amount < 20) s ON o.order_id = s.k";

/// A join's dynamic filter travels with the scan node of its stage: on a
/// worker, the scan waits for it and applies it to the rows its format
/// yields, as a single node does, and the answer does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workers_scan_applies_the_join_filters_of_its_stage() {
    let (_dir, single, cluster, verifiers) = single_and_cluster().await;
    let sql = JOIN_WITH_FEW_KEYS;
    let admin = admin_pat;
    let expected = run(&admin(&single), sql).await.unwrap();
    let before: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
    // A limit no busy test machine reaches: were the wait cut short by it,
    // the scan would read its rows before the filter is known.
    let limit = std::time::Duration::from_secs(60);
    let waiting = admin(&cluster);
    for set in [
        format!("SET meshq_scan.join_filter_wait_ms = {}", limit.as_millis()),
        // The join pushes its two keys as a list, never as a probe of its
        // hash table (which `meshq_scan.dynamic_filter_probes = none`
        // would leave out): DataFusion chooses the list up to a size of
        // the build side's arrays, 128 KiB by default, which two string
        // keys reach or not depending on the buffers they were read into.
        "SET datafusion.optimizer.hash_join_inlist_pushdown_max_size = 1048576".to_string(),
    ] {
        run(&waiting, &set).await.unwrap();
    }
    let waiting = cluster.session_for(waiting.data());
    let analyzed = text(
        &run(&waiting, &format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap(),
    );
    assert!(
        verifiers.iter().zip(before).any(|(v, b)| v.accepted() > b),
        "a worker ran a fragment"
    );
    // The probe side's scan, in a worker's stage, drops orders the join's
    // keys leave out (those its file scan did not prune already).
    let metrics = stage(&analyzed, 2)
        .split_once("MeshScanExec: table=sales.orders, metrics=[dynamic_filter_rows_pruned=")
        .and_then(|(_, rest)| rest.split(']').next())
        .unwrap_or_else(|| panic!("the scan in the join's stage pruned nothing: {analyzed}"));
    let pruned: u64 = metrics
        .split(',')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(pruned > 0, "{analyzed}");
    // It waited for the filter of the join of its stage, as a single node
    // does, and not until the limit: the join completed it.
    let waited = metrics
        .split_once("join_filter_wait=")
        .map(|(_, w)| w.split(',').next().unwrap().trim())
        .unwrap_or_else(|| panic!("the scan did not wait: {analyzed}"));
    assert!(duration(waited) < limit, "waited {waited}: {analyzed}");

    // The session's scan settings travel: with the wait off, the worker's
    // scan still drops rows but does not wait.
    let session = admin(&cluster);
    run(&session, "SET meshq_scan.join_filter_wait_ms = 0")
        .await
        .unwrap();
    let next = cluster.session_for(session.data());
    let analyzed = text(&run(&next, &format!("EXPLAIN ANALYZE {sql}")).await.unwrap());
    let stage = stage(&analyzed, 2);
    assert!(
        stage.contains("MeshScanExec: table=sales.orders, metrics=[dynamic_filter_rows_pruned=")
            && !stage.contains("join_filter_wait="),
        "{analyzed}"
    );
    assert_eq!(
        text(&run(&admin(&cluster), sql).await.unwrap()),
        text(&expected)
    );
}

/// A duration as `EXPLAIN ANALYZE` shows it (`812ns`, `4.2µs`, `3.1ms`,
/// `2.5s`).
fn duration(shown: &str) -> std::time::Duration {
    let (number, unit) = shown
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|at| shown.split_at(at))
        .unwrap_or_else(|| panic!("no unit in {shown}"));
    let number: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("no number in {shown}"));
    let seconds = match unit {
        "ns" => number / 1e9,
        "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        _ => panic!("unknown unit in {shown}"),
    };
    std::time::Duration::from_secs_f64(seconds)
}

/// A join that partitions both sides runs in a stage above the stages
/// that scan them. Its tasks send their filters to the workers of the
/// probe side's stage: the scan there waits for them, well inside the
/// limit, and drops the rows no task's keys match. With
/// `meshq_scan.remote_join_filters = false` nothing is sent: the scan
/// neither waits (a wait would last until `meshq_scan.join_filter_wait_ms`)
/// nor drops a row. The answer is the single node's either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_below_a_shuffle_applies_the_filter_the_join_above_sends() {
    let (_dir, single, cluster, _) = single_and_cluster().await;
    let limit = std::time::Duration::from_secs(60);
    let partitioned = |engine: &meshq_engine::Engine, send: bool| {
        let engine = engine.clone();
        async move {
            let session = admin_pat(&engine);
            for set in [
                "SET datafusion.optimizer.hash_join_single_partition_threshold = 0".to_string(),
                "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0"
                    .to_string(),
                // The keys travel as lists (a probe of a hash table cannot
                // travel, and arrives as a filter that keeps every row).
                "SET datafusion.optimizer.hash_join_inlist_pushdown_max_size = 1048576".to_string(),
                format!("SET meshq_scan.join_filter_wait_ms = {}", limit.as_millis()),
                format!("SET meshq_scan.remote_join_filters = {send}"),
            ] {
                run(&session, &set).await.unwrap();
            }
            engine.session_for(session.data())
        }
    };
    let sql = JOIN_WITH_FEW_KEYS;
    let expected = run(&partitioned(&single, true).await, sql).await.unwrap();
    // The orders scan's metrics: rows dropped, and the wait if any.
    let scan = |analyzed: &str| -> (u64, Option<std::time::Duration>) {
        let metrics = analyzed
            .split("MeshScanExec: table=sales.orders, metrics=[")
            .skip(1)
            .map(|rest| rest.split(']').next().unwrap())
            .find(|m| m.contains("dynamic_filter_rows_pruned"))
            .unwrap_or_else(|| panic!("no scan of orders took the join's filter: {analyzed}"));
        let pruned = metrics
            .split_once("dynamic_filter_rows_pruned=")
            .and_then(|(_, n)| n.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{metrics}"));
        let waited = metrics
            .split_once("join_filter_wait=")
            .map(|(_, w)| duration(w.split(',').next().unwrap().trim()));
        (pruned, waited)
    };

    let sending = partitioned(&cluster, true).await;
    let analyzed = text(
        &run(&sending, &format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap(),
    );
    assert!(
        analyzed.contains("HashJoinExec: mode=Partitioned")
            && analyzed.contains("JoinFilterExportExec")
            && analyzed.contains("NetworkShuffleExec"),
        "the join runs above shuffles and sends its filter below: {analyzed}"
    );
    let (pruned, waited) = scan(&analyzed);
    assert!(pruned > 0, "the scan dropped no row: {analyzed}");
    let waited = waited.unwrap_or_else(|| panic!("the scan did not wait: {analyzed}"));
    assert!(waited < limit, "waited {waited:?}: {analyzed}");
    assert_eq!(text(&run(&sending, sql).await.unwrap()), text(&expected));

    let silent = partitioned(&cluster, false).await;
    let analyzed = text(
        &run(&silent, &format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap(),
    );
    assert!(!analyzed.contains("JoinFilterExportExec"), "{analyzed}");
    assert_eq!(scan(&analyzed), (0, None), "{analyzed}");
    assert_eq!(text(&run(&silent, sql).await.unwrap()), text(&expected));
}

/// A coordinator orders joins by estimate unless its settings say
/// otherwise; a single node keeps the order the query names. Both collect
/// build sides up to 32 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_orders_joins_and_collects_build_sides_up_to_32_mib_unless_told_not_to() {
    let (dir, single, cluster, _) = single_and_cluster().await;
    let reorders = |engine: &meshq_engine::Engine| {
        engine
            .session_config()
            .options()
            .extensions
            .get::<meshq_engine::join_order::PlanOptions>()
            .unwrap()
            .reorder_joins
    };
    // The largest build side (bytes, rows) a join collects into one
    // partition, which across workers is broadcast to every task.
    let collects = |engine: &meshq_engine::Engine| {
        let config = engine.session_config();
        let optimizer = &config.options().optimizer;
        (
            optimizer.hash_join_single_partition_threshold,
            optimizer.hash_join_single_partition_threshold_rows,
        )
    };
    assert!(!reorders(&single));
    assert!(reorders(&cluster));
    // Every engine starts from 32 MiB (DataFusion's own is 1 MiB).
    assert_eq!(collects(&single), (32 * 1024 * 1024, 2_000_000));
    assert_eq!(collects(&cluster), (32 * 1024 * 1024, 2_000_000));
    // A session of the coordinator plans with them too.
    let session = cluster.session(&cluster.mesh().config.principal("ana").unwrap());
    let state = session.context().state();
    assert_eq!(
        state
            .config()
            .options()
            .optimizer
            .hash_join_single_partition_threshold,
        32 * 1024 * 1024
    );
    // `meshq.yaml` `settings`, as an operator turns them back.
    let platform = dir.path().join("meshq.yaml");
    let text = std::fs::read_to_string(&platform).unwrap()
        + "\nsettings: { meshq_plan.reorder_joins: false, \
           datafusion.optimizer.hash_join_single_partition_threshold: 1048576 }\n";
    std::fs::write(&platform, text).unwrap();
    let (told, _) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    assert_eq!(crate::common::error_problems(&told), Vec::<String>::new());
    assert!(!reorders(&told));
    assert_eq!(collects(&told), (1024 * 1024, 2_000_000));
    // What the settings do: a build side of 200 000 keys (1.6 MB, over
    // DataFusion's 1 MiB and 128 Ki rows) is collected whole under the
    // engines' settings and partitioned under the operator's.
    assert_eq!(build_side_mode(&single).await, "CollectLeft");
    assert_eq!(build_side_mode(&cluster).await, "CollectLeft");
    assert_eq!(build_side_mode(&told).await, "Partitioned");
}

/// The hash join's mode when DataFusion plans, with `engine`'s settings, a
/// join of 200 000 keys with 400 000 (planned, not run).
async fn build_side_mode(engine: &meshq_engine::Engine) -> String {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    // The engine's settings, with a catalog of DataFusion's own for the
    // two tables.
    let config = engine
        .session_config()
        .clone()
        .with_default_catalog_and_schema("datafusion", "public")
        .with_create_default_catalog_and_schema(true);
    let ctx = datafusion::prelude::SessionContext::new_with_config(config);
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    for (name, rows) in [("small", 200_000), ("large", 400_000)] {
        let batch = arrow::record_batch::RecordBatch::try_new(
            std::sync::Arc::clone(&schema),
            vec![std::sync::Arc::new(Int64Array::from_iter_values(0..rows))],
        )
        .unwrap();
        let table = datafusion::datasource::MemTable::try_new(
            std::sync::Arc::clone(&schema),
            vec![vec![batch]],
        )
        .unwrap();
        ctx.register_table(name, std::sync::Arc::new(table))
            .unwrap();
    }
    let plan = ctx
        .sql("SELECT count(*) FROM small JOIN large ON small.k = large.k")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let text = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string();
    text.split("HashJoinExec: mode=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no hash join in\n{text}"))
        .to_string()
}
