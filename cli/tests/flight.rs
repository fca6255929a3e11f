//! The real `meshq serve` binary on port 0, driven by arrow-rs's Flight SQL
//! client: authentication, statements, prepared statements, metadata and
//! error codes, per principal.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

use super::{mesh, meshq};

/// A spawned server; killed on drop.
pub(super) struct Server {
    pub(super) child: Child,
    pub(super) port: u16,
    /// The metrics port, when started with `--metrics-bind`.
    pub(super) metrics: Option<u16>,
    /// The web catalog's port, when started with `--http`.
    pub(super) http: Option<u16>,
    /// Everything the server wrote to stderr so far.
    pub(super) log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The server's stderr so far.
    pub(super) fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the server logs `needle` within ten seconds: its stderr is
    /// read by another thread, so a line written just before a reply may
    /// not have been collected yet when the reply arrives.
    pub(super) async fn logs(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }
}

fn start() -> Server {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Server {
    start_on(&mesh(), extra, &[])
}

/// Spawns `meshq serve` on port 0 over `mesh` and reads the port it
/// announces on stderr once ready (no polling, no sleeps).
pub(super) fn start_on(mesh: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut cmd = meshq();
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--mesh"])
        .arg(mesh)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut metrics = None;
    let mut http = None;
    let port = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        log.lock().unwrap().push(line.clone());
        if let Some(addr) = line.strip_prefix("meshq metrics on http://") {
            let addr = addr.trim_end_matches("/metrics");
            metrics = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
        }
        if let Some(addr) = line
            .strip_prefix("meshq web catalog on http://")
            .or_else(|| line.strip_prefix("meshq web catalog on https://"))
        {
            let addr = addr.trim_end_matches('/');
            http = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
        }
        if let Some(addr) = line.strip_prefix("meshq serving Flight SQL on ") {
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Server {
        child,
        port,
        metrics,
        http,
        log,
    }
}

pub(super) async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

pub(super) async fn login(server: &Server, user: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = client(server).await;
    c.handshake(user, &format!("{user}-demo")).await.unwrap();
    c
}

pub(super) async fn fetch(
    c: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> (arrow::datatypes::SchemaRef, Vec<RecordBatch>) {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = c.do_get(ticket).await.unwrap();
    let mut batches = Vec::new();
    while let Some(b) = stream.try_next().await.unwrap() {
        batches.push(b);
    }
    let schema = stream
        .schema()
        .cloned()
        .expect("stream starts with its schema");
    (schema, batches)
}

pub(super) async fn query(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = c.execute(sql.to_string(), None).await.unwrap();
    let declared = info.clone().try_decode_schema().unwrap();
    let (schema, batches) = fetch(c, info).await;
    assert_eq!(
        *schema, declared,
        "DoGet schema differs from FlightInfo schema"
    );
    batches
}

pub(super) fn text(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

pub(super) fn status_of(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn principals_see_what_their_contracts_allow() {
    let server = start();
    let mut ana = login(&server, "ana").await;
    let rows = query(
        &mut ana,
        "SELECT region, count(*) AS n FROM sales.orders GROUP BY 1",
    )
    .await;
    assert_eq!(
        text(&rows),
        "+--------+------+\n| region | n    |\n+--------+------+\n| EMEA   | 5178 |\n+--------+------+"
    );
    let mut gina = login(&server, "gina").await;
    let rows = query(
        &mut gina,
        "SELECT order_id, email FROM sales.orders ORDER BY order_id LIMIT 2",
    )
    .await;
    assert_eq!(
        rows[0].schema().field(1).data_type(),
        &DataType::Utf8,
        "no view types on the wire"
    );
    assert_eq!(
        text(&rows),
        "+----------+--------------+\n| order_id | email        |\n+----------+--------------+\n| O0000001 | d***@***.com |\n| O0000002 | y***@***.com |\n+----------+--------------+"
    );

    // Denied table, bad SQL, missing table: each its own code, no values.
    let err = ana
        .execute("SELECT * FROM payments.transactions".into(), None)
        .await
        .unwrap_err();
    let s = status_of(err);
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(
        s.message(),
        "permission denied: `ana` may not read table `payments.transactions`; it requires one of the roles global-analyst, finance"
    );
    let s = status_of(ana.execute("SELEC 1".into(), None).await.unwrap_err());
    assert_eq!(s.code(), Code::InvalidArgument);
    let s = status_of(
        ana.execute("SELECT * FROM sales.nope".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::NotFound);
    let s = status_of(
        ana.execute("CREATE VIEW v AS SELECT 1".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn zero_rows_still_carry_the_schema() {
    let server = start();
    let mut pat = login(&server, "pat").await;
    let info = pat
        .execute(
            "SELECT order_id, total_amount FROM sales.orders WHERE false".into(),
            None,
        )
        .await
        .unwrap();
    let (schema, batches) = fetch(&mut pat, info).await;
    assert_eq!(schema.fields().len(), 2);
    assert_eq!(schema.field(1).data_type(), &DataType::Decimal128(12, 2));
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[tokio::test]
async fn authentication() {
    let server = start();
    let mut c = client(&server).await;
    let err = c.handshake("ana", "wrong").await.unwrap_err();
    assert!(err.to_string().contains("invalid credentials"), "{err}");
    let err = c.handshake("nobody", "x").await.unwrap_err();
    assert!(err.to_string().contains("invalid credentials"), "{err}");
    // No token: refused.
    let s = status_of(c.execute("SELECT 1".into(), None).await.unwrap_err());
    assert_eq!(s.code(), Code::Unauthenticated);
    // Basic credentials without base64 padding on a plain call ("ben:ben-demo"
    // is 12 bytes, so its base64 has no padding to drop; "ana:ana-demo" too) —
    // use a name whose encoding is padded.
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode("root:root-demo");
    assert!(!encoded.ends_with('='));
    let padded = base64::engine::general_purpose::STANDARD.encode("root:root-demo");
    assert!(padded.ends_with('='), "{padded}");
    let mut c = client(&server).await;
    c.set_header("authorization", format!("Basic {encoded}"));
    let rows = query(&mut c, "SELECT current_user AS u").await;
    assert_eq!(rows[0].column(0).as_string::<i32>().value(0), "root");
    // Many sessions per user.
    let mut a1 = login(&server, "ana").await;
    let mut a2 = login(&server, "ana").await;
    assert_ne!(a1.token(), a2.token());
    query(&mut a1, "SELECT 1").await;
    query(&mut a2, "SELECT 1").await;
}

#[tokio::test]
async fn prepared_statements_with_parameters() {
    let server = start();
    let mut ana = login(&server, "ana").await;
    let mut stmt = ana
        .prepare(
            "SELECT count(*) AS n FROM sales.orders WHERE status = $1".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(stmt.parameter_schema().unwrap().fields().len(), 1);
    assert_eq!(stmt.dataset_schema().unwrap().field(0).name(), "n");
    let params =
        RecordBatch::try_from_iter([("$1", Arc::new(StringArray::from(vec!["placed"])) as _)])
            .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let (_, batches) = fetch(&mut ana, info).await;
    let n = batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    // The same count through plain SQL, as ana (EMEA only).
    let direct = query(
        &mut ana,
        "SELECT count(*) AS n FROM sales.orders WHERE status = 'placed'",
    )
    .await;
    assert_eq!(
        n,
        direct[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    );
    assert!(n > 0);
    stmt.close().await.unwrap();

    // JDBC-style `?` parameters.
    let mut stmt = ana
        .prepare(
            "SELECT count(*) AS n FROM sales.orders WHERE status = ? AND item_count > ?".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(stmt.parameter_schema().unwrap().fields().len(), 2);
    let params = RecordBatch::try_from_iter([
        ("$1", Arc::new(StringArray::from(vec!["placed"])) as _),
        ("$2", Arc::new(arrow::array::Int32Array::from(vec![0])) as _),
    ])
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let (_, batches) = fetch(&mut ana, info).await;
    assert_eq!(
        batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        n
    );

    // A prepared update is refused for a non-admin.
    let err = ana
        .prepare("DROP TABLE sales.orders".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status_of(err).code(), Code::PermissionDenied);
}

#[tokio::test]
async fn metadata_rpcs_show_only_what_the_principal_may_see() {
    let server = start();
    let mut ana = login(&server, "ana").await;
    let info = ana.get_catalogs().await.unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    assert_eq!(b[0].column(0).as_string::<i32>().value(0), "mesh");

    let info = ana
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: Some("s%".into()),
        })
        .await
        .unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    let schemas: Vec<_> = b[0].column(1).as_string::<i32>().iter().flatten().collect();
    assert_eq!(schemas, vec!["sales"]);

    let info = ana
        .get_tables(CommandGetTables {
            catalog: Some("mesh".into()),
            db_schema_filter_pattern: None,
            table_name_filter_pattern: Some("%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    let tables: Vec<String> = (0..b[0].num_rows())
        .map(|i| {
            format!(
                "{}.{} {}",
                b[0].column(1).as_string::<i32>().value(i),
                b[0].column(2).as_string::<i32>().value(i),
                b[0].column(3).as_string::<i32>().value(i)
            )
        })
        .collect();
    // Payments are not readable for ana (the Customer 360 built from them
    // is); `meta` is there for everyone.
    assert_eq!(
        tables,
        vec![
            "customer360.profile_360 TABLE",
            "customers.profiles TABLE",
            "logistics.shipments TABLE",
            "marketing.segments TABLE",
            "meta.columns SYSTEM TABLE",
            "meta.lineage SYSTEM TABLE",
            "meta.my_access SYSTEM TABLE",
            "meta.products SYSTEM TABLE",
            "meta.quality SYSTEM TABLE",
            "meta.tables SYSTEM TABLE",
            "meta.whoami SYSTEM TABLE",
            "sales.orders TABLE",
        ]
    );
    let tables: Vec<String> = tables
        .iter()
        .map(|t| t.split(' ').next().unwrap().to_string())
        .collect();
    // The table schema carries ARROW:FLIGHT:SQL metadata and no view types.
    let orders = tables.iter().position(|t| t == "sales.orders").unwrap();
    let schema_bytes = b[0].column(4).as_binary::<i32>().value(orders);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    let email = schema.field_with_name("email").unwrap();
    assert_eq!(email.data_type(), &DataType::Utf8);
    assert_eq!(email.metadata()["ARROW:FLIGHT:SQL:TABLE_NAME"], "orders");
    // The contract's description and, for ana, the mask on the column.
    assert_eq!(
        email.metadata()["ARROW:FLIGHT:SQL:REMARKS"],
        "Contact email given at checkout; null for guest checkouts."
    );
    assert_eq!(email.metadata()["meshq.classification"], "pii");
    assert_eq!(email.metadata()["meshq.masked"], "true");
    assert_eq!(email.metadata()["meshq.mask_kind"], "partial");
    let region = schema.field_with_name("region").unwrap();
    assert_eq!(region.metadata()["meshq.masked"], "false");
    assert!(!region.metadata().contains_key("meshq.mask_kind"));

    let info = ana
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("sales".into()),
            table: "orders".into(),
        })
        .await
        .unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    assert_eq!(b[0].column(3).as_string::<i32>().value(0), "order_id");

    let info = ana
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerReadOnly,
            SqlInfo::SqlIdentifierQuoteChar,
        ])
        .await
        .unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    assert_eq!(b[0].num_rows(), 3);

    let info = ana.get_table_types().await.unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    let types: Vec<_> = b[0].column(0).as_string::<i32>().iter().flatten().collect();
    assert_eq!(types, ["SYSTEM TABLE", "TABLE", "VIEW"]);

    let info = ana
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let (_, b) = fetch(&mut ana, info).await;
    assert!(b[0].num_rows() >= 10);

    let info = ana
        .get_exported_keys(arrow_flight::sql::CommandGetExportedKeys {
            catalog: None,
            db_schema: Some("sales".into()),
            table: "orders".into(),
        })
        .await
        .unwrap();
    let (schema, b) = fetch(&mut ana, info).await;
    assert_eq!(schema.fields().len(), 13);
    assert_eq!(b.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[tokio::test]
async fn session_options_set_the_default_schema() {
    use arrow_flight::Action;
    use meshq_flight_server::session_options as so;
    use prost::Message;

    let server = start();
    let mut gina = login(&server, "gina").await;
    let mut req = so::SetSessionOptionsRequest::default();
    req.session_options
        .insert("schema".into(), so::string_value("sales"));
    req.session_options
        .insert("bogus".into(), so::string_value("x"));
    let mut results = gina
        .do_action(Action::new("SetSessionOptions", req.encode_to_vec()))
        .await
        .unwrap();
    let body = results.try_next().await.unwrap().unwrap();
    let result = so::SetSessionOptionsResult::decode(body.body.as_ref()).unwrap();
    assert_eq!(result.errors.len(), 1);
    assert_eq!(result.errors["bogus"].value, so::INVALID_NAME);
    // Unqualified names now resolve in `sales`, for this session only.
    let rows = query(&mut gina, "SELECT count(*) AS n FROM orders").await;
    assert_eq!(
        rows[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        12000
    );
    let mut results = gina
        .do_action(Action::new("GetSessionOptions", Vec::new()))
        .await
        .unwrap();
    let body = results.try_next().await.unwrap().unwrap();
    let got = so::GetSessionOptionsResult::decode(body.body.as_ref()).unwrap();
    assert_eq!(got.session_options["schema"], so::string_value("sales"));
    let mut other = login(&server, "gina").await;
    let s = status_of(
        other
            .execute("SELECT count(*) FROM orders".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code(), Code::NotFound);
    // CloseSession ends the token.
    let mut results = gina
        .do_action(Action::new("CloseSession", Vec::new()))
        .await
        .unwrap();
    let body = results.try_next().await.unwrap().unwrap();
    assert_eq!(
        so::CloseSessionResult::decode(body.body.as_ref())
            .unwrap()
            .status,
        so::CLOSED
    );
    let s = status_of(gina.execute("SELECT 1".into(), None).await.unwrap_err());
    assert_eq!(s.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn cancel_flight_info_stops_a_running_query() {
    use arrow_flight::{Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus};
    use prost::Message;

    let server = start();
    let mut gina = login(&server, "gina").await;
    // Big enough to still be streaming when the cancel arrives.
    let info = gina
        .execute(
            "SELECT value, value * 2 AS twice FROM generate_series(1, 200000000)".into(),
            None,
        )
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = gina.do_get(ticket).await.unwrap();
    let first = stream.try_next().await.unwrap();
    assert!(first.is_some());
    let req = CancelFlightInfoRequest {
        info: Some(info.clone()),
    };
    let mut results = gina
        .do_action(Action::new("CancelFlightInfo", req.encode_to_vec()))
        .await
        .unwrap();
    let body = results.try_next().await.unwrap().unwrap();
    let result = CancelFlightInfoResult::decode(body.body.as_ref()).unwrap();
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    // The stream ends early instead of delivering 200M rows.
    let mut rows = first.map(|b| b.num_rows()).unwrap_or(0);
    while let Ok(Some(b)) = stream.try_next().await {
        rows += b.num_rows();
    }
    assert!(rows < 200_000_000, "the query ran to the end");
    // Nothing is running for that ticket any more.
    let mut results = gina
        .do_action(Action::new(
            "CancelFlightInfo",
            CancelFlightInfoRequest { info: Some(info) }.encode_to_vec(),
        ))
        .await
        .unwrap();
    let body = results.try_next().await.unwrap().unwrap();
    let result = CancelFlightInfoResult::decode(body.body.as_ref()).unwrap();
    assert_eq!(result.status, CancelStatus::NotCancellable as i32);
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let server = start_with(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(key.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", server.port))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    c.handshake("pat", "pat-demo").await.unwrap();
    let rows = query(&mut c, "SELECT count(*) AS n FROM customers.profiles").await;
    assert_eq!(
        rows[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        2000
    );
    // A plaintext client cannot talk to it.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut c = FlightSqlServiceClient::new(plain);
        assert!(c.handshake("pat", "pat-demo").await.is_err());
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let mut server = start_with(&["--shutdown-grace", "1"]);
    let mut c = login(&server, "gina").await;
    query(&mut c, "SELECT 1").await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn bearer_jwt_logs_in_with_its_claims() {
    // A small mesh whose meshq.yaml trusts HS256 tokens from issuer `idp`.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("ops/data")).unwrap();
    std::fs::write(root.join("ops/data/t.csv"), "region,n\nEMEA,1\nAMER,2\n").unwrap();
    std::fs::write(
        root.join("ops/t.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: p\nstatus: active\ndomain: ops\noutputPorts:\n  - { name: t, version: '1', contractId: c }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("ops/t.odcs.yaml"),
        "apiVersion: v3.1.0\nkind: DataContract\nid: c\nversion: '1'\nstatus: active\nservers:\n  - { server: local, type: local, format: csv, path: ./data/t.csv }\nschema:\n  - name: t\n    customProperties:\n      - { property: readRoles, value: [analyst] }\n      - { property: rowFilters, value: [ { id: own, expression: \"region = principal_attr('region')\" } ] }\n    properties:\n      - { name: region, logicalType: string, description: r }\n      - { name: n, logicalType: integer, description: n }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("meshq.yaml"),
        "auth:\n  jwt: { issuer: idp, audience: meshq, hs256_secret: { env: MESHQ_TEST_JWT_KEY }, roles_claim: groups, attribute_claims: [region] }\n",
    )
    .unwrap();
    let server = start_on(
        root,
        &[],
        &[("MESHQ_TEST_JWT_KEY", "jwt-test-key-of-at-least-32-bytes!!")],
    );

    let token = |key: &str, iss: &str, exp_offset: i64| {
        let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_offset;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "jo", "iss": iss, "aud": "meshq", "exp": exp, "groups": ["analyst"], "region": "AMER"}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let mut c = client(&server).await;
    c.set_token(token("jwt-test-key-of-at-least-32-bytes!!", "idp", 600));
    let rows = query(&mut c, "SELECT current_user AS u, region, n FROM ops.t").await;
    assert_eq!(
        text(&rows),
        "+----+--------+---+\n| u  | region | n |\n+----+--------+---+\n| jo | AMER   | 2 |\n+----+--------+---+"
    );
    for bad in [
        token("other-key", "idp", 600),
        token("jwt-test-key-of-at-least-32-bytes!!", "evil", 600),
        token("jwt-test-key-of-at-least-32-bytes!!", "idp", -3600),
    ] {
        let mut c = client(&server).await;
        c.set_token(bad);
        let s = status_of(c.execute("SELECT 1".into(), None).await.unwrap_err());
        assert_eq!(s.code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn port_file_holds_the_bound_port() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let server = start_with(&["--port-file", port_file.to_str().unwrap()]);
    // Written before the server announces itself on stderr.
    let written: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, server.port);
    let mut c = login(&server, "pat").await;
    query(&mut c, "SELECT 1").await;
}

/// A query's result schema describes the columns it selects from mesh
/// tables (also through an alias) with the contract's description and
/// classification; computed columns carry nothing. (Masks are in
/// `GetTables` and `meta`: a reload between GetFlightInfo and DoGet may
/// change them, and DoGet sends the announced schema.)
#[tokio::test]
async fn result_schemas_carry_column_descriptions() {
    let server = start();
    let mut ana = login(&server, "ana").await;
    let batches = query(
        &mut ana,
        "SELECT o.email, o.region, upper(o.status) AS s FROM sales.orders o LIMIT 1",
    )
    .await;
    let schema = batches[0].schema();
    let email = schema.field_with_name("email").unwrap().metadata();
    assert_eq!(
        email["ARROW:FLIGHT:SQL:REMARKS"],
        "Contact email given at checkout; null for guest checkouts."
    );
    assert_eq!(email["meshq.classification"], "pii");
    assert!(!email.contains_key("meshq.mask_kind"));
    let region = schema.field_with_name("region").unwrap().metadata();
    assert_eq!(
        region["ARROW:FLIGHT:SQL:REMARKS"],
        "Sales region: EMEA, AMER or APAC."
    );
    assert!(schema.field_with_name("s").unwrap().metadata().is_empty());
}

/// Clients may ask, by call headers, for view types and for compressed
/// IPC; the answers are the same values, masked alike, in the schema
/// GetFlightInfo announced. An unknown value is refused by name.
#[tokio::test]
async fn wire_options_keep_view_types_and_compress_on_request() {
    let server = start();
    let sql = "SELECT order_id, email, region FROM sales.orders ORDER BY order_id";
    let mut ana = login(&server, "ana").await;
    let plain = query(&mut ana, sql).await;
    assert_eq!(plain[0].schema().field(1).data_type(), &DataType::Utf8);
    let expected = text(&plain);
    let variants: [&[(&str, &str)]; 4] = [
        &[("x-meshq-view-types", "true")],
        &[("x-meshq-ipc-compression", "lz4")],
        &[("x-meshq-ipc-compression", "zstd")],
        &[
            ("x-meshq-view-types", "true"),
            ("x-meshq-ipc-compression", "lz4"),
        ],
    ];
    for headers in variants {
        let mut c = login(&server, "ana").await;
        for (k, v) in headers {
            c.set_header(*k, *v);
        }
        let batches = query(&mut c, sql).await;
        let views = headers.iter().any(|(k, _)| *k == "x-meshq-view-types");
        let email = batches[0].schema().field(1).data_type().clone();
        assert_eq!(
            email,
            if views {
                DataType::Utf8View
            } else {
                DataType::Utf8
            },
            "{headers:?}"
        );
        let cast: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(plain[0].schema().fields())
                    .map(|(c, f)| arrow::compute::cast(c, f.data_type()).unwrap())
                    .collect();
                RecordBatch::try_new(plain[0].schema(), columns).unwrap()
            })
            .collect();
        assert_eq!(text(&cast), expected, "{headers:?}");
    }
    // The bodies on the wire are compressed: fewer bytes than plain.
    let mut body_bytes = Vec::new();
    for compression in ["none", "lz4", "zstd"] {
        let mut c = login(&server, "ana").await;
        let info = c.execute(sql.into(), None).await.unwrap();
        let mut request = tonic::Request::new(info.endpoint[0].ticket.clone().unwrap());
        let token = format!("Bearer {}", c.token().unwrap());
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-meshq-ipc-compression", compression.parse().unwrap());
        let mut stream = c.inner_mut().do_get(request).await.unwrap().into_inner();
        let mut bytes = 0;
        while let Some(data) = stream.try_next().await.unwrap() {
            bytes += data.data_body.len();
        }
        body_bytes.push(bytes);
    }
    assert!(
        body_bytes[1] < body_bytes[0] && body_bytes[2] < body_bytes[0],
        "{body_bytes:?}"
    );
    let mut c = login(&server, "ana").await;
    c.set_header("x-meshq-ipc-compression", "brotli");
    let e = status_of(c.execute(sql.into(), None).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("x-meshq-ipc-compression"), "{e}");
}

/// No metadata reply holds a value of the data: GetTables with schemas,
/// GetDbSchemas, GetPrimaryKeys, GetSqlInfo and the `meta` tables, as ana,
/// checked against the raw values pat reads.
#[tokio::test]
async fn metadata_replies_hold_no_data_values() {
    let server = start();
    let mut pat = login(&server, "pat").await;
    let mut secrets = std::collections::BTreeSet::new();
    for sql in [
        "SELECT customer_id, full_name, email, phone FROM customers.profiles",
        "SELECT order_id, email FROM sales.orders",
        "SELECT payment_id, card_number FROM payments.transactions",
    ] {
        for b in query(&mut pat, sql).await {
            for c in b.columns() {
                let c = arrow::compute::cast(c, &DataType::Utf8).unwrap();
                secrets.extend(
                    c.as_string::<i32>()
                        .iter()
                        .flatten()
                        .filter(|v| v.len() >= 5)
                        .map(str::to_string),
                );
            }
        }
    }
    assert!(secrets.len() > 1000, "{}", secrets.len());
    let mut ana = login(&server, "ana").await;
    let mut replies = Vec::new();
    let info = ana
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    replies.extend(fetch(&mut ana, info).await.1);
    let info = ana
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    replies.extend(fetch(&mut ana, info).await.1);
    let info = ana
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("sales".into()),
            table: "orders".into(),
        })
        .await
        .unwrap();
    replies.extend(fetch(&mut ana, info).await.1);
    let info = ana.get_sql_info(vec![]).await.unwrap();
    replies.extend(fetch(&mut ana, info).await.1);
    for table in meshq_engine::meta::META_TABLES {
        replies.extend(query(&mut ana, &format!("SELECT * FROM meta.{table}")).await);
    }
    let text: String = replies
        .iter()
        .map(|b| {
            arrow::util::pretty::pretty_format_batches(std::slice::from_ref(b))
                .unwrap()
                .to_string()
        })
        .collect();
    // GetTables' schemas are IPC bytes: search them as text too.
    let bytes: String = replies
        .iter()
        .flat_map(|b| b.columns().iter())
        .filter_map(|c| c.as_binary_opt::<i32>())
        .flat_map(|a| a.iter().flatten())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(text.len() > 1000 && bytes.len() > 1000);
    // Single words by set lookup, values with spaces by search.
    let find = |hay: &str| -> Option<String> {
        let words: std::collections::HashSet<&str> = hay
            .split(|c: char| !(c.is_alphanumeric() || "@.-_+*".contains(c)))
            .collect();
        secrets
            .iter()
            .find(|s| {
                if s.contains(char::is_whitespace) {
                    hay.contains(s.as_str())
                } else {
                    words.contains(s.as_str())
                }
            })
            .cloned()
    };
    // The control: the detector finds raw values in a reply that has them.
    let raw = query(
        &mut pat,
        "SELECT email, full_name FROM customers.profiles LIMIT 3",
    )
    .await;
    let raw = arrow::util::pretty::pretty_format_batches(&raw)
        .unwrap()
        .to_string();
    assert!(find(&raw).is_some(), "the detector finds nothing");
    if let Some(leak) = find(&format!("{text}\n{bytes}")) {
        panic!("a metadata reply holds the data value {leak:?}");
    }
}

/// Every statement of the bypass corpus through Flight SQL's `DoGet` as
/// it serves results (`direct_get`: a statement's ticket, a prepared
/// statement's, and the prepared statement's own command as the ticket):
/// nothing pat sees raw shows in ana's results or errors. As a control,
/// pat's results hold those values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bypass_corpus_through_do_get_leaks_nothing() {
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
        CommandPreparedStatementQuery, ProstMessageExt,
    };
    use arrow_flight::{Action, Ticket};
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    meshq_tests::write_fixture_mesh(&mesh).await.unwrap();
    let server = start_on(&mesh, &[], &[]);
    let mut ana = login(&server, "ana").await;
    let mut pat = login(&server, "pat").await;
    let values = |batches: &[RecordBatch]| {
        let mut out = std::collections::BTreeSet::new();
        for b in batches {
            for c in b.columns() {
                let c = arrow::compute::cast(c, &DataType::Utf8).unwrap();
                out.extend(
                    c.as_string::<i32>()
                        .iter()
                        .flatten()
                        .filter(|v| v.len() > 4)
                        .map(str::to_string),
                );
            }
        }
        out
    };
    let mut secrets = std::collections::BTreeSet::new();
    for sql in [
        "SELECT customer_id, email, full_name, phone FROM customers.profiles",
        "SELECT email FROM sales.orders WHERE email IS NOT NULL",
        "SELECT order_id FROM sales.orders WHERE region <> 'EMEA'",
        "SELECT card_number, payment_id FROM payments.transactions WHERE card_number IS NOT NULL",
    ] {
        secrets.extend(values(&query(&mut pat, sql).await));
    }
    assert!(secrets.len() > 300, "{}", secrets.len());

    // A statement's answer, or its error's text, by one of the three tickets.
    async fn answer(
        c: &mut FlightSqlServiceClient<Channel>,
        sql: &str,
        how: usize,
    ) -> Result<Vec<RecordBatch>, String> {
        let failed = |e: arrow_flight::error::FlightError| e.to_string();
        let ticket = match how {
            0 => {
                let info = c.execute(sql.to_string(), None).await.map_err(failed)?;
                info.endpoint[0].ticket.clone().unwrap()
            }
            1 => {
                let mut prepared = c.prepare(sql.to_string(), None).await.map_err(failed)?;
                let info = prepared.execute().await.map_err(failed)?;
                info.endpoint[0].ticket.clone().unwrap()
            }
            _ => {
                let action = Action {
                    r#type: "CreatePreparedStatement".into(),
                    body: ActionCreatePreparedStatementRequest {
                        query: sql.to_string(),
                        transaction_id: None,
                    }
                    .as_any()
                    .encode_to_vec()
                    .into(),
                };
                let mut results = c.do_action(action).await.map_err(failed)?;
                let result = results
                    .try_next()
                    .await
                    .map_err(|s| s.to_string())?
                    .expect("a prepared statement");
                let prepared: ActionCreatePreparedStatementResult = Any::decode(&*result.body)
                    .unwrap()
                    .unpack()
                    .unwrap()
                    .unwrap();
                let command = CommandPreparedStatementQuery {
                    prepared_statement_handle: prepared.prepared_statement_handle,
                };
                Ticket::new(command.as_any().encode_to_vec())
            }
        };
        let stream = c.do_get(ticket).await.map_err(failed)?;
        stream.try_collect().await.map_err(failed)
    }

    let corpus = meshq_tests::bypass_corpus(&mesh.display().to_string());
    let mut answered = 0;
    for (i, sql) in corpus.iter().enumerate() {
        let shown = match answer(&mut ana, sql, i % 3).await {
            Ok(batches) => {
                answered += batches.iter().any(|b| b.num_rows() > 0) as usize;
                let mut shown = values(&batches);
                shown.insert(text(&batches));
                shown
            }
            Err(e) => [e].into(),
        };
        for s in &shown {
            if let Some(secret) = secrets.iter().find(|v| s.contains(v.as_str())) {
                panic!("`{sql}` shows ana the raw value {secret}");
            }
        }
    }
    assert!(answered > 20, "only {answered} answered");
    // The detector finds what it looks for, by each ticket.
    for how in 0..3 {
        let rows = answer(
            &mut pat,
            "SELECT email FROM customers.profiles LIMIT 5",
            how,
        )
        .await
        .unwrap();
        assert!(
            values(&rows).iter().any(|v| secrets.contains(v)),
            "ticket {how}"
        );
    }
}

/// A statement's ticket carries the statement, never a principal: `DoGet`
/// with no token is refused, and another user's `DoGet` of it runs as that
/// user, with that user's policies, not as the user who asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_ticket_runs_as_whoever_fetches_it() {
    let server = start();
    let sql = "SELECT count(*) AS n FROM sales.orders";
    let mut ana = login(&server, "ana").await;
    let info = ana.execute(sql.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut anonymous = client(&server).await;
    let status = status_of(anonymous.do_get(ticket.clone()).await.unwrap_err());
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let fetch = |c: &mut FlightSqlServiceClient<Channel>, t: arrow_flight::Ticket| {
        let mut c = c.clone();
        async move {
            let rows: Vec<RecordBatch> = c.do_get(t).await.unwrap().try_collect().await.unwrap();
            text(&rows)
        }
    };
    let mut gina = login(&server, "gina").await;
    let as_gina = fetch(&mut gina, ticket.clone()).await;
    let as_ana = fetch(&mut ana, ticket).await;
    assert_eq!(as_gina, text(&query(&mut gina, sql).await));
    assert_eq!(as_ana, text(&query(&mut ana, sql).await));
    assert_ne!(as_gina, as_ana, "ana's row filter leaves fewer orders");
}
