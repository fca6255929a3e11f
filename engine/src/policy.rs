//! Contract policies, enforced at planning time.
//!
//! - [`compile`]: masks and row filters parsed and type-checked at load;
//! - [`rule`]: the analyzer rule that rewrites governed scans per principal;
//! - [`barrier`]: the security barrier node, logical and physical;
//! - [`pushdown`]: moves leakproof predicates across the barrier;
//! - [`lockdown`]: statements only admins may run;
//! - [`udf`]: vectorised masks and the principal functions;
//! - [`governed`]: every served table with its policies, and the scans the
//!   rule hands to the planner;
//! - [`verify`]: the plan verifier, the last step of every physical plan.

pub mod barrier;
pub mod compile;
pub mod error;
pub mod governed;
pub mod lockdown;
pub mod pushdown;
pub mod rule;
pub mod udf;
pub mod verify;

pub use error::{PolicyError, policy_error};
