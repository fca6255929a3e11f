//! A cluster in this process, on loopback: `n` workers behind the cluster
//! credential and a coordinator over them, every file scan split as
//! finely as the library allows. For tests and benchmarks, which compare
//! its answers with a single node's.

use crate::auth::{ClusterKey, Verifier};
use crate::coordinator::Coordinator;
use crate::transport::{AuthChannelResolver, StaticWorkers, serve_worker};
use std::collections::BTreeMap;

use crate::travel::WorkerSecrets;
use crate::worker::{SetupError, worker_setup_with};

/// Starts `n` workers on `127.0.0.1:0` (served until the runtime ends),
/// reading from the mesh directory `dir` with its `meshq.yaml` (secrets
/// read from the environment, else from `secret_env_fallback`, as the
/// coordinator's engine reads them); the coordinator over them and each
/// worker's credential check (its accepted and refused counts).
pub async fn loopback_cluster(
    dir: &std::path::Path,
    n: usize,
    secret_env_fallback: &BTreeMap<String, String>,
) -> Result<(Coordinator, Vec<Verifier>), SetupError> {
    let key =
        ClusterKey::new("the cluster secret of a loopback cluster").map_err(SetupError::Secret)?;
    let platform = if dir.join(meshq_catalog::platform::PLATFORM_FILE).exists() {
        meshq_catalog::platform::PlatformConfig::read(dir).map_err(SetupError::Runtime)?
    } else {
        meshq_catalog::platform::PlatformConfig::default()
    };
    let secrets = WorkerSecrets::resolve_with(&platform, secret_env_fallback);
    let mut urls = Vec::new();
    let mut verifiers = Vec::new();
    for _ in 0..n {
        let setup = worker_setup_with(&platform, dir, key.clone(), secrets.clone())?;
        let io = |e: std::io::Error| SetupError::Workers(format!("a loopback worker: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        urls.push(
            url::Url::parse(&format!("http://{addr}"))
                .map_err(|e| SetupError::Workers(e.to_string()))?,
        );
        verifiers.push(setup.verifier.clone());
        tokio::spawn(serve_worker(
            setup.worker,
            setup.verifier,
            listener,
            None,
            std::future::pending(),
        ));
    }
    let coordinator = Coordinator::new(
        StaticWorkers::new(urls),
        AuthChannelResolver::new(key, None),
        vec![(
            "distributed.file_scan_config_bytes_per_partition".into(),
            "1".into(),
        )],
    )
    .map_err(SetupError::Workers)?;
    Ok((coordinator, verifiers))
}
