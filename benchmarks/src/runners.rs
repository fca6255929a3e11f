//! The three ways a query runs in-process: raw DataFusion over the Parquet
//! files, and meshq's engine as the exempt or the governed principal.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use meshq_engine::{Engine, EngineConfig, MeshSession};

use crate::tpch::{Dataset, KEY_ENV, KEY_VALUE, TABLES};

/// Raw DataFusion over the dataset's Parquet files: no meshq code at all,
/// DataFusion's defaults but for the partition count and the settings
/// every meshq engine starts from ([`meshq_engine::DEFAULT_SETTINGS`]), so
/// that meshq's ratio to it is what meshq's own code costs.
pub async fn raw_datafusion(ds: &Dataset, target_partitions: usize) -> Result<SessionContext> {
    let mut config = SessionConfig::new().with_target_partitions(target_partitions);
    for (key, value) in meshq_engine::DEFAULT_SETTINGS {
        config.options_mut().set(key, value)?;
    }
    let ctx = SessionContext::new_with_config(config);
    for schema in ["sales", "customers", "supply"] {
        ctx.sql(&format!("CREATE SCHEMA {schema}")).await?;
    }
    for (domain, table) in TABLES {
        let dir = ds.parquet_dir(table);
        ctx.register_parquet(
            format!("{domain}.{table}"),
            format!("{}/", dir.display()),
            ParquetReadOptions::default(),
        )
        .await
        .with_context(|| format!("registering {table}"))?;
    }
    Ok(ctx)
}

/// DataFusion settings every meshq engine of this run gets (`--set`).
pub static SETTINGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// meshq's engine over `mesh`, with the benchmark's key supplied.
pub async fn engine(mesh: &Path, target_partitions: usize) -> Result<Engine> {
    engine_with_limit(mesh, target_partitions, None).await
}

/// [`engine`] with a memory pool of `memory_limit` bytes (spilling).
pub async fn engine_with_limit(
    mesh: &Path,
    target_partitions: usize,
    memory_limit: Option<usize>,
) -> Result<Engine> {
    engine_with(mesh, target_partitions, memory_limit, &[]).await
}

/// [`engine`] with DataFusion `settings` over meshq's defaults.
pub async fn engine_with(
    mesh: &Path,
    target_partitions: usize,
    memory_limit: Option<usize>,
    settings: &[(&str, &str)],
) -> Result<Engine> {
    load(config_for(mesh, target_partitions, memory_limit, settings)).await
}

/// [`engine`] as the coordinator of `workers` workers served in this
/// process on loopback (datafusion-distributed, behind the cluster
/// credential), every file scan split as finely as the library allows.
pub async fn cluster_engine(
    mesh: &Path,
    target_partitions: usize,
    workers: usize,
) -> Result<Engine> {
    let mut config = config_for(mesh, target_partitions, None, &[]);
    let (coordinator, _) =
        meshq_cluster::loopback::loopback_cluster(mesh, workers, &config.secret_env_fallback)
            .await?;
    config.distribution = Some(std::sync::Arc::new(coordinator));
    load(config).await
}

/// [`engine`] as the coordinator of the loopback workers at `urls`
/// (processes of their own, see [`PinnedWorkers`]), with
/// datafusion-distributed's `settings`.
pub async fn cluster_engine_over(
    mesh: &Path,
    target_partitions: usize,
    urls: Vec<url::Url>,
    settings: Vec<(String, String)>,
) -> Result<Engine> {
    let mut config = config_for(mesh, target_partitions, None, &[]);
    let coordinator =
        meshq_cluster::loopback::loopback_coordinator_with_key(urls, settings, cluster_key()?)?;
    config.distribution = Some(std::sync::Arc::new(coordinator));
    load(config).await
}

/// The secrets a benchmark worker resolves when the environment lacks
/// them, as the benchmark's engines do.
pub fn secret_env_fallback() -> BTreeMap<String, String> {
    BTreeMap::from([(KEY_ENV.into(), KEY_VALUE.into())])
}

/// Worker processes of this benchmark (`meshq-bench --serve-worker`),
/// each pinned to one core with `taskset`; killed when dropped.
pub struct PinnedWorkers {
    children: Vec<std::process::Child>,
    /// Their URLs.
    pub urls: Vec<url::Url>,
}

impl Drop for PinnedWorkers {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The environment variable that gives a worker process the cluster
/// secret of this benchmark run.
pub const SECRET_ENV: &str = "MESHQ_BENCH_CLUSTER_SECRET";

/// The cluster secret of this run: made afresh by the benchmark (or, in a
/// worker process, taken from [`SECRET_ENV`]) and handed to its worker
/// processes, so no other local user can send plans to them.
fn cluster_secret() -> &'static str {
    static SECRET: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var(SECRET_ENV).unwrap_or_else(|_| {
            format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            )
        })
    });
    &SECRET
}

/// The cluster key of this run ([`cluster_secret`]).
pub fn cluster_key() -> Result<meshq_cluster::ClusterKey> {
    meshq_cluster::ClusterKey::new(cluster_secret()).map_err(anyhow::Error::msg)
}

/// What a worker process prints once it listens.
pub const WORKER_LISTENING: &str = "meshq-bench worker listening on ";

/// Starts one worker process per entry of `cores`, pinned to that core,
/// serving the mesh directory `mesh`.
pub fn pinned_workers(mesh: &Path, cores: &[usize]) -> Result<PinnedWorkers> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut workers = PinnedWorkers {
        children: Vec::new(),
        urls: Vec::new(),
    };
    for core in cores {
        let mut child = std::process::Command::new("taskset")
            .arg("-c")
            .arg(core.to_string())
            .arg(&exe)
            .arg("--serve-worker")
            .arg(mesh)
            .env(SECRET_ENV, cluster_secret())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a worker with taskset (util-linux)")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.children.push(child);
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .trim()
            .strip_prefix(WORKER_LISTENING)
            .with_context(|| format!("a worker on core {core} did not start: {line:?}"))?;
        workers.urls.push(url::Url::parse(url)?);
    }
    Ok(workers)
}

/// Pins every thread of this process to the CPUs `cpus` (`taskset` list
/// syntax, e.g. `0` or `0-1`); threads made later inherit it.
pub fn pin_this_process(cpus: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset -a -p -c {cpus} failed");
    Ok(())
}

fn config_for(
    mesh: &Path,
    target_partitions: usize,
    memory_limit: Option<usize>,
    settings: &[(&str, &str)],
) -> EngineConfig {
    let mut config = EngineConfig::new(mesh);
    config.settings = SETTINGS.get().cloned().unwrap_or_default();
    config
        .settings
        .extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    config.target_partitions = Some(target_partitions);
    config.memory_limit = memory_limit;
    config.secret_env_fallback = secret_env_fallback();
    config
}

async fn load(config: EngineConfig) -> Result<Engine> {
    let engine = Engine::load(config).await?;
    let errors: Vec<String> = engine
        .problems()
        .iter()
        .filter(|p| p.is_error())
        .map(ToString::to_string)
        .collect();
    anyhow::ensure!(
        errors.is_empty(),
        "benchmark mesh has {} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    Ok(engine)
}

/// A session of `engine` for principal `name`.
pub fn session(engine: &Engine, name: &str) -> Result<MeshSession> {
    let principal = engine
        .mesh()
        .config
        .principal(name)
        .with_context(|| format!("no principal {name}"))?;
    Ok(engine.session(&principal))
}

/// Something that runs SQL and returns batches.
pub enum Runner {
    /// Plain DataFusion.
    Raw(SessionContext),
    /// meshq, as one principal.
    Meshq(MeshSession),
}

impl Runner {
    /// Runs `sql` to completion.
    pub async fn run(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(match self {
            Self::Raw(ctx) => ctx.sql(sql).await?.collect().await?,
            Self::Meshq(s) => s.sql(sql).await?.collect().await?,
        })
    }

    /// `EXPLAIN ANALYZE` of `sql`: for meshq, as the same principal with
    /// the `admin` role that statement asks for, on the same engine.
    pub async fn analyze(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let sql = format!("EXPLAIN ANALYZE {sql}");
        Ok(match self {
            Self::Raw(ctx) => ctx.sql(&sql).await?.collect().await?,
            Self::Meshq(s) => {
                let mut admin = s.principal().clone();
                admin.roles.insert("admin".into());
                s.engine()
                    .session(&admin)
                    .sql(&sql)
                    .await?
                    .collect()
                    .await?
            }
        })
    }
}

/// Row count of a result.
pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// A result as sorted text lines, to compare runners' answers.
pub fn fingerprint(batches: &[RecordBatch]) -> Vec<String> {
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .expect("displayable");
        for row in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(row).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    out
}

/// DuckDB in a Python process over the benchmark's Parquet files
/// (`benchmarks/peers/peers.py serve`), timing one query per request, so
/// that a measurement can time DuckDB and meshq in turn.
pub struct DuckDb {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// `DuckDB <version>`, as the process reports it.
    pub name: String,
}

impl DuckDb {
    /// Starts the process (creating the peers' venv on first use) over
    /// `parquet`, a directory with one folder of files per TPC-H table.
    pub fn start(parquet: &Path) -> Result<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/python.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("peers.py")
            .arg("serve")
            .arg(parquet)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting benchmarks/peers/python.sh peers.py serve")?;
        let stdin = child.stdin.take().context("DuckDB peer: no stdin")?;
        let mut stdout =
            std::io::BufReader::new(child.stdout.take().context("DuckDB peer: no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let name = line
            .trim()
            .strip_prefix("ready ")
            .with_context(|| format!("DuckDB peer did not start: {line:?}"))?
            .to_string();
        Ok(Self {
            child,
            stdin,
            stdout,
            name,
        })
    }

    /// Runs the TPC-H query `name` (`q7`) once: the time DuckDB took, as
    /// measured in its process, and the rows it returned.
    pub fn run(&mut self, name: &str) -> Result<(std::time::Duration, usize)> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{name}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let (ms, rows) = line
            .trim()
            .split_once(' ')
            .with_context(|| format!("DuckDB peer, {name}: {line:?}"))?;
        let ms: f64 = ms
            .parse()
            .with_context(|| format!("DuckDB peer: {line:?}"))?;
        Ok((
            std::time::Duration::from_secs_f64(ms / 1000.0),
            rows.parse()?,
        ))
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
