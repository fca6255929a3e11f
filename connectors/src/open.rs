//! Opening a [`TableDef`]'s data as a DataFusion table, checked against its
//! contract.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::{Constraint, Constraints};
use datafusion::datasource::TableProvider;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use meshq_catalog::{ColumnDef, Format, Location, TableDef};
use url::Url;

use crate::contract_table::{ContractColumn, ContractTableProvider};
use crate::error::{Error, Result};
use crate::facts::TableFacts;
use crate::iceberg::IcebergCatalogs;
use crate::store::StoreRegistry;
use crate::types::type_mismatch;

/// A table ready to register, plus anything worth a warning.
#[derive(Debug)]
pub struct OpenedTable {
    /// The contract view of the table.
    pub provider: Arc<ContractTableProvider>,
    /// Non-fatal findings (hidden extra columns, nullability).
    pub warnings: Vec<String>,
    /// Columns that drifted from the contract: served as refusals.
    pub drift: Vec<String>,
    /// Where the table's files are, when only opening the table tells
    /// (an Iceberg table found through its catalog).
    pub data_location: Option<String>,
    /// Row count, version and last change, when opening read them (Delta
    /// and Iceberg); file-based tables' are found on demand
    /// ([`crate::facts::listing_facts`]).
    pub facts: Option<TableFacts>,
}

/// Where tables' data comes from: the object stores and the Iceberg
/// catalogs of `meshq.yaml` (catalogs connect on first use).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Object stores, by bucket or container.
    pub stores: StoreRegistry,
    /// Iceberg catalogs, by name.
    pub iceberg: Arc<IcebergCatalogs>,
    /// PostgreSQL connection pools, by host, port and database.
    pub postgres: Arc<crate::postgres::PostgresPools>,
    /// Remote Flight SQL servers, by endpoint.
    pub flightsql: Arc<crate::flightsql::FlightSqlRemotes>,
}

impl Sources {
    /// The `stores` and `catalogs` sections of `config`.
    pub fn new(config: &meshq_catalog::platform::PlatformConfig) -> Self {
        Self::with_secrets(config, &Default::default(), std::path::Path::new("."))
    }

    /// [`Self::new`], with database passwords and tokens read from the
    /// environment, else from `fallback` (variables a program supplies);
    /// files the entries name are read from under the mesh's `root`.
    pub fn with_secrets(
        config: &meshq_catalog::platform::PlatformConfig,
        fallback: &std::collections::BTreeMap<String, String>,
        root: &std::path::Path,
    ) -> Self {
        Self {
            stores: StoreRegistry::new(config),
            iceberg: Arc::new(IcebergCatalogs::new(config.catalogs.clone())),
            postgres: Arc::new(crate::postgres::PostgresPools::new(config, fallback, root)),
            flightsql: Arc::new(crate::flightsql::FlightSqlRemotes::new(
                config, fallback, root,
            )),
        }
    }
}

/// Opens `def` in `state`: registers its object store, reads the table's
/// schema, checks it against the contract and wraps it in a
/// [`ContractTableProvider`].
pub async fn open_table(
    state: &dyn Session,
    sources: &Sources,
    def: &TableDef,
) -> Result<OpenedTable> {
    let stores = &sources.stores;
    if let Location::Postgres {
        host,
        port,
        database,
        schema,
        table,
    } = &def.source.location
    {
        let location = def.source.location.to_string();
        let pool = sources
            .postgres
            .pool_for(host, *port, database)
            .map_err(|message| Error::Config {
                name: format!("{host}:{port}/{database}"),
                message,
            })?;
        let opened =
            crate::postgres::PostgresTable::open(pool, &def.qualified_name(), schema, table)
                .await
                .map_err(|e| Error::read(format!("cannot open {location}"), location.clone(), e))?;
        return contract_view(def, Arc::new(opened));
    }
    if let Location::FlightSql { endpoint, table } = &def.source.location {
        let location = def.source.location.to_string();
        let remote = sources
            .flightsql
            .remote_for(endpoint)
            .map_err(|message| Error::Config {
                name: endpoint.clone(),
                message,
            })?;
        let opened = crate::flightsql::FlightSqlTable::open(remote, &def.qualified_name(), table)
            .await
            .map_err(|e| Error::read(format!("cannot open {location}"), location.clone(), e))?;
        return contract_view(def, Arc::new(opened));
    }
    if def.source.format == Format::Iceberg {
        let opened = crate::iceberg::open_iceberg(state, stores, &sources.iceberg, def).await?;
        let mut table = contract_view(def, opened.provider)?;
        table.data_location = Some(opened.data_location);
        table.facts = Some(opened.facts);
        return Ok(table);
    }
    let url = location_url(&def.source.location, def.source.format)?;
    if let Some(store) = stores.store_for(&url)? {
        let root = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            &url[url::Position::BeforeHost..url::Position::AfterPort]
        ))
        .map_err(|e| Error::invalid(url.as_str(), format!("location `{url}`: {e}")))?;
        state.runtime_env().register_object_store(&root, store);
    }
    let (inner, facts) = match def.source.format {
        Format::Parquet | Format::Csv | Format::Json => {
            (open_listing(state, def, &url).await?, None)
        }
        Format::Delta => {
            let (provider, facts) = open_delta(state, &url).await?;
            (provider, Some(facts))
        }
        Format::Iceberg | Format::Postgres | Format::FlightSql | Format::Sql => {
            unreachable!("opened above")
        }
    };
    let mut table = contract_view(def, inner)?;
    table.facts = facts;
    if table.facts.is_none()
        && def.source.format == Format::Parquet
        && matches!(def.source.location, Location::Local(_))
        && orders_joins(state)
    {
        // The row count lets the planner order joins (DataFusion's listing
        // table states none). Reading 10,000 footers made a load 0.65 s
        // longer (read after it, they slowed it more), so they are read
        // only when every session orders joins.
        let facts = crate::facts::listing_facts(state.runtime_env(), def).await;
        if let Some(rows) = facts.row_count {
            table.provider.set_row_count(rows);
        }
        table.facts = Some(facts);
    }
    Ok(table)
}

datafusion::common::extensions_options! {
    /// How meshq plans (`SET meshq_plan.reorder_joins = true`).
    pub struct PlanOptions {
        /// Order inner joins by estimated size (row counts, filters and
        /// primary keys) instead of the order the query names the tables.
        /// Off by default on a single node: on TPC-H SF1 it made q7 1.7
        /// times faster but q8 12-15 % slower, and the 22 queries only
        /// 1.3 % faster. On by default for a coordinator with workers,
        /// where a bad order's rows cross the network (BENCHMARKS.md).
        pub reorder_joins: bool, default = false
        /// Compute an aggregation the query names more than once (a
        /// `WITH` clause used twice) once, and hand its rows to every use.
        pub share_subplans: bool, default = true
        /// Share only an aggregation estimated at most this many bytes;
        /// its rows are held in the query's memory until the query ends.
        pub shared_subplan_max_bytes: usize, default = 64 * 1024 * 1024
    }
}

impl datafusion::common::config::ConfigExtension for PlanOptions {
    const PREFIX: &'static str = "meshq_plan";
}

/// Whether the load's sessions order joins by estimate
/// (`meshq_plan.reorder_joins`, set for every session).
fn orders_joins(state: &dyn Session) -> bool {
    state
        .config_options()
        .extensions
        .get::<PlanOptions>()
        .is_some_and(|o| o.reorder_joins)
}

/// The URL of a location; a local path must exist.
fn location_url(location: &Location, format: Format) -> Result<Url> {
    match location {
        Location::Url(u) => Ok(u.clone()),
        Location::Postgres { .. } | Location::FlightSql { .. } | Location::Sql { .. } => {
            Err(Error::unsupported(
                location.to_string(),
                "a database or remote table is opened by its connection, not by URL",
            ))
        }
        Location::Catalog { catalog, table } => Err(Error::unsupported(
            table.as_str(),
            format!(
                "{format} table `{table}` is in catalog `{catalog}`; only Iceberg tables are found through catalogs"
            ),
        )),
        Location::Local(path) => {
            let text = path.to_string_lossy();
            let has_glob = text.contains(['*', '?', '[']);
            let probe = if has_glob {
                // The folder before the first glob must exist.
                let cut = text.find(['*', '?', '[']).unwrap_or(text.len());
                let prefix = &text[..cut];
                std::path::PathBuf::from(&prefix[..prefix.rfind('/').unwrap_or(0).max(1)])
            } else {
                path.clone()
            };
            let location = probe.display().to_string();
            let meta = std::fs::metadata(&probe).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Missing { location },
                _ => Error::Unreadable {
                    location: probe.display().to_string(),
                    source: e,
                },
            })?;
            if format == Format::Delta && !meta.is_dir() {
                return Err(Error::invalid(
                    path.display().to_string(),
                    format!(
                        "location `{}` is not a directory; a Delta table is a folder with a _delta_log",
                        path.display()
                    ),
                ));
            }
            if has_glob {
                return Url::parse(&format!("file://{text}"))
                    .map_err(|e| Error::invalid(text.as_ref(), format!("location `{text}`: {e}")));
            }
            let url = if meta.is_dir() {
                Url::from_directory_path(path)
            } else {
                Url::from_file_path(path)
            };
            url.map_err(|_| {
                Error::invalid(
                    path.display().to_string(),
                    format!("location `{}` is not an absolute path", path.display()),
                )
            })
        }
    }
}

async fn open_listing(
    state: &dyn Session,
    def: &TableDef,
    url: &Url,
) -> Result<Arc<dyn TableProvider>> {
    let (format, ext): (Arc<dyn FileFormat>, &str) = match def.source.format {
        Format::Parquet => (
            Arc::new(ParquetFormat::default().with_options(state.table_options().parquet.clone())),
            ".parquet",
        ),
        Format::Csv => (
            Arc::new(
                CsvFormat::default()
                    .with_options(state.table_options().csv.clone())
                    .with_has_header(true),
            ),
            ".csv",
        ),
        Format::Json => {
            if def
                .source
                .delimiter
                .as_deref()
                .is_some_and(|d| d != "new_line")
            {
                return Err(Error::unsupported(
                    url.as_str(),
                    format!(
                        "JSON delimiter `{}` is not supported; meshq reads newline-delimited JSON (delimiter: new_line)",
                        def.source.delimiter.as_deref().unwrap_or_default()
                    ),
                ));
            }
            (
                Arc::new(JsonFormat::default().with_options(state.table_options().json.clone())),
                ".json",
            )
        }
        Format::Delta | Format::Iceberg | Format::Postgres | Format::FlightSql | Format::Sql => {
            unreachable!("not a listing format")
        }
    };
    let table_url = listing_url(url.as_str())
        .map_err(|e| Error::read(format!("location `{url}`"), url.as_str(), e))?;
    // A single named file is read whatever its extension.
    let ext = if table_url.is_collection() || url.as_str().contains('*') {
        ext
    } else {
        ""
    };
    let options = ListingOptions::new(Arc::clone(&format)).with_file_extension(ext);
    let config = ListingTableConfig::new(table_url.clone()).with_listing_options(options);
    let config = config
        .infer_partitions_from_path(state)
        .await
        .map_err(|e| Error::read(format!("cannot list `{url}`"), url.as_str(), e))?;
    let config = match config.infer_schema(state).await {
        Ok(c) => c,
        Err(e) => {
            let culprit = find_bad_file(state, &table_url, format.as_ref(), ext).await;
            return Err(match culprit {
                Some(bad) => bad,
                None => Error::read(
                    format!("cannot read {} data at `{url}`", def.source.format),
                    url.as_str(),
                    e,
                ),
            });
        }
    };
    let table = ListingTable::try_new(config)
        .map_err(|e| Error::read(format!("cannot open `{url}`"), url.as_str(), e))?;
    Ok(Arc::new(table))
}

/// `url` as a listing location. A glob in the path (`./data/*.parquet`,
/// `s3://bucket/orders/part-*.parquet`) filters the files listed under the
/// folder before it; DataFusion splits globs only from plain paths, so URLs
/// are split here.
fn listing_url(url: &str) -> datafusion::error::Result<ListingTableUrl> {
    let Ok(parsed) = url::Url::parse(url) else {
        return ListingTableUrl::parse(url);
    };
    let path = parsed.path();
    let Some(at) = path.find(['*', '?', '[']) else {
        return ListingTableUrl::parse(url);
    };
    let cut = path[..at].rfind('/').map_or(0, |i| i + 1);
    let glob = percent_decode(&path[cut..]);
    let mut base = parsed.clone();
    base.set_path(&path[..cut]);
    let pattern = glob::Pattern::new(&glob)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(base, Some(pattern))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// After schema inference failed over a folder, reads the files one by one
/// to name the one that is broken.
async fn find_bad_file(
    state: &dyn Session,
    url: &ListingTableUrl,
    format: &dyn FileFormat,
    ext: &str,
) -> Option<Error> {
    let store = state.runtime_env().object_store(url).ok()?;
    let files: Vec<_> = url
        .list_all_files(state, store.as_ref(), ext)
        .await
        .ok()?
        .try_collect()
        .await
        .ok()?;
    for meta in files.into_iter().filter(|m| m.size > 0) {
        if let Err(e) = format
            .infer_schema(state, &store, std::slice::from_ref(&meta))
            .await
        {
            return Some(Error::read(
                format!(
                    "file `{}` is not valid {}",
                    meta.location,
                    format.get_ext().trim_start_matches('.')
                ),
                meta.location.to_string(),
                e,
            ));
        }
    }
    None
}

/// delta-rs finds the log store for a URL scheme in a registry its cloud
/// features fill. meshq hands delta-rs its own object stores (built from
/// `meshq.yaml`) and only reads, so the default log store serves every
/// scheme; registering it here avoids compiling the AWS, GCP and Azure SDKs.
pub(crate) fn register_delta_log_stores() {
    use deltalake::DeltaResult;
    use deltalake::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    };

    struct ReadLogStoreFactory;

    impl LogStoreFactory for ReadLogStoreFactory {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let registry = deltalake::logstore::logstore_factories();
        for scheme in ["s3", "s3a", "gs", "az", "abfs", "abfss", "azure", "adl"] {
            let key = Url::parse(&format!("{scheme}://")).expect("valid scheme URL");
            if !registry.contains_key(&key) {
                registry.insert(key, Arc::new(ReadLogStoreFactory));
            }
        }
    });
}

async fn open_delta(
    state: &dyn Session,
    url: &Url,
) -> Result<(Arc<dyn TableProvider>, TableFacts)> {
    register_delta_log_stores();
    let mut url = url.clone();
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    let at = format!("Delta table at `{url}`");
    let mut builder = deltalake::DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| Error::read(&at, url.as_str(), e))?;
    if url.scheme() != "file" {
        let store_url = ObjectStoreUrl::parse(&url[..url::Position::BeforePath])
            .map_err(|e| Error::read(&at, url.as_str(), e))?;
        let store = state
            .runtime_env()
            .object_store(&store_url)
            .map_err(|e| Error::read(&at, url.as_str(), e))?;
        builder = builder.with_storage_backend(store, url.clone());
    }
    let table = builder.load().await.map_err(|e| {
        Error::read(
            format!("cannot load Delta table at `{url}`"),
            url.as_str(),
            e,
        )
    })?;
    table
        .update_datafusion_session(state)
        .map_err(|e| Error::read(&at, url.as_str(), e))?;
    let facts = crate::facts::delta_facts(&table);
    // DataFusion's own Parquet scan over the snapshot's files, unless the
    // table needs what only delta-rs's scan does (deletion vectors, column
    // mapping).
    let view_types = state
        .config_options()
        .execution
        .parquet
        .schema_force_view_types;
    let native = crate::delta::native_provider(&table, &url, view_types)
        .map_err(|e| Error::read(&at, url.as_str(), std::io::Error::other(e)))?;
    let provider: Arc<dyn TableProvider> = match native {
        Some(p) => Arc::new(p),
        None => table
            .table_provider()
            .await
            .map_err(|e| Error::read(&at, url.as_str(), e))?,
    };
    Ok((provider, facts))
}

/// Checks the actual schema against the contract and builds the view.
/// Columns that drifted from the contract are kept in the schema but refused
/// when read (see [`ContractColumn::Drifted`]); each is reported in
/// [`OpenedTable::drift`].
pub fn contract_view(def: &TableDef, inner: Arc<dyn TableProvider>) -> Result<OpenedTable> {
    let schema: SchemaRef = inner.schema();
    let mut warnings = Vec::new();
    let mut drift = Vec::new();
    let mut columns = Vec::with_capacity(def.columns.len());
    let table = def.qualified_name();
    let refuse = |col: &str, what: &str| {
        format!(
            "column `{col}` of table `{table}` (product `{}`) has drifted from its contract: {what}. It cannot be read until the table or the contract is fixed; the table's other columns can be queried",
            def.product_id
        )
    };
    for col in &def.columns {
        let Ok(idx) = schema.index_of(&col.name) else {
            let what = "the table has no such column";
            drift.push(format!("column `{}` is missing from the table", col.name));
            columns.push(ContractColumn::Drifted {
                field: Arc::new(Field::new(&col.name, contract_arrow_type(col), true)),
                reason: refuse(&col.name, what),
            });
            continue;
        };
        let field = schema.field(idx);
        let mismatch = if def.source.format == Format::Postgres {
            crate::types::postgres_type_mismatch(col, field.data_type())
        } else {
            type_mismatch(col, field.data_type())
        };
        if let Some(expected) = mismatch {
            let what = format!(
                "the table has type {} but the contract says {expected}",
                field.data_type()
            );
            drift.push(format!("column `{}`: {what}", col.name));
            columns.push(ContractColumn::Drifted {
                field: Arc::new(field.clone()),
                reason: refuse(&col.name, &what),
            });
            continue;
        }
        if col.required && field.is_nullable() {
            warnings.push(format!(
                "column `{}` is required by the contract but nullable in the table",
                col.name
            ));
        }
        columns.push(ContractColumn::Inner(idx));
    }
    let hidden: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| !def.columns.iter().any(|c| &c.name == f.name()))
        .map(|f| format!("`{}`", f.name()))
        .collect();
    if !hidden.is_empty() {
        warnings.push(format!(
            "table has columns the contract does not declare; they are not served: {}",
            hidden.join(", ")
        ));
    }
    let pk: Vec<usize> = def
        .primary_key()
        .iter()
        .filter_map(|name| def.columns.iter().position(|c| c.name == *name))
        .collect();
    let mut view = ContractTableProvider::with_columns(table.clone(), inner, columns);
    if let Location::Local(path) = &def.source.location
        && matches!(
            def.source.format,
            Format::Parquet | Format::Csv | Format::Json
        )
        && !path.to_string_lossy().contains(['*', '?', '['])
    {
        view = view.with_required_path(path.clone());
    }
    if !pk.is_empty() {
        view = view.with_constraints(Constraints::new_unverified(vec![Constraint::PrimaryKey(
            pk,
        )]));
    }
    Ok(OpenedTable {
        provider: Arc::new(view),
        warnings,
        drift,
        data_location: None,
        facts: None,
    })
}

/// The Arrow type a contract column declares, for a column the table lacks.
fn contract_arrow_type(col: &ColumnDef) -> DataType {
    use meshq_catalog::odcs::LogicalType;
    match col.logical_type {
        Some(LogicalType::String) => DataType::Utf8,
        Some(LogicalType::Integer) => DataType::Int64,
        Some(LogicalType::Number) => DataType::Float64,
        Some(LogicalType::Boolean) => DataType::Boolean,
        Some(LogicalType::Date) => DataType::Date32,
        Some(LogicalType::Timestamp) => DataType::Timestamp(TimeUnit::Microsecond, None),
        Some(LogicalType::Time) => DataType::Time64(TimeUnit::Microsecond),
        Some(LogicalType::Object) | Some(LogicalType::Array) | None => DataType::Null,
    }
}
