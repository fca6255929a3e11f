//! [`ResultCache`]: query results kept in memory and served again, keyed by
//! what the policies made of the query, never by who sent it.
//!
//! The key is a SHA-256 over
//! - the optimized logical plan *after* the policy rewrite: masks and row
//!   filters as the principal gets them, principal functions
//!   (`current_user`, `has_role`, `attribute`) already bound to literals;
//! - the table each scan reads (`domain.table`, as resolved, not as typed)
//!   and the fingerprint of the masks and filters applied to it;
//! - the data version of every file-based table read (its file set:
//!   paths, sizes, modification times); Delta and Iceberg tables are pinned
//!   to a snapshot per mesh version, and the mesh version is in the key; an
//!   accelerated table's is the version of the copy being served;
//! - the session's `SET` options.
//!
//! Two principals whose roles and attributes give the same masks and
//! filters therefore share entries; principals whose policies differ never
//! do, because their plans differ. The barrier is untouched: a cached
//! result is the output of the same governed plan.
//!
//! Not cached: statements, `EXPLAIN`, plans that read anything but mesh
//! tables (scratch tables, `meta`, `information_schema`, table functions),
//! queries calling a function that is not immutable (`now()`, `random()`),
//! file-based tables whose files cannot be listed, and results larger than
//! a quarter of the cache. A result is stored only when its stream was read
//! to the end without error. Each mesh version has its own cache, so a
//! reload empties it; the counters carry over.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::error::Result;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use futures::Stream;
use meshq_catalog::Format;
use meshq_catalog::platform::CacheConfig;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::policy::barrier::PolicyBarrier;
use crate::policy::governed::GovernedScan;
use crate::policy::udf::PrincipalFn;

/// Counters of every cache this process served, across reloads.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
}

/// A snapshot of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Queries answered from the cache.
    pub hits: u64,
    /// Cacheable queries that were not in it.
    pub misses: u64,
    /// Results dropped to make room, or because they expired.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes: u64,
    /// Results held now.
    pub entries: u64,
}

impl CacheStats {
    /// The counters now.
    pub fn counters(&self) -> CacheCounters {
        CacheCounters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
        }
    }
}

/// A cache key: SHA-256 of what decides a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

/// Feeds `Hash` output into SHA-256.
struct Sha(Sha256);

impl Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}

struct Entry {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
    bytes: usize,
    stored: Instant,
    tick: u64,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<CacheKey, Entry>,
    /// Least recently used first.
    by_use: BTreeMap<u64, CacheKey>,
    bytes: usize,
    tick: u64,
}

impl Entries {
    fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        let e = self.by_key.remove(key)?;
        self.by_use.remove(&e.tick);
        self.bytes -= e.bytes;
        Some(e)
    }
}

/// What a cacheable query found.
pub(crate) enum Probe {
    /// Its result.
    Hit(SchemaRef, Arc<Vec<RecordBatch>>),
    /// Nothing yet: the run fills it.
    Miss(CacheFill),
}

/// The result cache of one mesh version.
pub struct ResultCache {
    enabled: bool,
    max_bytes: usize,
    max_entry_bytes: usize,
    ttl: Duration,
    entries: Mutex<Entries>,
    /// The bytes held, in the server's memory pool.
    reservation: Option<MemoryReservation>,
    stats: Arc<CacheStats>,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("enabled", &self.enabled)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Drop for ResultCache {
    fn drop(&mut self) {
        let e = self.entries.get_mut();
        self.stats
            .bytes
            .fetch_sub(e.bytes as u64, Ordering::Relaxed);
        self.stats
            .entries
            .fetch_sub(e.by_key.len() as u64, Ordering::Relaxed);
    }
}

impl ResultCache {
    /// A cache as `config` says, its bytes accounted in `pool`, counting
    /// into `stats`.
    pub fn new(config: &CacheConfig, pool: &Arc<dyn MemoryPool>, stats: Arc<CacheStats>) -> Self {
        let max_bytes = config
            .max_bytes
            .map(|b| b.0)
            .unwrap_or(CacheConfig::DEFAULT_MAX_BYTES) as usize;
        Self {
            enabled: config.enabled && max_bytes > 0,
            max_bytes,
            max_entry_bytes: max_bytes / 4,
            ttl: config.ttl.map(|t| t.0).unwrap_or(CacheConfig::DEFAULT_TTL),
            entries: Mutex::new(Entries::default()),
            reservation: config
                .enabled
                .then(|| MemoryConsumer::new("result cache").register(pool)),
            stats,
        }
    }

    /// Whether results are cached at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The counters, shared with the versions before and after this one.
    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// Drops every entry and gives their memory back; the next run of each
    /// query computes its result again.
    pub fn clear(&self) {
        let mut e = self.entries.lock();
        let (entries, bytes) = (e.by_key.len(), e.bytes);
        e.by_key.clear();
        e.by_use.clear();
        e.bytes = 0;
        drop(e);
        self.release(entries, bytes);
    }

    fn release(&self, entries: usize, bytes: usize) {
        if let Some(r) = &self.reservation {
            r.shrink(bytes.min(r.size()));
        }
        self.stats.bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
        self.stats
            .entries
            .fetch_sub(entries as u64, Ordering::Relaxed);
    }

    /// Looks `key` up; a miss hands back what fills it.
    pub(crate) fn probe(self: &Arc<Self>, key: CacheKey) -> Probe {
        let mut e = self.entries.lock();
        let expired = e
            .by_key
            .get(&key)
            .is_some_and(|entry| entry.stored.elapsed() > self.ttl);
        if expired && let Some(old) = e.remove(&key) {
            self.release(1, old.bytes);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        e.tick += 1;
        let tick = e.tick;
        if let Some(entry) = e.by_key.get_mut(&key) {
            let old = std::mem::replace(&mut entry.tick, tick);
            let hit = (Arc::clone(&entry.schema), Arc::clone(&entry.batches));
            e.by_use.remove(&old);
            e.by_use.insert(tick, key);
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Probe::Hit(hit.0, hit.1);
        }
        drop(e);
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        Probe::Miss(CacheFill {
            cache: Arc::clone(self),
            key,
        })
    }

    /// Stores a complete result, evicting the least recently used ones to
    /// make room. Too large a result, or one the memory pool has no room
    /// for, is not kept.
    fn store(&self, key: CacheKey, schema: SchemaRef, batches: Vec<RecordBatch>, bytes: usize) {
        if bytes > self.max_entry_bytes {
            return;
        }
        let mut e = self.entries.lock();
        let mut freed = (0usize, 0usize);
        if let Some(old) = e.remove(&key) {
            freed.0 += 1;
            freed.1 += old.bytes;
        }
        let mut evicted = 0u64;
        while e.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = e.by_use.pop_first() else {
                break;
            };
            if let Some(old) = e.by_key.remove(&oldest) {
                e.bytes -= old.bytes;
                freed.0 += 1;
                freed.1 += old.bytes;
                evicted += 1;
            }
        }
        self.release(freed.0, freed.1);
        self.stats.evictions.fetch_add(evicted, Ordering::Relaxed);
        if let Some(r) = &self.reservation
            && r.try_grow(bytes).is_err()
        {
            return;
        }
        e.tick += 1;
        let tick = e.tick;
        e.bytes += bytes;
        e.by_use.insert(tick, key);
        e.by_key.insert(
            key,
            Entry {
                schema,
                batches: Arc::new(batches),
                bytes,
                stored: Instant::now(),
                tick,
            },
        );
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
    }
}

/// What fills the cache entry of a query that missed.
#[derive(Clone)]
pub(crate) struct CacheFill {
    cache: Arc<ResultCache>,
    key: CacheKey,
}

impl std::fmt::Debug for CacheFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheFill({})", self.key)
    }
}

impl CacheFill {
    /// `inner`, passed through; once it has ended without error its
    /// batches are stored.
    pub(crate) fn wrap(self, inner: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(FillingStream {
            schema: inner.schema(),
            inner,
            fill: Some(self),
            batches: Vec::new(),
            bytes: 0,
        })
    }
}

struct FillingStream {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    /// `None` once the result cannot be stored (too large, an error).
    fill: Option<CacheFill>,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl Stream for FillingStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(fill) = &self.fill {
                    let max = fill.cache.max_entry_bytes;
                    let kept = compact(batch).ok().and_then(|b| {
                        let bytes = self.bytes + b.get_array_memory_size();
                        (bytes <= max).then_some((b, bytes))
                    });
                    match kept {
                        Some((b, bytes)) => {
                            self.bytes = bytes;
                            self.batches.push(b);
                        }
                        None => {
                            self.fill = None;
                            self.batches = Vec::new();
                        }
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.fill = None;
                self.batches = Vec::new();
            }
            Poll::Ready(None) => {
                if let Some(fill) = self.fill.take() {
                    let batches = std::mem::take(&mut self.batches);
                    let schema = Arc::clone(&self.schema);
                    fill.cache.store(fill.key, schema, batches, self.bytes);
                }
            }
            Poll::Pending => {}
        }
        polled
    }
}

impl RecordBatchStream for FillingStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// `batch` in buffers of its own size: a result's batches are often
/// slices of larger ones (a `LIMIT`, a filter's output), and a cached slice
/// would keep the whole buffer alive.
fn compact(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::ArrayRef;
    use arrow::datatypes::DataType;
    let columns = batch
        .columns()
        .iter()
        .map(|c| -> Result<ArrayRef> {
            Ok(match c.data_type() {
                // Through the plain type: its buffers are exactly as large
                // as the values (a view array's garbage collection
                // allocates whole blocks).
                DataType::Utf8View | DataType::BinaryView => {
                    let plain = if c.data_type() == &DataType::Utf8View {
                        DataType::LargeUtf8
                    } else {
                        DataType::LargeBinary
                    };
                    let copied = arrow::compute::cast(c, &plain)?;
                    arrow::compute::cast(&copied, c.data_type())?
                }
                _ => arrow::compute::concat(&[c.as_ref()])?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Whether `plan` calls a function whose result may change between runs:
/// with `stable_too`, also functions fixed only within one statement
/// (`now()`). Principal functions are bound to literals by the rewrite and
/// count as immutable.
fn calls_changing_function(plan: &LogicalPlan, stable_too: bool) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let volatility = match e {
                    Expr::ScalarFunction(f) if PrincipalFn::from_name(f.func.name()).is_some() => {
                        Volatility::Immutable
                    }
                    Expr::ScalarFunction(f) => f.func.signature().volatility,
                    Expr::AggregateFunction(f) => f.func.signature().volatility,
                    Expr::WindowFunction(w) => match &w.fun {
                        datafusion::logical_expr::expr::WindowFunctionDefinition::AggregateUDF(
                            f,
                        ) => f.signature().volatility,
                        datafusion::logical_expr::expr::WindowFunctionDefinition::WindowUDF(f) => {
                            f.signature().volatility
                        }
                    },
                    _ => Volatility::Immutable,
                };
                let changes = match volatility {
                    Volatility::Immutable => false,
                    Volatility::Stable => stable_too,
                    Volatility::Volatile => true,
                };
                if changes {
                    found = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// One scan of a cacheable plan: the table and the policies applied to it.
struct ScanOf {
    table: String,
    policies: u64,
    mesh_version: u64,
}

/// The mesh-table scans of an optimized plan, in plan order; `None` when
/// the plan is not cacheable (it reads anything else, or is not a query).
fn mesh_scans(plan: &LogicalPlan) -> Option<Vec<ScanOf>> {
    let mut scans = Vec::new();
    let mut cacheable = true;
    let _ = plan.apply_with_subqueries(|node| {
        let ok = match node {
            LogicalPlan::TableScan(scan) => match source_as_provider(&scan.source)
                .ok()
                .as_ref()
                .and_then(|p| p.as_ref().downcast_ref::<GovernedScan>())
            {
                Some(g) => {
                    scans.push(ScanOf {
                        table: g.inner().table_name().to_string(),
                        policies: g.token().policies,
                        mesh_version: g.token().mesh_version,
                    });
                    true
                }
                None => false,
            },
            LogicalPlan::Extension(e) => e.node.as_any().downcast_ref::<PolicyBarrier>().is_some(),
            LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::DescribeTable(_) => false,
            _ => true,
        };
        if ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            cacheable = false;
            Ok(TreeNodeRecursion::Stop)
        }
    });
    (cacheable && !scans.is_empty()).then_some(scans)
}

/// The key of a query, or `None` when it must not be cached. `admitted` is
/// the plan as the session admitted it, `optimized` the same after the
/// policy rewrite and the optimizer.
pub(crate) async fn cache_key(
    engine: &crate::Engine,
    settings: &BTreeMap<String, String>,
    admitted: &LogicalPlan,
    optimized: &LogicalPlan,
) -> Option<CacheKey> {
    // Before the rewrite, for what the statement says (the optimizer
    // folds `now()` into a literal); after it, for what views brought in.
    if calls_changing_function(admitted, true) || calls_changing_function(optimized, false) {
        return None;
    }
    let scans = mesh_scans(optimized)?;
    let mut h = Sha(Sha256::new());
    "meshq result cache v1".hash(&mut h);
    optimized.hash(&mut h);
    settings.hash(&mut h);
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &scans {
        (&s.table, s.policies, s.mesh_version).hash(&mut h);
        if versions.contains_key(s.table.as_str()) {
            continue;
        }
        let table = engine.served_table(&s.table)?;
        // An accelerated table is read from its copy: the copy's version
        // decides its rows (it may lag the source, and changes when the
        // copy is rebuilt).
        if let Some(slot) = engine.acceleration_of(&s.table)
            && let Some((_, copy_version)) = meshq_connectors::LocalCopy::current(slot.as_ref())
        {
            let mut v = std::hash::DefaultHasher::new();
            ("copy", copy_version).hash(&mut v);
            versions.insert(&s.table, v.finish());
            continue;
        }
        let version = match table.def.source.format {
            // Pinned to the snapshot opened with this mesh version.
            Format::Delta | Format::Iceberg => 0,
            Format::Parquet | Format::Csv | Format::Json => {
                meshq_connectors::facts::listing_version(engine.runtime(), &table.def).await?
            }
            // A database table changes without a version to see: its
            // results are never cached.
            Format::Postgres | Format::FlightSql | Format::Sql => return None,
        };
        versions.insert(&s.table, version);
    }
    versions.hash(&mut h);
    Some(CacheKey(h.0.finalize().into()))
}
