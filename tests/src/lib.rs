//! Shared fixtures for meshq's SQL logic tests and end-to-end tests.
//!
//! [`write_fixture_mesh`] builds a small mesh by code: the demo's three
//! domains at a small scale (Delta and Parquet) plus an `ops` domain with a
//! CSV and a JSON product, so the suites cover every file format.
//! [`SltDb`] runs `.slt` files against an engine session.

pub mod postgres;
pub mod remote;
pub mod slt;

use std::path::Path;

use anyhow::Result;
use meshq_cli::demo::{DEMO_SECRET_ENV, DEMO_SECRET_VALUE, DemoScale, write_demo_mesh};
use meshq_engine::EngineConfig;

/// Engine config for the fixture mesh: the demo's hash-mask key is supplied
/// the way `meshq demo` supplies it.
pub fn fixture_engine_config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config
        .secret_env_fallback
        .insert(DEMO_SECRET_ENV.into(), DEMO_SECRET_VALUE.into());
    config
}

/// The mesh at `dir` on a coordinator over two workers served in this
/// process on loopback (every file scan split as finely as the library
/// allows), with each worker's credential check.
pub async fn fixture_cluster_engine(
    dir: &Path,
) -> Result<(meshq_engine::Engine, Vec<meshq_cluster::Verifier>)> {
    fixture_cluster_engine_with(dir, fixture_engine_config(dir)).await
}

/// [`fixture_cluster_engine`] with `config` (the fixture's, changed), its
/// coordinator planning with `config`'s target partitions.
pub async fn fixture_cluster_engine_with(
    dir: &Path,
    mut config: EngineConfig,
) -> Result<(meshq_engine::Engine, Vec<meshq_cluster::Verifier>)> {
    let (coordinator, verifiers) =
        meshq_cluster::loopback::loopback_cluster(dir, 2, &config.secret_env_fallback).await?;
    config.distribution = Some(std::sync::Arc::new(coordinator));
    Ok((meshq_engine::Engine::load(config).await?, verifiers))
}

/// Scale of the fixture's demo domains: small, but enough rows per region
/// and day for joins and aggregates to mean something.
pub const FIXTURE_SCALE: DemoScale = DemoScale {
    customers: 60,
    orders_per_day: 25,
    days: 3,
};

/// Writes the fixture mesh into `dir`.
pub async fn write_fixture_mesh(dir: &Path) -> Result<()> {
    write_demo_mesh(dir, FIXTURE_SCALE).await?;
    let ops = dir.join("ops");
    std::fs::create_dir_all(ops.join("data/events"))?;
    std::fs::write(
        ops.join("data/incidents.csv"),
        "incident_id,severity,region,opened_at,minutes_to_resolve\n\
         I-1,high,EMEA,2026-10-01T08:00:00Z,42\n\
         I-2,low,AMER,2026-10-01T09:30:00Z,5\n\
         I-3,medium,EMEA,2026-10-02T11:15:00Z,17\n\
         I-4,high,APAC,2026-10-03T23:59:00Z,120\n",
    )?;
    std::fs::write(
        ops.join("data/events/part-0.json"),
        "{\"event_id\": 1, \"kind\": \"deploy\", \"service\": \"checkout\", \"ok\": true}\n\
         {\"event_id\": 2, \"kind\": \"rollback\", \"service\": \"checkout\", \"ok\": false}\n",
    )?;
    std::fs::write(
        ops.join("data/events/part-1.json"),
        "{\"event_id\": 3, \"kind\": \"deploy\", \"service\": \"search\", \"ok\": true}\n",
    )?;
    write_region_totals(&ops.join("data/region_totals"))?;
    std::fs::write(ops.join("ops.odps.yaml"), OPS_ODPS)?;
    std::fs::write(ops.join("incidents.odcs.yaml"), INCIDENTS_ODCS)?;
    std::fs::write(ops.join("events.odcs.yaml"), EVENTS_ODCS)?;
    std::fs::write(ops.join("region_totals.odcs.yaml"), REGION_TOTALS_ODCS)?;
    Ok(())
}

/// The bypass corpus: statements a restricted principal (the fixture's
/// `ana`) runs to read what her policies hide, over the mesh at `mesh`.
/// Run against every path that answers SQL (the engine, Flight SQL, the
/// web catalog's `/sql`).
pub fn bypass_corpus(mesh: &str) -> Vec<String> {
    let q = [
        "SELECT * FROM sales.orders",
        "SELECT * FROM sales.orders WHERE region = 'AMER'",
        "SELECT order_id FROM sales.orders WHERE region <> 'EMEA'",
        "SELECT (SELECT max(order_id) FROM sales.orders WHERE region = 'APAC')",
        "WITH o AS (SELECT * FROM sales.orders) SELECT * FROM o WHERE region = 'AMER'",
        "SELECT order_id FROM sales.orders UNION SELECT customer_id FROM customers.profiles",
        "SELECT order_id, lag(email) OVER (ORDER BY order_id), first_value(customer_id) OVER () FROM sales.orders",
        "SELECT DISTINCT email FROM sales.orders",
        "SELECT DISTINCT customer_id, full_name FROM customers.profiles",
        "SELECT o.email, c.email, c.full_name FROM sales.orders o JOIN customers.profiles c ON o.customer_id = c.customer_id",
        "SELECT * FROM sales.orders WHERE customer_id = 'C00001'",
        // Three inputs named in a poor order: with joins ordered by
        // estimate, the tree is taken apart and rebuilt around the barriers.
        "SELECT c.email, c.full_name, o.email, o2.region FROM customers.profiles c JOIN sales.orders o ON o.customer_id = c.customer_id JOIN sales.orders o2 ON o2.order_id = o.order_id WHERE o2.order_id = 'O00001'",
        "SELECT c.email, o.email FROM customers.profiles c, sales.orders o, sales.orders o2 WHERE o.customer_id = c.customer_id AND o2.order_id = o.order_id AND o2.email LIKE '%@%' AND o2.region = 'AMER'",
        "SELECT * FROM customers.profiles c JOIN sales.orders o ON substr(o.email, 1, 1) = substr(c.email, 1, 1) LIMIT 50",
        "SELECT * FROM information_schema.columns",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM information_schema.views",
        "EXPLAIN SELECT * FROM sales.orders WHERE region = 'AMER'",
        "EXPLAIN ANALYZE SELECT * FROM sales.orders",
        "EXPLAIN VERBOSE SELECT * FROM sales.orders",
        "SELECT CAST(email AS INT) FROM sales.orders",
        "SELECT * FROM sales.orders WHERE CAST(customer_id AS INT) = 1",
        "SELECT * FROM sales.orders WHERE 1 / (CASE WHEN region = 'AMER' THEN 0 ELSE 1 END) = 1",
        "SELECT * FROM sales.orders WHERE CAST(CASE WHEN region <> 'EMEA' THEN order_id ELSE '1' END AS INT) = 1",
        "CREATE VIEW v AS SELECT * FROM sales.orders",
        &format!(
            "CREATE EXTERNAL TABLE raw_orders STORED AS PARQUET LOCATION '{mesh}/sales/data/orders/'"
        ),
        &format!(
            "CREATE EXTERNAL TABLE raw_profiles STORED AS PARQUET LOCATION '{mesh}/customers/data/profiles/'"
        ),
        "COPY (SELECT * FROM sales.orders) TO '/tmp/meshq-bypass.csv'",
        &format!("SELECT * FROM read_parquet('{mesh}/customers/data/profiles/part-00000.parquet')"),
        &format!("SELECT * FROM '{mesh}/customers/data/profiles/part-00000.parquet'"),
        "SET datafusion.explain.show_statistics = true",
        "SELECT min(customer_id), max(customer_id), min(email), max(email) FROM sales.orders",
        "SELECT min(order_id), max(order_id), count(*) FROM sales.orders",
        "SELECT * FROM payments.transactions",
        "SELECT * FROM mesh.payments.transactions",
        "SELECT order_id FROM sales.orders o WHERE EXISTS (SELECT 1 FROM payments.transactions p WHERE p.order_id = o.order_id)",
        "SELECT email FROM sales.orders WHERE email LIKE 'a%@example.com'",
        "SELECT email, count(*) FROM sales.orders GROUP BY 1",
        "SELECT order_id FROM sales.orders ORDER BY email LIMIT 5",
        "SELECT regexp_replace(email, 'x', 'y'), upper(full_name) FROM customers.profiles",
        "SELECT substr(full_name, 1, 10), phone, arrow_cast(phone, 'Binary') FROM customers.profiles",
        "SELECT array_agg(email), string_agg(customer_id, ',') FROM sales.orders",
        "SELECT * FROM customers.profiles WHERE region = 'APAC'",
        "PREPARE p(VARCHAR) AS SELECT * FROM sales.orders WHERE region = $1",
        "DESCRIBE sales.orders",
        "SHOW TABLES",
        "SHOW COLUMNS FROM sales.orders",
        "SELECT * FROM (VALUES (1)) v JOIN sales.orders o ON true WHERE o.region = 'AMER'",
        "WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r, sales.orders o WHERE o.region = 'APAC'",
        "SELECT * FROM generate_series(1, 3) g, sales.orders o WHERE o.region = 'APAC'",
        "INSERT INTO sales.orders SELECT * FROM sales.orders",
        "DROP TABLE sales.orders",
        "CREATE TABLE copy AS SELECT * FROM sales.orders",
        "SELECT * FROM sales.orders o FULL JOIN customers.profiles c ON o.customer_id = c.customer_id WHERE c.region = 'AMER' OR o.region = 'AMER'",
        "SELECT * FROM information_schema.df_settings",
        // The metadata tables, alone and joined with the data.
        "SELECT * FROM meta.products",
        "SELECT * FROM meta.tables",
        "SELECT * FROM meta.columns",
        "SELECT * FROM meta.my_access",
        "SELECT * FROM meta.whoami",
        "SELECT * FROM meta.lineage",
        "SELECT * FROM meta.quality",
        "SELECT q.rule, q.measured, o.email FROM meta.quality q JOIN sales.orders o ON q.measured IS NOT NULL OR o.region = 'AMER'",
        "SELECT t.table_name, o.* FROM meta.tables t JOIN sales.orders o ON o.region <> 'EMEA' OR t.readable",
        "SELECT c.column_name, o.email FROM meta.columns c, sales.orders o WHERE c.masked AND o.region = 'AMER'",
        "SELECT * FROM payments.transactions p JOIN meta.my_access a ON a.table_name = 'transactions'",
    ];
    q.into_iter().map(str::to_string).collect()
}

/// Adds the products `meshq import` makes of `tests/import/served/` to the
/// mesh at `dir` (a data-mesh manifest over local Parquet, a DCS contract
/// over a local CSV file), with their data.
pub fn add_imported_products(dir: &Path) -> Result<()> {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use meshq_cli::import::{Source, import};
    let served = Path::new(env!("CARGO_MANIFEST_DIR")).join("import/served");
    for (source, file) in [
        (Source::DatameshV1, "accounts.datamesh.yaml"),
        (Source::Dcs, "tickets.dcs.yaml"),
    ] {
        for r in import(source, &[served.join(file)], dir, None, false) {
            if let Some(e) = r.error {
                anyhow::bail!("importing {file}: {e}");
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::Int64, false),
        Field::new("contact_email", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("tier", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec![
                "ada@acme.example",
                "bo@beta.example",
                "cy@corp.example",
                "di@delta.example",
            ])),
            Arc::new(StringArray::from(vec!["EMEA", "AMER", "APAC", "EMEA"])),
            Arc::new(StringArray::from(vec!["gold", "silver", "gold", "bronze"])),
        ],
    )?;
    let accounts = dir.join("crm/data/accounts");
    std::fs::create_dir_all(&accounts)?;
    let file = std::fs::File::create(accounts.join("part-0.parquet"))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    std::fs::create_dir_all(dir.join("support/data"))?;
    std::fs::write(
        dir.join("support/data/tickets.csv"),
        concat!(
            "ticket_id,account_id,opened_by,severity\n",
            "10,1,ada@acme.example,high\n",
            "11,1,ada@acme.example,low\n",
            "12,3,cy@corp.example,high\n",
        ),
    )?;
    Ok(())
}

/// Adds `tests/slt/mesh/checks/` to the mesh at `dir`: products defined by
/// SQL that meshq must refuse by name (two that read each other, one whose
/// contract names a column its SQL lacks), run as `svc-checks`.
pub fn add_refused_sql_products(dir: &Path) -> Result<()> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt/mesh/checks");
    let to = dir.join("checks");
    std::fs::create_dir_all(&to)?;
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    let platform = dir.join("meshq.yaml");
    let mut yaml = std::fs::read_to_string(&platform)?;
    yaml.push_str(
        "  - { name: svc-checks, roles: [analyst], runs: [urn:dataproduct:checks:loop_a, urn:dataproduct:checks:loop_b, urn:dataproduct:checks:drifted] }\n",
    );
    std::fs::write(&platform, yaml)?;
    Ok(())
}

/// Parquet in Hive-style partitions by region (`region=EMEA/…`), so listing
/// tables' partition pruning is covered too: two days per region.
fn write_region_totals(dir: &Path) -> Result<()> {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("day", DataType::Utf8, false),
        Field::new("amount", DataType::Int64, false),
    ]));
    for (region, base) in [("EMEA", 100), ("AMER", 200), ("APAC", 300)] {
        let part = dir.join(format!("region={region}"));
        std::fs::create_dir_all(&part)?;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["2026-10-01", "2026-10-02"])),
                Arc::new(Int64Array::from(vec![base, base + 1])),
            ],
        )?;
        let file = std::fs::File::create(part.join("part-0.parquet"))?;
        let mut w = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None)?;
        w.write(&batch)?;
        w.close()?;
    }
    Ok(())
}

const OPS_ODPS: &str = r#"apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:ops:operations
name: operations
version: 1.0.0
status: active
domain: ops
outputPorts:
  - { name: incidents, type: tables, version: 1.0.0, contractId: urn:datacontract:ops:incidents }
  - { name: events, type: tables, version: 1.0.0, contractId: urn:datacontract:ops:events }
  - { name: region_totals, type: tables, version: 1.0.0, contractId: urn:datacontract:ops:region-totals }
"#;

const INCIDENTS_ODCS: &str = r##"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:ops:incidents
version: 1.0.0
status: active
servers:
  - { server: local, type: local, format: csv, path: ./data/incidents.csv }
schema:
  - name: incidents
    description: Production incidents. The file also has opened_at, which the contract does not publish.
    # One mask of each remaining kind; pii-reader sees raw values.
    properties:
      - name: incident_id
        logicalType: string
        primaryKey: true
        description: Incident id.
        customProperties: [ { property: mask, value: { kind: regexReplace, pattern: "[0-9]+", replacement: "#", exceptRoles: [pii-reader] } } ]
      - name: severity
        logicalType: string
        description: "low, medium or high."
        customProperties: [ { property: mask, value: { kind: constant, value: hidden, exceptRoles: [pii-reader] } } ]
      - name: region
        logicalType: string
        description: Affected region.
        customProperties: [ { property: mask, value: { kind: nullify, exceptRoles: [pii-reader] } } ]
      - name: minutes_to_resolve
        logicalType: integer
        physicalType: BIGINT
        description: Time to resolve.
        customProperties: [ { property: mask, value: { kind: round, digits: -1, exceptRoles: [pii-reader] } } ]
"##;

const REGION_TOTALS_ODCS: &str = r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:ops:region-totals
version: 1.0.0
status: active
servers:
  - { server: local, type: local, format: parquet, path: ./data/region_totals/ }
schema:
  - name: region_totals
    description: Daily totals, in Parquet partitioned by region.
    customProperties:
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: day, logicalType: string, description: Day. }
      - { name: amount, logicalType: integer, physicalType: BIGINT, description: Total. }
      - { name: region, logicalType: string, partitioned: true, description: "Region, the partition column." }
"#;

const EVENTS_ODCS: &str = r#"apiVersion: v3.0.2
kind: DataContract
id: urn:datacontract:ops:events
version: 1.0.0
status: active
servers:
  - { server: local, type: local, format: json, path: ./data/events/, delimiter: new_line }
schema:
  - name: events
    properties:
      - { name: event_id, logicalType: integer, description: Event id. }
      - { name: kind, logicalType: string, description: deploy or rollback. }
      - { name: service, logicalType: string, description: Service name. }
      - { name: ok, logicalType: boolean, description: Whether it succeeded. }
"#;
