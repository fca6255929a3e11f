//! The meshq mesh model.
//!
//! Parses and validates a *mesh directory*: Bitol ODPS v1.0.0 product
//! descriptors (`*.odps.yaml`), ODCS v3.1.0 data contracts (`*.odcs.yaml`,
//! 3.0.x accepted), global policy sets (`*.policy.yaml`) and the platform
//! config (`meshq.yaml`), and resolves every product output port to the
//! tables meshq serves.
//!
//! Invariants:
//! - Unknown keys are errors, as in the official JSON Schemas.
//! - Loading never fails because of one file: each problem is collected with
//!   its file (and line when known) and only what depends on it is skipped.
//! - A table whose policies cannot be parsed is not served (fail closed).
//! - Secrets are `{ env: VAR }` references, never literals.

pub mod acceleration;
pub mod common;
pub mod error;
pub mod limits;
pub mod load;
pub mod mesh;
pub mod odcs;
pub mod odps;
pub mod platform;
pub mod policy;
pub mod principal;
pub mod problem;
pub mod products;
pub mod quality;
pub mod yaml;

pub use error::{Error, Result};
pub use load::{LoadOutcome, load_mesh};
pub use mesh::{
    ColumnDef, Format, IcebergSource, Location, Mesh, TableDef, TablePolicy, TableSource,
};
pub use principal::Principal;
pub use problem::{Problem, Severity};
pub use products::{ContractInfo, LineageEdge, ProductInfo};
