//! The one place errors become gRPC statuses.
//!
//! Messages never contain row values: DataFusion's planning errors name
//! tables, columns and types; execution errors that are not the user's fault
//! are logged with a query id and returned as `Internal` with that id only.

use datafusion::error::DataFusionError;
use meshq_engine::{PolicyError, policy_error};
use tonic::Status;
use tracing::warn;

/// Maps an engine error to a status. `query_id` tags internal errors so the
/// log line can be found.
pub fn to_status(e: &DataFusionError, query_id: &str) -> Status {
    if let Some(p) = policy_error(e) {
        return match p {
            PolicyError::Broken { .. } | PolicyError::Changed { .. } => {
                Status::failed_precondition(p.to_string())
            }
            PolicyError::NotServed { .. } => Status::not_found(p.to_string()),
            PolicyError::Denied { .. }
            | PolicyError::Location { .. }
            | PolicyError::Setting { .. }
            | PolicyError::Unverified { .. }
            | PolicyError::Lockdown { .. } => Status::permission_denied(p.to_string()),
        };
    }
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Status::invalid_argument(e.find_root().to_string()),
        DataFusionError::Plan(msg) if msg.contains("not found") => {
            Status::not_found(e.find_root().to_string())
        }
        DataFusionError::Plan(_) | DataFusionError::Configuration(_) => {
            Status::invalid_argument(e.find_root().to_string())
        }
        DataFusionError::ResourcesExhausted(_) => {
            Status::resource_exhausted(e.find_root().to_string())
        }
        // Division by zero, casts of bad values: the query's own doing.
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
            Status::invalid_argument(e.find_root().to_string())
        }
        other => {
            warn!(%query_id, error = %other, "internal error");
            Status::internal(format!(
                "internal error (query id {query_id}); the server log has the details"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let denied: DataFusionError = PolicyError::Lockdown {
            what: "SET".into(),
            admin_role: "admin".into(),
        }
        .into();
        assert_eq!(to_status(&denied, "q").code(), Code::PermissionDenied);
        let nf = DataFusionError::Plan("table 'mesh.a.b' not found".into());
        assert_eq!(to_status(&nf, "q").code(), Code::NotFound);
        let io = DataFusionError::IoError(std::io::Error::other("disk on fire"));
        let s = to_status(&io, "q-42");
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("q-42") && !s.message().contains("disk"));
    }
}
