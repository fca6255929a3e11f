//! The meshq engine: DataFusion sessions over a loaded mesh.
//!
//! [`Engine::load`] reads the mesh directory, opens every product output port
//! through `meshq-connectors` and arranges the tables as catalog `mesh`, one
//! schema per domain, one table per contract schema object, with
//! `information_schema` on. The shell and the Flight SQL server share it.
//!
//! Invariants:
//! - One broken product never stops the others: it is reported in
//!   [`Engine::problems`] and left out.
//! - Domain schemas are read-only from SQL; each session gets its own
//!   scratch schema.
//! - Every plan of a session is rewritten for its principal by the policy
//!   analyzer rule; a table whose policies cannot be built is unreadable,
//!   never readable raw.
//! - The principal comes from the caller, never from SQL text.

pub mod acceleration;
pub mod cache;
pub mod defined;
pub mod domain_schema;
pub mod engine;
pub mod error;
pub mod files;
pub mod functions;
pub mod join_order;
pub mod live;
pub mod memory;
pub mod meta;
pub mod options;
pub mod policy;
pub mod quality;
pub mod retry;
pub mod session;
pub mod shared_subplan;
pub mod statement;
pub mod storage_error;

pub use engine::{
    AppliedPolicies, CATALOG, COORDINATOR_SETTINGS, DEFAULT_SETTINGS, Engine, EngineConfig,
    RESERVED_SCHEMAS, SCRATCH_SCHEMA, ServedTable,
};
pub use error::{Error, ErrorKind, Result, error_kind, error_message};
pub use live::{LiveEngine, ReloadOutcome, ReloadStatus};
pub use memory::QueryMemoryPool;
pub use meshq_catalog::Principal;
pub use options::MeshqOptions;
pub use policy::{PolicyError, policy_error};
pub use session::{MeshSession, PhysicalQuery, SessionData, VisibleTable, is_statement};
pub use storage_error::{SourceInfo, StorageFailure, StorageFailureKind};
