//! The platform config, `meshq.yaml` at the root of a mesh directory:
//! object stores, secrets, authentication and principals.
//!
//! Credentials and secrets are never literals: they are `{ env: VAR }`
//! references resolved when used.

use std::collections::BTreeMap;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::principal::Principal;
pub use crate::principal::{AttributeValue, PrincipalConfig, SessionDefaults};

/// File name of the platform config at the mesh root.
pub const PLATFORM_FILE: &str = "meshq.yaml";

/// Default name of the role allowed to run DDL and `SET`.
pub const DEFAULT_ADMIN_ROLE: &str = "admin";

/// `meshq.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Object stores by name; a server location matches a store by bucket
    /// (or container) name, or by the store's explicit `bucket`.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// Iceberg catalogs by name; a contract server with `format: iceberg`
    /// names one in its `catalog` field.
    #[serde(default)]
    pub catalogs: BTreeMap<String, CatalogConfig>,
    /// Named secrets (e.g. HMAC keys for hash masks).
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// How clients authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Known principals.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Resource limits for the server and per principal.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// Where SQL statements may read and write files of their own.
    #[serde(default)]
    pub files: FilesConfig,
    /// What principals see of tables they may not read.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Session defaults for every principal (a principal's own `defaults`
    /// win).
    #[serde(default)]
    pub defaults: SessionDefaults,
    /// Where OpenLineage run events of served queries go; none when unset.
    #[serde(default)]
    pub openlineage: Option<OpenLineageConfig>,
    /// The result cache of `meshq serve`.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The workers a coordinator distributes queries to, and the secret
    /// every node of the cluster shares.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Settings every session of the server starts with (DataFusion's
    /// `datafusion.*`, meshq's `meshq_scan.*` and `meshq_plan.*`): the
    /// keys a session could `SET`, before any session sets them.
    #[serde(default, deserialize_with = "scalar_map")]
    pub settings: BTreeMap<String, String>,
}

/// A map whose values may be written as YAML booleans or numbers as well
/// as strings (`reorder_joins: true`), kept as the text DataFusion parses.
fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_yaml_ng::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_yaml_ng::Value::Bool(b) => b.to_string(),
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::String(s) => s,
                _ => {
                    return Err(D::Error::custom(format!(
                        "setting `{key}`: write a boolean, a number or a string"
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}

impl PlatformConfig {
    /// Reads the `meshq.yaml` of the mesh directory `dir` alone, as a
    /// worker does; a missing or invalid file is an error naming it.
    pub fn read(dir: &std::path::Path) -> Result<Self, String> {
        let file = dir.join(PLATFORM_FILE);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
    }
}

/// `cluster:` — scale-out over `meshq worker` processes.
///
/// ```yaml
/// cluster:
///   workers: [http://10.0.0.5:50052, http://10.0.0.6:50052]   # coordinator only
///   secret: { env: MESHQ_CLUSTER_SECRET }                      # every node
///   tls: { ca: certs/ca.pem, cert: certs/node.pem, key: certs/node.key }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Worker URLs (`http://host:port`, or `https://` with `tls`); none:
    /// queries run on the coordinator alone.
    #[serde(default)]
    pub workers: Vec<String>,
    /// The shared secret requests between nodes are signed with (at least
    /// 16 bytes).
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// TLS between nodes: `ca` checks the peer, `cert` and `key` are this
    /// node's (a worker's server certificate; a coordinator's client
    /// certificate when workers require one).
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
    /// datafusion-distributed's settings (`distributed.*` keys, e.g.
    /// `distributed.file_scan_config_bytes_per_partition`), applied on the
    /// coordinator.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// `cluster.tls`: paths relative to the mesh directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// PEM CA certificate(s) that signed the other nodes' certificates.
    #[serde(default)]
    pub ca: Option<String>,
    /// This node's PEM certificate chain.
    #[serde(default)]
    pub cert: Option<String>,
    /// This node's PEM private key.
    #[serde(default)]
    pub key: Option<String>,
}

/// `cache:` — query results kept in memory and served again to principals
/// whose policies make the same plan (see the engine's `cache` module).
///
/// ```yaml
/// cache: { enabled: true, max_bytes: 512MiB, ttl: 10m }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Off unless set.
    #[serde(default)]
    pub enabled: bool,
    /// Most bytes of Arrow data kept (default 256 MiB), accounted in the
    /// server's memory pool; least recently used results go first. One
    /// result larger than a quarter of this is not kept.
    #[serde(default)]
    pub max_bytes: Option<crate::limits::ByteSize>,
    /// How long a result may be served after it was computed (default
    /// 10m). A reload, or new files in a table it read, ends it sooner.
    #[serde(default)]
    pub ttl: Option<crate::limits::DurationSpec>,
}

impl CacheConfig {
    /// Default of `max_bytes`.
    pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
    /// Default of `ttl`.
    pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(600);
}

/// `openlineage:` — run events for every query `meshq serve` answers,
/// to a JSON-lines `file` or an HTTP `url` (exactly one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenLineageConfig {
    /// Namespace of jobs and datasets, e.g. `meshq://retail-prod`
    /// (default `meshq://meshq`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Append events to this file, one JSON object per line.
    #[serde(default)]
    pub file: Option<String>,
    /// POST events to this endpoint (e.g. Marquez's `/api/v1/lineage`).
    #[serde(default)]
    pub url: Option<String>,
    /// Bearer token for `url`.
    #[serde(default)]
    pub api_key: Option<SecretRef>,
    /// Events waiting at most; more are dropped and counted.
    #[serde(default)]
    pub queue: Option<usize>,
    /// Timeout of one POST, in milliseconds (default 5000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl PlatformConfig {
    /// The schema a new session of the principal named `name` starts in:
    /// its own `defaults.schema`, else the mesh's, else `None`.
    pub fn default_schema_for(&self, name: Option<&str>) -> Option<&str> {
        name.and_then(|n| self.principals.iter().find(|p| p.name == n))
            .and_then(|p| p.defaults.schema.as_deref())
            .or(self.defaults.schema.as_deref())
    }
}

/// `files:` — the only places SQL statements (admins only) may read or
/// write files: `CREATE EXTERNAL TABLE` and `INSERT` into such tables under
/// `scratch`, `COPY … TO` under `export`. Unset: the statement is refused.
/// Each is a local folder (relative: to the mesh root) or an object store
/// URL, and must not overlap the mesh directory, a table's data, the spill
/// directory or a file holding secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Where user-created external tables live.
    #[serde(default)]
    pub scratch: Option<String>,
    /// Where `COPY … TO` writes.
    #[serde(default)]
    pub export: Option<String>,
}

/// `discovery:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Which tables a principal sees listed and can name.
    #[serde(default)]
    pub visibility: Visibility,
}

/// What a principal sees of tables it may not read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Visibility {
    /// Every table is named in errors ("permission denied"); listings show
    /// the readable ones.
    #[default]
    All,
    /// Unreadable tables and domains are indistinguishable from missing
    /// ones, in every error and listing.
    ReadableOnly,
}

/// An object store.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
#[allow(missing_docs)]
pub enum StoreConfig {
    /// Amazon S3 or an S3-compatible server.
    S3 {
        #[serde(default)]
        bucket: Option<String>,
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        region: Option<String>,
        /// Allow plain-http endpoints (local S3 servers).
        #[serde(default)]
        allow_http: bool,
        /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
        /// Defaults to true when an endpoint is set.
        #[serde(default)]
        path_style: Option<bool>,
        #[serde(default)]
        access_key_id: Option<SecretRef>,
        #[serde(default)]
        secret_access_key: Option<SecretRef>,
        #[serde(default)]
        session_token: Option<SecretRef>,
    },
    /// Google Cloud Storage.
    Gcs {
        #[serde(default)]
        bucket: Option<String>,
        #[serde(default)]
        service_account_key: Option<SecretRef>,
        #[serde(default)]
        service_account_path: Option<String>,
    },
    /// Azure Blob Storage / ADLS Gen2.
    Azure {
        #[serde(default)]
        account: Option<String>,
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        access_key: Option<SecretRef>,
        #[serde(default)]
        sas_token: Option<SecretRef>,
        #[serde(default)]
        client_id: Option<SecretRef>,
        #[serde(default)]
        client_secret: Option<SecretRef>,
        #[serde(default)]
        tenant_id: Option<SecretRef>,
        #[serde(default)]
        use_emulator: bool,
    },
    /// A PostgreSQL database whose tables or views products publish: the
    /// contract server with the same `host`, `port` and `database` uses
    /// this entry's login.
    Postgresql {
        /// Server host, as the contract server names it.
        host: String,
        /// Server port (5432 when unset on both sides).
        #[serde(default)]
        port: Option<u16>,
        /// Database name.
        database: String,
        /// Login.
        user: String,
        /// Password, `{ env: VAR }`.
        #[serde(default)]
        password: Option<SecretRef>,
        /// libpq's `sslmode`: `disable` (the default), `allow`, `prefer`,
        /// `require`, `verify-ca` or `verify-full`.
        #[serde(default)]
        sslmode: Option<String>,
        /// A PEM file of the certificate authorities to trust (libpq's
        /// `sslrootcert`), relative to the mesh root; the system's roots
        /// otherwise.
        #[serde(default)]
        sslrootcert: Option<String>,
        /// Connections kept at most (default 4).
        #[serde(default)]
        pool_size: Option<usize>,
        /// Server-side limit of each statement, e.g. `30s` or `2m`.
        #[serde(default)]
        statement_timeout: Option<String>,
    },
    /// A remote Flight SQL server whose tables products publish: the
    /// contract server (`format: flightsql`) with the same `endpointUrl`
    /// uses this entry's credentials.
    Flightsql {
        /// `grpc://host:port` or `grpc+tls://host:port`.
        endpoint: String,
        /// Basic authentication (a Flight handshake): the login…
        #[serde(default)]
        username: Option<String>,
        /// …and its password, `{ env: VAR }`.
        #[serde(default)]
        password: Option<SecretRef>,
        /// Bearer authentication: a token, `{ env: VAR }`.
        #[serde(default)]
        token: Option<SecretRef>,
        /// A PEM file of the certificate authority that signed the
        /// server's certificate (for `grpc+tls://`); the system's roots
        /// otherwise. Relative to the mesh root.
        #[serde(default)]
        ca_certificate: Option<String>,
        /// Statements run at once at most (default 4).
        #[serde(default)]
        pool_size: Option<usize>,
        /// Limit of each remote statement, e.g. `30s` or `2m`.
        #[serde(default)]
        timeout: Option<String>,
    },
}

/// An Iceberg catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum CatalogConfig {
    /// A SQL catalog: the `iceberg_tables` layout PyIceberg's `SqlCatalog`
    /// and Java's `JdbcCatalog` write, here in a SQLite file.
    Sql {
        /// `sqlite:` URL or a path to the SQLite file; relative paths are
        /// resolved against the mesh root.
        uri: String,
        /// The `catalog_name` the writer used (PyIceberg: the name given to
        /// `SqlCatalog(...)`); defaults to this entry's key.
        #[serde(default)]
        name: Option<String>,
        /// Warehouse location (only needed by writers).
        #[serde(default)]
        warehouse: Option<String>,
    },
    /// An Iceberg REST catalog.
    Rest {
        /// Base URL, e.g. `http://127.0.0.1:8181`.
        uri: String,
        /// Warehouse identifier sent to the server.
        #[serde(default)]
        warehouse: Option<String>,
        /// Bearer token.
        #[serde(default)]
        token: Option<SecretRef>,
        /// OAuth2 client credential `client_id:client_secret`.
        #[serde(default)]
        credential: Option<SecretRef>,
    },
}

/// A reference to a secret held outside the mesh: `{ env: VAR }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Environment variable holding the value.
    pub env: String,
}

impl SecretRef {
    /// Reads the secret now; the error names the variable, never a value.
    pub fn resolve(&self) -> Result<String, String> {
        self.resolve_with(&BTreeMap::new())
    }

    /// Reads the secret from the process environment, else from `fallback`
    /// (values a program supplies for variables the environment lacks, e.g.
    /// the demo's key).
    pub fn resolve_with(&self, fallback: &BTreeMap<String, String>) -> Result<String, String> {
        std::env::var(&self.env)
            .ok()
            .or_else(|| fallback.get(&self.env).cloned())
            .ok_or_else(|| format!("environment variable `{}` is not set", self.env))
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            env: String,
        }
        let value = serde_yaml_ng::Value::deserialize(d)?;
        if !value.is_mapping() {
            return Err(D::Error::custom(
                "a secret must be an environment variable reference `{ env: VAR }`; literal values are not allowed",
            ));
        }
        let raw: Raw = serde_yaml_ng::from_value(value).map_err(D::Error::custom)?;
        Ok(Self { env: raw.env })
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Role that may run DDL, DML and `SET`.
    #[serde(default = "default_admin_role")]
    pub admin_role: String,
    /// Bearer JWT validation.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// How long a login to the web catalog lasts (default 8h); idle
    /// sessions end sooner, as Flight SQL sessions do.
    #[serde(default)]
    pub web_session_ttl: Option<crate::limits::DurationSpec>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_role: default_admin_role(),
            jwt: None,
            web_session_ttl: None,
        }
    }
}

fn default_admin_role() -> String {
    DEFAULT_ADMIN_ROLE.to_string()
}

/// JWT settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    #[serde(default)]
    pub hs256_secret: Option<SecretRef>,
    /// PEM public key for RS256, from an environment variable.
    #[serde(default)]
    pub rs256_public_key: Option<SecretRef>,
    /// Claim naming the user (default `sub`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// Claim carrying the role list (default `roles`).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Claims copied into principal attributes.
    #[serde(default)]
    pub attribute_claims: Vec<String>,
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

impl PlatformConfig {
    /// The principal named `name`, if configured.
    pub fn principal(&self, name: &str) -> Option<Principal> {
        self.principals
            .iter()
            .find(|p| p.name == name)
            .map(Principal::from_config)
    }

    /// Checks a password; `None` for an unknown user, a user without a
    /// password hash, or a wrong password — callers must not tell which.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<Principal> {
        let p = self.principals.iter().find(|p| p.name == name)?;
        let hash = PasswordHash::new(p.password_hash.as_deref()?).ok()?;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        Some(Principal::from_config(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_env_references() {
        let err = serde_yaml_ng::from_str::<PlatformConfig>("secrets: { k: hunter2 }").unwrap_err();
        assert!(
            err.to_string().contains("literal values are not allowed"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let cfg: PlatformConfig = serde_yaml_ng::from_str("secrets: { k: { env: K } }").unwrap();
        assert_eq!(cfg.secrets["k"], SecretRef { env: "K".into() });
        assert_eq!(cfg.auth.admin_role, "admin");
    }

    #[test]
    fn catalogs_parse_and_reject_unknown_keys() {
        let cfg: PlatformConfig = serde_yaml_ng::from_str(
            "catalogs: { lake: { type: sql, uri: catalog.db, name: default }, r: { type: rest, uri: 'http://127.0.0.1:8181', token: { env: T } } }",
        )
        .unwrap();
        assert!(
            matches!(&cfg.catalogs["lake"], CatalogConfig::Sql { uri, name: Some(n), .. } if uri == "catalog.db" && n == "default")
        );
        assert!(
            matches!(&cfg.catalogs["r"], CatalogConfig::Rest { token: Some(t), .. } if t.env == "T")
        );
        let err =
            serde_yaml_ng::from_str::<PlatformConfig>("catalogs: { lake: { type: hive, uri: x } }")
                .unwrap_err();
        assert!(err.to_string().contains("unknown variant `hive`"), "{err}");
    }

    #[test]
    fn store_types_reject_unknown_keys() {
        let err = serde_yaml_ng::from_str::<PlatformConfig>(
            "stores: { a: { type: s3, region: x, regoin: y } }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `regoin`"), "{err}");
    }
}
