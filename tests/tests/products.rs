//! Products defined by SQL: a Customer 360 aggregate over the fixture's
//! profiles, orders and payments, evaluated as its team's service
//! principal (no PII reader), served under its own contract to callers
//! who may not read its inputs; a consumer-aligned product over it; and
//! the load-time checks (cycles, drift, a missing principal).

use std::path::Path;

// The Customer 360 statement is the demo's: every customer's order count,
// lifetime value from settled payments, and segment.
use meshq_cli::demo::PROFILE_360_SQL;
use meshq_engine::Engine;

use crate::common::{all_problems, query};

fn product(domain: &str, name: &str, run_as: &str, inputs: &[&str]) -> String {
    let inputs: String = inputs
        .iter()
        .map(|c| {
            format!(
                "  - {{ name: {}, version: 1.0.0, contractId: {c} }}\n",
                c.rsplit(':').next().unwrap()
            )
        })
        .collect();
    format!(
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:{domain}:{name}\nname: {name}\nversion: 1.0.0\n\
         status: active\ndomain: {domain}\n\
         customProperties:\n  - {{ property: runAs, value: {run_as} }}\n\
         inputPorts:\n{inputs}\
         outputPorts:\n  - {{ name: {name}, type: tables, version: 1.0.0, contractId: urn:datacontract:{domain}:{name} }}\n"
    )
}

fn contract(domain: &str, name: &str, server: &str, table: &str) -> String {
    format!(
        "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:{domain}:{name}\nname: {name}\nversion: 1.0.0\nstatus: active\ndomain: {domain}\n\
         servers:\n  - {server}\n\
         schema:\n{table}"
    )
}

/// The fixture mesh at `dir` with `customer360.profile_360` (run as
/// `svc-c360`: analyst and global analyst, no PII) readable by the
/// `marketing` role, each marketer seeing their region; and
/// `marketing.segments` over it (run as `svc-marketing`).
fn add_products(dir: &Path) {
    let platform = dir.join("meshq.yaml");
    let mut yaml = std::fs::read_to_string(&platform).unwrap();
    yaml.push_str(
        "  - { name: svc-c360, roles: [analyst, global-analyst], runs: [urn:dataproduct:customer360:profile_360, urn:dataproduct:ops:drifted, urn:dataproduct:ops:big_regions] }\n\
         \x20 - { name: svc-stranger, roles: [admin] }\n\
         \x20 - { name: mia, roles: [marketing], attributes: { region: EMEA } }\n\
         \x20 - { name: max, roles: [marketing, marketing-lead] }\n",
    );
    std::fs::write(&platform, yaml).unwrap();
    let c360 = dir.join("customer360");
    std::fs::create_dir_all(&c360).unwrap();
    std::fs::write(c360.join("profile_360.sql"), PROFILE_360_SQL).unwrap();
    std::fs::write(
        c360.join("profile_360.odps.yaml"),
        product(
            "customer360",
            "profile_360",
            "svc-c360",
            &[
                "urn:datacontract:customers:profiles",
                "urn:datacontract:sales:orders",
                "urn:datacontract:payments:transactions",
            ],
        ),
    )
    .unwrap();
    std::fs::write(
        c360.join("profile_360.odcs.yaml"),
        contract(
            "customer360",
            "profile_360",
            "{ server: sql, type: custom, format: meshq-sql, path: ./profile_360.sql }",
            "  - name: profile_360\n    customProperties:\n\
             \x20     - { property: readRoles, value: [marketing] }\n\
             \x20     - property: rowFilters\n        value: [ { id: own_region, expression: \"region = principal_attr('region')\", exceptRoles: [global-analyst, marketing-lead] } ]\n\
             \x20   properties:\n\
             \x20     - { name: customer_id, logicalType: string, description: \"Pseudonymised by the inputs' PII policy for the team.\" }\n\
             \x20     - { name: region, logicalType: string }\n\
             \x20     - { name: tier, logicalType: string }\n\
             \x20     - { name: order_count, logicalType: integer }\n\
             \x20     - { name: lifetime_value, logicalType: number, physicalType: \"DECIMAL(22,2)\" }\n\
             \x20     - { name: segment, logicalType: string }\n",
        ),
    )
    .unwrap();
    let marketing = dir.join("marketing");
    std::fs::create_dir_all(&marketing).unwrap();
    std::fs::write(
        marketing.join("segments.odps.yaml"),
        product(
            "marketing",
            "segments",
            "svc-marketing",
            &["urn:datacontract:customer360:profile_360"],
        ),
    )
    .unwrap();
    std::fs::write(
        marketing.join("segments.odcs.yaml"),
        contract(
            "marketing",
            "segments",
            "{ server: sql, type: custom, format: meshq-sql, customProperties: [ { property: sql, value: \"SELECT segment, count(*) AS customers, sum(lifetime_value) AS value FROM customer360.profile_360 GROUP BY segment\" } ] }",
            "  - name: segments\n    customProperties:\n\
             \x20     - { property: readRoles, value: [marketing] }\n\
             \x20   properties:\n\
             \x20     - { name: segment, logicalType: string }\n\
             \x20     - { name: customers, logicalType: integer }\n\
             \x20     - { name: value, logicalType: number, physicalType: \"DECIMAL(32,2)\" }\n",
        ),
    )
    .unwrap();
}

async fn loaded() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    (dir, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_is_computed_as_its_team_and_served_under_its_own_contract() {
    let (_dir, engine) = loaded().await;
    let errors = crate::common::error_problems(&engine);
    assert!(errors.is_empty(), "{errors:#?}");

    // What the team's principal computes from the inputs it may read.
    let ordered = |sql: &str| format!("{sql} ORDER BY customer_id");
    let by_team = query(
        &engine,
        "svc-c360",
        &ordered(&format!("SELECT * FROM ({PROFILE_360_SQL}) AS c")),
    )
    .await
    .unwrap();
    assert!(
        !by_team.contains("| C0"),
        "the team sees hashed ids: {by_team}"
    );

    // max (marketing lead) may not read any input, and gets exactly
    // the team's rows.
    for input in [
        "customers.profiles",
        "sales.orders",
        "payments.transactions",
    ] {
        let e = query(&engine, "max", &format!("SELECT count(*) FROM {input}"))
            .await
            .unwrap_err();
        assert!(
            e.contains("PermissionDenied") || e.contains("may not read"),
            "{input}: {e}"
        );
    }
    let by_max = query(
        &engine,
        "max",
        &ordered("SELECT * FROM customer360.profile_360"),
    )
    .await
    .unwrap();
    assert_eq!(by_max, by_team);

    // mia (marketing, EMEA) gets the aggregate's own row filter.
    let by_mia = query(
        &engine,
        "mia",
        &ordered("SELECT * FROM customer360.profile_360"),
    )
    .await
    .unwrap();
    let emea = query(
        &engine,
        "svc-c360",
        &ordered(&format!(
            "SELECT * FROM ({PROFILE_360_SQL}) AS c WHERE region = 'EMEA'"
        )),
    )
    .await
    .unwrap();
    assert_eq!(by_mia, emea);
    assert!(
        by_mia.contains("EMEA") && !by_mia.contains("AMER"),
        "{by_mia}"
    );

    // pat may read every input, raw, but not the aggregate.
    let e = query(&engine, "pat", "SELECT * FROM customer360.profile_360")
        .await
        .unwrap_err();
    assert!(e.contains("customer360.profile_360"), "{e}");
    assert!(
        e.contains("PermissionDenied") || e.contains("may not read"),
        "{e}"
    );

    // EXPLAIN shows the definer's plan under DefinedExec, below the
    // aggregate's own barrier.
    let plan = query(
        &engine,
        "mia",
        "EXPLAIN SELECT * FROM customer360.profile_360 WHERE segment = 'premium'",
    )
    .await
    .unwrap();
    let barrier = plan.find("PolicyBarrierExec: table=customer360.profile_360");
    let defined = plan.find("DefinedExec: table=customer360.profile_360 run_as=svc-c360");
    assert!(
        matches!((barrier, defined), (Some(b), Some(d)) if b < d),
        "{plan}"
    );
    // A caller's predicate is applied to the aggregate's output.
    let premium = query(
        &engine,
        "max",
        "SELECT count(*) AS n FROM customer360.profile_360 WHERE segment = 'premium' AND order_count > 1",
    )
    .await
    .unwrap();
    let expected = query(
        &engine,
        "svc-c360",
        &format!("SELECT count(*) AS n FROM ({PROFILE_360_SQL}) AS c WHERE segment = 'premium' AND order_count > 1"),
    )
    .await
    .unwrap();
    assert_eq!(premium, expected);
}

/// Lineage comes from the statements: the aggregate's inputs and the
/// product over it, in `meta.lineage`; an input the SQL reads but the
/// product does not declare is shown too, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_follows_the_sql() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    // Declare only profiles: orders and payments come from the SQL.
    let odps = dir.path().join("customer360/profile_360.odps.yaml");
    let text = std::fs::read_to_string(&odps).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| {
            !l.contains("contractId: urn:datacontract:sales:orders")
                && !l.contains("contractId: urn:datacontract:payments:transactions")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&odps, kept).unwrap();
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let edges = query(
        &engine,
        "max",
        "SELECT from_product, to_product FROM meta.lineage \
         WHERE to_product IN ('urn:dataproduct:customer360:profile_360', 'urn:dataproduct:marketing:segments') \
         ORDER BY to_product, from_product",
    )
    .await
    .unwrap();
    for (from, to) in [
        ("customers:profiles", "customer360:profile_360"),
        ("sales:orders", "customer360:profile_360"),
        ("payments:transactions", "customer360:profile_360"),
        ("customer360:profile_360", "marketing:segments"),
    ] {
        assert!(
            edges.contains(&format!("| urn:dataproduct:{from} "))
                && edges.contains(&format!("urn:dataproduct:{to} ")),
            "{from} → {to}: {edges}"
        );
    }
    assert_eq!(
        edges.matches("customer360:profile_360 |").count(),
        3 + 1,
        "{edges}"
    );
    let warnings: Vec<String> = all_problems(&engine);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("its SQL reads `sales.orders`")
                && w.contains("inputPorts do not declare")),
        "{warnings:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_over_an_aggregate_nests() {
    let (_dir, engine) = loaded().await;
    let segments = query(
        &engine,
        "mia",
        "SELECT * FROM marketing.segments ORDER BY segment",
    )
    .await
    .unwrap();
    // Its principal is a global analyst: every region's customers.
    let expected = query(
        &engine,
        "max",
        "SELECT segment, count(*) AS customers, sum(lifetime_value) AS value FROM customer360.profile_360 GROUP BY segment ORDER BY segment",
    )
    .await
    .unwrap();
    assert_eq!(segments, expected);
    assert!(segments.contains("basic"), "{segments}");
}

/// The bypass queries an outsider would try against an aggregate: none
/// returns a raw customer id or email of its inputs, to a marketer who
/// may read the aggregate but none of its inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_leaks_nothing_of_its_inputs() {
    let (_dir, engine) = loaded().await;
    leaks_nothing(&engine).await;
}

/// The same corpus against the aggregate served from its materialised
/// Delta table (and `marketing.segments` computed over it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_materialised_aggregate_leaks_nothing_of_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    materialize_profile_360(dir.path(), "{ format: delta, location: ../build/p360 }");
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let outcome = outcome_of(&engine.refresh_accelerations().await);
    assert!(
        matches!(
            outcome,
            meshq_engine::acceleration::RefreshOutcome::Built { .. }
        ),
        "{outcome:?}"
    );
    leaks_nothing(&engine).await;
    let plan = query(
        &engine,
        "max",
        "EXPLAIN SELECT * FROM customer360.profile_360",
    )
    .await
    .unwrap();
    assert!(plan.contains("build/p360"), "{plan}");
}

async fn leaks_nothing(engine: &Engine) {
    let secrets: Vec<String> = {
        let raw = query(
            engine,
            "pat",
            "SELECT customer_id, email FROM customers.profiles",
        )
        .await
        .unwrap();
        raw.lines()
            .skip(3)
            .flat_map(|l| {
                l.split('|')
                    .map(|c| c.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|c| c.len() > 4)
            .collect()
    };
    assert!(secrets.len() > 50, "{}", secrets.len());
    let first = secrets[0].clone();
    let corpus = [
        "SELECT * FROM customer360.profile_360".to_string(),
        "SELECT * FROM customer360.profile_360 WHERE region = 'AMER'".to_string(),
        format!("SELECT * FROM customer360.profile_360 WHERE customer_id = '{first}'"),
        "SELECT customer_id FROM customer360.profile_360 WHERE customer_id LIKE 'C%'".to_string(),
        "SELECT max(customer_id), min(customer_id) FROM customer360.profile_360".to_string(),
        "WITH x AS (SELECT * FROM customer360.profile_360) SELECT * FROM x ORDER BY lifetime_value DESC".to_string(),
        "SELECT a.* FROM customer360.profile_360 a JOIN customers.profiles p ON a.customer_id = p.customer_id".to_string(),
        "SELECT * FROM sales.orders".to_string(),
        "EXPLAIN SELECT * FROM customer360.profile_360".to_string(),
        "EXPLAIN VERBOSE SELECT * FROM customer360.profile_360 WHERE segment = 'premium'".to_string(),
        "SELECT * FROM marketing.segments".to_string(),
        "SELECT * FROM meta.tables WHERE table_schema = 'customer360'".to_string(),
        "SELECT * FROM meta.columns WHERE table_schema = 'customer360'".to_string(),
        "SELECT * FROM information_schema.views".to_string(),
        "SHOW CREATE TABLE customer360.profile_360".to_string(),
        format!("SELECT count(*) FROM customer360.profile_360 WHERE starts_with(customer_id, '{}')", &first[..3]),
    ];
    let mut answered = 0;
    for who in ["mia", "max"] {
        for sql in &corpus {
            let out = match query(engine, who, sql).await {
                Ok(t) => {
                    answered += 1;
                    t
                }
                Err(e) => e,
            };
            if let Some(s) = secrets.iter().find(|s| out.contains(s.as_str())) {
                panic!("{who}: `{sql}` shows the raw value {s}:\n{out}");
            }
        }
    }
    assert!(answered >= 16, "only {answered} answered");
    // The detector finds what it looks for.
    let raw = query(
        engine,
        "pat",
        "SELECT customer_id FROM customers.profiles LIMIT 5",
    )
    .await
    .unwrap();
    assert!(secrets.iter().any(|s| raw.contains(s.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_drift_and_missing_principals_are_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    // customer360 now also reads marketing.segments: a cycle.
    std::fs::write(
        dir.path().join("customer360/profile_360.sql"),
        format!("{PROFILE_360_SQL} HAVING count(*) > (SELECT count(*) - count(*) FROM marketing.segments)"),
    )
    .unwrap();
    // A third product whose contract names a column its SQL lacks, run as
    // a principal nobody declared.
    let ops = dir.path().join("ops");
    std::fs::write(
        ops.join("drifted.odps.yaml"),
        product("ops", "drifted", "svc-c360", &[]),
    )
    .unwrap();
    std::fs::write(
        ops.join("drifted.odcs.yaml"),
        contract(
            "ops",
            "drifted",
            "{ server: sql, type: custom, format: meshq-sql, customProperties: [ { property: sql, value: \"SELECT region, count(*) AS n FROM sales.orders GROUP BY region\" } ] }",
            "  - name: drifted\n    customProperties: [ { property: readRoles, value: [analyst] } ]\n    properties:\n\
             \x20     - { name: region, logicalType: string }\n\
             \x20     - { name: orders, logicalType: integer }\n",
        ),
    )
    .unwrap();
    std::fs::write(
        ops.join("orphan.odps.yaml"),
        product("ops", "orphan", "nobody", &[]),
    )
    .unwrap();
    // Products that try to borrow rights meshq.yaml did not give them: a
    // person's (root can log in) and a service principal's that does not
    // run them.
    for (name, run_as) in [("borrowed", "root"), ("stranger", "svc-stranger")] {
        std::fs::write(
            ops.join(format!("{name}.odps.yaml")),
            product("ops", name, run_as, &[]),
        )
        .unwrap();
        std::fs::write(
            ops.join(format!("{name}.odcs.yaml")),
            contract(
                "ops",
                name,
                "{ server: sql, type: custom, format: meshq-sql, customProperties: [ { property: sql, value: \"SELECT email FROM customers.profiles\" } ] }",
                &format!("  - name: {name}\n    properties:\n      - {{ name: email, logicalType: string }}\n"),
            ),
        )
        .unwrap();
    }
    std::fs::write(
        ops.join("orphan.odcs.yaml"),
        contract(
            "ops",
            "orphan",
            "{ server: sql, type: custom, format: meshq-sql, customProperties: [ { property: sql, value: \"SELECT 1 AS one\" } ] }",
            "  - name: orphan\n    properties:\n      - { name: one, logicalType: integer }\n",
        ),
    )
    .unwrap();
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let errors = crate::common::error_problems(&engine);
    let find = |needle: &[&str]| {
        errors
            .iter()
            .find(|p| needle.iter().all(|n| p.contains(n)))
            .unwrap_or_else(|| panic!("{needle:?} in {errors:#?}"))
            .clone()
    };
    let cycle = find(&["customer360.profile_360", "cycle"]);
    assert!(
        cycle.contains("urn:dataproduct:marketing:segments")
            && cycle.contains("urn:dataproduct:customer360:profile_360"),
        "{cycle}"
    );
    find(&["marketing.segments", "cycle"]);
    find(&["ops.drifted", "`orders` is not in the SQL's output"]);
    find(&["ops.orphan", "runAs `nobody`"]);
    find(&["ops.borrowed", "runAs `root` can log in with a password"]);
    find(&[
        "ops.stranger",
        "does not let `svc-stranger` run this product",
    ]);
    for table in ["ops.borrowed", "ops.stranger"] {
        let e = query(&engine, "ana", &format!("SELECT * FROM {table}"))
            .await
            .unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
    }
    // Refused when read, with the reason; the rest of the mesh answers.
    let e = query(&engine, "max", "SELECT * FROM marketing.segments")
        .await
        .unwrap_err();
    assert!(e.contains("cycle"), "{e}");
    let e = query(&engine, "ana", "SELECT region FROM ops.drifted")
        .await
        .unwrap_err();
    assert!(e.contains("`orders`"), "{e}");
    query(&engine, "ana", "SELECT count(*) FROM sales.orders")
        .await
        .unwrap();
}

/// A product defined by SQL kept as a local Parquet copy: computed as the
/// team's principal (the scan of the product is always the definer's),
/// each caller's answers the same as from the SQL, and rebuilt when one
/// of its inputs changes (its version lists theirs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_can_be_kept_as_a_copy_rebuilt_when_an_input_changes() {
    use meshq_engine::acceleration::RefreshOutcome;
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    let direct = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let odps = dir.path().join("customer360/profile_360.odps.yaml");
    let text = std::fs::read_to_string(&odps).unwrap();
    let port = "contractId: urn:datacontract:customer360:profile_360 }";
    assert!(text.contains(port));
    let accelerate = |refresh: &str| {
        std::fs::write(
            &odps,
            text.replace(
                port,
                &format!("contractId: urn:datacontract:customer360:profile_360, customProperties: [ {{ property: acceleration, value: {{ engine: parquet, refresh: {refresh} }} }} ] }}"),
            ),
        )
        .unwrap();
    };
    accelerate("on-change");
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let built = |outcomes: &[(String, RefreshOutcome)]| {
        outcomes.iter().find_map(|(t, o)| match o {
            RefreshOutcome::Built { version, .. } if t == "customer360.profile_360" => {
                Some(version.clone())
            }
            _ => None,
        })
    };
    let first = built(&engine.refresh_accelerations().await).expect("a copy is built");
    assert!(
        first.starts_with("sql:svc-c360#")
            && first.contains(":customers.profiles@files:")
            && first.contains(",payments.transactions@files:")
            && first.contains(",sales.orders@delta:"),
        "{first}"
    );
    assert!(
        built(&engine.refresh_accelerations().await).is_none(),
        "nothing changed: the copy is current"
    );
    let sql = "SELECT * FROM customer360.profile_360 ORDER BY customer_id";
    for who in ["mia", "max"] {
        assert_eq!(
            query(&engine, who, sql).await.unwrap(),
            query(&direct, who, sql).await.unwrap(),
            "{who}"
        );
    }
    let plan = query(&engine, "max", &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    assert!(
        !plan.contains("DefinedExec"),
        "served from the copy: {plan}"
    );
    let listed = query(
        &engine,
        "max",
        "SELECT accelerated FROM meta.tables WHERE table_name = 'profile_360'",
    )
    .await
    .unwrap();
    assert!(listed.contains("true"), "{listed}");
    // A new payments file: the next refresh rebuilds, from the new input
    // version.
    let payments = dir.path().join("payments/data/transactions");
    let a_file = std::fs::read_dir(&payments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(&a_file, payments.join("2099-01-01.parquet")).unwrap();
    let second = built(&engine.refresh_accelerations().await).expect("rebuilt");
    assert_ne!(first, second);
    assert_eq!(
        query(&engine, "max", sql).await.unwrap(),
        query(&direct, "max", sql).await.unwrap(),
        "the copy follows the new payments"
    );
    // The platform withdraws the team principal's consent: after the
    // reload the product is refused, and its copy is not served.
    let platform = dir.path().join("meshq.yaml");
    let yaml = std::fs::read_to_string(&platform).unwrap();
    std::fs::write(
        &platform,
        yaml.replace(
            "runs: [urn:dataproduct:customer360:profile_360, ",
            "runs: [",
        ),
    )
    .unwrap();
    let reloaded = Engine::load_after(
        meshq_tests::fixture_engine_config(dir.path()),
        Some(&engine),
    )
    .await
    .unwrap();
    let e = query(&reloaded, "max", sql).await.unwrap_err();
    assert!(
        e.contains("does not let `svc-c360` run this product"),
        "{e}"
    );
}

/// A caller's predicate is never run inside the product's plan: here one
/// that fails on the values it reads (a cast of the region) would have
/// run on groups the product's HAVING suppresses, and its error would
/// have named them. It runs on the product's rows only (there are none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_predicate_runs_on_the_products_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    let ops = dir.path().join("ops");
    std::fs::write(
        ops.join("big_regions.odps.yaml"),
        product(
            "ops",
            "big_regions",
            "svc-c360",
            &["urn:datacontract:sales:orders"],
        ),
    )
    .unwrap();
    std::fs::write(
        ops.join("big_regions.odcs.yaml"),
        contract(
            "ops",
            "big_regions",
            "{ server: sql, type: custom, format: meshq-sql, customProperties: [ { property: sql, value: \"SELECT region, count(*) AS n FROM sales.orders GROUP BY region HAVING count(*) >= 1000000\" } ] }",
            "  - name: big_regions\n    customProperties: [ { property: readRoles, value: [marketing] } ]\n    properties:\n\
             \x20     - { name: region, logicalType: string }\n\
             \x20     - { name: n, logicalType: integer }\n",
        ),
    )
    .unwrap();
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(errors.is_empty(), "{errors:#?}");
    for sql in [
        "SELECT * FROM ops.big_regions WHERE CAST(region AS INT) = 1",
        "SELECT * FROM ops.big_regions WHERE CASE WHEN region > 'A' THEN CAST(region AS INT) ELSE 0 END = 1",
    ] {
        let out = query(&engine, "max", sql).await.unwrap();
        assert!(
            !out.contains("EMEA") && !out.contains("AMER") && !out.contains("APAC"),
            "{sql}: {out}"
        );
    }
    // EXPLAIN shows the product's node, not the plan inside it.
    let plan = query(&engine, "max", "EXPLAIN SELECT * FROM ops.big_regions")
        .await
        .unwrap();
    assert!(
        plan.contains("DefinedExec: table=ops.big_regions"),
        "{plan}"
    );
    assert!(!plan.contains("sales.orders"), "{plan}");
}

/// An input that cannot be opened makes the product unreadable, with the
/// input named as the cause; the other products are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_input_makes_the_product_unavailable_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    std::fs::remove_dir_all(dir.path().join("payments/data/transactions")).unwrap();
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(
        errors
            .iter()
            .any(|p| p.contains("customer360.profile_360") && p.contains("payments.transactions")),
        "{errors:#?}"
    );
    let e = query(
        &engine,
        "max",
        "SELECT count(*) FROM customer360.profile_360",
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("customer360.profile_360") && e.contains("payments.transactions"),
        "{e}"
    );
    query(&engine, "ana", "SELECT count(*) FROM sales.orders")
        .await
        .unwrap();
}

/// Writes `materialize: {value}` on the Customer 360 port.
fn materialize_profile_360(dir: &Path, value: &str) {
    let odps = dir.join("customer360/profile_360.odps.yaml");
    let text = std::fs::read_to_string(&odps).unwrap();
    let port = "contractId: urn:datacontract:customer360:profile_360 }";
    assert!(text.contains(port));
    std::fs::write(
        &odps,
        text.replace(
            port,
            &format!("contractId: urn:datacontract:customer360:profile_360, customProperties: [ {{ property: materialize, value: {value} }} ] }}"),
        ),
    )
    .unwrap();
}

fn outcome_of(
    outcomes: &[(String, meshq_engine::acceleration::RefreshOutcome)],
) -> meshq_engine::acceleration::RefreshOutcome {
    outcomes
        .iter()
        .find(|(t, _)| t == "customer360.profile_360")
        .map(|(_, o)| o.clone())
        .expect("profile_360 is materialised")
}

/// The commits of the Delta table at `dir`: (version, meshq's record).
async fn delta_commits(dir: &Path) -> Vec<(i64, serde_json::Value)> {
    use futures::StreamExt;
    let url = url::Url::from_directory_path(dir).unwrap();
    let table = deltalake::open_table(url).await.unwrap();
    let history: Vec<_> = table.history(None).collect().await;
    let mut out: Vec<_> = history
        .into_iter()
        .map(|c| c.unwrap())
        .map(|c| {
            (
                c.read_version.map_or(0, |v| v as i64 + 1),
                c.info.get("meshq").cloned().unwrap_or_default(),
            )
        })
        .collect();
    out.sort_by_key(|(v, _)| *v);
    out
}

/// A copy of a payments file: a new input version.
fn add_payments_file(dir: &Path, name: &str) {
    let payments = dir.join("payments/data/transactions");
    let a_file = std::fs::read_dir(&payments)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    std::fs::copy(&a_file, payments.join(name)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_is_materialised_as_delta_one_commit_per_refresh() {
    use meshq_engine::acceleration::RefreshOutcome;
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    let direct = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    materialize_profile_360(
        dir.path(),
        "{ format: delta, location: ../build/profile_360, refresh: on-change }",
    );
    let table_dir = dir.path().join("build/profile_360");
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert!(
        !all_problems(&engine)
            .iter()
            .any(|p| p.contains("materialize")),
        "{:?}",
        all_problems(&engine)
    );
    let first = outcome_of(&engine.refresh_accelerations().await);
    let RefreshOutcome::Built { version, .. } = first else {
        panic!("the first refresh builds the table: {first:?}");
    };
    // The team's own Delta table, written by meshq as the team: one commit
    // recording what it was built from.
    let commits = delta_commits(&table_dir).await;
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].1["version"], version.as_str());
    let from = commits[0].1["builtFrom"].to_string();
    for input in [
        "customers.profiles@files:",
        "payments.transactions@files:",
        "sales.orders@delta:",
    ] {
        assert!(from.contains(input), "{from}");
    }
    assert_eq!(
        outcome_of(&engine.refresh_accelerations().await),
        RefreshOutcome::Current
    );
    // Served from the table, with the product's own policies per caller.
    let sql = "SELECT * FROM customer360.profile_360 ORDER BY customer_id";
    for who in ["mia", "max"] {
        assert_eq!(
            query(&engine, who, sql).await.unwrap(),
            query(&direct, who, sql).await.unwrap(),
            "{who}"
        );
    }
    let plan = query(&engine, "max", &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    assert!(!plan.contains("DefinedExec"), "{plan}");
    assert!(plan.contains("build/profile_360"), "{plan}");
    let listed = query(
        &engine,
        "max",
        "SELECT accelerated, materialized_at, built_from, accelerated_at IS NOT NULL AS at FROM meta.tables WHERE table_name = 'profile_360'",
    )
    .await
    .unwrap();
    assert!(
        listed.contains("build/profile_360/")
            && listed.contains("sales.orders@delta:")
            && listed.contains("| true        |"),
        "{listed}"
    );
    // The folder is the product's: a table declared over it is refused, and
    // SQL cannot read it.
    let leak = dir.path().join("leak");
    std::fs::create_dir_all(&leak).unwrap();
    std::fs::write(
        leak.join("leak.odps.yaml"),
        product("leak", "copy", "nobody", &[]),
    )
    .unwrap();
    std::fs::write(
        leak.join("leak.odcs.yaml"),
        contract(
            "leak",
            "copy",
            "{ server: local, type: local, format: delta, path: ../build/profile_360 }",
            "  - name: copy\n    properties:\n      - { name: customer_id, logicalType: string }\n",
        ),
    )
    .unwrap();
    let with_leak = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert!(
        all_problems(&with_leak).iter().any(|p| p.contains(
            "table `leak.copy` (product `urn:dataproduct:leak:copy`): its data overlaps the folder where `customer360.profile_360` is materialised"
        )),
        "{:?}",
        all_problems(&with_leak)
    );
    let e = query(&with_leak, "root", "SELECT * FROM leak.copy")
        .await
        .unwrap_err();
    assert!(e.contains("leak.copy"), "{e}");
    std::fs::remove_dir_all(&leak).unwrap();

    // An input changes: one more commit, the answers follow.
    add_payments_file(dir.path(), "2099-01-01.parquet");
    let RefreshOutcome::Built {
        version: second, ..
    } = outcome_of(&engine.refresh_accelerations().await)
    else {
        panic!("an input changed: the table is rebuilt");
    };
    assert_ne!(version, second);
    assert_eq!(delta_commits(&table_dir).await.len(), 2);
    assert_eq!(
        query(&engine, "max", sql).await.unwrap(),
        query(&direct, "max", sql).await.unwrap(),
        "the table follows the new payments"
    );

    // A restart serves the last build without computing it again.
    let restarted = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert_eq!(
        outcome_of(&restarted.refresh_accelerations().await),
        RefreshOutcome::Found {
            version: second.clone()
        }
    );
    assert_eq!(delta_commits(&table_dir).await.len(), 2);
    let served = query(&restarted, "max", sql).await.unwrap();
    assert_eq!(served, query(&direct, "max", sql).await.unwrap());

    // A refresh that fails (an input file that is not Parquet) keeps the
    // last version served and reports why.
    std::fs::write(
        dir.path()
            .join("payments/data/transactions/2099-01-02.parquet"),
        b"not parquet",
    )
    .unwrap();
    let RefreshOutcome::Failed(why) = outcome_of(&restarted.refresh_accelerations().await) else {
        panic!("the refresh fails");
    };
    assert!(
        why.contains("cannot materialise `customer360.profile_360`"),
        "{why}"
    );
    assert_eq!(
        delta_commits(&table_dir).await.len(),
        2,
        "nothing committed"
    );
    assert_eq!(query(&restarted, "max", sql).await.unwrap(), served);
    let listed = query(
        &restarted,
        "max",
        "SELECT accelerated, acceleration_error FROM meta.tables WHERE table_name = 'profile_360'",
    )
    .await
    .unwrap();
    assert!(
        listed.contains("true") && listed.contains("cannot materialise"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_is_materialised_as_parquet_with_a_folder_per_build() {
    use meshq_engine::acceleration::RefreshOutcome;
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    let direct = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    // A folder outside the mesh, as a team's lake would be.
    let out = tempfile::tempdir().unwrap();
    let location = out.path().join("p360");
    materialize_profile_360(
        dir.path(),
        &format!(
            "{{ format: parquet, location: \"{}\" }}",
            location.display()
        ),
    );
    let builds = || {
        let mut b: Vec<String> = std::fs::read_dir(&location)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("build-"))
            .collect();
        b.sort();
        b
    };
    let manifest = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(location.join("_meshq_build.json")).unwrap()).unwrap()
    };
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert!(matches!(
        outcome_of(&engine.refresh_accelerations().await),
        RefreshOutcome::Built { .. }
    ));
    assert_eq!(builds().len(), 1);
    assert_eq!(manifest()["folder"], builds()[0].as_str());
    let sql = "SELECT * FROM customer360.profile_360 ORDER BY customer_id";
    for who in ["mia", "max"] {
        assert_eq!(
            query(&engine, who, sql).await.unwrap(),
            query(&direct, who, sql).await.unwrap(),
            "{who}"
        );
    }
    // Two more builds: the current one and the one before it are kept.
    for name in ["2099-01-01.parquet", "2099-01-02.parquet"] {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        add_payments_file(dir.path(), name);
        assert!(matches!(
            outcome_of(&engine.refresh_accelerations().await),
            RefreshOutcome::Built { .. }
        ));
        assert_eq!(builds().len(), 2, "{:?}", builds());
        assert_eq!(manifest()["folder"], builds()[1].as_str());
    }
    assert_eq!(
        query(&engine, "max", sql).await.unwrap(),
        query(&direct, "max", sql).await.unwrap()
    );
    let restarted = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    assert!(matches!(
        outcome_of(&restarted.refresh_accelerations().await),
        RefreshOutcome::Found { .. }
    ));
    assert_eq!(
        query(&restarted, "mia", sql).await.unwrap(),
        query(&direct, "mia", sql).await.unwrap()
    );
    // SQL's file areas may not overlap the materialisation.
    let platform = dir.path().join("meshq.yaml");
    let mut yaml = std::fs::read_to_string(&platform).unwrap();
    yaml.push_str(&format!(
        "files: {{ scratch: \"{}\" }}\n",
        out.path().display()
    ));
    std::fs::write(&platform, yaml).unwrap();
    let with_scratch = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let problems = all_problems(&with_scratch);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("scratch") && p.contains("p360") && p.contains("overlaps")),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialize_is_checked_when_the_mesh_loads() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    add_products(dir.path());
    materialize_profile_360(dir.path(), "{ format: csv, location: ../build/x }");
    // On a source table it means nothing.
    let odps = dir.path().join("sales/orders.odps.yaml");
    let text = std::fs::read_to_string(&odps).unwrap();
    let port = "customProperties: [ { property: server, value: local } ]";
    assert!(text.contains(port), "{text}");
    std::fs::write(
        &odps,
        text.replace(
            port,
            "customProperties: [ { property: server, value: local }, { property: materialize, value: { format: delta, location: ../build/orders } } ]",
        ),
    )
    .unwrap();
    let engine = Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let problems = all_problems(&engine);
    assert!(
        problems.iter().any(|p| p.contains("materialize format `csv` is not supported; use parquet or delta; the product is computed when it is read")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`materialize` is for products defined in SQL")),
        "{problems:?}"
    );
    // Both still served: the aggregate computed when read.
    assert!(
        query(
            &engine,
            "max",
            "SELECT count(*) FROM customer360.profile_360"
        )
        .await
        .is_ok()
    );
    assert!(engine.acceleration_of("customer360.profile_360").is_none());
}
