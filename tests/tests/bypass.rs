//! A corpus of attempts to read what a restricted principal may not see.
//!
//! As `ana` (EMEA analyst, no pii-reader, no payments access) every query's
//! output and error text must be free of every raw value she is not allowed:
//! raw customer ids, emails, names, phones, card numbers, and the ids of
//! orders outside EMEA. As a control, the same corpus run as `pat` (who may
//! see raw values) must reveal some, proving the detector can fail.

use std::collections::BTreeSet;

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::DataType;

use crate::common::{fixture, run, run_served, session_as};

/// Values of `column` from `sql` run as pat (who sees raw data).
async fn raw_values(sql: &str) -> BTreeSet<String> {
    let pat = session_as("pat").await;
    let batches = run(&pat, sql).await.unwrap();
    let mut out = BTreeSet::new();
    for b in batches {
        for c in b.columns() {
            let c = cast(c, &DataType::Utf8).unwrap();
            for v in c.as_string::<i32>().iter().flatten() {
                out.insert(v.to_string());
            }
        }
    }
    out
}

async fn secrets() -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    s.extend(
        raw_values("SELECT customer_id, email, full_name, phone FROM customers.profiles").await,
    );
    s.extend(raw_values("SELECT email FROM sales.orders WHERE email IS NOT NULL").await);
    s.extend(raw_values("SELECT order_id FROM sales.orders WHERE region <> 'EMEA'").await);
    s.extend(
        raw_values("SELECT card_number FROM payments.transactions WHERE card_number IS NOT NULL")
            .await,
    );
    s.extend(raw_values("SELECT payment_id FROM payments.transactions").await);
    assert!(
        s.len() > 300,
        "too few secrets to mean anything: {}",
        s.len()
    );
    s
}

fn corpus(mesh: &str) -> Vec<String> {
    meshq_tests::bypass_corpus(mesh)
}

/// What one run of the corpus found.
struct CorpusRun {
    /// (leaking query, leaked value) pairs.
    found: Vec<(String, String)>,
    /// Queries that returned rows.
    answered: usize,
    /// Queries answered from the result cache (`served` runs only).
    hits: usize,
}

/// Runs the corpus as `name` (the DataFrame path).
async fn leaks(
    name: &str,
    secrets: &BTreeSet<String>,
    mesh: &str,
) -> (Vec<(String, String)>, usize) {
    let r = run_corpus(&session_as(name).await, secrets, mesh, false).await;
    (r.found, r.answered)
}

/// The corpus in `session` (of any engine over the fixture mesh written at
/// `mesh`): (leaking query, leaked value) pairs and how many queries
/// returned rows.
pub(crate) async fn corpus_leaks(
    session: &meshq_engine::MeshSession,
    mesh: &str,
) -> (Vec<(String, String)>, usize) {
    let r = run_corpus(session, &secrets().await, mesh, false).await;
    (r.found, r.answered)
}

/// Runs the corpus in `session`, through the DataFrame path or, when
/// `served`, through the path the server uses (`execute`, where the result
/// cache sits).
async fn run_corpus(
    session: &meshq_engine::MeshSession,
    secrets: &BTreeSet<String>,
    mesh: &str,
    served: bool,
) -> CorpusRun {
    let mut out = CorpusRun {
        found: Vec::new(),
        answered: 0,
        hits: 0,
    };
    let mut queries = corpus(mesh);
    queries.push("EXECUTE p('AMER')".into());
    for sql in &queries {
        let result = if served {
            run_served(session, sql)
                .await
                .map_err(|e| format!("{e:?} / {e}"))
        } else {
            run(session, sql).await.map(|b| (b, false))
        };
        let text = match result {
            Ok((batches, hit)) => {
                out.hits += hit as usize;
                if batches.iter().any(|b| b.num_rows() > 0) {
                    out.answered += 1;
                }
                arrow::util::pretty::pretty_format_batches(&batches)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            }
            Err(e) => e,
        };
        if let Some(s) = secrets.iter().find(|s| text.contains(s.as_str())) {
            out.found.push((sql.clone(), s.clone()));
        }
    }
    out
}

/// The corpus on `engine` (the fixture mesh at `dir`, served `through`
/// a cluster or a database), on both paths: ana sees no raw value, and
/// pat's raw values come through (the control).
pub(crate) async fn corpus_holds(
    engine: &meshq_engine::Engine,
    dir: &std::path::Path,
    through: &str,
) {
    let mesh = dir.canonicalize().unwrap().display().to_string();
    let secrets = secrets().await;
    let as_ = |name: &str| engine.session(&engine.mesh().config.principal(name).unwrap());
    for served in [false, true] {
        let CorpusRun {
            found, answered, ..
        } = run_corpus(&as_("ana"), &secrets, &mesh, served).await;
        assert!(
            found.is_empty(),
            "leaks as ana through {through}: {found:#?}"
        );
        assert!(answered >= 20, "only {answered} queries answered");
        let CorpusRun { found, .. } = run_corpus(&as_("pat"), &secrets, &mesh, served).await;
        assert!(found.len() >= 10, "the detector found only {found:?}");
    }
}

/// With the result cache on and every query first run by pat (who sees raw
/// values), ana's answers, fresh or from the cache, still reveal nothing.
#[tokio::test]
async fn the_result_cache_serves_no_raw_value_to_a_restricted_principal() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let platform = dir.path().join("meshq.yaml");
    assert!(
        std::fs::read_to_string(&platform)
            .unwrap()
            .contains("cache: { enabled: true"),
        "the demo mesh turns the result cache on"
    );
    let engine = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let mesh = dir.path().canonicalize().unwrap().display().to_string();
    let secrets = secrets().await;
    let as_ = |name: &str| engine.session(&engine.mesh().config.principal(name).unwrap());
    // Control: pat's answers carry raw values (and fill the cache).
    let CorpusRun { found, .. } = run_corpus(&as_("pat"), &secrets, &mesh, true).await;
    assert!(found.len() >= 10, "the detector found only {found:?}");
    let CorpusRun { found, hits, .. } = run_corpus(&as_("pat"), &secrets, &mesh, true).await;
    assert!(
        found.len() >= 10 && hits >= 20,
        "pat's second run: {hits} hits"
    );
    // Ana, twice: the second run comes from her own entries.
    let CorpusRun { found, hits, .. } = run_corpus(&as_("ana"), &secrets, &mesh, true).await;
    assert!(found.is_empty(), "leaks as ana: {found:#?}");
    assert_eq!(hits, 0, "nothing pat cached is ana's");
    let CorpusRun { found, hits, .. } = run_corpus(&as_("ana"), &secrets, &mesh, true).await;
    assert!(found.is_empty(), "leaks as ana from the cache: {found:#?}");
    assert!(
        hits >= 20,
        "only {hits} of ana's queries came from the cache"
    );
}

/// The corpus through a coordinator whose plans run on two workers
/// (in this process, on loopback, behind the cluster credential): ana
/// still sees no raw value, and the workers did run fragments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_serves_no_raw_value_to_a_restricted_principal() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let (engine, verifiers) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    let as_ = |name: &str| engine.session(&engine.mesh().config.principal(name).unwrap());
    corpus_holds(&engine, dir.path(), "the cluster").await;
    for v in &verifiers {
        assert!(v.accepted() > 0, "a worker ran no fragment");
        assert_eq!(v.refused(), 0);
    }
    // Masked scans are among what the workers run: the hash mask sits
    // inside a stage of ana's plan, below the barrier.
    let plan = run(
        &as_("ana"),
        "EXPLAIN SELECT customer_id, count(*) FROM sales.orders GROUP BY 1",
    )
    .await
    .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    let stage = plan
        .split("Stage ")
        .find(|s| s.contains("MeshScanExec"))
        .unwrap_or_else(|| panic!("no stage scans: {plan}"));
    assert!(stage.contains("tasks=2"), "{plan}");
    let (barrier, mask) = (
        stage
            .find("PolicyBarrierExec")
            .expect("barrier in the stage"),
        stage
            .find("mask_hash(customer_id")
            .expect("mask in the stage"),
    );
    assert!(barrier < mask, "the mask is below the barrier: {plan}");
    assert!(
        plan.contains("tasks go to the workers that answer: http://127.0.0.1:"),
        "{plan}"
    );
    // EXPLAIN ANALYZE (admins only) shows what each stage's tasks did.
    let mut admin = engine.mesh().config.principal("ana").unwrap();
    admin.roles.insert("admin".into());
    let analyzed = run(
        &engine.session(&admin),
        "EXPLAIN ANALYZE SELECT region, count(*) FROM sales.orders GROUP BY 1",
    )
    .await
    .unwrap();
    let analyzed = arrow::util::pretty::pretty_format_batches(&analyzed)
        .unwrap()
        .to_string();
    assert!(
        analyzed.contains("Stage 1") && analyzed.contains("output_rows"),
        "{analyzed}"
    );
    // And which worker ran each task: a row naming, per stage, every task
    // and its worker, all among the workers that answer; a stage of two
    // tasks ran on both.
    let workers: Vec<&str> = plan
        .split("tasks go to the workers that answer: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(|line| {
            line.trim_end_matches(|c: char| c == '|' || c.is_whitespace())
                .split(", ")
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(workers.len(), 2, "{plan}");
    let tasks = analyzed
        .lines()
        .filter(|l| l.contains(meshq_cluster::placement::TASKS_RAN_ON) || l.contains("Stage "))
        .filter_map(|l| l.split(" t0 → ").nth(1).map(|rest| (l, rest)))
        .find(|(_, rest)| rest.contains(" t1 → "))
        .unwrap_or_else(|| panic!("no stage with two tasks and their workers: {analyzed}"))
        .1;
    let ran_on: Vec<&str> = tasks
        .split(" t1 → ")
        .map(|w| w.trim_end_matches(|c: char| c == '|' || c.is_whitespace()))
        .collect();
    assert_eq!(ran_on.len(), 2, "{analyzed}");
    for w in &ran_on {
        assert!(workers.contains(w), "{w} is not a worker: {analyzed}");
    }
    assert_ne!(ran_on[0], ran_on[1], "{analyzed}");
    // Nobody spreads their own queries differently, admins included: the
    // settings are the operator's (ana may not SET at all).
    let set = "SET distributed.file_scan_config_bytes_per_partition = '1'";
    let e = run(&as_("ana"), set).await.unwrap_err();
    assert!(e.contains("requires the `admin` role"), "{e}");
    let e = run(&as_("root"), set).await.unwrap_err();
    assert!(e.contains("cluster.settings"), "{e}");
    // Nor the masks the workers register: a forged list (a partial mask
    // that shows everything) is refused before it could travel.
    let forged =
        hex::encode(r#"[{"mask":"partial","show_first":100000,"padding":"","show_last":0}]"#);
    for who in ["ana", "root"] {
        let e = run(&as_(who), &format!("SET meshq_cluster.masks = '{forged}'"))
            .await
            .unwrap_err();
        assert!(
            e.contains("requires the `admin` role") || e.contains("what each plan's workers need"),
            "{who}: {e}"
        );
    }
    // Nor a query's memory limit on the workers.
    let e = run(&as_("root"), "SET meshq_query.memory = ''")
        .await
        .unwrap_err();
    assert!(e.contains("what each plan's workers need"), "{e}");
}

#[tokio::test]
async fn restricted_principal_never_sees_a_raw_value() {
    let (dir, _) = fixture().await;
    let mesh = dir.path().canonicalize().unwrap().display().to_string();
    let secrets = secrets().await;
    assert!(corpus(&mesh).len() >= 40);
    let (found, answered) = leaks("ana", &secrets, &mesh).await;
    assert!(found.is_empty(), "leaks as ana: {found:#?}");
    // The corpus is not vacuous: many of its queries return rows for ana.
    assert!(answered >= 20, "only {answered} queries answered");

    // Control: pat may see raw values, and the detector sees them.
    let (found, _) = leaks("pat", &secrets, &mesh).await;
    assert!(found.len() >= 10, "the detector found only {found:?}");
}

/// With inner joins ordered by estimated size (`meshq_plan.reorder_joins`),
/// which takes join trees apart and builds them again around the policy
/// barriers: ana still sees no raw value.
#[tokio::test]
async fn joins_ordered_by_estimate_serve_no_raw_value_to_a_restricted_principal() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let mut config = meshq_tests::fixture_engine_config(dir.path());
    config
        .settings
        .push(("meshq_plan.reorder_joins".into(), "true".into()));
    let engine = meshq_engine::Engine::load(config).await.unwrap();
    let before = meshq_engine::join_order::reordered_trees();
    corpus_holds(&engine, dir.path(), "joins ordered by estimate").await;
    // Only this test turns the rule on in this process.
    assert!(
        meshq_engine::join_order::reordered_trees() > before,
        "the corpus reordered no join tree"
    );
}

/// `meshq.yaml` `settings` apply to every session, those of principals who
/// may not `SET` included: under a mix of planning and execution settings
/// ana still sees no raw value, and EXPLAIN's options, which would print
/// the bounds of the scans below the policies, are refused there.
#[tokio::test]
async fn settings_for_every_session_serve_no_raw_value_to_a_restricted_principal() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let yaml = dir.path().join("meshq.yaml");
    let mut text = std::fs::read_to_string(&yaml).unwrap();
    text.push_str(
        "\nsettings:\n  \
         meshq_plan.reorder_joins: true\n  \
         meshq_scan.dynamic_filter_probes: all\n  \
         datafusion.execution.batch_size: 7\n  \
         datafusion.execution.target_partitions: 3\n  \
         datafusion.execution.parquet.pushdown_filters: true\n  \
         datafusion.optimizer.repartition_file_min_size: 1\n  \
         datafusion.optimizer.prefer_hash_join: false\n  \
         datafusion.explain.show_statistics: true\n",
    );
    std::fs::write(&yaml, text).unwrap();
    let engine = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(
        errors.len() == 1 && errors[0].contains("datafusion.explain.show_statistics"),
        "{errors:?}"
    );
    let config = engine.session_config();
    assert!(!config.options().explain.show_statistics);
    assert_eq!(config.options().execution.target_partitions, 3);
    corpus_holds(&engine, dir.path(), "meshq.yaml settings").await;
}

/// A join order chosen from a table's total row count would show in
/// `EXPLAIN` how many rows a row filter hides: with joins ordered by
/// estimate, pat (who reads every row) gets a reordered plan (the filtered
/// `o3` first), ana (whose `sales.orders` rows are filtered to her region)
/// the written one. Her estimates would reorder it too if the rule used
/// the table's total.
#[tokio::test]
async fn the_rows_a_policy_hides_never_steer_the_join_order() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let off = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let mut config = meshq_tests::fixture_engine_config(dir.path());
    config
        .settings
        .push(("meshq_plan.reorder_joins".into(), "true".into()));
    let on = meshq_engine::Engine::load(config).await.unwrap();
    let sql = "EXPLAIN SELECT o.email, o2.region FROM sales.orders o \
               JOIN sales.orders o2 ON o2.order_id = o.order_id \
               JOIN sales.orders o3 ON o3.order_id = o2.order_id \
               WHERE o3.region = 'EMEA'";
    let plan = |engine: &meshq_engine::Engine, name: &str| {
        let session = engine.session(&engine.mesh().config.principal(name).unwrap());
        async move {
            let batches = run(&session, sql).await.unwrap();
            let text = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            // The logical plan: the physical one names files and partitions.
            text.split("physical_plan").next().unwrap().to_string()
        }
    };
    assert_ne!(
        plan(&on, "pat").await,
        plan(&off, "pat").await,
        "pat reads every row: the estimates reorder the joins"
    );
    assert_eq!(
        plan(&on, "ana").await,
        plan(&off, "ana").await,
        "ana's plan must not depend on the rows her filter hides"
    );
    // `meshq.yaml` `settings` turn the rule on for every session, with the
    // Parquet row counts the load reads for it: the same plans.
    let yaml = dir.path().join("meshq.yaml");
    let mut text = std::fs::read_to_string(&yaml).unwrap();
    text.push_str("\nsettings:\n  meshq_plan.reorder_joins: true\n");
    std::fs::write(&yaml, text).unwrap();
    let from_yaml = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert!(from_yaml.problems().iter().all(|p| !p.is_error()));
    for name in ["pat", "ana"] {
        assert_eq!(
            plan(&from_yaml, name).await,
            plan(&on, name).await,
            "{name}: meshq.yaml settings plan as the engine's own"
        );
    }
}

#[tokio::test]
async fn dataframe_api_is_governed_too() {
    let ana = session_as("ana").await;
    let df = ana.context().table("sales.orders").await.unwrap();
    let batches = df.collect().await.unwrap();
    let regions: BTreeSet<String> = batches
        .iter()
        .flat_map(|b| {
            let col = cast(b.column_by_name("region").unwrap(), &DataType::Utf8).unwrap();
            col.as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(regions, BTreeSet::from(["EMEA".to_string()]));
    let emails = batches.iter().all(|b| {
        let col = cast(b.column_by_name("email").unwrap(), &DataType::Utf8).unwrap();
        col.as_string::<i32>()
            .iter()
            .flatten()
            .all(|e| e.contains("***@***"))
    });
    assert!(emails, "raw email through the DataFrame API");
}

/// The corpus with `sales.orders` served from a PostgreSQL table (the same
/// rows, loaded into a server this test starts): ana sees no raw value,
/// whatever reaches the database, and pat's raw values come through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_product_serves_no_raw_value_to_a_restricted_principal() {
    use meshq_tests::postgres::TestPostgres;
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    // The orders' rows, raw, into PostgreSQL.
    let files = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let pat = files.session(&files.mesh().config.principal("pat").unwrap());
    let rows = run(
        &pat,
        "SELECT order_id, customer_id, email, region, status, item_count, total_amount, created_at, order_date FROM sales.orders",
    )
    .await
    .unwrap();
    let pg = TestPostgres::start();
    let csv = pg.dir().join("orders.csv");
    {
        let file = std::fs::File::create(&csv).unwrap();
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(file);
        for b in &rows {
            w.write(b).unwrap();
        }
    }
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE ROLE meshq_reader LOGIN PASSWORD 'reader-secret';
         CREATE TABLE public.orders (order_id text, customer_id text, email text, region text,
           status text, item_count integer, total_amount numeric(12,2), created_at timestamp,
           order_date date);
         GRANT SELECT ON public.orders TO meshq_reader;",
    );
    pg.psql(
        "shop",
        &format!(
            "\\copy public.orders FROM '{}' WITH (FORMAT csv, HEADER true)",
            csv.display()
        ),
    );
    let loaded = pg.psql("shop", "SELECT count(*) FROM public.orders");
    assert_eq!(loaded.trim(), crate::bypass::rows(&rows).to_string());
    // The product's server becomes the database, under the same name.
    let contract = dir.path().join("sales/orders.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap();
    let local = "- { server: local, type: local, format: delta, path: ./data/orders }";
    assert!(text.contains(local));
    std::fs::write(
        &contract,
        text.replace(
            local,
            &format!(
                "- {{ server: local, type: postgresql, host: 127.0.0.1, port: {}, database: shop, schema: public }}",
                pg.port
            ),
        ),
    )
    .unwrap();
    let platform = dir.path().join("meshq.yaml");
    let mut yaml = std::fs::read_to_string(&platform).unwrap();
    yaml.push_str(&format!(
        "stores:\n  shop_db: {{ type: postgresql, host: 127.0.0.1, port: {}, database: shop, user: meshq_reader, password: {{ env: MESHQ_TEST_PG_PASSWORD }} }}\n",
        pg.port
    ));
    std::fs::write(&platform, yaml).unwrap();
    let mut config = meshq_tests::fixture_engine_config(dir.path());
    config
        .secret_env_fallback
        .insert("MESHQ_TEST_PG_PASSWORD".into(), "reader-secret".into());
    let engine = meshq_engine::Engine::load(config).await.unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(errors.is_empty(), "{errors:#?}");
    let plan = run(
        &engine.session(&engine.mesh().config.principal("ana").unwrap()),
        "EXPLAIN SELECT * FROM sales.orders",
    )
    .await
    .unwrap();
    let plan = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(plan.contains("PostgresExec: table=sales.orders"), "{plan}");
    corpus_holds(&engine, dir.path(), "PostgreSQL").await;
    // The raw emails never went to the database as a predicate.
    let secrets = secrets().await;
    let log = pg.log();
    for s in secrets.iter().filter(|s| s.contains('@')) {
        assert!(!log.contains(s.as_str()), "{s} reached PostgreSQL");
    }
}

fn rows(batches: &[arrow::array::RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}
