//! A product whose output port is a PostgreSQL table, against a real
//! PostgreSQL server the test starts itself (Debian's package, `initdb`
//! into a temporary directory): types, policies per principal, what
//! reaches the database (its statement log), joins with file products,
//! and the faults of a server that stops.

use std::path::Path;

use meshq_engine::{Engine, EngineConfig};
use meshq_tests::postgres::TestPostgres;

use crate::common::{all_problems, query, run};

const READER: (&str, &str) = ("meshq_reader", "reader-secret");

/// The database `shop` with `crm.customers`, 200 rows; the reader login
/// may select from it.
fn shop(pg: &TestPostgres) {
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        &format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}';
             CREATE SCHEMA crm;
             CREATE TABLE crm.customers (
               id integer PRIMARY KEY, email text, region varchar(8) NOT NULL,
               balance numeric(12,2), signed_up date, last_seen timestamptz,
               created timestamp, tags text[], scores int4[], profile jsonb,
               uid uuid, photo bytea, active boolean, score double precision,
               small smallint, big bigint, code char(3));
             INSERT INTO crm.customers
               SELECT i, 'user' || i || '@example.com',
                      (ARRAY['EMEA','AMER','APAC'])[1 + i % 3],
                      (i * 12.5)::numeric(12,2), DATE '2026-01-01' + i,
                      TIMESTAMPTZ '2026-01-01 10:00:00+02' + i * INTERVAL '1 hour',
                      TIMESTAMP '2026-01-01 00:00:00' + i * INTERVAL '1 minute',
                      ARRAY['t' || (i % 4), 'all'], ARRAY[i, i + 1],
                      jsonb_build_object('n', i), md5(i::text)::uuid,
                      decode(lpad(to_hex(i), 4, '0'), 'hex'), i % 2 = 0, i / 7.0,
                      (i % 100)::smallint, i::bigint * 1000000000, 'c' || (i % 10)
               FROM generate_series(1, 200) AS i;
             UPDATE crm.customers SET email = NULL WHERE id = 3;
             GRANT USAGE ON SCHEMA crm TO {0};
             GRANT SELECT ON crm.customers TO {0};",
            READER.0, READER.1
        ),
    );
}

/// A mesh with the product `crm.customers` served from `pg`: the email
/// hashed unless `pii-reader`, rows of the principal's region unless
/// `global-analyst`.
fn mesh(dir: &Path, pg: &TestPostgres) {
    std::fs::write(
        dir.join("meshq.yaml"),
        format!(
            "secrets:\n  pii-key: {{ env: MESHQ_TEST_PG_PII }}\n\
             stores:\n  shop_db: {{ type: postgresql, host: 127.0.0.1, port: {}, database: shop, user: {}, password: {{ env: MESHQ_TEST_PG_PASSWORD }}, pool_size: 2 }}\n\
             principals:\n\
             \x20 - {{ name: ana, roles: [analyst], attributes: {{ region: EMEA }} }}\n\
             \x20 - {{ name: pat, roles: [analyst, global-analyst, pii-reader] }}\n",
            pg.port, READER.0
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("customers.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:crm:customers\nname: customers\n\
         version: 1.0.0\nstatus: active\ndomain: crm\ndescription: { purpose: Customers of the shop's database. }\n\
         outputPorts:\n  - { name: customers_pg, type: tables, version: 1.0.0, contractId: urn:datacontract:crm:customers }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("customers.odcs.yaml"),
        r#"apiVersion: v3.1.0
kind: DataContract
id: urn:datacontract:crm:customers
name: customers
version: 1.0.0
status: active
domain: crm
servers:
  - { server: shop, type: postgresql, host: 127.0.0.1, port: PORT, database: shop, schema: crm }
schema:
  - name: customers
    physicalName: customers
    physicalType: table
    customProperties:
      - { property: readRoles, value: [analyst] }
      - property: rowFilters
        value: [ { id: own_region, expression: "region = principal_attr('region')", exceptRoles: [global-analyst] } ]
    properties:
      - { name: id, logicalType: integer, physicalType: INTEGER, primaryKey: true, required: true }
      - name: email
        logicalType: string
        physicalType: TEXT
        classification: pii
        customProperties:
          - { property: mask, value: { kind: hash, algorithm: hmac-sha256, keyRef: pii-key, exceptRoles: [pii-reader] } }
      - { name: region, logicalType: string, physicalType: VARCHAR, required: true }
      - { name: balance, logicalType: number, physicalType: "NUMERIC(12,2)" }
      - { name: signed_up, logicalType: date }
      - { name: last_seen, logicalType: timestamp, physicalType: timestamptz }
      - { name: created, logicalType: timestamp }
      - { name: tags, logicalType: array, physicalType: "text[]" }
      - { name: scores, logicalType: array }
      - { name: profile, logicalType: string, physicalType: jsonb }
      - { name: uid, logicalType: string }
      - { name: photo }
      - { name: active, logicalType: boolean }
      - { name: score, logicalType: number }
      - { name: small, logicalType: integer }
      - { name: big, logicalType: integer, physicalType: int8 }
      - { name: code, logicalType: string }
"#
        .replace("PORT", &pg.port.to_string()),
    )
    .unwrap();
}

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config
        .secret_env_fallback
        .insert("MESHQ_TEST_PG_PII".into(), "a pii key".into());
    config
        .secret_env_fallback
        .insert("MESHQ_TEST_PG_PASSWORD".into(), READER.1.into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_table_is_a_governed_product() {
    let pg = TestPostgres::start();
    shop(&pg);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let errors = crate::common::error_problems(&engine);
    assert!(errors.is_empty(), "{errors:#?}");

    // Every type, as pat (no mask, no filter) sees it.
    let row = query(
        &engine,
        "pat",
        "SELECT id, email, region, balance, signed_up, last_seen, created, tags, scores, profile, uid, \
         photo, active, score, small, big, code FROM crm.customers WHERE id = 8",
    )
    .await
    .unwrap();
    for value in [
        "| 8 ",
        "user8@example.com",
        "APAC",
        "100.00",
        "2026-01-09",
        "2026-01-01T16:00:00Z",
        "2026-01-01T00:08:00",
        "[t0, all]",
        "[8, 9]",
        "{\"n\": 8}",
        "c9f0f895-fb98-ab91-59f5-1fd0297e236d",
        "0008",
        "true",
        "1.142857",
        "8000000000",
        "c8 ",
    ] {
        assert!(row.contains(value), "{value} in {row}");
    }

    // ana: her region only, emails hashed.
    let ana = query(
        &engine,
        "ana",
        "SELECT id, email, region FROM crm.customers ORDER BY id",
    )
    .await
    .unwrap();
    assert!(!ana.contains("AMER") && !ana.contains("APAC"), "{ana}");
    assert!(!ana.contains("@example.com"), "{ana}");
    assert_eq!(ana.matches("EMEA").count(), 66, "{ana}");

    // The row filter and a predicate on an unmasked column reach the
    // database; a predicate, an ordering and a grouping on the masked
    // column do not, and run on the masked values.
    let before = pg.log().len();
    let n = query(
        &engine,
        "ana",
        "SELECT count(*) AS n FROM crm.customers WHERE id > 150 AND email = 'user153@example.com'",
    )
    .await
    .unwrap();
    assert!(
        n.contains("| 0 "),
        "a raw email matches nothing masked: {n}"
    );
    let grouped = query(
        &engine,
        "ana",
        "SELECT email, count(*) FROM crm.customers GROUP BY email ORDER BY email LIMIT 3",
    )
    .await
    .unwrap();
    assert!(!grouped.contains("@example.com"), "{grouped}");
    let log = pg.log()[before..].to_string();
    let statements: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("statement: ") || l.contains("execute"))
        .collect();
    assert!(
        statements
            .iter()
            .any(|l| l.contains("\"region\" = 'EMEA'") && l.contains("\"id\" > 150")),
        "the row filter and the predicate on id reached PostgreSQL: {statements:#?}"
    );
    assert!(
        !log.contains("user153@example.com"),
        "the predicate on the masked email stayed in meshq: {log}"
    );
    assert!(
        !log.to_ascii_uppercase().contains("GROUP BY")
            && !log.to_ascii_uppercase().contains("ORDER BY"),
        "no grouping or ordering reached PostgreSQL: {log}"
    );

    // EXPLAIN shows the statement sent.
    let plan = query(
        &engine,
        "ana",
        "EXPLAIN SELECT id FROM crm.customers WHERE id < 10",
    )
    .await
    .unwrap();
    assert!(
        plan.contains(
            "PostgresExec: table=crm.customers sql=SELECT \"id\", \"region\" FROM \"crm\".\"customers\" WHERE ((\"region\" = 'EMEA')) AND ((\"id\" < 10))"
        ),
        "{plan}"
    );

    // Joined with itself through meshq (a cross-source join works the same
    // way as any other).
    let joined = query(
        &engine,
        "pat",
        "SELECT count(*) AS n FROM crm.customers a JOIN crm.customers b ON a.id = b.id + 1",
    )
    .await
    .unwrap();
    assert!(joined.contains("| 199 "), "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_its_product_only_and_recovers() {
    let pg = TestPostgres::start();
    shop(&pg);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let sql = "SELECT count(*) AS n FROM crm.customers";
    assert!(query(&engine, "pat", sql).await.unwrap().contains("| 200 "));
    pg.stop();
    let e = query(&engine, "pat", sql).await.unwrap_err();
    assert!(
        e.contains("crm.customers") && e.contains("cannot be reached"),
        "{e}"
    );
    pg.start_again();
    assert!(query(&engine, "pat", sql).await.unwrap().contains("| 200 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_query_cancels_its_statement() {
    let pg = TestPostgres::start();
    shop(&pg);
    pg.psql(
        "shop",
        &format!(
            "CREATE VIEW crm.slow AS SELECT c.*, pg_sleep(0.05) IS NULL AS slept FROM crm.customers c;
             GRANT SELECT ON crm.slow TO {};",
            READER.0
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    let contract = std::fs::read_to_string(dir.path().join("customers.odcs.yaml")).unwrap();
    std::fs::write(
        dir.path().join("customers.odcs.yaml"),
        contract.replace("physicalName: customers", "physicalName: slow"),
    )
    .unwrap();
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let principal = engine.mesh().config.principal("pat").unwrap();
    let session = engine.session(&principal);
    // 200 rows × 50 ms: ten seconds, dropped after one.
    let q = run(&session, "SELECT count(*) FROM crm.customers");
    assert!(
        tokio::time::timeout(std::time::Duration::from_secs(1), q)
            .await
            .is_err()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let active = pg.psql(
            "shop",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%crm%slow%' AND state = 'active' AND pid <> pg_backend_pid()",
        );
        if active.trim() == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the statement still runs at PostgreSQL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A database that is down when the mesh loads: the product is listed and
/// unreadable with the cause, the others load; once the database is back,
/// the next load (a reload) serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_load_is_unreadable_until_a_reload_finds_it() {
    let pg = TestPostgres::start();
    shop(&pg);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    pg.stop();
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let problems: Vec<String> = all_problems(&engine);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("crm.customers") && p.contains("cannot be reached")),
        "{problems:#?}"
    );
    assert_eq!(engine.unopened(), 1);
    let e = query(&engine, "pat", "SELECT count(*) FROM crm.customers")
        .await
        .unwrap_err();
    assert!(e.contains("crm.customers"), "{e}");
    pg.start_again();
    let reloaded = Engine::load_after(config(dir.path()), Some(&engine))
        .await
        .unwrap();
    assert_eq!(reloaded.unopened(), 0);
    assert!(
        query(&reloaded, "pat", "SELECT count(*) AS n FROM crm.customers")
            .await
            .unwrap()
            .contains("| 200 ")
    );
}

/// What a Flight SQL client is told, through the server's own mapping of
/// errors: a database that is down is UNAVAILABLE naming the table and its
/// product; a login without SELECT is PERMISSION_DENIED naming the table
/// and the `stores` entry to fix, never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_failures_reach_clients_as_unavailable_or_permission_denied() {
    use meshq_flight_server::error::Error;
    use meshq_flight_server::query::QueryId;
    let pg = TestPostgres::start();
    shop(&pg);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let pat = engine.session(&engine.mesh().config.principal("pat").unwrap());
    let tables = vec!["crm.customers".to_string()];
    let status = |e: datafusion::error::DataFusionError| {
        let e = Error::statement(QueryId::new(), &e, Some((&pat, &tables)));
        tonic::Status::from(e)
    };
    let sql = "SELECT count(*) FROM crm.customers";
    pg.psql(
        "shop",
        &format!("REVOKE SELECT ON crm.customers FROM {}", READER.0),
    );
    let e = pat.sql(sql).await.unwrap().collect().await.unwrap_err();
    let s = status(e);
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s}");
    assert!(
        s.message().contains("crm.customers") && s.message().contains("stores"),
        "{s}"
    );
    assert!(!s.message().contains(READER.1), "{s}");
    pg.psql(
        "shop",
        &format!("GRANT SELECT ON crm.customers TO {}", READER.0),
    );
    pg.stop();
    let e = pat.sql(sql).await.unwrap().collect().await.unwrap_err();
    let s = status(e);
    assert_eq!(s.code(), tonic::Code::Unavailable, "{s}");
    assert!(
        s.message().contains("crm.customers")
            && s.message().contains("urn:dataproduct:crm:customers"),
        "{s}"
    );
}

/// A contract that no longer matches the database: a missing column and a
/// column of another type are drift, listed and refused by name; the
/// other columns are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_table_that_drifted_from_its_contract_is_refused_by_column() {
    let pg = TestPostgres::start();
    shop(&pg);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    let file = dir.path().join("customers.odcs.yaml");
    let contract = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        contract
            .replace(
                "      - { name: small, logicalType: integer }",
                "      - { name: small, logicalType: integer, physicalType: int8 }\n      - { name: gone, logicalType: string }",
            ),
    )
    .unwrap();
    let engine = Engine::load(config(dir.path())).await.unwrap();
    let problems: Vec<String> = all_problems(&engine);
    let text = problems.join("\n");
    assert!(text.contains("`gone` is missing"), "{text}");
    assert!(
        text.contains("column `small`") && text.contains("int8"),
        "{text}"
    );
    let e = query(&engine, "pat", "SELECT small FROM crm.customers")
        .await
        .unwrap_err();
    assert!(e.contains("`small`") && e.contains("drifted"), "{e}");
    let ok = query(&engine, "pat", "SELECT count(big) AS n FROM crm.customers")
        .await
        .unwrap();
    assert!(ok.contains("| 200 "), "{ok}");
}

/// A certificate authority, and a server certificate it signed for
/// `names`: the CA's PEM, the server's certificate and key PEMs.
fn certificates(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// The mesh's `stores` entry with `tls` added (e.g. `sslmode: require`).
fn with_tls(dir: &Path, tls: &str) {
    let platform = dir.join("meshq.yaml");
    let yaml = std::fs::read_to_string(&platform).unwrap();
    let start = yaml.find("pool_size: 2").expect("the stores entry");
    let end = start + yaml[start..].find('}').unwrap();
    let entry = if tls.is_empty() {
        "pool_size: 2 ".to_string()
    } else {
        format!("pool_size: 2, {tls} ")
    };
    std::fs::write(
        &platform,
        format!("{}{entry}{}", &yaml[..start], &yaml[end..]),
    )
    .unwrap();
}

async fn problems_of(dir: &Path) -> (Engine, Vec<String>) {
    let engine = Engine::load(config(dir)).await.unwrap();
    let problems = all_problems(&engine);
    (engine, problems)
}

/// A database that lets logins in over TLS only: each `sslmode` connects
/// (or refuses to) as libpq's does, and the connections meshq keeps are
/// encrypted (`pg_stat_ssl`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_encrypts_and_checks_the_server_as_libpq_does() {
    let pg = TestPostgres::start();
    shop(&pg);
    let (ca, cert, key) = certificates(&["127.0.0.1"]);
    pg.require_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    mesh(dir.path(), &pg);
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    let (other_ca, _, _) = certificates(&["127.0.0.1"]);
    std::fs::write(dir.path().join("other-ca.pem"), &other_ca).unwrap();
    let sql = "SELECT count(*) AS n FROM crm.customers";

    // Plaintext is refused by the server.
    with_tls(dir.path(), "sslmode: disable");
    let (_, problems) = problems_of(dir.path()).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("crm.customers") && p.contains("refused the login")),
        "{problems:#?}"
    );

    // verify-full with the CA that signed the server's certificate.
    with_tls(dir.path(), "sslmode: verify-full, sslrootcert: ca.pem");
    let (engine, problems) = problems_of(dir.path()).await;
    assert!(
        !problems.iter().any(|p| p.contains("crm.customers")),
        "{problems:#?}"
    );
    assert!(query(&engine, "pat", sql).await.unwrap().contains("| 200 "));
    let encrypted = pg.psql(
        "shop",
        "SELECT count(*) > 0 AND bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'meshq_reader'",
    );
    assert_eq!(encrypted.trim(), "t", "meshq's connections use TLS");

    // Another CA: the certificate is not trusted.
    with_tls(
        dir.path(),
        "sslmode: verify-full, sslrootcert: other-ca.pem",
    );
    let (_, problems) = problems_of(dir.path()).await;
    assert!(
        problems.iter().any(|p| p.contains("crm.customers")
            && p.contains("cannot be reached")
            && p.contains("certificate")),
        "{problems:#?}"
    );

    // require without a root certificate encrypts without checking, as
    // libpq's does.
    with_tls(dir.path(), "sslmode: require");
    let (engine, _) = problems_of(dir.path()).await;
    assert!(query(&engine, "pat", sql).await.unwrap().contains("| 200 "));

    // A certificate for another name: verify-full refuses it, verify-ca
    // (the chain only) accepts it.
    let (ca, cert, key) = certificates(&["db.example"]);
    pg.require_tls(&cert, &key);
    std::fs::write(dir.path().join("ca.pem"), &ca).unwrap();
    with_tls(dir.path(), "sslmode: verify-full, sslrootcert: ca.pem");
    let (_, problems) = problems_of(dir.path()).await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("crm.customers") && p.contains("cannot be reached")),
        "{problems:#?}"
    );
    with_tls(dir.path(), "sslmode: verify-ca, sslrootcert: ca.pem");
    let (engine, _) = problems_of(dir.path()).await;
    assert!(query(&engine, "pat", sql).await.unwrap().contains("| 200 "));

    // An unknown mode is refused when the mesh loads, naming the entry.
    with_tls(dir.path(), "sslmode: always");
    let (_, problems) = problems_of(dir.path()).await;
    assert!(
        problems.iter().any(|p| p.contains("sslmode `always`")),
        "{problems:#?}"
    );
}
