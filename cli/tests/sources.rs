//! Database and remote products served by the real `meshq serve`: the
//! audit log records the statement sent to the source as a shape without
//! literals, and a client gets UNAVAILABLE naming the product when the
//! source stops, while the other products answer. The remote Flight SQL
//! source is a second `meshq serve` process behind TLS.

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

/// The demo's `sales.orders` read from a second `meshq serve` (the demo
/// mesh behind TLS, logged in to as `pat`, who sees raw values there): ana
/// gets exactly what the remote would give her, the remote receives the
/// row filter and the predicate on an unmasked column, and both audit
/// logs show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_meshq_over_tls_is_a_governed_product() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let (remote_dir, remote_mesh) = super::ops::copy_mesh();
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, cert_key) = (
        remote_dir.path().join("cert.pem"),
        remote_dir.path().join("key.pem"),
    );
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&cert_key, key.signing_key.serialize_pem()).unwrap();
    let remote_audit = remote_dir.path().join("audit.jsonl");
    let remote = start_on(
        &remote_mesh,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            cert_key.to_str().unwrap(),
            "--audit-log",
            remote_audit.to_str().unwrap(),
        ],
        &[],
    );
    let endpoint = format!("grpc+tls://127.0.0.1:{}", remote.port);

    let (dir, mesh) = super::ops::copy_mesh();
    std::fs::write(mesh.join("remote-ca.pem"), key.cert.pem()).unwrap();
    let contract_path = mesh.join("sales/orders.odcs.yaml");
    let contract = std::fs::read_to_string(&contract_path).unwrap();
    let server = "  - { server: local, type: local, format: delta, path: ./data/orders }";
    assert!(contract.contains(server));
    std::fs::write(
        &contract_path,
        contract
            .replace(
                server,
                &format!("  - {{ server: local, type: custom, format: flightsql, endpointUrl: {endpoint} }}"),
            )
            .replace("    physicalName: orders\n", "    physicalName: sales.orders\n"),
    )
    .unwrap();
    super::ops::append(
        &mesh,
        &format!(
            "\nstores:\n  hub: {{ type: flightsql, endpoint: {endpoint}, username: pat, password: {{ env: MESHQ_TEST_REMOTE_PASSWORD }}, ca_certificate: remote-ca.pem }}\n"
        ),
    );
    let audit = dir.path().join("audit.jsonl");
    let local = start_on(
        &mesh,
        &["--audit-log", audit.to_str().unwrap()],
        &[("MESHQ_TEST_REMOTE_PASSWORD", "pat-demo")],
    );
    let sql = "SELECT order_id, email, region, total_amount FROM sales.orders \
               WHERE item_count > 3 ORDER BY order_id LIMIT 25";
    let mut ana = login(&local, "ana").await;
    let through_local = text(&try_query(&mut ana, sql).await.unwrap());
    // The same question asked of the remote directly, as ana.
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", remote.port))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(key.cert.pem())))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut ana_there = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    ana_there.handshake("ana", "ana-demo").await.unwrap();
    let direct = text(&try_query(&mut ana_there, sql).await.unwrap());
    assert_eq!(through_local, direct);
    assert!(
        through_local.contains("EMEA") && !through_local.contains("AMER"),
        "{through_local}"
    );

    // The local audit: the statement sent, without literals.
    let record: serde_json::Value = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["tables"] == serde_json::json!(["sales.orders"]))
        .expect("the query's audit record");
    let sent = record["source_statements"].to_string();
    assert!(
        sent.contains("\\\"region\\\" = ?") && sent.contains("\\\"item_count\\\" > ?"),
        "{record}"
    );
    // The remote's audit: pat's statement, with the same predicates.
    let received: Vec<serde_json::Value> = std::fs::read_to_string(&remote_audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["principal"] == "pat")
        .collect();
    assert!(
        received.iter().any(|r| r["sql_shape"]
            .as_str()
            .is_some_and(|s| s.contains("\"region\" = ?") && s.contains("\"item_count\" > ?"))),
        "{received:#?}"
    );

    // The remote stops: the product is UNAVAILABLE, named; the others
    // answer.
    drop(remote);
    let status = try_query(&mut ana, "SELECT count(*) FROM sales.orders")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(
        status.message().contains("sales.orders")
            && status.message().contains("urn:dataproduct:sales:orders"),
        "{status}"
    );
    assert!(
        try_query(&mut ana, "SELECT count(*) FROM customers.profiles")
            .await
            .is_ok()
    );
}
