//! The abuse suite, in process: attacks on the governed engine that go
//! around the policies rather than through a query shape — admin file
//! paths, stale plans after a reload, hand-built plans, predicates without
//! columns, discovery, growing functions. Each reproduces the attack and
//! asserts that it now fails closed, with an error that names no secret.
//! The attacks that need a server (crashes, limits, logins) are in
//! `cli/tests/abuse.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use meshq_connectors::MeshScanExec;
use meshq_engine::policy::barrier::PolicyBarrierExec;
use meshq_engine::policy::verify::verify_plan;
use meshq_engine::{Engine, MeshSession, MeshqOptions, Principal, SessionData};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

use crate::common::{run, sorted_rows};

/// A fixture mesh in `<tmp>/mesh`, with `extra` appended to its meshq.yaml.
async fn mesh_with(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().canonicalize().unwrap().join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    write_fixture_mesh(&mesh).await.unwrap();
    let config = mesh.join("meshq.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    (dir, mesh)
}

async fn load(mesh: &Path) -> Engine {
    let engine = Engine::load(fixture_engine_config(mesh)).await.unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(
        errors.is_empty(),
        "the fixture mesh has errors: {errors:#?}"
    );
    engine
}

fn principal(engine: &Engine, name: &str) -> Principal {
    engine.mesh().config.principal(name).unwrap()
}

fn as_user(engine: &Engine, name: &str) -> MeshSession {
    engine.session(&principal(engine, name))
}

/// Every attack location of the issue: globs, `/proc/self` links, percent
/// encoding, system files — for `CREATE EXTERNAL TABLE` and `COPY`.
#[tokio::test]
async fn admins_read_and_write_files_only_in_scratch_and_export() {
    let (dir, mesh) = mesh_with("files: { scratch: ../scratch, export: ../exports }\n").await;
    let engine = load(&mesh).await;
    let scratch = dir.path().canonicalize().unwrap().join("scratch");
    let exports = dir.path().canonicalize().unwrap().join("exports");
    assert!(scratch.is_dir() && exports.is_dir());
    let root = as_user(&engine, "root");
    let m = mesh.display().to_string();
    let cwd = std::env::current_dir().unwrap();
    let from_cwd = pathdiff(&mesh, &cwd);
    let reads = [
        format!("{m}/payments/data/transactions/"),
        format!("{m}/payments/data/t*"),
        format!("/proc/self/root{m}/payments/data/transactions/"),
        format!("/proc/self/cwd/{from_cwd}/payments/data/transactions/"),
        format!("file://{m}/p%61yments/data/transactions/"),
        format!("{}/../mesh/payments/data/transactions/", scratch.display()),
        "../mesh/payments/data/transactions/".to_string(),
        "/etc/hostname".to_string(),
        "scratch:///../mesh/".to_string(),
    ];
    for location in &reads {
        let sql = format!("CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '{location}'");
        let e = run(&root, &sql).await.unwrap_err();
        assert!(
            e.contains("permission denied: CREATE EXTERNAL TABLE on"),
            "{location}: {e}"
        );
    }
    // Rewriting a contract through COPY: refused wherever it points.
    for target in [
        format!("{m}/payments/transactions.odcs.yaml"),
        format!("file://{m}/p%61yments/x.csv"),
        "../mesh/payments/transactions.odcs.yaml".to_string(),
        "/tmp/meshq-abuse-out.csv".to_string(),
    ] {
        let sql = format!(
            "COPY (SELECT 'x' AS a) TO '{target}' STORED AS CSV OPTIONS ('format.has_header' 'false')"
        );
        let e = run(&root, &sql).await.unwrap_err();
        assert!(e.contains("permission denied: COPY on"), "{target}: {e}");
    }
    assert!(!Path::new("/tmp/meshq-abuse-out.csv").exists());
    // A symlink inside the scratch area that leads into the mesh.
    std::os::unix::fs::symlink(&mesh, scratch.join("link")).unwrap();
    let e = run(
        &root,
        "CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION 'link/payments/data/transactions/'",
    )
    .await
    .unwrap_err();
    assert!(e.contains("outside the location"), "{e}");

    // Inside the areas, both work: a table of the admin's own, and an export.
    std::fs::write(scratch.join("prices.csv"), "sku,price\na,1\nb,2\n").unwrap();
    run(
        &root,
        "CREATE EXTERNAL TABLE prices STORED AS CSV LOCATION 'prices.csv' OPTIONS ('format.has_header' 'true')",
    )
    .await
    .unwrap();
    let rows = run(&root, "SELECT sku, price FROM prices ORDER BY sku")
        .await
        .unwrap();
    assert_eq!(sorted_rows(&rows), ["a|1", "b|2"]);
    run(
        &root,
        "COPY (SELECT sku FROM prices ORDER BY sku) TO 'out/skus.csv' STORED AS CSV",
    )
    .await
    .unwrap();
    let written = std::fs::read_to_string(exports.join("out/skus.csv")).unwrap();
    assert_eq!(written, "sku\na\nb\n");
    // The mesh's contract is untouched, and admin is no data role.
    assert!(
        std::fs::read_to_string(mesh.join("payments/transactions.odcs.yaml"))
            .unwrap()
            .contains("readRoles")
    );
    let e = run(&root, "SELECT * FROM payments.transactions")
        .await
        .unwrap_err();
    assert!(
        e.contains("may not read table `payments.transactions`"),
        "{e}"
    );
    // Settings that move files or memory, and the session's identity, are
    // not SQL's to change.
    for set in [
        "SET datafusion.runtime.temp_directory = '/tmp'",
        "SET datafusion.runtime.memory_limit = '100G'",
        "SET datafusion.catalog.location = '/tmp'",
        "SET meshq.principal = 'pat'",
    ] {
        let e = run(&root, set).await.unwrap_err();
        assert!(e.contains("cannot be set from SQL"), "{set}: {e}");
    }
    // How scans run is an admin's to choose; a bad value is refused, and
    // the error says what is accepted.
    for (good, bad, says) in [
        (
            "SET meshq_scan.dynamic_filters = true",
            "SET meshq_scan.dynamic_filters = 'maybe'",
            &["as bool"][..],
        ),
        (
            "SET meshq_scan.dynamic_filter_probes = 'all'",
            "SET meshq_scan.dynamic_filter_probes = 'some'",
            &["dynamic_filter_probes", "collect_left"][..],
        ),
        (
            "SET meshq_plan.reorder_joins = true",
            "SET meshq_plan.reorder_joins = 'often'",
            &["as bool"][..],
        ),
    ] {
        run(&root, good).await.unwrap();
        let e = run(&root, bad).await.unwrap_err();
        assert!(says.iter().all(|s| e.contains(s)), "{bad}: {e}");
    }
}

/// The relative path from `base` to `path`, both absolute.
fn pathdiff(path: &Path, base: &Path) -> String {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out: Vec<String> = vec!["..".into(); b.len() - common];
    out.extend(
        p[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    out.join("/")
}

#[tokio::test]
async fn an_area_overlapping_the_mesh_or_a_protected_file_is_off() {
    let (dir, mesh) = mesh_with("files: { scratch: ., export: ../exports }\n").await;
    let key = dir.path().canonicalize().unwrap().join("exports/tls.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, "KEY").unwrap();
    let mut config = fixture_engine_config(&mesh);
    config.protected_paths = vec![key];
    let engine = Engine::load(config).await.unwrap();
    let problems: Vec<String> = engine.problems().iter().map(|p| p.to_string()).collect();
    assert!(
        problems
            .iter()
            .any(|p| p
                .starts_with("meshq.yaml: error: files.scratch `.` cannot be used: it overlaps")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("files.export `../exports` cannot be used: it overlaps")),
        "{problems:?}"
    );
    let e = run(
        &as_user(&engine, "root"),
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'x.csv'",
    )
    .await
    .unwrap_err();
    assert!(e.contains("no scratch location is configured"), "{e}");
}

/// A view (or prepared statement) planned on one version of the mesh must
/// not read a table the served version no longer has, nor skip the policies
/// the served version has.
#[tokio::test]
async fn stale_plans_follow_the_served_version_or_fail_closed() {
    let (_dir, mesh) = mesh_with("").await;
    let first = load(&mesh).await;
    // An admin who may also read sales.orders, in EMEA.
    let mut admin = principal(&first, "ana");
    admin.roles.insert("admin".into());
    let data = Arc::new(SessionData::new(admin));
    let root = first.session_for(&data);
    run(&root, "CREATE VIEW v AS SELECT * FROM sales.orders")
        .await
        .unwrap();
    run(&root, "PREPARE p AS SELECT email FROM sales.orders LIMIT 3")
        .await
        .unwrap();
    // The mask on email changes; the view and the prepared statement get
    // the new policy.
    let contract = mesh.join("sales/orders.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap();
    let changed = text.replace(
        "kind: partial, showFirst: 1, padding: \"***@***\", showLast: 4",
        "kind: constant, value: hidden",
    );
    assert_ne!(text, changed, "the demo's email mask is as expected");
    std::fs::write(&contract, changed).unwrap();
    let second = Engine::load_after(fixture_engine_config(&mesh), Some(&first))
        .await
        .unwrap();
    let root = second.session_for(&data);
    for sql in ["SELECT DISTINCT email FROM v", "EXECUTE p"] {
        let rows = run(&root, sql).await.unwrap();
        let emails: Vec<String> = sorted_rows(&rows).into_iter().collect::<Vec<_>>();
        assert!(emails.iter().all(|e| e == "hidden"), "{sql}: {emails:?}");
    }
    // The product is removed: the view answers NOT FOUND, never raw rows.
    std::fs::remove_file(mesh.join("sales/orders.odps.yaml")).unwrap();
    std::fs::remove_file(&contract).unwrap();
    let third = Engine::load_after(fixture_engine_config(&mesh), Some(&second))
        .await
        .unwrap();
    assert!(!third.is_served("sales.orders"));
    let root = third.session_for(&data);
    for sql in ["SELECT count(*) FROM v", "SELECT * FROM v", "EXECUTE p"] {
        let e = run(&root, sql).await.unwrap_err();
        assert!(
            e.contains("table `sales.orders` is not served by the mesh"),
            "{sql}: {e}"
        );
    }
}

/// Rewrites one plan node.
type NodeFn<'a> = &'a dyn Fn(&Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan>;

/// `plan` with every node of type `T` replaced by `f(node)`.
fn replace<T: ExecutionPlan>(
    plan: &Arc<dyn ExecutionPlan>,
    f: NodeFn<'_>,
) -> Arc<dyn ExecutionPlan> {
    if plan.is::<T>() {
        return f(plan);
    }
    let children: Vec<_> = plan
        .children()
        .into_iter()
        .map(|c| replace::<T>(c, f))
        .collect();
    if children.is_empty() {
        return Arc::clone(plan);
    }
    Arc::clone(plan)
        .replace_children(
            children,
            datafusion::physical_plan::execution_plan::ReplaceChildrenOptions::new(
                datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
        .unwrap()
}

#[tokio::test]
async fn the_plan_verifier_refuses_plans_without_their_policies() {
    let (_dir, mesh) = mesh_with("").await;
    let engine = load(&mesh).await;
    let ana = as_user(&engine, "ana");
    let options = MeshqOptions::new(Arc::new(principal(&engine, "ana")), None);
    let sql = "SELECT order_id, email, region FROM sales.orders ORDER BY order_id";
    let plan = ana.plan(sql).await.unwrap();
    let good = ana.execute(plan, None).await.unwrap().plan;
    verify_plan(&good, engine.tables(), &options).unwrap();
    let refused = |plan: &Arc<dyn ExecutionPlan>, options: &MeshqOptions, tables| {
        verify_plan(plan, tables, options).unwrap_err().to_string()
    };
    // The barrier removed: the masks and filter are still there, but
    // nothing keeps user predicates above them.
    let no_barrier = replace::<PolicyBarrierExec>(&good, &|n| Arc::clone(n.children()[0]));
    assert!(
        refused(&no_barrier, &options, engine.tables())
            .contains("no policy barrier above the scan")
    );
    // The policy nodes removed: the barrier sits on the raw scan.
    let raw = replace::<ProjectionExec>(&good, &|n| {
        let p = n.downcast_ref::<ProjectionExec>().unwrap();
        if p.expr().iter().any(|e| {
            e.alias == "email"
                && !e
                    .expr
                    .is::<datafusion::physical_expr::expressions::Column>()
        }) {
            Arc::clone(n.children()[0])
        } else {
            Arc::clone(n)
        }
    });
    let e = refused(&raw, &options, engine.tables());
    assert!(
        e.contains("column `email` is not masked below the barrier"),
        "{e}"
    );
    // The row filter removed, whether it ran in a filter or in the scan.
    let unfiltered = replace::<FilterExec>(&good, &|n| Arc::clone(n.children()[0]));
    let unfiltered = replace::<MeshScanExec>(&unfiltered, &|n| {
        let s = n.downcast_ref::<MeshScanExec>().unwrap();
        let bare = MeshScanExec::new(s.table(), Arc::clone(s.input()));
        Arc::new(bare.with_token(*s.token().unwrap()))
    });
    let e = refused(&unfiltered, &options, engine.tables());
    assert!(e.contains("no row filter below the barrier"), "{e}");
    // A scan that carries no decision (built around the policy rule).
    let untokened = replace::<MeshScanExec>(&good, &|n| {
        let s = n.downcast_ref::<MeshScanExec>().unwrap();
        Arc::new(MeshScanExec::new(s.table(), Arc::clone(s.input())))
    });
    let e = refused(&untokened, &options, engine.tables());
    assert!(e.contains("the scan carries no policy decision"), "{e}");
    // Ana's plan run for gina, or on another mesh version.
    let gina = MeshqOptions::new(Arc::new(principal(&engine, "gina")), None);
    assert!(refused(&good, &gina, engine.tables()).contains("planned for another principal"));
    let other = load(&mesh).await;
    assert!(refused(&good, &options, other.tables()).contains("planned on another mesh version"));
    // An operator the optimizer must never move between barrier and scan.
    let sorted = replace::<MeshScanExec>(&good, &|n| {
        let order = datafusion::physical_expr::LexOrdering::new(vec![
            datafusion::physical_expr::PhysicalSortExpr::new_default(Arc::new(
                datafusion::physical_expr::expressions::Column::new("order_id", 0),
            )),
        ])
        .unwrap();
        let sort: Arc<dyn ExecutionPlan> = Arc::new(SortExec::new(order, Arc::clone(n)));
        sort
    });
    let e = refused(&sorted, &options, engine.tables());
    assert!(
        e.contains("SortExec between the barrier and the scan"),
        "{e}"
    );
    // And the verifier runs on every plan the session makes: a plan of
    // ana's, with gina's session state, is refused while planning.
    let gina_session = as_user(&engine, "gina");
    assert!(verify_plan(&good, engine.tables(), &gina).is_err());
    let ok = gina_session.plan(sql).await.unwrap();
    gina_session.execute(ok, None).await.unwrap();
}

/// A predicate that names no column cannot cross the barrier either: it
/// would be evaluated on hidden rows (its error rate counts them).
#[tokio::test]
async fn predicates_without_columns_stay_above_the_barrier() {
    let (_dir, mesh) = mesh_with("").await;
    let engine = load(&mesh).await;
    let ana = as_user(&engine, "ana");
    let rows = run(
        &ana,
        "EXPLAIN SELECT * FROM sales.orders WHERE 1 / CAST(random() >= 0.0008 AS INT) = 1",
    )
    .await
    .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    let logical: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("random()") || l.contains("PolicyBarrier:"))
        .collect();
    assert!(
        logical.len() >= 2
            && logical[0].contains("Filter:")
            && logical[0].contains("random()")
            && logical[1].contains("PolicyBarrier:"),
        "the predicate must sit above the barrier:\n{text}"
    );
    // Behaviour: a predicate that fails for every row it is evaluated on
    // fails only when ana has rows to evaluate it on; the rows the filter
    // hides never trip it.
    let none_visible = "SELECT count(*) FROM sales.orders \
        WHERE region = 'AMER' AND 1 / CAST(random() >= 2.0 AS INT) = 1";
    let rows = run(&ana, none_visible).await.unwrap();
    assert_eq!(sorted_rows(&rows), ["0"]);
    let some_visible = "SELECT count(*) FROM sales.orders \
        WHERE region = 'EMEA' AND 1 / CAST(random() >= 2.0 AS INT) = 1";
    let e = run(&ana, some_visible).await.unwrap_err();
    assert!(e.contains("Divide by zero"), "{e}");
}

#[tokio::test]
async fn readable_only_discovery_hides_what_exists() {
    let (_dir, mesh) = mesh_with("discovery: { visibility: readable-only }\n").await;
    let engine = load(&mesh).await;
    let ana = as_user(&engine, "ana");
    // The same answer for a table that exists and one that does not.
    let hidden = run(&ana, "SELECT * FROM payments.transactions")
        .await
        .unwrap_err();
    let missing = run(&ana, "SELECT * FROM payments.nothing_here")
        .await
        .unwrap_err();
    let other_domain = run(&ana, "SELECT * FROM nowhere.transactions")
        .await
        .unwrap_err();
    // What the user sees (the debug form carries source spans, whose length
    // is the name's).
    let normalise = |e: &str| {
        e.rsplit(" / ")
            .next()
            .unwrap_or_default()
            .replace("payments.transactions", "X")
            .replace("payments.nothing_here", "X")
            .replace("nowhere.transactions", "X")
            .replace("transactions", "X")
            .replace("nothing_here", "X")
            .replace("payments", "D")
            .replace("nowhere", "D")
    };
    assert_eq!(
        normalise(&hidden),
        normalise(&missing),
        "{hidden} / {missing}"
    );
    assert_eq!(
        normalise(&hidden),
        normalise(&other_domain),
        "{hidden} / {other_domain}"
    );
    assert!(!hidden.contains("permission denied"), "{hidden}");
    for sql in [
        "SELECT table_schema, table_name FROM information_schema.tables",
        "SELECT schema_name FROM information_schema.schemata",
        "SHOW TABLES",
    ] {
        let rows = run(&ana, sql).await.unwrap();
        let text = sorted_rows(&rows).join("\n");
        assert!(!text.contains("payments"), "{sql}: {text}");
    }
    let tables: Vec<String> = ana
        .visible_tables()
        .await
        .into_iter()
        .map(|t| format!("{}.{}", t.schema, t.table))
        .collect();
    assert!(
        !tables.iter().any(|t| t.starts_with("payments")),
        "{tables:?}"
    );
    // By default a denied table says so (and names the roles to ask for).
    let (_dir, mesh) = mesh_with("").await;
    let engine = load(&mesh).await;
    let e = run(
        &as_user(&engine, "ana"),
        "SELECT * FROM payments.transactions",
    )
    .await
    .unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
}

#[tokio::test]
async fn functions_that_allocate_by_argument_are_bounded() {
    let (_dir, mesh) = mesh_with("limits: { defaults: { query_memory: 64MiB } }\n").await;
    let engine = load(&mesh).await;
    let ana = as_user(&engine, "ana");
    for sql in [
        "SELECT repeat('x', 700000000)",
        "SELECT length(repeat(email, 100000000)) FROM sales.orders",
        "SELECT lpad('x', 700000000)",
        "SELECT array_repeat(order_id, 100000000) FROM sales.orders",
    ] {
        let e = run(&ana, sql).await.unwrap_err();
        assert!(
            e.contains("more than one query may use (67108864 bytes, limits.query_memory"),
            "{sql}: {e}"
        );
    }
    let rows = run(&ana, "SELECT length(repeat('x', 1000))").await.unwrap();
    assert_eq!(sorted_rows(&rows), ["1000"]);
}

#[tokio::test]
async fn execute_is_planned_as_its_query() {
    let (_dir, mesh) = mesh_with("").await;
    let engine = load(&mesh).await;
    let ana = as_user(&engine, "ana");
    run(
        &ana,
        "PREPARE q(VARCHAR) AS SELECT order_id, region FROM sales.orders WHERE status = $1",
    )
    .await
    .unwrap();
    let plan = ana.plan("EXECUTE q('placed')").await.unwrap();
    assert!(!meshq_engine::is_statement(&plan), "{plan}");
    assert_eq!(ana.tables_read(&plan), ["sales.orders"]);
    let rows = run(&ana, "EXECUTE q('placed')").await.unwrap();
    let regions: std::collections::BTreeSet<String> = rows
        .iter()
        .flat_map(|b| {
            let c = cast(b.column(1), &DataType::Utf8).unwrap();
            c.as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(regions, ["EMEA".to_string()].into());
}
