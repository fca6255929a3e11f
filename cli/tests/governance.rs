//! Governance as code, end to end: `meshq check` on every format of the
//! demo (Delta, Iceberg, Parquet) against the same figures queried through
//! the shell, the Rego policies of `meshq validate`, and `meshq diff`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{mesh, meshq, stderr, stdout};

/// A copy of the demo mesh to change.
fn demo_copy() -> (tempfile::TempDir, PathBuf) {
    super::ops::copy_mesh()
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} lacks {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn check_json(mesh: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let out = meshq()
        .args(["check", "--format", "json", "--mesh"])
        .arg(mesh)
        .args(extra)
        .output()
        .unwrap();
    let doc = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", stdout(&out), stderr(&out));
    });
    (out.status.code(), doc)
}

fn result<'a>(doc: &'a Value, table: &str, rule: &str) -> &'a Value {
    doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .and_then(|t| {
            t["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["rule"] == rule)
        })
        .unwrap_or_else(|| panic!("no {table} {rule} in {doc:#}"))
}

/// One number from the shell, as `pat` (who sees every row unmasked).
fn scalar(sql: &str) -> f64 {
    let out = meshq()
        .args(["shell", "--as", "pat", "--format", "csv", "--mesh"])
        .arg(mesh())
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn check_measures_delta_iceberg_and_parquet_tables_as_queries_count_them() {
    let (code, doc) = check_json(&mesh(), &[]);
    assert_eq!(code, Some(1), "refunds_are_rare fails by design: {doc:#}");
    // (table, rule, the same figure by a governed query of an unrestricted reader)
    let cases = [
        (
            "sales.orders", // Delta
            "guest_checkouts",
            "SELECT 100.0 * count(*) FILTER (WHERE email IS NULL) / count(*) FROM sales.orders",
        ),
        (
            "sales.orders",
            "orders_not_empty",
            "SELECT count(*) FROM sales.orders",
        ),
        (
            "logistics.shipments", // Iceberg
            "carrier.invalidValues",
            "SELECT 100.0 * count(*) FILTER (WHERE carrier NOT IN ('DHL', 'FedEx', 'PostNL', 'UPS', 'Yamato')) / count(*) FROM logistics.shipments",
        ),
        (
            "payments.transactions", // Parquet
            "refunds_are_rare",
            "SELECT 100.0 * count(*) FILTER (WHERE status = 'refunded') / count(*) FROM payments.transactions",
        ),
        (
            "payments.transactions",
            "card_number.missingValues",
            "SELECT 100.0 * count(*) FILTER (WHERE card_number IS NULL OR card_number = '') / count(*) FROM payments.transactions",
        ),
    ];
    for (table, rule, sql) in cases {
        let r = result(&doc, table, rule);
        let measured = r["measured"].as_f64().unwrap();
        let expected = scalar(sql);
        assert!(
            (measured - expected).abs() < 1e-9,
            "{table} {rule}: measured {measured}, query says {expected}"
        );
    }
    assert_eq!(
        result(&doc, "payments.transactions", "refunds_are_rare")["status"],
        "failed"
    );
    assert_eq!(
        result(&doc, "payments.transactions", "reconciled_nightly")["status"],
        "skipped"
    );
    assert_eq!(doc["summary"]["failed"], 1);
    // Selecting tables: only the ones asked for, and no failing rule there.
    let (code, doc) = check_json(
        &mesh(),
        &["--table", "sales.orders", "--product", "shipments"],
    );
    assert_eq!(code, Some(0), "{doc:#}");
    let tables: Vec<_> = doc["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tables, ["logistics.shipments", "sales.orders"]);
}

#[test]
fn a_broken_rule_errors_alone_and_names_why() {
    let (_dir, mesh) = demo_copy();
    let contract = mesh.join("sales/orders.odcs.yaml");
    edit(
        &contract,
        "query: \"SELECT count(*) FROM {object} WHERE {property} < 0\"",
        "query: \"SELECT count(*) FROM {object} WHERE no_such_column < 0\"",
    );
    edit(
        &contract,
        "metric: rowCount, mustBeGreaterThan: 0",
        "metric: rowCount, mustBeGreaterThan: 0, mustBeLessThan: 5",
    );
    let (code, doc) = check_json(&mesh, &["--table", "sales.orders"]);
    assert_eq!(code, Some(1));
    let bad = result(&doc, "sales.orders", "no_negative_totals");
    assert_eq!(bad["status"], "error");
    assert!(
        bad["detail"].as_str().unwrap().contains("no_such_column"),
        "{bad}"
    );
    let two = result(&doc, "sales.orders", "orders_not_empty");
    assert_eq!(two["status"], "error");
    assert!(
        two["detail"]
            .as_str()
            .unwrap()
            .contains("more than one operator")
    );
    // The other rules of the table still ran.
    assert_eq!(
        result(&doc, "sales.orders", "region.invalidValues")["status"],
        "passed"
    );
    // validate warns about the rule declared wrongly, naming file and rule.
    let out = meshq()
        .args(["validate", "--mesh"])
        .arg(&mesh)
        .output()
        .unwrap();
    assert!(
        stdout(&out).contains("quality rule `orders_not_empty`: more than one operator"),
        "{}",
        stdout(&out)
    );
}

fn validate(mesh: &Path) -> (Option<i32>, String) {
    let out = meshq()
        .args(["validate", "--mesh"])
        .arg(mesh)
        .output()
        .unwrap();
    (out.status.code(), stdout(&out))
}

#[test]
fn rego_policies_deny_and_warn_per_product() {
    let (_dir, mesh) = demo_copy();
    // The demo passes all three policies (one of them in the v0 syntax).
    assert_eq!(
        validate(&mesh),
        (
            Some(0),
            "6 table(s) served; 0 error(s), 0 warning(s)\n".into()
        )
    );

    // No owner team; availability below 99 %; a pii column with no mask
    // (the customers product's phone loses its own mask and its pii tag
    // stays, but the global policy matches classification, so reclassify it).
    edit(
        &mesh.join("logistics/shipments.odps.yaml"),
        "team: { name: logistics-data, members: [ { username: lee@example.com, role: owner } ] }\n",
        "",
    );
    edit(
        &mesh.join("payments/transactions.odcs.yaml"),
        "{ property: availability, value: 99.9, unit: percent }",
        "{ property: availability, value: 98.5, unit: percent }",
    );
    edit(
        &mesh.join("customers/profiles.odcs.yaml"),
        "slaProperties:\n  - { property: availability, value: 99.5, unit: percent }\n",
        "",
    );
    edit(
        &mesh.join("governance/pii.policy.yaml"),
        "match: { classification: [pii] }",
        "match: { classification: [secret] }",
    );
    let (code, text) = validate(&mesh);
    assert_eq!(code, Some(2), "{text}");
    for expected in [
        "logistics/shipments.odps.yaml\n",
        "error: governance/owner.rego (deny): product urn:dataproduct:logistics:shipments has no owner team (ODPS team.name)",
        "payments/transactions.odps.yaml\n",
        "error: governance/availability.rego (deny): contract urn:datacontract:payments:transactions promises 98.5 % availability; the mesh requires at least 99 %",
        "warning: governance/availability.rego (warn): contract urn:datacontract:customers:profiles declares no availability SLA",
        // Columns with their own mask still pass; the others are reported.
        "error: governance/pii_masked.rego (deny): sales.orders.customer_id is classified pii but no mask applies to it",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(
        !text.contains("sales.orders.email is classified pii"),
        "{text}"
    );
    // Hand-counted: customer_id in orders, payments and profiles, and
    // profiles.email (full_name and phone keep their own masks).
    assert_eq!(
        text.matches("is classified pii but no mask applies")
            .count(),
        4,
        "{text}"
    );
}

#[test]
fn a_rego_file_that_does_not_parse_names_its_line() {
    let (_dir, mesh) = demo_copy();
    std::fs::write(
        mesh.join("governance/broken.rego"),
        "package broken\n\ndeny contains msg if {\n  msg := \"x\" +\n}\n",
    )
    .unwrap();
    let (code, text) = validate(&mesh);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("governance/broken.rego\n  error: line 4: Rego policy does not parse"),
        "{text}"
    );
    // The other policies still ran: no error beyond the broken file.
    assert!(text.contains("1 error(s)"), "{text}");
}

fn diff(old: &Path, new: &Path, json: bool) -> (Option<i32>, String) {
    let mut c = meshq();
    c.arg("diff").arg(old).arg(new);
    if json {
        c.args(["--format", "json"]);
    }
    let out = c.output().unwrap();
    (out.status.code(), stdout(&out))
}

#[test]
fn diff_classifies_changes_and_needs_a_major_bump_for_breaking_ones() {
    let (_dir, new) = demo_copy();
    assert_eq!(
        diff(&mesh(), &new, false),
        (
            Some(0),
            "0 breaking (0 without a major version bump), 0 policy-relevant, 0 compatible change(s)\n"
                .into()
        )
    );
    let orders = new.join("sales/orders.odcs.yaml");
    // Breaking: a column removed, a type narrowed.
    edit(
        &orders,
        "      - { name: order_date, logicalType: date, physicalType: DATE, required: true, partitioned: true, description: Day of created_at; the table's partition column. }\n",
        "",
    );
    edit(
        &orders,
        "physicalType: INT, required: true",
        "physicalType: SMALLINT, required: true",
    );
    // Policy-relevant: read roles widened, the email mask removed, the row
    // filter changed.
    edit(&orders, "value: [analyst]", "value: [analyst, intern]");
    edit(
        &orders,
        "          - { property: mask, value: { kind: partial, showFirst: 1, padding: \"***@***\", showLast: 4, exceptRoles: [pii-reader] } }\n",
        "",
    );
    edit(
        &orders,
        "exceptRoles: [global-analyst] } ]",
        "exceptRoles: [global-analyst, intern] } ]",
    );
    // Compatible: a widened decimal, a new column, a description.
    edit(&orders, "\"DECIMAL(12,2)\"", "\"DECIMAL(14,2)\"");
    edit(
        &orders,
        "    properties:\n",
        "    properties:\n      - { name: channel, logicalType: string, physicalType: STRING, description: Web or app. }\n",
    );
    let (code, json) = diff(&mesh(), &new, true);
    assert_eq!(code, Some(1), "{json}");
    let doc: Value = serde_json::from_str(&json).unwrap();
    let changes: Vec<(String, String, bool)> = doc["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["impact"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
                c["error"].as_bool().unwrap(),
            )
        })
        .collect();
    let has = |impact: &str, msg: &str, error: bool| {
        assert!(
            changes
                .iter()
                .any(|(i, m, e)| i == impact && m.contains(msg) && *e == error),
            "no {impact} {msg:?} (error {error}) in {changes:#?}"
        );
    };
    has("breaking", "column `order_date` removed", true);
    has(
        "breaking",
        "column `item_count`: physicalType INT → SMALLINT",
        true,
    );
    has("policy", "readRoles widened by [\"intern\"]", false);
    has("policy", "column `email`: mask `partial` removed", false);
    has(
        "policy",
        "row filter `own_region`: exceptRoles widened by [\"intern\"]",
        false,
    );
    has(
        "compatible",
        "column `total_amount`: physicalType DECIMAL(12,2) → DECIMAL(14,2)",
        false,
    );
    has("compatible", "column `channel` added", false);
    assert_eq!(doc["errors"], 2);

    // With a major version bump the breaking changes are allowed.
    edit(
        &orders,
        "version: 1.0.0\nstatus: active",
        "version: 2.0.0\nstatus: active",
    );
    let (code, text) = diff(&mesh(), &new, false);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("2 breaking (0 without a major version bump)"),
        "{text}"
    );
    assert!(text.starts_with("urn:dataproduct:sales:orders\n"), "{text}");
}

#[test]
fn check_reports_junit_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quality.xml");
    let out = meshq()
        .args(["check", "--format", "junit", "--mesh"])
        .arg(mesh())
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let xml = std::fs::read_to_string(&file).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut suites, mut cases, mut failures) = (0, 0, Vec::new());
    let mut current = String::new();
    loop {
        match reader.read_event().unwrap() {
            quick_xml::events::Event::Eof => break,
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let attr = |name: &str| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == name.as_bytes())
                        .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
                };
                match e.name().as_ref() {
                    b"testsuite" => suites += 1,
                    b"testcase" => {
                        cases += 1;
                        current = attr("name").unwrap();
                    }
                    b"failure" => failures.push((current.clone(), attr("message").unwrap())),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    assert_eq!(suites, 6);
    assert!(cases > 40, "{cases}");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].0, "refunds_are_rare");
    // The raw attribute: `<` escaped.
    assert!(
        failures[0]
            .1
            .starts_with("measured 12.31, expected &lt; 10"),
        "{failures:?}"
    );
}
