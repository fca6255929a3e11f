//! meshq benchmarks: TPC-H across domains, policy and format overhead against
//! raw DataFusion, Flight SQL throughput and latency, and catalog scale.
//!
//! `meshq-bench` (src/main.rs) runs the measurements; this library holds the
//! pieces so that a smoke test can run them at a tiny scale. Benchmarks are
//! not tests: nothing here asserts a time.

pub mod catalog_scale;
pub mod federation;
pub mod flight;
pub mod runners;
pub mod tpch;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// The 22 TPC-H queries, written out from the specification (validation
/// substitution parameters), with schemas for the mesh's domains.
pub const QUERIES: [(&str, &str); 22] = [
    ("q1", include_str!("../queries/q1.sql")),
    ("q2", include_str!("../queries/q2.sql")),
    ("q3", include_str!("../queries/q3.sql")),
    ("q4", include_str!("../queries/q4.sql")),
    ("q5", include_str!("../queries/q5.sql")),
    ("q6", include_str!("../queries/q6.sql")),
    ("q7", include_str!("../queries/q7.sql")),
    ("q8", include_str!("../queries/q8.sql")),
    ("q9", include_str!("../queries/q9.sql")),
    ("q10", include_str!("../queries/q10.sql")),
    ("q11", include_str!("../queries/q11.sql")),
    ("q12", include_str!("../queries/q12.sql")),
    ("q13", include_str!("../queries/q13.sql")),
    ("q14", include_str!("../queries/q14.sql")),
    ("q15", include_str!("../queries/q15.sql")),
    ("q16", include_str!("../queries/q16.sql")),
    ("q17", include_str!("../queries/q17.sql")),
    ("q18", include_str!("../queries/q18.sql")),
    ("q19", include_str!("../queries/q19.sql")),
    ("q20", include_str!("../queries/q20.sql")),
    ("q21", include_str!("../queries/q21.sql")),
    ("q22", include_str!("../queries/q22.sql")),
];

/// Samples of one measurement.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// One per measured run (warm-up runs excluded).
    pub samples: Vec<Duration>,
}

impl Timing {
    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        s
    }

    /// Median (lower middle for an even count).
    pub fn median(&self) -> Duration {
        let s = self.sorted();
        s.get((s.len().max(1) - 1) / 2).copied().unwrap_or_default()
    }

    /// Fastest run.
    pub fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }

    /// Slowest run.
    pub fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }

    /// The `p`-th percentile (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        let s = self.sorted();
        if s.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    }
}

/// Runs `f` `warmup` times unmeasured, then `runs` times measured.
pub async fn measure<F, Fut, T>(warmup: usize, runs: usize, mut f: F) -> Result<(Timing, T)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    for _ in 0..warmup {
        f().await?;
    }
    let mut timing = Timing::default();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let out = f().await?;
        timing.samples.push(start.elapsed());
        last = Some(out);
    }
    Ok((timing, last.expect("at least one run")))
}

/// Milliseconds with two decimals, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Resident set size and its peak, in bytes, from `/proc/self/status`.
pub fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
