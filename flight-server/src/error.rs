//! The server's one error type, and the one place errors become gRPC
//! statuses.
//!
//! Statement errors are classified by the engine ([`meshq_engine::error_kind`],
//! which walks into the causes: policy denials, stores, Parquet, Arrow),
//! never by reading messages. Messages never contain row values: the
//! engine's errors name tables, columns and types; faults that are not the
//! user's are logged with a query id and answered with that id only.

use std::time::Duration;

use datafusion::error::DataFusionError;
use meshq_engine::{ErrorKind, MeshSession, StorageFailureKind, error_kind, error_message};
use tonic::{Code, Status};
use tracing::warn;

use crate::query::QueryId;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong user, password or token (never saying which).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// No credentials where they are needed.
    #[error("{0}")]
    MissingCredentials(&'static str),
    /// Too many failed logins from this client or for this user.
    #[error("too many failed logins; try again in {0} s")]
    Throttled(u64),
    /// A password session whose principal was removed or whose password
    /// changed in a reload.
    #[error("principal `{0}` no longer exists in meshq.yaml or its password changed; log in again")]
    PrincipalGone(String),
    /// More logins waiting for a password check than the server queues.
    #[error("too many logins at once; try again in a moment")]
    LoginsBusy,
    /// The first mesh load has not completed.
    #[error("the mesh is still loading; try again in a moment")]
    Loading,
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A request that is malformed or asks for something meshq does not do.
    #[error("{0}")]
    BadRequest(String),
    /// A query sent as an update.
    #[error(
        "query {0}: this is a query, not an update; send it as CommandStatementQuery (execute/fetch), not CommandStatementUpdate"
    )]
    NotAnUpdate(QueryId),
    /// A statement failed; the engine's error, classified.
    #[error("{message}")]
    Statement {
        /// The statement.
        id: QueryId,
        /// What kind of failure.
        kind: ErrorKind,
        /// What to tell the user.
        message: String,
    },
    /// A statement ran past its time limit.
    #[error(
        "query {id} ran longer than its time limit of {:.1} s (limits.query_timeout) and was cancelled",
        .limit.as_secs_f64()
    )]
    TimedOut {
        /// The statement.
        id: QueryId,
        /// The limit.
        limit: Duration,
    },
    /// `CancelFlightInfo` stopped it.
    #[error("query {0} was cancelled (CancelFlightInfo)")]
    Cancelled(QueryId),
    /// The client dropped its stream.
    #[error("the client went away or cancelled the query")]
    ClientGone,
    /// A result past `max_result_rows` or `max_result_bytes`.
    #[error("query {id}: {what}")]
    ResultLimit {
        /// The statement.
        id: QueryId,
        /// Which limit.
        what: String,
    },
    /// The queue is full, or the wait in it too long.
    #[error("{0}")]
    Busy(String),
    /// Results or parameters that Arrow IPC could not encode.
    #[error("cannot encode {what} as Arrow IPC: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Arrow's error.
        message: String,
    },
    /// A fault of meshq or a library; the log has the details under `id`.
    #[error("internal error (query id {0}); the server log has the details")]
    Internal(QueryId),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error of statement `id` that failed with `e`. When `session` is
    /// given, a storage failure names the table and product of `tables`.
    pub fn statement(
        id: QueryId,
        e: &DataFusionError,
        session: Option<(&MeshSession, &[String])>,
    ) -> Self {
        let kind = error_kind(e);
        if kind == ErrorKind::Unavailable && meshq_engine::error::is_remote_failure(e) {
            warn!(query_id = %id, error = %e, "a cluster worker failed");
            return Self::Statement {
                id,
                kind,
                message: meshq_engine::error_message(e),
            };
        }
        if let Some((session, tables)) = session
            && let Some(f) = session.storage_failure(e, tables)
        {
            warn!(query_id = %id, error = %e, "storage failure");
            let kind = match f.kind {
                StorageFailureKind::Unavailable => ErrorKind::Unavailable,
                StorageFailureKind::Corrupt => ErrorKind::DataLoss,
            };
            return Self::Statement {
                id,
                kind,
                message: f.message,
            };
        }
        if kind == ErrorKind::Internal {
            warn!(query_id = %id, error = %e, "internal error");
            return Self::Internal(id);
        }
        if matches!(kind, ErrorKind::Unavailable | ErrorKind::DataLoss) {
            // Storage failures not traced to a table: the message could
            // carry paths and endpoints, so it goes to the log only.
            warn!(query_id = %id, error = %e, "storage failure");
            return Self::Statement {
                id,
                kind,
                message: format!(
                    "query {id}: data could not be read; the server log has the details"
                ),
            };
        }
        Self::Statement {
            id,
            kind,
            message: error_message(e),
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidCredentials
            | Self::MissingCredentials(_)
            | Self::Throttled(_)
            | Self::PrincipalGone(_) => Code::Unauthenticated,
            Self::LoginsBusy | Self::Loading | Self::ShuttingDown => Code::Unavailable,
            Self::BadRequest(_) | Self::NotAnUpdate(_) => Code::InvalidArgument,
            Self::Statement { kind, .. } => match kind {
                ErrorKind::InvalidInput => Code::InvalidArgument,
                ErrorKind::NotFound => Code::NotFound,
                ErrorKind::PermissionDenied => Code::PermissionDenied,
                ErrorKind::FailedPrecondition => Code::FailedPrecondition,
                ErrorKind::ResourceExhausted => Code::ResourceExhausted,
                ErrorKind::Unavailable => Code::Unavailable,
                ErrorKind::DataLoss => Code::DataLoss,
                ErrorKind::Cancelled => Code::Cancelled,
                ErrorKind::Internal => Code::Internal,
            },
            Self::TimedOut { .. } => Code::DeadlineExceeded,
            Self::Cancelled(_) | Self::ClientGone => Code::Cancelled,
            Self::ResultLimit { .. } | Self::Busy(_) => Code::ResourceExhausted,
            Self::Encode { .. } | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl Error {
    /// A request that could not be decoded.
    pub fn malformed(what: &str) -> Self {
        Self::BadRequest(format!("malformed {what}"))
    }

    /// An Arrow IPC encoding failure.
    pub fn encode(what: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Encode {
            what,
            message: e.to_string(),
        }
    }

    /// A fault of meshq's own (a panic, a broken invariant): logged under
    /// the query id, answered with the id only.
    pub fn internal(id: QueryId, what: &str, e: &dyn std::fmt::Display) -> Self {
        warn!(query_id = %id, error = %e, what, "internal error");
        Self::Internal(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshq_engine::PolicyError;

    #[test]
    fn codes() {
        let id = QueryId::new();
        let denied: DataFusionError = PolicyError::Lockdown {
            what: "SET".into(),
            admin_role: "admin".into(),
        }
        .into();
        let e = Error::statement(id, &denied, None);
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(
            e.to_string(),
            "permission denied: SET requires the `admin` role"
        );
        let nf: DataFusionError = PolicyError::NotFound {
            table: "a.b".into(),
        }
        .into();
        assert_eq!(Error::statement(id, &nf, None).code(), Code::NotFound);
        // A planning error that happens to say "not found" is the query's.
        let plan = DataFusionError::Plan("column 'x' not found".into());
        assert_eq!(
            Error::statement(id, &plan, None).code(),
            Code::InvalidArgument
        );
        let io = DataFusionError::Internal("disk on fire".into());
        let s = Status::from(Error::statement(id, &io, None));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains(&id.to_string()) && !s.message().contains("disk"));
        let t = Status::from(Error::TimedOut {
            id,
            limit: Duration::from_millis(1500),
        });
        assert_eq!(t.code(), Code::DeadlineExceeded);
        assert!(
            t.message()
                .ends_with("time limit of 1.5 s (limits.query_timeout) and was cancelled")
        );
    }
}
