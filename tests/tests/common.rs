//! Shared helpers for the integration tests.

use arrow::array::RecordBatch;
use meshq_engine::{Engine, MeshSession};
use meshq_tests::{fixture_engine_config, write_fixture_mesh};
use tokio::sync::OnceCell;

/// The fixture mesh, loaded once per test binary.
pub(crate) async fn fixture() -> &'static (tempfile::TempDir, Engine) {
    static FIXTURE: OnceCell<(tempfile::TempDir, Engine)> = OnceCell::const_new();
    FIXTURE
        .get_or_init(|| async {
            let dir = tempfile::tempdir().unwrap();
            write_fixture_mesh(dir.path()).await.unwrap();
            let engine = Engine::load(fixture_engine_config(dir.path()))
                .await
                .unwrap();
            // As a server with --quality-interval would: `meta.quality`
            // has rows.
            meshq_engine::quality::check_and_record(&engine, 4).await;
            (dir, engine)
        })
        .await
}

/// A session for a fixture principal.
pub(crate) async fn session_as(name: &str) -> MeshSession {
    let (_, engine) = fixture().await;
    let principal = engine.mesh().config.principal(name).unwrap();
    engine.session(&principal)
}

/// Runs SQL; the result as text, or the error's full text.
pub(crate) async fn run(session: &MeshSession, sql: &str) -> Result<Vec<RecordBatch>, String> {
    match session.sql(sql).await {
        Ok(df) => df.collect().await.map_err(|e| format!("{e:?} / {e}")),
        Err(e) => Err(format!("{e:?} / {e}")),
    }
}

/// Runs SQL through the path servers use (`execute`, where the result
/// cache sits): the batches and whether they came from the cache.
pub(crate) async fn run_served(
    session: &MeshSession,
    sql: &str,
) -> datafusion::error::Result<(Vec<RecordBatch>, bool)> {
    use futures::TryStreamExt;
    let plan = session.plan(sql).await?;
    let query = session.execute(plan, None).await?;
    let cached = query.is_cached();
    let batches = query.execute()?.try_collect().await?;
    Ok((batches, cached))
}

/// Batches as the shell prints them.
pub(crate) fn text(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
}

/// Runs SQL on `engine` as the principal `who`: the result as text, or
/// the error's full text.
pub(crate) async fn query(engine: &Engine, who: &str, sql: &str) -> Result<String, String> {
    let principal = engine.mesh().config.principal(who).unwrap();
    run(&engine.session(&principal), sql)
        .await
        .map(|b| text(&b))
}

/// Every problem of a loaded mesh, as text.
pub(crate) fn all_problems(engine: &Engine) -> Vec<String> {
    engine.problems().iter().map(ToString::to_string).collect()
}

/// The error-severity problems of a loaded mesh, as text.
pub(crate) fn error_problems(engine: &Engine) -> Vec<String> {
    engine
        .problems()
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect()
}

/// Batches as sorted text rows, for order-insensitive comparison.
pub(crate) fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = arrow::util::display::FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    rows.sort();
    rows
}
