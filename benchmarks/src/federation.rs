//! `--only federation`: a selective query over a PostgreSQL table of
//! `rows` rows, through meshq with its predicates sent to the database,
//! through meshq with predicates PostgreSQL does not get (the same answer,
//! every row transferred), and run directly in PostgreSQL. The server is
//! started here (Debian's package, `initdb` into a temporary directory).
//! Then the same three over a remote meshq serving a Parquet file of
//! `rows` rows over Flight SQL ([`federation_flightsql`]).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use meshq_engine::{Engine, EngineConfig};
use meshq_tests::postgres::TestPostgres;

use crate::runners::{fingerprint, rows as row_count};
use crate::{Timing, measure, ms};

const PASSWORD_ENV: &str = "MESHQ_BENCH_PG_PASSWORD";
const PASSWORD: &str = "bench-reader";

/// The three ways the query runs.
const WITH_PUSHDOWN: &str = "SELECT count(*) AS n, sum(amount) AS total FROM ops.events WHERE account = 4242 AND region = 'EMEA'";
/// The same predicates, written so that PostgreSQL cannot be sent them
/// (arithmetic and concatenation are never pushed): every row travels.
const WITHOUT_PUSHDOWN: &str = "SELECT count(*) AS n, sum(amount) AS total FROM ops.events WHERE account + 0 = 4242 AND region || '' = 'EMEA'";
const DIRECT: &str = "SELECT count(*) AS n, sum(amount)::text AS total FROM public.events WHERE account = 4242 AND region = 'EMEA'";

fn write_mesh(dir: &Path, port: u16) -> Result<()> {
    std::fs::write(
        dir.join("meshq.yaml"),
        format!(
            "stores:\n  events_db: {{ type: postgresql, host: 127.0.0.1, port: {port}, database: bench, user: reader, password: {{ env: {PASSWORD_ENV} }}, pool_size: 2 }}\n\
             principals:\n  - {{ name: analyst, roles: [analyst, admin] }}\n"
        ),
    )?;
    std::fs::write(
        dir.join("events.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:ops:events\nname: events\nversion: 1.0.0\n\
         status: active\ndomain: ops\noutputPorts:\n  - { name: events_pg, type: tables, version: 1.0.0, contractId: urn:datacontract:ops:events }\n",
    )?;
    std::fs::write(
        dir.join("events.odcs.yaml"),
        format!(
            "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:ops:events\nname: events\nversion: 1.0.0\nstatus: active\ndomain: ops\n\
             servers:\n  - {{ server: db, type: postgresql, host: 127.0.0.1, port: {port}, database: bench, schema: public }}\n\
             schema:\n  - name: events\n    physicalName: events\n    customProperties: [ {{ property: readRoles, value: [analyst] }} ]\n    properties:\n\
             \x20     - {{ name: id, logicalType: integer, physicalType: int8 }}\n\
             \x20     - {{ name: account, logicalType: integer, physicalType: int4 }}\n\
             \x20     - {{ name: region, logicalType: string, physicalType: text }}\n\
             \x20     - {{ name: amount, logicalType: number, physicalType: \"numeric(12,2)\" }}\n\
             \x20     - {{ name: at, logicalType: timestamp, physicalType: timestamp }}\n\
             \x20     - {{ name: note, logicalType: string, physicalType: text }}\n"
        ),
    )?;
    Ok(())
}

/// The rows `PostgresExec` received, from `EXPLAIN ANALYZE`.
async fn rows_from_postgres(session: &meshq_engine::MeshSession, sql: &str) -> Result<u64> {
    rows_received(session, sql, "PostgresExec").await
}

/// The rows the source node `node` received, from `EXPLAIN ANALYZE`.
async fn rows_received(session: &meshq_engine::MeshSession, sql: &str, node: &str) -> Result<u64> {
    let batches = session
        .sql(&format!("EXPLAIN ANALYZE {sql}"))
        .await?
        .collect()
        .await?;
    let text = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    let line = text
        .lines()
        .find(|l| l.contains(node))
        .with_context(|| format!("no {node} in the plan"))?;
    let n = line
        .split("output_rows=")
        .nth(1)
        .and_then(|r| r.split([',', ']']).next())
        .with_context(|| format!("no output_rows on {node}"))?;
    parse_count(n.trim()).with_context(|| format!("output_rows in {line}"))
}

/// A count as DataFusion prints metrics: `33`, `1.00 K`, `1.00 M`.
fn parse_count(text: &str) -> Option<u64> {
    let (number, unit) = match text.split_once(' ') {
        Some((n, u)) => (n, u),
        None => (text, ""),
    };
    let scale = match unit {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        "B" => 1e9,
        _ => return None,
    };
    Some((number.parse::<f64>().ok()? * scale).round() as u64)
}

/// Runs the measurement over `rows` rows; the report section, and the
/// number of answers that differ from PostgreSQL's own.
pub async fn federation(warmup: usize, runs: usize, rows: u64, out: &mut String) -> Result<usize> {
    let pg = TestPostgres::start();
    pg.psql("postgres", "CREATE DATABASE bench");
    pg.psql(
        "bench",
        &format!(
            "CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}';
             CREATE TABLE public.events (id bigint PRIMARY KEY, account integer, region text,
               amount numeric(12,2), at timestamp, note text);
             INSERT INTO public.events
               SELECT i, i % 10000, (ARRAY['EMEA','AMER','APAC'])[1 + i % 3],
                      (i % 100000) / 100.0, TIMESTAMP '2026-01-01' + i * INTERVAL '1 second',
                      md5(i::text)
               FROM generate_series(1, {rows}) AS i;
             ANALYZE public.events;
             GRANT SELECT ON public.events TO reader;"
        ),
    );
    let dir = tempfile::tempdir()?;
    write_mesh(dir.path(), pg.port)?;
    let mut config = EngineConfig::new(dir.path());
    config
        .secret_env_fallback
        .insert(PASSWORD_ENV.into(), PASSWORD.into());
    let engine = Engine::load(config).await?;
    let principal = engine
        .mesh()
        .config
        .principal("analyst")
        .context("principal")?;
    let session = engine.session(&principal);
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .dbname("bench")
        .user("reader")
        .password(PASSWORD)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);

    let meshq = |sql: &'static str| {
        let session = &session;
        move || async move { Ok(session.sql(sql).await?.collect().await?) }
    };
    let (pushed, pushed_rows) = measure(warmup, runs, meshq(WITH_PUSHDOWN)).await?;
    let (unpushed, unpushed_rows) = measure(warmup, runs, meshq(WITHOUT_PUSHDOWN)).await?;
    let (direct, direct_answer) = measure(warmup, runs, || async {
        let r = client.query_one(DIRECT, &[]).await?;
        let n: i64 = r.get(0);
        let total: Option<String> = r.get(1);
        Ok::<_, anyhow::Error>((n, total))
    })
    .await?;
    // The answers: meshq's two and PostgreSQL's own.
    let answer = |b: &[arrow::array::RecordBatch]| fingerprint(b).join(";");
    let mut differ = 0;
    if answer(&pushed_rows) != answer(&unpushed_rows) {
        differ += 1;
    }
    let expected = format!(
        "{}|{}",
        direct_answer.0,
        direct_answer.1.clone().unwrap_or_else(|| "NULL".into())
    );
    if answer(&pushed_rows) != expected {
        differ += 1;
    }
    let sent_pushed = rows_from_postgres(&session, WITH_PUSHDOWN).await?;
    let sent_unpushed = rows_from_postgres(&session, WITHOUT_PUSHDOWN).await?;
    writeln!(
        out,
        "## Federation (PostgreSQL, {rows} rows)\n\n\
`{WITH_PUSHDOWN}`; the answer: {} rows ({expected}). PostgreSQL was started by the benchmark (Debian's package, `initdb` into a temporary directory, `fsync=off`); one connection each.\n\n\
| | median (min–max) ms | rows from PostgreSQL | vs PostgreSQL alone |\n|---|---:|---:|---:|",
        row_count(&pushed_rows),
    )?;
    rows_and_summary(
        out,
        &Measured {
            pushed,
            unpushed,
            direct,
            sent_pushed,
            sent_unpushed,
            differ,
        },
        "PostgreSQL",
        "PostgreSQL alone (tokio-postgres, the same SELECT)",
    )?;
    Ok(differ)
}

/// The three ways one source's query ran, and what was received.
struct Measured {
    pushed: Timing,
    unpushed: Timing,
    direct: Timing,
    sent_pushed: u64,
    sent_unpushed: u64,
    differ: usize,
}

/// The rows of a section's table (`source` names where predicates go,
/// `direct` the source asked alone) and its summary line.
fn rows_and_summary(out: &mut String, m: &Measured, source: &str, direct: &str) -> Result<()> {
    let vs = m.direct.median().as_secs_f64();
    for (label, t, sent) in [
        (
            format!("meshq, predicates sent to {source}"),
            &m.pushed,
            m.sent_pushed,
        ),
        (
            "meshq, predicates kept in meshq (`account + 0`, `region || ''`)".to_string(),
            &m.unpushed,
            m.sent_unpushed,
        ),
        (direct.to_string(), &m.direct, 1),
    ] {
        writeln!(
            out,
            "| {label} | {} ({}–{}) | {sent} | {:.2}× |",
            ms(t.median()),
            ms(t.min()),
            ms(t.max()),
            t.median().as_secs_f64() / vs
        )?;
    }
    writeln!(
        out,
        "\nmeshq with the predicates sent is {:.1}× faster than without, and receives {} rows instead of {}.{}\n",
        m.unpushed.median().as_secs_f64() / m.pushed.median().as_secs_f64(),
        m.sent_pushed,
        m.sent_unpushed,
        if m.differ > 0 {
            " **The answers DIFFER.**"
        } else {
            " All three answers are the same."
        }
    )?;
    Ok(())
}

/// The remote mesh: `ops.events`, a Parquet file of `rows` rows like the
/// PostgreSQL table, readable by `reader` (password [`PASSWORD`]).
fn write_remote_mesh(dir: &Path, rows: u64) -> Result<()> {
    use arrow::array::{
        Decimal128Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("account", DataType::Int32, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("amount", DataType::Decimal128(12, 2), false),
        Field::new(
            "at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("note", DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(dir.join("events.parquet"))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None)?;
    let regions = ["EMEA", "AMER", "APAC"];
    let mut start = 1u64;
    while start <= rows {
        let end = (start + 65_535).min(rows);
        let ids: Vec<i64> = (start as i64..=end as i64).collect();
        let batch = arrow::array::RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids.clone())),
                Arc::new(Int32Array::from_iter_values(
                    ids.iter().map(|i| (i % 10_000) as i32),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| regions[(i % 3) as usize]),
                )),
                Arc::new(
                    Decimal128Array::from_iter_values(ids.iter().map(|i| (i % 100_000) as i128))
                        .with_precision_and_scale(12, 2)?,
                ),
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    ids.iter().map(|i| 1_767_225_600_000_000 + i * 1_000_000),
                )),
                Arc::new(StringArray::from_iter_values(ids.iter().map(|i| {
                    format!("{:032x}", (*i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                }))),
            ],
        )?;
        w.write(&batch)?;
        start = end + 1;
    }
    w.close()?;
    let hash = meshq_cli::hash_password(PASSWORD)?;
    std::fs::write(
        dir.join("meshq.yaml"),
        format!(
            "principals:\n  - {{ name: reader, password_hash: \"{hash}\", roles: [analyst] }}\n"
        ),
    )?;
    std::fs::write(
        dir.join("events.odps.yaml"),
        "apiVersion: v1.0.0\nkind: DataProduct\nid: urn:dataproduct:ops:events\nname: events\nversion: 1.0.0\n\
         status: active\ndomain: ops\noutputPorts:\n  - { name: events, type: tables, version: 1.0.0, contractId: urn:datacontract:ops:events }\n",
    )?;
    std::fs::write(
        dir.join("events.odcs.yaml"),
        events_contract(
            "{ server: files, type: local, format: parquet, path: ./events.parquet }",
            "events",
        ),
    )?;
    Ok(())
}

fn events_contract(server: &str, physical: &str) -> String {
    format!(
        "apiVersion: v3.1.0\nkind: DataContract\nid: urn:datacontract:ops:events\nname: events\nversion: 1.0.0\nstatus: active\ndomain: ops\n\
         servers:\n  - {server}\n\
         schema:\n  - name: events\n    physicalName: {physical}\n    customProperties: [ {{ property: readRoles, value: [analyst] }} ]\n    properties:\n\
         \x20     - {{ name: id, logicalType: integer }}\n\
         \x20     - {{ name: account, logicalType: integer }}\n\
         \x20     - {{ name: region, logicalType: string }}\n\
         \x20     - {{ name: amount, logicalType: number }}\n\
         \x20     - {{ name: at, logicalType: timestamp }}\n\
         \x20     - {{ name: note, logicalType: string }}\n"
    )
}

/// The same query over a remote meshq (in this process, over loopback
/// Flight SQL) serving `ops.events` from a Parquet file of `rows` rows:
/// through a local meshq with its predicates sent, without, and asked of
/// the remote directly with a Flight SQL client. The report section, and
/// the number of answers that differ from the remote's own.
pub async fn federation_flightsql(
    warmup: usize,
    runs: usize,
    rows: u64,
    out: &mut String,
) -> Result<usize> {
    use futures::TryStreamExt;
    let remote_dir = tempfile::tempdir()?;
    write_remote_mesh(remote_dir.path(), rows)?;
    let remote = meshq_tests::remote::RemoteMeshq::start(
        remote_dir.path(),
        &remote_dir.path().join("audit.jsonl"),
    )
    .await?;
    let endpoint = remote.endpoint();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("meshq.yaml"),
        format!(
            "stores:\n  hub: {{ type: flightsql, endpoint: {endpoint}, username: reader, password: {{ env: {PASSWORD_ENV} }}, pool_size: 2 }}\n\
             principals:\n  - {{ name: analyst, roles: [analyst, admin] }}\n"
        ),
    )?;
    std::fs::copy(
        remote_dir.path().join("events.odps.yaml"),
        dir.path().join("events.odps.yaml"),
    )?;
    std::fs::write(
        dir.path().join("events.odcs.yaml"),
        events_contract(
            &format!("{{ server: hub, type: custom, format: flightsql, endpointUrl: {endpoint} }}"),
            "ops.events",
        ),
    )?;
    let mut config = EngineConfig::new(dir.path());
    config
        .secret_env_fallback
        .insert(PASSWORD_ENV.into(), PASSWORD.into());
    let engine = Engine::load(config).await?;
    if let Some(p) = engine.problems().iter().find(|p| p.is_error()) {
        anyhow::bail!("the federation mesh did not load: {p}");
    }
    let principal = engine
        .mesh()
        .config
        .principal("analyst")
        .context("principal")?;
    let session = engine.session(&principal);
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", remote.port))?
            .connect()
            .await?;
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    client.handshake("reader", PASSWORD).await?;

    let meshq = |sql: &'static str| {
        let session = &session;
        move || async move { Ok(session.sql(sql).await?.collect().await?) }
    };
    let (pushed, pushed_rows) = measure(warmup, runs, meshq(WITH_PUSHDOWN)).await?;
    let (unpushed, unpushed_rows) = measure(warmup, runs, meshq(WITHOUT_PUSHDOWN)).await?;
    let (direct, direct_rows) = measure(warmup, runs, || {
        let mut client = client.clone();
        async move {
            let info = client.execute(WITH_PUSHDOWN.to_string(), None).await?;
            let mut batches = Vec::new();
            for point in info.endpoint {
                let ticket = point.ticket.context("a ticket")?;
                let stream = client.do_get(ticket).await?;
                batches.extend(stream.try_collect::<Vec<_>>().await?);
            }
            Ok::<_, anyhow::Error>(batches)
        }
    })
    .await?;
    let answer = |b: &[arrow::array::RecordBatch]| fingerprint(b).join(";");
    let mut differ = 0;
    if answer(&pushed_rows) != answer(&unpushed_rows) {
        differ += 1;
    }
    if answer(&pushed_rows) != answer(&direct_rows) {
        differ += 1;
    }
    let sent_pushed = rows_received(&session, WITH_PUSHDOWN, "FlightSqlExec").await?;
    let sent_unpushed = rows_received(&session, WITHOUT_PUSHDOWN, "FlightSqlExec").await?;
    writeln!(
        out,
        "## Federation (remote meshq over Flight SQL, {rows} rows)\n\n\
`{WITH_PUSHDOWN}` over a remote meshq serving `ops.events` from one Parquet file, in the same process, over loopback Flight SQL; the answer: {}.\n\n\
| | median (min–max) ms | rows from the remote | vs the remote alone |\n|---|---:|---:|---:|",
        answer(&direct_rows),
    )?;
    rows_and_summary(
        out,
        &Measured {
            pushed,
            unpushed,
            direct,
            sent_pushed,
            sent_unpushed,
            differ,
        },
        "the remote",
        "the remote alone (Flight SQL client, the same SELECT)",
    )?;
    drop(remote);
    Ok(differ)
}
