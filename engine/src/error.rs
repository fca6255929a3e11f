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
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
