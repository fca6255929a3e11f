//! A coordinator over two in-process workers on loopback: what travels
//! beside a plan (the session's settings) reaches the workers.

use crate::common::run;

/// The session's time zone shapes what `to_timestamp` returns; a stage on
/// a worker computes it with the statement's time zone, as a single node
/// does, not the worker's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_runs_a_stage_with_the_sessions_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    meshq_tests::write_fixture_mesh(dir.path()).await.unwrap();
    let single = meshq_engine::Engine::load(meshq_tests::fixture_engine_config(dir.path()))
        .await
        .unwrap();
    let (cluster, verifiers) = meshq_tests::fixture_cluster_engine(dir.path())
        .await
        .unwrap();
    // SET is an admin's: pat with the admin role.
    let answer = |engine: meshq_engine::Engine| async move {
        let mut pat = engine.mesh().config.principal("pat").unwrap();
        pat.roles.insert("admin".into());
        let session = engine.session(&pat);
        run(&session, "SET datafusion.execution.time_zone = '+05:00'")
            .await
            .unwrap();
        // A statement planned after the SET, as the next call of a client.
        let next = engine.session_for(session.data());
        let sql = "SELECT region, min(to_timestamp(length(order_id) * 86400)) AS first, arrow_typeof(min(to_timestamp(length(order_id) * 86400))) AS t \
                   FROM sales.orders GROUP BY region ORDER BY region";
        let plan = run(&next, &format!("EXPLAIN {sql}")).await.unwrap();
        let plan = arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        let batches = run(&next, sql).await.unwrap();
        (
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string(),
            plan,
        )
    };
    let (expected, _) = answer(single).await;
    assert!(expected.contains("+05:00"), "{expected}");
    let before: Vec<u64> = verifiers.iter().map(|v| v.accepted()).collect();
    let (got, plan) = answer(cluster).await;
    assert!(
        plan.contains("Stage 1") && plan.contains("to_timestamp"),
        "the conversion runs in a worker's stage: {plan}"
    );
    assert_eq!(got, expected);
    for (v, b) in verifiers.iter().zip(before) {
        assert!(v.accepted() > b, "a worker ran no fragment");
    }
}
