//! The `meta` schema beyond one principal's `.slt`: freshness against an
//! SLA when the data is old, the readable-only switch, and no data values.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::DataType;
use meshq_engine::Engine;
use meshq_engine::meta::META_TABLES;
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

use crate::common::{run, sorted_rows};

async fn fresh_fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh).unwrap();
    write_fixture_mesh(&mesh).await.unwrap();
    (dir, mesh)
}

async fn rows_as(engine: &Engine, who: &str, sql: &str) -> Vec<String> {
    let principal = engine.mesh().config.principal(who).unwrap();
    let session = engine.session(&principal);
    sorted_rows(&run(&session, sql).await.unwrap())
}

/// A Delta table whose last commit is older than its contract's latency is
/// late; the Iceberg table written at the same time as the fixture is fresh.
#[tokio::test]
async fn a_delta_table_last_committed_days_ago_is_late() {
    let (_dir, mesh) = fresh_fixture().await;
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 86_400);
    for entry in std::fs::read_dir(mesh.join("sales/data/orders/_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(three_days_ago)
                .unwrap();
        }
    }
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    let rows = rows_as(
        &engine,
        "ana",
        "SELECT table_name, freshness_status, last_modified < now() - INTERVAL '2 days' \
         FROM meta.tables WHERE table_schema IN ('sales', 'logistics')",
    )
    .await;
    assert_eq!(rows, ["orders|late|true", "shipments|fresh|false"]);
}

/// `discovery: { visibility: readable-only }` hides what the caller may
/// not read from every `meta` table.
#[tokio::test]
async fn readable_only_hides_unreadable_products_everywhere_in_meta() {
    let (_dir, mesh) = fresh_fixture().await;
    let config = mesh.join("meshq.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\ndiscovery: {{ visibility: readable-only }}\n"),
    )
    .unwrap();
    // Shipments also reads payments, which ana may not read.
    let shipments = mesh.join("logistics/shipments.odps.yaml");
    let text = std::fs::read_to_string(&shipments).unwrap().replace(
        "inputPorts:\n",
        "inputPorts:\n  - { name: payments, version: 1.0.0, contractId: urn:datacontract:payments:transactions }\n",
    );
    std::fs::write(&shipments, text).unwrap();
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    meshq_engine::quality::check_and_record(&engine, 4).await;
    for (table, column) in [
        ("products", "product_id"),
        ("products", "input_products"),
        ("products", "access_approvers"),
        ("tables", "table_schema"),
        ("columns", "table_schema"),
        ("my_access", "table_schema"),
        ("lineage", "to_product"),
        ("quality", "table_schema"),
    ] {
        let rows = rows_as(
            &engine,
            "ana",
            &format!("SELECT DISTINCT {column} FROM meta.{table}"),
        )
        .await;
        assert!(!rows.is_empty(), "meta.{table} is empty");
        assert!(
            rows.iter().all(|r| !r.contains("payments")),
            "meta.{table}: {rows:?}"
        );
    }
    // gina may read payments: she sees it.
    let rows = rows_as(
        &engine,
        "gina",
        "SELECT count(*) FROM meta.tables WHERE table_schema = 'payments'",
    )
    .await;
    assert_eq!(rows, ["1"]);
}

/// Identifying values of the data: ids, emails, names, phones, card numbers.
async fn data_values(engine: &Engine) -> BTreeSet<String> {
    let pat = engine.session(&engine.mesh().config.principal("pat").unwrap());
    let mut out = BTreeSet::new();
    for sql in [
        "SELECT customer_id, full_name, email, phone FROM customers.profiles",
        "SELECT order_id, email FROM sales.orders",
        "SELECT payment_id, card_number FROM payments.transactions",
        "SELECT shipment_id FROM logistics.shipments",
    ] {
        for b in run(&pat, sql).await.unwrap() {
            for c in b.columns() {
                let c = cast(c, &DataType::Utf8).unwrap();
                out.extend(c.as_string::<i32>().iter().flatten().map(str::to_string));
            }
        }
    }
    out.retain(|v| v.len() >= 5);
    out
}

/// No `meta` table holds a value of the data, for anyone: metadata only.
#[tokio::test]
async fn meta_never_holds_a_data_value() {
    let (_dir, mesh) = fresh_fixture().await;
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    meshq_engine::quality::check_and_record(&engine, 4).await;
    let secrets = data_values(&engine).await;
    assert!(secrets.len() > 300, "{} values", secrets.len());
    // The detector finds values where there are some.
    let pat = engine.session(&engine.mesh().config.principal("pat").unwrap());
    let raw = run(&pat, "SELECT email FROM customers.profiles LIMIT 1")
        .await
        .unwrap();
    let raw = arrow::util::pretty::pretty_format_batches(&raw)
        .unwrap()
        .to_string();
    assert!(secrets.iter().any(|s| raw.contains(s.as_str())));
    for who in ["ana", "gina", "pat", "root"] {
        let principal = engine.mesh().config.principal(who).unwrap();
        let session = engine.session(&principal);
        for table in META_TABLES {
            let batches = run(&session, &format!("SELECT * FROM meta.{table}"))
                .await
                .unwrap();
            let text = arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            if let Some(leak) = secrets.iter().find(|s| text.contains(s.as_str())) {
                panic!("{who}: meta.{table} holds the data value {leak:?}");
            }
        }
    }
}

/// `defaults: { schema }` for everyone and per principal: unqualified names
/// resolve there, so a BI tool's `SELECT * FROM orders` works; a schema no
/// domain serves is a warning and such sessions start in `public`.
#[tokio::test]
async fn sessions_start_in_the_configured_default_schema() {
    let (_dir, mesh) = fresh_fixture().await;
    let config = mesh.join("meshq.yaml");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "name: gina",
        "defaults: { schema: payments }\n    name: gina",
        1,
    );
    std::fs::write(&config, format!("{text}\ndefaults: {{ schema: sales }}\n")).unwrap();
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    let about_meshq_yaml = |engine: &Engine| -> Vec<String> {
        engine
            .problems()
            .iter()
            .filter(|p| p.file.ends_with("meshq.yaml"))
            .map(ToString::to_string)
            .collect()
    };
    assert!(about_meshq_yaml(&engine).is_empty());
    assert_eq!(
        rows_as(&engine, "ana", "SELECT count(*) > 0 FROM orders").await,
        ["true"]
    );
    assert_eq!(
        rows_as(&engine, "gina", "SELECT count(*) > 0 FROM transactions").await,
        ["true"]
    );
    // A schema nobody serves: a warning, and sessions start in `public`.
    std::fs::write(
        &config,
        format!("{text}\ndefaults: {{ schema: nowhere }}\n"),
    )
    .unwrap();
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    assert_eq!(
        about_meshq_yaml(&engine),
        [
            "meshq.yaml: warning: defaults.schema: no domain `nowhere` is served; such sessions start in `public`"
        ]
    );
    let ana = engine.session(&engine.mesh().config.principal("ana").unwrap());
    assert!(run(&ana, "SELECT 1 FROM orders").await.is_err());
}

/// `meta.quality` holds each rule's latest result for everyone who may see
/// the table's metadata, and the measured value only for a caller no
/// policy restricts on the table; `meta.tables.quality_status` sums it up.
#[tokio::test]
async fn quality_results_show_measured_values_only_to_unrestricted_callers() {
    let (_dir, mesh) = fresh_fixture().await;
    // At the fixture's scale refunds stay under the demo's 10 %; under 1 %
    // they do not.
    let contract = mesh.join("payments/transactions.odcs.yaml");
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("mustBeLessThan: 10\n"));
    std::fs::write(
        &contract,
        text.replace("mustBeLessThan: 10\n", "mustBeLessThan: 1\n"),
    )
    .unwrap();
    let engine = Engine::load(fixture_engine_config(&mesh)).await.unwrap();
    let sql = "SELECT table_name, rule, status, measured IS NULL FROM meta.quality \
               WHERE rule IN ('orders_not_empty', 'refunds_are_rare')";
    // Before any check: no rows, and unknown.
    assert!(rows_as(&engine, "ana", sql).await.is_empty());
    assert_eq!(
        rows_as(
            &engine,
            "ana",
            "SELECT DISTINCT quality_status FROM meta.tables"
        )
        .await,
        ["unknown"]
    );
    let failing = meshq_engine::quality::check_and_record(&engine, 4).await;
    assert_eq!(failing, 1);
    // ana: orders are filtered to her region, payments unreadable.
    assert_eq!(
        rows_as(&engine, "ana", sql).await,
        [
            "orders|orders_not_empty|passed|true",
            "transactions|refunds_are_rare|failed|true"
        ]
    );
    // pat reads every order unmasked; payments' card numbers are masked
    // for everyone.
    assert_eq!(
        rows_as(&engine, "pat", sql).await,
        [
            "orders|orders_not_empty|passed|false",
            "transactions|refunds_are_rare|failed|true"
        ]
    );
    let orders = rows_as(
        &engine,
        "pat",
        "SELECT measured FROM meta.quality WHERE rule = 'orders_not_empty'",
    )
    .await;
    let count = rows_as(&engine, "pat", "SELECT count(*) FROM sales.orders").await;
    assert_eq!(orders, [format!("{}.0", count[0])]);
    assert_eq!(
        rows_as(
            &engine,
            "gina",
            "SELECT table_name, quality_status FROM meta.tables"
        )
        .await,
        [
            "events|passed",
            "incidents|passed",
            "orders|passed",
            "profile_360|passed",
            "profiles|passed",
            "region_totals|passed",
            "segments|passed",
            "shipments|passed",
            "transactions|failed"
        ]
    );
}
