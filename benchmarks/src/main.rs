//! `meshq-bench`: runs meshq's benchmarks and prints Markdown tables.
//!
//! ```sh
//! cargo run --release -p meshq-benchmarks -- --sf 1
//! ```
//!
//! Data is generated once per scale factor under `--dir` (default
//! `~/.cache/meshq/bench`) and reused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::TryStreamExt;
use meshq_benchmarks::runners::{self, Runner, fingerprint, rows};
use meshq_benchmarks::tpch::{Dataset, PASSWORDS};
use meshq_benchmarks::{QUERIES, Timing, catalog_scale, flight, measure, ms, rss};
use meshq_engine::memory::spill_totals;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "meshq-bench", about = "meshq benchmarks")]
struct Args {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Measured runs per query (after the warm-up runs).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Unmeasured warm-up runs per query.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Where generated data is kept.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// DataFusion target partitions (default: the number of cores).
    #[arg(long)]
    partitions: Option<usize>,
    /// Measurements to run: policy, format, flight, clients, accel,
    /// distributed, catalog, memory, peers (with `flight`, peers also
    /// times DuckDB on each query in turn with meshq); not in the default set:
    /// `federation` (PostgreSQL, which needs Debian's `postgresql`
    /// package), `settings` (a sweep
    /// of DataFusion settings) and `fetch` (only the `lineitem` fetch over
    /// Flight SQL, to profile).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "policy,format,flight,clients,accel,distributed,catalog,memory,peers"
    )]
    only: Vec<String>,
    /// Rows of the PostgreSQL table of the `federation` measurement.
    #[arg(long, default_value_t = 1_000_000)]
    federation_rows: u64,
    /// Products in the catalog-scale mesh.
    #[arg(long, default_value_t = 10_000)]
    products: usize,
    /// Scale factor of the memory measurement.
    #[arg(long, default_value_t = 10.0)]
    memory_sf: f64,
    /// Memory pool of the memory measurement, in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_limit_mib: usize,
    /// Sequential `SELECT 1` round trips for the latency measurement.
    #[arg(long, default_value_t = 1000)]
    latency_queries: usize,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A DataFusion setting for every meshq engine of the run
    /// (`KEY=VALUE`; repeatable), e.g.
    /// `datafusion.execution.parquet.schema_force_view_types=false`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Fail if meshq's exempt answers differ from raw DataFusion's, or the
    /// Delta/Iceberg mesh's from the Parquet mesh's.
    #[arg(long)]
    check: bool,
    /// A datafusion-distributed setting of the `distributed` measurement's
    /// coordinator (`KEY=VALUE`; repeatable), e.g.
    /// `distributed.compression=lz4`; meshq's coordinator defaults
    /// otherwise (the library's, but rows sent uncompressed).
    #[arg(long = "cluster-set", value_name = "KEY=VALUE")]
    cluster_set: Vec<String>,
    /// The `settings` measurement sweeps these DataFusion settings
    /// (`KEY=VALUE`, each alone, or `KEY=VALUE,KEY=VALUE` together;
    /// repeatable) instead of its own list,
    /// beside a second engine with the defaults as a control.
    #[arg(long = "sweep", value_name = "KEY=VALUE")]
    sweep: Vec<String>,
    /// Run only these TPC-H queries (`q7,q21`) in the measurements that
    /// time the 22 one by one (policy, format, flight, peers,
    /// distributed, settings); all 22 by default. Totals are then over
    /// these queries only.
    #[arg(long, value_delimiter = ',')]
    queries: Vec<String>,
    /// Time the SQL in this file in place of TPC-H query `qN`
    /// (`qN=PATH`; repeatable), to try a rewriting of it, on every meshq
    /// and DataFusion runner of the measurements `--queries` applies to
    /// (DuckDB, timed in turn under `flight,peers`, runs its own `qN`);
    /// the report names the replaced queries.
    #[arg(long = "query-file", value_name = "qN=PATH")]
    query_file: Vec<String>,
    /// Print each query's plan (`EXPLAIN`, as the runner's principal) on
    /// each runner to standard error before timing it; with workers, the
    /// stages and where each runs.
    #[arg(long)]
    explain: bool,
    /// Print each query's plan with its metrics (`EXPLAIN ANALYZE`, as
    /// the runner's principal with the `admin` role: one more run, not
    /// timed) on each runner to standard error after timing it.
    #[arg(long)]
    analyze: bool,
    /// Serve as a cluster worker over this mesh directory (started by the
    /// `distributed` measurement itself, pinned to a core).
    #[arg(long, hide = true)]
    serve_worker: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(mesh) = &args.serve_worker {
        return rt.block_on(async {
            let (url, _) = meshq_cluster::loopback::serve_loopback_worker_with_key(
                mesh,
                &runners::secret_env_fallback(),
                runners::cluster_key()?,
            )
            .await?;
            println!("{}{url}", runners::WORKER_LISTENING);
            std::future::pending::<Result<()>>().await
        });
    }
    let report = rt.block_on(run(&args))?;
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

/// The TPC-H queries `--queries` names, in their order; all 22 without it.
fn chosen_queries(args: &Args) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    QUERIES
        .into_iter()
        .filter(|(name, _)| args.queries.is_empty() || args.queries.iter().any(|q| q == name))
        .map(|(name, sql)| {
            let replaced = REPLACED.get().and_then(|r| r.get(name));
            (name, replaced.map_or(sql, |s| s.as_str()))
        })
}

/// The queries `--query-file` replaces, read once at start.
static REPLACED: std::sync::OnceLock<BTreeMap<&'static str, String>> = std::sync::OnceLock::new();

fn read_replacements(args: &Args) -> Result<BTreeMap<&'static str, String>> {
    let mut out = BTreeMap::new();
    for kv in &args.query_file {
        let (q, path) = kv
            .split_once('=')
            .with_context(|| format!("--query-file {kv}: write qN=PATH"))?;
        let Some((name, _)) = QUERIES.iter().find(|(name, _)| *name == q.trim()) else {
            anyhow::bail!("--query-file {kv}: `{q}` is not a TPC-H query (q1 … q22)");
        };
        let sql = std::fs::read_to_string(path.trim())
            .with_context(|| format!("--query-file {kv}: cannot read {}", path.trim()))?;
        out.insert(*name, sql);
    }
    Ok(out)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

async fn run(args: &Args) -> Result<String> {
    let global_settings = args
        .set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("--set {kv}: write KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let _ = runners::SETTINGS.set(global_settings);
    let root = args.dir.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
            .join(".cache/meshq/bench")
    });
    let partitions = args.partitions.unwrap_or_else(cores);
    let want = |m: &str| args.only.iter().any(|o| o == m);
    if let Some(q) = args
        .queries
        .iter()
        .find(|q| !QUERIES.iter().any(|(name, _)| name == q))
    {
        anyhow::bail!("--queries: `{q}` is not a TPC-H query (q1 … q22)");
    }
    let _ = REPLACED.set(read_replacements(args)?);
    let mut out = String::new();
    writeln!(
        out,
        "# meshq-bench\n\nscale factor {}, {} measured runs after {} warm-up, target partitions {partitions}, {} cores{}{}{}\n",
        args.sf,
        args.runs,
        args.warmup,
        cores(),
        if args.set.is_empty() {
            String::new()
        } else {
            format!("; meshq settings: {}", args.set.join(", "))
        },
        if args.queries.is_empty() {
            String::new()
        } else {
            format!("; queries {} only", args.queries.join(", "))
        },
        if args.query_file.is_empty() {
            String::new()
        } else {
            format!("; rewritten queries: {}", args.query_file.join(", "))
        }
    )?;
    let ds = Dataset::new(&root, args.sf);
    if [
        "policy",
        "format",
        "flight",
        "clients",
        "fetch",
        "accel",
        "distributed",
        "peers",
        "settings",
    ]
    .iter()
    .any(|m| want(m))
    {
        let start = Instant::now();
        ds.ensure(true).await.context("generating TPC-H data")?;
        eprintln!(
            "data ready in {:.1}s at {}",
            start.elapsed().as_secs_f64(),
            ds.root.display()
        );
    }
    let mut differ = 0;
    if want("policy") {
        differ += policy(args, &ds, partitions, &mut out).await?;
    }
    if want("format") {
        differ += format(args, &ds, partitions, &mut out).await?;
    }
    if want("flight") {
        flight_sql(args, &ds, partitions, &mut out).await?;
    }
    if want("settings") {
        differ += settings(args, &ds, partitions, &mut out).await?;
    }
    if want("clients") {
        clients(args, &ds, partitions, &mut out).await?;
    }
    if want("fetch") {
        fetch(args, &ds, partitions, &mut out).await?;
    }
    if want("accel") {
        for engine in ["memory", "parquet"] {
            differ += accelerated(args, &ds, partitions, engine, &mut out).await?;
        }
    }
    if want("distributed") {
        differ += distributed(args, &ds, partitions, &mut out).await?;
    }
    if want("catalog") {
        catalog(args, &root, &mut out).await?;
    }
    if want("federation") {
        differ += meshq_benchmarks::federation::federation(
            args.warmup,
            args.runs,
            args.federation_rows,
            &mut out,
        )
        .await?;
        differ += meshq_benchmarks::federation::federation_flightsql(
            args.warmup,
            args.runs,
            args.federation_rows,
            &mut out,
        )
        .await?;
    }
    if want("memory") {
        memory(args, &root, partitions, &mut out).await?;
    }
    if want("peers") {
        peers(args, &ds, &mut out)?;
    }
    if args.check && differ > 0 {
        eprint!("{out}");
        anyhow::bail!("{differ} answers differ from their baseline");
    }
    Ok(out)
}

/// One query's row: per runner, its timing and its answer's fingerprint.
type Row = (String, Vec<(Timing, Vec<String>)>);

/// Per-query timings of several runners, in columns.
async fn run_queries(args: &Args, runners: &[(&str, Runner)]) -> Result<Vec<Row>> {
    run_queries_with(args, runners, &|_| Ok(())).await
}

/// [`run_queries`], calling `before(i)` ahead of runner `i`'s runs of each
/// query, outside the time measured.
async fn run_queries_with(
    args: &Args,
    runners: &[(&str, Runner)],
    before: &(dyn Fn(usize) -> Result<()> + Sync),
) -> Result<Vec<Row>> {
    let mut table = Vec::new();
    for (name, sql) in chosen_queries(args) {
        let mut cells = Vec::new();
        for (i, (label, r)) in runners.iter().enumerate() {
            before(i)?;
            if args.explain {
                let plan = r
                    .run(&format!("EXPLAIN {sql}"))
                    .await
                    .with_context(|| format!("EXPLAIN {name} on {label}"))?;
                eprintln!(
                    "EXPLAIN {name} on {label}:\n{}",
                    arrow::util::pretty::pretty_format_batches(&plan)?
                );
            }
            let (t, batches) = measure(args.warmup, args.runs, || r.run(sql))
                .await
                .with_context(|| format!("{name} on {label}"))?;
            eprintln!(
                "{name} {label}: {} ms ({} rows)",
                ms(t.median()),
                rows(&batches)
            );
            if args.analyze {
                let plan = r
                    .analyze(sql)
                    .await
                    .with_context(|| format!("EXPLAIN ANALYZE {name} on {label}"))?;
                eprintln!(
                    "EXPLAIN ANALYZE {name} on {label}:\n{}",
                    arrow::util::pretty::pretty_format_batches(&plan)?
                );
            }
            cells.push((t, fingerprint(&batches)));
        }
        table.push((name.to_string(), cells));
    }
    Ok(table)
}

/// Writes the table; the number of answers that differ from the baseline.
fn write_table(
    out: &mut String,
    labels: &[&str],
    table: &[Row],
    baseline: usize,
    same_as_baseline: &[usize],
) -> Result<usize> {
    let mut differ = 0;
    write!(out, "| query |")?;
    for l in labels {
        write!(out, " {l} median (min–max) ms |")?;
    }
    writeln!(out, " same result as {} |", labels[baseline])?;
    write!(out, "|---|")?;
    for _ in labels {
        write!(out, "---:|")?;
    }
    writeln!(out, "---|")?;
    let mut totals = vec![0.0; labels.len()];
    for (name, cells) in table {
        write!(out, "| {name} |")?;
        for (i, (t, _)) in cells.iter().enumerate() {
            totals[i] += t.median().as_secs_f64() * 1000.0;
            write!(
                out,
                " {} ({}–{}) |",
                ms(t.median()),
                ms(t.min()),
                ms(t.max())
            )?;
        }
        let same: Vec<&str> = same_as_baseline
            .iter()
            .map(|&i| {
                if cells[i].1 == cells[baseline].1 {
                    labels[i]
                } else {
                    differ += 1;
                    "DIFFERS"
                }
            })
            .collect();
        writeln!(
            out,
            " {} |",
            if same.is_empty() {
                "-".into()
            } else {
                same.join(", ")
            }
        )?;
    }
    write!(out, "| **total of medians** |")?;
    for t in &totals {
        write!(out, " **{t:.1}** |")?;
    }
    writeln!(out, " |")?;
    write!(out, "| **ratio to {}** |", labels[baseline])?;
    for t in &totals {
        write!(out, " **{:.3}×** |", t / totals[baseline])?;
    }
    writeln!(out, " |\n")?;
    Ok(differ)
}

async fn policy(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<usize> {
    let raw = runners::raw_datafusion(ds, partitions).await?;
    let engine = runners::engine(&ds.mesh_parquet(), partitions).await?;
    let exempt = runners::session(&engine, "exempt")?;
    let governed = runners::session(&engine, "regional")?;
    let labels = ["raw DataFusion", "meshq exempt", "meshq governed"];
    let table = run_queries(
        args,
        &[
            (labels[0], Runner::Raw(raw)),
            (labels[1], Runner::Meshq(exempt)),
            (labels[2], Runner::Meshq(governed)),
        ],
    )
    .await?;
    writeln!(
        out,
        "## 1. Policy overhead (in-process, all tables Parquet, same files)\n\n\
`regional` has the hash masks on c_phone/c_address and the row filter on customer; \
its answers differ from raw by design.\n"
    )?;
    write_table(out, &labels, &table, 0, &[1])
}

async fn format(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<usize> {
    let parquet = runners::engine(&ds.mesh_parquet(), partitions).await?;
    let split = runners::engine(&ds.mesh_split(), partitions).await?;
    let labels = ["all Parquet", "Delta/Parquet/Iceberg"];
    let table = run_queries(
        args,
        &[
            (
                labels[0],
                Runner::Meshq(runners::session(&parquet, "exempt")?),
            ),
            (
                labels[1],
                Runner::Meshq(runners::session(&split, "exempt")?),
            ),
        ],
    )
    .await?;
    writeln!(
        out,
        "## 2. Format overhead (meshq in-process, exempt principal)\n\n\
sales as Delta, customers as Parquet, supply as Iceberg, against every table as Parquet.\n"
    )?;
    write_table(out, &labels, &table, 0, &[1])
}

/// The 22 queries on the split mesh through a coordinator (this process,
/// pinned to core 0) over worker processes pinned with `taskset`: one
/// worker on core 1, then two on cores 0 and 1; and as a single node on
/// core 0. Where `taskset` or a second core is missing, the workers share
/// this process instead and the ratios are only the cluster's cost.
async fn distributed(
    args: &Args,
    ds: &Dataset,
    partitions: usize,
    out: &mut String,
) -> Result<usize> {
    let mesh = ds.mesh_split();
    // The single node plans as a coordinator does (it orders joins by
    // estimate), except where `--set` says otherwise: each ratio then
    // compares the same plans.
    let set = runners::SETTINGS.get().cloned().unwrap_or_default();
    let single_settings: Vec<(&str, &str)> = meshq_engine::COORDINATOR_SETTINGS
        .into_iter()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .collect();
    let as_coordinator = meshq_engine::COORDINATOR_SETTINGS
        .iter()
        .map(|(k, default)| {
            let v = set
                .iter()
                .rev()
                .find(|(s, _)| s == k)
                .map_or(*default, |(_, v)| v.as_str());
            format!("`{k}={v}`")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let single_node = || runners::engine_with(&mesh, partitions, None, &single_settings);
    // Before pinning: the count follows this process's affinity.
    let all = cores();
    let pinned = all >= 2 && runners::pin_this_process("0").is_ok();
    if !pinned {
        let single = single_node().await?;
        let one = runners::cluster_engine(&mesh, partitions, 1).await?;
        let two = runners::cluster_engine(&mesh, partitions, 2).await?;
        let labels = ["single node", "1 worker", "2 workers"];
        let table = run_queries(
            args,
            &[
                (
                    labels[0],
                    Runner::Meshq(runners::session(&single, "exempt")?),
                ),
                (labels[1], Runner::Meshq(runners::session(&one, "exempt")?)),
                (labels[2], Runner::Meshq(runners::session(&two, "exempt")?)),
            ],
        )
        .await?;
        writeln!(
            out,
            "## Distributed (datafusion-distributed; exempt principal, split mesh)\n\nNo `taskset` or one core: the coordinator and its workers share this process and its cores, over loopback. These ratios are the cost of going through the cluster, not a speed-up.\n"
        )?;
        let differ = write_table(out, &labels, &table, 0, &[1, 2])?;
        return Ok(differ + check_governed(args, &single, &two, out).await?);
    }
    let result = async {
        let one_worker = runners::pinned_workers(&mesh, &[1])?;
        let two_workers = runners::pinned_workers(&mesh, &[0, 1])?;
        let single = single_node().await?;
        let settings = args
            .cluster_set
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .with_context(|| format!("--cluster-set {kv}: write KEY=VALUE"))
            })
            .collect::<Result<Vec<_>>>()?;
        let one = runners::cluster_engine_over(
            &mesh,
            partitions,
            one_worker.urls.clone(),
            settings.clone(),
        )
        .await?;
        let two =
            runners::cluster_engine_over(&mesh, partitions, two_workers.urls.clone(), settings)
                .await?;
        let labels = [
            "single node (core 0)",
            "1 worker (core 1)",
            "2 workers (cores 0, 1)",
            "single node (cores 0, 1)",
        ];
        // The last runner is the single node again, on the two workers'
        // cores: what two cores give one process, the ceiling for two
        // one-core workers.
        let both = "0-1";
        let current = std::sync::Mutex::new("0");
        let pin = |i: usize| -> Result<()> {
            let want = if i == 3 { both } else { "0" };
            let mut current = current.lock().expect("pinning lock");
            if *current != want {
                runners::pin_this_process(want)?;
                *current = want;
            }
            Ok(())
        };
        let table = run_queries_with(
            args,
            &[
                (labels[0], Runner::Meshq(runners::session(&single, "exempt")?)),
                (labels[1], Runner::Meshq(runners::session(&one, "exempt")?)),
                (labels[2], Runner::Meshq(runners::session(&two, "exempt")?)),
                (labels[3], Runner::Meshq(runners::session(&single, "exempt")?)),
            ],
            &pin,
        )
        .await?;
        let total = |i: usize| -> f64 {
            table
                .iter()
                .map(|(_, cells)| cells[i].0.median().as_secs_f64())
                .sum()
        };
        writeln!(
            out,
            "## Distributed (datafusion-distributed; exempt principal, split mesh)\n\n\
The coordinator is this process, pinned to core 0 with `taskset`; each worker is a process of its own pinned to one core (`meshq-bench --serve-worker`), reached over loopback with the cluster credential. The single node is this process alone on core 0, and again on cores 0 and 1 (re-pinned before each of its queries, outside the time measured): what two cores give one process, the ceiling for two one-core workers. The single node plans with the coordinator's settings ({as_coordinator}; `--set` changes them for both), so each ratio compares the same plans. Coordinator's datafusion-distributed settings: {}.\n",
            if args.cluster_set.is_empty() {
                "meshq's defaults".to_string()
            } else {
                args.cluster_set.join(", ")
            }
        )?;
        let differ = write_table(out, &labels, &table, 0, &[1, 2, 3])?;
        writeln!(
            out,
            "Speed-up of 2 workers over 1 worker (total of medians): **{:.2}×**; a 1-worker cluster against the single node: **{:.3}×**; the single node on two cores over one core: **{:.2}×**.\n",
            total(1) / total(2),
            total(1) / total(0),
            total(0) / total(3),
        )?;
        Ok::<_, anyhow::Error>(differ + check_governed(args, &single, &two, out).await?)
    }
    .await;
    runners::pin_this_process(&format!("0-{}", all - 1))?;
    result
}

/// With `--check`: each query once as the governed principal
/// (`regional`, whose phones and addresses are hashed and customers
/// filtered to one nation) on the single node and on the two-worker
/// cluster; a line in the report, and the number of answers that differ.
async fn check_governed(
    args: &Args,
    single: &meshq_engine::Engine,
    cluster: &meshq_engine::Engine,
    out: &mut String,
) -> Result<usize> {
    if !args.check {
        return Ok(0);
    }
    let one = Runner::Meshq(runners::session(single, "regional")?);
    let two = Runner::Meshq(runners::session(cluster, "regional")?);
    let mut differ = Vec::new();
    for (name, sql) in chosen_queries(args) {
        let expected = fingerprint(&one.run(sql).await?);
        if fingerprint(&two.run(sql).await?) != expected {
            differ.push(name);
        }
    }
    writeln!(
        out,
        "The governed principal (`regional`: hashed phones and addresses, one nation's customers), each query once on the single node and on 2 workers: {}.\n",
        if differ.is_empty() {
            "the same answers".to_string()
        } else {
            format!("**answers differ**: {}", differ.join(", "))
        }
    )?;
    Ok(differ.len())
}

/// DataFusion settings tried one at a time against meshq's defaults.
const SWEEP: &[(&str, &[(&str, &str)])] = &[
    // A second engine with the defaults: how far two identical
    // configurations drift apart in one run (the noise).
    ("defaults again (control)", &[]),
    (
        "Parquet filter pushdown",
        &[("datafusion.execution.parquet.pushdown_filters", "true")],
    ),
    (
        "Parquet filter pushdown and reordering",
        &[
            ("datafusion.execution.parquet.pushdown_filters", "true"),
            ("datafusion.execution.parquet.reorder_filters", "true"),
        ],
    ),
    (
        "no page index",
        &[("datafusion.execution.parquet.enable_page_index", "false")],
    ),
    (
        "no bloom filters",
        &[("datafusion.execution.parquet.bloom_filter_on_read", "false")],
    ),
    (
        "strings as Utf8, not Utf8View",
        &[(
            "datafusion.execution.parquet.schema_force_view_types",
            "false",
        )],
    ),
    (
        "batch_size 4096",
        &[("datafusion.execution.batch_size", "4096")],
    ),
    (
        "batch_size 16384",
        &[("datafusion.execution.batch_size", "16384")],
    ),
    ("target_partitions ×2", &[]),
    (
        "no join repartitioning",
        &[("datafusion.optimizer.repartition_joins", "false")],
    ),
    (
        "no aggregate repartitioning",
        &[("datafusion.optimizer.repartition_aggregations", "false")],
    ),
    (
        "sort-merge joins (as under a memory pool)",
        &[("datafusion.optimizer.prefer_hash_join", "false")],
    ),
];

/// The 22 queries in-process on the split mesh (exempt) with meshq's
/// defaults and with each setting of [`SWEEP`] (or of `--sweep`),
/// interleaved per query.
async fn settings(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<usize> {
    // `--sweep KEY=VALUE`: those settings, each alone, beside the control.
    let chosen: Vec<(String, Vec<(String, String)>)> = args
        .sweep
        .iter()
        .map(|kv| {
            let set = kv
                .split(',')
                .map(|one| {
                    let (k, v) = one
                        .split_once('=')
                        .with_context(|| format!("--sweep {kv}: write KEY=VALUE[,KEY=VALUE]"))?;
                    Ok((k.trim().to_string(), v.trim().to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            let label = set
                .iter()
                .map(|(k, v)| format!("`{k} = {v}`"))
                .collect::<Vec<_>>()
                .join(", ");
            Ok((label, set))
        })
        .collect::<Result<_>>()?;
    let sweep: Vec<(String, Vec<(String, String)>)> = if chosen.is_empty() {
        SWEEP
            .iter()
            .map(|(l, set)| {
                let set = set.iter().map(|(k, v)| (k.to_string(), v.to_string()));
                (l.to_string(), set.collect())
            })
            .collect()
    } else {
        std::iter::once((SWEEP[0].0.to_string(), Vec::new()))
            .chain(chosen)
            .collect()
    };
    let mut engines = vec![runners::engine(&ds.mesh_split(), partitions).await?];
    for (label, set) in &sweep {
        let parts = if label.starts_with("target_partitions") {
            partitions * 2
        } else {
            partitions
        };
        let set: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        engines.push(runners::engine_with(&ds.mesh_split(), parts, None, &set).await?);
    }
    let mut labels = vec!["defaults"];
    labels.extend(sweep.iter().map(|(l, _)| l.as_str()));
    let runners_list = engines
        .iter()
        .zip(&labels)
        .map(|(e, l)| Ok((*l, Runner::Meshq(runners::session(e, "exempt")?))))
        .collect::<Result<Vec<_>>>()?;
    let table = run_queries(args, &runners_list).await?;
    writeln!(
        out,
        "## 7. DataFusion settings (meshq in-process, exempt principal, Delta/Parquet/Iceberg mesh)\n\n\
Each setting alone over meshq's defaults ({partitions} target partitions), all runs interleaved per query.\n"
    )?;
    writeln!(
        out,
        "| setting | total of medians ms | / defaults | worst query (its ratio) | same answers |"
    )?;
    writeln!(out, "|---|---:|---:|---|---:|")?;
    let total = |i: usize| -> f64 {
        table
            .iter()
            .map(|(_, cells)| cells[i].0.median().as_secs_f64() * 1000.0)
            .sum()
    };
    let base = total(0);
    writeln!(out, "| defaults | {base:.1} | 1.000× | | |")?;
    let mut differ = 0;
    for (i, label) in labels.iter().enumerate().skip(1) {
        let mut worst = ("", 0.0f64);
        let mut same = 0;
        for (name, cells) in &table {
            let r = cells[i].0.median().as_secs_f64() / cells[0].0.median().as_secs_f64();
            if r > worst.1 {
                worst = (name.as_str(), r);
            }
            if cells[i].1 == cells[0].1 {
                same += 1;
            } else {
                differ += 1;
            }
        }
        let t = total(i);
        writeln!(
            out,
            "| {label} | {t:.1} | **{:.3}×** | {} ({:.2}×) | {same} of {} |",
            t / base,
            worst.0,
            worst.1,
            table.len()
        )?;
    }
    writeln!(out)?;
    write_table(out, &labels, &table, 0, &[])?;
    Ok(differ)
}

async fn flight_sql(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<()> {
    let engine = runners::engine(&ds.mesh_split(), partitions).await?;
    let in_process = runners::session(&engine, "exempt")?;
    let server = flight::start(engine, cores())?;
    let (user, password) = PASSWORDS[0];
    let client = flight::client(server.addr, user, password).await?;
    // With the peers measured too, DuckDB answers each query in turn with
    // meshq, run by run, so the ratio is not moved by a change in the
    // machine's speed between two parts of the report.
    let mut duckdb = if args.only.iter().any(|o| o == "peers") {
        Some(runners::DuckDb::start(&ds.root.join("data/parquet"))?)
    } else {
        None
    };
    writeln!(
        out,
        "## 3. Flight SQL (exempt principal, Delta/Parquet/Iceberg mesh, loopback)\n"
    )?;
    if let Some(d) = &duckdb {
        writeln!(
            out,
            "Each run times the query in-process, over Flight SQL and on {} (in-process, over the same data as Parquet), one after the other.\n",
            d.name
        )?;
        writeln!(
            out,
            "| query | in-process median (min–max) ms | Flight SQL median (min–max) ms | {} median (min–max) ms | Flight SQL / DuckDB | rows |",
            d.name
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
    } else {
        writeln!(
            out,
            "| query | in-process median (min–max) ms | Flight SQL median (min–max) ms | rows |"
        )?;
        writeln!(out, "|---|---:|---:|---:|")?;
    }
    let (mut total_in, mut total_flight, mut total_duckdb) = (0.0, 0.0, 0.0);
    let range = |t: &Timing| format!("{} ({}–{})", ms(t.median()), ms(t.min()), ms(t.max()));
    for (name, sql) in chosen_queries(args) {
        let (mut t_in, mut t_fl, mut t_dk) =
            (Timing::default(), Timing::default(), Timing::default());
        let mut n = 0;
        for run in 0..args.warmup + args.runs.max(1) {
            let measured = run >= args.warmup;
            let start = Instant::now();
            let batches = in_process.sql(sql).await?.collect().await?;
            let elapsed = start.elapsed();
            if measured {
                t_in.samples.push(elapsed);
            }
            let start = Instant::now();
            n = flight::query(&mut client.clone(), sql).await?.0;
            let elapsed = start.elapsed();
            if measured {
                t_fl.samples.push(elapsed);
            }
            anyhow::ensure!(
                n == rows(&batches),
                "{name}: Flight returned {n} rows, in-process {}",
                rows(&batches)
            );
            if let Some(d) = duckdb.as_mut() {
                let (elapsed, n_dk) = tokio::task::block_in_place(|| d.run(name))?;
                if measured {
                    t_dk.samples.push(elapsed);
                }
                anyhow::ensure!(n_dk == n, "{name}: DuckDB returned {n_dk} rows, meshq {n}");
            }
        }
        let f = |t: &Timing| t.median().as_secs_f64() * 1000.0;
        total_in += f(&t_in);
        total_flight += f(&t_fl);
        total_duckdb += f(&t_dk);
        eprintln!("{name} flight: {} ms", ms(t_fl.median()));
        if duckdb.is_some() {
            writeln!(
                out,
                "| {name} | {} | {} | {} | {:.2}× | {n} |",
                range(&t_in),
                range(&t_fl),
                range(&t_dk),
                f(&t_fl) / f(&t_dk)
            )?;
        } else {
            writeln!(
                out,
                "| {name} | {} | {} | {n} |",
                range(&t_in),
                range(&t_fl)
            )?;
        }
    }
    if duckdb.is_some() {
        writeln!(
            out,
            "| **total of medians** | **{total_in:.1}** | **{total_flight:.1}** ({:.3}×) | **{total_duckdb:.1}** | **{:.3}×** | |\n",
            total_flight / total_in,
            total_flight / total_duckdb
        )?;
    } else {
        writeln!(
            out,
            "| **total of medians** | **{total_in:.1}** | **{total_flight:.1}** ({:.3}×) | |\n",
            total_flight / total_in
        )?;
    }
    drop(duckdb.take());
    let (t, (n, bytes)) = fetch_lineitem(args, &client).await?;
    let mbps = |d: std::time::Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    writeln!(
        out,
        "Full fetch of `SELECT * FROM sales.lineitem`: {n} rows, {:.1} MB of Arrow data; median {} ms = **{:.0} MB/s** (best {:.0}, worst {:.0}).\n",
        bytes as f64 / 1e6,
        ms(t.median()),
        mbps(t.median()),
        mbps(t.min()),
        mbps(t.max())
    )?;
    let bulk = flight::client_tuned(
        server.addr,
        user,
        password,
        Some(meshq_connectors::flightsql::BULK_WINDOW_BYTES),
        Some(meshq_connectors::flightsql::BULK_FRAME_BYTES),
    )
    .await?;
    let (t_bulk, _) = fetch_lineitem(args, &bulk).await?;
    writeln!(
        out,
        "The same fetch by a client advertising 16 MiB HTTP/2 windows and 1 MiB frames (as meshq's own clients do): median {} ms = **{:.0} MB/s**.\n",
        ms(t_bulk.median()),
        mbps(t_bulk.median())
    )?;
    wire_variants(args, &client, bytes, t.median(), out).await?;
    let (lat, _) = measure(10, args.latency_queries, || {
        let mut c = client.clone();
        async move { flight::query(&mut c, "SELECT 1").await.map(|_| ()) }
    })
    .await?;
    writeln!(
        out,
        "`SELECT 1` round trip (GetFlightInfo + DoGet), {} sequential queries: p50 **{} ms**, p99 {} ms, min {} ms, max {} ms.\n",
        args.latency_queries,
        ms(lat.percentile(50.0)),
        ms(lat.percentile(99.0)),
        ms(lat.min()),
        ms(lat.max())
    )?;
    drop(server);
    result_cache(ds, partitions, out).await
}

/// Times the full fetch of `sales.lineitem` by `client`: (rows, Arrow bytes).
async fn fetch_lineitem(
    args: &Args,
    client: &FlightSqlServiceClient<Channel>,
) -> Result<(Timing, (usize, usize))> {
    measure(args.warmup, args.runs, || {
        let mut c = client.clone();
        async move { flight::query(&mut c, "SELECT * FROM sales.lineitem").await }
    })
    .await
}

/// Only the full fetch of `lineitem` over Flight SQL (arrow-rs client).
async fn fetch(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<()> {
    let engine = runners::engine(&ds.mesh_split(), partitions).await?;
    let server = flight::start(engine, cores())?;
    let (user, password) = PASSWORDS[0];
    let client = flight::client(server.addr, user, password).await?;
    let (t, (n, bytes)) = fetch_lineitem(args, &client).await?;
    writeln!(
        out,
        "Full fetch of `sales.lineitem` over Flight SQL: {n} rows, {:.1} MB; median {} ms = **{:.0} MB/s**.\n",
        bytes as f64 / 1e6,
        ms(t.median()),
        bytes as f64 / 1e6 / t.median().as_secs_f64()
    )?;
    writeln!(
        out,
        "| client's HTTP/2 settings | median ms | MB/s |\n|---|---:|---:|\n| tonic's defaults (2 MiB stream window, 16 KiB frames) | {} | {:.0} |",
        ms(t.median()),
        bytes as f64 / 1e6 / t.median().as_secs_f64()
    )?;
    let tunings: [(&str, Option<u32>, Option<u32>); 5] = [
        ("64 MiB windows", Some(64 << 20), None),
        ("1 MiB frames", None, Some(1 << 20)),
        (
            "64 MiB windows, 1 MiB frames",
            Some(64 << 20),
            Some(1 << 20),
        ),
        (
            "16 MiB windows, 1 MiB frames",
            Some(16 << 20),
            Some(1 << 20),
        ),
        (
            "8 MiB windows, 256 KiB frames",
            Some(8 << 20),
            Some(256 << 10),
        ),
    ];
    for (name, window, frame) in tunings {
        let tuned = flight::client_tuned(server.addr, user, password, window, frame).await?;
        let (t_tuned, _) = fetch_lineitem(args, &tuned).await?;
        writeln!(
            out,
            "| {name} | {} | {:.0} |",
            ms(t_tuned.median()),
            bytes as f64 / 1e6 / t_tuned.median().as_secs_f64()
        )?;
    }
    writeln!(out)?;
    wire_variants(args, &client, bytes, t.median(), out).await?;
    drop(server);
    // The same table served from a memory copy: no Parquet decoding.
    let engine = memory_copy_engine(ds, partitions).await?;
    let server = flight::start(engine, cores())?;
    writeln!(
        out,
        "From a memory copy (`acceleration: {{ engine: memory }}`):\n\n| client's HTTP/2 settings | median ms | MB/s |\n|---|---:|---:|"
    )?;
    let clients = [
        ("tonic's defaults", None),
        (
            "16 MiB windows, 1 MiB frames (meshq's own clients)",
            Some(meshq_connectors::flightsql::BULK_WINDOW_BYTES),
        ),
    ];
    for (name, window) in clients {
        let frame = window.map(|_| meshq_connectors::flightsql::BULK_FRAME_BYTES);
        let c = flight::client_tuned(server.addr, user, password, window, frame).await?;
        let (t, (n_copy, bytes_copy)) = fetch_lineitem(args, &c).await?;
        anyhow::ensure!(
            n_copy == n,
            "the copy returned {n_copy} rows, the files {n}"
        );
        writeln!(
            out,
            "| {name} | {} | {:.0} |",
            ms(t.median()),
            bytes_copy as f64 / 1e6 / t.median().as_secs_f64()
        )?;
    }
    writeln!(out)?;
    drop(server);
    Ok(())
}

/// The `lineitem` fetch again with each wire option a client may ask for
/// (`x-meshq-view-types`, `x-meshq-ipc-compression`). Rates are of the
/// same plain-type Arrow bytes as the default fetch (`plain_bytes`), so
/// they compare as times do.
async fn wire_variants(
    args: &Args,
    client: &FlightSqlServiceClient<Channel>,
    plain_bytes: usize,
    plain: std::time::Duration,
    out: &mut String,
) -> Result<()> {
    writeln!(
        out,
        "| wire option (headers) | median ms | MB/s of plain Arrow data | vs default |\n|---|---:|---:|---:|\n| default (Utf8, no compression) | {} | {:.0} | 1.00× |",
        ms(plain),
        plain_bytes as f64 / 1e6 / plain.as_secs_f64()
    )?;
    let variants: [(&str, &[(&str, &str)]); 3] = [
        ("view types", &[("x-meshq-view-types", "true")]),
        ("LZ4", &[("x-meshq-ipc-compression", "lz4")]),
        ("ZSTD", &[("x-meshq-ipc-compression", "zstd")]),
    ];
    for (name, headers) in variants {
        let mut c = client.clone();
        for (k, v) in headers {
            c.set_header(*k, *v);
        }
        let (t, _) = fetch_lineitem(args, &c).await?;
        eprintln!("wire {name}: {} ms", ms(t.median()));
        writeln!(
            out,
            "| {name} (`{}`) | {} | {:.0} | {:.2}× |",
            headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            ms(t.median()),
            plain_bytes as f64 / 1e6 / t.median().as_secs_f64(),
            t.median().as_secs_f64() / plain.as_secs_f64()
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// `SELECT 1` and the `lineitem` fetch through the clients users run: the
/// ADBC Flight SQL driver and pyarrow's Flight client, from PyPI
/// (benchmarks/peers/clients.sh).
async fn clients(args: &Args, ds: &Dataset, partitions: usize, out: &mut String) -> Result<()> {
    // Against a server reading the files, then against one that keeps
    // every port in memory (`acceleration: { engine: memory }`): the
    // fetch without the server's Parquet decoding, which shares the two
    // cores with the client.
    for from_memory in [false, true] {
        let (engine, heading) = if from_memory {
            (
                memory_copy_engine(ds, partitions).await?,
                "From a memory copy of every port (`acceleration: { engine: memory }`), the same clients:\n",
            )
        } else {
            (
                runners::engine(&ds.mesh_split(), partitions).await?,
                "### Through the clients users run (exempt principal, split mesh, loopback)\n",
            )
        };
        let server = flight::start(engine, cores())?;
        let (user, password) = PASSWORDS[0];
        let table = python_clients(
            &server.addr.to_string(),
            Some((user, password)),
            args.latency_queries,
            args.runs,
            None,
        )?;
        writeln!(out, "{heading}")?;
        out.push_str(&table);
        out.push('\n');
        drop(server);
    }
    // The same clients against pyarrow's own Flight server (Arrow C++,
    // gRPC C++) holding the same `lineitem` in memory and answering
    // `SELECT 1` with one row: what the clients reach on this machine
    // against a server that copies next to nothing (its Python handlers
    // still cost CPU per call).
    let reference = ReferenceServer::start(&ds.parquet_dir("lineitem"))?;
    let table = python_clients(
        &reference.addr,
        None,
        args.latency_queries,
        args.runs,
        Some(reference.child.id()),
    )?;
    drop(reference);
    writeln!(
        out,
        "The same clients against pyarrow's Flight server (Arrow C++) holding the same `lineitem` in memory \
and answering `SELECT 1` with one row (benchmarks/peers/flight_reference_server.py):\n"
    )?;
    out.push_str(&table);
    out.push('\n');
    Ok(())
}

/// pyarrow's Flight server holding one table in memory
/// (`benchmarks/peers/flight_reference_server.sh`); stopped when dropped.
struct ReferenceServer {
    child: std::process::Child,
    addr: String,
}

impl ReferenceServer {
    /// How long the server may take to say it serves: the first run
    /// creates the peers' venv and installs its packages.
    const READY_WITHIN: Duration = Duration::from_secs(600);

    fn start(parquet_dir: &std::path::Path) -> Result<Self> {
        use std::io::BufRead;
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/flight_reference_server.sh");
        let mut child = std::process::Command::new("bash")
            .arg(&script)
            .arg(parquet_dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("running benchmarks/peers/flight_reference_server.sh")?;
        let stdout = child
            .stdout
            .take()
            .context("the reference server's output")?;
        // Dropped (and so stopped) if it does not say it is ready in time.
        let mut server = Self {
            child,
            addr: String::new(),
        };
        // The server's output is read on a thread of its own, which keeps
        // reading (so the server never writes into a full pipe) until the
        // server stops.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line.strip_prefix("ready ") {
                    let _ = ready_tx.send(port.trim().to_string());
                }
            }
        });
        match ready_rx.recv_timeout(Self::READY_WITHIN) {
            Ok(port) => {
                server.addr = format!("127.0.0.1:{port}");
                Ok(server)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => anyhow::bail!(
                "the reference Flight server did not serve within {:?}",
                Self::READY_WITHIN
            ),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!(
                "the reference Flight server stopped before it served (its errors are above)"
            ),
        }
    }
}

impl Drop for ReferenceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An engine over the split mesh with every port copied into memory
/// (`acceleration: { engine: memory }`), the copies built.
async fn memory_copy_engine(ds: &Dataset, partitions: usize) -> Result<meshq_engine::Engine> {
    let engine = runners::engine(&ds.mesh_split_accelerated("memory")?, partitions).await?;
    for (table, outcome) in engine.refresh_accelerations().await {
        anyhow::ensure!(
            matches!(
                outcome,
                meshq_engine::acceleration::RefreshOutcome::Built { .. }
            ),
            "{table} was not accelerated: {outcome:?}"
        );
    }
    Ok(engine)
}

/// Runs the ADBC and pyarrow clients (`benchmarks/peers/clients.sh`)
/// against the server at `addr` (as `credentials`, or without any); their
/// Markdown table. `latency_queries` 0 measures only the fetch. The CPU
/// time of `server_pid` is read, this process's by default.
fn python_clients(
    addr: &str,
    credentials: Option<(&str, &str)>,
    latency_queries: usize,
    runs: usize,
    server_pid: Option<u32>,
) -> Result<String> {
    let (user, password) = credentials.unwrap_or(("-", "-"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/clients.sh");
    let mut command = std::process::Command::new("bash");
    command
        .arg(&script)
        .arg(addr)
        .arg(user)
        .arg(password)
        .arg(latency_queries.to_string())
        .arg(runs.to_string());
    if let Some(pid) = server_pid {
        command.arg(pid.to_string());
    }
    let output = command
        .output()
        .context("running benchmarks/peers/clients.sh")?;
    anyhow::ensure!(
        output.status.success(),
        "the Python clients failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The 22 queries over Flight SQL twice on the split mesh with the result
/// cache on: the first run computes and fills, the second is answered from
/// the cache. Per principal (exempt, regional), each starting from an
/// empty cache, so no first run is answered from the other's entries.
async fn result_cache(ds: &Dataset, partitions: usize, out: &mut String) -> Result<()> {
    let engine = runners::engine(&ds.mesh_split_cached()?, partitions).await?;
    anyhow::ensure!(engine.result_cache().enabled(), "the cache is off");
    let stats = std::sync::Arc::clone(engine.result_cache().stats());
    let cache = std::sync::Arc::clone(engine.result_cache());
    let server = flight::start(engine, cores())?;
    writeln!(
        out,
        "### Result cache (split mesh, `cache: {{ enabled: true, max_bytes: 1GiB }}`)\n\n\
The 22 queries once, then again, per principal, each from an empty cache.\n"
    )?;
    writeln!(
        out,
        "| principal | first run, total ms (hits) | second run, total ms (hits) | second / first |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    for (user, password) in PASSWORDS {
        let client = flight::client(server.addr, user, password).await?;
        let mut answers = Vec::new();
        let mut totals = [0.0; 2];
        let mut hits = [0u64; 2];
        cache.clear();
        for pass in 0..2 {
            let before = stats.counters().hits;
            for (i, (name, sql)) in QUERIES.iter().enumerate() {
                let mut c = client.clone();
                let t = Instant::now();
                let answer = flight::query(&mut c, sql).await?;
                totals[pass] += t.elapsed().as_secs_f64() * 1000.0;
                if pass == 0 {
                    answers.push(answer);
                } else {
                    anyhow::ensure!(
                        answers[i] == answer,
                        "{name} as {user}: the second answer differs ({:?} vs {answer:?} rows, bytes)",
                        answers[i]
                    );
                }
            }
            hits[pass] = stats.counters().hits - before;
        }
        eprintln!(
            "result cache as {user}: {:.1} ms ({} hits) then {:.1} ms ({} hits)",
            totals[0], hits[0], totals[1], hits[1]
        );
        writeln!(
            out,
            "| {user} | {:.1} ({}) | {:.1} ({}) | **{:.4}×** |",
            totals[0],
            hits[0],
            totals[1],
            hits[1],
            totals[1] / totals[0]
        )?;
    }
    writeln!(
        out,
        "\nThe cache is emptied before each principal's first run. Without that, a first run would hit entries the other principal filled: a query that reads no table with a policy for either (14 of the 22 read no `customer`) has the same plan for both."
    )?;
    let c = stats.counters();
    writeln!(
        out,
        "\nCache after the last principal: {} entries, {:.1} MB.\n",
        c.entries,
        c.bytes as f64 / 1e6
    )?;
    drop(server);
    Ok(())
}

/// The 22 queries over Flight SQL on the split mesh with every port
/// accelerated in memory, against the same mesh read from its files, for
/// both principals; the copies' size and the process's memory. Returns
/// how many answers differ from the unaccelerated mesh's.
async fn accelerated(
    args: &Args,
    ds: &Dataset,
    partitions: usize,
    kind: &str,
    out: &mut String,
) -> Result<usize> {
    let plain = runners::engine(&ds.mesh_split(), partitions).await?;
    let (rss_before, _) = rss();
    let engine = runners::engine(&ds.mesh_split_accelerated(kind)?, partitions).await?;
    let started = Instant::now();
    let outcomes = engine.refresh_accelerations().await;
    let build = started.elapsed();
    let mut copy_bytes = 0u64;
    for (table, outcome) in &outcomes {
        match outcome {
            meshq_engine::acceleration::RefreshOutcome::Built { bytes, .. } => copy_bytes += bytes,
            other => anyhow::bail!("{table} was not accelerated: {other:?}"),
        }
    }
    let (rss_after, peak) = rss();
    writeln!(
        out,
        "## 3b. Accelerated ports (split mesh, every port `engine: {kind}`, Flight SQL)\n\n\
{} tables copied in {:.1} s: **{:.1} MiB** ({}); process RSS grew by {:.1} MiB \
(RSS {:.1} MiB, peak {:.1} MiB, with the source engine loaded too).\n",
        outcomes.len(),
        build.as_secs_f64(),
        copy_bytes as f64 / 1048576.0,
        if kind == "memory" {
            "Arrow buffers in memory"
        } else {
            "Parquet files on local disk"
        },
        rss_after.saturating_sub(rss_before) as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        peak as f64 / 1048576.0
    )?;
    let server = flight::start(engine, cores())?;
    let source_server = flight::start(plain, cores())?;
    writeln!(
        out,
        "| principal | files, total of medians ms | accelerated, total of medians ms | accelerated / files |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let mut differ = 0;
    let mut per_query = String::new();
    for (user, password) in PASSWORDS {
        let fast = flight::client(server.addr, user, password).await?;
        let slow = flight::client(source_server.addr, user, password).await?;
        let (mut total_fast, mut total_slow) = (0.0, 0.0);
        for (name, sql) in QUERIES {
            let (t_slow, a) = measure(args.warmup, args.runs, || {
                let mut c = slow.clone();
                async move { flight::query(&mut c, sql).await }
            })
            .await?;
            let (t_fast, b) = measure(args.warmup, args.runs, || {
                let mut c = fast.clone();
                async move { flight::query(&mut c, sql).await }
            })
            .await?;
            if a.0 != b.0 {
                eprintln!(
                    "{name} as {user}: {} rows accelerated, {} from files",
                    b.0, a.0
                );
                differ += 1;
            }
            total_slow += t_slow.median().as_secs_f64() * 1000.0;
            total_fast += t_fast.median().as_secs_f64() * 1000.0;
            writeln!(
                per_query,
                "| {user} | {name} | {} | {} |",
                ms(t_slow.median()),
                ms(t_fast.median())
            )?;
        }
        eprintln!("accelerated as {user}: {total_fast:.1} ms vs {total_slow:.1} ms from files");
        writeln!(
            out,
            "| {user} | {total_slow:.1} | {total_fast:.1} | **{:.3}×** |",
            total_fast / total_slow
        )?;
    }
    writeln!(
        out,
        "\n<details><summary>Per query (median ms)</summary>\n\n| principal | query | files | accelerated |\n|---|---|---:|---:|\n{per_query}</details>\n"
    )?;
    drop(server);
    drop(source_server);
    Ok(differ)
}

async fn catalog(args: &Args, root: &std::path::Path, out: &mut String) -> Result<()> {
    let dir = root.join("catalog-scale");
    let start = Instant::now();
    catalog_scale::write_mesh(&dir, args.products)?;
    eprintln!(
        "catalog mesh ready in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let r = catalog_scale::run(&dir, args.products, 100).await?;
    writeln!(
        out,
        "## 4. Catalog scale\n\n{} products ({} served): load and open every table **{:.2} s**; RSS growth {:.1} MiB (peak RSS {:.1} MiB); \
SQL → physical plan of a two-table join, 100 runs: median **{} ms** (min {}, max {}).\n",
        r.products,
        r.served,
        r.load.as_secs_f64(),
        r.rss_growth as f64 / 1048576.0,
        r.peak_rss as f64 / 1048576.0,
        ms(r.plan.median()),
        ms(r.plan.min()),
        ms(r.plan.max())
    )?;
    Ok(())
}

async fn memory(
    args: &Args,
    root: &std::path::Path,
    partitions: usize,
    out: &mut String,
) -> Result<()> {
    let ds = Dataset::new(root, args.memory_sf);
    let start = Instant::now();
    ds.ensure(false).await?;
    eprintln!(
        "SF{} data ready in {:.1}s",
        args.memory_sf,
        start.elapsed().as_secs_f64()
    );
    let limit = args.memory_limit_mib * 1024 * 1024;
    let engine = runners::engine_with_limit(&ds.mesh_parquet(), partitions, Some(limit)).await?;
    let session = runners::session(&engine, "exempt")?;
    writeln!(
        out,
        "## 5. Memory (SF{}, memory pool {} MiB, spilling to the OS temp dir)\n\n| query | time s | rows | spill files | spilled MiB | outcome |\n|---|---:|---:|---:|---:|---|",
        args.memory_sf, args.memory_limit_mib
    )?;
    let queries: BTreeMap<&str, &str> = QUERIES.into_iter().collect();
    for name in ["q18", "q21"] {
        let start = Instant::now();
        // Run through the physical plan, so its operators' spill metrics
        // can be read afterwards.
        let res = async {
            let plan = session.plan(queries[name]).await?;
            let query = session.execute(plan, None).await?;
            let batches: Vec<_> = query.execute()?.try_collect().await?;
            Ok::<_, anyhow::Error>((batches, spill_totals(&query.plan)))
        }
        .await;
        let took = start.elapsed().as_secs_f64();
        match res {
            Ok((b, (files, bytes))) => writeln!(
                out,
                "| {name} | {took:.1} | {} | {files} | {:.0} | completed |",
                rows(&b),
                bytes as f64 / 1048576.0
            )?,
            Err(e) => writeln!(
                out,
                "| {name} | {took:.1} | - | - | - | failed: {} |",
                e.to_string().replace('|', "/")
            )?,
        }
    }
    let (_, peak) = rss();
    writeln!(
        out,
        "\nPeak RSS of the benchmark process: {:.0} MiB.\n",
        peak as f64 / 1048576.0
    )?;
    Ok(())
}

fn peers(args: &Args, ds: &Dataset, out: &mut String) -> Result<()> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/run.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .arg(ds.root.join("data/parquet"))
        .arg(args.runs.to_string())
        .arg(args.warmup.to_string())
        .output()
        .context("running benchmarks/peers/run.sh")?;
    anyhow::ensure!(
        output.status.success(),
        "peers failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    writeln!(out, "## 6. Peers (in-process, same Parquet files)\n")?;
    out.push_str(&String::from_utf8_lossy(&output.stdout));
    out.push('\n');
    Ok(())
}
