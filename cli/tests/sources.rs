//! A PostgreSQL product served by the real `meshq serve`: the audit log
//! records the statement sent to the database as a shape without
//! literals, and a client gets UNAVAILABLE naming the product when the
//! database stops, while the other products answer.

use meshq_tests::postgres::TestPostgres;

use super::flight::{login, start_on, text};
use super::ops::try_query;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_product_is_audited_with_its_source_statement() {
    let pg = TestPostgres::start();
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE ROLE meshq_reader LOGIN PASSWORD 'reader-secret';
         CREATE TABLE public.customers (id integer, email text, region text);
         INSERT INTO public.customers
           SELECT i, 'user' || i || '@example.com', (ARRAY['EMEA','AMER','APAC'])[1 + i % 3]
           FROM generate_series(1, 90) AS i;
         GRANT SELECT ON public.customers TO meshq_reader;",
    );
    let (dir, mesh) = super::ops::copy_mesh();
    super::ops::append(
        &mesh,
        &format!(
            "\nstores:\n  shop_db: {{ type: postgresql, host: 127.0.0.1, port: {}, database: shop, user: meshq_reader, password: {{ env: MESHQ_TEST_PG_PASSWORD }} }}\n",
            pg.port
        ),
    );
    std::fs::create_dir_all(mesh.join("crm")).unwrap();
    std::fs::write(
        mesh.join("crm/customers.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:crm:customers\nname: customers\nversion: 1.0.0\n\
         status: active\ndomain: crm\noutputPorts:\n  - { name: customers_pg, type: tables, version: 1.0.0, contractId: urn:datacontract:crm:customers }\n",
    )
    .unwrap();
    std::fs::write(
        mesh.join("crm/customers.odcs.yaml"),
        format!(
            "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:crm:customers\nname: customers\nversion: 1.0.0\nstatus: active\ndomain: crm\n\
             servers:\n  - {{ server: shop, type: postgresql, host: 127.0.0.1, port: {}, database: shop, schema: public }}\n\
             schema:\n  - name: customers\n    physicalName: customers\n    customProperties:\n\
             \x20     - {{ property: readRoles, value: [analyst] }}\n\
             \x20     - property: rowFilters\n        value: [ {{ id: own_region, expression: \"region = principal_attr('region')\", exceptRoles: [global-analyst] }} ]\n\
             \x20   properties:\n\
             \x20     - {{ name: id, logicalType: integer, physicalType: int4 }}\n\
             \x20     - {{ name: email, logicalType: string, classification: pii }}\n\
             \x20     - {{ name: region, logicalType: string }}\n",
            pg.port
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = start_on(
        &mesh,
        &["--audit-log", audit.to_str().unwrap()],
        &[("MESHQ_TEST_PG_PASSWORD", "reader-secret")],
    );
    let mut ana = login(&server, "ana").await;
    let rows = text(
        &try_query(
            &mut ana,
            "SELECT id, email FROM crm.customers WHERE id < 40 ORDER BY id",
        )
        .await
        .unwrap(),
    );
    // EMEA rows only, emails hashed (the demo's global pii policy).
    assert!(rows.contains("| 3 ") && !rows.contains("| 1 "), "{rows}");
    assert!(!rows.contains("@example.com"), "{rows}");
    let record: serde_json::Value = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["tables"] == serde_json::json!(["crm.customers"]))
        .expect("the query's audit record");
    let sent = record["source_statements"].to_string();
    assert!(
        sent.contains("FROM \\\"public\\\".\\\"customers\\\"")
            && sent.contains("\\\"region\\\" = ?")
            && sent.contains("\\\"id\\\" < ?"),
        "{record}"
    );
    assert!(
        !sent.contains("EMEA") && !sent.contains("40"),
        "no literals: {record}"
    );

    // The database stops: its product is UNAVAILABLE, named; the files'
    // products still answer.
    pg.stop();
    let status = try_query(&mut ana, "SELECT count(*) FROM crm.customers WHERE id > 1")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(
        status.message().contains("crm.customers")
            && status.message().contains("urn:dataproduct:crm:customers"),
        "{status}"
    );
    assert!(
        try_query(&mut ana, "SELECT count(*) FROM sales.orders")
            .await
            .is_ok()
    );
}
