//! Runs every `tests/slt/*.slt` file against a fresh session over the
//! fixture mesh, then again on a coordinator whose plans run on two
//! workers (in this process, on loopback): the answers must not depend on
//! where a query ran (`EXPLAIN` shows the stages there: see
//! `cluster_validator`). `-- --complete` rewrites the expected results in
//! place (single node only). A file name filter may be given: `-- joins`.

use std::path::{Path, PathBuf};

use meshq_engine::{Engine, Principal};
use meshq_tests::slt::{SltDb, principal_of};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    write_fixture_mesh(dir.path()).await.expect("fixture mesh");
    // Products `meshq import` converted (tests/slt/imported_ana.slt).
    meshq_tests::add_imported_products(dir.path()).expect("imported products");
    // Products defined by SQL that are refused (tests/slt/products_refused.slt).
    meshq_tests::add_refused_sql_products(dir.path()).expect("refused products");
    let engine = Engine::load(fixture_engine_config(dir.path()))
        .await
        .expect("fixture mesh loads");
    // As a server does once a mesh is loaded: materialised products are
    // built (and then read from their tables).
    refresh(&engine).await;

    let mesh_dir = dir
        .path()
        .canonicalize()
        .expect("fixture dir")
        .display()
        .to_string();
    let slt_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&slt_dir)
        .expect("slt dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| {
            filters.is_empty()
                || filters
                    .iter()
                    .any(|f| p.to_string_lossy().contains(f.as_str()))
        })
        .collect();
    files.sort();
    let (mut passed, mut failed) = run_files(&engine, &files, &mesh_dir, complete, false, "").await;
    if !complete {
        let (cluster, verifiers) = meshq_tests::fixture_cluster_engine(dir.path())
            .await
            .expect("cluster");
        refresh(&cluster).await;
        let (p, f) = run_files(&cluster, &files, &mesh_dir, false, true, "on a cluster: ").await;
        passed += p;
        failed += f;
        // Again with one target partition, where DataFusion plans one-step
        // aggregates right above its scans and the library makes other
        // stages: the answers must not change.
        let mut one = meshq_tests::fixture_engine_config(dir.path());
        one.target_partitions = Some(1);
        let (cluster_one, verifiers_one) =
            meshq_tests::fixture_cluster_engine_with(dir.path(), one)
                .await
                .expect("cluster");
        refresh(&cluster_one).await;
        let (p, f) = run_files(
            &cluster_one,
            &files,
            &mesh_dir,
            false,
            true,
            "on a cluster, one target partition: ",
        )
        .await;
        passed += p;
        failed += f;
        for (verifiers, what) in [(verifiers, ""), (verifiers_one, ", one target partition")] {
            let accepted: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
            println!("requests the workers accepted{what}: {accepted:?}");
            if accepted.contains(&0) {
                println!("FAILED: a worker ran no fragment of the slt suites{what}");
                failed += 1;
            }
        }
        // Every distributed plan passed the verifier a second time, as
        // its tasks run it (a refusal would have run it on the
        // coordinator, which the answers alone would not show).
        let unverified = meshq_cluster::coordinator::unverified_distributions();
        if unverified > 0 {
            println!("FAILED: {unverified} distributed plan(s) failed the plan verifier");
            failed += 1;
        }
        // Again on one node with inner joins ordered by estimated size
        // (`meshq_plan.reorder_joins`): the answers must not change.
        let before = meshq_engine::join_order::reordered_trees();
        let mut config = fixture_engine_config(dir.path());
        config
            .settings
            .push(("meshq_plan.reorder_joins".into(), "true".into()));
        let ordered = Engine::load(config).await.expect("fixture mesh loads");
        refresh(&ordered).await;
        let (p, f) = run_files(
            &ordered,
            &files,
            &mesh_dir,
            false,
            false,
            "joins ordered by estimate: ",
        )
        .await;
        passed += p;
        failed += f;
        let reordered = meshq_engine::join_order::reordered_trees() - before;
        println!("join trees reordered: {reordered}");
        if reordered == 0 && filters.is_empty() {
            println!("FAILED: no join tree of the slt suites was reordered");
            failed += 1;
        }
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// Builds (or finds) the copies of the mesh's accelerated and
/// materialised tables; a failure stops the run.
async fn refresh(engine: &Engine) {
    for (table, outcome) in engine.refresh_accelerations().await {
        if let meshq_engine::acceleration::RefreshOutcome::Failed(e) = outcome {
            panic!("{table}: {e}");
        }
    }
}

/// Runs `files` on `engine`; (passed, failed).
async fn run_files(
    engine: &Engine,
    files: &[PathBuf],
    mesh_dir: &str,
    complete: bool,
    cluster: bool,
    label: &str,
) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let text = std::fs::read_to_string(file).expect("slt file");
        let principal = match principal_of(&text) {
            None => Principal::anonymous(),
            Some(n) => engine
                .mesh()
                .config
                .principal(&n)
                .unwrap_or_else(|| panic!("{name}: no principal `{n}` in the fixture mesh")),
        };
        let engine = engine.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let session = engine.session(&principal);
            let db = SltDb::new(session).with_refresh(engine.clone());
            async move { Ok::<_, meshq_tests::slt::SltError>(db) }
        });
        runner.set_var("MESH".into(), mesh_dir.to_string());
        if cluster {
            runner.with_validator(meshq_tests::slt::cluster_validator);
        }
        let result = if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner
                .run_file_async(file)
                .await
                .map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok: {label}{name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED: {label}{name}\n{e}");
            }
        }
    }
    (passed, failed)
}
