//! OpenLineage run events for every query served: `START` once planned,
//! then `COMPLETE` or `FAIL`, with the products read as input datasets.
//!
//! Events go to a JSON-lines file or are POSTed to an OpenLineage endpoint
//! (e.g. Marquez's `/api/v1/lineage`) from a bounded queue by a task of
//! their own: a query never waits for lineage and never fails because of
//! it. When the queue is full or the endpoint keeps failing, events are
//! dropped and counted (`meshq_lineage_events_dropped_total`).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::runtime::SpawnedTask;
use meshq_catalog::platform::OpenLineageConfig;
use meshq_engine::Engine;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::Metrics;

/// The OpenLineage spec version the events follow.
pub const SPEC: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
/// The producer named in every event and facet.
pub const PRODUCER: &str = "https://github.com/meshq/meshq";
const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const DATASOURCE_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/DatasourceDatasetFacet.json#/$defs/DatasourceDatasetFacet";
const JOB_TYPE_FACET: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const ERROR_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
/// meshq's own run facet: who ran the query.
const PRINCIPAL_FACET: &str =
    "https://github.com/meshq/meshq/blob/main/docs/discovery.md#openlineage";

/// Events queued at most, by default.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Attempts per event at an HTTP endpoint.
const ATTEMPTS: u32 = 3;

/// Where events go: a queue drained by a task of its own.
pub struct LineageSink {
    namespace: String,
    queue: mpsc::Sender<Value>,
    metrics: Arc<Metrics>,
    _task: SpawnedTask<()>,
}

impl std::fmt::Debug for LineageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineageSink")
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl LineageSink {
    /// The sink `config` describes; an error names what is wrong with it.
    pub fn start(config: &OpenLineageConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| "meshq://meshq".into());
        let (tx, rx) = mpsc::channel(config.queue.unwrap_or(DEFAULT_QUEUE).max(1));
        let task = match (&config.file, &config.url) {
            (Some(file), None) => {
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .map_err(|e| format!("openlineage.file `{file}`: {e}"))?;
                SpawnedTask::spawn(write_file(out, rx, Arc::clone(&metrics)))
            }
            (None, Some(url)) => {
                let key = match &config.api_key {
                    Some(k) => Some(
                        k.resolve()
                            .map_err(|e| format!("openlineage.api_key: {e}"))?,
                    ),
                    None => None,
                };
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(config.timeout_ms.unwrap_or(5_000)))
                    .build()
                    .map_err(|e| format!("openlineage.url: {e}"))?;
                SpawnedTask::spawn(post(client, url.clone(), key, rx, Arc::clone(&metrics)))
            }
            _ => return Err("openlineage needs exactly one of `file` and `url`".into()),
        };
        Ok(Self {
            namespace,
            queue: tx,
            metrics,
            _task: task,
        })
    }

    /// The namespace of jobs and datasets (`meshq://<server name>`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Queues `event`; drops it (counted) when the queue is full.
    pub fn emit(&self, event: Value) {
        if self.queue.try_send(event).is_err() {
            self.metrics.lineage_dropped();
        }
    }
}

async fn write_file(mut out: std::fs::File, mut rx: mpsc::Receiver<Value>, metrics: Arc<Metrics>) {
    while let Some(event) = rx.recv().await {
        let line = format!("{event}\n");
        if let Err(e) = out.write_all(line.as_bytes()).and_then(|_| out.flush()) {
            warn!(error = %e, "cannot write an OpenLineage event");
            metrics.lineage_dropped();
        }
    }
}

async fn post(
    client: reqwest::Client,
    url: String,
    key: Option<String>,
    mut rx: mpsc::Receiver<Value>,
    metrics: Arc<Metrics>,
) {
    while let Some(event) = rx.recv().await {
        let body = event.to_string();
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            let mut req = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone());
            if let Some(k) = &key {
                req = req.bearer_auth(k);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(r) if r.status().is_client_error() => {
                    warn!(status = %r.status(), "the OpenLineage endpoint refused an event");
                    break;
                }
                Ok(r) => warn!(status = %r.status(), attempt, "OpenLineage endpoint failed"),
                Err(e) => warn!(error = %e, attempt, "OpenLineage endpoint unreachable"),
            }
        }
        if !delivered {
            metrics.lineage_dropped();
        }
    }
}

/// What a run event says about one query.
pub struct RunFacts<'a> {
    /// `START`, `COMPLETE` or `FAIL`.
    pub event_type: &'static str,
    /// The audit log's query id (a UUID).
    pub run_id: &'a str,
    /// The job: the query's shape, never its literals.
    pub job: String,
    /// Who ran it.
    pub principal: Option<&'a str>,
    /// `domain.table` of each table read.
    pub tables: &'a [String],
    /// The gRPC code of a failure.
    pub error: Option<&'a str>,
}

/// A run event for `facts` on `engine`'s mesh version.
pub fn run_event(namespace: &str, engine: &Engine, facts: &RunFacts<'_>) -> Value {
    let inputs: Vec<Value> = facts
        .tables
        .iter()
        .filter_map(|name| {
            let t = engine.served_table(name)?;
            let fields: Vec<Value> = t
                .def
                .columns
                .iter()
                .map(|c| {
                    let mut f = json!({
                        "name": c.name,
                        "fields": [],
                        "type": c
                            .logical_type
                            .map(|l| format!("{l:?}").to_lowercase())
                            .or_else(|| c.physical_type.clone())
                            .unwrap_or_else(|| "unknown".into()),
                    });
                    if let Some(d) = &c.description {
                        f["description"] = json!(d);
                    }
                    f
                })
                .collect();
            Some(json!({
                "namespace": namespace,
                "name": name,
                "inputFacets": {},
                "facets": {
                    "schema": {
                        "_producer": PRODUCER,
                        "_schemaURL": SCHEMA_FACET,
                        "fields": fields,
                    },
                    "dataSource": {
                        "_producer": PRODUCER,
                        "_schemaURL": DATASOURCE_FACET,
                        "name": t.def.product_id,
                        "uri": format!("{namespace}/{}", t.def.product_id),
                    },
                },
            }))
        })
        .collect();
    let mut run_facets = json!({
        "meshq_principal": {
            "_producer": PRODUCER,
            "_schemaURL": PRINCIPAL_FACET,
            "principal": facts.principal,
        },
    });
    if let Some(code) = facts.error {
        run_facets["errorMessage"] = json!({
            "_producer": PRODUCER,
            "_schemaURL": ERROR_FACET,
            "message": format!("the query failed with {code}"),
            "programmingLanguage": "SQL",
        });
    }
    json!({
        "eventType": facts.event_type,
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "run": { "runId": facts.run_id, "facets": run_facets },
        "job": {
            "namespace": namespace,
            "name": facts.job,
            "facets": {
                "jobType": {
                    "_producer": PRODUCER,
                    "_schemaURL": JOB_TYPE_FACET,
                    "processingType": "BATCH",
                    "integration": "MESHQ",
                    "jobType": "QUERY",
                },
            },
        },
        "inputs": inputs,
        "outputs": [],
        "producer": PRODUCER,
        "schemaURL": SPEC,
    })
}
