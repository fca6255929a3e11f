//! Errors of the catalog crate.

use std::path::PathBuf;

/// What can stop a mesh from loading at all. Problems inside the mesh are
/// [`crate::Problem`]s, not errors: they never stop the rest from loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh root cannot be read.
    #[error("cannot open mesh directory {}: {source}", path.display())]
    MeshRoot {
        /// The root given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
