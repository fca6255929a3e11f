//! [`LiveEngine`]: the mesh as served, swapped atomically on reload.
//!
//! A query takes the current [`Engine`] once, when it starts, and plans and
//! runs on it to the end: it sees the old mesh or the new one, never a mix.
//! Reloads are serialised; each is validated by loading it in full before
//! the swap (see [`Engine::load_after`] for what a reload with errors keeps).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::{Duration, Instant, SystemTime};

use datafusion::common::runtime::SpawnedTask;
use tracing::{info, warn};

use crate::engine::{Engine, EngineConfig};

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadStatus {
    /// The new mesh is served, with no errors.
    Ok,
    /// The new mesh is served; some products have errors and keep their
    /// previous version, or are not served.
    Partial,
    /// Nothing changed: the mesh could not be loaded, or a mesh-wide file
    /// has errors.
    Rejected(String),
}

impl ReloadStatus {
    /// `ok`, `partial` or `rejected`, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Rejected(_) => "rejected",
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// How it ended.
    pub status: ReloadStatus,
    /// Version served afterwards (1 is the first load).
    pub version: u64,
    /// Tables new in this version.
    pub added: Vec<String>,
    /// Tables whose definition changed.
    pub changed: Vec<String>,
    /// Tables no longer served.
    pub removed: Vec<String>,
    /// Tables kept at their previous version because the new one has errors.
    pub kept: Vec<String>,
    /// Error problems in the new version.
    pub errors: usize,
    /// How long the load took.
    pub took: Duration,
}

/// The served mesh; empty until the first load completes.
#[derive(Debug)]
pub struct LiveEngine {
    config: EngineConfig,
    current: RwLock<Option<Engine>>,
    reloading: tokio::sync::Mutex<()>,
    loaded_at: RwLock<Option<SystemTime>>,
    /// The version served; 0 until the first load.
    version: tokio::sync::watch::Sender<u64>,
}

impl LiveEngine {
    /// Nothing loaded yet; call [`LiveEngine::reload`].
    pub fn new(config: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            current: RwLock::new(None),
            reloading: tokio::sync::Mutex::new(()),
            loaded_at: RwLock::new(None),
            version: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Serves an engine already loaded (version 1).
    pub fn with_engine(config: EngineConfig, engine: Engine) -> Arc<Self> {
        let live = Self::new(config);
        *live.current.write() = Some(engine);
        *live.loaded_at.write() = Some(SystemTime::now());
        live.version.send_replace(1);
        live
    }

    /// Resolves once the first load has completed.
    pub async fn ready(&self) {
        let mut rx = self.version.subscribe();
        let _ = rx.wait_for(|v| *v > 0).await;
    }

    /// The mesh directory.
    pub fn mesh_dir(&self) -> &Path {
        &self.config.mesh_dir
    }

    /// The version being served, if the first load has completed.
    pub fn current(&self) -> Option<Engine> {
        self.current.read().clone()
    }

    /// Whether the first load has completed.
    pub fn is_ready(&self) -> bool {
        self.version() > 0
    }

    /// Versions loaded so far (0 before the first load).
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Sees each new version served.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// When the served version was loaded.
    pub fn loaded_at(&self) -> Option<SystemTime> {
        *self.loaded_at.read()
    }

    /// Loads the mesh directory again and swaps it in (the first call loads
    /// it for the first time). Never leaves nothing served once something
    /// was: a rejected reload keeps the previous version.
    pub async fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.reloading.lock().await;
        let started = Instant::now();
        let previous = self.current();
        let loaded = Engine::load_after(self.config.clone(), previous.as_ref()).await;
        let took = started.elapsed();
        let engine = match loaded {
            Ok(e) => e,
            Err(e) => {
                let why = e.to_string();
                warn!(error = %why, "mesh reload rejected; the previous version is still served");
                return ReloadOutcome {
                    status: ReloadStatus::Rejected(why),
                    version: self.version(),
                    added: vec![],
                    changed: vec![],
                    removed: vec![],
                    kept: vec![],
                    errors: 0,
                    took,
                };
            }
        };
        let defs = |e: Option<&Engine>| -> BTreeMap<String, Arc<meshq_catalog::TableDef>> {
            e.map(|e| {
                e.served_tables()
                    .iter()
                    .map(|t| (t.def.qualified_name(), Arc::clone(&t.def)))
                    .collect()
            })
            .unwrap_or_default()
        };
        let before = defs(previous.as_ref());
        let after = defs(Some(&engine));
        let added: Vec<String> = after
            .keys()
            .filter(|k| !before.contains_key(*k))
            .cloned()
            .collect();
        let removed: Vec<String> = before
            .keys()
            .filter(|k| !after.contains_key(*k))
            .cloned()
            .collect();
        let changed: Vec<String> = after
            .iter()
            .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
            .map(|(k, _)| k.clone())
            .collect();
        let errors = engine.problems().iter().filter(|p| p.is_error()).count();
        let kept = engine.kept().to_vec();
        for p in engine.problems().iter().filter(|p| p.is_error()) {
            warn!(problem = %p, "mesh problem");
        }
        for t in &kept {
            warn!(table = %t, "the new version has errors; the previous version is still served");
        }
        *self.current.write() = Some(engine);
        *self.loaded_at.write() = Some(SystemTime::now());
        let version = self.version() + 1;
        self.version.send_replace(version);
        let status = if errors == 0 {
            ReloadStatus::Ok
        } else {
            ReloadStatus::Partial
        };
        info!(
            version,
            result = status.label(),
            added = added.len(),
            changed = changed.len(),
            removed = removed.len(),
            kept = kept.len(),
            errors,
            took_ms = took.as_millis() as u64,
            "mesh loaded"
        );
        ReloadOutcome {
            status,
            version,
            added,
            changed,
            removed,
            kept,
            errors,
            took,
        }
    }
}

/// A cheap fingerprint of what a reload would read: the descriptor files
/// (name, size, modification time) and the modification times of local
/// Delta logs and Iceberg metadata folders, so new commits are seen too.
pub fn mesh_fingerprint(root: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if name == "_delta_log" || name == "metadata" {
                    out.push((path, 0, meta.modified().ok()));
                } else if !name.starts_with('.') && !name.starts_with('_') {
                    stack.push(path);
                }
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Watches the mesh directory: reloads when [`mesh_fingerprint`] changes
/// (checked every `interval`), and every `retry` while some table's
/// storage could not be opened. `on_reload` sees each outcome. Watching
/// stops when the returned task is dropped.
pub fn watch(
    live: Arc<LiveEngine>,
    interval: Duration,
    retry: Duration,
    on_reload: impl Fn(&ReloadOutcome) + Send + Sync + 'static,
) -> SpawnedTask<()> {
    SpawnedTask::spawn(async move {
        let root = live.mesh_dir().to_path_buf();
        let fingerprint = |root: PathBuf| async move {
            tokio::task::spawn_blocking(move || mesh_fingerprint(&root))
                .await
                .unwrap_or_default()
        };
        let mut loaded = fingerprint(root.clone()).await;
        let mut previous_tick = loaded.clone();
        let mut last_attempt = Instant::now();
        loop {
            tokio::time::sleep(interval).await;
            let now = fingerprint(root.clone()).await;
            // Reload once the files have stopped changing for one interval,
            // so a file being written is not read half-way.
            let settled = now == previous_tick;
            previous_tick = now.clone();
            let changed = settled && now != loaded;
            let storage_retry =
                live.current().is_some_and(|e| e.unopened() > 0) && last_attempt.elapsed() >= retry;
            if !changed && !storage_retry {
                continue;
            }
            loaded = now;
            last_attempt = Instant::now();
            let outcome = live.reload().await;
            on_reload(&outcome);
        }
    })
}
