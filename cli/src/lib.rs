//! The `meshq` command line: `demo`, `shell` and `validate`.
//!
//! The binary is a thin clap front end over this library, so tests can drive
//! the shell, the validator and the demo writer directly.

pub mod demo;
pub mod output;
pub mod shell;
pub mod validate;
