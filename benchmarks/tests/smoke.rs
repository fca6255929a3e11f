//! The benchmark harness at a tiny scale factor, so it keeps working: it
//! checks that meshq's answers equal raw DataFusion's and that the
//! Delta/Iceberg mesh answers as the Parquet one does, and that the result
//! cache, accelerated ports and a two-worker cluster answer as the files
//! do. No timing is judged.

#[test]
fn the_harness_answers_like_raw_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshq-bench"))
        .args(["--sf", "0.01", "--runs", "1", "--warmup", "0", "--dir"])
        .arg(dir.path())
        .args([
            "--only",
            "policy,format,flight,accel,distributed,catalog,federation",
            "--federation-rows",
            "10000",
            "--products",
            "100",
            "--latency-queries",
            "10",
            "--check",
            // Split even these tiny files, so the cluster runs stages.
            "--cluster-set",
            "distributed.file_scan_config_bytes_per_partition=1",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in [
        "Policy overhead",
        "Result cache",
        "Accelerated ports",
        "Distributed",
        "Catalog scale",
        "Federation (PostgreSQL",
        "Federation (remote meshq over Flight SQL",
    ] {
        assert!(report.contains(section), "{report}");
    }
    // The governed principal's answers on two workers were compared with
    // the single node's, and matched (a difference fails the run).
    assert!(
        report.contains("each query once on the single node and on 2 workers: the same answers"),
        "{report}"
    );
    // With taskset and two cores, the cluster is worker processes pinned
    // to cores, and the report gives the speed-up.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if cores >= 2 && taskset {
        assert!(
            report.contains("Speed-up of 2 workers over 1 worker"),
            "{report}"
        );
    }
}
