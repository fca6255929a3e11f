//! PostgreSQL output ports: a table or view of a PostgreSQL database,
//! read with `tokio-postgres` through a bounded pool of connections.
//!
//! What reaches PostgreSQL is exactly what DataFusion hands [`scan`]:
//! the projection, the filters this provider accepted, and a limit. meshq's
//! policy rewrite and barrier decide which filters get that far — the row
//! filters, and user predicates on unmasked columns the barrier lets
//! through — so a predicate on a masked column never runs on the raw value
//! at the source. Of those, this provider accepts only comparisons whose
//! meaning PostgreSQL shares with DataFusion ([`crate::pushdown::pushable`]): `=`, `<>`,
//! `IN` and `IS NULL` on text; ordering comparisons on numbers, dates and
//! times only (text order depends on the database's collation); anything
//! else stays in meshq.
//!
//! The SQL sent is the one `EXPLAIN` shows ([`PostgresExec`]). A query
//! that is dropped (cancelled, timed out) cancels its statement at the
//! server.
//!
//! [`scan`]: TableProvider::scan

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder,
    RecordBatch, RecordBatchOptions, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use futures::TryStreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls};

use crate::error::{SourceError, SourceErrorKind};
use crate::pushdown::{Compare, quote};

/// How to reach one PostgreSQL database: the contract server's `host`,
/// `port` and `database`, and the `stores` entry's credentials and limits.
#[derive(Clone)]
pub struct PostgresConnection {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// Login.
    pub user: String,
    /// Password (resolved from its environment variable).
    pub password: Option<String>,
    /// Connections kept at most.
    pub pool_size: usize,
    /// Server-side limit of each statement.
    pub statement_timeout: Option<Duration>,
    /// TLS to the server, per the entry's `sslmode`.
    pub tls: PgTls,
}

/// How a connection to PostgreSQL is encrypted: libpq's `sslmode`.
#[derive(Clone)]
pub enum PgTls {
    /// `disable`: plaintext.
    Disable,
    /// `allow`, `prefer`: TLS when the server offers it, else plaintext;
    /// the certificate is not checked (as libpq does).
    Prefer(tokio_postgres_rustls::MakeRustlsConnect),
    /// `require`, `verify-ca`, `verify-full`: TLS or no connection; the
    /// certificate checked as the mode says.
    Require(tokio_postgres_rustls::MakeRustlsConnect),
}

impl PgTls {
    /// The TLS of `sslmode` (libpq's names), trusting `root` (a PEM file
    /// of certificate authorities, libpq's `sslrootcert`) or, for
    /// `verify-ca` and `verify-full` without one, the system's roots.
    pub fn from_sslmode(mode: &str, root: Option<&Path>) -> std::result::Result<Self, String> {
        use rustls::client::danger::ServerCertVerifier;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = || -> std::result::Result<Arc<rustls::RootCertStore>, String> {
            let mut store = rustls::RootCertStore::empty();
            match root {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("sslrootcert `{}` cannot be read: {e}", path.display())
                    })?;
                    let mut reader = std::io::BufReader::new(pem.as_slice());
                    let mut any = false;
                    for cert in rustls_pemfile_certs(&mut reader) {
                        let cert =
                            cert.map_err(|e| format!("sslrootcert `{}`: {e}", path.display()))?;
                        store
                            .add(cert)
                            .map_err(|e| format!("sslrootcert `{}`: {e}", path.display()))?;
                        any = true;
                    }
                    if !any {
                        return Err(format!(
                            "sslrootcert `{}` holds no PEM certificate",
                            path.display()
                        ));
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    for cert in found.certs {
                        let _ = store.add(cert);
                    }
                }
            }
            Ok(Arc::new(store))
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, root) {
            ("allow" | "prefer", _) | ("require", None) => {
                Arc::new(Unverified(Arc::clone(&provider)))
            }
            ("require" | "verify-ca", _) => Arc::new(Verified {
                inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots()?,
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| e.to_string())?,
                check_name: false,
            }),
            ("verify-full", _) => Arc::new(Verified {
                inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots()?,
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| e.to_string())?,
                check_name: true,
            }),
            ("disable", _) => return Ok(Self::Disable),
            (other, _) => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
        Ok(match mode {
            "allow" | "prefer" => Self::Prefer(tls),
            _ => Self::Require(tls),
        })
    }
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    reader: &mut dyn std::io::BufRead,
) -> impl Iterator<Item = std::result::Result<rustls::pki_types::CertificateDer<'static>, String>> + '_
{
    use rustls::pki_types::pem::PemObject;
    let mut text = Vec::new();
    let read = reader.read_to_end(&mut text).map_err(|e| e.to_string());
    let certs: Vec<_> = match read {
        Ok(_) => rustls::pki_types::CertificateDer::pem_slice_iter(&text)
            .map(|c| c.map_err(|e| e.to_string()))
            .collect(),
        Err(e) => vec![Err(e)],
    };
    certs.into_iter()
}

/// libpq's `prefer` and `require` without a root certificate: encrypted,
/// the server's certificate not checked, its handshake signatures still
/// verified.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (the chain only) and `verify-full` (the chain and the host
/// name).
#[derive(Debug)]
struct Verified {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl rustls::client::danger::ServerCertVerifier for Verified {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl fmt::Debug for PostgresConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password.
        write!(f, "{}", self.describe())
    }
}

impl PostgresConnection {
    /// `postgresql://user@host:port/database`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }

    fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .application_name("meshq")
            .connect_timeout(Duration::from_secs(10))
            .ssl_mode(match self.tls {
                PgTls::Disable => tokio_postgres::config::SslMode::Disable,
                PgTls::Prefer(_) => tokio_postgres::config::SslMode::Prefer,
                PgTls::Require(_) => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p);
        }
        let mut options = "-c TimeZone=UTC -c DateStyle=ISO".to_string();
        if let Some(t) = self.statement_timeout {
            options.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
        }
        c.options(&options);
        c
    }
}

/// The pools of every `stores` entry of type `postgresql`, by `host`,
/// `port` and `database`; an entry that cannot be used is kept with why.
#[derive(Debug, Default)]
pub struct PostgresPools(
    std::collections::BTreeMap<(String, u16, String), std::result::Result<Arc<PgPool>, String>>,
);

/// A duration such as `30s`, `2m`, `500ms` or `1h`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

impl PostgresPools {
    /// The pools of `config`'s `stores`; none connects before a table is
    /// opened.
    pub fn new(
        config: &meshq_catalog::platform::PlatformConfig,
        fallback: &std::collections::BTreeMap<String, String>,
        root: &Path,
    ) -> Self {
        use meshq_catalog::platform::StoreConfig;
        let mut pools = std::collections::BTreeMap::new();
        for (name, store) in &config.stores {
            let StoreConfig::Postgresql {
                host,
                port,
                database,
                user,
                password,
                sslmode,
                sslrootcert,
                pool_size,
                statement_timeout,
            } = store
            else {
                continue;
            };
            let key = (host.clone(), port.unwrap_or(5432), database.clone());
            let pool = (|| {
                let sslrootcert = sslrootcert.as_ref().map(|p| root.join(p));
                let tls = PgTls::from_sslmode(
                    sslmode.as_deref().unwrap_or("disable"),
                    sslrootcert.as_deref(),
                )
                .map_err(|e| format!("stores `{name}`: {e}"))?;
                let password = match password {
                    Some(p) => Some(
                        p.resolve_with(fallback)
                            .map_err(|e| format!("stores `{name}`: password: {e}"))?,
                    ),
                    None => None,
                };
                let statement_timeout = match statement_timeout {
                    Some(t) => Some(parse_duration(t).ok_or_else(|| {
                        format!("stores `{name}`: statement_timeout `{t}` is not a duration such as 30s or 2m")
                    })?),
                    None => None,
                };
                Ok(PgPool::new(PostgresConnection {
                    host: host.clone(),
                    port: key.1,
                    database: database.clone(),
                    user: user.clone(),
                    password,
                    pool_size: pool_size.unwrap_or(4),
                    statement_timeout,
                    tls,
                }))
            })();
            pools.insert(key, pool);
        }
        Self(pools)
    }

    /// The pool for a table at `host:port/database`.
    pub fn pool_for(
        &self,
        host: &str,
        port: u16,
        database: &str,
    ) -> std::result::Result<Arc<PgPool>, String> {
        match self.0.get(&(host.to_string(), port, database.to_string())) {
            Some(Ok(p)) => Ok(Arc::clone(p)),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!(
                "meshq.yaml has no `stores` entry of type postgresql for host `{host}`, port {port}, database `{database}`; add one with `user` and `password: {{ env: VAR }}`"
            )),
        }
    }
}

/// A bounded pool of connections to one database. A connection is made
/// when none is idle, at most `pool_size` are in use; one whose statement
/// was cancelled or that failed is not reused.
#[derive(Debug)]
pub struct PgPool {
    connection: PostgresConnection,
    idle: parking_lot::Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from a [`PgPool`]; goes back when dropped.
struct Pooled {
    client: Option<Client>,
    pool: Arc<PgPool>,
    reuse: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(c) = self.client.take()
            && self.reuse
            && !c.is_closed()
        {
            self.pool.idle.lock().push(c);
        }
    }
}

impl PgPool {
    /// A pool for `connection`; connects on first use.
    pub fn new(connection: PostgresConnection) -> Arc<Self> {
        let size = connection.pool_size.max(1);
        Arc::new(Self {
            connection,
            idle: parking_lot::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
        })
    }

    /// The database, for messages.
    pub fn describe(&self) -> String {
        self.connection.describe()
    }

    async fn get(self: &Arc<Self>) -> Result<Pooled, tokio_postgres::Error> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let idle = {
            let mut idle = self.idle.lock();
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let config = self.connection.config();
                let ended = |e: tokio_postgres::Error| {
                    tracing::debug!(error = %e, "a PostgreSQL connection ended");
                };
                match &self.connection.tls {
                    PgTls::Disable => {
                        let (client, connection) = config.connect(NoTls).await?;
                        tokio::spawn(async move { connection.await.map_err(ended) });
                        client
                    }
                    PgTls::Prefer(tls) | PgTls::Require(tls) => {
                        let (client, connection) = config.connect(tls.clone()).await?;
                        tokio::spawn(async move { connection.await.map_err(ended) });
                        client
                    }
                }
            }
        };
        Ok(Pooled {
            client: Some(client),
            pool: Arc::clone(self),
            reuse: true,
            _permit: permit,
        })
    }
}

fn source_error(table: &str, db: &str, e: &tokio_postgres::Error) -> DataFusionError {
    use tokio_postgres::error::SqlState;
    let (kind, what) = match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => (
            SourceErrorKind::PermissionDenied,
            "the source refused the read (permission denied); the login in meshq.yaml `stores` needs SELECT on the table".to_string(),
        ),
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            (
                SourceErrorKind::PermissionDenied,
                "the source refused the login; check the user and password of its meshq.yaml `stores` entry".to_string(),
            )
        }
        Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::UNDEFINED_COLUMN => (
            SourceErrorKind::NotFound,
            format!(
                "the source has no such table or column: {}",
                e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
            ),
        ),
        Some(c) if *c == SqlState::QUERY_CANCELED => (
            SourceErrorKind::Cancelled,
            "the statement was cancelled at the source (statement_timeout or a cancelled query)"
                .to_string(),
        ),
        Some(_) => (
            SourceErrorKind::Source,
            format!(
                "the source failed: {}",
                e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string())
            ),
        ),
        None => {
            // The driver's message, with its causes (a TLS handshake's
            // says why the certificate was refused).
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let next = c.to_string();
                if !text.contains(&next) {
                    text.push_str(": ");
                    text.push_str(&next);
                }
                cause = c.source();
            }
            (
                SourceErrorKind::Unavailable,
                format!("the source cannot be reached ({text})"),
            )
        }
    };
    DataFusionError::External(Box::new(SourceError {
        message: format!("table `{table}` ({db}): {what}"),
        kind,
    }))
}

/// How a column is read: as its own type, or as text (`::text`) and
/// converted (numeric, uuid, json, and any type meshq does not decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    Native,
    Text,
}

/// One column of a PostgreSQL table as meshq reads it.
#[derive(Debug, Clone)]
struct PgColumn {
    name: String,
    read: Read,
    /// Whether predicates on it may go to PostgreSQL, and which.
    compare: Compare,
}

/// The Arrow type, read and comparisons of a column of PostgreSQL type
/// `data_type` (`udt_name` names an array's element type).
fn map_type(
    data_type: &str,
    udt_name: &str,
    precision: Option<i32>,
    scale: Option<i32>,
) -> (DataType, Read, Compare) {
    use Compare::*;
    let ts = |tz: Option<&str>| DataType::Timestamp(TimeUnit::Microsecond, tz.map(Arc::from));
    match data_type {
        "smallint" => (DataType::Int16, Read::Native, Ordered),
        "integer" => (DataType::Int32, Read::Native, Ordered),
        "bigint" => (DataType::Int64, Read::Native, Ordered),
        "real" => (DataType::Float32, Read::Native, Ordered),
        "double precision" => (DataType::Float64, Read::Native, Ordered),
        "numeric" => match (precision, scale) {
            (Some(p), Some(s)) if (1..=38).contains(&p) && (0..=p).contains(&s) => {
                (DataType::Decimal128(p as u8, s as i8), Read::Text, Ordered)
            }
            // Unconstrained numeric: 38 digits, 10 after the point.
            (None, _) => (DataType::Decimal128(38, 10), Read::Text, Ordered),
            // More than 38 digits, or a scale outside 0..=precision
            // (PostgreSQL 15 allows both): its text.
            _ => (DataType::Utf8, Read::Text, Never),
        },
        "boolean" => (DataType::Boolean, Read::Native, Ordered),
        "text" | "character varying" => (DataType::Utf8, Read::Native, Equality),
        // Blank-padded: its comparisons pad, DataFusion's do not.
        "character" | "name" => (DataType::Utf8, Read::Native, Never),
        "date" => (DataType::Date32, Read::Native, Ordered),
        "timestamp without time zone" => (ts(None), Read::Native, Ordered),
        "timestamp with time zone" => (ts(Some("UTC")), Read::Native, Ordered),
        "bytea" => (DataType::Binary, Read::Native, Never),
        "uuid" | "json" | "jsonb" => (DataType::Utf8, Read::Text, Never),
        "ARRAY" => {
            let item = match udt_name.trim_start_matches('_') {
                "int2" => DataType::Int16,
                "int4" => DataType::Int32,
                "int8" => DataType::Int64,
                "float4" => DataType::Float32,
                "float8" => DataType::Float64,
                "bool" => DataType::Boolean,
                "text" | "varchar" => DataType::Utf8,
                _ => return (DataType::Utf8, Read::Text, Never),
            };
            (
                DataType::List(Arc::new(Field::new("item", item, true))),
                Read::Native,
                Never,
            )
        }
        _ => (DataType::Utf8, Read::Text, Never),
    }
}

/// A PostgreSQL table or view as a DataFusion table.
#[derive(Debug)]
pub struct PostgresTable {
    pool: Arc<PgPool>,
    /// meshq's name of the table (`domain.table`), for messages.
    table: String,
    /// `"schema"."name"` at the source.
    relation: String,
    columns: Vec<PgColumn>,
    schema: SchemaRef,
}

impl PostgresTable {
    /// Opens `schema.name` (the contract's server `schema` and the schema
    /// object's `physicalName`) for meshq's table `table`: reads its
    /// columns from `information_schema`.
    pub async fn open(
        pool: Arc<PgPool>,
        table: &str,
        schema: &str,
        name: &str,
    ) -> Result<Self, DataFusionError> {
        let db = pool.describe();
        let client = pool.get().await.map_err(|e| source_error(table, &db, &e))?;
        let c = client.client.as_ref().expect("held until dropped");
        let rows = c
            .query(
                "SELECT column_name::text, data_type::text, udt_name::text, \
                        numeric_precision::int4, numeric_scale::int4, is_nullable::text \
                 FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &name],
            )
            .await
            .map_err(|e| source_error(table, &db, &e))?;
        if rows.is_empty() {
            return Err(DataFusionError::External(Box::new(SourceError {
                message: format!(
                    "table `{table}` ({db}): the source shows no table `{schema}.{name}`; it does not exist, or the login in meshq.yaml `stores` may not see it"
                ),
                kind: SourceErrorKind::NotFound,
            })));
        }
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for r in rows {
            let column: String = r.get(0);
            let data_type: String = r.get(1);
            let udt: String = r.get(2);
            let (arrow, read, compare) = map_type(&data_type, &udt, r.get(3), r.get(4));
            let nullable = r.get::<_, String>(5) == "YES";
            fields.push(Field::new(&column, arrow, nullable));
            columns.push(PgColumn {
                name: column,
                read,
                compare,
            });
        }
        Ok(Self {
            pool,
            table: table.to_string(),
            relation: format!("{}.{}", quote(schema), quote(name)),
            columns,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// The SQL text of `filter`, when PostgreSQL evaluates it exactly as
    /// DataFusion would ([`crate::pushdown::pushable`]).
    fn filter_sql(&self, filter: &Expr) -> Option<String> {
        let compare = |name: &str| {
            self.columns
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.compare)
        };
        crate::pushdown::filter_sql(filter, &compare, &PostgreSqlDialect {})
    }
}

#[async_trait]
impl TableProvider for PostgresTable {
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
            None => (0..self.columns.len()).collect(),
        };
        let select: Vec<String> = indices
            .iter()
            .map(|&i| {
                let c = &self.columns[i];
                match c.read {
                    Read::Native => quote(&c.name),
                    Read::Text => format!("{}::text", quote(&c.name)),
                }
            })
            .collect();
        let sql = crate::pushdown::select_statement(
            &self.table,
            "PostgreSQL",
            &self.relation,
            &select,
            filters,
            limit,
            |f| self.filter_sql(f),
        )?;
        let schema = Arc::new(self.schema.project(&indices)?);
        let reads = indices.iter().map(|&i| self.columns[i].read).collect();
        Ok(Arc::new(PostgresExec::new(
            Arc::clone(&self.pool),
            self.table.clone(),
            sql,
            schema,
            reads,
        )))
    }
}

/// Runs one SELECT at PostgreSQL and streams its rows as Arrow batches.
#[derive(Debug)]
pub struct PostgresExec {
    pool: Arc<PgPool>,
    table: String,
    sql: String,
    schema: SchemaRef,
    reads: Vec<Read>,
    properties: Arc<PlanProperties>,
    /// `output_rows`: the rows PostgreSQL sent.
    metrics: datafusion::physical_plan::metrics::ExecutionPlanMetricsSet,
}

impl PostgresExec {
    fn new(
        pool: Arc<PgPool>,
        table: String,
        sql: String,
        schema: SchemaRef,
        reads: Vec<Read>,
    ) -> Self {
        let properties = crate::pushdown::statement_properties(&schema);
        Self {
            pool,
            table,
            sql,
            schema,
            reads,
            properties,
            metrics: Default::default(),
        }
    }

    /// The statement sent to PostgreSQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

impl DisplayAs for PostgresExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresExec: table={} sql={}", self.table, self.sql)
    }
}

/// Cancels the running statement at the server when dropped armed (the
/// query's stream went away before the rows were all read).
struct CancelOnDrop(Option<(tokio_postgres::CancelToken, PgTls)>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let (token, tls) = token;
                let sent = match tls {
                    PgTls::Disable => token.cancel_query(NoTls).await,
                    PgTls::Prefer(tls) | PgTls::Require(tls) => token.cancel_query(tls).await,
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "cancelling a PostgreSQL statement failed");
                }
            });
        }
    }
}

impl ExecutionPlan for PostgresExec {
    fn name(&self) -> &str {
        "PostgresExec"
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
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "PostgresExec has one partition, not {partition}"
            )));
        }
        let batch_size = context.session_config().batch_size();
        let mut builder = RecordBatchReceiverStreamBuilder::new(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let pool = Arc::clone(&self.pool);
        let sql = self.sql.clone();
        let schema = Arc::clone(&self.schema);
        let reads = self.reads.clone();
        let table = self.table.clone();
        let sent = datafusion::physical_plan::metrics::MetricBuilder::new(&self.metrics)
            .output_rows(partition);
        builder.spawn(async move {
            let db = pool.describe();
            let fail = |e: &tokio_postgres::Error| source_error(&table, &db, e);
            let mut conn = pool.get().await.map_err(|e| fail(&e))?;
            let client = conn.client.as_ref().expect("held until dropped");
            // Armed until the last row: a dropped stream cancels the
            // statement, and the connection is not reused.
            let mut cancel =
                CancelOnDrop(Some((client.cancel_token(), pool.connection.tls.clone())));
            conn.reuse = false;
            let rows = client
                .query_raw(sql.as_str(), std::iter::empty::<&str>())
                .await
                .map_err(|e| fail(&e))?;
            futures::pin_mut!(rows);
            let mut batch = Batch::new(&schema, batch_size);
            while let Some(row) = rows.try_next().await.map_err(|e| fail(&e))? {
                batch.push(&row, &reads, &table)?;
                sent.add(1);
                if batch.rows == batch_size {
                    let full = std::mem::replace(&mut batch, Batch::new(&schema, batch_size));
                    if tx.send(full.finish(&schema)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            cancel.0 = None;
            conn.reuse = true;
            if batch.rows > 0 || schema.fields().is_empty() {
                let _ = tx.send(batch.finish(&schema)).await;
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

/// Rows being gathered into one batch.
struct Batch {
    builders: Vec<Box<dyn ArrayBuilder>>,
    types: Vec<DataType>,
    rows: usize,
}

fn builder_for(t: &DataType, capacity: usize) -> Box<dyn ArrayBuilder> {
    match t {
        DataType::Int16 => Box::new(Int16Builder::with_capacity(capacity)),
        DataType::Int32 => Box::new(Int32Builder::with_capacity(capacity)),
        DataType::Int64 => Box::new(Int64Builder::with_capacity(capacity)),
        DataType::Float32 => Box::new(Float32Builder::with_capacity(capacity)),
        DataType::Float64 => Box::new(Float64Builder::with_capacity(capacity)),
        DataType::Boolean => Box::new(BooleanBuilder::with_capacity(capacity)),
        DataType::Date32 => Box::new(Date32Builder::with_capacity(capacity)),
        DataType::Binary => Box::new(BinaryBuilder::with_capacity(capacity, capacity * 16)),
        DataType::Decimal128(p, s) => {
            let b = Decimal128Builder::with_capacity(capacity);
            // Precision and scale come from `map_type`, which keeps them
            // valid; the cast in `finish` would catch one that is not.
            Box::new(
                b.with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| Decimal128Builder::with_capacity(capacity)),
            )
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Box::new(
            TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone_opt(tz.clone()),
        ),
        DataType::List(item) => match item.data_type() {
            DataType::Int16 => Box::new(ListBuilder::new(Int16Builder::new())),
            DataType::Int32 => Box::new(ListBuilder::new(Int32Builder::new())),
            DataType::Int64 => Box::new(ListBuilder::new(Int64Builder::new())),
            DataType::Float32 => Box::new(ListBuilder::new(Float32Builder::new())),
            DataType::Float64 => Box::new(ListBuilder::new(Float64Builder::new())),
            DataType::Boolean => Box::new(ListBuilder::new(BooleanBuilder::new())),
            _ => Box::new(ListBuilder::new(StringBuilder::new())),
        },
        _ => Box::new(StringBuilder::with_capacity(capacity, capacity * 16)),
    }
}

impl Batch {
    fn new(schema: &Schema, capacity: usize) -> Self {
        Self {
            builders: schema
                .fields()
                .iter()
                .map(|f| builder_for(f.data_type(), capacity))
                .collect(),
            types: schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            rows: 0,
        }
    }

    fn push(&mut self, row: &tokio_postgres::Row, reads: &[Read], table: &str) -> Result<()> {
        for (i, b) in self.builders.iter_mut().enumerate() {
            append(b.as_mut(), &self.types[i], row, i, reads[i]).map_err(|e| {
                DataFusionError::Execution(format!(
                    "table `{table}`: column `{}` at the source cannot be read: {e}",
                    row.columns()[i].name()
                ))
            })?;
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        // The builders' fields are named `item`; the schema's are the
        // contract's: cast each column to the schema's field.
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    arrow::compute::cast(&c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &options,
        )?)
    }
}

type AppendResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn append(
    b: &mut dyn ArrayBuilder,
    t: &DataType,
    row: &tokio_postgres::Row,
    i: usize,
    read: Read,
) -> AppendResult {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> std::result::Result<Option<T>, tokio_postgres::Error> {
        row.try_get::<_, Option<T>>(i)
    }
    let any = b.as_any_mut();
    if read == Read::Text {
        let text: Option<String> = get(row, i)?;
        if let Some(d) = any.downcast_mut::<Decimal128Builder>() {
            let (p, s) = match t {
                DataType::Decimal128(p, s) => (*p, *s),
                _ => return Err("a decimal column without precision".into()),
            };
            match text {
                None => d.append_null(),
                Some(t) => d.append_value(arrow::compute::kernels::cast_utils::parse_decimal::<
                    arrow::datatypes::Decimal128Type,
                >(&t, p, s)?),
            }
            return Ok(());
        }
        let s = any
            .downcast_mut::<StringBuilder>()
            .ok_or("a text column is built as a string")?;
        s.append_option(text);
        return Ok(());
    }
    macro_rules! native {
        ($builder:ty, $t:ty) => {
            if let Some(b) = any.downcast_mut::<$builder>() {
                b.append_option(get::<$t>(row, i)?);
                return Ok(());
            }
        };
    }
    macro_rules! list {
        ($item:ty, $t:ty) => {
            if let Some(b) = any.downcast_mut::<ListBuilder<$item>>() {
                match get::<Vec<Option<$t>>>(row, i)? {
                    None => b.append_null(),
                    Some(values) => {
                        for v in values {
                            b.values().append_option(v);
                        }
                        b.append(true);
                    }
                }
                return Ok(());
            }
        };
    }
    native!(Int16Builder, i16);
    native!(Int32Builder, i32);
    native!(Int64Builder, i64);
    native!(Float32Builder, f32);
    native!(Float64Builder, f64);
    native!(BooleanBuilder, bool);
    native!(StringBuilder, String);
    native!(BinaryBuilder, Vec<u8>);
    if let Some(b) = any.downcast_mut::<Date32Builder>() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        b.append_option(
            get::<chrono::NaiveDate>(row, i)?
                .map(|d| d.signed_duration_since(epoch).num_days() as i32),
        );
        return Ok(());
    }
    if let Some(b) = any.downcast_mut::<TimestampMicrosecondBuilder>() {
        let with_zone = matches!(
            row.columns()[i].type_(),
            &tokio_postgres::types::Type::TIMESTAMPTZ
        );
        let micros = if with_zone {
            get::<chrono::DateTime<chrono::Utc>>(row, i)?.map(|t| t.timestamp_micros())
        } else {
            get::<chrono::NaiveDateTime>(row, i)?.map(|t| t.and_utc().timestamp_micros())
        };
        b.append_option(micros);
        return Ok(());
    }
    list!(Int16Builder, i16);
    list!(Int32Builder, i32);
    list!(Int64Builder, i64);
    list!(Float32Builder, f32);
    list!(Float64Builder, f64);
    list!(BooleanBuilder, bool);
    list!(StringBuilder, String);
    Err("meshq cannot read this column's type".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_types_map_to_arrow() {
        let t = |d: &str, u: &str| map_type(d, u, None, None).0;
        assert_eq!(t("bigint", "int8"), DataType::Int64);
        assert_eq!(
            map_type("numeric", "numeric", Some(12), Some(2)).0,
            DataType::Decimal128(12, 2)
        );
        assert_eq!(t("numeric", "numeric"), DataType::Decimal128(38, 10));
        // PostgreSQL 15 allows a scale above the precision, and 1000 digits.
        assert_eq!(
            map_type("numeric", "numeric", Some(2), Some(5)).0,
            DataType::Utf8
        );
        assert_eq!(
            map_type("numeric", "numeric", Some(60), Some(2)).0,
            DataType::Utf8
        );
        assert_eq!(
            t("timestamp with time zone", "timestamptz"),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(t("jsonb", "jsonb"), DataType::Utf8);
        assert_eq!(
            t("ARRAY", "_int4"),
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
        );
        assert_eq!(map_type("inet", "inet", None, None).1, Read::Text);
    }
}
