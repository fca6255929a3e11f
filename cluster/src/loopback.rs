//! A cluster on loopback: workers behind the cluster credential, in this
//! process ([`loopback_cluster`]) or in processes of their own
//! ([`serve_loopback_worker`]), and a coordinator over them
//! ([`loopback_coordinator`]). For tests and benchmarks, which compare its
//! answers with a single node's (with a fixed key, [`loopback_key`]), and
//! for `meshq demo --local-workers` (with a key of its own,
//! [`random_key`]).

use std::collections::BTreeMap;

use url::Url;

use crate::auth::{ClusterKey, Verifier};
use crate::coordinator::Coordinator;
use crate::transport::{AuthChannelResolver, Workers, serve_worker};
use crate::travel::WorkerSecrets;
use crate::worker::{SetupError, worker_setup_with};

/// The key of test and benchmark loopback clusters (their workers and
/// coordinators, also across processes). Known to anyone who reads this
/// source: never for a cluster others can reach.
pub fn loopback_key() -> Result<ClusterKey, SetupError> {
    ClusterKey::new("the cluster secret of a loopback cluster").map_err(SetupError::Secret)
}

/// A key nobody else knows, for a cluster within one process.
pub fn random_key() -> ClusterKey {
    let secret = hex::encode(rand::random::<[u8; 32]>());
    ClusterKey::new(&secret).unwrap_or_else(|_| unreachable!("64 hex characters are long enough"))
}

/// Starts a worker on `127.0.0.1:0` (served until the runtime ends),
/// reading from the mesh directory `dir` with its `meshq.yaml` (secrets
/// read from the environment, else from `secret_env_fallback`, as the
/// coordinator's engine reads them): its URL and its credential check
/// (accepted and refused counts).
pub async fn serve_loopback_worker(
    dir: &std::path::Path,
    secret_env_fallback: &BTreeMap<String, String>,
) -> Result<(Url, Verifier), SetupError> {
    serve_loopback_worker_with_key(dir, secret_env_fallback, loopback_key()?).await
}

/// [`serve_loopback_worker`] with the cluster key `key`.
pub async fn serve_loopback_worker_with_key(
    dir: &std::path::Path,
    secret_env_fallback: &BTreeMap<String, String>,
    key: ClusterKey,
) -> Result<(Url, Verifier), SetupError> {
    let platform = if dir.join(meshq_catalog::platform::PLATFORM_FILE).exists() {
        meshq_catalog::platform::PlatformConfig::read(dir).map_err(SetupError::Runtime)?
    } else {
        meshq_catalog::platform::PlatformConfig::default()
    };
    let secrets = WorkerSecrets::resolve_with(&platform, secret_env_fallback);
    let setup = worker_setup_with(&platform, dir, key, secrets)?;
    let io = |e: std::io::Error| SetupError::Workers(format!("a loopback worker: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let url =
        Url::parse(&format!("http://{addr}")).map_err(|e| SetupError::Workers(e.to_string()))?;
    // Credentials made for another worker are refused here.
    let verifier = setup
        .verifier
        .answering_to(crate::transport::authority(&url).into_iter().collect());
    tokio::spawn(serve_worker(
        setup.worker,
        verifier.clone(),
        setup.metrics,
        listener,
        None,
        std::future::pending(),
    ));
    Ok((url, verifier))
}

/// A coordinator over the loopback workers at `urls`, with
/// datafusion-distributed's `settings` (`distributed.*`).
pub fn loopback_coordinator(
    urls: Vec<Url>,
    settings: Vec<(String, String)>,
) -> Result<Coordinator, SetupError> {
    loopback_coordinator_with_key(urls, settings, loopback_key()?)
}

/// [`loopback_coordinator`] with the cluster key `key`.
pub fn loopback_coordinator_with_key(
    urls: Vec<Url>,
    settings: Vec<(String, String)>,
    key: ClusterKey,
) -> Result<Coordinator, SetupError> {
    Coordinator::new(
        Workers::new(urls),
        AuthChannelResolver::new(key, None),
        settings,
    )
    .map_err(SetupError::Workers)
}

/// `n` workers in this process ([`serve_loopback_worker`]), the
/// coordinator over them, every file scan split as finely as the library
/// allows (so even tiny test tables are distributed), and each worker's
/// credential check.
pub async fn loopback_cluster(
    dir: &std::path::Path,
    n: usize,
    secret_env_fallback: &BTreeMap<String, String>,
) -> Result<(Coordinator, Vec<Verifier>), SetupError> {
    loopback_cluster_with_key(dir, n, secret_env_fallback, loopback_key()?).await
}

/// [`loopback_cluster`] with the cluster key `key`.
pub async fn loopback_cluster_with_key(
    dir: &std::path::Path,
    n: usize,
    secret_env_fallback: &BTreeMap<String, String>,
    key: ClusterKey,
) -> Result<(Coordinator, Vec<Verifier>), SetupError> {
    let mut urls = Vec::new();
    let mut verifiers = Vec::new();
    for _ in 0..n {
        let (url, verifier) =
            serve_loopback_worker_with_key(dir, secret_env_fallback, key.clone()).await?;
        urls.push(url);
        verifiers.push(verifier);
    }
    let split_finely = vec![(
        "distributed.file_scan_config_bytes_per_partition".to_string(),
        "1".to_string(),
    )];
    Ok((
        loopback_coordinator_with_key(urls, split_finely, key)?,
        verifiers,
    ))
}
