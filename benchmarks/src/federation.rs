//! `--only federation`: a selective query over a PostgreSQL table of
//! `rows` rows, through meshq with its predicates sent to the database,
//! through meshq with predicates PostgreSQL does not get (the same answer,
//! every row transferred), and run directly in PostgreSQL. The server is
//! started here (Debian's package, `initdb` into a temporary directory).

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
    let batches = session
        .sql(&format!("EXPLAIN ANALYZE {sql}"))
        .await?
        .collect()
        .await?;
    let text = arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
    let line = text
        .lines()
        .find(|l| l.contains("PostgresExec"))
        .context("no PostgresExec in the plan")?;
    let n = line
        .split("output_rows=")
        .nth(1)
        .and_then(|r| r.split([',', ']']).next())
        .context("no output_rows on PostgresExec")?;
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
    let row = |label: &str, t: &Timing, sent: String, out: &mut String| -> Result<()> {
        writeln!(
            out,
            "| {label} | {} ({}–{}) | {sent} | {:.2}× |",
            ms(t.median()),
            ms(t.min()),
            ms(t.max()),
            t.median().as_secs_f64() / direct.median().as_secs_f64()
        )?;
        Ok(())
    };
    writeln!(
        out,
        "## Federation (PostgreSQL, {rows} rows)\n\n\
`{WITH_PUSHDOWN}`; the answer: {} rows ({expected}). PostgreSQL was started by the benchmark (Debian's package, `initdb` into a temporary directory, `fsync=off`); one connection each.\n\n\
| | median (min–max) ms | rows from PostgreSQL | vs PostgreSQL alone |\n|---|---:|---:|---:|",
        row_count(&pushed_rows),
    )?;
    row(
        "meshq, predicates sent to PostgreSQL",
        &pushed,
        sent_pushed.to_string(),
        out,
    )?;
    row(
        "meshq, predicates kept in meshq (`account + 0`, `region || ''`)",
        &unpushed,
        sent_unpushed.to_string(),
        out,
    )?;
    row(
        "PostgreSQL alone (tokio-postgres, the same SELECT)",
        &direct,
        "1".into(),
        out,
    )?;
    writeln!(
        out,
        "\nmeshq with the predicates sent is {:.1}× faster than without, and receives {} rows instead of {}.{}\n",
        unpushed.median().as_secs_f64() / pushed.median().as_secs_f64(),
        sent_pushed,
        sent_unpushed,
        if differ > 0 {
            " **The answers DIFFER.**"
        } else {
            " All three answers are the same."
        }
    )?;
    Ok(differ)
}
