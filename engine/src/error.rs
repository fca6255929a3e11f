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
