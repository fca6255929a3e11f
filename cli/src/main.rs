//! The `meshq` binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use meshq_cli::demo::{
    DEMO_SECRET_ENV, DEMO_SECRET_VALUE, DemoScale, demo_exists, write_demo_mesh,
};
use meshq_cli::output::OutputFormat;
use meshq_cli::shell::Shell;
use meshq_cli::validate;
use std::sync::Arc;

use datafusion::common::runtime::SpawnedTask;
use meshq_engine::{Engine, EngineConfig, LiveEngine, Principal, ReloadOutcome, ReloadStatus};
use meshq_flight_server::audit::AuditLog;
use meshq_flight_server::metrics::Metrics;
use meshq_flight_server::operations::Operations;

/// meshq: SQL over a data mesh, governed by its data contracts.
#[derive(Debug, Parser)]
#[command(name = "meshq", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `meshq_engine=debug`.
    #[arg(long, env = "MESHQ_LOG", default_value = "warn", global = true)]
    log_filter: String,
    /// Log line format on stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(
        long,
        value_enum,
        env = "MESHQ_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the example retail mesh (if absent) and serve it over Flight SQL
    /// (or open a shell on it with --shell).
    Demo(DemoArgs),
    /// Serve a mesh over Arrow Flight SQL.
    Serve(ServeArgs),
    /// Run SQL over a mesh: interactive, or `-c SQL` / `-f FILE`.
    Shell(ShellArgs),
    /// Check every file of a mesh and every table it serves; exit 2 on errors.
    Validate(MeshArgs),
    /// Read a password from stdin and print its argon2 PHC hash for meshq.yaml.
    HashPassword,
    /// Draw which products feed which (from their input ports).
    Lineage(LineageArgs),
    /// Run the contracts' quality rules on the data; exit 1 when an
    /// error-severity rule fails, 2 for an unusable mesh or selection.
    Check(CheckArgs),
    /// Compare two mesh directories and classify every change for
    /// consumers; exit 1 on a breaking change without a major version bump.
    Diff(DiffArgs),
    /// Convert data-mesh product manifests (datamesh/v1) or Data Contract
    /// Specification 0.9.3 contracts into ODPS products and ODCS contracts;
    /// exit 1 when a source could not be converted, 2 when the result does
    /// not load.
    Import(ImportArgs),
    /// Execute fragments of query plans for a coordinator (`meshq serve
    /// --workers`); reads only the mesh's meshq.yaml (cluster secret,
    /// secrets, stores, limits).
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Address to listen on (port 0: any free port, printed on stderr).
    #[arg(long, env = "MESHQ_WORKER_BIND", default_value = "127.0.0.1:50052")]
    bind: std::net::SocketAddr,
    /// The URLs coordinators reach this worker by (comma-separated, e.g.
    /// `http://10.0.3.7:50052`): requests addressed to any other name are
    /// refused, so a credential made for another worker cannot be used
    /// here. Unset: requests for any name are served.
    #[arg(long, env = "MESHQ_WORKER_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<String>,
    /// Serve the worker's Prometheus metrics (`meshq_worker_*`) at
    /// `http://ADDR/metrics` (port 0: any free port, printed on stderr).
    #[arg(long, env = "MESHQ_WORKER_METRICS_BIND")]
    metrics_bind: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The format of the source files.
    #[arg(long = "from", value_enum)]
    from: meshq_cli::import::Source,
    /// Source files (YAML; several documents per file are read one by one).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where to write `DOMAIN/NAME.odps.yaml`, `DOMAIN/TABLE.odcs.yaml` and
    /// `import-report.md`.
    #[arg(long)]
    out: PathBuf,
    /// The domain of every imported product, instead of the one each source
    /// names.
    #[arg(long)]
    domain: Option<String>,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct DiffArgs {
    /// The mesh before (e.g. a checkout of main).
    old: PathBuf,
    /// The mesh after (e.g. the pull request).
    new: PathBuf,
    /// Report format.
    #[arg(long, value_enum, default_value = "text")]
    format: DiffFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DiffFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Only this table (`domain.table`); repeatable.
    #[arg(long = "table")]
    tables: Vec<String>,
    /// Only the tables of this product (id or name); repeatable.
    #[arg(long = "product")]
    products: Vec<String>,
    /// Report format.
    #[arg(long, value_enum, default_value = "table")]
    format: meshq_cli::check::CheckFormat,
    /// Write the report to this file instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Tables checked at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

#[derive(Debug, Args)]
struct LineageArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Only this product (id or name) and what is upstream and downstream of it.
    product: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "mermaid")]
    format: meshq_cli::lineage::LineageFormat,
}

#[derive(Debug, Args)]
struct MeshArgs {
    /// Mesh directory: meshq.yaml, *.odps.yaml, *.odcs.yaml, governance/*.policy.yaml.
    #[arg(long, env = "MESHQ_MESH")]
    mesh: PathBuf,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Run these SQL statements and exit.
    #[arg(short = 'c', long = "command", conflicts_with = "file")]
    command: Option<String>,
    /// Run the SQL statements in this file and exit.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Result format.
    #[arg(long, value_enum, env = "MESHQ_FORMAT", default_value = "table")]
    format: OutputFormat,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    server: ServerArgs,
    /// Workers (`meshq worker`) to run queries on, as `http://host:port`
    /// (or `https://` with `cluster.tls`), or `dns+http://name:port` for a
    /// worker at every address of a DNS name (looked up again every 2 s),
    /// comma-separated; overrides `cluster.workers` in meshq.yaml.
    #[arg(long, env = "MESHQ_WORKERS", value_delimiter = ',')]
    workers: Vec<String>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "MESHQ_BIND", default_value = "127.0.0.1:50051")]
    bind: std::net::SocketAddr,
    /// PEM certificate for TLS (with --tls-key); without both the server speaks plaintext.
    #[arg(long, env = "MESHQ_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "MESHQ_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write the bound port to this file once the mesh is loaded and the
    /// server answers.
    #[arg(long, env = "MESHQ_PORT_FILE")]
    port_file: Option<PathBuf>,
    /// Seconds in-flight calls may run after SIGTERM/ctrl-c before the server exits.
    #[arg(
        long = "shutdown-grace",
        env = "MESHQ_SHUTDOWN_GRACE",
        default_value_t = 10,
        value_name = "SECS"
    )]
    shutdown_grace_secs: u64,
    /// Serve Prometheus metrics over HTTP on this address (`/metrics`).
    #[arg(long, env = "MESHQ_METRICS_BIND")]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Serve the web catalog (search, product pages, SQL) over HTTP on this
    /// address; `meshq demo` serves it on 127.0.0.1:8080 unless told
    /// otherwise.
    #[arg(long = "http", env = "MESHQ_HTTP_BIND", value_name = "ADDR")]
    http: Option<std::net::SocketAddr>,
    /// Append one JSON line per query and per failed login to this file
    /// (`-` for stdout).
    #[arg(long, env = "MESHQ_AUDIT_LOG", value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// How often the mesh directory is checked for changes, in seconds
    /// (SIGHUP reloads at once); 0 turns watching off.
    #[arg(
        long,
        env = "MESHQ_RELOAD_INTERVAL",
        default_value_t = 2.0,
        value_name = "SECS"
    )]
    reload_interval: f64,
    /// Run the contracts' quality rules after each (re)load and then this
    /// often, in seconds, off the query path; results in `meta.quality`
    /// and the metrics. 0 turns them off (the default for `serve`; `demo`
    /// checks every 300 s).
    #[arg(long, env = "MESHQ_QUALITY_INTERVAL", value_name = "SECS")]
    quality_interval: Option<f64>,
    /// Tables the periodic quality checks read at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    quality_concurrency: usize,
    /// While some table's storage cannot be opened, try again this often,
    /// in seconds.
    #[arg(
        long,
        env = "MESHQ_STORAGE_RETRY",
        default_value_t = 30.0,
        value_name = "SECS"
    )]
    storage_retry: f64,
}

impl ServerArgs {
    /// Files of the server's own that SQL must never read or write.
    fn protected_paths(&self) -> Vec<PathBuf> {
        [
            &self.tls_cert,
            &self.tls_key,
            &self.audit_log,
            &self.port_file,
        ]
        .into_iter()
        .flatten()
        .filter(|p| p.as_os_str() != "-")
        .cloned()
        .collect()
    }
}

#[derive(Debug, Args)]
struct ShellArgs {
    #[command(flatten)]
    mesh: MeshArgs,
    /// Run as this principal from meshq.yaml, to see what they see. Without
    /// it the shell is anonymous: no roles, no attributes.
    #[arg(long = "as", env = "MESHQ_AS", value_name = "NAME")]
    principal: Option<String>,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where to write the demo mesh.
    #[arg(default_value = "meshq-demo", env = "MESHQ_DEMO_DIR")]
    dir: PathBuf,
    /// Only write the mesh; do not serve it or open a shell.
    #[arg(long)]
    no_shell: bool,
    /// Open the SQL shell instead of serving Flight SQL.
    #[arg(long, conflicts_with = "no_shell")]
    shell: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// Demo principal to run as (ana, ben, gina, pat or root).
    #[arg(long = "as", value_name = "NAME", default_value = "gina")]
    principal: String,
    /// Run queries as the coordinator of N workers started in this process
    /// on 127.0.0.1, with a cluster secret made for this run: a cluster on
    /// one machine, to see distributed plans (`EXPLAIN`) and the same
    /// masked answers. Every file scan is split as finely as possible, so
    /// the demo's small tables are distributed too.
    #[arg(long, value_name = "N", default_value_t = 0)]
    local_workers: usize,
    #[command(flatten)]
    query: QueryArgs,
}

/// Exit codes: 0 ok, 1 runtime/query error, 2 usage or invalid mesh.
const EXIT_QUERY: u8 = 1;
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Planning and running a statement recurse over its syntax tree; the
    // statement limits bound the depth, and every thread that plans or runs
    // one has the stack that depth needs.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(meshq_engine::statement::THREAD_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_QUERY);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(EXIT_QUERY)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("Error: no password on stdin");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
            println!("{}", meshq_cli::hash_password(password)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage(args) => {
            let outcome = meshq_catalog::load_mesh(&args.mesh.mesh)?;
            for p in outcome.problems.iter().filter(|p| p.is_error()) {
                eprintln!("{p}");
            }
            let text =
                meshq_cli::lineage::render(&outcome.mesh, args.product.as_deref(), args.format)?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => check(args).await,
        Command::Import(args) => import(args),
        Command::Worker(args) => worker(args).await,
        Command::Diff(args) => {
            let mut meshes = Vec::new();
            for dir in [&args.old, &args.new] {
                let outcome = meshq_catalog::load_mesh(dir)
                    .with_context(|| format!("loading mesh {}", dir.display()))?;
                let errors: Vec<_> = outcome.problems.iter().filter(|p| p.is_error()).collect();
                if !errors.is_empty() {
                    eprintln!(
                        "meshq diff: {} has {} error(s); fix them first (`meshq validate --mesh {}`):",
                        dir.display(),
                        errors.len(),
                        dir.display()
                    );
                    for p in errors {
                        eprintln!("  {p}");
                    }
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
                meshes.push(outcome.mesh);
            }
            let changes = meshq_cli::diff::diff(&meshes[0], &meshes[1]);
            match args.format {
                DiffFormat::Text => print!("{}", meshq_cli::diff::to_text(&changes)),
                DiffFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&meshq_cli::diff::to_json(&changes))?
                ),
            }
            Ok(if changes.iter().any(|c| c.error) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Validate(args) => {
            let engine = load(&args.mesh, EngineConfig::new(&args.mesh)).await?;
            let mut out = std::io::stdout();
            let failed = validate::report(&engine, &mut out)?;
            Ok(if failed {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Serve(args) => {
            let mut config = EngineConfig::new(&args.mesh.mesh);
            config.protected_paths = args.server.protected_paths();
            match coordinator(&args.mesh.mesh, &args.workers) {
                Ok(c) => config.distribution = c,
                Err(e) => {
                    eprintln!("Error: {e}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            }
            let live = LiveEngine::new(config);
            serve(live, args.server, |_, _| {}).await
        }
        Command::Shell(args) => {
            let engine =
                load_for_queries(&args.mesh.mesh, EngineConfig::new(&args.mesh.mesh)).await?;
            report_problems(&engine);
            let Some(principal) = principal(&engine, args.principal.as_deref()) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            shell(engine, &principal, args.query).await
        }
        Command::Demo(args) => {
            if demo_exists(&args.dir) {
                eprintln!("Using the existing demo mesh in {}", args.dir.display());
            } else {
                eprintln!("Writing the demo mesh to {} ...", args.dir.display());
                write_demo_mesh(&args.dir, DemoScale::default()).await?;
            }
            if args.no_shell {
                return Ok(ExitCode::SUCCESS);
            }
            let mut config = EngineConfig::new(&args.dir);
            config
                .secret_env_fallback
                .insert(DEMO_SECRET_ENV.into(), DEMO_SECRET_VALUE.into());
            config.protected_paths = args.server.protected_paths();
            if args.local_workers > 0 {
                let (coordinator, _) = meshq_cluster::loopback::loopback_cluster_with_key(
                    &args.dir,
                    args.local_workers,
                    &config.secret_env_fallback,
                    meshq_cluster::loopback::random_key(),
                )
                .await
                .context("starting the demo's workers")?;
                eprintln!(
                    "Queries run as the coordinator of {}",
                    coordinator.describe()
                );
                let _checks = coordinator.spawn_health_checks();
                config.distribution = Some(Arc::new(coordinator));
            }
            let mut args = args;
            args.server.quality_interval = args.server.quality_interval.or(Some(300.0));
            let engine = load_for_queries(&args.dir, config.clone()).await?;
            report_problems(&engine);
            let Some(principal) = principal(&engine, Some(&args.principal)) else {
                return Ok(ExitCode::from(EXIT_INVALID));
            };
            let interactive = args.query.command.is_none() && args.query.file.is_none();
            if interactive && !args.shell {
                // The web catalog on 127.0.0.1:8080 (on any free port when the
                // Flight SQL port is chosen that way).
                if args.server.http.is_none() {
                    let preferred = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
                    let port = if args.server.bind.port() == 0 {
                        0
                    } else if std::net::TcpListener::bind(preferred).is_err() {
                        eprintln!("127.0.0.1:8080 is in use; the web catalog takes a free port");
                        0
                    } else {
                        8080
                    };
                    args.server.http = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
                }
                let tables = engine.served_tables().len();
                let dir = args.dir.display().to_string();
                let live = LiveEngine::with_engine(config, engine);
                return serve(live, args.server, move |addr, web| {
                    println!(
                        "{}",
                        meshq_cli::demo::connect_banner(&dir, tables, addr, web)
                    );
                })
                .await;
            }
            // As the demo server does on load: `meta.quality` has rows.
            meshq_engine::quality::check_and_record(&engine, 4).await;
            if interactive {
                eprintln!(
                    "Try: SELECT c.region, sum(o.total_amount) FROM sales.orders o JOIN customers.profiles c USING (customer_id) GROUP BY 1 ORDER BY 1;"
                );
            }
            shell(engine, &principal, args.query).await
        }
    }
}

/// Serves until ctrl-c or SIGTERM. The server listens at once; the mesh
/// is loaded (unless `live` already has it), then watched and reloaded on
/// change and on SIGHUP. `banner` runs once the server is ready.
async fn serve(
    live: Arc<LiveEngine>,
    args: ServerArgs,
    banner: impl FnOnce(std::net::SocketAddr, Option<String>) + Send + 'static,
) -> Result<ExitCode> {
    let audit = match &args.audit_log {
        Some(path) => Some(
            AuditLog::open(path)
                .with_context(|| format!("opening the audit log {}", path.display()))?,
        ),
        None => None,
    };
    let ops = Arc::new(Operations::new(Arc::new(Metrics::new()), audit));
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let config = meshq_flight_server::ServerConfig {
        tls: args.tls_cert.zip(args.tls_key),
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
        metrics_bind: args.metrics_bind,
        http_bind: args.http,
    };
    let tls = config.tls.is_some();
    // Stops with the server.
    let _quality = args
        .quality_interval
        .filter(|secs| *secs > 0.0)
        .map(|secs| {
            meshq_engine::quality::periodic::spawn(
                Arc::clone(&live),
                std::time::Duration::from_secs_f64(secs),
                args.quality_concurrency,
            )
        });
    // Copies of accelerated tables, refreshed on the reload interval.
    let _accelerations = meshq_engine::acceleration::spawn_refresher(
        Arc::clone(&live),
        std::time::Duration::from_secs_f64(args.reload_interval.max(1.0)),
    );
    let (listening_tx, listening_rx) = tokio::sync::oneshot::channel();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let hangups = hangups();
    let loader = {
        let live = Arc::clone(&live);
        let ops = Arc::clone(&ops);
        let interval = args.reload_interval;
        let port_file = args.port_file.clone();
        let retry = std::time::Duration::from_secs_f64(args.storage_retry.max(1.0));
        SpawnedTask::spawn(async move {
            if !live.is_ready() {
                let outcome = live.reload().await;
                ops.metrics.reloaded(outcome.status.label());
                if let ReloadStatus::Rejected(why) = &outcome.status {
                    let _ = failed_tx.send(why.clone());
                    return;
                }
                if let Some(engine) = live.current() {
                    report_problems(&engine);
                }
            } else {
                ops.metrics.reloaded("ok");
            }
            let Ok(meshq_flight_server::Listening {
                flight,
                metrics,
                http,
            }) = listening_rx.await
            else {
                return;
            };
            // Written once the server can answer, so a script that waits for
            // the file can query at once.
            if let Some(path) = port_file {
                let tmp = path.with_extension("tmp");
                let written = std::fs::write(&tmp, flight.port().to_string())
                    .and_then(|_| std::fs::rename(&tmp, &path));
                if let Err(e) = written {
                    eprintln!("Error: cannot write the port file {}: {e}", path.display());
                }
            }
            if let Some(m) = metrics {
                eprintln!("meshq metrics on http://{m}/metrics");
            }
            let web = http.map(|h| format!("{}://{h}/", if tls { "https" } else { "http" }));
            if let Some(url) = &web {
                eprintln!("meshq web catalog on {url}");
            }
            let scheme = if tls { "grpc+tls" } else { "grpc" };
            eprintln!("meshq serving Flight SQL on {scheme}://{flight}");
            banner(flight, web);
            let on_reload = {
                let ops = Arc::clone(&ops);
                move |o: &ReloadOutcome| ops.metrics.reloaded(o.status.label())
            };
            // Stops with the loader, when the server stops.
            let _watcher = (interval > 0.0).then(|| {
                meshq_engine::live::watch(
                    Arc::clone(&live),
                    std::time::Duration::from_secs_f64(interval),
                    retry,
                    on_reload.clone(),
                )
            });
            reload_on_sighup(hangups, live, on_reload).await;
        })
    };
    let shutdown = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            Ok(why) = failed_rx => {
                eprintln!("Error: cannot load the mesh: {why}");
            }
        }
    };
    let served = meshq_flight_server::serve(
        listener,
        Arc::clone(&live),
        ops,
        config,
        shutdown,
        move |l| {
            let _ = listening_tx.send(l);
        },
    )
    .await;
    drop(loader);
    served?;
    Ok(if live.is_ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

/// SIGHUP, taken over when the server starts: its default action would end
/// the process, also while the first load runs.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

/// Reloads the mesh on each SIGHUP.
async fn reload_on_sighup(
    hangups: Hangups,
    live: Arc<LiveEngine>,
    on_reload: impl Fn(&ReloadOutcome),
) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangups else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the mesh");
            let outcome = live.reload().await;
            on_reload(&outcome);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, live, on_reload);
        std::future::pending::<()>().await;
    }
}

/// The cluster this server coordinates, if `workers` or `cluster.workers`
/// name any.
fn coordinator(
    dir: &std::path::Path,
    workers: &[String],
) -> Result<Option<Arc<dyn meshq_engine::engine::Distribution>>, String> {
    let config = match meshq_catalog::platform::PlatformConfig::read(dir) {
        Ok(c) => c,
        // The mesh load reports a missing or broken meshq.yaml.
        Err(_) if workers.is_empty() => return Ok(None),
        Err(e) => return Err(e),
    };
    let coordinator = meshq_cluster::worker::coordinator_setup(&config, dir, workers)
        .map_err(|e| e.to_string())?;
    Ok(coordinator.map(|c| {
        eprintln!("meshq distributes queries to {}", c.describe());
        // Runs for the life of the server.
        let _checks = c.spawn_health_checks();
        Arc::new(c) as Arc<dyn meshq_engine::engine::Distribution>
    }))
}

/// Serves as a worker until ctrl-c or SIGTERM.
async fn worker(args: WorkerArgs) -> Result<ExitCode> {
    let dir = &args.mesh.mesh;
    let config = match meshq_catalog::platform::PlatformConfig::read(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let setup = match meshq_cluster::worker::worker_setup(&config, dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let mut names = Vec::new();
    for u in &args.advertise {
        match url::Url::parse(u)
            .ok()
            .and_then(|url| meshq_cluster::transport::authority(&url))
        {
            Some(name) => names.push(name),
            None => {
                eprintln!("Error: --advertise `{u}` is not a URL like http://host:port");
                return Ok(ExitCode::from(EXIT_INVALID));
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    if names.is_empty() {
        if addr.ip().is_unspecified() {
            eprintln!(
                "meshq worker: bound to every address, so it serves requests addressed to any name; give --advertise (the URLs coordinators reach it by) so that a credential made for another worker is refused here"
            );
        } else if let Some(name) = url::Url::parse(&format!("http://{addr}"))
            .ok()
            .and_then(|u| meshq_cluster::transport::authority(&u))
        {
            // Bound to one address: that is its name.
            names.push(name);
        }
    }
    let verifier = setup.verifier.answering_to(names);
    let scheme = if setup.tls.is_some() { "https" } else { "http" };
    eprintln!("meshq worker listening on {scheme}://{addr}");
    if !verifier.names().is_empty() {
        eprintln!("meshq worker answers to {}", verifier.names().join(", "));
    }
    if let Some(bind) = args.metrics_bind {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding the metrics address {bind}"))?;
        eprintln!(
            "meshq worker metrics on http://{}/metrics",
            listener.local_addr()?
        );
        let metrics = Arc::clone(&setup.metrics);
        let render: meshq_flight_server::metrics::Render = Arc::new(move || {
            let metrics = Arc::clone(&metrics);
            Box::pin(async move {
                metrics.sample();
                metrics.render()
            })
        });
        tokio::spawn(async move {
            if let Err(e) =
                meshq_flight_server::metrics::serve_text(listener, render, shutdown_signal()).await
            {
                tracing::warn!(error = %e, "the worker's metrics endpoint stopped");
            }
        });
    }
    meshq_cluster::serve_worker(
        setup.worker,
        verifier,
        setup.metrics,
        listener,
        setup.tls,
        shutdown_signal(),
    )
    .await
    .context("serving the worker")?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down");
}

/// The principal named by `--as`, or anonymous. `None` (after saying why)
/// when the name is unknown.
fn principal(engine: &Engine, name: Option<&str>) -> Option<Principal> {
    let Some(name) = name else {
        return Some(Principal::anonymous());
    };
    let found = engine.mesh().config.principal(name);
    if found.is_none() {
        let known: Vec<_> = engine
            .mesh()
            .config
            .principals
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        eprintln!(
            "Error: no principal `{name}` in meshq.yaml (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    found
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    use meshq_cli::check;
    let mut config = EngineConfig::new(&args.mesh.mesh);
    if demo_exists(&args.mesh.mesh) {
        // The demo's mask key, so that the demo mesh loads without errors;
        // the checks themselves read the data unmasked.
        config
            .secret_env_fallback
            .insert(DEMO_SECRET_ENV.into(), DEMO_SECRET_VALUE.into());
    }
    let engine = load(&args.mesh.mesh, config).await?;
    report_problems(&engine);
    let tables = match check::select(&engine, &args.tables, &args.products) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meshq check: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    use std::io::IsTerminal;
    let interactive = std::io::stderr().is_terminal();
    let progress = move |done: usize, total: usize| {
        if interactive {
            eprint!("\rchecked {done}/{total} table(s)");
            if done == total {
                eprintln!();
            }
        }
    };
    let reports =
        meshq_engine::quality::check_tables(&engine, &tables, args.concurrency, &progress).await;
    match &args.output {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            check::write_report(&reports, args.format, &mut f)?;
            f.flush()?;
        }
        None => check::write_report(&reports, args.format, &mut std::io::stdout().lock())?,
    }
    let mesh_errors = engine.problems().iter().any(|p| p.is_error());
    Ok(if mesh_errors {
        // An invalid mesh: what could be checked was, but tables are missing.
        ExitCode::from(EXIT_INVALID)
    } else if check::Summary::of(&reports).blocking > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn load(mesh: &std::path::Path, config: EngineConfig) -> Result<Engine> {
    Engine::load(config)
        .await
        .with_context(|| format!("loading mesh {}", mesh.display()))
}

/// `meshq import`: converts, writes the report, then loads the output as
/// meshq would and lists its problems.
fn import(args: ImportArgs) -> Result<ExitCode> {
    use meshq_cli::import;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let reports = import::import(
        args.from,
        &args.files,
        &args.out,
        args.domain.as_deref(),
        args.force,
    );
    let report_file = args.out.join("import-report.md");
    std::fs::write(&report_file, import::render(&reports, args.from))
        .with_context(|| format!("writing {}", report_file.display()))?;
    print!("{}", import::summary(&reports));
    println!("Details: {}", report_file.display());
    let failed = reports.iter().any(|r| r.error.is_some());
    let written: Vec<PathBuf> = reports
        .iter()
        .flat_map(|r| r.written.iter().map(|w| args.out.join(w)))
        .collect();
    if written.is_empty() {
        return Ok(ExitCode::from(1));
    }
    // What meshq makes of the result (the data itself is not opened).
    let outcome = meshq_catalog::load_mesh(&args.out)
        .with_context(|| format!("loading {}", args.out.display()))?;
    let mine: Vec<_> = outcome
        .problems
        .iter()
        .filter(|p| {
            let file = args.out.join(&p.file);
            written.iter().any(|w| w.ends_with(&p.file) || *w == file)
        })
        .collect();
    let errors = mine.iter().filter(|p| p.is_error()).count();
    println!(
        "meshq reads the converted files: {} table(s) in {} product(s), {errors} error(s), {} warning(s)",
        outcome.mesh.tables.len(),
        outcome.mesh.products.len(),
        mine.len() - errors
    );
    for p in &mine {
        println!("  {p}");
    }
    Ok(if errors > 0 {
        ExitCode::from(EXIT_INVALID)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// [`load`] for answering queries (shell, demo): accelerated tables are
/// read from their copies, as a server reads them. `validate` and `check`
/// read the sources.
async fn load_for_queries(mesh: &std::path::Path, config: EngineConfig) -> Result<Engine> {
    let engine = load(mesh, config).await?;
    for (table, outcome) in engine.refresh_accelerations().await {
        if let meshq_engine::acceleration::RefreshOutcome::Failed(e) = outcome {
            eprintln!("Warning: `{table}` is read from its source: {e}");
        }
    }
    Ok(engine)
}

/// Shell and demo start even with a broken product; say what is missing.
fn report_problems(engine: &Engine) {
    let errors: Vec<_> = engine.problems().iter().filter(|p| p.is_error()).collect();
    if errors.is_empty() {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{} problem(s) in the mesh; the rest is served (run `meshq validate` for details):",
        errors.len()
    );
    for p in errors {
        let _ = writeln!(err, "  {p}");
    }
}

async fn shell(engine: Engine, principal: &Principal, q: QueryArgs) -> Result<ExitCode> {
    let shell = Shell::new(engine, principal, q.format);
    let sql = match (&q.command, &q.file) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None) => None,
    };
    match sql {
        Some(sql) => {
            let mut out = std::io::stdout();
            if let Err(e) = shell.run_script(&sql, &mut out).await {
                eprintln!("Error: {}", meshq_cli::error_message(&e));
                return Ok(ExitCode::from(EXIT_QUERY));
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            shell.interactive().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
