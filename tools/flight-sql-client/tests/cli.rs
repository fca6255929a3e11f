//! The tool is built with the workspace (cargo builds a package's binaries
//! for its integration tests) and runs; the interop tests drive it against
//! meshq (`tests/python/test_flight_sql_client.py`).

#[test]
fn the_client_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flight_sql_client"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["statement-query", "catalogs", "tables"] {
        assert!(help.contains(command), "{help}");
    }
}
