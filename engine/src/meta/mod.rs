//! Schema `meta` of catalog `mesh`: what the mesh knows about its products,
//! computed per query from the served mesh version for the caller.
//!
//! | table | one row per |
//! |---|---|
//! | `products` | product: owner, status, tags, inputs, tables, whether the caller may read it and whom to ask |
//! | `tables` | served table: contract, format, rows, version, last change, freshness against the SLA |
//! | `columns` | column: types, description, classification, and whether a mask applies to the caller |
//! | `my_access` | table: whether the caller may read it and why, the row filters and masks that apply |
//! | `whoami` | (one row) the caller's name, roles and attributes |
//! | `lineage` | edge between products declared by input ports |
//! | `quality` | rule of a served table: its latest result from the server's periodic checks |
//!
//! Every authenticated principal may query `meta`; with `discovery:
//! { visibility: readable-only }` it shows only what the caller may read.
//! Nothing here is a data value: no statistics of values, no sample rows.

mod access;
mod build;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use meshq_catalog::Principal;
use meshq_catalog::platform::Visibility;

use crate::engine::Engine;

pub use access::{Access, access_of};

/// A table's freshness against its contract's SLA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// When the data last changed (ms since the epoch), when known.
    pub last_modified_ms: Option<i64>,
    /// The contract's `latency` (else `frequency`), in seconds.
    pub sla_secs: Option<i64>,
    /// `fresh`, `late` or `unknown`.
    pub status: &'static str,
}

/// `table`'s freshness now: its last change against its contract's SLA.
pub async fn freshness(engine: &Engine, table: &crate::engine::ServedTable) -> Freshness {
    let facts = engine.facts(table).await;
    let sla_secs = engine
        .mesh()
        .contracts
        .get(&table.def.contract_id)
        .and_then(|c| c.freshness_sla_secs);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let status = match (facts.last_modified_ms, sla_secs) {
        (Some(at), Some(sla)) if now_ms - at <= sla * 1000 => "fresh",
        (Some(_), Some(_)) => "late",
        _ => "unknown",
    };
    Freshness {
        last_modified_ms: facts.last_modified_ms,
        sla_secs,
        status,
    }
}

/// The name of the schema.
pub const META_SCHEMA: &str = "meta";

/// The tables of `meta`, in listing order.
pub const META_TABLES: [&str; 7] = [
    "products",
    "tables",
    "columns",
    "my_access",
    "whoami",
    "lineage",
    "quality",
];

/// `meta` for one caller on one mesh version.
#[derive(Debug, Clone)]
pub struct MetaSchemaProvider {
    engine: Engine,
    principal: Arc<Principal>,
}

impl MetaSchemaProvider {
    /// `meta` as `principal` sees it on `engine`'s mesh version.
    pub fn new(engine: Engine, principal: Arc<Principal>) -> Self {
        Self { engine, principal }
    }

    fn view(&self, schema_only: bool) -> build::View<'_> {
        build::View {
            engine: &self.engine,
            principal: &self.principal,
            readable_only: self.engine.mesh().config.discovery.visibility
                == Visibility::ReadableOnly,
            schema_only,
        }
    }

    /// The rows of `name` (none with `schema_only`), computed now.
    async fn rows(&self, name: &str, schema_only: bool) -> Result<Option<RecordBatch>> {
        let view = self.view(schema_only);
        Ok(Some(match name {
            "products" => view.products()?,
            "tables" => view.tables().await?,
            "columns" => view.columns()?,
            "my_access" => view.my_access()?,
            "whoami" => view.whoami()?,
            "lineage" => view.lineage()?,
            "quality" => view.quality()?,
            _ => return Ok(None),
        }))
    }

    /// The rows of `name`, computed now.
    pub async fn batch(&self, name: &str) -> Result<Option<RecordBatch>> {
        self.rows(name, false).await
    }
}

#[async_trait]
impl SchemaProvider for MetaSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        META_TABLES.iter().map(|t| t.to_string()).collect()
    }

    /// The table, with its schema only: listing `meta` (GetTables,
    /// `information_schema`) computes no rows; a scan does.
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(empty) = self.rows(name, true).await? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(MetaTable {
            meta: self.clone(),
            name: name.to_string(),
            schema: empty.schema(),
        })))
    }

    fn register_table(
        &self,
        _name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only())
    }

    fn deregister_table(&self, _name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(read_only())
    }

    fn table_exist(&self, name: &str) -> bool {
        META_TABLES.contains(&name)
    }
}

/// One `meta` table: its rows are computed when it is scanned.
#[derive(Debug)]
struct MetaTable {
    meta: MetaSchemaProvider,
    name: String,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for MetaTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch =
            self.meta.batch(&self.name).await?.ok_or_else(|| {
                DataFusionError::Internal(format!("no meta table `{}`", self.name))
            })?;
        MemTable::try_new(Arc::clone(&self.schema), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _op: datafusion::logical_expr::dml::InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(read_only())
    }

    async fn delete_from(
        &self,
        _state: &dyn Session,
        _filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(read_only())
    }

    async fn update(
        &self,
        _state: &dyn Session,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(read_only())
    }
}

fn read_only() -> DataFusionError {
    DataFusionError::Plan(
        "schema `meta` is computed from the mesh and is read-only; change the products and contracts instead"
            .into(),
    )
}
