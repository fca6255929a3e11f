//! meshq connectors: a product's output port as a DataFusion
//! [`TableProvider`](datafusion::datasource::TableProvider).
//!
//! Parquet, CSV and JSON ports are DataFusion listing tables; Delta ports are
//! listed by delta-rs and read by DataFusion's Parquet scan (delta-rs's own
//! scan only for deletion vectors and column mapping); Iceberg ports are planned with the `iceberg` crate and
//! read with DataFusion's Parquet scan. Object stores (S3, GCS, Azure) come from
//! `meshq.yaml` through [`StoreRegistry`]. PostgreSQL ports are tables or
//! views read with `tokio-postgres` ([`postgres`]), with only policy-safe
//! filters sent to the database.
//!
//! Invariants:
//! - A table is exposed through its contract: only contract columns, in
//!   contract order, with the table's own Arrow types once they are checked
//!   against the contract. A missing column or wrong type is drift: the
//!   column is listed but refused when read, the others are served.
//! - Errors name the location or the file at fault, never row values.

pub mod contract_table;
pub mod delta;
pub mod error;
pub mod facts;
mod file_groups;
pub mod flightsql;
pub mod iceberg;
pub mod materialize;
pub mod memory_copy;
pub mod mesh_scan;
pub mod open;
pub mod postgres;
pub mod pushdown;
pub mod store;
pub mod types;

pub use contract_table::{ContractColumn, ContractTableProvider, LocalCopy};
pub use error::{Error, Result, describe};
pub use facts::TableFacts;
pub use mesh_scan::{MeshScanExec, ScanToken, one_child};
pub use open::{OpenedTable, PlanOptions, Sources, open_table};
pub use store::StoreRegistry;
