//! Running a table's quality rules on its data (`meshq check`, and the
//! server's periodic checks behind `meta.quality`).
//!
//! The checks are the producer's tool: they read the contract view of the
//! data without the consumers' policies. What they return is counts and
//! aggregates (never row values), and each table's count metrics run in
//! one aggregate scan; a query that fails is retried rule by rule so that
//! one bad rule never hides the others' results.

mod board;
pub mod periodic;
mod sql;

use std::sync::Arc;

use arrow::array::{Array, Float64Array};
use arrow::datatypes::DataType;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::prelude::{SQLOptions, SessionContext};
use futures::StreamExt;
use meshq_catalog::quality::{Check, QualityRule, Threshold, Unit};

use crate::engine::{CATALOG, Engine, ServedTable};
pub use board::QualityBoard;
use sql::{Measure, fill_placeholders, ident, measure, table_ref};

/// The outcome of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Measured and within the threshold.
    Passed,
    /// Measured and outside the threshold; the rule's severity is error.
    Failed,
    /// Outside the threshold; the rule's severity is below error.
    Warning,
    /// Could not run (the detail says why).
    Error,
    /// Declared but not run by meshq (`type: text`, custom engines).
    Skipped,
}

impl Status {
    /// `passed`, `failed`, `warning`, `error` or `skipped`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleResult {
    /// The rule as declared.
    pub rule: QualityRule,
    /// What happened.
    pub status: Status,
    /// The measured value: rows, percent, seconds of age, or the SQL
    /// rule's number.
    pub measured: Option<f64>,
    /// `rows`, `percent`, `seconds` or empty for SQL rules.
    pub unit: &'static str,
    /// The threshold as text (`= 0`, `<= 14400 (4 h)`).
    pub threshold: String,
    /// Why it errored or was skipped, or what the freshness was measured
    /// from.
    pub detail: Option<String>,
}

/// The results of one table.
#[derive(Debug, Clone)]
pub struct TableReport {
    /// `domain.table`.
    pub table: String,
    /// Its product.
    pub product_id: String,
    /// Its contract file, relative to the mesh root.
    pub contract_file: String,
    /// One per rule, in declaration order.
    pub results: Vec<RuleResult>,
    /// When the checks ran, in milliseconds since the epoch.
    pub checked_at_ms: i64,
}

impl TableReport {
    /// Whether no error-severity rule failed or could not run.
    pub fn passes(&self) -> bool {
        !self
            .results
            .iter()
            .any(|r| r.status == Status::Failed || (r.status == Status::Error && r.rule.is_error()))
    }

    /// The worst status: failed over error over warning over passed.
    pub fn status(&self) -> Status {
        let has = |s| self.results.iter().any(|r| r.status == s);
        if has(Status::Failed) {
            Status::Failed
        } else if has(Status::Error) {
            Status::Error
        } else if has(Status::Warning) {
            Status::Warning
        } else {
            Status::Passed
        }
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A context in which `domain.table` is the contract view of each served
/// table, without policies: for the producer's checks only, never for a
/// consumer's query. DDL, DML and statements are refused by
/// [`check_options`], and it has no file-reading table functions.
fn producer_context(engine: &Engine) -> SessionContext {
    let ctx = engine.unpoliced_context();
    let catalog = MemoryCatalogProvider::new();
    for t in engine.served_tables() {
        let schema = match catalog.schema(&t.def.domain) {
            Some(s) => s,
            None => {
                let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                let _ = catalog.register_schema(&t.def.domain, Arc::clone(&s));
                s
            }
        };
        let _ = schema.register_table(t.def.name.clone(), Arc::clone(&t.provider) as _);
    }
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    ctx
}

fn check_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs the rules of `tables` (all served tables when empty), `concurrency`
/// tables at a time, calling `progress(done, total)` after each table.
pub async fn check_tables(
    engine: &Engine,
    tables: &[String],
    concurrency: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<TableReport> {
    let ctx = producer_context(engine);
    let selected: Vec<&ServedTable> = engine
        .served_tables()
        .iter()
        .filter(|t| tables.is_empty() || tables.contains(&t.def.qualified_name()))
        .collect();
    let total = selected.len();
    let mut reports = Vec::with_capacity(total);
    let mut stream = futures::stream::iter(selected)
        .map(|t| check_table(engine, &ctx, t))
        .buffer_unordered(concurrency.max(1));
    while let Some(report) = stream.next().await {
        reports.push(report);
        progress(reports.len(), total);
    }
    reports.sort_by(|a, b| a.table.cmp(&b.table));
    reports
}

/// Checks every served table and records the results on the engine's
/// [`QualityBoard`] (what `meta.quality` and the metrics show). Returns how
/// many tables do not pass.
pub async fn check_and_record(engine: &Engine, concurrency: usize) -> usize {
    let reports = check_tables(engine, &[], concurrency, &|_, _| {}).await;
    let board = engine.quality_board();
    board.retain(engine.served_tables());
    let mut failing = 0;
    for report in reports {
        if let Some(t) = engine.served_table(&report.table) {
            failing += usize::from(!report.passes());
            board.put(Arc::clone(&t.def), report);
        }
    }
    failing
}

async fn check_table(engine: &Engine, ctx: &SessionContext, t: &ServedTable) -> TableReport {
    let checked_at_ms = now_ms();
    let tref = table_ref(&t.def.domain, &t.def.name);
    let rules = &t.def.quality;
    let mut results: Vec<Option<RuleResult>> = vec![None; rules.len()];

    // Count metrics (and the newest value of freshness columns) share one
    // scan; `count(*)` first, for percentages.
    let mut exprs = vec!["count(*)".to_string()];
    let mut slots: Vec<(usize, usize)> = Vec::new(); // (rule, column of the scan)
    let mut own_queries: Vec<(usize, String)> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        match &rule.check {
            Check::Metric { metric, .. } => match measure(metric, &tref) {
                Measure::Aggregate(e) => {
                    slots.push((i, exprs.len()));
                    exprs.push(e);
                }
                Measure::Query(q) => own_queries.push((i, q)),
            },
            Check::Freshness {
                column: Some(c), ..
            } => {
                slots.push((i, exprs.len()));
                exprs.push(format!("to_unixtime(max({}))", ident(c)));
            }
            Check::Sql { query, .. } => {
                own_queries.push((i, fill_placeholders(query, &tref, rule.column.as_deref())))
            }
            Check::Freshness { column: None, .. } if t.def.source.location.has_no_version() => {
                results[i] = Some(not_run(
                    rule,
                    Status::Skipped,
                    "a database or remote table has no commit time to measure; name a timestamp column as the latency SLA's `element` to measure freshness from the data",
                ));
            }
            Check::Freshness { column: None, .. } => {
                let facts = engine.facts(t).await;
                let age = facts
                    .last_modified_ms
                    .map(|ms| (checked_at_ms - ms) as f64 / 1000.0);
                results[i] = Some(judge_freshness(
                    rule,
                    age,
                    "age of the table's last change".into(),
                ));
            }
            Check::NotExecutable(why) => results[i] = Some(not_run(rule, Status::Skipped, why)),
            Check::Invalid(why) => results[i] = Some(not_run(rule, Status::Error, why)),
        }
    }

    let scan = run_scan(ctx, &tref, &exprs, &slots).await;
    let total_rows = scan.first().copied().flatten();
    for (pos, (i, _)) in slots.iter().enumerate() {
        let value = scan.get(pos + 1).copied().flatten();
        let outcome = match value {
            Some(v) => Ok(v),
            None => Err(scan_error(ctx, &tref, &exprs[slots[pos].1]).await),
        };
        results[*i] = Some(judge(rules, *i, outcome, total_rows, checked_at_ms));
    }
    for (i, q) in own_queries {
        let outcome = run_single(ctx, &q).await;
        results[i] = Some(judge(rules, i, outcome, total_rows, checked_at_ms));
    }
    TableReport {
        table: t.def.qualified_name(),
        product_id: t.def.product_id.clone(),
        contract_file: engine
            .mesh()
            .display_path(&t.def.contract_file)
            .display()
            .to_string(),
        results: results
            .into_iter()
            .map(|r| r.expect("every rule has a result"))
            .collect(),
        checked_at_ms,
    }
}

/// The values of `SELECT exprs FROM tref`, as numbers; an empty vector
/// when the query fails (each slot is then retried on its own).
async fn run_scan(
    ctx: &SessionContext,
    tref: &str,
    exprs: &[String],
    slots: &[(usize, usize)],
) -> Vec<Option<f64>> {
    let cols: Vec<String> = std::iter::once(exprs[0].clone())
        .chain(slots.iter().map(|(_, c)| exprs[*c].clone()))
        .collect();
    let q = format!("SELECT {} FROM {tref}", cols.join(", "));
    match first_row(ctx, &q).await {
        Ok(row) => row,
        Err(_) => {
            // Retry one by one so that a bad rule only fails itself.
            let mut row = vec![
                run_single(ctx, &format!("SELECT count(*) FROM {tref}"))
                    .await
                    .ok(),
            ];
            for (_, c) in slots {
                row.push(
                    run_single(ctx, &format!("SELECT {} FROM {tref}", exprs[*c]))
                        .await
                        .ok(),
                );
            }
            row
        }
    }
}

/// Why `expr` has no value: its own error, or that it was NULL.
async fn scan_error(ctx: &SessionContext, tref: &str, expr: &str) -> String {
    match run_single(ctx, &format!("SELECT {expr} FROM {tref}")).await {
        Ok(_) => "the scan failed".into(),
        Err(e) => e,
    }
}

async fn first_row(ctx: &SessionContext, q: &str) -> Result<Vec<Option<f64>>, String> {
    let df = ctx
        .sql_with_options(q, check_options())
        .await
        .map_err(|e| crate::error::error_message(&e))?;
    let batches = df
        .collect()
        .await
        .map_err(|e| crate::error::error_message(&e))?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| "the query returned no row".to_string())?;
    if batches.iter().map(|b| b.num_rows()).sum::<usize>() != 1 {
        return Err("the query must return exactly one row".into());
    }
    batch
        .columns()
        .iter()
        .map(|c| {
            let f = arrow::compute::cast(c, &DataType::Float64)
                .map_err(|_| format!("the query must return a number, not {}", c.data_type()))?;
            let f = f
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64");
            Ok((!f.is_null(0)).then(|| f.value(0)))
        })
        .collect()
}

/// One number from `q` (one row, one column, not NULL).
async fn run_single(ctx: &SessionContext, q: &str) -> Result<f64, String> {
    let row = first_row(ctx, q).await?;
    match row.as_slice() {
        [Some(v)] => Ok(*v),
        [None] => Err("the query returned NULL".into()),
        _ => Err(format!(
            "the query must return one column, it returned {}",
            row.len()
        )),
    }
}

fn not_run(rule: &QualityRule, status: Status, why: &str) -> RuleResult {
    RuleResult {
        rule: rule.clone(),
        status,
        measured: None,
        unit: "",
        threshold: String::new(),
        detail: Some(why.to_string()),
    }
}

fn verdict(rule: &QualityRule, passed: bool) -> Status {
    match (passed, rule.is_error()) {
        (true, _) => Status::Passed,
        (false, true) => Status::Failed,
        (false, false) => Status::Warning,
    }
}

fn judge(
    rules: &[QualityRule],
    i: usize,
    outcome: Result<f64, String>,
    total_rows: Option<f64>,
    now_ms: i64,
) -> RuleResult {
    let rule = &rules[i];
    let value = match outcome {
        Ok(v) => v,
        Err(e) => return not_run(rule, Status::Error, &e),
    };
    match &rule.check {
        Check::Metric {
            unit, threshold, ..
        } => {
            let (measured, unit) = match unit {
                Unit::Rows => (value, "rows"),
                Unit::Percent => match total_rows {
                    Some(n) if n > 0.0 => (100.0 * value / n, "percent"),
                    Some(_) => (0.0, "percent"),
                    None => {
                        return not_run(
                            rule,
                            Status::Error,
                            "the table's rows could not be counted",
                        );
                    }
                },
            };
            RuleResult {
                rule: rule.clone(),
                status: verdict(rule, threshold.passes(measured)),
                measured: Some(measured),
                unit,
                threshold: threshold.to_string(),
                detail: None,
            }
        }
        Check::Sql { threshold, .. } => RuleResult {
            rule: rule.clone(),
            status: verdict(rule, threshold.passes(value)),
            measured: Some(value),
            unit: "",
            threshold: threshold.to_string(),
            detail: None,
        },
        Check::Freshness { column, .. } => judge_freshness(
            rule,
            Some(now_ms as f64 / 1000.0 - value),
            format!(
                "age of the newest `{}`",
                column.as_deref().unwrap_or_default()
            ),
        ),
        Check::NotExecutable(why) => not_run(rule, Status::Skipped, why),
        Check::Invalid(why) => not_run(rule, Status::Error, why),
    }
}

fn judge_freshness(rule: &QualityRule, age_secs: Option<f64>, from: String) -> RuleResult {
    let Check::Freshness {
        max_age_secs,
        declared,
        ..
    } = &rule.check
    else {
        unreachable!("freshness rule")
    };
    // Strictly younger than the SLA, as the reference tool decides.
    let threshold = Threshold::Lt(*max_age_secs as f64);
    match age_secs {
        Some(age) => RuleResult {
            rule: rule.clone(),
            status: verdict(rule, threshold.passes(age)),
            measured: Some(age.round()),
            unit: "seconds",
            threshold: format!("{threshold} ({declared})"),
            detail: Some(from),
        },
        None => RuleResult {
            rule: rule.clone(),
            status: Status::Error,
            measured: None,
            unit: "seconds",
            threshold: format!("{threshold} ({declared})"),
            detail: Some(format!("{from} is unknown (no data, or no commit time)")),
        },
    }
}
