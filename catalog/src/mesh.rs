//! The in-memory mesh: every servable table, resolved from product → output
//! port → contract → server, plus the platform config and policy sets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::odcs::LogicalType;
use crate::platform::PlatformConfig;
use crate::policy::{MaskSpec, PolicySet, RowFilterSpec};
use crate::products::{ContractInfo, LineageEdge, ProductInfo};

/// Table formats a port may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Format {
    Parquet,
    Delta,
    Iceberg,
    Csv,
    Json,
    /// A table or view of a PostgreSQL database (server `type:
    /// postgresql`).
    Postgres,
    /// A table of a remote Flight SQL server (server `type: custom,
    /// format: flightsql`).
    FlightSql,
    /// A product defined by a `SELECT` over other products (server `type:
    /// custom, format: meshq-sql`), evaluated as the product's `runAs`
    /// principal.
    Sql,
}

impl Format {
    /// Parses an ODCS server `format`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "parquet" => Self::Parquet,
            "delta" => Self::Delta,
            "iceberg" => Self::Iceberg,
            "csv" => Self::Csv,
            "json" => Self::Json,
            "flightsql" => Self::FlightSql,
            "meshq-sql" => Self::Sql,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Parquet => "parquet",
            Self::Delta => "delta",
            Self::Iceberg => "iceberg",
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Postgres => "postgresql",
            Self::FlightSql => "flightsql",
            Self::Sql => "meshq-sql",
        })
    }
}

/// Where a table's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path (absolute; relative contract paths are resolved against
    /// the contract file's directory).
    Local(PathBuf),
    /// An object store URL (`s3://`, `gs://`, `az://`, `abfss://`, …).
    Url(url::Url),
    /// A table in an Iceberg catalog; its files are wherever the catalog's
    /// metadata says.
    Catalog {
        /// `catalogs` key in `meshq.yaml`.
        catalog: String,
        /// `namespace.table`.
        table: String,
    },
    /// A table or view of a PostgreSQL database.
    Postgres {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// Database.
        database: String,
        /// Schema of the table.
        schema: String,
        /// Table or view name.
        table: String,
    },
    /// A `SELECT` over other products' tables.
    Sql {
        /// The statement.
        query: String,
        /// The file it was read from (`path` of the server), if any.
        file: Option<PathBuf>,
    },
    /// A table of a remote Flight SQL server.
    FlightSql {
        /// `grpc://host:port` or `grpc+tls://host:port`, as the contract
        /// server's `endpointUrl` gives it.
        endpoint: String,
        /// The remote `catalog.schema.table`, `schema.table` or `table`.
        table: String,
    },
}

impl Location {
    /// Whether the table has no version meshq can read: it lives in a
    /// database or a remote server, or is computed by SQL. No result
    /// caching, file statistics or change-driven acceleration apply.
    pub fn has_no_version(&self) -> bool {
        matches!(
            self,
            Self::Postgres { .. } | Self::FlightSql { .. } | Self::Sql { .. }
        )
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Url(u) => write!(f, "{u}"),
            Self::Catalog { catalog, table } => write!(f, "catalog `{catalog}` table `{table}`"),
            Self::Postgres {
                host,
                port,
                database,
                schema,
                table,
            } => write!(
                f,
                "postgresql://{host}:{port}/{database} table {schema}.{table}"
            ),
            Self::FlightSql { endpoint, table } => write!(f, "{endpoint} table {table}"),
            Self::Sql {
                file: Some(file), ..
            } => write!(f, "SQL of {}", file.display()),
            Self::Sql { file: None, .. } => f.write_str("SQL of the contract's server"),
        }
    }
}

/// The data behind a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// File/table format.
    pub format: Format,
    /// Where it is.
    pub location: Location,
    /// Contract server name this came from.
    pub server: String,
    /// JSON delimiter option (`new_line` or `array`), from the server entry.
    pub delimiter: Option<String>,
    /// For `format: iceberg`: how the table is found and which snapshot.
    pub iceberg: Option<IcebergSource>,
}

/// How an Iceberg port names its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcebergSource {
    /// Catalog (a `catalogs` key in `meshq.yaml`); `None` when the location
    /// is the table folder or a metadata file.
    pub catalog: Option<String>,
    /// Namespace levels (the server's `schema`, split on `.`).
    pub namespace: Vec<String>,
    /// Table name in the catalog (the schema object's physical name).
    pub table: String,
    /// Time travel: read this snapshot instead of the current one.
    pub snapshot_id: Option<i64>,
    /// Time travel: read the snapshot current at this time (RFC 3339).
    pub as_of: Option<String>,
}

/// One column as the contract declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// SQL column name.
    pub name: String,
    /// ODCS logical type.
    pub logical_type: Option<LogicalType>,
    /// ODCS physical type, as written (e.g. `DECIMAL(12,2)`).
    pub physical_type: Option<String>,
    /// `required: true` means NOT NULL.
    pub required: bool,
    /// ODCS `unique`.
    pub unique: bool,
    /// ODCS classification (e.g. `pii`).
    pub classification: Option<String>,
    /// ODCS tags.
    pub tags: Vec<String>,
    /// Description, shown in listings.
    pub description: Option<String>,
    /// Position in the primary key, when part of it.
    pub primary_key_position: Option<usize>,
    /// Column mask declared on the column itself.
    pub mask: Option<MaskSpec>,
}

/// Policies declared on a table (schema object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TablePolicy {
    /// `readRoles`: when set, a principal needs one of them.
    pub read_roles: Option<Vec<String>>,
    /// `rowFilters`, ANDed.
    pub row_filters: Vec<RowFilterSpec>,
}

/// A servable table: one schema object of a contract, reached through a
/// product's output port.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    /// SQL schema: the product's domain.
    pub domain: String,
    /// SQL table name: the schema object's name.
    pub name: String,
    /// Product id (ODPS `id`).
    pub product_id: String,
    /// Product descriptor file.
    pub product_file: PathBuf,
    /// Output port name.
    pub port: String,
    /// Contract id (ODCS `id`).
    pub contract_id: String,
    /// Contract file.
    pub contract_file: PathBuf,
    /// Where and how the data is stored.
    pub source: TableSource,
    /// Columns in contract order.
    pub columns: Vec<ColumnDef>,
    /// Table description.
    pub description: Option<String>,
    /// Table-level policies.
    pub policy: TablePolicy,
    /// Quality rules: declared, implied by the schema, and freshness.
    pub quality: Vec<crate::quality::QualityRule>,
    /// Served from a local copy (customProperty `acceleration` of the port
    /// or the contract's server).
    pub acceleration: Option<crate::acceleration::Acceleration>,
    /// The principal a SQL-defined product is evaluated as (the product's
    /// customProperty `runAs`).
    pub run_as: Option<String>,
}

impl TableDef {
    /// `domain.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.domain, self.name)
    }

    /// Primary key columns in key order.
    pub fn primary_key(&self) -> Vec<&str> {
        let mut pk: Vec<_> = self
            .columns
            .iter()
            .filter_map(|c| c.primary_key_position.map(|p| (p, c.name.as_str())))
            .collect();
        pk.sort();
        pk.into_iter().map(|(_, n)| n).collect()
    }
}

/// A loaded policy set with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedPolicySet {
    /// The set.
    pub set: PolicySet,
    /// Its file.
    pub file: PathBuf,
}

/// Everything meshq serves from one mesh directory.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    /// Mesh root directory.
    pub root: PathBuf,
    /// `meshq.yaml` (defaults when absent).
    pub config: PlatformConfig,
    /// Servable tables, sorted by `domain.name`.
    pub tables: Vec<Arc<TableDef>>,
    /// Global policy sets.
    pub policy_sets: Vec<LoadedPolicySet>,
    /// Every product that loaded, served or not, in file order.
    pub products: Vec<Arc<ProductInfo>>,
    /// Every contract that loaded, by id.
    pub contracts: BTreeMap<String, Arc<ContractInfo>>,
}

impl Mesh {
    /// Looks a table up by domain and name.
    pub fn table(&self, domain: &str, name: &str) -> Option<&Arc<TableDef>> {
        self.tables
            .iter()
            .find(|t| t.domain == domain && t.name == name)
    }

    /// The product `id`.
    pub fn product(&self, id: &str) -> Option<&Arc<ProductInfo>> {
        self.products.iter().find(|p| p.id == id)
    }

    /// The edges between products their input ports declare.
    pub fn lineage(&self) -> Vec<LineageEdge> {
        crate::products::lineage(&self.products)
    }

    /// Path of a file for messages: relative to the root when under it.
    pub fn display_path(&self, path: &Path) -> PathBuf {
        crate::problem::display_path(&self.root, path)
    }
}
