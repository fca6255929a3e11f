//! Errors of the engine crate.

/// Engine errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh could not be loaded at all.
    #[error(transparent)]
    Catalog(#[from] meshq_catalog::Error),
    /// DataFusion failed while assembling the session.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A reload found errors in a file whose scope is the whole mesh
    /// (`meshq.yaml` or a global policy set); the previous mesh stays.
    #[error("reload rejected, the previous mesh is still served: {}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    ReloadRejected {
        /// The errors in mesh-wide files.
        problems: Vec<meshq_catalog::Problem>,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure a statement's error is, for any transport: the
/// Flight SQL server maps each to one gRPC code, the shell prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The statement itself is wrong: syntax, unknown column, types, a
    /// value it cannot compute (division by zero, a bad cast).
    InvalidInput,
    /// A table it names does not exist (or, with `readable-only`
    /// discovery, is not visible), or is no longer served.
    NotFound,
    /// Policies, the lockdown or file confinement refuse it.
    PermissionDenied,
    /// A table whose policies cannot be evaluated, or that changed since
    /// the statement was planned.
    FailedPrecondition,
    /// A memory, size or depth limit.
    ResourceExhausted,
    /// A table's storage cannot be read (store down, file or bucket
    /// missing, credentials refused): retrying later may work.
    Unavailable,
    /// A data file was read but is not valid.
    DataLoss,
    /// The statement was cancelled.
    Cancelled,
    /// A fault of meshq or a library.
    Internal,
}

/// The kind of `e`, walking into wrapped errors: DataFusion's own, policy
/// errors, object stores, Parquet, Arrow, IO. Every DataFusion variant is
/// matched by name, so a new one is a compile error here, not a guess.
pub fn error_kind(e: &datafusion::error::DataFusionError) -> ErrorKind {
    use datafusion::error::DataFusionError as E;
    match e {
        E::ArrowError(a, _) => arrow_kind(a),
        E::ParquetError(p) => parquet_kind(p),
        E::ObjectStore(o) => store_kind(o),
        E::IoError(_) => ErrorKind::Unavailable,
        E::SQL(..)
        | E::NotImplemented(_)
        | E::Plan(_)
        | E::Configuration(_)
        | E::SchemaError(..)
        | E::Execution(_) => ErrorKind::InvalidInput,
        E::ResourcesExhausted(_) => ErrorKind::ResourceExhausted,
        E::ExecutionJoin(j) if j.is_cancelled() => ErrorKind::Cancelled,
        E::ExecutionJoin(_) | E::Internal(_) | E::Substrait(_) | E::Ffi(_) => ErrorKind::Internal,
        E::External(inner) => cause_kind(inner.as_ref()),
        E::Context(label, _) if label == WORKER_CONFIGURATION => ErrorKind::FailedPrecondition,
        E::Context(_, inner) | E::Diagnostic(_, inner) => error_kind(inner),
        E::Shared(inner) => error_kind(inner),
        E::Collection(all) => all.first().map(error_kind).unwrap_or(ErrorKind::Internal),
    }
}

/// The context of an error a cluster worker finds in its own configuration
/// (a secret missing or different from the coordinator's): the statement
/// fails as [`ErrorKind::FailedPrecondition`], an operator's to fix.
pub const WORKER_CONFIGURATION: &str = "the configuration of a cluster worker";

/// An error in a cluster worker's own configuration, as `message` says.
pub fn worker_configuration(message: String) -> datafusion::error::DataFusionError {
    datafusion::error::DataFusionError::Context(
        WORKER_CONFIGURATION.to_string(),
        Box::new(datafusion::error::DataFusionError::Configuration(message)),
    )
}

/// The message of a worker configuration error inside `e`.
fn worker_configuration_message(e: &datafusion::error::DataFusionError) -> Option<String> {
    use datafusion::error::DataFusionError as E;
    match e {
        E::Context(label, inner) if label == WORKER_CONFIGURATION => Some(match inner.as_ref() {
            E::Configuration(m) => m.clone(),
            other => other.to_string(),
        }),
        E::Context(_, inner) | E::Diagnostic(_, inner) => worker_configuration_message(inner),
        E::Shared(inner) => worker_configuration_message(inner),
        E::External(inner) => inner
            .downcast_ref::<E>()
            .and_then(worker_configuration_message),
        E::Collection(all) => all.first().and_then(worker_configuration_message),
        _ => None,
    }
}

/// What to tell the user about `e`: a policy's refusal as it is,
/// otherwise the innermost cause without wrappers or backtraces. Only for
/// kinds other than [`ErrorKind::Internal`], whose text stays in the log.
pub fn error_message(e: &datafusion::error::DataFusionError) -> String {
    if let Some(p) = crate::policy::policy_error(e) {
        return p.to_string();
    }
    if let Some(m) = worker_configuration_message(e) {
        return format!("a worker of the cluster cannot run the query: {m}");
    }
    let remote = remote_status(e)
        .map(ToString::to_string)
        .or_else(|| relayed_status(e));
    if let Some(s) = remote {
        return format!(
            "a worker of the cluster failed during the query ({s}); retry it: the coordinator stops sending work to a worker that does not answer its health checks"
        );
    }
    meshq_connectors::describe(e)
}

/// Whether `e` is the failure of a remote call (a cluster worker), not of
/// the storage a table reads.
pub fn is_remote_failure(e: &datafusion::error::DataFusionError) -> bool {
    remote_status(e).is_some() || relayed_status(e).is_some()
}

/// The status of a failed remote call inside `e`, if that is its cause.
fn remote_status(e: &datafusion::error::DataFusionError) -> Option<&tonic::Status> {
    use datafusion::error::DataFusionError as E;
    match e {
        E::External(inner) => inner
            .downcast_ref::<tonic::Status>()
            .or_else(|| inner.downcast_ref::<E>().and_then(remote_status)),
        E::Context(_, inner) | E::Diagnostic(_, inner) => remote_status(inner),
        E::Shared(inner) => remote_status(inner),
        E::Collection(all) => all.first().and_then(remote_status),
        _ => None,
    }
}

/// The kind of a failed remote call: transport failures and a peer that
/// went away are `Unavailable`; anything else it reports is internal.
fn status_kind(s: &tonic::Status) -> ErrorKind {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Aborted => {
            ErrorKind::Unavailable
        }
        // A status made on this side from a broken connection (an h2 or
        // I/O error as its source: the worker went away mid-stream), not
        // one the worker sent.
        Code::Internal if std::error::Error::source(s).is_some() => ErrorKind::Unavailable,
        Code::Cancelled => ErrorKind::Cancelled,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        _ => ErrorKind::Internal,
    }
}

fn policy_kind(p: &crate::policy::PolicyError) -> ErrorKind {
    use crate::policy::PolicyError as P;
    match p {
        P::Denied { .. }
        | P::Location { .. }
        | P::Setting { .. }
        | P::Unverified { .. }
        | P::Lockdown { .. } => ErrorKind::PermissionDenied,
        P::NotServed { .. } | P::NotFound { .. } => ErrorKind::NotFound,
        P::Broken { .. } | P::Changed { .. } => ErrorKind::FailedPrecondition,
    }
}

fn store_kind(e: &object_store::Error) -> ErrorKind {
    use object_store::Error as S;
    match e {
        S::Generic { source, .. } => match cause_kind(source.as_ref()) {
            // A store's own failures are failures to reach the data.
            ErrorKind::Internal | ErrorKind::InvalidInput => ErrorKind::Unavailable,
            other => other,
        },
        S::InvalidPath { .. } | S::NotSupported { .. } | S::NotImplemented { .. } => {
            ErrorKind::InvalidInput
        }
        // Missing files and refused credentials: the data cannot be
        // reached now; the operator or the product's owners can fix it.
        _ => ErrorKind::Unavailable,
    }
}

fn parquet_kind(p: &parquet::errors::ParquetError) -> ErrorKind {
    match p {
        // The reader wraps the store's errors: the file could not be read.
        parquet::errors::ParquetError::External(inner) => match cause_kind(inner.as_ref()) {
            ErrorKind::Internal => ErrorKind::DataLoss,
            other => other,
        },
        _ => ErrorKind::DataLoss,
    }
}

fn arrow_kind(a: &arrow::error::ArrowError) -> ErrorKind {
    use arrow::error::ArrowError as A;
    match a {
        A::ExternalError(inner) => cause_kind(inner.as_ref()),
        A::IoError(..) => ErrorKind::Unavailable,
        A::ParquetError(_) | A::IpcError(_) => ErrorKind::DataLoss,
        A::MemoryError(_) => ErrorKind::ResourceExhausted,
        _ => ErrorKind::InvalidInput,
    }
}

/// The kind of a wrapped error; one meshq does not know is internal.
fn cause_kind(e: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorKind {
    if let Some(p) = e.downcast_ref::<crate::policy::PolicyError>() {
        policy_kind(p)
    } else if let Some(d) = e.downcast_ref::<datafusion::error::DataFusionError>() {
        error_kind(d)
    } else if let Some(s) = e.downcast_ref::<object_store::Error>() {
        store_kind(s)
    } else if let Some(p) = e.downcast_ref::<parquet::errors::ParquetError>() {
        parquet_kind(p)
    } else if let Some(a) = e.downcast_ref::<arrow::error::ArrowError>() {
        arrow_kind(a)
    } else if e.downcast_ref::<std::io::Error>().is_some() {
        ErrorKind::Unavailable
    } else if e.downcast_ref::<crate::files::Confined>().is_some() {
        ErrorKind::PermissionDenied
    } else if let Some(s) = e.downcast_ref::<tonic::Status>() {
        status_kind(s)
    } else if let Some(p) = e.downcast_ref::<meshq_connectors::error::SourceError>() {
        use meshq_connectors::error::SourceErrorKind as K;
        match p.kind {
            K::Unavailable => ErrorKind::Unavailable,
            K::PermissionDenied => ErrorKind::PermissionDenied,
            K::NotFound => ErrorKind::NotFound,
            K::Cancelled => ErrorKind::Cancelled,
            K::Source => ErrorKind::InvalidInput,
        }
    } else if let Some(code) = relayed_code(e) {
        status_kind(&tonic::Status::new(code, ""))
    } else {
        ErrorKind::Internal
    }
}

/// The code of a status a worker relayed from a call of its own (reading
/// a stage from another worker): datafusion-distributed sends such errors
/// between nodes as text, so it arrives as an error of a type of its own
/// whose text is the status's, `code: '<description>', message: …`.
fn relayed_code(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<tonic::Code> {
    use tonic::Code;
    let text = e.to_string();
    let rest = text.strip_prefix("code: '")?;
    let description = &rest[..rest.find('\'')?];
    [
        Code::Unavailable,
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Aborted,
        Code::Cancelled,
        Code::ResourceExhausted,
    ]
    .into_iter()
    .find(|c| c.description() == description)
}

/// The text of a status relayed by a worker inside `e` (see
/// [`relayed_code`]), when that is its cause.
fn relayed_status(e: &datafusion::error::DataFusionError) -> Option<String> {
    use datafusion::error::DataFusionError as E;
    match e {
        E::External(inner) => match inner.downcast_ref::<E>() {
            Some(d) => relayed_status(d),
            None => relayed_code(inner.as_ref()).map(|_| inner.to_string()),
        },
        E::Context(_, inner) | E::Diagnostic(_, inner) => relayed_status(inner),
        E::Shared(inner) => relayed_status(inner),
        E::Collection(all) => all.first().and_then(relayed_status),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;

    /// An error a worker relayed as text (its type lost on the wire).
    #[derive(Debug)]
    struct Relayed(String);

    impl std::fmt::Display for Relayed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Relayed {}

    #[test]
    fn a_status_relayed_by_a_worker_is_a_worker_failure() {
        let status = tonic::Status::unavailable("tcp connect error");
        let relayed = DataFusionError::External(Box::new(Relayed(status.to_string())));
        assert_eq!(error_kind(&relayed), ErrorKind::Unavailable);
        assert!(is_remote_failure(&relayed));
        assert!(
            error_message(&relayed).starts_with("a worker of the cluster failed during the query (code: 'The service is currently unavailable'"),
            "{}",
            error_message(&relayed)
        );
        // Anything else of an unknown type stays internal.
        let other = DataFusionError::External(Box::new(Relayed(
            "code: 'Some requested entity was not found'".into(),
        )));
        assert_eq!(error_kind(&other), ErrorKind::Internal);
        assert!(!is_remote_failure(&other));
        let plain = DataFusionError::External(Box::new(Relayed("disk on fire".into())));
        assert_eq!(error_kind(&plain), ErrorKind::Internal);
    }

    #[test]
    fn kinds_follow_the_cause_not_the_message() {
        let denied: DataFusionError = crate::policy::PolicyError::Lockdown {
            what: "SET".into(),
            admin_role: "admin".into(),
        }
        .into();
        assert_eq!(error_kind(&denied), ErrorKind::PermissionDenied);
        let gone: DataFusionError = crate::policy::PolicyError::NotServed {
            table: "a.b".into(),
        }
        .into();
        assert_eq!(
            error_kind(&DataFusionError::Context("planning".into(), Box::new(gone))),
            ErrorKind::NotFound
        );
        // "not found" in a message means nothing.
        let plan = DataFusionError::Plan("column x not found".into());
        assert_eq!(error_kind(&plan), ErrorKind::InvalidInput);
        let io = DataFusionError::IoError(std::io::Error::other("connection refused"));
        assert_eq!(error_kind(&io), ErrorKind::Unavailable);
        let missing = DataFusionError::ObjectStore(Box::new(object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        }));
        assert_eq!(error_kind(&missing), ErrorKind::Unavailable);
        let corrupt = DataFusionError::ParquetError(Box::new(
            parquet::errors::ParquetError::General("bad footer".into()),
        ));
        assert_eq!(error_kind(&corrupt), ErrorKind::DataLoss);
        let unreadable = DataFusionError::ParquetError(Box::new(
            parquet::errors::ParquetError::External(Box::new(object_store::Error::NotFound {
                path: "x".into(),
                source: "gone".into(),
            })),
        ));
        assert_eq!(error_kind(&unreadable), ErrorKind::Unavailable);
        let limit = DataFusionError::ResourcesExhausted("pool".into());
        assert_eq!(error_kind(&limit), ErrorKind::ResourceExhausted);
        let bug = DataFusionError::Internal("oops".into());
        assert_eq!(error_kind(&bug), ErrorKind::Internal);
        let div =
            DataFusionError::ArrowError(Box::new(arrow::error::ArrowError::DivideByZero), None);
        assert_eq!(error_kind(&div), ErrorKind::InvalidInput);
    }
}
