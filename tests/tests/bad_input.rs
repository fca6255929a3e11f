//! Every kind of bad input `meshq validate` must report, with the exact text.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Decimal128Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use meshq_engine::{Engine, EngineConfig, Principal};
use parquet::arrow::ArrowWriter;

const PRODUCT: &str = "\
apiVersion: v1.0.0
kind: DataProduct
id: urn:dataproduct:shop:items
status: active
domain: shop
outputPorts:
  - name: items
    version: 1.0.0
    contractId: urn:datacontract:shop:items
    customProperties: [ { property: server, value: local } ]
";

const CONTRACT: &str = "\
apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:shop:items
version: 1.0.0
status: active
servers:
  - { server: local, type: local, format: parquet, path: ./data/items/ }
schema:
  - name: items
    properties:
      - { name: item_id, logicalType: string, physicalType: STRING, description: Id. }
      - { name: price, logicalType: number, physicalType: \"DECIMAL(10,2)\", description: Price. }
      - { name: qty, logicalType: integer, physicalType: BIGINT, description: Stock. }
";

fn write_items_parquet(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(10, 2), true),
        Field::new("qty", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(
                Decimal128Array::from(vec![199, 2500])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(Int64Array::from(vec![3, 0])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(dir.join("part-0.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A valid one-product mesh: `shop.items`, Parquet.
fn base_mesh() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("meshq.yaml"), "principals: []\n").unwrap();
    std::fs::create_dir_all(root.join("shop")).unwrap();
    std::fs::write(root.join("shop/items.odps.yaml"), PRODUCT).unwrap();
    std::fs::write(root.join("shop/items.odcs.yaml"), CONTRACT).unwrap();
    write_items_parquet(&root.join("shop/data/items"));
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

async fn load(root: &Path) -> Engine {
    Engine::load(EngineConfig::new(root)).await.unwrap()
}

/// Errors only, as `meshq validate` prints them (`file[:line]: error: …`).
async fn errors(root: &Path) -> Vec<String> {
    crate::common::error_problems(&load(root).await)
}

async fn served(root: &Path) -> Vec<String> {
    load(root)
        .await
        .served_tables()
        .iter()
        .map(|t| t.def.qualified_name())
        .collect()
}

#[tokio::test]
async fn base_mesh_is_clean_and_queryable() {
    let dir = base_mesh();
    let engine = load(dir.path()).await;
    assert!(engine.problems().is_empty(), "{:?}", engine.problems());
    let batches = engine
        .session(&Principal::anonymous())
        .sql("SELECT sum(qty), sum(price) FROM shop.items")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    datafusion::assert_batches_eq!(
        [
            "+---------------------+-----------------------+",
            "| sum(shop.items.qty) | sum(shop.items.price) |",
            "+---------------------+-----------------------+",
            "| 3                   | 26.99                 |",
            "+---------------------+-----------------------+",
        ],
        &batches
    );
}

#[tokio::test]
async fn yaml_syntax_error_names_file_and_line() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace("status: active", "  status: active"),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml:5: error: mapping values are not allowed in this context",
            "shop/items.odps.yaml:9: error: output port `items`: contractId `urn:datacontract:shop:items` does not match any contract in the mesh",
        ]
    );
}

#[tokio::test]
async fn unknown_key_is_an_error() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace("description: Stock.", "descripton: Stock."),
    );
    let errs = errors(dir.path()).await;
    assert_eq!(
        errs[0],
        "shop/items.odcs.yaml:13: error: schema[0].properties[2]: unknown field `descripton`, expected one of `name`, `id`, `physicalType`, `description`, `businessName`, `authoritativeDefinitions`, `tags`, `customProperties`, `primaryKey`, `primaryKeyPosition`, `logicalType`, `logicalTypeOptions`, `physicalName`, `required`, `unique`, `partitioned`, `partitionKeyPosition`, `classification`, `encryptedName`, `transformSourceObjects`, `transformLogic`, `transformDescription`, `examples`, `criticalDataElement`, `relationships`, `quality`, `properties`, `items`"
    );
}

#[tokio::test]
async fn wrong_type_and_missing_field() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace("description: Id.", "description: Id., required: maybe"),
    );
    assert_eq!(
        errors(dir.path()).await[0],
        "shop/items.odcs.yaml:11: error: schema[0].properties[0].required: invalid type: string \"maybe\", expected a boolean"
    );
    write(dir.path(), "shop/items.odcs.yaml", CONTRACT);
    write(
        dir.path(),
        "shop/items.odps.yaml",
        &PRODUCT.replace("status: active\n", ""),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec!["shop/items.odps.yaml:1: error: missing field `status`"]
    );
}

#[tokio::test]
async fn port_naming_a_missing_contract_or_server() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odps.yaml",
        &PRODUCT.replace(
            "contractId: urn:datacontract:shop:items",
            "contractId: urn:datacontract:shop:itemz",
        ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odps.yaml:9: error: output port `items`: contractId `urn:datacontract:shop:itemz` does not match any contract in the mesh"
        ]
    );
    write(
        dir.path(),
        "shop/items.odps.yaml",
        &PRODUCT.replace("value: local", "value: prod"),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odps.yaml:10: error: output port `items`: server `prod` is not defined in contract `urn:datacontract:shop:items` (shop/items.odcs.yaml); it has `local`"
        ]
    );
}

#[tokio::test]
async fn duplicate_table_names_name_both_files() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop2/copy.odps.yaml",
        &PRODUCT
            .replace("urn:dataproduct:shop:items", "urn:dataproduct:shop:copy")
            .replace("urn:datacontract:shop:items", "urn:datacontract:shop:copy"),
    );
    write(
        dir.path(),
        "shop2/copy.odcs.yaml",
        &CONTRACT
            .replace("urn:datacontract:shop:items", "urn:datacontract:shop:copy")
            .replace("./data/items/", "../shop/data/items/"),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop2/copy.odps.yaml:9: error: table `shop.items` is already served by product `urn:dataproduct:shop:items` (shop/items.odps.yaml, contract shop/items.odcs.yaml); rename the schema object or move the product to another domain"
        ]
    );
    assert_eq!(served(dir.path()).await, vec!["shop.items"]);
}

#[tokio::test]
async fn missing_location() {
    let dir = base_mesh();
    std::fs::remove_dir_all(dir.path().join("shop/data")).unwrap();
    let root = dir.path().canonicalize().unwrap();
    assert_eq!(
        errors(dir.path()).await,
        vec![format!(
            "shop/items.odcs.yaml: error: table `shop.items` (product `urn:dataproduct:shop:items`): location `{}/shop/data/items` does not exist; the table is not served",
            root.display()
        )]
    );
}

#[tokio::test]
async fn schema_drift_refuses_the_drifted_columns_and_serves_the_rest() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT
            .replace("physicalType: BIGINT", "physicalType: INT")
            .replace(
                "      - { name: qty",
                "      - { name: colour, logicalType: string, description: Colour. }\n      - { name: qty",
            ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml: error: table `shop.items` (product `urn:dataproduct:shop:items`): contract drift: column `colour` is missing from the table; queries reading this column fail, the other columns are served",
            "shop/items.odcs.yaml: error: table `shop.items` (product `urn:dataproduct:shop:items`): contract drift: column `qty`: the table has type Int64 but the contract says physicalType INT; queries reading this column fail, the other columns are served",
        ]
    );
    let engine = load(dir.path()).await;
    let session = engine.session(&Principal::anonymous());
    // The contract's shape is kept: drifted columns are listed.
    let columns = session
        .sql("SELECT * FROM shop.items LIMIT 0")
        .await
        .unwrap()
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect::<Vec<_>>();
    assert_eq!(columns, ["item_id", "price", "colour", "qty"]);
    // Columns that match still answer.
    let batches = session
        .sql("SELECT count(*) AS n, sum(price) AS p FROM shop.items")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    datafusion::assert_batches_eq!(
        [
            "+---+-------+",
            "| n | p     |",
            "+---+-------+",
            "| 2 | 26.99 |",
            "+---+-------+",
        ],
        &batches
    );
    // Reading a drifted column, directly or through `*`, is refused by name.
    for (sql, col, what) in [
        (
            "SELECT colour FROM shop.items",
            "colour",
            "the table has no such column",
        ),
        (
            "SELECT * FROM shop.items",
            "colour",
            "the table has no such column",
        ),
        (
            "SELECT item_id FROM shop.items WHERE qty > 1",
            "qty",
            "the table has type Int64 but the contract says physicalType INT",
        ),
    ] {
        let err = match session.sql(sql).await {
            Ok(df) => df.collect().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(
            err.find_root().to_string(),
            format!(
                "Error during planning: column `{col}` of table `shop.items` (product `urn:dataproduct:shop:items`) has drifted from its contract: {what}. It cannot be read until the table or the contract is fixed; the table's other columns can be queried"
            ),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn file_that_is_not_parquet_is_named() {
    let dir = base_mesh();
    std::fs::write(
        dir.path().join("shop/data/items/part-1.parquet"),
        "item_id,price\nx,1\n",
    )
    .unwrap();
    let errs = errors(dir.path()).await;
    assert_eq!(errs.len(), 1, "{errs:?}");
    let root = dir.path().canonicalize().unwrap();
    let expected_prefix = format!(
        "shop/items.odcs.yaml: error: table `shop.items` (product `urn:dataproduct:shop:items`): file `{}/shop/data/items/part-1.parquet` is not valid parquet: ",
        root.display().to_string().trim_start_matches('/')
    );
    assert!(errs[0].starts_with(&expected_prefix), "{}", errs[0]);
    assert!(
        errs[0].ends_with("; the table is not served"),
        "{}",
        errs[0]
    );
}

#[tokio::test]
async fn broken_delta_log_is_reported_and_others_still_serve() {
    let dir = base_mesh();
    let root = dir.path();
    write(
        root,
        "lake/events.odps.yaml",
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:lake:events\nstatus: active\ndomain: lake\noutputPorts:\n  - { name: events, version: 1.0.0, contractId: urn:datacontract:lake:events }\n",
    );
    write(
        root,
        "lake/events.odcs.yaml",
        "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:lake:events\nversion: 1.0.0\nstatus: active\nservers:\n  - { server: local, type: local, format: delta, path: ./events }\nschema:\n  - name: events\n    properties:\n      - { name: id, logicalType: integer, description: Id. }\n",
    );
    write(
        root,
        "lake/events/_delta_log/00000000000000000000.json",
        "{ this is not json\n",
    );
    let errs = errors(root).await;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("lake/events.odcs.yaml: error: table `lake.events` (product `urn:dataproduct:lake:events`): cannot load Delta table at `file://"),
        "{}",
        errs[0]
    );
    assert_eq!(served(root).await, vec!["shop.items"]);
}

#[tokio::test]
async fn one_broken_product_does_not_stop_the_others() {
    let dir = base_mesh();
    write(
        dir.path(),
        "broken/bad.odps.yaml",
        "apiVersion: v1.0.0\nkind: [\n",
    );
    write(
        dir.path(),
        "broken/bad.odcs.yaml",
        "apiVersion: v3.1.0\nkind: DataContract\nid: x\nversion: 1\nstatus: active\nextra: 1\n",
    );
    let engine = load(dir.path()).await;
    let errs: Vec<_> = engine
        .problems()
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.file.display().to_string())
        .collect();
    // Each broken file is reported once.
    assert_eq!(errs, vec!["broken/bad.odcs.yaml", "broken/bad.odps.yaml"]);
    let n = engine
        .session(&Principal::anonymous())
        .sql("SELECT count(*) AS n FROM shop.items")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    datafusion::assert_batches_eq!(["+---+", "| n |", "+---+", "| 2 |", "+---+"], &n);
}

#[tokio::test]
async fn warnings_do_not_fail() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace(", description: Stock.", ""),
    );
    let engine = load(dir.path()).await;
    let all: Vec<_> = engine.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        all,
        vec!["shop/items.odcs.yaml:13: warning: schema `items`: column `qty` has no description"]
    );
    assert_eq!(served(dir.path()).await, vec!["shop.items"]);
}

/// Each schema object's column warnings carry the line of that object's
/// column, not of the first column of that name in the file.
#[tokio::test]
async fn column_warnings_point_at_their_own_schema_object() {
    let dir = base_mesh();
    let two = CONTRACT
        .replace("path: ./data/items/", "path: './data/{model}/'")
        .replace(", description: Stock.", "")
        + "  - name: stock\n    properties:\n      - { name: qty, logicalType: integer }\n";
    write(dir.path(), "shop/items.odcs.yaml", &two);
    let engine = load(dir.path()).await;
    let warnings: Vec<_> = engine
        .problems()
        .iter()
        .filter(|p| !p.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        vec![
            "shop/items.odcs.yaml:13: warning: schema `items`: column `qty` has no description",
            "shop/items.odcs.yaml:16: warning: schema `stock`: column `qty` has no description",
        ]
    );
}

/// `public` is every session's scratch schema and `meta` and
/// `information_schema` are meshq's own: a product in one of them would be
/// shadowed, so validate refuses it by name.
#[tokio::test]
async fn a_product_in_a_reserved_domain_is_refused() {
    for domain in ["public", "meta", "information_schema", "Public"] {
        let dir = base_mesh();
        write(
            dir.path(),
            "shop/items.odps.yaml",
            &PRODUCT.replace("domain: shop", &format!("domain: {domain}")),
        );
        let lower = domain.to_ascii_lowercase();
        assert_eq!(
            errors(dir.path()).await,
            vec![format!(
                "shop/items.odps.yaml:5: error: product `urn:dataproduct:shop:items`: domain `{domain}` is reserved (meshq serves `{lower}` itself); choose another domain"
            )],
        );
        assert!(served(dir.path()).await.is_empty());
    }
}

#[tokio::test]
async fn a_misspelt_policy_property_is_an_error_not_ignored() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace(
            "description: Id. }",
            "description: Id., customProperties: [ { property: masks, value: { kind: nullify } } ] }",
        ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml:11: error: table `shop.items`, column `item_id`: custom property `masks` is not recognised; did you mean `mask`?"
        ]
    );
}

/// Adds `customProperties` to the `items` schema object.
fn with_table_policy(policy: &str) -> String {
    CONTRACT.replace(
        "  - name: items\n",
        &format!("  - name: items\n    customProperties:\n{policy}"),
    )
}

#[tokio::test]
async fn bad_row_filter_names_file_table_and_policy_and_fails_closed() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &with_table_policy(
            "      - { property: rowFilters, value: [ { id: in_stock, expression: \"qtty > 0\" } ] }\n",
        ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml: error: table `shop.items`: row filter in_stock: Schema error: No field named qtty. Did you mean 'qty'? Valid fields are item_id, price, qty.; the table is unreadable until this is fixed"
        ]
    );
    let engine = load(dir.path()).await;
    let err = engine
        .session(&Principal::anonymous())
        .sql("SELECT * FROM shop.items")
        .await
        .unwrap_err();
    assert_eq!(
        meshq_engine::policy_error(&err).unwrap().to_string(),
        "table `shop.items` is unavailable: its row filter in_stock cannot be evaluated (Schema error: No field named qtty. Did you mean 'qty'? Valid fields are item_id, price, qty.); ask the product's owners to fix the contract"
    );
    // Not boolean.
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &with_table_policy(
            "      - { property: rowFilters, value: [ { id: in_stock, expression: \"qty + 1\" } ] }\n",
        ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml: error: table `shop.items`: row filter in_stock: expression is of type Int64, not boolean; the table is unreadable until this is fixed"
        ]
    );
}

#[tokio::test]
async fn mask_that_does_not_fit_the_column_type() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace(
            "description: Price. }",
            "description: Price., customProperties: [ { property: mask, value: { kind: partial, showFirst: 1 } } ] }",
        ),
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "shop/items.odcs.yaml: error: table `shop.items`: mask on column price: a partial mask needs a string column; `price` is Decimal128(10, 2); the table is unreadable until this is fixed"
        ]
    );
}

#[tokio::test]
async fn missing_secret_and_global_policy_errors_name_the_policy_file() {
    let dir = base_mesh();
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace(
            "description: Id. }",
            "description: Id., classification: pii }",
        ),
    );
    write(
        dir.path(),
        "governance/pii.policy.yaml",
        "apiVersion: v1\nkind: GovernancePolicySet\nid: set\npolicies:\n  - { id: pii-hash, type: columnMask, match: { classification: [pii] }, mask: { kind: hash, keyRef: nope } }\n",
    );
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "governance/pii.policy.yaml: error: table `shop.items`: global policy pii-hash on column item_id: secret `nope` is not defined in meshq.yaml; the table is unreadable until this is fixed"
        ]
    );
    std::fs::write(
        dir.path().join("meshq.yaml"),
        "secrets: { nope: { env: MESHQ_TEST_SURELY_UNSET_VAR } }\n",
    )
    .unwrap();
    assert_eq!(
        errors(dir.path()).await,
        vec![
            "governance/pii.policy.yaml: error: table `shop.items`: global policy pii-hash on column item_id: secret `nope`: environment variable `MESHQ_TEST_SURELY_UNSET_VAR` is not set; the table is unreadable until this is fixed"
        ]
    );
}

#[tokio::test]
async fn an_unreadable_global_policy_set_makes_every_table_unreadable() {
    let dir = base_mesh();
    write(
        dir.path(),
        "governance/pii.policy.yaml",
        "apiVersion: v1\nkind: GovernancePolicySet\nid: set\npolicies: [\n",
    );
    let engine = load(dir.path()).await;
    let errors = crate::common::error_problems(&engine);
    assert!(
        errors.iter().any(|e| e.contains(
            "governance/pii.policy.yaml: error: this global policy set has errors: every table is unreadable until it is fixed (fail closed)"
        )),
        "{errors:?}"
    );
    // The set could have masked any column: nothing is read raw.
    let err = engine
        .session(&Principal::anonymous())
        .sql("SELECT * FROM shop.items")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("governance/pii.policy.yaml") && err.contains("unreadable"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_keeps_the_last_good_version_of_a_broken_product() {
    let dir = base_mesh();
    let first = load(dir.path()).await;
    let admin = Principal {
        name: Some("root".into()),
        roles: ["admin".to_string()].into(),
        ..Default::default()
    };
    let session = first.session(&admin);
    session
        .sql("CREATE TABLE scratch AS SELECT 1 AS x")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // A broken contract: the previous version stays.
    write(
        dir.path(),
        "shop/items.odcs.yaml",
        &CONTRACT.replace("schema:", "schema: [oops\n"),
    );
    let second = Engine::load_after(EngineConfig::new(dir.path()), Some(&first))
        .await
        .unwrap();
    assert_eq!(second.kept(), ["shop.items"]);
    let warnings: Vec<String> = second.problems().iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("the previous version is still served")),
        "{warnings:?}"
    );
    // Sessions continue on the new version with their scratch tables.
    let continued = second.session_for(session.data());
    let rows = continued
        .sql("SELECT (SELECT sum(qty) FROM shop.items) AS q, (SELECT x FROM scratch) AS x")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    datafusion::assert_batches_eq!(
        [
            "+---+---+",
            "| q | x |",
            "+---+---+",
            "| 3 | 1 |",
            "+---+---+"
        ],
        &rows
    );
    // Broken global config: the whole reload is rejected.
    std::fs::write(dir.path().join("meshq.yaml"), "principals: [\n").unwrap();
    let err = Engine::load_after(EngineConfig::new(dir.path()), Some(&second))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reload rejected, the previous mesh is still served: meshq.yaml"),
        "{err}"
    );
    // A removed product is gone, not kept.
    std::fs::write(dir.path().join("meshq.yaml"), "principals: []\n").unwrap();
    std::fs::remove_file(dir.path().join("shop/items.odps.yaml")).unwrap();
    let third = Engine::load_after(EngineConfig::new(dir.path()), Some(&second))
        .await
        .unwrap();
    assert!(third.served_tables().is_empty());
    assert!(third.kept().is_empty());
}

#[tokio::test]
async fn a_setting_meshq_yaml_cannot_apply_is_named_and_left_out() {
    let dir = base_mesh();
    std::fs::write(
        dir.path().join("meshq.yaml"),
        "principals: []\n\
         settings:\n  \
           datafusion.execution.target_partitions: 3\n  \
           meshq_plan.reorder_joins: true\n  \
           datafusion.execution.batch_size: lots\n  \
           datafusion.runtime.memory_limit: 1G\n  \
           meshq_plan.often: true\n  \
           distributed.files_per_task: 2\n",
    )
    .unwrap();
    let errors = errors(dir.path()).await;
    assert_eq!(errors.len(), 4, "{errors:?}");
    for (key, why) in [
        ("datafusion.execution.batch_size: lots", "lots"),
        ("datafusion.runtime.memory_limit: 1G", "limits.memory"),
        ("meshq_plan.often: true", "often"),
        ("distributed.files_per_task: 2", "cluster.settings"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("meshq.yaml") && e.contains(key) && e.contains(why)),
            "no error names `{key}` and `{why}`: {errors:?}"
        );
    }
    // The good settings start every session; the bad ones are left out.
    let engine = load(dir.path()).await;
    let config = engine.session_config();
    let options = config.options();
    assert_eq!(options.execution.target_partitions, 3);
    assert_eq!(
        options.execution.batch_size,
        datafusion::config::ConfigOptions::default()
            .execution
            .batch_size
    );
    assert!(
        options
            .extensions
            .get::<meshq_connectors::PlanOptions>()
            .unwrap()
            .reorder_joins
    );
    // The server still answers.
    let rows = engine
        .session(&Principal::default())
        .sql("SELECT 1 AS one")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(rows[0].num_rows(), 1);
    // A reload with a bad setting is rejected, like any error of meshq.yaml.
    let good = Engine::load_after(EngineConfig::new(dir.path()), None)
        .await
        .unwrap();
    let err = Engine::load_after(EngineConfig::new(dir.path()), Some(&good))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("reload rejected, the previous mesh is still served: meshq.yaml")
            && err.contains("datafusion.execution.batch_size"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("meshq.yaml"),
        "principals: []\nsettings: { datafusion.execution.batch_size: 1024 }\n",
    )
    .unwrap();
    let reloaded = Engine::load_after(EngineConfig::new(dir.path()), Some(&good))
        .await
        .unwrap();
    assert_eq!(
        usize::from(reloaded.session_config().options().execution.batch_size),
        1024
    );
}
