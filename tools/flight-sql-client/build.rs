//! Finds the source of arrow-flight's `flight_sql_client` binary (a binary
//! of a dependency, which cargo does not build) so `src/main.rs` can
//! compile it here, with the workspace's one feature set and target dir.
//! One line is left out (see below), so that the tool runs with that feature
//! set.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=../../Cargo.lock");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target = std::env::var("TARGET").expect("set by cargo");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(&target)
        .current_dir(&manifest)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let package = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "arrow-flight")
        .expect("arrow-flight is a dependency");
    let dir = PathBuf::from(package["manifest_path"].as_str().expect("manifest path"))
        .parent()
        .expect("a package folder")
        .to_path_buf();
    let source = dir.join("src/bin/flight_sql_client.rs");
    assert!(source.exists(), "{} is missing", source.display());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let text = std::fs::read_to_string(&source).expect("the source is readable");
    // In this workspace tracing-subscriber has its `tracing-log` feature (the
    // Delta kernel turns it on), so `try_init` below the tool's own
    // `LogTracer::init()` installs the log bridge a second time and the tool
    // exits with "attempted to set a logger after the logging system was
    // already initialized". `try_init` installs the bridge itself; the
    // tool's own call is left out, nothing else changes.
    let own_bridge = "tracing_log::LogTracer::init().context(\"tracing log init\")?;";
    assert!(
        text.contains(own_bridge),
        "arrow-flight's flight_sql_client no longer calls `{own_bridge}`; check its logging setup"
    );
    std::fs::write(
        out_dir.join("flight_sql_client.rs"),
        text.replacen(own_bridge, "", 1),
    )
    .expect("OUT_DIR is writable");
    println!("cargo:rerun-if-changed={}", source.display());
}
