//! Quality checks of the source formats as ODCS 3.1 rules: SodaCL checks
//! (the Data Contract Specification's `quality`) and the expectations of
//! data-mesh manifests (Great Expectations names and their short forms).
//! A check with no ODCS equivalent becomes a `type: text` rule carrying the
//! original, and a note says so.

use serde_yaml_ng::{Mapping, Value};

use super::common::{Notes, duration, full, get_strings, get_text, join, short, text, threshold};
use super::model::{Map, SchemaObject, seq};

/// A comparison as ODCS writes it: the operator key and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Compare {
    pub key: &'static str,
    pub value: Value,
    /// The threshold was a percentage (`< 5%`).
    pub percent: bool,
}

impl Compare {
    pub(crate) fn equals_zero() -> Self {
        Self {
            key: "mustBe",
            value: Value::Number(0.into()),
            percent: false,
        }
    }

    /// `= 0`, `< 5%`, `between 1 and 10`, `not between 1 and 10`.
    pub(crate) fn parse(rest: &str) -> Option<Self> {
        let rest = rest.trim();
        let lower = rest.to_ascii_lowercase();
        for (word, key) in [
            ("not between ", "mustNotBeBetween"),
            ("between ", "mustBeBetween"),
        ] {
            if let Some(body) = lower.strip_prefix(word) {
                let (lo, hi) = body.split_once(" and ")?;
                let (lo, p1) = threshold(lo)?;
                let (hi, p2) = threshold(hi)?;
                return Some(Self {
                    key,
                    value: seq(vec![lo, hi]),
                    percent: p1 || p2,
                });
            }
        }
        for (sym, key) in [
            ("<=", "mustBeLessOrEqualTo"),
            (">=", "mustBeGreaterOrEqualTo"),
            ("!=", "mustNotBe"),
            ("<>", "mustNotBe"),
            ("=", "mustBe"),
            ("<", "mustBeLessThan"),
            (">", "mustBeGreaterThan"),
        ] {
            if let Some(t) = rest.strip_prefix(sym) {
                let (value, percent) = threshold(t)?;
                return Some(Self {
                    key,
                    value,
                    percent,
                });
            }
        }
        None
    }

    /// The rule with this comparison.
    fn apply(&self, rule: Map) -> Map {
        let rule = rule.set(self.key, self.value.clone());
        if self.percent {
            rule.set("unit", "percent")
        } else {
            rule
        }
    }
}

/// A library rule (`metric:`).
pub(crate) fn library(
    name: Option<&str>,
    metric: &str,
    arguments: Map,
    compare: &Compare,
    dimension: Option<&str>,
) -> Value {
    let rule = Map::new()
        .opt("name", name)
        .set("type", "library")
        .set("metric", metric)
        .set("arguments", arguments)
        .opt("dimension", dimension);
    compare.apply(rule).into()
}

/// A SQL rule over the table (`{object}` is the quoted table).
pub(crate) fn sql(
    name: Option<&str>,
    query: &str,
    compare: &Compare,
    dimension: Option<&str>,
) -> Value {
    let rule = Map::new()
        .opt("name", name)
        .set("type", "sql")
        .set("query", query)
        .opt("dimension", dimension);
    compare.apply(rule).into()
}

/// A rule meshq lists and does not run.
pub(crate) fn text_rule(name: Option<&str>, description: &str) -> Value {
    Map::new()
        .opt("name", name)
        .set("type", "text")
        .set("description", description)
        .into()
}

/// `"column"` quoted for SQL.
pub(crate) fn quoted(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

/// Puts `rule` on `column` of `object`; on the object when the column is
/// not one of its properties (with a note).
pub(crate) fn on_column(
    object: &mut SchemaObject,
    column: &str,
    rule: Value,
    notes: &mut Notes,
    path: &str,
) {
    match object.property_mut(column) {
        Some(p) => p.quality.push(rule),
        None => {
            notes.text_rule(
                path,
                format!(
                    "names column `{column}`, which `{}` does not have; kept as text on the table",
                    object.name
                ),
            );
            object.quality.push(text_rule(
                None,
                &format!("(column `{column}` not in the schema) {}", full(&rule)),
            ));
        }
    }
}

/// A SodaCL check: `metric(args) comparison`.
#[derive(Debug, PartialEq)]
struct SodaCheck {
    metric: String,
    args: Vec<String>,
    compare: Option<Compare>,
}

fn parse_soda(check: &str) -> Option<SodaCheck> {
    let check = check.trim();
    let end = check
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(check.len());
    let metric = check[..end].to_ascii_lowercase();
    if metric.is_empty() {
        return None;
    }
    let mut rest = check[end..].trim_start();
    let mut args = Vec::new();
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')')?;
        args = inner[..close]
            .split(',')
            .map(|a| a.trim().trim_matches('"').to_string())
            .filter(|a| !a.is_empty())
            .collect();
        rest = inner[close + 1..].trim_start();
    }
    let compare = if rest.is_empty() {
        None
    } else {
        Some(Compare::parse(rest)?)
    };
    Some(SodaCheck {
        metric,
        args,
        compare,
    })
}

/// What the SodaCL checks of one table add to the contract.
#[derive(Debug, Default)]
pub(crate) struct SodaOutcome {
    /// `slaProperties` entries (from `freshness(…)` checks).
    pub sla: Vec<Value>,
}

/// Converts `checks` (a `checks for TABLE` list) onto `object`.
pub(crate) fn soda_checks(
    object: &mut SchemaObject,
    checks: &[Value],
    enums: &dyn Fn(&str) -> Option<Vec<String>>,
    path: &str,
    notes: &mut Notes,
) -> SodaOutcome {
    let mut out = SodaOutcome::default();
    for (i, item) in checks.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let (check, config) = match item {
            Value::String(s) => (s.clone(), Mapping::new()),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.iter().next().expect("one entry");
                (
                    text(k).unwrap_or_default(),
                    v.as_mapping().cloned().unwrap_or_default(),
                )
            }
            other => {
                notes.text_rule(&here, "not a SodaCL check (a string or a one-key mapping)");
                object
                    .quality
                    .push(text_rule(None, &format!("SodaCL: {}", full(other))));
                continue;
            }
        };
        soda_check(object, &check, &config, enums, &here, notes, &mut out);
    }
    out
}

fn soda_check(
    object: &mut SchemaObject,
    check: &str,
    config: &Mapping,
    enums: &dyn Fn(&str) -> Option<Vec<String>>,
    path: &str,
    notes: &mut Notes,
    out: &mut SodaOutcome,
) {
    let name = get_text(config, "name");
    let name = name.as_deref();
    let keep_as_text = |object: &mut SchemaObject, notes: &mut Notes, why: &str| {
        notes.text_rule(path, format!("SodaCL `{check}`: {why}"));
        object
            .quality
            .push(text_rule(name, &format!("SodaCL: {check}")));
    };
    // The alert form: `fail: when > 10` (and `warn:`) gives the comparison.
    let alert = |key: &str| {
        get_text(config, key)
            .and_then(|t| Compare::parse(t.trim().strip_prefix("when").unwrap_or(&t)))
    };
    let lower = check.trim().to_ascii_lowercase();
    if lower == "failed rows" {
        let query = if let Some(q) = get_text(config, "fail query") {
            format!(
                "SELECT count(*) FROM ({}) AS failed_rows",
                q.trim().trim_end_matches(';')
            )
        } else if let Some(c) = get_text(config, "fail condition") {
            format!("SELECT count(*) FROM {{object}} WHERE {c}")
        } else {
            keep_as_text(
                object,
                notes,
                "`failed rows` without `fail query` or `fail condition`",
            );
            return;
        };
        notes.changed(
            path,
            "`failed rows` became a SQL rule counting them (must be 0); table names in the query must be meshq's (`domain.table`)",
        );
        object
            .quality
            .push(sql(name, &query, &Compare::equals_zero(), None));
        return;
    }
    if lower == "schema" || lower.starts_with("schema ") {
        keep_as_text(
            object,
            notes,
            "schema checks are not rules in ODCS; meshq checks every table's columns against its contract when it loads (drift)",
        );
        return;
    }
    if let Some(rest) = lower.strip_prefix("freshness(") {
        let original = &check.trim()["freshness(".len()..];
        let sla = rest.find(')').and_then(|close| {
            let column = original[..close].trim().trim_matches('"').to_string();
            let after = rest[close + 1..].trim();
            let limit = after
                .strip_prefix("<=")
                .or_else(|| after.strip_prefix('<'))?;
            let (value, unit) = duration(limit.trim())?;
            Some((column, value, unit))
        });
        let Some((column, value, unit)) = sla else {
            keep_as_text(
                object,
                notes,
                "freshness as meshq checks it is `freshness(column) < DURATION`",
            );
            return;
        };
        notes.changed(
            path,
            "became the contract's `freshness` SLA (meshq checks it like a rule: the age of the newest value must be below it)",
        );
        out.sla.push(
            Map::new()
                .set("property", "freshness")
                .set("value", value)
                .set("unit", unit)
                .set("element", format!("{}.{column}", object.name))
                .into(),
        );
        return;
    }
    let Some(parsed) = parse_soda(check) else {
        keep_as_text(object, notes, "not a check meshq can read");
        return;
    };
    let fail_alert = alert("fail");
    let warn_alert = alert("warn");
    let compare = match (&parsed.compare, fail_alert, warn_alert) {
        (Some(c), _, _) => c.clone(),
        // Soda fails a check when the alert condition holds: the rule
        // passes on the opposite.
        (None, Some(c), _) | (None, None, Some(c)) => match negate(&c) {
            Some(n) => n,
            None => {
                keep_as_text(object, notes, "an alert condition meshq cannot turn around");
                return;
            }
        },
        (None, None, None) => {
            keep_as_text(object, notes, "no threshold");
            return;
        }
    };
    let column = parsed.args.first().cloned();
    let percent_metric = parsed.metric.ends_with("_percent");
    let mut compare = compare;
    if percent_metric {
        compare.percent = true;
    }
    match (parsed.metric.as_str(), column.as_deref()) {
        ("row_count", None) => {
            object.quality.push(library(
                name,
                "rowCount",
                Map::new(),
                &compare,
                Some("completeness"),
            ));
        }
        ("missing_count" | "missing_percent", Some(c)) => {
            let missing = get_strings(config, "missing values");
            let rule = if missing.is_empty() {
                library(
                    name,
                    "nullValues",
                    Map::new(),
                    &compare,
                    Some("completeness"),
                )
            } else {
                library(
                    name,
                    "missingValues",
                    Map::new().set("missingValues", super::model::strings(&missing)),
                    &compare,
                    Some("completeness"),
                )
            };
            on_column(object, c, rule, notes, path);
        }
        ("duplicate_count" | "duplicate_percent", Some(c)) => {
            if parsed.args.len() == 1 {
                let rule = library(
                    name,
                    "duplicateValues",
                    Map::new(),
                    &compare,
                    Some("uniqueness"),
                );
                on_column(object, c, rule, notes, path);
            } else {
                let cols = super::model::strings(&parsed.args);
                object.quality.push(library(
                    name,
                    "duplicateValues",
                    Map::new().set("properties", cols),
                    &compare,
                    Some("uniqueness"),
                ));
            }
        }
        ("invalid_count" | "invalid_percent", Some(c)) => {
            let valid = get_strings(config, "valid values");
            let regex = get_text(config, "valid regex");
            let arguments = if !valid.is_empty() || regex.is_some() {
                Map::new()
                    .set("validValues", super::model::strings(&valid))
                    .opt("pattern", regex)
            } else if let Some(values) = enums(c) {
                notes.changed(
                    path,
                    format!(
                        "`{check}` has no `valid values`; the valid values are the field's `enum`"
                    ),
                );
                Map::new().set("validValues", super::model::strings(&values))
            } else {
                keep_as_text(
                    object,
                    notes,
                    "no `valid values`, `valid regex` or field `enum` says what is valid",
                );
                return;
            };
            let rule = library(
                name,
                "invalidValues",
                arguments,
                &compare,
                Some("conformity"),
            );
            on_column(object, c, rule, notes, path);
        }
        (
            metric @ ("avg" | "min" | "max" | "sum" | "stddev" | "variance" | "avg_length"
            | "min_length" | "max_length"),
            Some(c),
        ) => {
            let expr = match metric.strip_suffix("_length") {
                Some(f) => format!("{f}(length({}))", quoted(c)),
                None => format!("{metric}({})", quoted(c)),
            };
            object.quality.push(sql(
                name,
                &format!("SELECT {expr} FROM {{object}}"),
                &compare,
                None,
            ));
        }
        (metric, _) => {
            if let Some(query) = get_text(config, &format!("{metric} query")) {
                notes.changed(
                    path,
                    format!("the user-defined metric `{metric}` became a SQL rule with its query; table names in it must be meshq's (`domain.table`)"),
                );
                object.quality.push(sql(name, query.trim(), &compare, None));
            } else {
                keep_as_text(
                    object,
                    notes,
                    &format!("meshq has no equivalent of `{metric}`"),
                );
                return;
            }
        }
    }
    let known = [
        "name",
        "missing values",
        "valid values",
        "valid regex",
        "fail",
        "warn",
        "fail query",
        "fail condition",
    ];
    for (k, v) in config {
        let key = text(k).unwrap_or_default();
        if !known.contains(&key.as_str()) && !key.ends_with(" query") {
            notes.dropped(
                join(path, &key),
                format!(
                    "SodaCL check option `{key}` ({}) has no ODCS counterpart",
                    short(v)
                ),
            );
        }
    }
}

/// The comparison that passes exactly when `c` fails.
fn negate(c: &Compare) -> Option<Compare> {
    let key = match c.key {
        "mustBe" => "mustNotBe",
        "mustNotBe" => "mustBe",
        "mustBeLessThan" => "mustBeGreaterOrEqualTo",
        "mustBeLessOrEqualTo" => "mustBeGreaterThan",
        "mustBeGreaterThan" => "mustBeLessOrEqualTo",
        "mustBeGreaterOrEqualTo" => "mustBeLessThan",
        "mustBeBetween" => "mustNotBeBetween",
        "mustNotBeBetween" => "mustBeBetween",
        _ => return None,
    };
    Some(Compare {
        key,
        value: c.value.clone(),
        percent: c.percent,
    })
}

/// An expectation of a data-mesh manifest (a Great Expectations name or
/// its short form) on `object`.
pub(crate) fn expectation(
    object: &mut SchemaObject,
    item: &Mapping,
    path: &str,
    notes: &mut Notes,
) {
    // `{ expectation_type: NAME, kwargs: {...} }`, `{ expectation: NAME, … }`,
    // `{ type: NAME, … }` (quality_checks), or `{ NAME: {...} }`.
    let kwargs = item
        .get("kwargs")
        .and_then(Value::as_mapping)
        .cloned()
        .unwrap_or_else(|| item.clone());
    let kind = ["expectation_type", "expectation", "type", "check", "rule"]
        .iter()
        .find_map(|k| get_text(item, k))
        .unwrap_or_default();
    let name = get_text(item, "name");
    let name = name.as_deref();
    let column = get_text(&kwargs, "column");
    let mostly = kwargs.get("mostly").and_then(super::common::number);
    let severity = get_text(item, "severity");
    let lower = kind.to_ascii_lowercase();
    let kind_short = lower
        .trim_start_matches("expect_")
        .trim_start_matches("column_values_to_")
        .trim_start_matches("column_");
    // `mostly: 0.99`: at most 1 % of rows may break it.
    let zero_or_mostly = || match mostly {
        Some(m) if m < 1.0 => Compare {
            key: "mustBeLessOrEqualTo",
            value: super::common::num_value(((1.0 - m) * 10000.0).round() / 100.0),
            percent: true,
        },
        _ => Compare::equals_zero(),
    };
    let with_severity = |rule: Value| -> Value {
        match (&severity, rule) {
            (Some(s), Value::Mapping(mut m)) => {
                m.insert("severity".into(), Value::String(s.clone()));
                Value::Mapping(m)
            }
            (_, r) => r,
        }
    };
    let rule: Option<(Option<String>, Value)> = match (kind_short, column.as_deref()) {
        ("not_be_null" | "not_null" | "notnull" | "completeness", Some(c)) => Some((
            Some(c.to_string()),
            library(
                name,
                "nullValues",
                Map::new(),
                &zero_or_mostly(),
                Some("completeness"),
            ),
        )),
        ("be_unique" | "unique" | "uniqueness", Some(c)) => Some((
            Some(c.to_string()),
            library(
                name,
                "duplicateValues",
                Map::new(),
                &Compare::equals_zero(),
                Some("uniqueness"),
            ),
        )),
        ("be_in_set" | "accepted_values" | "in_set" | "allowed_values", Some(c)) => {
            let values: Vec<String> = ["value_set", "values", "allowed_values"]
                .iter()
                .map(|k| get_strings(&kwargs, k))
                .find(|v| !v.is_empty())
                .unwrap_or_default();
            if values.is_empty() {
                None
            } else {
                Some((
                    Some(c.to_string()),
                    library(
                        name,
                        "invalidValues",
                        Map::new().set("validValues", super::model::strings(&values)),
                        &zero_or_mostly(),
                        Some("conformity"),
                    ),
                ))
            }
        }
        ("match_regex" | "regex" | "pattern" | "format", Some(c)) => {
            let pattern = ["regex", "pattern"]
                .iter()
                .find_map(|k| get_text(&kwargs, k));
            pattern.map(|p| {
                (
                    Some(c.to_string()),
                    library(
                        name,
                        "invalidValues",
                        Map::new().set("pattern", p),
                        &zero_or_mostly(),
                        Some("conformity"),
                    ),
                )
            })
        }
        ("be_between" | "range" | "between", Some(c)) => {
            let lo = ["min_value", "min", "minimum"]
                .iter()
                .find_map(|k| kwargs.get(*k).and_then(super::common::number));
            let hi = ["max_value", "max", "maximum"]
                .iter()
                .find_map(|k| kwargs.get(*k).and_then(super::common::number));
            let q = quoted(c);
            let cond = match (lo, hi) {
                (Some(l), Some(h)) => Some(format!("{q} < {l} OR {q} > {h}")),
                (Some(l), None) => Some(format!("{q} < {l}")),
                (None, Some(h)) => Some(format!("{q} > {h}")),
                (None, None) => None,
            };
            cond.map(|cond| {
                (
                    None,
                    sql(
                        name,
                        &format!("SELECT count(*) FROM {{object}} WHERE {cond}"),
                        &Compare::equals_zero(),
                        Some("accuracy"),
                    ),
                )
            })
        }
        ("table_row_count_to_be_between" | "row_count" | "volume", _) => {
            let lo = ["min_value", "min", "minimum"]
                .iter()
                .find_map(|k| kwargs.get(*k).and_then(super::common::number));
            let hi = ["max_value", "max", "maximum"]
                .iter()
                .find_map(|k| kwargs.get(*k).and_then(super::common::number));
            let compare = match (lo, hi) {
                (Some(l), Some(h)) => Some(Compare {
                    key: "mustBeBetween",
                    value: seq(vec![
                        super::common::num_value(l),
                        super::common::num_value(h),
                    ]),
                    percent: false,
                }),
                (Some(l), None) => Some(Compare {
                    key: "mustBeGreaterOrEqualTo",
                    value: super::common::num_value(l),
                    percent: false,
                }),
                (None, Some(h)) => Some(Compare {
                    key: "mustBeLessOrEqualTo",
                    value: super::common::num_value(h),
                    percent: false,
                }),
                (None, None) => None,
            };
            compare.map(|c| {
                (
                    None,
                    library(name, "rowCount", Map::new(), &c, Some("completeness")),
                )
            })
        }
        ("sql" | "custom_sql", _) => get_text(&kwargs, "query").and_then(|q| {
            let compare = ["must_be", "threshold", "expected"]
                .iter()
                .find_map(|k| kwargs.get(*k).and_then(super::common::number))
                .map(|n| Compare {
                    key: "mustBe",
                    value: super::common::num_value(n),
                    percent: false,
                })
                .or_else(|| get_text(&kwargs, "condition").and_then(|c| Compare::parse(&c)))?;
            Some((None, sql(name, &q, &compare, None)))
        }),
        _ => None,
    };
    match rule {
        Some((Some(c), rule)) => on_column(object, &c, with_severity(rule), notes, path),
        Some((None, rule)) => object.quality.push(with_severity(rule)),
        None => {
            let what = if kind.is_empty() {
                short(&Value::Mapping(item.clone()))
            } else {
                kind.clone()
            };
            notes.text_rule(
                path,
                format!("expectation `{what}` has no ODCS equivalent meshq runs (or misses its column or arguments)"),
            );
            object.quality.push(text_rule(
                name,
                &format!("Expectation: {}", full(&Value::Mapping(item.clone()))),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soda_checks_parse() {
        let c = parse_soda("duplicate_count(order_id) = 0").unwrap();
        assert_eq!(c.metric, "duplicate_count");
        assert_eq!(c.args, vec!["order_id"]);
        assert_eq!(c.compare.unwrap().key, "mustBe");
        let c = parse_soda("invalid_percent(status) < 1%").unwrap();
        let cmp = c.compare.unwrap();
        assert_eq!((cmp.key, cmp.percent), ("mustBeLessThan", true));
        let c = parse_soda("avg(order_total) between 100 and 10000").unwrap();
        assert_eq!(c.compare.unwrap().key, "mustBeBetween");
        let c = parse_soda("row_count not between 1 and 5").unwrap();
        assert_eq!(c.compare.unwrap().key, "mustNotBeBetween");
        assert!(parse_soda("row_count ~ 5").is_none());
    }

    #[test]
    fn alerts_turn_around() {
        let fail = Compare::parse("> 10").unwrap();
        assert_eq!(negate(&fail).unwrap().key, "mustBeLessOrEqualTo");
    }
}
