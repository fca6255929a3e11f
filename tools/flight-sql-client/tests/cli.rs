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

/// Logging is set up before anything else: with nothing listening the tool
/// fails on the connection, not on its logger.
#[test]
fn the_client_sets_up_logging_and_reaches_the_network() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flight_sql_client"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "catalogs",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("logging"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connect") || stderr.contains("transport"),
        "{stderr}"
    );
}
