//! The result cache: entries are shared by principals whose policies give
//! the same plan and by nobody else; answers are the same with and without
//! it; changing functions, non-mesh tables, new files and reloads are
//! handled.

use std::path::Path;

use meshq_engine::{Engine, MeshSession, Principal};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};

use crate::common::{run_served, sorted_rows};

/// The fixture mesh with `cache:` set as `yaml` says.
async fn cached_mesh(dir: &Path, yaml: &str) -> Engine {
    write_fixture_mesh(dir).await.unwrap();
    let platform = dir.join("meshq.yaml");
    // The demo's own `cache:` line gives way to the test's.
    let mut text: String = std::fs::read_to_string(&platform)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("cache:"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(yaml);
    std::fs::write(&platform, text).unwrap();
    let engine = Engine::load(fixture_engine_config(dir)).await.unwrap();
    assert!(engine.result_cache().enabled());
    engine
}

fn principal(engine: &Engine, name: &str) -> Principal {
    engine.mesh().config.principal(name).unwrap()
}

/// Runs `sql` through the path servers use; the sorted rows and whether
/// they came from the cache.
async fn run_via_cache(session: &MeshSession, sql: &str) -> (Vec<String>, bool) {
    let (batches, cached) = run_served(session, sql).await.unwrap();
    (sorted_rows(&batches), cached)
}

/// The same query without the cache (the DataFrame path never uses it).
async fn run_uncached(session: &MeshSession, sql: &str) -> Vec<String> {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    sorted_rows(&batches)
}

const QUERIES: &[&str] = &[
    "SELECT customer_id, region, total_amount FROM sales.orders",
    "SELECT region, count(*) AS n, sum(total_amount) AS total FROM sales.orders GROUP BY region",
    // A predicate on a masked column: evaluated above the barrier, on the
    // masked value, cached or not.
    "SELECT count(*) FROM sales.orders WHERE customer_id LIKE 'a%'",
    "SELECT o.order_id, p.email FROM sales.orders o JOIN customers.profiles p ON o.customer_id = p.customer_id",
];

#[tokio::test]
async fn entries_are_shared_only_by_principals_with_the_same_policies() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_mesh(dir.path(), "cache: { enabled: true }\n").await;
    let ana = principal(&engine, "ana");
    // Same roles and attributes as ana, another name.
    let twin = Principal {
        name: Some("ana-twin".into()),
        ..ana.clone()
    };
    for sql in QUERIES {
        let s = engine.session(&ana);
        let expected = run_uncached(&s, sql).await;
        let (first, hit) = run_via_cache(&s, sql).await;
        assert!(!hit, "{sql}: nothing is cached yet");
        assert_eq!(first, expected, "{sql}");
        let (again, hit) = run_via_cache(&engine.session(&ana), sql).await;
        assert!(hit, "{sql}: ana's second run is served from the cache");
        assert_eq!(again, expected, "{sql}");
        let (twin_rows, hit) = run_via_cache(&engine.session(&twin), sql).await;
        assert!(
            hit,
            "{sql}: a principal with ana's policies shares her entry"
        );
        assert_eq!(twin_rows, expected, "{sql}");
        for other in ["ben", "gina", "pat"] {
            let s = engine.session(&principal(&engine, other));
            let own = run_uncached(&s, sql).await;
            let (rows, hit) = run_via_cache(&s, sql).await;
            assert!(!hit, "{sql}: {other}'s policies differ from ana's");
            assert_eq!(rows, own, "{sql}: {other} gets their own answer");
            if sql == &QUERIES[0] {
                assert_ne!(rows, expected, "{sql}: {other}'s answer differs from ana's");
            }
            let (rows, hit) = run_via_cache(&s, sql).await;
            assert!(hit, "{sql}: {other}'s own entry");
            assert_eq!(rows, own, "{sql}");
        }
    }
    let c = engine.result_cache().stats().counters();
    assert_eq!(c.hits, QUERIES.len() as u64 * 5);
    assert_eq!(c.misses, QUERIES.len() as u64 * 4);
    assert_eq!(c.entries, QUERIES.len() as u64 * 4);
    assert!(c.bytes > 0);
}

#[tokio::test]
async fn changing_functions_and_other_tables_are_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_mesh(dir.path(), "cache: { enabled: true }\n").await;
    let ana = principal(&engine, "ana");
    for sql in [
        "SELECT now() AS t, count(*) FROM sales.orders",
        "SELECT random() AS r, total_amount FROM sales.orders",
        "SELECT * FROM meta.tables",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT * FROM range(3)",
        "SELECT 1",
    ] {
        for _ in 0..2 {
            let (_, hit) = run_via_cache(&engine.session(&ana), sql).await;
            assert!(!hit, "{sql} is never cached");
        }
    }
    assert_eq!(engine.result_cache().stats().counters().entries, 0);
    // Principal functions are bound to the caller: ana's entry is not her
    // twin's.
    let twin = Principal {
        name: Some("ana-twin".into()),
        ..ana.clone()
    };
    let sql = "SELECT current_user AS who, count(*) AS n FROM sales.orders";
    let (mine, _) = run_via_cache(&engine.session(&ana), sql).await;
    let (again, hit) = run_via_cache(&engine.session(&ana), sql).await;
    assert!(hit);
    assert_eq!(mine, again);
    let (theirs, hit) = run_via_cache(&engine.session(&twin), sql).await;
    assert!(!hit, "current_user differs");
    assert!(theirs[0].starts_with("ana-twin|"), "{theirs:?}");
    // A view that calls random(): the statement names no function, the
    // view brings one in.
    let root = engine.session(&principal(&engine, "root"));
    root.sql("CREATE VIEW lucky AS SELECT random() AS r, severity FROM ops.incidents")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(!run_via_cache(&root, "SELECT * FROM lucky").await.1);
    }
    // Scratch tables belong to a session: never cached.
    root.sql("CREATE TABLE mine AS SELECT 1 AS x")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    for sql in [
        "SELECT x FROM mine",
        "SELECT count(*) FROM ops.incidents, mine",
    ] {
        for _ in 0..2 {
            assert!(!run_via_cache(&root, sql).await.1, "{sql}");
        }
    }
}

#[tokio::test]
async fn new_files_and_reloads_invalidate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_mesh(dir.path(), "cache: { enabled: true, ttl: 1h }\n").await;
    let gina = principal(&engine, "gina");
    let sql = "SELECT count(*) AS n, sum(amount) AS total FROM ops.region_totals";
    let (before, _) = run_via_cache(&engine.session(&gina), sql).await;
    let (_, hit) = run_via_cache(&engine.session(&gina), sql).await;
    assert!(hit);
    // A new file in the listing: the file set's fingerprint changes.
    let part = dir.path().join("ops/data/region_totals/region=EMEA");
    let existing = std::fs::read_dir(&part)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .unwrap()
        .path();
    std::fs::copy(&existing, part.join("extra.parquet")).unwrap();
    let (after, hit) = run_via_cache(&engine.session(&gina), sql).await;
    assert!(!hit, "a new file makes a new version");
    assert_ne!(before, after);
    assert_eq!(after, run_uncached(&engine.session(&gina), sql).await);
    // A reload starts an empty cache; the counters carry over.
    let counted = engine.result_cache().stats().counters();
    let reloaded = Engine::load_after(fixture_engine_config(dir.path()), Some(&engine))
        .await
        .unwrap();
    let (rows, hit) = run_via_cache(&reloaded.session(&gina), sql).await;
    assert!(!hit, "a reload empties the cache");
    assert_eq!(rows, after);
    let now = reloaded.result_cache().stats().counters();
    assert_eq!(now.misses, counted.misses + 1);
    assert_eq!(now.hits, counted.hits);
}

#[tokio::test]
async fn the_least_recently_used_results_make_room() {
    let dir = tempfile::tempdir().unwrap();
    // Room for a few small results, not for the large one.
    let engine = cached_mesh(dir.path(), "cache: { enabled: true, max_bytes: 4KiB }\n").await;
    let pat = principal(&engine, "pat");
    let small =
        |i: usize| format!("SELECT order_id FROM sales.orders WHERE total_amount > {i} LIMIT 5");
    for i in 0..40 {
        run_via_cache(&engine.session(&pat), &small(i)).await;
    }
    let c = engine.result_cache().stats().counters();
    assert!(c.evictions > 0, "{c:?}");
    assert!(c.bytes <= 4 << 10, "{c:?}");
    // The most recent one is still there, the first one is gone.
    assert!(run_via_cache(&engine.session(&pat), &small(39)).await.1);
    assert!(!run_via_cache(&engine.session(&pat), &small(0)).await.1);
    // Larger than a quarter of the cache: computed, never kept.
    let big = "SELECT * FROM sales.orders";
    run_via_cache(&engine.session(&pat), big).await;
    assert!(!run_via_cache(&engine.session(&pat), big).await.1);
    // The bytes held are reserved from the memory pool.
    let held = engine.result_cache().stats().counters().bytes as usize;
    assert!(engine.runtime().memory_pool.reserved() >= held);
}

#[tokio::test]
async fn a_cleared_cache_computes_again_and_holds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = cached_mesh(dir.path(), "cache: { enabled: true }\n").await;
    let pat = principal(&engine, "pat");
    let sql = QUERIES[1];
    let (first, hit) = run_via_cache(&engine.session(&pat), sql).await;
    assert!(!hit);
    let (_, hit) = run_via_cache(&engine.session(&pat), sql).await;
    assert!(hit);
    let counters = engine.result_cache().stats().counters();
    assert!(counters.entries > 0 && counters.bytes > 0, "{counters:?}");
    engine.result_cache().clear();
    let counters = engine.result_cache().stats().counters();
    assert_eq!((counters.entries, counters.bytes), (0, 0), "{counters:?}");
    let (again, hit) = run_via_cache(&engine.session(&pat), sql).await;
    assert!(!hit, "a cleared cache computes the result again");
    assert_eq!(again, first);
}
