//! Integration tests over the library crates: bad input yields exact,
//! actionable problems, and a broken product never stops the rest.

mod abuse;
mod acceleration;
mod bad_input;
mod bypass;
mod cluster;
mod common;
mod discovery;
mod flightsql;
mod iceberg;
mod policy_equivalence;
mod policy_plans;
mod postgres;
mod products;
mod result_cache;
mod shared_subplans;
