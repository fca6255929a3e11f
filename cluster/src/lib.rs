//! meshq across machines, on [datafusion-distributed]: the coordinator
//! (`meshq serve --workers …`) plans every query — the policy rewrite, the
//! barrier, the leakproof pushdown — and workers (`meshq worker`) execute
//! fragments of its physical plans. A worker holds no catalog and no
//! principal; it reads only `meshq.yaml` for the cluster secret, its
//! memory limits and object-store credentials.
//!
//! Invariants:
//! - A worker answers only requests carrying a fresh credential made with
//!   the cluster secret ([`auth`]); anything else is `UNAUTHENTICATED`,
//!   logged and counted, before a plan is decoded.
//! - Connections to workers sign every request, bound to the worker, the
//!   RPC, the travelling settings and the plan fragment ([`wire`]).
//! - A plan goes to the workers only if every stage encodes intact and
//!   calls only DataFusion's built-in functions and meshq's masks (which
//!   travel by name, with their parameters beside the plan, [`travel`]);
//!   otherwise, and when no worker answers its health check, the
//!   coordinator runs it ([`coordinator`]).
//!
//! [datafusion-distributed]: https://github.com/datafusion-contrib/datafusion-distributed

pub mod auth;
pub mod codec;
pub mod coordinator;
pub mod join_filters;
pub mod loopback;
pub mod metrics;
pub mod placement;
pub mod transport;
pub mod travel;
pub mod wire;
pub mod worker;

pub use auth::{CLUSTER_AUTH_HEADER, ClusterKey, Refusal, Verifier};
pub use codec::MeshCodec;
pub use coordinator::Coordinator;
pub use transport::{AuthChannelResolver, WorkerSource, Workers, serve_worker};
