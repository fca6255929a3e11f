//! arrow-rs's `flight_sql_client`, compiled from the arrow-flight source
//! this workspace depends on (see `build.rs`); the interop tests drive
//! meshq with it. The code is arrow-rs's, unchanged but for one line its
//! build script leaves out, so lints are theirs.
#![allow(clippy::all, missing_docs, unreachable_pub, unused)]

include!(concat!(env!("OUT_DIR"), "/flight_sql_client.rs"));
