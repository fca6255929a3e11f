//! `meshq import`: the fixtures of both formats converted, what cannot be
//! converted reported by element, nothing overwritten or lost on bad
//! input, and an imported product served by meshq with its PII masked and
//! its converted rules run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::{meshq, stderr, stdout};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/import")
        .join(rel)
}

fn import(from: &str, files: &[&Path], out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = meshq();
    c.args(["import", "--from", from]);
    for f in files {
        c.arg(f);
    }
    c.arg("--out").arg(out).args(extra);
    c.output().unwrap()
}

fn yaml(path: &Path) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_manifest_becomes_a_product_with_a_contract_per_output_and_a_report() {
    let out = tempfile::tempdir().unwrap();
    let o = import(
        "datamesh-v1",
        &[&fixture("datamesh/customer_orders.yaml")],
        out.path(),
        &[],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let product = yaml(&out.path().join("sales/customer_orders.odps.yaml"));
    assert_eq!(product["id"], "urn:dataproduct:sales:customer_orders");
    assert_eq!(
        product["team"]["members"][0]["username"],
        "sales-data@example.com"
    );
    let inputs: Vec<&str> = product["inputPorts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["contractId"].as_str().unwrap())
        .collect();
    assert_eq!(
        inputs,
        [
            "urn:datacontract:crm:customers",
            "urn:datacontract:webshop:orders-raw"
        ]
    );
    let orders = yaml(&out.path().join("sales/orders.odcs.yaml"));
    assert_eq!(orders["servers"][0]["type"], "azure");
    assert_eq!(
        orders["servers"][0]["location"],
        "abfss://lake@acmedata.dfs.core.windows.net/sales/orders"
    );
    let props = orders["schema"][0]["properties"].as_sequence().unwrap();
    let prop = |n: &str| props.iter().find(|p| p["name"] == n).unwrap();
    // `pii: true`, and a column of `access_control.pii_columns`, are
    // classified pii; the original classification stays as a tag.
    assert_eq!(prop("customer_id")["classification"], "pii");
    assert_eq!(prop("email")["classification"], "pii");
    assert!(
        prop("email")["tags"]
            .as_sequence()
            .unwrap()
            .contains(&"confidential".into())
    );
    assert_eq!(prop("order_id")["primaryKey"], true);
    assert_eq!(prop("order_id")["required"], true);
    assert_eq!(prop("total_amount")["physicalType"], "decimal(12,2)");
    // Expectations as ODCS rules: `mostly: 0.99` allows 1 % invalid.
    let status_rules = prop("status")["quality"].as_sequence().unwrap();
    assert!(status_rules.iter().any(|r| r["metric"] == "invalidValues"
        && r["mustBeLessOrEqualTo"] == 1
        && r["unit"] == "percent"));
    let table_rules = orders["schema"][0]["quality"].as_sequence().unwrap();
    assert!(
        table_rules
            .iter()
            .any(|r| r["metric"] == "rowCount" && r["mustBeGreaterOrEqualTo"] == 1000)
    );
    assert!(table_rules.iter().any(|r| {
        r["type"] == "text"
            && r["description"]
                .as_str()
                .unwrap()
                .contains("expect_column_pair_values_a_to_be_greater_than_b")
    }));
    // The range check on quantity went to the output that has the column.
    let lines = yaml(&out.path().join("sales/order_lines.odcs.yaml"));
    assert!(
        lines["schema"][0]["quality"][0]["query"]
            .as_str()
            .unwrap()
            .contains("\"quantity\" < 1 OR \"quantity\" > 1000")
    );
    assert_eq!(
        orders["schema"][0]["customProperties"][0]["value"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[analyst, sales]").unwrap()
    );
    // The report names everything not converted, by element.
    let report = std::fs::read_to_string(out.path().join("import-report.md")).unwrap();
    for line in [
        "`spec.access_control.retention_days`: `retention_days` has no counterpart",
        "`spec.sla.error_budget`: service level `error_budget` has no ODCS counterpart",
        "`spec.lineage.downstream`: consumers declare their inputs",
        "`spec.quality.expectations[5]`: expectation `expect_column_pair_values_a_to_be_greater_than_b` has no ODCS equivalent",
        "`spec.outputs[0].schema.fields[7].type`: type `geography` has no ODCS logical type",
    ] {
        assert!(report.contains(line), "{line}\n{report}");
    }
    let summary = stdout(&o);
    assert!(
        summary.contains("3 not converted, 1 kept as text"),
        "{summary}"
    );
}

#[test]
fn bad_sources_are_named_and_nothing_is_overwritten_or_lost() {
    let out = tempfile::tempdir().unwrap();
    let first = import("dcs", &[&fixture("dcs/orders.dcs.yaml")], out.path(), &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let contract = out.path().join("checkout/orders_latest.odcs.yaml");
    let before = std::fs::read_to_string(&contract).unwrap();
    let junk = out.path().join("junk.yaml");
    std::fs::write(&junk, "models: [unclosed").unwrap();
    let no_id = out.path().join("no_id.yaml");
    std::fs::write(
        &no_id,
        "dataContractSpecification: 0.9.3\ninfo: { title: x, version: 1.0.0 }\nmodels: {}\n",
    )
    .unwrap();
    let o = import(
        "dcs",
        &[
            &junk,
            &no_id,
            &fixture("dcs/orders.dcs.yaml"),
            &fixture("dcs/inventory.dcs.yaml"),
            &fixture("datamesh/payments.yaml"),
        ],
        out.path(),
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    for expected in [
        "junk.yaml: not imported: not valid YAML",
        "no_id.yaml: not imported: the contract has no `id`",
        "orders.dcs.yaml: not imported: `",
        "exists; nothing written for this source (--force replaces it)",
        "payments.yaml: not imported: not a Data Contract Specification document",
        "inventory.dcs.yaml: wrote inventory/stock_levels.odps.yaml, inventory/stock_levels.odcs.yaml",
    ] {
        assert!(text.contains(expected), "{expected}\n{text}");
    }
    assert_eq!(std::fs::read_to_string(&contract).unwrap(), before);
    // --force replaces it.
    let forced = import(
        "dcs",
        &[&fixture("dcs/orders.dcs.yaml")],
        out.path(),
        &["--force"],
    );
    assert!(forced.status.success(), "{}", stdout(&forced));
    // Nothing to convert at all: exit 1.
    let none = import("datamesh-v1", &[&junk], out.path(), &[]);
    assert_eq!(none.status.code(), Some(1));
}

#[test]
fn sodacl_checks_and_service_levels_become_rules_meshq_runs() {
    let out = tempfile::tempdir().unwrap();
    let o = import(
        "dcs",
        &[&fixture("dcs/inventory.dcs.yaml")],
        out.path(),
        &[],
    );
    assert!(o.status.success(), "{}", stdout(&o));
    let c = yaml(&out.path().join("inventory/stock_levels.odcs.yaml"));
    // Only the server meshq reads (PostgreSQL); Snowflake is reported.
    assert_eq!(c["servers"].as_sequence().unwrap().len(), 1);
    assert_eq!(c["servers"][0]["type"], "postgresql");
    let stock = &c["schema"][0];
    let rules = stock["quality"].as_sequence().unwrap();
    let find = |f: &dyn Fn(&serde_yaml_ng::Value) -> bool| rules.iter().any(f);
    assert!(find(&|r| r["metric"] == "rowCount"
        && r["mustBeBetween"]
            == serde_yaml_ng::from_str::<serde_yaml_ng::Value>(
                "[10, 1000000]"
            )
            .unwrap()));
    assert!(find(&|r| r["metric"] == "duplicateValues"
        && r["arguments"]["properties"]
            == serde_yaml_ng::from_str::<serde_yaml_ng::Value>(
                "[warehouse_id, sku]"
            )
            .unwrap()));
    assert!(find(&|r| r["query"]
        == "SELECT max(\"on_hand\") FROM {object}"
        && r["mustBeLessOrEqualTo"] == 100000));
    assert!(find(&|r| r["name"] == "no_negative_stock"
        && r["query"]
            == "SELECT count(*) FROM {object} WHERE on_hand < 0"));
    assert!(find(&|r| r["query"]
        == "SELECT sum(on_hand) FROM inventory.stock"
        && r["mustBeGreaterThan"] == 0));
    assert!(find(&|r| r["type"] == "text"
        && r["description"]
            == "SodaCL: anomaly detection for row_count"));
    let props = stock["properties"].as_sequence().unwrap();
    let sku = props.iter().find(|p| p["name"] == "sku").unwrap();
    // From the definition it refers to.
    assert_eq!(sku["logicalTypeOptions"]["pattern"], "^[A-Z]{3}-[0-9]{4}$");
    assert_eq!(sku["primaryKeyPosition"], 2);
    let on_hand = props.iter().find(|p| p["name"] == "on_hand").unwrap();
    assert_eq!(on_hand["quality"][0]["metric"], "nullValues");
    assert_eq!(on_hand["quality"][0]["unit"], "percent");
    // `missing_count(city): fail: when > 0` passes when the count is 0.
    let city = &c["schema"][1]["properties"][1];
    assert_eq!(city["quality"][0]["mustBeLessOrEqualTo"], 0);
    let sla = c["slaProperties"].as_sequence().unwrap();
    let prop = |n: &str| sla.iter().find(|s| s["property"] == n).unwrap();
    assert_eq!(prop("latency")["value"], 1);
    assert_eq!(prop("latency")["unit"], "h");
    assert_eq!(prop("latency")["element"], "stock.updated_at");
    assert_eq!(prop("frequency")["unit"], "h");
    assert_eq!(prop("freshness")["element"], "stock.updated_at");
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn an_imported_product_is_served_masked_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    let manifest = dir.path().join("customers.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: datamesh/v1\nkind: DataProduct\n\
         metadata: { name: customers, domain: crm, owner: cora@example.com, version: 1.0.0 }\n\
         spec:\n  outputs:\n    - name: customers\n      location: ./data/customers/\n      format: parquet\n\
         \x20     schema:\n        fields:\n\
         \x20         - { name: id, type: bigint, nullable: false, unique: true }\n\
         \x20         - { name: email, type: string, pii: true }\n\
         \x20         - { name: region, type: string }\n\
         \x20 quality_checks:\n\
         \x20   - { name: regions_known, type: accepted_values, column: region, values: [EMEA, AMER] }\n\
         \x20   - { name: some_rows, type: row_count, min: 1 }\n\
         \x20 access_control: { allowed_roles: [analyst] }\n",
    )
    .unwrap();
    let o = import("datamesh-v1", &[&manifest], &mesh, &[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o)
            .contains("meshq reads the converted files: 1 table(s) in 1 product(s), 0 error(s)"),
        "{}",
        stdout(&o)
    );
    // A platform around it: a principal and the organisation's PII policy.
    std::fs::write(
        mesh.join("meshq.yaml"),
        "secrets:\n  pii-key: { env: MESHQ_DEMO_PII_KEY }\nprincipals:\n  - { name: ana, roles: [analyst] }\n  - { name: pat, roles: [analyst, pii-reader] }\n",
    )
    .unwrap();
    std::fs::create_dir_all(mesh.join("governance")).unwrap();
    std::fs::write(
        mesh.join("governance/pii.policy.yaml"),
        "apiVersion: v1\nkind: GovernancePolicySet\nid: urn:policy:test:pii\npolicies:\n  - id: pii-hash\n    type: columnMask\n    match: { classification: [pii] }\n    exceptRoles: [pii-reader]\n    mask: { kind: hash, algorithm: hmac-sha256, keyRef: pii-key }\n",
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("email", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec!["a@x.io", "b@x.io", "c@x.io"])),
            Arc::new(StringArray::from(vec!["EMEA", "AMER", "APAC"])),
        ],
    )
    .unwrap();
    write_parquet(&mesh.join("crm/data/customers/part-0.parquet"), &batch);
    let sql = "SELECT id, email FROM crm.customers ORDER BY id";
    let run = |who: &str| {
        meshq()
            .args(["shell", "--mesh"])
            .arg(&mesh)
            .args(["--as", who, "--format", "csv", "-c", sql])
            .output()
            .unwrap()
    };
    let ana = run("ana");
    assert!(ana.status.success(), "{}", stderr(&ana));
    assert!(!stdout(&ana).contains("a@x.io"), "{}", stdout(&ana));
    assert_eq!(stdout(&ana).lines().count(), 4, "{}", stdout(&ana));
    let pat = run("pat");
    assert!(stdout(&pat).contains("1,a@x.io"), "{}", stdout(&pat));
    // The converted rules run on the data: APAC is not an accepted region.
    let check = meshq()
        .args(["check", "--mesh"])
        .arg(&mesh)
        .output()
        .unwrap();
    let report = stdout(&check);
    assert_eq!(check.status.code(), Some(1), "{report}{}", stderr(&check));
    assert!(report.contains("failed   regions_known"), "{report}");
    assert!(report.contains("passed   some_rows"), "{report}");
    assert!(report.contains("passed   id.unique"), "{report}");
}
