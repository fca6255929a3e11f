//! Policy errors. Each is carried inside `DataFusionError::External`, so
//! `find_root()` finds it and a server maps it to PermissionDenied.

/// Why a principal may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `readRoles` excludes the principal.
    #[error(
        "permission denied: `{principal}` may not read table `{table}`; it requires one of the roles {roles}"
    )]
    Denied {
        /// Who asked.
        principal: String,
        /// `domain.table`.
        table: String,
        /// Required roles, listed.
        roles: String,
    },
    /// A policy of the table cannot be evaluated: the table is unreadable.
    #[error(
        "table `{table}` is unavailable: its {policy} cannot be evaluated ({reason}); ask the product's owners to fix the contract"
    )]
    Broken {
        /// `domain.table`.
        table: String,
        /// Which policy.
        policy: String,
        /// Why.
        reason: String,
    },
    /// A statement that would read or write a mesh table's files directly.
    #[error(
        "permission denied: {what} on `{location}` would bypass the contract of mesh table `{table}`"
    )]
    ProtectedLocation {
        /// The statement.
        what: String,
        /// The location given.
        location: String,
        /// The mesh table whose files it touches.
        table: String,
    },
    /// A statement kind only the admin role may run.
    #[error("permission denied: {what} requires the `{admin_role}` role")]
    Lockdown {
        /// The statement, e.g. `CREATE VIEW`.
        what: String,
        /// The configured admin role.
        admin_role: String,
    },
}

impl From<PolicyError> for datafusion::error::DataFusionError {
    fn from(e: PolicyError) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

/// The policy error behind a DataFusion error, if any.
pub fn policy_error(e: &datafusion::error::DataFusionError) -> Option<&PolicyError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(p) = err.downcast_ref::<PolicyError>() {
            return Some(p);
        }
        if let Some(datafusion::error::DataFusionError::External(inner)) =
            err.downcast_ref::<datafusion::error::DataFusionError>()
            && let Some(p) = inner.downcast_ref::<PolicyError>()
        {
            return Some(p);
        }
        current = err.source();
    }
    None
}
