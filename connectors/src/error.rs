//! Errors of opening a table: typed by what failed, with the location (or
//! store, or catalog) they concern, and the library error that caused them
//! kept as the source, so callers can tell a store that is down from a
//! corrupt file without reading the message.

use std::error::Error as StdError;

/// A library error kept as a cause.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// Why a table could not be opened. The message names the location, file,
/// store or catalog at fault; the caller adds the table and product.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A local location that does not exist.
    #[error("location `{location}` does not exist")]
    Missing {
        /// The path.
        location: String,
    },
    /// A local location that cannot be read.
    #[error("location `{location}` cannot be read: {source}")]
    Unreadable {
        /// The path.
        location: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The table's location or layout is not usable as given.
    #[error("{message}")]
    Invalid {
        /// The location, URL or file concerned.
        location: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Reading the table's files, log or metadata failed.
    #[error("{context}: {}", describe(source.as_ref()))]
    Read {
        /// What was being done, naming the location (`cannot load Delta
        /// table at …`).
        context: String,
        /// The location concerned.
        location: String,
        /// The library's error.
        #[source]
        source: Cause,
    },
    /// An object store or Iceberg catalog of `meshq.yaml` cannot be used.
    #[error("{message}")]
    Config {
        /// The store, bucket or catalog.
        name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The table uses something meshq does not read.
    #[error("{message}")]
    Unsupported {
        /// The location concerned.
        location: String,
        /// What, and what meshq reads instead.
        message: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A read failure with its cause.
    pub fn read(
        context: impl Into<String>,
        location: impl Into<String>,
        source: impl Into<Cause>,
    ) -> Self {
        Self::Read {
            context: context.into(),
            location: location.into(),
            source: source.into(),
        }
    }

    /// A location that is not usable as given.
    pub fn invalid(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            location: location.into(),
            message: message.into(),
        }
    }

    /// A store or catalog problem.
    pub fn config(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            name: name.into(),
            message: message.into(),
        }
    }

    /// Something the table uses that meshq does not read.
    pub fn unsupported(location: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// The message of an error for people: a DataFusion error by its root
/// cause, and never a backtrace — the Delta kernel attaches one to its
/// errors when `RUST_BACKTRACE` is set, inside their message; it is
/// replaced by the message of the error it wraps.
pub fn describe(e: &(dyn StdError + 'static)) -> String {
    if let Some(df) = e.downcast_ref::<datafusion::error::DataFusionError>() {
        let root = df.find_root();
        if !std::ptr::eq(root, df) {
            return describe(root);
        }
        if let datafusion::error::DataFusionError::External(inner) = root {
            return describe(inner.as_ref());
        }
    }
    let mut text = e.to_string();
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(delta_kernel::Error::Backtraced { source, .. }) =
            err.downcast_ref::<delta_kernel::Error>()
        {
            text = text.replace(&err.to_string(), &source.to_string());
        }
        current = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_never_reach_a_message() {
        let inner = delta_kernel::Error::generic("truncated record");
        let backtraced = delta_kernel::Error::Backtraced {
            source: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert!(backtraced.to_string().contains('\n'));
        let delta = deltalake::DeltaTableError::KernelError(backtraced);
        let e = Error::read("cannot load Delta table at `/x`", "/x", delta);
        assert_eq!(
            e.to_string(),
            "cannot load Delta table at `/x`: Kernel error: Generic delta kernel error: truncated record"
        );
    }
}

/// A failure of a database or remote server behind a table, named for the
/// table and the source it served; the engine maps it to a status
/// (UNAVAILABLE, PERMISSION_DENIED, …) by [`Self::kind`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What to tell the user, naming the table and source, never the
    /// credentials.
    pub message: String,
    /// What kind of failure it is.
    pub kind: SourceErrorKind,
}

/// Kinds of [`SourceError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// The source could not be reached, or the connection broke.
    Unavailable,
    /// The login or the table's privileges refused the read.
    PermissionDenied,
    /// The table or a column is missing at the source.
    NotFound,
    /// The statement ran out of its time or was cancelled.
    Cancelled,
    /// Anything else the source reported.
    Source,
}
