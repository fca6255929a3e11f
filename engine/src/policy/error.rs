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
    /// A statement that reads or writes files outside the locations
    /// `meshq.yaml` opens to SQL (`files.scratch`, `files.export`).
    #[error("permission denied: {what} on `{location}`: {reason}")]
    Location {
        /// The statement.
        what: String,
        /// The location given.
        location: String,
        /// Why it is refused and what to do.
        reason: String,
    },
    /// A statement names a table that does not exist (or, with
    /// `discovery.visibility: readable-only`, one the principal may not
    /// read: the two are indistinguishable).
    #[error("table `{table}` not found; SHOW TABLES lists the tables you can see")]
    NotFound {
        /// The name as the statement gave it.
        table: String,
    },
    /// A plan names a mesh table the served version of the mesh does not
    /// serve (a view or prepared statement planned before it was removed).
    #[error(
        "table `{table}` is not served by the mesh (it was removed or renamed); recreate views and prepared statements that use it"
    )]
    NotServed {
        /// `domain.table`.
        table: String,
    },
    /// A plan was made on an earlier version of a table whose columns have
    /// changed since.
    #[error(
        "table `{table}` has changed since this view or prepared statement was planned ({detail}); recreate it"
    )]
    Changed {
        /// `domain.table`.
        table: String,
        /// What differs.
        detail: String,
    },
    /// The plan verifier found a scan of mesh data without the policies
    /// planned for this session; the query does not run.
    #[error(
        "query refused: the plan reads table `{table}` without the policies planned for this session ({reason}); please report this"
    )]
    Unverified {
        /// `domain.table`.
        table: String,
        /// What is wrong with the plan.
        reason: String,
    },
    /// A setting no SQL `SET` may change, admins included.
    #[error("permission denied: `{variable}` cannot be set from SQL: {reason}")]
    Setting {
        /// The setting.
        variable: String,
        /// Where it is configured instead.
        reason: String,
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
