//! meshq benchmarks (arrive with the benchmark work): TPC-H across domains,
//! policy overhead against raw DataFusion, Flight SQL throughput and
//! latency, and catalog scale.
