//! A product whose output port is a table of another meshq, read over
//! Flight SQL: the fixture mesh is served in this process, and a second
//! fixture mesh reads `sales.orders` from it (logged in as `pat`, who may
//! see every raw value there) and applies its own contract's policies on
//! top. Answers per principal equal the file product's; what reaches the
//! remote server is the projection, the row filter and predicates on
//! unmasked columns; faults name the product. It joins with the Parquet
//! and Iceberg products like any other.

use std::path::Path;

use arrow::array::RecordBatch;
use meshq_engine::{Engine, EngineConfig};
use meshq_tests::remote::RemoteMeshq;

use crate::common::{all_problems, query};

const PASSWORD_ENV: &str = "MESHQ_TEST_REMOTE_PASSWORD";

fn config(dir: &Path, password: &str) -> EngineConfig {
    let mut config = meshq_tests::fixture_engine_config(dir);
    config
        .secret_env_fallback
        .insert(PASSWORD_ENV.into(), password.into());
    config
}

/// Rewrites the fixture mesh at `dir` so `sales.orders` is the remote
/// `sales.orders` at `endpoint`.
fn read_orders_from(dir: &Path, endpoint: &str) {
    let path = dir.join("sales/orders.odcs.yaml");
    let contract = std::fs::read_to_string(&path).unwrap();
    let server = "  - { server: local, type: local, format: delta, path: ./data/orders }";
    assert!(contract.contains(server), "the demo's orders server");
    std::fs::write(
        &path,
        contract
            .replace(
                server,
                &format!("  - {{ server: local, type: custom, format: flightsql, endpointUrl: {endpoint} }}"),
            )
            .replace("    physicalName: orders\n", "    physicalName: sales.orders\n"),
    )
    .unwrap();
    let platform = dir.join("meshq.yaml");
    let mut yaml = std::fs::read_to_string(&platform).unwrap();
    yaml.push_str(&format!(
        "stores:\n  hub: {{ type: flightsql, endpoint: {endpoint}, username: pat, password: {{ env: {PASSWORD_ENV} }}, pool_size: 2 }}\n"
    ));
    std::fs::write(platform, yaml).unwrap();
}

/// The remote fixture mesh served in this process, the file-backed engine
/// over it, and a local fixture mesh reading `sales.orders` from it.
struct Meshes {
    remote_dir: tempfile::TempDir,
    remote: RemoteMeshq,
    local_dir: tempfile::TempDir,
}

async fn meshes() -> Meshes {
    let remote_dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(remote_dir.path())
        .await
        .unwrap();
    let remote = RemoteMeshq::start(
        remote_dir.path(),
        &remote_dir.path().join("remote-audit.jsonl"),
    )
    .await
    .unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(local_dir.path())
        .await
        .unwrap();
    read_orders_from(local_dir.path(), &remote.endpoint());
    Meshes {
        remote_dir,
        remote,
        local_dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_table_answers_each_principal_as_the_file_product_does() {
    let m = meshes().await;
    let files = Engine::load(meshq_tests::fixture_engine_config(m.remote_dir.path()))
        .await
        .unwrap();
    let remote = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    assert!(
        crate::common::error_problems(&remote).is_empty(),
        "{:#?}",
        crate::common::error_problems(&remote)
    );
    let plan = query(&remote, "pat", "EXPLAIN SELECT order_id FROM sales.orders")
        .await
        .unwrap();
    assert!(plan.contains("FlightSqlExec: table=sales.orders"), "{plan}");
    for sql in [
        "SELECT * FROM sales.orders ORDER BY order_id",
        "SELECT region, count(*) AS n, sum(total_amount) AS total FROM sales.orders GROUP BY region ORDER BY region",
        "SELECT email, count(*) AS n FROM sales.orders GROUP BY email ORDER BY n DESC, email LIMIT 5",
        "SELECT order_id FROM sales.orders WHERE email = 'x' OR email LIKE '%@%' ORDER BY order_id LIMIT 7",
        "SELECT o.order_id, p.full_name, p.email FROM sales.orders o \
         JOIN customers.profiles p ON o.customer_id = p.customer_id \
         WHERE o.item_count > 2 ORDER BY o.order_id LIMIT 20",
        "SELECT count(*) AS n FROM sales.orders o JOIN payments.transactions t ON o.order_id = t.order_id",
        // With the Iceberg product.
        "SELECT s.carrier, count(*) AS n, sum(o.total_amount) AS total FROM logistics.shipments s \
         JOIN sales.orders o ON s.order_id = o.order_id GROUP BY s.carrier ORDER BY s.carrier",
        "SELECT order_id, region FROM sales.orders WHERE item_count BETWEEN 2 AND 4 AND status <> 'cancelled' ORDER BY order_id",
    ] {
        for who in ["ana", "ben", "gina", "pat"] {
            let expected = query(&files, who, sql).await;
            let got = query(&remote, who, sql).await;
            assert_eq!(got, expected, "{who}: {sql}");
        }
    }
    // meta covers it like any product: its format, and its contract's
    // quality rules run against the remote table.
    let listed = query(
        &remote,
        "pat",
        "SELECT format, readable FROM meta.tables WHERE table_schema = 'sales' AND table_name = 'orders'",
    )
    .await
    .unwrap();
    assert!(listed.contains("| flightsql | true "), "{listed}");
    meshq_engine::quality::check_and_record(&remote, 2).await;
    let checks = query(
        &remote,
        "pat",
        "SELECT rule, status FROM meta.quality WHERE table_name = 'orders' ORDER BY rule",
    )
    .await
    .unwrap();
    assert!(
        checks.contains("| orders_not_empty ")
            && checks.contains("| no_negative_totals ")
            && checks.contains("| freshness                     | skipped |")
            && !checks.contains("error")
            && !checks.contains("failed"),
        "{checks}"
    );
    // The remote server saw pat's login for every statement.
    let records = m.remote.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["principal"] == "pat" && r["tables"] == serde_json::json!(["sales.orders"])),
        "{records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_row_filter_and_predicates_on_unmasked_columns_reach_the_remote() {
    let m = meshes().await;
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let sql = "SELECT order_id, email FROM sales.orders \
               WHERE item_count > 3 AND email = 'someone@example.com' AND customer_id < 'C9' \
               ORDER BY email";
    let plan = query(&engine, "ana", &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    let line = plan
        .lines()
        .find(|l| l.contains("FlightSqlExec"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        line.contains("(\"region\" = 'EMEA')") && line.contains("(\"item_count\" > 3)"),
        "the row filter and the predicate on item_count are sent: {line}"
    );
    assert!(
        !line.contains("someone@example.com") && !line.contains("'C9'"),
        "predicates on masked columns stay in meshq: {line}"
    );
    assert!(
        !line.to_ascii_uppercase().contains("ORDER BY"),
        "ordering by a masked column stays in meshq: {line}"
    );
    query(&engine, "ana", sql).await.unwrap();
    let grouped = "SELECT email, count(*) AS n FROM sales.orders GROUP BY email ORDER BY email";
    query(&engine, "ana", grouped).await.unwrap();
    // What the remote server received, as its audit log shapes it.
    let shapes: Vec<String> = m
        .remote
        .audit_records()
        .iter()
        .filter(|r| r["principal"] == "pat")
        .filter_map(|r| r["sql_shape"].as_str().map(str::to_string))
        .collect();
    assert!(
        shapes
            .iter()
            .any(|s| s.contains("\"region\" = ?") && s.contains("\"item_count\" > ?")),
        "{shapes:#?}"
    );
    for s in &shapes {
        let upper = s.to_ascii_uppercase();
        assert!(
            !upper.contains("GROUP BY") && !upper.contains("ORDER BY"),
            "no grouping or ordering reached the remote: {s}"
        );
        assert!(
            !s.contains("\"email\" =") && !s.contains("\"customer_id\" <"),
            "no predicate on a masked column reached the remote: {s}"
        );
    }
    // The local audit would record the statement sent: the plan holds it.
    let limited = query(
        &engine,
        "ana",
        "EXPLAIN SELECT order_id FROM sales.orders LIMIT 3",
    )
    .await
    .unwrap();
    let rows = query(&engine, "ana", "SELECT region FROM sales.orders LIMIT 3")
        .await
        .unwrap();
    assert_eq!(rows.matches("EMEA").count(), 3, "{rows}\n{limited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_product_serves_no_raw_value_to_a_restricted_principal() {
    let m = meshes().await;
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    crate::bypass::corpus_holds(&engine, m.local_dir.path(), "a remote Flight SQL product").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_remote_fails_its_product_only_and_recovers() {
    let m = meshes().await;
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let sql = "SELECT count(*) AS n FROM sales.orders";
    let before = query(&engine, "pat", sql).await.unwrap();
    let port = m.remote.port;
    m.remote.stop().await;
    let e = query(&engine, "pat", sql).await.unwrap_err();
    assert!(
        e.contains("sales.orders") && e.contains("cannot be reached"),
        "{e}"
    );
    // The other products answer.
    query(&engine, "pat", "SELECT count(*) FROM customers.profiles")
        .await
        .unwrap();
    let _back = RemoteMeshq::start_on(
        m.remote_dir.path(),
        &m.remote_dir.path().join("remote-audit.jsonl"),
        port,
    )
    .await
    .unwrap();
    assert_eq!(query(&engine, "pat", sql).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_down_at_load_is_unreadable_until_a_reload_finds_it() {
    let m = meshes().await;
    let port = m.remote.port;
    m.remote.stop().await;
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let problems: Vec<String> = all_problems(&engine);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("sales.orders") && p.contains("cannot be reached")),
        "{problems:#?}"
    );
    let e = query(&engine, "pat", "SELECT count(*) FROM sales.orders")
        .await
        .unwrap_err();
    assert!(e.contains("sales.orders"), "{e}");
    let _back = RemoteMeshq::start_on(
        m.remote_dir.path(),
        &m.remote_dir.path().join("remote-audit.jsonl"),
        port,
    )
    .await
    .unwrap();
    let reloaded = Engine::load_after(config(m.local_dir.path(), "pat-demo"), Some(&engine))
        .await
        .unwrap();
    query(&reloaded, "pat", "SELECT count(*) FROM sales.orders")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_names_the_product_not_the_credentials() {
    let m = meshes().await;
    let engine = Engine::load(config(m.local_dir.path(), "not-the-password"))
        .await
        .unwrap();
    let problems: Vec<String> = all_problems(&engine);
    let problem = problems
        .iter()
        .find(|p| p.contains("sales.orders"))
        .unwrap_or_else(|| panic!("{problems:#?}"));
    assert!(problem.contains("refused the login"), "{problem}");
    assert!(!problem.contains("not-the-password"), "{problem}");
    // The other products are served.
    query(&engine, "ana", "SELECT count(*) FROM customers.profiles")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contract_that_disagrees_with_the_remote_table_is_drift() {
    let m = meshes().await;
    let path = m.local_dir.path().join("sales/orders.odcs.yaml");
    let contract = std::fs::read_to_string(&path).unwrap();
    let declared = "{ name: item_count, logicalType: integer, physicalType: INT,";
    assert!(contract.contains(declared));
    std::fs::write(
        &path,
        contract.replace(
            declared,
            "{ name: item_count, logicalType: date, physicalType: DATE,",
        ),
    )
    .unwrap();
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let problems: Vec<String> = all_problems(&engine);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("item_count") && p.contains("contract says")),
        "{problems:#?}"
    );
    let e = query(&engine, "pat", "SELECT item_count FROM sales.orders")
        .await
        .unwrap_err();
    assert!(e.contains("item_count"), "{e}");
    query(&engine, "pat", "SELECT order_id FROM sales.orders")
        .await
        .unwrap();
}

/// A statement dropped while its remote answer still streams is ended at
/// the remote server too (CancelFlightInfo, and the stream closed): the
/// remote's audit log records it as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_query_ends_its_remote_statement() {
    use futures::StreamExt;
    let remote_dir = tempfile::tempdir().unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    // Two million rows: far more than HTTP/2 lets the remote send ahead.
    std::fs::create_dir_all(remote_dir.path().join("bulk")).unwrap();
    {
        use arrow::array::Int64Array;
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("m", arrow::datatypes::DataType::Int64, false),
        ]));
        let file = std::fs::File::create(remote_dir.path().join("bulk/numbers.parquet")).unwrap();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(file, std::sync::Arc::clone(&schema), None)
                .unwrap();
        for chunk in 0..20i64 {
            let n: Int64Array = (chunk * 100_000..(chunk + 1) * 100_000).collect();
            let m: Int64Array = n.iter().map(|v| v.map(|v| v * 7919 % 1_000_003)).collect();
            w.write(
                &RecordBatch::try_new(
                    std::sync::Arc::clone(&schema),
                    vec![std::sync::Arc::new(n), std::sync::Arc::new(m)],
                )
                .unwrap(),
            )
            .unwrap();
        }
        w.close().unwrap();
    }
    let product = "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:bulk:numbers\nname: numbers\nversion: 1.0.0\n\
                   status: active\ndomain: bulk\noutputPorts:\n  - { name: numbers, type: tables, version: 1.0.0, contractId: urn:datacontract:bulk:numbers }\n";
    let contract = |server: &str, physical: &str| {
        format!(
            "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:bulk:numbers\nname: numbers\nversion: 1.0.0\nstatus: active\ndomain: bulk\n\
             servers:\n  - {server}\n\
             schema:\n  - name: numbers\n    physicalName: {physical}\n    customProperties:\n\
             \x20     - {{ property: readRoles, value: [analyst] }}\n\
             \x20   properties:\n\
             \x20     - {{ name: n, logicalType: integer, required: true }}\n\
             \x20     - {{ name: m, logicalType: integer, required: true }}\n"
        )
    };
    let principals = "secrets:\n  pii-key: { env: MESHQ_DEMO_PII_KEY }\nprincipals:\n";
    for (dir, server, physical) in [
        (
            remote_dir.path(),
            "{ server: local, type: local, format: parquet, path: ./numbers.parquet }".to_string(),
            "numbers",
        ),
        (local_dir.path(), String::new(), "bulk.numbers"),
    ] {
        std::fs::create_dir_all(dir.join("bulk")).unwrap();
        std::fs::write(dir.join("bulk/numbers.odps.yaml"), product).unwrap();
        std::fs::write(
            dir.join("bulk/numbers.odcs.yaml"),
            contract(&server, physical),
        )
        .unwrap();
        let hash = meshq_cli::hash_password("pat-demo").unwrap();
        std::fs::write(
            dir.join("meshq.yaml"),
            format!(
                "{principals}  - {{ name: pat, password_hash: \"{hash}\", roles: [analyst] }}\n"
            ),
        )
        .unwrap();
    }
    let remote = RemoteMeshq::start(remote_dir.path(), &remote_dir.path().join("audit.jsonl"))
        .await
        .unwrap();
    let endpoint = remote.endpoint();
    std::fs::write(
        local_dir.path().join("bulk/numbers.odcs.yaml"),
        contract(
            &format!("{{ server: hub, type: custom, format: flightsql, endpointUrl: {endpoint} }}"),
            "bulk.numbers",
        ),
    )
    .unwrap();
    let mut yaml = std::fs::read_to_string(local_dir.path().join("meshq.yaml")).unwrap();
    yaml.push_str(&format!(
        "stores:\n  hub: {{ type: flightsql, endpoint: {endpoint}, username: pat, password: {{ env: {PASSWORD_ENV} }} }}\n"
    ));
    std::fs::write(local_dir.path().join("meshq.yaml"), yaml).unwrap();
    let engine = Engine::load(config(local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    assert!(
        crate::common::error_problems(&engine).is_empty(),
        "{:#?}",
        crate::common::error_problems(&engine)
    );
    let principal = engine.mesh().config.principal("pat").unwrap();
    let session = engine.session(&principal);
    let mut stream = session
        .sql("SELECT n, m FROM bulk.numbers")
        .await
        .unwrap()
        .execute_stream()
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = remote.audit_records();
        let statement = records.iter().find(|r| {
            r["tables"] == serde_json::json!(["bulk.numbers"]) && r["call"] == "statement"
        });
        if let Some(r) = statement {
            assert_eq!(r["outcome"], "cancelled", "{r:#}");
            assert!(
                r["rows"].as_u64().unwrap() < 2_000_000,
                "the remote stopped before sending everything: {r:#}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the remote statement did not end: {records:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An accelerated remote product is copied on its interval and answers
/// each principal as the remote does; `refresh: on-change` is refused by
/// name, since a remote table has no version to watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_product_is_accelerated_on_its_interval_only() {
    use meshq_engine::acceleration::RefreshOutcome;
    let m = meshes().await;
    let odps = m.local_dir.path().join("sales/orders.odps.yaml");
    let text = std::fs::read_to_string(&odps).unwrap();
    let port = "customProperties: [ { property: server, value: local } ]";
    assert!(text.contains(port));
    let accelerate = |refresh: &str| {
        std::fs::write(
            &odps,
            text.replace(
                port,
                &format!(
                    "customProperties: [ {{ property: server, value: local }}, {{ property: acceleration, value: {{ engine: memory, refresh: {refresh} }} }} ]"
                ),
            ),
        )
        .unwrap();
    };
    let sql = "SELECT order_id, email, region FROM sales.orders ORDER BY order_id";

    accelerate("on-change");
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let outcomes = engine.refresh_accelerations().await;
    let (_, outcome) = outcomes
        .iter()
        .find(|(t, _)| t == "sales.orders")
        .expect("sales.orders is accelerated");
    match outcome {
        RefreshOutcome::Failed(why) => assert!(why.contains("refresh: 5m"), "{why}"),
        other => panic!("{other:?}"),
    }

    accelerate("1h");
    let engine = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let direct = Engine::load(config(m.local_dir.path(), "pat-demo"))
        .await
        .unwrap();
    let before = m.remote.audit_records().len();
    let outcomes = engine.refresh_accelerations().await;
    assert!(
        outcomes
            .iter()
            .any(|(t, o)| t == "sales.orders" && matches!(o, RefreshOutcome::Built { .. })),
        "{outcomes:?}"
    );
    let copied = m.remote.audit_records().len();
    assert!(copied > before, "the copy was read from the remote");
    // A second refresh within the hour builds nothing.
    let again = engine.refresh_accelerations().await;
    assert!(
        again
            .iter()
            .any(|(t, o)| t == "sales.orders" && matches!(o, RefreshOutcome::Current)),
        "{again:?}"
    );
    for who in ["ana", "ben", "gina", "pat"] {
        let from_copy = query(&engine, who, sql).await.unwrap();
        assert_eq!(from_copy, query(&direct, who, sql).await.unwrap(), "{who}");
    }
    // The copy answered: the remote saw no statement of the queries above
    // from the accelerated engine (the direct one's are the rest).
    let plan = query(&engine, "pat", &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    assert!(!plan.contains("FlightSqlExec"), "{plan}");
}
