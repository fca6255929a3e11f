//! Remote Flight SQL output ports: a table of another Flight SQL server
//! (another meshq, Dremio, InfluxDB 3, …), read with arrow-flight's Flight
//! SQL client over one HTTP/2 channel per endpoint.
//!
//! What reaches the remote server is exactly what DataFusion hands
//! [`scan`]: the projection, the filters this provider accepted and a
//! limit, unparsed into one `SELECT`. meshq's policy rewrite and barrier
//! decide which filters get that far (see [`crate::pushdown`]), so a
//! predicate on a masked column never runs on the raw value at the source.
//! Of those, this provider accepts comparisons on numbers, dates and
//! booleans, and equality on text; anything else runs in meshq.
//!
//! The statement sent is the one `EXPLAIN` shows ([`FlightSqlExec`]). A
//! query that is dropped (cancelled, timed out) sends `CancelFlightInfo`
//! for its statement.
//!
//! [`scan`]: TableProvider::scan

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{Action, CancelFlightInfoRequest, FlightInfo, HandshakeRequest};
use async_trait::async_trait;
use base64::Engine as _;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::unparser::dialect::CustomDialectBuilder;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::Semaphore;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{SourceError, SourceErrorKind};
use crate::pushdown::{Compare, quote};

/// HTTP/2 receive window, per stream and per connection, that a meshq
/// client advertises on connections that carry Arrow results.
pub const BULK_WINDOW_BYTES: u32 = 16 << 20;
/// HTTP/2 frame size a meshq client accepts on those connections.
pub const BULK_FRAME_BYTES: u32 = 1 << 20;

/// `endpoint` set up for Arrow results in bulk: a 16 MiB receive window
/// lets the sender run ahead while this side decodes, and 1 MiB frames
/// cut the per-frame work on both sides. tonic's defaults (2 MiB windows,
/// HTTP/2's 16 KiB frames) ran a full fetch of TPC-H SF1 `lineitem` over
/// loopback at 544–617 MB/s, these at 874–1012 MB/s (BENCHMARKS.md). What the
/// window costs is bounded: a sender can buffer at most 16 MiB here per
/// connection before this side reads.
pub fn bulk_transfer(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(BULK_WINDOW_BYTES)
        .initial_connection_window_size(BULK_WINDOW_BYTES)
        .max_frame_size(BULK_FRAME_BYTES)
}

/// How a remote server wants to be logged in to.
enum Auth {
    /// No credentials.
    None,
    /// A Flight handshake with HTTP Basic credentials; the server's bearer
    /// token is kept and used until it is refused.
    Basic { username: String, password: String },
    /// A fixed bearer token.
    Bearer(String),
}

/// One remote Flight SQL server: its channel, credentials and limits.
pub struct FlightSqlRemote {
    /// The endpoint as contracts name it (`grpc://host:port`).
    endpoint: String,
    /// The transport endpoint (`http(s)://host:port`).
    transport: Endpoint,
    channel: OnceLock<Channel>,
    auth: Auth,
    /// The bearer token a handshake returned.
    token: parking_lot::Mutex<Option<String>>,
    permits: Arc<Semaphore>,
    timeout: Option<Duration>,
}

impl fmt::Debug for FlightSqlRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password or a token.
        write!(f, "FlightSqlRemote({})", self.endpoint)
    }
}

/// The remote servers of every `stores` entry of type `flightsql`, by
/// endpoint; an entry that cannot be used is kept with why.
#[derive(Debug, Default)]
pub struct FlightSqlRemotes(BTreeMap<String, std::result::Result<Arc<FlightSqlRemote>, String>>);

fn normalize(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `http://` or `https://` for a `grpc://` or `grpc+tls://` endpoint.
fn transport_url(endpoint: &str) -> Option<(String, bool)> {
    if let Some(rest) = endpoint.strip_prefix("grpc://") {
        Some((format!("http://{rest}"), false))
    } else if let Some(rest) = endpoint.strip_prefix("grpc+tls://") {
        Some((format!("https://{rest}"), true))
    } else {
        endpoint
            .strip_prefix("grpc+tcp://")
            .map(|rest| (format!("http://{rest}"), false))
    }
}

impl FlightSqlRemotes {
    /// The remotes of `config`'s `stores`; none connects before a table is
    /// opened. A relative `ca_certificate` is read from under `root`.
    pub fn new(
        config: &meshq_catalog::platform::PlatformConfig,
        fallback: &BTreeMap<String, String>,
        root: &Path,
    ) -> Self {
        use meshq_catalog::platform::StoreConfig;
        let mut remotes = BTreeMap::new();
        for (name, store) in &config.stores {
            let StoreConfig::Flightsql {
                endpoint,
                username,
                password,
                token,
                ca_certificate,
                pool_size,
                timeout,
            } = store
            else {
                continue;
            };
            let remote = (|| {
                let secret = |what: &str, s: &meshq_catalog::platform::SecretRef| {
                    s.resolve_with(fallback)
                        .map_err(|e| format!("stores `{name}`: {what}: {e}"))
                };
                let auth = match (username, password, token) {
                    (None, None, None) => Auth::None,
                    (Some(u), Some(p), None) => Auth::Basic {
                        username: u.clone(),
                        password: secret("password", p)?,
                    },
                    (None, None, Some(t)) => Auth::Bearer(secret("token", t)?),
                    (Some(_), None, None) | (None, Some(_), None) => {
                        return Err(format!(
                            "stores `{name}`: basic authentication needs both `username` and `password: {{ env: VAR }}`"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "stores `{name}`: give either `username` and `password` (basic) or `token` (bearer), not both"
                        ));
                    }
                };
                let Some((url, tls)) = transport_url(endpoint.trim()) else {
                    return Err(format!(
                        "stores `{name}`: endpoint `{endpoint}` is not `grpc://host:port` or `grpc+tls://host:port`"
                    ));
                };
                let mut transport = bulk_transfer(
                    Endpoint::from_shared(url)
                        .map_err(|e| format!("stores `{name}`: endpoint `{endpoint}`: {e}"))?,
                )
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true);
                if tls {
                    let mut config = ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = ca_certificate {
                        let path = root.join(ca);
                        let pem = std::fs::read(&path).map_err(|e| {
                            format!(
                                "stores `{name}`: ca_certificate `{}` cannot be read: {e}",
                                path.display()
                            )
                        })?;
                        config = config.ca_certificate(Certificate::from_pem(pem));
                    }
                    transport = transport
                        .tls_config(config)
                        .map_err(|e| format!("stores `{name}`: TLS: {e}"))?;
                } else if ca_certificate.is_some() {
                    return Err(format!(
                        "stores `{name}`: `ca_certificate` needs a `grpc+tls://` endpoint"
                    ));
                }
                let timeout = match timeout {
                    Some(t) => Some(crate::postgres::parse_duration(t).ok_or_else(|| {
                        format!(
                            "stores `{name}`: timeout `{t}` is not a duration such as 30s or 2m"
                        )
                    })?),
                    None => None,
                };
                Ok(Arc::new(FlightSqlRemote {
                    endpoint: endpoint.trim().to_string(),
                    transport,
                    channel: OnceLock::new(),
                    auth,
                    token: parking_lot::Mutex::new(None),
                    permits: Arc::new(Semaphore::new(pool_size.unwrap_or(4).max(1))),
                    timeout,
                }))
            })();
            remotes.insert(normalize(endpoint), remote);
        }
        Self(remotes)
    }

    /// The remote server at `endpoint`.
    pub fn remote_for(&self, endpoint: &str) -> std::result::Result<Arc<FlightSqlRemote>, String> {
        match self.0.get(&normalize(endpoint)) {
            Some(Ok(r)) => Ok(Arc::clone(r)),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!(
                "meshq.yaml has no `stores` entry of type flightsql for endpoint `{endpoint}`; add one with `endpoint: {endpoint}` and `username` with `password: {{ env: VAR }}`, or `token: {{ env: VAR }}`"
            )),
        }
    }
}

type Client = FlightSqlServiceClient<Channel>;

impl FlightSqlRemote {
    /// The endpoint, for messages.
    pub fn describe(&self) -> &str {
        &self.endpoint
    }

    fn channel(&self) -> Channel {
        self.channel
            .get_or_init(|| self.transport.connect_lazy())
            .clone()
    }

    /// A client carrying this remote's credentials; a Basic login shakes
    /// hands once and keeps the token.
    async fn client(&self) -> std::result::Result<Client, FlightError> {
        let channel = self.channel();
        let mut client = FlightSqlServiceClient::new(channel.clone());
        match &self.auth {
            Auth::None => {}
            Auth::Bearer(t) => client.set_token(t.clone()),
            Auth::Basic { username, password } => {
                let cached = self.token.lock().clone();
                let token = match cached {
                    Some(t) => t,
                    None => {
                        let t = handshake(channel, username, password).await?;
                        *self.token.lock() = Some(t.clone());
                        t
                    }
                };
                client.set_token(token);
            }
        }
        Ok(client)
    }

    /// Runs `call` with a client; a kept token the server refuses is
    /// dropped and the handshake done again, once.
    async fn with_client<T, F, Fut>(&self, call: F) -> std::result::Result<(T, Client), FlightError>
    where
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = std::result::Result<(T, Client), FlightError>> + Send,
        T: Send,
    {
        let client = self.client().await?;
        match call(client).await {
            Err(FlightError::Tonic(s))
                if s.code() == tonic::Code::Unauthenticated
                    && matches!(self.auth, Auth::Basic { .. }) =>
            {
                *self.token.lock() = None;
                call(self.client().await?).await
            }
            other => other,
        }
    }
}

/// A Flight handshake with Basic credentials; the bearer token the server
/// answers with (its `authorization` header, else the payload).
async fn handshake(
    channel: Channel,
    username: &str,
    password: &str,
) -> std::result::Result<String, FlightError> {
    let mut inner = FlightServiceClient::new(channel);
    let mut request = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest {
        protocol_version: 0,
        payload: Default::default(),
    }]));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let value = format!("Basic {basic}")
        .parse()
        .map_err(|_| FlightError::ProtocolError("the username cannot be sent".into()))?;
    request.metadata_mut().insert("authorization", value);
    let response = inner.handshake(request).await?;
    let header = response
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let answers: Vec<_> = response.into_inner().try_collect().await?;
    header
        .or_else(|| {
            answers
                .first()
                .and_then(|a| String::from_utf8(a.payload.to_vec()).ok())
                .filter(|t| !t.is_empty())
        })
        .ok_or_else(|| {
            FlightError::Tonic(Box::new(tonic::Status::unauthenticated(
                "the handshake returned no token",
            )))
        })
}

fn source_error(table: &str, endpoint: &str, e: &FlightError) -> DataFusionError {
    use tonic::Code;
    let (kind, what) = match e {
        FlightError::Tonic(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded => (
                SourceErrorKind::Unavailable,
                format!("the source cannot be reached ({})", s.message()),
            ),
            Code::Unauthenticated => (
                SourceErrorKind::PermissionDenied,
                "the source refused the login; check the credentials of its meshq.yaml `stores` entry"
                    .to_string(),
            ),
            Code::PermissionDenied => (
                SourceErrorKind::PermissionDenied,
                format!(
                    "the source refused the read (permission denied): {}",
                    s.message()
                ),
            ),
            Code::NotFound => (
                SourceErrorKind::NotFound,
                format!("the source has no such table or column: {}", s.message()),
            ),
            Code::Cancelled => (
                SourceErrorKind::Cancelled,
                "the statement was cancelled at the source".to_string(),
            ),
            _ => (
                SourceErrorKind::Source,
                format!("the source failed: {}", s.message()),
            ),
        },
        other => (
            SourceErrorKind::Source,
            format!("the source's answer cannot be read: {other}"),
        ),
    };
    DataFusionError::External(Box::new(SourceError {
        message: format!("table `{table}` ({endpoint}): {what}"),
        kind,
    }))
}

fn not_found(table: &str, endpoint: &str, what: String) -> DataFusionError {
    DataFusionError::External(Box::new(SourceError {
        message: format!("table `{table}` ({endpoint}): {what}"),
        kind: SourceErrorKind::NotFound,
    }))
}

/// Which comparisons on a column of Arrow type `t` every SQL engine
/// evaluates as DataFusion does: ordering on numbers, dates and booleans,
/// equality on text (ordering follows the server's collation); none on
/// timestamps (time zones differ between engines) or anything else.
fn compare_of(t: &DataType) -> Compare {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Date32
        | DataType::Boolean => Compare::Ordered,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Compare::Equality,
        _ => Compare::Never,
    }
}

/// A table of a remote Flight SQL server as a DataFusion table.
#[derive(Debug)]
pub struct FlightSqlTable {
    remote: Arc<FlightSqlRemote>,
    /// meshq's name of the table (`domain.table`), for messages.
    table: String,
    /// The quoted remote name.
    relation: String,
    compare: Vec<Compare>,
    schema: SchemaRef,
}

/// A table `GetTables` listed: its catalog, schema and IPC schema.
type Listed = (Option<String>, Option<String>, Option<Vec<u8>>);

/// Every row of every endpoint of `info`.
async fn fetch_all(
    client: &mut Client,
    info: &FlightInfo,
) -> std::result::Result<Vec<RecordBatch>, FlightError> {
    let mut batches = Vec::new();
    for endpoint in &info.endpoint {
        let Some(ticket) = endpoint.ticket.clone() else {
            continue;
        };
        let stream = client.do_get(ticket).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

impl FlightSqlTable {
    /// Opens `physical` (the schema object's `physicalName`: the remote
    /// `catalog.schema.table`, `schema.table` or `table`) for meshq's
    /// table `table`: asks the server for its schema with `GetTables`.
    pub async fn open(
        remote: Arc<FlightSqlRemote>,
        table: &str,
        physical: &str,
    ) -> Result<Self, DataFusionError> {
        let endpoint = remote.describe().to_string();
        let parts: Vec<&str> = physical.split('.').collect();
        let (catalog, db_schema, name) = match parts.as_slice() {
            [t] => (None, None, *t),
            [s, t] => (None, Some(*s), *t),
            [c, s, t] => (Some(*c), Some(*s), *t),
            _ => {
                return Err(not_found(
                    table,
                    &endpoint,
                    format!(
                        "physicalName `{physical}` is not `catalog.schema.table`, `schema.table` or `table`"
                    ),
                ));
            }
        };
        let request = CommandGetTables {
            catalog: catalog.map(str::to_string),
            db_schema_filter_pattern: db_schema.map(str::to_string),
            table_name_filter_pattern: Some(name.to_string()),
            table_types: vec![],
            include_schema: true,
        };
        let (batches, _) = remote
            .with_client(|mut c| {
                let request = request.clone();
                async move {
                    let info = c.get_tables(request).await?;
                    let batches = fetch_all(&mut c, &info).await?;
                    Ok((batches, c))
                }
            })
            .await
            .map_err(|e| source_error(table, &endpoint, &e))?;
        // The patterns are LIKE patterns (`_` matches any character): keep
        // the exact name only.
        // (catalog, schema, IPC schema) of each table of that name.
        let mut found: Vec<Listed> = Vec::new();
        for b in &batches {
            let text = |name: &str| {
                b.column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            };
            let (Some(cats), Some(schemas), Some(names)) = (
                text("catalog_name"),
                text("db_schema_name"),
                text("table_name"),
            ) else {
                continue;
            };
            let schema_bytes = b
                .column_by_name("table_schema")
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>());
            for i in 0..b.num_rows() {
                let value = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
                if names.value(i) != name
                    || db_schema.is_some_and(|s| value(schemas).as_deref() != Some(s))
                    || catalog.is_some_and(|c| value(cats).as_deref() != Some(c))
                {
                    continue;
                }
                found.push((
                    value(cats),
                    value(schemas),
                    schema_bytes
                        .filter(|a| !a.is_null(i))
                        .map(|a| a.value(i).to_vec()),
                ));
            }
        }
        let (cat, sch, bytes) = match found.len() {
            0 => {
                return Err(not_found(
                    table,
                    &endpoint,
                    format!(
                        "the source shows no table `{physical}`; it does not exist, or the login in meshq.yaml `stores` may not see it"
                    ),
                ));
            }
            1 => found.pop().expect("one"),
            n => {
                return Err(not_found(
                    table,
                    &endpoint,
                    format!(
                        "the source has {n} tables named `{physical}` (in several catalogs or schemas); write physicalName as `catalog.schema.table`"
                    ),
                ));
            }
        };
        let mut relation = Vec::new();
        if let Some(c) = cat.filter(|_| catalog.is_some()) {
            relation.push(quote(&c));
        }
        if let Some(s) = sch.filter(|_| db_schema.is_some()) {
            relation.push(quote(&s));
        }
        relation.push(quote(name));
        let relation = relation.join(".");
        let schema = match bytes
            .as_deref()
            .map(arrow::ipc::convert::try_schema_from_ipc_buffer)
        {
            Some(Ok(s)) => s,
            // No schema in the listing: the one a prepared statement
            // describes.
            _ => {
                let sql = format!("SELECT * FROM {relation}");
                let (schema, _) = remote
                    .with_client(|mut c| {
                        let sql = sql.clone();
                        async move {
                            let prepared = c.prepare(sql, None).await?;
                            let schema = prepared.dataset_schema()?.clone();
                            let _ = prepared.close().await;
                            Ok((schema, c))
                        }
                    })
                    .await
                    .map_err(|e| source_error(table, &endpoint, &e))?;
                schema
            }
        };
        let schema = Schema::new(schema.fields().clone());
        Ok(Self {
            compare: schema
                .fields()
                .iter()
                .map(|f| compare_of(f.data_type()))
                .collect(),
            remote,
            table: table.to_string(),
            relation,
            schema: Arc::new(schema),
        })
    }

    fn filter_sql(&self, filter: &Expr) -> Option<String> {
        let compare = |name: &str| self.schema.index_of(name).ok().map(|i| self.compare[i]);
        // Standard SQL, every identifier quoted (engines fold unquoted
        // names differently).
        let dialect = CustomDialectBuilder::new()
            .with_identifier_quote_style('"')
            .build();
        crate::pushdown::filter_sql(filter, &compare, &dialect)
    }
}

#[async_trait]
impl TableProvider for FlightSqlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.filter_sql(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let indices: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let select: Vec<String> = indices
            .iter()
            .map(|&i| quote(self.schema.field(i).name()))
            .collect();
        let sql = crate::pushdown::select_statement(
            &self.table,
            "the remote server",
            &self.relation,
            &select,
            filters,
            limit,
            |f| self.filter_sql(f),
        )?;
        let schema = Arc::new(self.schema.project(&indices)?);
        Ok(Arc::new(FlightSqlExec::new(
            Arc::clone(&self.remote),
            self.table.clone(),
            sql,
            schema,
        )))
    }
}

/// Runs one statement on a remote Flight SQL server and streams its
/// answer, in the table's types.
#[derive(Debug)]
pub struct FlightSqlExec {
    remote: Arc<FlightSqlRemote>,
    table: String,
    sql: String,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: datafusion::physical_plan::metrics::ExecutionPlanMetricsSet,
}

impl FlightSqlExec {
    fn new(remote: Arc<FlightSqlRemote>, table: String, sql: String, schema: SchemaRef) -> Self {
        let properties = crate::pushdown::statement_properties(&schema);
        Self {
            remote,
            table,
            sql,
            schema,
            properties,
            metrics: Default::default(),
        }
    }

    /// The statement sent to the remote server.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl DisplayAs for FlightSqlExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FlightSqlExec: table={} endpoint={} sql={}",
            self.table, self.remote.endpoint, self.sql
        )
    }
}

/// Sends `CancelFlightInfo` for a statement that was not read to its end.
struct CancelOnDrop {
    client: Client,
    info: Option<FlightInfo>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(info) = self.info.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let mut client = self.client.clone();
            rt.spawn(async move {
                let action = Action {
                    r#type: "CancelFlightInfo".into(),
                    body: CancelFlightInfoRequest { info: Some(info) }
                        .encode_to_vec()
                        .into(),
                };
                match client.do_action(action).await {
                    Ok(mut answers) => while let Ok(Some(_)) = answers.message().await {},
                    Err(e) => tracing::debug!(error = %e, "cancelling a remote statement failed"),
                }
            });
        }
    }
}

/// `batch` in `schema`'s types (a server may answer in a close type, such
/// as a string view for a string).
fn conform(batch: RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() && !schema.fields().is_empty() {
        return Err(DataFusionError::Execution(format!(
            "table `{table}`: the remote server answered {} columns, not the {} asked for",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = if schema.fields().is_empty() {
        vec![]
    } else {
        batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    arrow::compute::cast(c, f.data_type()).map_err(|e| {
                        DataFusionError::Execution(format!(
                            "table `{table}`: column `{}` came as {} and cannot be read as {}: {e}",
                            f.name(),
                            c.data_type(),
                            f.data_type()
                        ))
                    })
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?
    };
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

impl ExecutionPlan for FlightSqlExec {
    fn name(&self) -> &str {
        "FlightSqlExec"
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "FlightSqlExec has one partition, not {partition}"
            )));
        }
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let remote = Arc::clone(&self.remote);
        let sql = self.sql.clone();
        let schema = Arc::clone(&self.schema);
        let table = self.table.clone();
        let received = datafusion::physical_plan::metrics::MetricBuilder::new(&self.metrics)
            .output_rows(partition);
        builder.spawn(async move {
            let endpoint = remote.describe().to_string();
            let fail = |e: &FlightError| source_error(&table, &endpoint, e);
            let _permit = Arc::clone(&remote.permits)
                .acquire_owned()
                .await
                .expect("the remote's semaphore is never closed");
            let deadline = remote.timeout.map(|t| tokio::time::Instant::now() + t);
            let (info, client) = remote
                .with_client(|mut c| {
                    let sql = sql.clone();
                    async move { Ok((c.execute(sql, None).await?, c)) }
                })
                .await
                .map_err(|e| fail(&e))?;
            let mut cancel = CancelOnDrop {
                client: client.clone(),
                info: Some(info.clone()),
            };
            for point in &info.endpoint {
                let Some(ticket) = point.ticket.clone() else {
                    continue;
                };
                // Tickets are redeemed where the statement ran: a server
                // that names another location is not followed (its
                // credentials were given for this endpoint only).
                if point.location.iter().any(|l| {
                    !l.uri.starts_with("arrow-flight-reuse-connection:")
                        && normalize(&l.uri) != normalize(&endpoint)
                }) {
                    return Err(DataFusionError::External(Box::new(SourceError {
                        message: format!(
                            "table `{table}` ({endpoint}): the source answers from another location ({}), which meshq does not follow; serve the results from the endpoint itself",
                            point
                                .location
                                .iter()
                                .map(|l| l.uri.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        kind: SourceErrorKind::Source,
                    })));
                }
                let mut c = client.clone();
                let mut stream = c.do_get(ticket).await.map_err(|e| fail(&e))?;
                loop {
                    let next = match deadline {
                        Some(d) => match tokio::time::timeout_at(d, stream.next()).await {
                            Ok(n) => n,
                            Err(_) => {
                                return Err(DataFusionError::External(Box::new(SourceError {
                                    message: format!(
                                        "table `{table}` ({endpoint}): the statement ran out of its time (the `timeout` of its meshq.yaml `stores` entry) and was cancelled"
                                    ),
                                    kind: SourceErrorKind::Cancelled,
                                })));
                            }
                        },
                        None => stream.next().await,
                    };
                    let Some(batch) = next else { break };
                    let batch = conform(batch.map_err(|e| fail(&e))?, &schema, &table)?;
                    received.add(batch.num_rows());
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            cancel.info = None;
            Ok(())
        });
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_map_to_transports() {
        assert_eq!(
            transport_url("grpc://127.0.0.1:50051"),
            Some(("http://127.0.0.1:50051".into(), false))
        );
        assert_eq!(
            transport_url("grpc+tls://example.com:443"),
            Some(("https://example.com:443".into(), true))
        );
        assert_eq!(transport_url("http://x:1"), None);
    }

    #[test]
    fn timestamps_and_binary_compare_in_meshq() {
        use arrow::datatypes::TimeUnit;
        assert_eq!(compare_of(&DataType::Int64), Compare::Ordered);
        assert_eq!(compare_of(&DataType::Utf8View), Compare::Equality);
        assert_eq!(
            compare_of(&DataType::Timestamp(TimeUnit::Microsecond, None)),
            Compare::Never
        );
        assert_eq!(compare_of(&DataType::Binary), Compare::Never);
    }
}
