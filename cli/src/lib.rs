//! The `meshq` command line: `demo`, `shell`, `validate`, `check`, `diff`,
//! `lineage` and `import`.
//!
//! The binary is a thin clap front end over this library, so tests can drive
//! the shell, the validator and the demo writer directly.

pub mod check;
pub mod demo;
mod demo_iceberg;
pub mod diff;
pub mod import;
pub mod lineage;
pub mod output;
pub mod rego;
pub mod rng;
pub mod shell;
pub mod validate;

/// An argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// What to print for an error: a statement's error as the engine words it
/// for users (a policy denial as itself, otherwise the innermost cause),
/// anything else as it is.
pub fn error_message(e: &anyhow::Error) -> String {
    match e.downcast_ref::<datafusion::error::DataFusionError>() {
        Some(df) => meshq_engine::error_message(df),
        None => e.to_string(),
    }
}
