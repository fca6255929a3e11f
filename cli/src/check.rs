//! `meshq check`: the contracts' quality rules on the real data, reported
//! for people (a table), bots (JSON) or CI (JUnit XML).

use std::io::Write;

use anyhow::{Result, bail};
use meshq_engine::Engine;
use meshq_engine::quality::{RuleResult, Status, TableReport};
use serde_json::{Value, json};

/// Output format of `meshq check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    /// Aligned text, one block per table.
    Table,
    /// One JSON document.
    Json,
    /// JUnit XML: a test suite per table, a test case per rule.
    Junit,
}

/// The served tables `tables` and `products` (ids or names) select; all
/// when both are empty. Unknown names are an error naming them.
pub fn select(engine: &Engine, tables: &[String], products: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in tables {
        if !engine.is_served(t) {
            bail!(
                "table `{t}` is not served by this mesh (see `meshq validate`; names are domain.table)"
            );
        }
        out.push(t.clone());
    }
    for p in products {
        let Some(info) = engine
            .mesh()
            .products
            .iter()
            .find(|i| &i.id == p || i.name.as_ref() == Some(p))
        else {
            bail!("no product with id or name `{p}` in this mesh");
        };
        let served: Vec<String> = engine
            .served_tables()
            .iter()
            .filter(|t| t.def.product_id == info.id)
            .map(|t| t.def.qualified_name())
            .collect();
        if served.is_empty() {
            bail!("product `{p}` serves no table (see `meshq validate`)");
        }
        out.extend(served);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Counts of results by status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rules run or listed.
    pub rules: usize,
    /// Passed.
    pub passed: usize,
    /// Failed with severity error.
    pub failed: usize,
    /// Failed below severity error.
    pub warnings: usize,
    /// Could not run.
    pub errors: usize,
    /// Not run by meshq.
    pub skipped: usize,
    /// Error-severity rules that failed or could not run: the run fails.
    pub blocking: usize,
}

impl Summary {
    /// Tallies `reports`.
    pub fn of(reports: &[TableReport]) -> Self {
        let mut s = Self::default();
        for r in reports.iter().flat_map(|t| &t.results) {
            s.rules += 1;
            match r.status {
                Status::Passed => s.passed += 1,
                Status::Failed => s.failed += 1,
                Status::Warning => s.warnings += 1,
                Status::Error => s.errors += 1,
                Status::Skipped => s.skipped += 1,
            }
            if matches!(r.status, Status::Failed)
                || (r.status == Status::Error && r.rule.is_error())
            {
                s.blocking += 1;
            }
        }
        s
    }
}

/// Writes `reports` in `format`.
pub fn write_report(
    reports: &[TableReport],
    format: CheckFormat,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        CheckFormat::Table => write_table(reports, out),
        CheckFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &to_json(reports))?;
            writeln!(out)?;
            Ok(())
        }
        CheckFormat::Junit => write_junit(reports, out),
    }
}

fn measured_text(r: &RuleResult) -> String {
    match r.measured {
        None => "-".into(),
        Some(v) => {
            let v = if v.fract() == 0.0 {
                format!("{}", v as i64)
            } else {
                format!("{v:.2}")
            };
            if r.unit.is_empty() {
                v
            } else {
                format!("{v} {}", r.unit)
            }
        }
    }
}

fn write_table(reports: &[TableReport], out: &mut dyn Write) -> Result<()> {
    for t in reports {
        writeln!(
            out,
            "{}  ({}, product {}): {}",
            t.table,
            t.contract_file,
            t.product_id,
            t.status().label()
        )?;
        let width = t.results.iter().map(|r| r.rule.id.len()).max().unwrap_or(0);
        for r in &t.results {
            let what = match (&r.detail, r.status) {
                (Some(d), Status::Error | Status::Skipped) => d.clone(),
                _ => format!("measured {}, expected {}", measured_text(r), r.threshold),
            };
            writeln!(
                out,
                "  {:<8} {:<width$}  {:<13} {}",
                r.status.label(),
                r.rule.id,
                r.rule.dimension.as_deref().unwrap_or("-"),
                what,
            )?;
        }
    }
    let s = Summary::of(reports);
    writeln!(
        out,
        "{} rule(s) on {} table(s): {} passed, {} failed, {} warning(s), {} error(s), {} skipped",
        s.rules,
        reports.len(),
        s.passed,
        s.failed,
        s.warnings,
        s.errors,
        s.skipped
    )?;
    Ok(())
}

/// The JSON document of `meshq check --format json`.
pub fn to_json(reports: &[TableReport]) -> Value {
    let s = Summary::of(reports);
    json!({
        "tables": reports.iter().map(|t| json!({
            "table": t.table,
            "product_id": t.product_id,
            "contract": t.contract_file,
            "status": t.status().label(),
            "checked_at": chrono::DateTime::from_timestamp_millis(t.checked_at_ms)
                .map(|d| d.to_rfc3339()),
            "results": t.results.iter().map(|r| json!({
                "rule": r.rule.id,
                "column": r.rule.column,
                "origin": r.rule.origin.label(),
                "dimension": r.rule.dimension,
                "severity": r.rule.severity,
                "status": r.status.label(),
                "measured": r.measured,
                "unit": r.unit,
                "threshold": r.threshold,
                "detail": r.detail,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "summary": {
            "rules": s.rules,
            "passed": s.passed,
            "failed": s.failed,
            "warnings": s.warnings,
            "errors": s.errors,
            "skipped": s.skipped,
        },
    })
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn write_junit(reports: &[TableReport], out: &mut dyn Write) -> Result<()> {
    let s = Summary::of(reports);
    writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
    writeln!(
        out,
        r#"<testsuites name="meshq check" tests="{}" failures="{}" errors="{}" skipped="{}">"#,
        s.rules, s.failed, s.errors, s.skipped
    )?;
    for t in reports {
        let ts = Summary::of(std::slice::from_ref(t));
        writeln!(
            out,
            r#"  <testsuite name="{}" tests="{}" failures="{}" errors="{}" skipped="{}" timestamp="{}">"#,
            xml(&t.table),
            ts.rules,
            ts.failed,
            ts.errors,
            ts.skipped,
            chrono::DateTime::from_timestamp_millis(t.checked_at_ms)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default()
        )?;
        for r in &t.results {
            write!(
                out,
                r#"    <testcase classname="{}" name="{}""#,
                xml(&t.table),
                xml(&r.rule.id)
            )?;
            let message = match (&r.detail, r.status) {
                (Some(d), Status::Error | Status::Skipped) => d.clone(),
                _ => format!("measured {}, expected {}", measured_text(r), r.threshold),
            };
            match r.status {
                Status::Passed => writeln!(out, "/>")?,
                Status::Failed => writeln!(
                    out,
                    ">\n      <failure message=\"{}\" type=\"{}\"/>\n    </testcase>",
                    xml(&message),
                    xml(r.rule.dimension.as_deref().unwrap_or("quality"))
                )?,
                Status::Error => writeln!(
                    out,
                    ">\n      <error message=\"{}\"/>\n    </testcase>",
                    xml(&message)
                )?,
                Status::Skipped => writeln!(
                    out,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml(&message)
                )?,
                Status::Warning => writeln!(
                    out,
                    ">\n      <system-out>warning (severity {}): {}</system-out>\n    </testcase>",
                    xml(&r.rule.severity),
                    xml(&message)
                )?,
            }
        }
        writeln!(out, "  </testsuite>")?;
    }
    writeln!(out, "</testsuites>")?;
    Ok(())
}
