//! Operating `meshq serve`: hot reload, storage faults, resource limits,
//! the audit log, metrics and health, against the real binary on loopback.
//! Each test serves its own copy of the demo mesh, so it can change files.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::Code;
use tonic::transport::Channel;

use super::demo_dir;
use super::flight::{Server, fetch, login, query, start_on, status_of, text};

/// A private copy of the demo mesh.
/// Appends `yaml` to the mesh's `meshq.yaml`.
pub(super) fn append(mesh: &Path, yaml: &str) {
    let path = mesh.join("meshq.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(yaml);
    std::fs::write(path, text).unwrap();
}

pub(super) fn copy_mesh() -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    copy(&demo_dir().join("mesh"), &mesh);
    (dir, mesh)
}

/// A demo mesh written afresh (Iceberg metadata holds absolute paths, so a
/// copy would still read the original's files).
pub(super) fn fresh_mesh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    super::write_demo(&mesh);
    (dir, mesh)
}

/// Replaces a file the way deploy tools do: write aside, then rename.
pub(super) fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `GET /metrics`, parsed into `name{labels}` → value.
pub(super) fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let port = server.metrics.expect("started with --metrics-bind");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What holds memory between queries: the result cache and the copies of
/// accelerated tables (the demo serves `customers.profiles` from memory).
pub(super) fn resident_bytes(m: &BTreeMap<String, f64>) -> f64 {
    m.get("meshq_result_cache_bytes").copied().unwrap_or(0.0)
        + m.iter()
            // The demo's one copy in memory (`marketing.segments` is
            // materialised on disk).
            .filter(|(k, _)| {
                k.starts_with("meshq_table_acceleration_bytes{") && k.contains("customers.profiles")
            })
            .map(|(_, v)| v)
            .sum::<f64>()
}

/// Serves `customers.profiles` from its files rather than from a copy.
pub(super) fn without_acceleration(mesh: &Path) {
    let path = mesh.join("customers/profiles.odps.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("property: acceleration"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text);
    std::fs::write(&path, kept).unwrap();
}

/// Waits until the demo's copy of `customers.profiles` and its
/// materialised `marketing.segments` are served: until then the refresher
/// holds memory while it builds them.
pub(super) async fn copies_built(server: &Server) {
    for (table, product) in [
        ("customers.profiles", "urn:dataproduct:customers:profiles"),
        ("marketing.segments", "urn:dataproduct:marketing:segments"),
    ] {
        let key = format!("meshq_table_accelerated{{table=\"{table}\",product=\"{product}\"}}");
        eventually(60, &format!("the copy of {table}"), || {
            metric(server, &key) == 1.0
        })
        .await;
    }
}

pub(super) fn metric(server: &Server, key: &str) -> f64 {
    scrape(server).get(key).copied().unwrap_or(0.0)
}

/// Waits until `cond` holds, for at most `secs`.
pub(super) async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `sql`; the error status, or the batches.
pub(super) async fn try_query(
    c: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let info = c.execute(sql.to_string(), None).await.map_err(status_of)?;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stream = c.do_get(ticket).await.map_err(status_of)?;
    stream.try_collect().await.map_err(status_of)
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

/// The profiles contract of `mesh` and its text with the phone mask
/// changed from redact to nullify (not written yet).
fn phone_mask_nullified(mesh: &Path) -> (PathBuf, String) {
    let contract = mesh.join("customers/profiles.odcs.yaml");
    let old = std::fs::read_to_string(&contract).unwrap();
    let new = old.replace(
        "{ kind: redact, exceptRoles: [pii-reader] }",
        "{ kind: nullify, exceptRoles: [pii-reader] }",
    );
    assert_ne!(old, new);
    (contract, new)
}

/// Sends SIGHUP and waits for the reload to be done.
pub(super) async fn reload_now(server: &Server) {
    let version = metric(server, "meshq_mesh_version");
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    eventually(30, "a reload", || {
        metric(server, "meshq_mesh_version") > version
    })
    .await;
}

/// Phones as `ana` sees them, classified: the redact mask keeps the format
/// and turns every digit into 9; the nullify mask gives NULL.
#[derive(Debug, PartialEq, Clone, Copy)]
enum PhoneMask {
    Redacted,
    Null,
}

fn classify(batches: &[RecordBatch]) -> Result<PhoneMask, String> {
    let mut redacted = 0;
    let mut null = 0;
    let mut rows = 0;
    for b in batches {
        let col = b.column(0).as_string::<i32>();
        for i in 0..col.len() {
            rows += 1;
            if col.is_null(i) {
                null += 1;
            } else if col
                .value(i)
                .chars()
                .all(|c| !c.is_ascii_digit() || c == '9')
            {
                redacted += 1;
            }
        }
    }
    match (rows, redacted, null) {
        (0, _, _) => Err("no rows".into()),
        (n, r, _) if r == n => Ok(PhoneMask::Redacted),
        (n, _, z) if z == n => Ok(PhoneMask::Null),
        (n, r, z) => Err(format!("mixed result: {n} rows, {r} redacted, {z} null")),
    }
}

/// `DoGet` runs the plan `GetFlightInfo` made, once, in the same session,
/// on the same mesh version; a prepared statement runs the plan made when
/// it was prepared. Anything else plans the statement again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_plans_run_once_per_ticket_and_are_planned_again_after_ddl_or_a_reload() {
    let (_dir, mesh) = copy_mesh();
    let server = start_on(&mesh, &["--metrics-bind", "127.0.0.1:0"], &[]);
    let reused = || metric(&server, "meshq_statement_plans_reused_total");
    let mut root = login(&server, "root").await;
    query(&mut root, "CREATE TABLE public.gone AS SELECT 7 AS x").await;
    let info = root
        .execute("SELECT x FROM public.gone".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    // Another session of the same principal has no plan for the ticket:
    // it plans as itself, and the scratch table is not its own.
    let mut other = login(&server, "root").await;
    let e = status_of(other.do_get(ticket.clone()).await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let before = reused();
    let (_, batches) = fetch(&mut root, info).await;
    assert_eq!(text(&batches), "+---+\n| x |\n+---+\n| 7 |\n+---+");
    assert_eq!(reused(), before + 1.0);
    // A ticket's plan is taken once: fetched again, it is planned again.
    let mut stream = root.do_get(ticket).await.unwrap();
    while stream.try_next().await.unwrap().is_some() {}
    assert_eq!(reused(), before + 1.0);
    // A prepared statement: each execution binds the plan made by
    // CreatePreparedStatement, and its DoGet runs the announced plan.
    let mut prepared = root
        .prepare("SELECT x + 1 AS y FROM public.gone".into(), None)
        .await
        .unwrap();
    for _ in 0..2 {
        let (_, batches) = fetch(&mut root, prepared.execute().await.unwrap()).await;
        assert_eq!(batches[0].num_rows(), 1);
    }
    assert_eq!(reused(), before + 5.0);
    // DDL in the session forgets its kept plans: the table is gone.
    let info = root
        .execute("SELECT x FROM public.gone".into(), None)
        .await
        .unwrap();
    query(&mut root, "DROP TABLE public.gone").await;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let e = status_of(root.do_get(ticket).await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = status_of(prepared.execute().await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert_eq!(reused(), before + 5.0);

    // A ticket pat (pii-reader) was given, fetched by ana: ana's own
    // plan runs, under her mask.
    let mut ana = login(&server, "ana").await;
    let mut pat = login(&server, "pat").await;
    let sql = "SELECT phone FROM customers.profiles";
    let info = pat.execute(sql.into(), None).await.unwrap();
    let before = reused();
    let (_, batches) = fetch(&mut ana, info).await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Redacted));
    assert_eq!(reused(), before);
    let info = pat.execute(sql.into(), None).await.unwrap();
    let (_, batches) = fetch(&mut pat, info).await;
    assert!(classify(&batches).is_err(), "pat sees phones unmasked");

    // A reload between GetFlightInfo and DoGet: the new policy applies,
    // to an announced query and to a prepared statement (whose plan and
    // session were made on the old version).
    let info = ana
        .execute("SELECT phone FROM customers.profiles".into(), None)
        .await
        .unwrap();
    let mut prepared = ana.prepare(sql.into(), None).await.unwrap();
    let (_, batches) = fetch(&mut ana, prepared.execute().await.unwrap()).await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Redacted));
    let (contract, new) = phone_mask_nullified(&mesh);
    replace_file(&contract, &new);
    reload_now(&server).await;
    let (_, batches) = fetch(&mut ana, info).await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Null));
    let before = reused();
    let (_, batches) = fetch(&mut ana, prepared.execute().await.unwrap()).await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Null));
    // Planned again at GetFlightInfo; that plan is the one DoGet runs.
    assert_eq!(reused(), before + 1.0);
    // Without a reload the announced plan is the one that runs.
    let info = ana
        .execute("SELECT phone FROM customers.profiles".into(), None)
        .await
        .unwrap();
    let (_, batches) = fetch(&mut ana, info).await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_swaps_atomically_and_keeps_the_last_good_version() {
    let (_dir, mesh) = copy_mesh();
    let server = start_on(
        &mesh,
        &["--reload-interval", "0.2", "--metrics-bind", "127.0.0.1:0"],
        &[],
    );
    // A session with a scratch table, and a prepared statement, made before
    // any reload.
    let mut root = login(&server, "root").await;
    query(&mut root, "CREATE TABLE public.notes AS SELECT 7 AS x").await;
    let mut gina = login(&server, "gina").await;
    let mut prepared = gina
        .prepare(
            "SELECT count(*) AS n FROM payments.transactions".into(),
            None,
        )
        .await
        .unwrap();
    let n = count(&fetch(&mut gina, prepared.execute().await.unwrap()).await.1);
    assert!(n > 0);

    // Clients loop while the phone mask changes from redact to nullify.
    let (contract, new) = phone_mask_nullified(&mesh);
    let mut loops = Vec::new();
    // How many loops have had an answer: the contract changes only once
    // every loop is running.
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..4 {
        let mut c = login(&server, "ana").await;
        let started = Arc::clone(&started);
        loops.push(tokio::spawn(async move {
            let mut seen: Vec<PhoneMask> = Vec::new();
            let until = Instant::now() + Duration::from_secs(60);
            // Until the new version has been seen five times.
            while seen.iter().filter(|m| **m == PhoneMask::Null).count() < 5 {
                assert!(Instant::now() < until, "the new mask never appeared");
                let batches = query(&mut c, "SELECT phone FROM customers.profiles").await;
                seen.push(classify(&batches).unwrap());
                if seen.len() == 1 {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            seen
        }));
    }
    eventually(30, "every loop running", || {
        started.load(std::sync::atomic::Ordering::SeqCst) == 4
    })
    .await;
    replace_file(&contract, &new);
    for l in loops {
        let seen = l.await.unwrap();
        // Old, then new, never back: each result was all-old or all-new.
        let first_new = seen.iter().position(|m| *m == PhoneMask::Null).unwrap();
        assert!(
            seen[first_new..].iter().all(|m| *m == PhoneMask::Null),
            "{seen:?}"
        );
    }
    assert_eq!(metric(&server, "meshq_reloads_total{result=\"ok\"}"), 2.0);

    // A broken contract: the last good version keeps serving.
    replace_file(&contract, &new.replace("schema:", "schema: [broken\n"));
    eventually(30, "a partial reload", || {
        metric(&server, "meshq_reloads_total{result=\"partial\"}") >= 1.0
    })
    .await;
    let mut ana = login(&server, "ana").await;
    let batches = query(&mut ana, "SELECT phone FROM customers.profiles").await;
    assert_eq!(classify(&batches), Ok(PhoneMask::Null));
    let log = server.log_text();
    assert!(
        log.contains("customers.profiles") && log.contains("previous version is still served"),
        "{log}"
    );

    // A removed product is gone; the prepared statement over it fails
    // cleanly; the scratch table survives.
    let version = metric(&server, "meshq_mesh_version");
    std::fs::remove_file(mesh.join("payments/transactions.odps.yaml")).unwrap();
    eventually(30, "a reload", || {
        metric(&server, "meshq_mesh_version") > version
    })
    .await;
    let e = status_of(prepared.execute().await.unwrap_err());
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("transactions"), "{e}");
    let e = try_query(&mut gina, "SELECT * FROM payments.transactions")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let notes = query(&mut root, "SELECT x FROM public.notes").await;
    assert_eq!(notes[0].num_rows(), 1);

    // A broken meshq.yaml is rejected as a whole: logins still work.
    let config = mesh.join("meshq.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    replace_file(&config, &format!("{text}\nprincipals: [\n"));
    eventually(30, "a rejected reload", || {
        metric(&server, "meshq_reloads_total{result=\"rejected\"}") >= 1.0
    })
    .await;
    let mut pat = login(&server, "pat").await;
    let rows = query(&mut pat, "SELECT count(*) FROM sales.orders").await;
    assert!(count(&rows) > 0);
    assert!(
        server.logs("reload rejected").await,
        "{}",
        server.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_fail_one_product_and_heal_without_a_restart() {
    let (_dir, mesh) = fresh_mesh();
    // Its storage is what fails here; a copy would hide that.
    without_acceleration(&mesh);
    let server = start_on(
        &mesh,
        &["--reload-interval", "0", "--metrics-bind", "127.0.0.1:0"],
        &[],
    );
    let mut gina = login(&server, "gina").await;
    // Each reads data (a bare count(*) can be answered from statistics).
    let profiles = "SELECT count(*) FROM customers.profiles WHERE length(email) > 0";
    let orders = "SELECT count(*) FROM sales.orders WHERE length(order_id) > 0";
    let shipments = "SELECT count(*) FROM logistics.shipments WHERE length(carrier) > 0";
    let n_profiles = count(&query(&mut gina, profiles).await);
    let n_orders = count(&query(&mut gina, orders).await);
    let n_shipments = count(&query(&mut gina, shipments).await);

    // The data folder removed, then restored (files are listed at every
    // scan: a missing folder is a fault, not an empty table).
    let folder = mesh.join("customers/data/profiles");
    let aside = mesh.join("profiles.aside");
    std::fs::rename(&folder, &aside).unwrap();
    let e = try_query(&mut gina, profiles).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        e.message().contains("customers.profiles")
            && e.message().contains("urn:dataproduct:customers:profiles"),
        "{e}"
    );
    assert_eq!(count(&query(&mut gina, orders).await), n_orders);
    std::fs::rename(&aside, &folder).unwrap();
    assert_eq!(count(&query(&mut gina, profiles).await), n_profiles);
    let part = folder.join("part-00000.parquet");

    // A corrupt data file, then restored.
    let good = std::fs::read(&part).unwrap();
    std::fs::write(&part, vec![7u8; good.len()]).unwrap();
    let e = try_query(&mut gina, "SELECT * FROM customers.profiles")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DataLoss, "{e}");
    assert!(e.message().contains("customers.profiles"), "{e}");
    assert_eq!(count(&query(&mut gina, orders).await), n_orders);
    std::fs::write(&part, &good).unwrap();
    assert_eq!(count(&query(&mut gina, profiles).await), n_profiles);

    // A truncated Delta log: the reload keeps the version it had.
    let log_dir = mesh.join("sales/data/orders/_delta_log");
    let mut commits: Vec<PathBuf> = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let last = commits.last().unwrap().clone();
    let commit = std::fs::read(&last).unwrap();
    std::fs::write(&last, &commit[..commit.len() / 2]).unwrap();
    reload_now(&server).await;
    assert_eq!(
        metric(&server, "meshq_reloads_total{result=\"partial\"}"),
        1.0
    );
    assert_eq!(count(&query(&mut gina, orders).await), n_orders);
    server.logs("urn:dataproduct:sales:orders").await;
    let log = server.log_text();
    assert!(
        log.contains("sales.orders") && log.contains("urn:dataproduct:sales:orders"),
        "{log}"
    );
    std::fs::write(&last, &commit).unwrap();

    // The Iceberg data files gone: a clear error naming the product.
    let data = mesh.join("logistics/data/shipments/data");
    let aside = mesh.join("shipments-data.aside");
    std::fs::rename(&data, &aside).unwrap();
    let e = try_query(&mut gina, shipments).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        e.message().contains("logistics.shipments")
            && e.message().contains("urn:dataproduct:logistics:shipments"),
        "{e}"
    );
    assert_eq!(count(&query(&mut gina, profiles).await), n_profiles);
    std::fs::rename(&aside, &data).unwrap();
    assert_eq!(count(&query(&mut gina, shipments).await), n_shipments);

    // The Iceberg metadata gone, and a reload meanwhile: the reload keeps
    // the previous version and the log names the product; its queries fail
    // with a clear error until the files are back, then answer again.
    let metadata = mesh.join("logistics/data/shipments/metadata");
    let aside = mesh.join("metadata.aside");
    std::fs::rename(&metadata, &aside).unwrap();
    reload_now(&server).await;
    assert_eq!(
        metric(&server, "meshq_reloads_total{result=\"partial\"}"),
        2.0
    );
    server.logs("urn:dataproduct:logistics:shipments").await;
    let log = server.log_text();
    assert!(
        log.contains("logistics.shipments") && log.contains("urn:dataproduct:logistics:shipments"),
        "{log}"
    );
    let e = try_query(&mut gina, shipments).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        e.message().contains("urn:dataproduct:logistics:shipments")
            && e.message().contains("not found"),
        "{e}"
    );
    assert_eq!(count(&query(&mut gina, orders).await), n_orders);
    std::fs::rename(&aside, &metadata).unwrap();
    assert_eq!(count(&query(&mut gina, shipments).await), n_shipments);

    // Still the same process, and every product answers after a reload.
    reload_now(&server).await;
    assert_eq!(metric(&server, "meshq_reloads_total{result=\"ok\"}"), 2.0);
    assert_eq!(count(&query(&mut gina, orders).await), n_orders);
    assert_eq!(count(&query(&mut gina, shipments).await), n_shipments);
}

/// The demo's meshq.yaml with `limits` appended.
fn with_limits(mesh: &Path, limits: &str) {
    let config = mesh.join("meshq.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n{limits}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resource_limits_time_out_spill_and_queue() {
    let (dir, mesh) = copy_mesh();
    let spill = dir.path().join("spill");
    with_limits(
        &mesh,
        &format!(
            "limits:
  spill_dir: {}
  max_concurrent_queries: 1
  max_queued_queries: 1
  queue_timeout: 30s
  principals:
    ben: {{ query_timeout: 1s }}
    ana: {{ max_result_rows: 100 }}
    gina: {{ query_memory: 4MiB }}
",
            spill.display()
        ),
    );
    let audit = dir.path().join("audit.jsonl");
    let server = start_on(
        &mesh,
        &[
            "--metrics-bind",
            "127.0.0.1:0",
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &[],
    );

    // A runaway query is cancelled at its time limit and its memory freed.
    let mut ben = login(&server, "ben").await;
    let started = Instant::now();
    let e = try_query(
        &mut ben,
        "SELECT sum(value) FROM range(100000000000) GROUP BY value % 1000003",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(e.message().contains("limits.query_timeout"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually(10, "the cancelled query to let go", || {
        let m = scrape(&server);
        m["meshq_queries_running"] == 0.0 && m["meshq_memory_reserved_bytes"] == resident_bytes(&m)
    })
    .await;

    // A client that stops reading does not hold its slot past the limit.
    let info = ben
        .execute("SELECT value FROM range(1000000000)".into(), None)
        .await
        .unwrap();
    let mut stalled = ben
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    stalled.try_next().await.unwrap().unwrap();
    eventually(10, "the stalled query to be stopped", || {
        let m = scrape(&server);
        m["meshq_queries_running"] == 0.0 && m["meshq_memory_reserved_bytes"] == resident_bytes(&m)
    })
    .await;
    let e = loop {
        match stalled.try_next().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a stopped query must not end as if complete"),
            Err(e) => break status_of(e),
        }
    };
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");

    // Too many rows: refused, with the limit's name.
    let mut ana = login(&server, "ana").await;
    let e = try_query(&mut ana, "SELECT * FROM sales.orders")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.max_result_rows"), "{e}");
    assert_eq!(
        query(&mut ana, "SELECT * FROM sales.orders LIMIT 100")
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        100
    );

    // Over its memory limit, a sort spills to the configured directory and
    // completes; an aggregate that cannot spill fails cleanly.
    let mut gina = login(&server, "gina").await;
    let sorted = query(
        &mut gina,
        "SELECT value FROM range(2000000) ORDER BY value DESC",
    )
    .await;
    assert_eq!(
        sorted.iter().map(|b| b.num_rows()).sum::<usize>(),
        2_000_000
    );
    let first = sorted[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>();
    assert_eq!(first.value(0), 1_999_999);
    assert!(metric(&server, "meshq_spilled_bytes_total") > 0.0);
    // The spill files went to the configured directory.
    assert!(
        std::fs::read_dir(&spill).unwrap().next().is_some(),
        "nothing in {}",
        spill.display()
    );
    let e = try_query(&mut gina, "SELECT array_agg(value) FROM range(4000000)")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.query_memory"), "{e}");

    // One query runs, one waits, the next is refused at once; the waiting
    // one runs when the first ends.
    let mut pat = login(&server, "pat").await;
    let info = pat
        .execute("SELECT value FROM range(1000000000)".into(), None)
        .await
        .unwrap();
    let mut holding = pat
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    holding.try_next().await.unwrap().unwrap();
    let waiting = {
        let mut c = login(&server, "gina").await;
        tokio::spawn(async move { try_query(&mut c, "SELECT count(*) FROM sales.orders").await })
    };
    eventually(10, "a queued query", || {
        metric(&server, "meshq_queries_queued") == 1.0
    })
    .await;
    let mut root = login(&server, "root").await;
    let e = try_query(&mut root, "SELECT 1").await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.max_queued_queries"), "{e}");
    drop(holding);
    let done = waiting.await.unwrap().unwrap();
    assert!(count(&done) > 0);

    // The server took all of that in its stride.
    let rows = query(&mut root, "SELECT 1 AS one").await;
    assert_eq!(rows[0].num_rows(), 1);
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert!(
        lines.contains("\"error_code\":\"DEADLINE_EXCEEDED\"")
            && lines.contains("\"error_code\":\"RESOURCE_EXHAUSTED\""),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_has_every_field_and_no_values() {
    let (dir, mesh) = copy_mesh();
    let audit = dir.path().join("audit.jsonl");
    let lineage = dir.path().join("lineage.jsonl");
    append(
        &mesh,
        &format!(
            "openlineage: {{ namespace: \"meshq://test\", file: {:?} }}\n",
            lineage.display().to_string()
        ),
    );
    let server = start_on(&mesh, &["--audit-log", audit.to_str().unwrap()], &[]);
    let mut ana = login(&server, "ana").await;
    let sql = "SELECT o.order_id, c.email FROM sales.orders o JOIN customers.profiles c \
               USING (customer_id) WHERE o.total_amount > 123.45 AND c.country = 'DE'";
    let rows: usize = query(&mut ana, sql)
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let e = try_query(
        &mut ana,
        "SELECT * FROM payments.transactions WHERE amount = 99.99",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut stranger = super::flight::client(&server).await;
    assert!(stranger.handshake("ana", "not-her-password").await.is_err());
    // Lineage events are written by a task of their own: wait for the three.
    eventually(10, "three lineage events", || {
        std::fs::read_to_string(&lineage)
            .map(|t| t.lines().count() >= 3)
            .unwrap_or(false)
    })
    .await;
    drop(server);

    let text = std::fs::read_to_string(&audit).unwrap();
    for secret in ["123.45", "'DE'", "99.99", "not-her-password", "ana-demo"] {
        assert!(!text.contains(secret), "the audit log holds `{secret}`");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ok = lines
        .iter()
        .find(|l| l["event"] == "query" && l["outcome"] == "ok")
        .expect("the query is audited");
    assert!(chrono::DateTime::parse_from_rfc3339(ok["ts"].as_str().unwrap()).is_ok());
    assert_eq!(ok["principal"], "ana");
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let query_id = ok["query_id"].as_str().unwrap();
    assert_eq!(query_id.len(), 36, "a UUID: {query_id}");
    assert_eq!(&query_id[14..15], "4", "version 4: {query_id}");
    assert_eq!(ok["call"], "statement");
    assert_eq!(ok["statement"], "query");
    assert_eq!(
        ok["sql_shape"],
        "SELECT o.order_id, c.email FROM sales.orders o JOIN customers.profiles c USING (customer_id) WHERE o.total_amount > ? AND c.country = ?"
    );
    assert_eq!(ok["sql_hash"].as_str().unwrap().len(), 16);
    assert_eq!(
        ok["tables"],
        serde_json::json!(["sales.orders", "customers.profiles"])
    );
    assert_eq!(
        ok["products"],
        serde_json::json!([
            "urn:dataproduct:customers:profiles",
            "urn:dataproduct:sales:orders"
        ])
    );
    let masks: Vec<&str> = ok["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        masks.contains(&"customers.profiles.email:hash"),
        "{masks:?}"
    );
    assert!(
        masks.contains(&"customers.profiles.phone:redact"),
        "{masks:?}"
    );
    assert_eq!(
        ok["row_filters"],
        serde_json::json!(["sales.orders:own_region", "customers.profiles:own_region"])
    );
    assert_eq!(
        ok["global_policies"],
        serde_json::json!(["pii-hash-default"])
    );
    assert_eq!(ok["rows"].as_u64().unwrap() as usize, rows);
    assert!(rows == 0 || ok["bytes"].as_u64().unwrap() > 0);
    assert!(ok["duration_ms"].is_u64() && ok["queued_ms"].is_u64());
    assert_eq!(ok["spilled_bytes"], 0);
    assert!(ok.get("error_code").is_none());
    assert_eq!(ok["mesh_version"], 1);

    let denied = lines
        .iter()
        .find(|l| l["event"] == "query" && l["outcome"] == "error")
        .expect("the denied query is audited");
    assert_eq!(denied["error_code"], "PERMISSION_DENIED");
    assert_eq!(
        denied["tables"],
        serde_json::json!(["payments.transactions"])
    );
    assert_eq!(
        denied["sql_shape"],
        "SELECT * FROM payments.transactions WHERE amount = ?"
    );
    let failed = lines
        .iter()
        .find(|l| l["event"] == "auth_failure")
        .expect("the failed login is audited");
    assert_eq!(failed["user"], "ana");
    assert_eq!(failed["error_code"], "UNAUTHENTICATED");
    assert!(failed["client"].as_str().unwrap().starts_with("127.0.0.1:"));

    // OpenLineage: START then COMPLETE for the query, under the audit
    // log's query id; a FAIL alone for the denied one; no literals.
    let text = std::fs::read_to_string(&lineage).unwrap();
    for secret in ["123.45", "'DE'", "99.99"] {
        assert!(!text.contains(secret), "a lineage event holds `{secret}`");
    }
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["run"]["runId"] == id).collect()
    };
    let run = of(query_id);
    let types: Vec<&str> = run
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["START", "COMPLETE"]);
    assert_eq!(run[0]["job"], run[1]["job"]);
    assert_eq!(run[0]["job"]["namespace"], "meshq://test");
    assert!(
        run[0]["job"]["name"]
            .as_str()
            .unwrap()
            .starts_with("query.")
    );
    let inputs: Vec<&str> = run[1]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["sales.orders", "customers.profiles"]);
    let orders = &run[1]["inputs"][0];
    assert_eq!(orders["namespace"], "meshq://test");
    assert_eq!(orders["facets"]["schema"]["fields"][0]["name"], "order_id");
    assert_eq!(
        orders["facets"]["dataSource"]["name"],
        "urn:dataproduct:sales:orders"
    );
    assert_eq!(
        run[1]["run"]["facets"]["meshq_principal"]["principal"],
        "ana"
    );
    assert_eq!(run[1]["schemaURL"], meshq_flight_server::lineage::SPEC);
    let denied = of(denied["query_id"].as_str().unwrap());
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["eventType"], "FAIL");
    assert_eq!(
        denied[0]["run"]["facets"]["errorMessage"]["message"],
        "the query failed with PERMISSION_DENIED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_describe_the_server() {
    let (_dir, mesh) = copy_mesh();
    let server = start_on(
        &mesh,
        &["--metrics-bind", "127.0.0.1:0", "--log-format", "json"],
        &[("MESHQ_LOG", "info")],
    );
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", server.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "arrow.flight.protocol.FlightService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    let profiles = "{table=\"customers.profiles\",product=\"urn:dataproduct:customers:profiles\"}";
    copies_built(&server).await;
    let mut pat = login(&server, "pat").await;
    query(&mut pat, "SELECT * FROM sales.orders").await;
    let _ = try_query(&mut pat, "SELECT * FROM nowhere.nothing").await;
    let m = scrape(&server);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
    assert_eq!(
        get("meshq_queries_total{kind=\"query\",outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        get("meshq_queries_total{kind=\"unplanned\",outcome=\"NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(
        get("meshq_query_duration_seconds_count{kind=\"query\"}"),
        1.0
    );
    assert_eq!(get("meshq_result_rows_total"), 12000.0);
    assert!(get("meshq_result_bytes_total") > 100_000.0);
    assert_eq!(
        get("meshq_product_scans_total{product=\"urn:dataproduct:sales:orders\"}"),
        1.0
    );
    assert_eq!(get("meshq_sessions_active"), 1.0);
    assert_eq!(get("meshq_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(get("meshq_ready"), 1.0);
    assert_eq!(get("meshq_tables_served"), 6.0);
    // The demo turns the result cache on: the one result is kept, its
    // bytes reserved from the memory pool, as are those of the copy of
    // `customers.profiles`.
    assert_eq!(get("meshq_result_cache_misses_total"), 1.0);
    assert_eq!(get("meshq_result_cache_hits_total"), 0.0);
    assert_eq!(get("meshq_result_cache_entries"), 1.0);
    assert!(get("meshq_result_cache_bytes") > 100_000.0);
    assert_eq!(get(&format!("meshq_table_accelerated{profiles}")), 1.0);
    assert_eq!(
        get(&format!("meshq_table_acceleration_failing{profiles}")),
        0.0
    );
    assert!(get(&format!("meshq_table_acceleration_bytes{profiles}")) > 0.0);
    assert_eq!(get("meshq_memory_reserved_bytes"), resident_bytes(&m));
    query(&mut pat, "SELECT * FROM sales.orders").await;
    let m = scrape(&server);
    assert_eq!(m["meshq_result_cache_hits_total"], 1.0);
    assert_eq!(m["meshq_result_rows_total"], 24000.0);
    assert!(get("meshq_mesh_loaded_timestamp_seconds") > 1.7e9);
    assert_eq!(get("meshq_auth_failures_total"), 0.0);
    // Freshness per table: the demo was written just now, so orders (Delta,
    // latency 1 d) is fresh; profiles has no SLA, so no `late` gauge.
    let orders = "{table=\"sales.orders\",product=\"urn:dataproduct:sales:orders\"}";
    let written = get(&format!("meshq_table_last_modified_seconds{orders}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - written < 86_400.0 && written <= now + 1.0,
        "{written}"
    );
    assert_eq!(get(&format!("meshq_table_freshness_late{orders}")), 0.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with("meshq_table_freshness_late{table=\"customers.profiles\"")),
        "{m:?}"
    );
    assert!(
        get(
            "meshq_table_last_modified_seconds{table=\"customers.profiles\",product=\"urn:dataproduct:customers:profiles\"}"
        ) > 1.7e9
    );

    // Logs are JSON objects, one per line, and hold no SQL literals.
    let log = server.log_text();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "INFO" && e["message"] == "mesh loaded"),
        "{log}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "query" && e["user"] == "pat"),
        "{log}"
    );
}

/// What one principal may see of `sales.orders`, checked on every result.
#[derive(Clone)]
struct Expect {
    user: &'static str,
    /// Regions the row filter lets through.
    regions: Vec<&'static str>,
    /// Whether pii is shown raw (pii-reader) or masked.
    raw_pii: bool,
    /// Order ids the principal can see, for point queries.
    ids: Vec<String>,
    /// `region|count` rows of the aggregation.
    by_region: Vec<String>,
    /// Rows of the full fetch.
    rows: usize,
}

fn strings(b: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let c = arrow::compute::cast(
        b.column_by_name(col).unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let c = c.as_string::<i32>();
    (0..c.len())
        .map(|i| (!c.is_null(i)).then(|| c.value(i).to_string()))
        .collect()
}

/// Checks every row of an orders result against what `e` may see.
fn check_orders(e: &Expect, batches: &[RecordBatch]) -> Result<usize, String> {
    let mut n = 0;
    for b in batches {
        let regions = strings(b, "region");
        let emails = strings(b, "email");
        let customers = strings(b, "customer_id");
        for i in 0..b.num_rows() {
            n += 1;
            let region = regions[i].as_deref().unwrap_or("");
            if !e.regions.contains(&region) {
                return Err(format!("{} saw a row of region {region}", e.user));
            }
            let customer = customers[i].as_deref().unwrap_or("");
            let hashed = customer.len() == 64 && customer.chars().all(|c| c.is_ascii_hexdigit());
            if hashed == e.raw_pii {
                return Err(format!("{} saw customer id {customer}", e.user));
            }
            if let Some(email) = emails[i].as_deref()
                && !email.is_empty()
                && email.contains("***@***") == e.raw_pii
            {
                return Err(format!("{} saw email {email}", e.user));
            }
        }
    }
    Ok(n)
}

fn rows_text(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Option<String>>> = (0..b.num_columns())
            .map(|i| strings(b, b.schema().field(i).name()))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| c[r].clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out
}

/// Peak resident memory of a process, from /proc, in bytes.
pub(super) fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

const POINT: &str =
    "SELECT order_id, customer_id, email, region FROM sales.orders WHERE order_id = ";
const BY_REGION: &str = "SELECT region, count(*) AS n, sum(total_amount) AS total FROM sales.orders GROUP BY region ORDER BY region";
const FULL: &str = "SELECT * FROM sales.orders";

/// 64 clients for a bounded time (MESHQ_LOAD_SECS; 60 s, or 20 s when
/// CI=true), mixing point queries, aggregations and full fetches as four
/// principals with different masks and row filters. Every result is checked
/// against what its principal may see; no errors are allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_under_load_each_see_only_their_own() {
    let secs: u64 = std::env::var("MESHQ_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::var("CI").as_deref() == Ok("true") {
            20
        } else {
            60
        });
    let (_dir, mesh) = copy_mesh();
    with_limits(
        &mesh,
        "limits:\n  memory: 512MiB\n  max_concurrent_queries: 16\n  max_queued_queries: 64\n  queue_timeout: 120s\n",
    );
    let server = start_on(&mesh, &["--metrics-bind", "127.0.0.1:0"], &[]);
    copies_built(&server).await;

    // What each principal may see, read once, one query at a time.
    let mut expects = Vec::new();
    for (user, regions, raw_pii) in [
        ("ana", vec!["EMEA"], false),
        ("ben", vec!["AMER"], false),
        ("gina", vec!["AMER", "APAC", "EMEA"], false),
        ("pat", vec!["AMER", "APAC", "EMEA"], true),
    ] {
        let mut c = login(&server, user).await;
        let full = query(&mut c, FULL).await;
        let mut e = Expect {
            user,
            regions,
            raw_pii,
            ids: Vec::new(),
            by_region: rows_text(&query(&mut c, BY_REGION).await),
            rows: 0,
        };
        e.rows = check_orders(&e, &full).unwrap();
        e.ids = full
            .iter()
            .flat_map(|b| strings(b, "order_id"))
            .flatten()
            .step_by(97)
            .collect();
        assert!(e.rows > 0 && !e.ids.is_empty());
        expects.push(e);
    }

    let until = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for i in 0..64usize {
        let e = expects[i % expects.len()].clone();
        let mut c = login(&server, e.user).await;
        clients.push(tokio::spawn(async move {
            let mut done = [0usize; 3];
            let mut errors = Vec::new();
            let mut k = i;
            while Instant::now() < until {
                k += 1;
                let kind = k % 3;
                let sql = match kind {
                    0 => format!("{POINT}'{}'", e.ids[k % e.ids.len()]),
                    1 => BY_REGION.to_string(),
                    _ => FULL.to_string(),
                };
                let checked = match try_query(&mut c, &sql).await {
                    Err(s) => Err(format!("{}: {s}", e.user)),
                    Ok(batches) => match kind {
                        0 => check_orders(&e, &batches).and_then(|n| {
                            (n == 1)
                                .then_some(())
                                .ok_or(format!("point query gave {n} rows"))
                        }),
                        1 => (rows_text(&batches) == e.by_region)
                            .then_some(())
                            .ok_or(format!("{}: aggregation differs", e.user)),
                        _ => check_orders(&e, &batches).and_then(|n| {
                            (n == e.rows)
                                .then_some(())
                                .ok_or(format!("{}: {n} rows, expected {}", e.user, e.rows))
                        }),
                    },
                };
                match checked {
                    Ok(()) => done[kind] += 1,
                    Err(m) => errors.push(m),
                }
            }
            (done, errors)
        }));
    }
    let mut totals = [0usize; 3];
    let mut errors = Vec::new();
    for c in clients {
        let (done, errs) = c.await.unwrap();
        for k in 0..3 {
            totals[k] += done[k];
        }
        errors.extend(errs);
    }
    let rss = peak_rss(server.child.id());
    let m = scrape(&server);
    println!(
        "load: {secs} s, 64 clients: {} point, {} aggregation, {} full fetch; server peak RSS {} MiB; {} errors",
        totals[0],
        totals[1],
        totals[2],
        rss >> 20,
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(totals.iter().all(|n| *n > 0), "{totals:?}");
    // Memory stays bounded: the pool is 512 MiB; the process, with its code
    // and caches, stays well under 2 GiB.
    assert!(rss < 2 << 30, "peak RSS {} MiB", rss >> 20);
    assert_eq!(m["meshq_queries_running"], 0.0);
    // Only the result cache and the copies hold memory once the queries
    // are done.
    assert_eq!(m["meshq_memory_reserved_bytes"], resident_bytes(&m));
    let ok = m["meshq_queries_total{kind=\"query\",outcome=\"ok\"}"] as usize;
    assert!(
        ok >= totals.iter().sum::<usize>(),
        "{ok} ok queries counted"
    );
}

/// A minimal HTTP/1.1 endpoint on 127.0.0.1 that answers 200 to every POST
/// and keeps the bodies.
fn lineage_receiver() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut started = false;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" && started {
                            break;
                        }
                        started = true;
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    sink.lock().unwrap().push(String::from_utf8(body).unwrap());
                    out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (port, bodies)
}

/// Events reach an HTTP endpoint; with the endpoint down, queries still
/// answer and the events are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_events_reach_an_endpoint_and_never_hold_up_a_query() {
    let (port, bodies) = lineage_receiver();
    let (_dir, mesh) = copy_mesh();
    append(
        &mesh,
        &format!("openlineage: {{ url: \"http://127.0.0.1:{port}/api/v1/lineage\" }}\n"),
    );
    let server = start_on(&mesh, &["--metrics-bind", "127.0.0.1:0"], &[]);
    let mut gina = login(&server, "gina").await;
    query(&mut gina, "SELECT count(*) FROM payments.transactions").await;
    eventually(10, "two events at the endpoint", || {
        bodies.lock().unwrap().len() >= 2
    })
    .await;
    let events: Vec<serde_json::Value> = bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(events[0]["eventType"], "START");
    assert_eq!(events[1]["eventType"], "COMPLETE");
    assert_eq!(events[0]["job"]["namespace"], "meshq://meshq");
    assert_eq!(events[1]["inputs"][0]["name"], "payments.transactions");
    drop(server);

    // Nothing listens: the query answers at once, the events are dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_dir, mesh) = copy_mesh();
    append(
        &mesh,
        &format!("openlineage: {{ url: \"http://127.0.0.1:{port}/\", timeout_ms: 200 }}\n"),
    );
    let server = start_on(&mesh, &["--metrics-bind", "127.0.0.1:0"], &[]);
    let mut gina = login(&server, "gina").await;
    let rows = query(&mut gina, "SELECT count(*) FROM payments.transactions").await;
    assert_eq!(rows[0].num_rows(), 1);
    eventually(30, "both events dropped", || {
        metric(&server, "meshq_lineage_events_dropped_total") >= 2.0
    })
    .await;
}

/// `--quality-interval`: the server checks every table after loading (and
/// then every interval) off the query path; `meta.quality`,
/// `meta.tables.quality_status` and the metrics show the results, and a
/// contract change is checked again after the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_quality_checks_feed_meta_and_metrics() {
    let (_dir, mesh) = copy_mesh();
    let server = start_on(
        &mesh,
        &[
            "--quality-interval",
            "3600",
            "--reload-interval",
            "0.2",
            "--metrics-bind",
            "127.0.0.1:0",
        ],
        &[],
    );
    let payments = "meshq_table_quality_passing{table=\"payments.transactions\",product=\"urn:dataproduct:payments:transactions\"}";
    let orders = "meshq_table_quality_passing{table=\"sales.orders\",product=\"urn:dataproduct:sales:orders\"}";
    eventually(60, "the first checks", || {
        scrape(&server).contains_key(payments)
    })
    .await;
    let m = scrape(&server);
    assert_eq!(m[payments], 0.0, "refunds_are_rare fails on the demo data");
    assert_eq!(m[orders], 1.0);
    assert_eq!(
        m["meshq_table_quality_failed_rules{table=\"payments.transactions\",product=\"urn:dataproduct:payments:transactions\"}"],
        1.0
    );
    let mut gina = login(&server, "gina").await;
    let rows = text(
        &query(
            &mut gina,
            "SELECT table_name, rule, status, measured IS NULL AS hidden FROM meta.quality WHERE status = 'failed'",
        )
        .await,
    );
    // The card numbers are masked for everyone, so the measured value is
    // not shown to anyone.
    assert!(
        rows.contains("| transactions | refunds_are_rare | failed | true   |"),
        "{rows}"
    );
    let mut pat = login(&server, "pat").await;
    let rows = text(
        &query(
            &mut pat,
            "SELECT rule, measured FROM meta.quality WHERE rule = 'orders_not_empty'",
        )
        .await,
    );
    assert!(rows.contains("| orders_not_empty | 12000.0  |"), "{rows}");
    let rows = text(
        &query(
            &mut gina,
            "SELECT table_name, quality_status FROM meta.tables WHERE table_schema IN ('sales', 'payments') ORDER BY 1",
        )
        .await,
    );
    assert!(rows.contains("| orders       | passed         |"), "{rows}");
    assert!(rows.contains("| transactions | failed         |"), "{rows}");

    // The producer fixes the rule: after the reload the table is checked
    // again at once, not at the next interval an hour away.
    let contract = mesh.join("payments/transactions.odcs.yaml");
    let fixed = std::fs::read_to_string(&contract)
        .unwrap()
        .replace("mustBeLessThan: 10\n", "mustBeLessThan: 20\n");
    replace_file(&contract, &fixed);
    eventually(60, "the checks after the reload", || {
        metric(&server, payments) == 1.0
    })
    .await;
}
