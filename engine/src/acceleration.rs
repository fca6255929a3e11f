//! Accelerated ports: a table served from a local copy of its rows (in
//! Arrow memory or as local Parquet files), refreshed when its source
//! changes.
//!
//! The copy holds the table's raw rows in the contract's columns; it
//! replaces only the *source* under the contract view, so masks, row
//! filters and the barrier are planned above it per principal exactly as
//! above the source. A copy is built beside the one being served and
//! swapped in whole; a failed refresh keeps the last good copy until the
//! port's `maxStaleness` has passed, after which queries read the source.
//! Copies live in [`Accelerations`], carried from one mesh version to the
//! next, so a reload that does not change a table keeps its copy.
//!
//! A materialised product (`materialize:`) is the same copy written where
//! its team chose, as Delta (one commit per build) or Parquet, with a
//! record of the inputs it was built from; a restart serves the last build
//! when its inputs have not changed (see [`meshq_connectors::materialize`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use meshq_catalog::acceleration::{Acceleration, AccelerationEngine, Refresh};
use meshq_catalog::{Format, TableDef};
use meshq_connectors::LocalCopy;
use meshq_connectors::memory_copy::MemoryCopy;
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

use crate::engine::{Engine, ServedTable};

/// A copy being served.
struct Copy {
    provider: Arc<dyn TableProvider>,
    /// The source version it was built from.
    version: String,
    /// The source tables it was computed from, `domain.table@version`
    /// (a product defined by SQL).
    built_from: Vec<String>,
    /// Its build record (a materialised product).
    record: Option<meshq_connectors::materialize::BuildRecord>,
    built_at: SystemTime,
    built: Instant,
    bytes: u64,
    /// The memory it holds, in the pool (`memory`).
    _reservation: Option<MemoryReservation>,
    /// Its files (`parquet`), removed with it.
    dir: Option<PathBuf>,
}

impl Drop for Copy {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[derive(Default)]
struct SlotState {
    copy: Option<Arc<Copy>>,
    /// The last refresh's error, until one succeeds.
    error: Option<String>,
    /// Since when refreshes have failed (staleness counts from here).
    failing_since: Option<Instant>,
    /// Whether the last build at a materialisation's location was looked
    /// for (once per slot).
    looked_for_last_build: bool,
}

/// One accelerated table's copy.
pub struct CopySlot {
    table: String,
    spec: Acceleration,
    /// The definition the copy is of: a reload that changes it starts anew.
    def: Arc<TableDef>,
    state: RwLock<SlotState>,
    building: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for CopySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopySlot")
            .field("table", &self.table)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl LocalCopy for CopySlot {
    fn current(&self) -> Option<(Arc<dyn TableProvider>, String)> {
        let state = self.state.read();
        let copy = state.copy.as_ref()?;
        if let (Some(max), Some(since)) = (self.spec.max_staleness, state.failing_since)
            && since.elapsed() > max
        {
            return None;
        }
        Some((Arc::clone(&copy.provider), copy.version.clone()))
    }
}

/// What `meta.tables` and the metrics say of an accelerated table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccelerationStatus {
    /// `memory`, `parquet` or `delta`.
    pub engine: &'static str,
    /// Where a materialised product is written.
    pub location: Option<String>,
    /// The source tables the served copy was computed from,
    /// `domain.table@version` (a product defined by SQL).
    pub built_from: Vec<String>,
    /// Queries read the copy now.
    pub serving: bool,
    /// When the served copy was built.
    pub built_at: Option<SystemTime>,
    /// The source version it was built from (`delta:12`, `iceberg:…`,
    /// `files:…`).
    pub version: Option<String>,
    /// Bytes it holds (memory or disk).
    pub bytes: u64,
    /// The last refresh's error, until one succeeds.
    pub error: Option<String>,
}

impl CopySlot {
    /// Drops the copy, which may no longer be served (`why`); the next
    /// refresh builds a new one.
    pub(crate) fn discard(&self, why: &str) {
        let mut state = self.state.write();
        state.copy = None;
        state.error = Some(why.to_string());
    }

    /// The copy's state now.
    pub fn status(&self) -> AccelerationStatus {
        let state = self.state.read();
        AccelerationStatus {
            engine: self.spec.engine.name(),
            location: self.spec.location.as_ref().map(ToString::to_string),
            built_from: state
                .copy
                .as_ref()
                .map(|c| c.built_from.clone())
                .unwrap_or_default(),
            serving: self.current().is_some(),
            built_at: state.copy.as_ref().map(|c| c.built_at),
            version: state.copy.as_ref().map(|c| c.version.clone()),
            bytes: state.copy.as_ref().map_or(0, |c| c.bytes),
            error: state.error.clone(),
        }
    }
}

/// Every accelerated table's copy, shared by the mesh versions.
#[derive(Debug, Default)]
pub struct Accelerations {
    slots: Mutex<HashMap<String, Arc<CopySlot>>>,
}

/// Whether two definitions describe the same rows (a copy of one serves
/// the other).
fn same_rows(a: &TableDef, b: &TableDef) -> bool {
    // A product defined by SQL is the rows its principal may see.
    a.source == b.source && a.columns == b.columns && a.run_as == b.run_as
}

impl Accelerations {
    /// The slot of `def`: the one it had when the definition is the same,
    /// else a new, empty one.
    pub(crate) fn slot(&self, def: &Arc<TableDef>, spec: Acceleration) -> Arc<CopySlot> {
        let name = def.qualified_name();
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get(&name)
            && s.spec == spec
            && same_rows(&s.def, def)
        {
            return Arc::clone(s);
        }
        let slot = Arc::new(CopySlot {
            table: name.clone(),
            spec,
            def: Arc::clone(def),
            state: RwLock::new(SlotState::default()),
            building: tokio::sync::Mutex::new(()),
        });
        slots.insert(name, Arc::clone(&slot));
        slot
    }

    /// Forgets the slots of tables not in `names` (no longer accelerated).
    pub(crate) fn retain(&self, names: &[String]) {
        self.slots.lock().retain(|k, _| names.contains(k));
    }

    /// The slot of table `name`, if it is accelerated.
    pub fn get(&self, name: &str) -> Option<Arc<CopySlot>> {
        self.slots.lock().get(name).cloned()
    }
}

/// The version of `table`'s source data: the Delta version or Iceberg
/// snapshot it was opened at, or the fingerprint of its file set.
pub(crate) async fn source_version(
    runtime: &datafusion::execution::runtime_env::RuntimeEnv,
    table: &ServedTable,
) -> Option<String> {
    match table.def.source.format {
        Format::Delta | Format::Iceberg => table.facts.get().map(|f| {
            format!(
                "{}:{}",
                table.def.source.format,
                f.version.map_or("empty".to_string(), |v| v.to_string())
            )
        }),
        Format::Parquet | Format::Csv | Format::Json => {
            meshq_connectors::facts::listing_version(runtime, &table.def)
                .await
                .map(|v| format!("files:{v:016x}"))
        }
        // A database table has no version meshq can read.
        Format::Postgres | Format::FlightSql | Format::Sql => None,
    }
}

/// The version of `table` as `engine` serves it: its source's
/// ([`source_version`]); for a product defined by SQL, the versions of the
/// tables its statement reads (`sql:domain.table@version,…`), when every
/// one of them has a version.
pub(crate) async fn version_in(engine: &crate::Engine, table: &ServedTable) -> Option<String> {
    version_at(engine, table, 0).await
}

fn version_at<'a>(
    engine: &'a crate::Engine,
    table: &'a ServedTable,
    depth: usize,
) -> futures::future::BoxFuture<'a, Option<String>> {
    Box::pin(async move {
        let meshq_catalog::Location::Sql { query, .. } = &table.def.source.location else {
            return source_version(engine.runtime(), table).await;
        };
        // Cycles are refused when the mesh loads; the depth is a bound
        // all the same.
        if depth > 16 {
            return None;
        }
        // Who computes it, and what the inputs' policies give that
        // principal, are part of the version: a change of either rebuilds
        // the copy.
        let run_as = table.def.run_as.as_deref()?;
        let principal = engine.mesh().config.principal(run_as)?;
        let mut parts = Vec::new();
        for name in crate::defined::inputs_of(query).ok()? {
            let input = engine.served_table(&name)?;
            let v = version_at(engine, input, depth + 1).await?;
            let policies = engine.tables().policies_for(&name, &principal).ok()?;
            let key = crate::policy::governed::policy_key(policies, &principal);
            parts.push(format!("{name}@{v}#{key:x}"));
        }
        Some(format!(
            "sql:{run_as}#{:x}:{}",
            crate::options::principal_key(&principal),
            parts.join(",")
        ))
    })
}

/// The source tables `table` is computed from, `domain.table@version`,
/// through the products defined by SQL it reads; empty for a source.
pub(crate) fn built_from<'a>(
    engine: &'a crate::Engine,
    table: &'a ServedTable,
    depth: usize,
) -> futures::future::BoxFuture<'a, Vec<String>> {
    Box::pin(async move {
        let meshq_catalog::Location::Sql { query, .. } = &table.def.source.location else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if depth > 16 {
            return out;
        }
        for name in crate::defined::inputs_of(query).unwrap_or_default() {
            let Some(input) = engine.served_table(&name) else {
                continue;
            };
            if matches!(
                input.def.source.location,
                meshq_catalog::Location::Sql { .. }
            ) {
                out.extend(built_from(engine, input, depth + 1).await);
            } else {
                let v = source_version(engine.runtime(), input)
                    .await
                    .unwrap_or_else(|| input.def.source.format.to_string());
                out.push(format!("{name}@{v}"));
            }
        }
        out.sort();
        out.dedup();
        out
    })
}

/// What one refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The copy is current; nothing was built.
    Current,
    /// A new copy is served.
    Built {
        /// The source version.
        version: String,
        /// Bytes it holds.
        bytes: u64,
    },
    /// The refresh failed; the last good copy (if any) is still served
    /// within `maxStaleness`.
    Failed(String),
    /// A materialised product's last build, written before this server
    /// started, is of the current inputs and is served as it is.
    Found {
        /// The inputs' version.
        version: String,
    },
}

impl Engine {
    /// Builds or refreshes the copy of every accelerated table of this
    /// version that needs it (none yet, its source changed, or its refresh
    /// interval has passed), one table at a time. A server calls this
    /// after every load and on its reload interval.
    pub async fn refresh_accelerations(&self) -> Vec<(String, RefreshOutcome)> {
        let mut out = Vec::new();
        for table in self.served_tables() {
            let Some(slot) = self.acceleration_of(&table.def.qualified_name()) else {
                continue;
            };
            let outcome = self.refresh_one(table, &slot).await;
            out.push((table.def.qualified_name(), outcome));
        }
        out
    }

    async fn refresh_one(&self, table: &ServedTable, slot: &Arc<CopySlot>) -> RefreshOutcome {
        let _one_at_a_time = slot.building.lock().await;
        let name = table.def.qualified_name();
        let version = match version_in(self, table).await {
            Some(v) => v,
            // A database or remote table (or SQL over one): no version to
            // watch, so its copy is rebuilt on its interval only.
            None if table.def.source.location.has_no_version() => {
                if !matches!(slot.spec.refresh, Refresh::Every(_)) {
                    return fail(
                        slot,
                        format!(
                            "`{name}` ({}) has no version to watch for `refresh: on-change` (a database or remote table, or SQL over one); give an interval such as `refresh: 5m`",
                            table.def.source.format
                        ),
                    );
                }
                format!("{}:interval", table.def.source.format)
            }
            None => {
                return fail(
                    slot,
                    format!(
                        "the version of `{name}`'s files cannot be listed (a glob location, more than {} files, or a storage error)",
                        meshq_connectors::facts::MAX_LISTED_FILES
                    ),
                );
            }
        };
        if let Some(outcome) = self.find_last_build(table, slot, &version).await {
            return outcome;
        }
        let due = {
            let state = slot.state.read();
            match &state.copy {
                None => true,
                Some(c) => {
                    c.version != version
                        || matches!(slot.spec.refresh, Refresh::Every(d) if c.built.elapsed() >= d)
                }
            }
        };
        if !due {
            return RefreshOutcome::Current;
        }
        let started = Instant::now();
        match build(self, table, slot, &version).await {
            Ok(copy) => {
                let bytes = copy.bytes;
                info!(
                    table = %name,
                    engine = slot.spec.engine.name(),
                    version = %version,
                    bytes,
                    took_ms = started.elapsed().as_millis() as u64,
                    "accelerated copy built"
                );
                let mut state = slot.state.write();
                state.copy = Some(Arc::new(copy));
                state.error = None;
                state.failing_since = None;
                RefreshOutcome::Built { version, bytes }
            }
            Err(e) => fail(slot, e),
        }
    }

    /// Serves the last build at a materialised product's location when it
    /// is of `version` (once per slot, before its first build).
    async fn find_last_build(
        &self,
        table: &ServedTable,
        slot: &CopySlot,
        version: &str,
    ) -> Option<RefreshOutcome> {
        let location = slot.spec.location.as_ref()?;
        {
            let mut state = slot.state.write();
            if state.looked_for_last_build || state.copy.is_some() {
                return None;
            }
            state.looked_for_last_build = true;
        }
        let state = self.unpoliced_context().state();
        let schema = table.provider.schema();
        let found = match slot.spec.engine {
            AccelerationEngine::Delta => {
                meshq_connectors::materialize::last_delta(&state, location, &schema).await
            }
            _ => last_parquet(&state, location, &schema).await,
        };
        let build = match found {
            Ok(Some(b)) if b.record.version == version => b,
            Ok(_) => return None,
            Err(e) => {
                warn!(table = %slot.table, error = %e, "the last materialised build cannot be read; it is built again");
                return None;
            }
        };
        info!(table = %slot.table, location = %location, "serving the last materialised build");
        let built_at = SystemTime::UNIX_EPOCH
            + std::time::Duration::from_millis(build.record.built_at_ms.max(0) as u64);
        let mut state = slot.state.write();
        state.copy = Some(Arc::new(Copy {
            provider: build.provider,
            version: version.to_string(),
            built_from: build.record.built_from.clone(),
            record: Some(build.record),
            built_at,
            built: Instant::now(),
            bytes: build.bytes,
            _reservation: None,
            dir: None,
        }));
        Some(RefreshOutcome::Found {
            version: version.to_string(),
        })
    }

    /// The copy slot of an accelerated table.
    pub fn acceleration_of(&self, name: &str) -> Option<Arc<CopySlot>> {
        self.served_table(name)?.def.acceleration.as_ref()?;
        self.accelerations().get(name)
    }
}

fn fail(slot: &CopySlot, error: String) -> RefreshOutcome {
    warn!(table = %slot.table, error = %error, "acceleration refresh failed; the last good copy is served within maxStaleness");
    let mut state = slot.state.write();
    state.error = Some(error.clone());
    state.failing_since.get_or_insert_with(Instant::now);
    RefreshOutcome::Failed(error)
}

/// Where `parquet` copies are written: `meshq-acceleration-<pid>` under
/// the spill directory (or the system temp directory). SQL may never read
/// or write there (see the engine's forbidden paths).
pub(crate) fn copies_dir(spill_dir: Option<&std::path::Path>) -> PathBuf {
    spill_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("meshq-acceleration-{}", std::process::id()))
}

async fn build(
    engine: &Engine,
    table: &ServedTable,
    slot: &CopySlot,
    version: &str,
) -> Result<Copy, String> {
    let name = table.def.qualified_name();
    let source = Arc::new(table.provider.source_view());
    let schema = source.schema();
    let context = engine.unpoliced_context();
    let df = context
        .read_table(source)
        .map_err(|e| format!("cannot read `{name}` to accelerate it: {e}"))?;
    let built_from = built_from(engine, table, 0).await;
    if let Some(location) = &slot.spec.location {
        let previous = slot
            .state
            .read()
            .copy
            .as_ref()
            .and_then(|c| c.record.clone());
        let record = meshq_connectors::materialize::BuildRecord {
            version: version.to_string(),
            built_at_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            built_from: built_from.clone(),
            folder: None,
        };
        let build = materialize(
            &context,
            df,
            slot.spec.engine,
            location,
            &schema,
            record,
            previous.as_ref(),
        )
        .await
        .map_err(|e| format!("cannot materialise `{name}` at `{location}`: {e}"))?;
        return Ok(Copy {
            provider: build.provider,
            version: version.to_string(),
            built_from,
            record: Some(build.record),
            built_at: SystemTime::now(),
            built: Instant::now(),
            bytes: build.bytes,
            _reservation: None,
            dir: None,
        });
    }
    match slot.spec.engine {
        AccelerationEngine::Delta => Err(format!(
            "`{name}`: a Delta copy is written only by `materialize`, which names its location"
        )),
        AccelerationEngine::Memory => {
            let partitions = df
                .collect_partitioned()
                .await
                .map_err(|e| format!("cannot read `{name}` to accelerate it: {e}"))?;
            let batches: Vec<_> = partitions.into_iter().flatten().collect();
            let bytes = meshq_connectors::memory_copy::held_bytes(&batches);
            let pool = &engine.runtime().memory_pool;
            let reservation = MemoryConsumer::new(format!("acceleration of {name}")).register(pool);
            reservation.try_grow(bytes).map_err(|_| {
                format!(
                    "the copy of `{name}` needs {:.1} MiB, more than the memory pool (limits.memory) has free ({:.1} MiB reserved); use `engine: parquet` or raise limits.memory",
                    bytes as f64 / 1048576.0,
                    pool.reserved() as f64 / 1048576.0
                )
            })?;
            let spread = context.state().config().target_partitions();
            let mem = MemoryCopy::try_new(schema, batches, spread)
                .map_err(|e| format!("cannot keep the copy of `{name}`: {e}"))?;
            Ok(Copy {
                provider: Arc::new(mem),
                version: version.to_string(),
                built_from,
                record: None,
                built_at: SystemTime::now(),
                built: Instant::now(),
                bytes: bytes as u64,
                _reservation: Some(reservation),
                dir: None,
            })
        }
        AccelerationEngine::Parquet => {
            let stamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = copies_dir(engine.spill_dir().as_deref())
                .join(&name)
                .join(stamp.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| {
                format!(
                    "cannot create {} for the copy of `{name}`: {e}",
                    dir.display()
                )
            })?;
            let written = df
                .write_parquet(
                    &format!("{}/", dir.display()),
                    datafusion::dataframe::DataFrameWriteOptions::new(),
                    None,
                )
                .await;
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot write the copy of `{name}`: {e}"));
            }
            let bytes = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            let url = ListingTableUrl::parse(format!("{}/", dir.display()))
                .map_err(|e| format!("copy of `{name}`: {e}"))?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(schema);
            let listing =
                ListingTable::try_new(config).map_err(|e| format!("copy of `{name}`: {e}"))?;
            Ok(Copy {
                provider: Arc::new(listing),
                version: version.to_string(),
                built_from,
                record: None,
                built_at: SystemTime::now(),
                built: Instant::now(),
                bytes,
                _reservation: None,
                dir: Some(dir),
            })
        }
    }
}

/// Writes a materialised product's new build at `location`.
async fn materialize(
    context: &datafusion::prelude::SessionContext,
    df: datafusion::dataframe::DataFrame,
    engine: AccelerationEngine,
    location: &url::Url,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    mut record: meshq_connectors::materialize::BuildRecord,
    previous: Option<&meshq_connectors::materialize::BuildRecord>,
) -> Result<meshq_connectors::materialize::Build, String> {
    let state = context.state();
    match engine {
        AccelerationEngine::Delta => {
            let batches = df.collect().await.map_err(|e| e.to_string())?;
            meshq_connectors::materialize::write_delta(&state, location, schema, batches, record)
                .await
        }
        AccelerationEngine::Parquet | AccelerationEngine::Memory => {
            let folder = format!("build-{}", record.built_at_ms);
            let url = location
                .join(&format!("{folder}/"))
                .map_err(|e| e.to_string())?;
            df.write_parquet(
                url.as_str(),
                datafusion::dataframe::DataFrameWriteOptions::new(),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
            record.folder = Some(folder);
            let build = parquet_build(&state, location, schema, record).await?;
            meshq_connectors::materialize::commit_parquet(
                &state,
                location,
                &build.record,
                previous,
            )
            .await?;
            Ok(build)
        }
    }
}

/// The Parquet build `record` names, as a listing of its folder.
async fn parquet_build(
    state: &datafusion::execution::SessionState,
    location: &url::Url,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    record: meshq_connectors::materialize::BuildRecord,
) -> Result<meshq_connectors::materialize::Build, String> {
    let folder = record
        .folder
        .as_deref()
        .ok_or("the build record names no folder")?;
    let url = location
        .join(&format!("{folder}/"))
        .map_err(|e| e.to_string())?;
    let table_url = ListingTableUrl::parse(url.as_str()).map_err(|e| e.to_string())?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(table_url.clone())
        .with_listing_options(options)
        .with_schema(Arc::clone(schema));
    let listing = ListingTable::try_new(config).map_err(|e| e.to_string())?;
    let (store, root) = meshq_connectors::materialize::store_of(state, &url)?;
    use futures::TryStreamExt;
    let files: Vec<_> = store
        .list(Some(&root))
        .try_collect()
        .await
        .map_err(|e| format!("cannot list `{url}`: {e}"))?;
    let bytes = files.iter().map(|f| f.size).sum();
    Ok(meshq_connectors::materialize::Build {
        provider: Arc::new(listing),
        record,
        bytes,
    })
}

/// The last Parquet build at `location`, if there is one.
async fn last_parquet(
    state: &datafusion::execution::SessionState,
    location: &url::Url,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<Option<meshq_connectors::materialize::Build>, String> {
    match meshq_connectors::materialize::parquet_manifest(state, location).await? {
        Some(record) => parquet_build(state, location, schema, record)
            .await
            .map(Some),
        None => Ok(None),
    }
}

/// Keeps the copies of the served version current: refreshes them when a
/// version is served and then every `interval` (the server's reload
/// interval). Stops when the returned task is dropped.
pub fn spawn_refresher(
    live: Arc<crate::LiveEngine>,
    interval: std::time::Duration,
) -> datafusion::common::runtime::SpawnedTask<()> {
    datafusion::common::runtime::SpawnedTask::spawn(async move {
        let mut versions = live.subscribe();
        loop {
            if let Some(engine) = live.current() {
                engine.refresh_accelerations().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = versions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
