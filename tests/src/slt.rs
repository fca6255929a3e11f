//! A `sqllogictest` database over a meshq engine session.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use meshq_engine::MeshSession;
use sqllogictest::{DBOutput, DefaultColumnType};

static FILE_GROUPS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"file_groups=\{.*?\]\]\}").expect("valid regex")
});

/// EXPLAIN output one plan line per row, as DataFusion's own suites print
/// it: indentation shown as dashes (runners trim spaces), file lists (temp
/// paths, Delta's random file names) replaced by a placeholder.
fn explain_rows(rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for row in rows {
        let [plan_type, plan] = row.as_slice() else {
            out.push(row);
            continue;
        };
        let plan = FILE_GROUPS.replace_all(plan, "file_groups={<files>}");
        for (i, line) in plan.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let trimmed = line.trim_start();
            let indent = "-".repeat(line.len() - trimmed.len());
            let kind = if i == 0 {
                plan_type.clone()
            } else {
                String::new()
            };
            out.push(vec![format!("{kind:<14}{indent}{}", trimmed.trim_end())]);
        }
    }
    out
}

/// One `.slt` file's connection: a fresh session.
pub struct SltDb {
    session: Arc<MeshSession>,
    engine: Option<meshq_engine::Engine>,
}

impl SltDb {
    /// Wraps a session.
    pub fn new(session: MeshSession) -> Self {
        Self {
            session: Arc::new(session),
            engine: None,
        }
    }

    /// Lets the file run `REFRESH ACCELERATIONS` and `CHECK QUALITY`,
    /// commands of this harness. `REFRESH ACCELERATIONS` (as a server's refresher would): it refreshes `engine`'s
    /// accelerated and materialised tables and answers one row per table,
    /// `table, outcome` (`built`, `current`, `found` or `failed`; why it
    /// failed is in `meta.tables`).
    pub fn with_refresh(mut self, engine: meshq_engine::Engine) -> Self {
        self.engine = Some(engine);
        self
    }

    /// `CHECK QUALITY`, a command of this harness: runs every table's
    /// quality rules as a server's periodic checks do (filling
    /// `meta.quality`) and answers how many tables do not pass.
    async fn check_quality(&self) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| SltError("CHECK QUALITY: no engine".into()))?;
        // On a thread of its own: the checks' future is not `Send` as this
        // trait's futures must be.
        let engine = engine.clone();
        let handle = tokio::runtime::Handle::current();
        let checked = tokio::task::spawn_blocking(move || {
            handle.block_on(meshq_engine::quality::check_and_record(&engine, 2))
        })
        .await
        .map_err(|e| SltError(format!("CHECK QUALITY: {e}")))?;
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Integer],
            rows: vec![vec![checked.to_string()]],
        })
    }

    async fn refresh(&self) -> Result<DBOutput<DefaultColumnType>, SltError> {
        use meshq_engine::acceleration::RefreshOutcome;
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| SltError("REFRESH ACCELERATIONS: no engine".into()))?;
        let rows = engine
            .refresh_accelerations()
            .await
            .into_iter()
            .map(|(table, outcome)| {
                let outcome = match outcome {
                    RefreshOutcome::Built { .. } => "built".to_string(),
                    RefreshOutcome::Current => "current".to_string(),
                    RefreshOutcome::Found { .. } => "found".to_string(),
                    RefreshOutcome::Failed(_) => "failed".to_string(),
                };
                vec![table, outcome]
            })
            .collect();
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Text; 2],
            rows,
        })
    }
}

/// The principal a `.slt` file runs as: a `# principal: NAME` line among
/// its first comment lines; anonymous when absent.
pub fn principal_of(text: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .find_map(|l| l.strip_prefix("# principal:"))
        .map(|n| n.trim().to_string())
}

/// Errors keep DataFusion's text so `statement error <regex>` can match it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(String);

impl From<DataFusionError> for SltError {
    fn from(e: DataFusionError) -> Self {
        Self(e.to_string())
    }
}

impl From<arrow::error::ArrowError> for SltError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self(e.to_string())
    }
}

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// Renders cells the way DataFusion's own `.slt` suites do: `NULL` for
/// nulls, `(empty)` for empty strings.
fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, col)| {
                        let s = f.value(row).to_string();
                        if s.is_empty() && !col.is_null(row) {
                            "(empty)".to_string()
                        } else {
                            s
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for SltDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        if sql.trim().eq_ignore_ascii_case("REFRESH ACCELERATIONS") {
            return self.refresh().await;
        }
        if sql.trim().eq_ignore_ascii_case("CHECK QUALITY") {
            return self.check_quality().await;
        }
        let df = self.session.sql(sql).await?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await?;
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let mut rows = rows(&batches)?;
        if sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN") {
            rows = explain_rows(rows);
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "meshq"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// The validator of the cluster pass. There `EXPLAIN` shows the stages a
/// distributed statement runs as, so its physical plan cannot match the
/// single node's: the logical plan must match exactly, and every policy
/// node the single node's physical plan shows (the scan mark, the barrier,
/// the masks) must be in the stages, with the same text. Everything else
/// is compared as the default validator does.
pub fn cluster_validator(
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    let lines: Vec<String> = actual.iter().map(|r| r.join(" ")).collect();
    let physical = |l: &String| l.starts_with("physical_plan");
    let (Some(e), Some(a)) = (
        expected.iter().position(physical),
        lines.iter().position(physical),
    ) else {
        return sqllogictest::default_validator(normalizer, actual, expected);
    };
    if !lines[a..].iter().any(|l| l.contains("DistributedExec")) {
        return sqllogictest::default_validator(normalizer, actual, expected);
    }
    let content = |l: &str| {
        l.trim_start_matches("physical_plan")
            .trim_start_matches(['-', ' ', '│'])
            .trim_end()
            .to_string()
    };
    let stages: Vec<String> = lines[a..].iter().map(|l| content(l)).collect();
    let policy_nodes_kept = expected[e..]
        .iter()
        .map(|l| content(l))
        .filter(|l| {
            l.starts_with("PolicyBarrierExec")
                || l.starts_with("MeshScanExec")
                || l.contains("mask_")
        })
        .all(|node| stages.iter().any(|s| s == &node));
    policy_nodes_kept && sqllogictest::default_validator(normalizer, &actual[..a], &expected[..e])
}
