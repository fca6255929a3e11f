//! The abuse suite against the real server: requests that crash, exhaust
//! or walk around limits, logins that block others or name users, forged
//! tokens, sessions that do not end, and plans that outlive their table.
//! Each reproduces an attack and asserts that it now fails closed: the
//! server stays up, memory stays bounded, the answer is an error that names
//! no secret.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow_flight::Action;
use arrow_flight::sql::client::FlightSqlServiceClient;
use base64::Engine as _;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

use super::flight::{Server, client, login, query, start_on, status_of, text};
use super::ops::{copy_mesh, metric, reload_now, try_query};

/// Current resident memory of a process, from /proc, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn alive(server: &mut Server) -> bool {
    server.child.try_wait().unwrap().is_none()
}

fn append(mesh: &Path, yaml: &str) {
    let path = mesh.join("meshq.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(yaml);
    std::fs::write(path, text).unwrap();
}

fn start(mesh: &Path, extra: &[&str]) -> Server {
    start_on(mesh, extra, &[])
}

/// One generated statement: what it is, and its text.
struct Case {
    what: String,
    sql: String,
}

fn case(what: impl Into<String>, sql: String) -> Case {
    Case {
        what: what.into(),
        sql,
    }
}

/// Deep and wide statements of every shape the parser and planner recurse
/// over, at sizes from harmless to hostile, plus a seeded random mix.
fn hostile_statements() -> Vec<Case> {
    let mut out = Vec::new();
    for n in [250, 1_000, 5_000, 100_000] {
        out.push(case(
            format!("1+1+… with {n} terms"),
            format!("SELECT 1{}", "+1".repeat(n - 1)),
        ));
    }
    let ids = |n: usize| {
        (0..n)
            .map(|i| format!("'O{i:07}'"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for (table, n) in [
        ("sales.orders", 10_000),
        ("sales.orders", 100_000),
        ("logistics.shipments", 10_000),
        ("customers.profiles", 10_000),
    ] {
        let column = if table == "customers.profiles" {
            "customer_id"
        } else {
            "order_id"
        };
        out.push(case(
            format!("{table} IN list of {n}"),
            format!(
                "SELECT count(*) FROM {table} WHERE {column} IN ({})",
                ids(n)
            ),
        ));
    }
    for depth in [50, 200, 1_000] {
        out.push(case(
            format!("{depth} nested parentheses"),
            format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)),
        ));
    }
    for depth in [30, 100] {
        let mut sql = "SELECT order_id FROM sales.orders".to_string();
        for _ in 0..depth {
            sql = format!("SELECT * FROM ({sql}) t");
        }
        out.push(case(format!("{depth} nested subqueries"), sql));
    }
    for n in [50, 300] {
        let mut ctes = vec!["c0 AS (SELECT order_id FROM sales.orders)".to_string()];
        for i in 1..n {
            ctes.push(format!("c{i} AS (SELECT * FROM c{})", i - 1));
        }
        out.push(case(
            format!("{n} chained CTEs"),
            format!("WITH {} SELECT count(*) FROM c{}", ctes.join(", "), n - 1),
        ));
    }
    for n in [500, 3_000] {
        let terms: Vec<String> = (0..n).map(|i| format!("item_count <> {i}")).collect();
        out.push(case(
            format!("AND chain of {n}"),
            format!(
                "SELECT count(*) FROM sales.orders WHERE {}",
                terms.join(" AND ")
            ),
        ));
    }
    let terms: Vec<String> = (0..500).map(|i| format!("item_count = {i}")).collect();
    out.push(case(
        "OR chain of 500",
        format!(
            "SELECT count(*) FROM sales.orders WHERE {}",
            terms.join(" OR ")
        ),
    ));
    for n in [200, 2_000] {
        out.push(case(
            format!("UNION ALL of {n}"),
            vec!["SELECT 1 AS x"; n].join(" UNION ALL "),
        ));
    }
    let whens: Vec<String> = (0..1_000)
        .map(|i| format!("WHEN item_count = {i} THEN {i}"))
        .collect();
    out.push(case(
        "CASE with 1000 branches",
        format!(
            "SELECT sum(CASE {} ELSE 0 END) FROM sales.orders",
            whens.join(" ")
        ),
    ));
    for depth in [100, 1_000] {
        out.push(case(
            format!("{depth} nested function calls"),
            format!("SELECT {}1{}", "abs(".repeat(depth), ")".repeat(depth)),
        ));
    }
    for depth in [30, 48, 200] {
        for cast in ["CAST", "TRY_CAST"] {
            out.push(case(
                format!("{depth} nested {cast}s"),
                format!(
                    "SELECT {}1{}",
                    format!("{cast}(").repeat(depth),
                    " AS BIGINT)".repeat(depth)
                ),
            ));
        }
    }
    for kb in [800, 2_048] {
        out.push(case(
            format!("{kb} KiB string literal"),
            format!("SELECT length('{}')", "x".repeat(kb * 1024)),
        ));
    }
    // A seeded mix of the shapes above at random sizes.
    let mut rng = meshq_cli::rng::Rng(7);
    for i in 0..24 {
        let n = 1 + rng.below(3_000) as usize;
        let sql = match rng.below(5) {
            0 => format!("SELECT 1{}", "*1".repeat(n)),
            1 => format!("SELECT {}1{}", "(".repeat(n % 300), ")".repeat(n % 300)),
            2 => format!(
                "SELECT count(*) FROM sales.orders WHERE order_id NOT IN ({})",
                ids(n)
            ),
            3 => format!(
                "SELECT {}",
                vec!["length(email)"; n.min(2_000)].join(" + ") + " FROM sales.orders"
            ),
            _ => vec!["SELECT order_id FROM sales.orders"; n % 60 + 1].join(" UNION "),
        };
        out.push(case(format!("random #{i}"), sql));
    }
    out
}

/// No statement, however deep or wide, loses the server: each is answered
/// or refused with a clear error, and the server answers the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_wide_statements_never_lose_the_server() {
    let (_dir, mesh) = copy_mesh();
    append(&mesh, "limits: { defaults: { query_timeout: 30s } }\n");
    let mut server = start(&mesh, &[]);
    let mut c = login(&server, "ana").await;
    let mut refused = 0;
    let mut report = String::new();
    for case in hostile_statements() {
        let started = Instant::now();
        eprintln!("-> {}", case.what);
        let outcome = try_query(&mut c, &case.sql).await;
        assert!(
            alive(&mut server),
            "the server died on: {}\n{}",
            case.what,
            server.log_text()
        );
        let line = match &outcome {
            Ok(b) => format!(
                "ok ({} rows)",
                b.iter().map(|b| b.num_rows()).sum::<usize>()
            ),
            Err(s) => {
                refused += 1;
                assert!(
                    matches!(
                        s.code(),
                        Code::InvalidArgument
                            | Code::ResourceExhausted
                            | Code::DeadlineExceeded
                            | Code::NotFound
                    ),
                    "{}: unexpected {:?}: {}",
                    case.what,
                    s.code(),
                    s.message()
                );
                assert!(s.message().len() < 2_000, "{}: {}", case.what, s.message());
                format!("{:?}: {}", s.code(), s.message())
            }
        };
        let line = format!(
            "{:<40} {:>7.2}s  {}\n",
            case.what,
            started.elapsed().as_secs_f64(),
            line.chars().take(150).collect::<String>()
        );
        eprint!("{line}");
        report.push_str(&line);
        let one = query(&mut c, "SELECT 1 AS one").await;
        assert_eq!(one[0].num_rows(), 1, "after {}", case.what);
    }
    assert!(
        refused >= 4,
        "the largest statements must be refused:\n{report}"
    );
    assert!(report.contains("limits.max_expression_depth"), "{report}");
    assert!(report.contains("limits.max_statement_bytes"), "{report}");
}

/// Every way to run a statement goes through the same limits and audit.
#[tokio::test]
async fn limits_hold_on_every_path() {
    let (dir, mesh) = copy_mesh();
    append(
        &mesh,
        "limits: { defaults: { query_timeout: 3s, max_result_rows: 1000, query_memory: 64MiB } }\n",
    );
    let audit = dir.path().join("audit.jsonl");
    let server = start(&mesh, &["--audit-log", audit.to_str().unwrap()]);
    let mut ana = login(&server, "ana").await;
    // A query sent as an update is refused, not run outside the limits.
    let e = status_of(
        ana.execute_update("SELECT * FROM sales.orders".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("this is a query, not an update"),
        "{e}"
    );
    // EXECUTE of a prepared query runs as a query: under the result limit,
    // streamed, audited with its tables and policies.
    query(&mut ana, "PREPARE big AS SELECT * FROM sales.orders").await;
    let e = try_query(&mut ana, "EXECUTE big").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.max_result_rows"), "{e}");
    let e = try_query(&mut ana, "EXECUTE big").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // Memory a function would allocate by argument is bounded.
    let e = try_query(&mut ana, "SELECT repeat('x', 700000000)")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.query_memory"), "{e}");
    // A statement (DDL) runs under the time limit too.
    let mut root = login(&server, "root").await;
    let started = Instant::now();
    let e = try_query(
        &mut root,
        "CREATE TABLE slow AS SELECT count(*) AS n FROM generate_series(1, 100000000000)",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let e = status_of(
        root.execute_update(
            "CREATE TABLE slow2 AS SELECT count(*) AS n FROM generate_series(1, 100000000000)"
                .into(),
            None,
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    let audit = std::fs::read_to_string(&audit).unwrap();
    let execute: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["sql_shape"] == "EXECUTE big")
        .collect();
    assert_eq!(execute.len(), 2, "{audit}");
    for r in &execute {
        assert_eq!(r["tables"], serde_json::json!(["sales.orders"]), "{r}");
        assert_eq!(r["statement"], "query", "{r}");
        assert!(
            r["row_filters"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("sales.orders:own_region")),
            "{r}"
        );
    }
    assert!(
        audit.contains("\"error_code\":\"DEADLINE_EXCEEDED\""),
        "{audit}"
    );
}

/// A login holds kilobytes; Basic on every call reuses one session; a
/// principal's sessions are bounded.
#[tokio::test]
async fn sessions_are_small_and_bounded() {
    let (_dir, mesh) = copy_mesh();
    append(&mesh, "limits: { max_sessions_per_principal: 8 }\n");
    let server = start(&mesh, &["--metrics-bind", "127.0.0.1:0"]);
    let pid = server.child.id();
    let mut warm = login(&server, "ana").await;
    query(&mut warm, "SELECT count(*) FROM sales.orders").await;
    let before = rss(pid);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ben:ben-demo")
    );
    let mut c = client(&server).await;
    c.set_header("authorization", basic);
    for _ in 0..100 {
        query(&mut c, "SELECT 1 AS one").await;
    }
    // ana's handshake, and ben's one session for 100 Basic calls.
    assert_eq!(metric(&server, "meshq_sessions_active"), 2.0);
    eprintln!(
        "RSS grew by {} KiB over 100 Basic calls",
        rss(pid).saturating_sub(before) / 1024
    );
    for _ in 0..200 {
        login(&server, "gina").await;
    }
    assert_eq!(metric(&server, "meshq_sessions_active"), 10.0);
    assert_eq!(
        metric(
            &server,
            "meshq_sessions_evicted_total{reason=\"per_principal\"}"
        ),
        192.0
    );
    let grown = rss(pid).saturating_sub(before);
    eprintln!("RSS grew by {} KiB over 300 logins", grown / 1024);
    // Before, each login kept a full DataFusion session (~18 MiB).
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    // Evicted sessions are gone; the newest still work.
    query(&mut warm, "SELECT 1 AS one").await;
}

/// Wrong passwords cost the attacker, not the other users; after a few the
/// client is throttled without hashing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_passwords_neither_block_others_nor_go_on_forever() {
    let (_dir, mesh) = copy_mesh();
    let server = start(&mesh, &["--metrics-bind", "127.0.0.1:0"]);
    let mut gina = login(&server, "gina").await;
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for i in 0..16 {
        let stop = std::sync::Arc::clone(&stop);
        attackers.push(tokio::spawn(async move {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut c = FlightSqlServiceClient::new(channel);
            let mut refusals = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let user = if i % 2 == 0 { "ana" } else { "nobody" };
                let e = c.handshake(user, "wrong").await.unwrap_err();
                refusals.push(e.to_string());
            }
            refusals
        }));
    }
    let mut latencies = Vec::new();
    for _ in 0..40 {
        let t = Instant::now();
        query(&mut gina, "SELECT 1 AS one").await;
        latencies.push(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refusals = Vec::new();
    for a in attackers {
        refusals.extend(a.await.unwrap());
    }
    latencies.sort();
    eprintln!(
        "SELECT 1 under 16 password guessers: p50 {:?}, max {:?}; {} guesses refused",
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        refusals.len()
    );
    // Every guess was refused, and the client was throttled.
    assert!(
        refusals
            .iter()
            .all(|r| r.contains("invalid credentials") || r.contains("too many failed logins"))
    );
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("too many failed logins")),
        "no throttling after {} failures",
        refusals.len()
    );
    // While throttled, even the right password is refused from this client.
    let mut c = client(&server).await;
    let e = c
        .handshake("ana", "ana-demo")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("too many failed logins"), "{e}");
    assert!(metric(&server, "meshq_auth_failures_total") >= refusals.len() as f64);
}

/// An empty or short HS256 secret disables JWT login; `meshq validate`
/// says so.
#[tokio::test]
async fn a_short_jwt_secret_disables_jwt_login() {
    let (_dir, mesh) = copy_mesh();
    append(
        &mesh,
        "auth: { jwt: { issuer: idp, audience: meshq, hs256_secret: { env: MESHQ_TEST_JWT_EMPTY }, roles_claim: groups } }\n",
    );
    let out = super::meshq()
        .args(["validate", "--mesh"])
        .arg(&mesh)
        .env("MESHQ_TEST_JWT_EMPTY", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("auth.jwt.hs256_secret: the value of `MESHQ_TEST_JWT_EMPTY` is 0 bytes long; an HS256 secret must have at least 32 bytes; JWT login is disabled"),
        "{stdout}"
    );
    let server = start_on(&mesh, &[], &[("MESHQ_TEST_JWT_EMPTY", "")]);
    // A token signed with the empty key, claiming pii-reader.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "mallory", "iss": "idp", "aud": "meshq",
            "exp": jsonwebtoken::get_current_timestamp() + 600, "groups": ["analyst", "global-analyst", "pii-reader"]}),
        &jsonwebtoken::EncodingKey::from_secret(b""),
    )
    .unwrap();
    let mut c = client(&server).await;
    c.set_token(forged);
    let e = status_of(
        c.execute("SELECT email FROM sales.orders".into(), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(
        server.logs("JWT login is disabled").await,
        "{}",
        server.log_text()
    );
}

/// `CloseSession` ends the token whatever the case of its scheme.
#[tokio::test]
async fn close_session_ends_the_token_in_any_case() {
    let (_dir, mesh) = copy_mesh();
    let server = start(&mesh, &[]);
    let mut c = client(&server).await;
    let token = c.handshake("ana", "ana-demo").await.unwrap();
    let token = String::from_utf8(token.to_vec()).unwrap();
    let mut lower = client(&server).await;
    lower.set_header("authorization", format!("bearer {token}"));
    query(&mut lower, "SELECT 1 AS one").await;
    let result: Vec<_> = lower
        .do_action(Action::new("CloseSession", ""))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(result.len(), 1);
    let e = try_query(&mut lower, "SELECT 1 AS one").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut upper = client(&server).await;
    upper.set_token(token);
    let e = try_query(&mut upper, "SELECT 1 AS one").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
}

/// A view over a table that a reload removed answers NOT_FOUND; it never
/// reads the table raw.
#[tokio::test]
async fn a_view_over_a_removed_table_fails_closed_after_a_reload() {
    let (_dir, mesh) = copy_mesh();
    // root may read sales.orders (in EMEA) and run DDL.
    let yaml = std::fs::read_to_string(mesh.join("meshq.yaml")).unwrap();
    let yaml = yaml.replace(
        "    roles: [admin]",
        "    roles: [admin, analyst]\n    attributes: { region: EMEA }",
    );
    std::fs::write(mesh.join("meshq.yaml"), yaml).unwrap();
    let server = start(
        &mesh,
        &["--metrics-bind", "127.0.0.1:0", "--reload-interval", "0"],
    );
    let mut root = login(&server, "root").await;
    query(&mut root, "CREATE VIEW v AS SELECT * FROM sales.orders").await;
    let rows = query(&mut root, "SELECT region, count(*) AS n FROM v GROUP BY 1").await;
    assert_eq!(
        text(&rows),
        "+--------+------+\n| region | n    |\n+--------+------+\n| EMEA   | 5178 |\n+--------+------+"
    );
    std::fs::remove_file(mesh.join("sales/orders.odps.yaml")).unwrap();
    std::fs::remove_file(mesh.join("sales/orders.odcs.yaml")).unwrap();
    reload_now(&server).await;
    for sql in ["SELECT count(*) FROM v", "SELECT email FROM v LIMIT 1"] {
        let e = try_query(&mut root, sql).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{sql}: {e}");
        assert!(
            e.message()
                .contains("table `sales.orders` is not served by the mesh"),
            "{e}"
        );
    }
}

/// With `discovery.visibility: readable-only`, Flight metadata lists and
/// names only what the caller may read.
#[tokio::test]
async fn readable_only_metadata_hides_unreadable_tables() {
    let (_dir, mesh) = copy_mesh();
    append(&mesh, "discovery: { visibility: readable-only }\n");
    let server = start(&mesh, &[]);
    let mut ana = login(&server, "ana").await;
    let schemas = ana
        .get_db_schemas(arrow_flight::sql::CommandGetDbSchemas::default())
        .await
        .unwrap();
    let (_, batches) = super::flight::fetch(&mut ana, schemas).await;
    assert!(!text(&batches).contains("payments"), "{}", text(&batches));
    let tables = ana
        .get_tables(arrow_flight::sql::CommandGetTables::default())
        .await
        .unwrap();
    let (_, batches) = super::flight::fetch(&mut ana, tables).await;
    assert!(
        !text(&batches).contains("transactions"),
        "{}",
        text(&batches)
    );
    let hidden = try_query(&mut ana, "SELECT * FROM payments.transactions")
        .await
        .unwrap_err();
    let missing = try_query(&mut ana, "SELECT * FROM payments.nothing")
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), missing.code());
    assert_eq!(
        hidden.message().replace("transactions", "X"),
        missing.message().replace("nothing", "X")
    );
}

/// A cross join that never ends, over in-memory `meta` tables (anyone may
/// query them): other clients are still answered while it runs, and it
/// stops when its client goes away. Before, it held every runtime thread:
/// nobody could connect and it ran on after its client left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_join_over_meta_neither_starves_others_nor_outlives_its_client() {
    let (_dir, mesh) = copy_mesh();
    let server = start(&mesh, &["--metrics-bind", "127.0.0.1:0"]);
    let mut ana = login(&server, "ana").await;
    let heavy = tokio::spawn(async move {
        let _ = try_query(
            &mut ana,
            "SELECT count(DISTINCT a.column_name || b.column_name || c.column_name || d.column_name || e.column_name || f.column_name) \
             FROM meta.columns a, meta.columns b, meta.columns c, meta.columns d, meta.columns e, meta.columns f",
        )
        .await;
    });
    super::ops::eventually(30, "the join running", || {
        metric(&server, "meshq_queries_running") >= 1.0
    })
    .await;
    let mut ben = login(&server, "ben").await;
    let answered =
        tokio::time::timeout(Duration::from_secs(60), query(&mut ben, "SELECT 1 AS one")).await;
    assert!(answered.is_ok(), "ben got no answer while the join ran");
    heavy.abort();
    let _ = heavy.await;
    super::ops::eventually(30, "the join stopped", || {
        metric(&server, "meshq_queries_running") == 0.0
    })
    .await;
}
