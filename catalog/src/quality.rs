//! The quality rules of a table, normalised from its contract: the ODCS
//! `quality` blocks on the schema object and its properties, the checks the
//! schema implies (`required`, `unique`, `primaryKey`, `logicalTypeOptions`)
//! and the freshness SLA (`slaProperties` `latency` / `frequency`).
//!
//! Nothing here touches data: the engine turns each [`QualityRule`] into SQL
//! and compares what it measures with the rule's [`Threshold`].

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml_ng::Value;

use crate::odcs::{DataContract, DataQuality, LogicalTypeOptions, SchemaObject, SchemaProperty};
use crate::products::sla_seconds;

/// One rule to run against a table.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRule {
    /// The rule's `id`, else its `name`, else one derived from where it is
    /// declared (`email.nullValues`, `order_id.required`, `freshness`).
    pub id: String,
    /// The column it is declared on, if any.
    pub column: Option<String>,
    /// ODCS dimension (`completeness`, `uniqueness`, …); implied checks get
    /// the dimension they measure.
    pub dimension: Option<String>,
    /// `error` (the default), `warning`, `info`, … as written.
    pub severity: String,
    /// Where it comes from.
    pub origin: Origin,
    /// What to measure and what passes.
    pub check: Check,
}

impl QualityRule {
    /// Whether a failure of this rule fails the run (`severity` error).
    pub fn is_error(&self) -> bool {
        !matches!(
            self.severity.to_ascii_lowercase().as_str(),
            "warning" | "warn" | "info" | "low" | "minor" | "trivial"
        )
    }
}

/// Where a rule is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `quality` entry of the contract.
    Declared,
    /// Implied by the schema (`required`, `unique`, `primaryKey`,
    /// `logicalTypeOptions`).
    Schema,
    /// A freshness SLA in `slaProperties`.
    Sla,
}

impl Origin {
    /// `quality`, `schema` or `sla`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Declared => "quality",
            Self::Schema => "schema",
            Self::Sla => "sla",
        }
    }
}

/// What a rule measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// A count over the table's rows, compared with the threshold.
    Metric {
        /// What is counted.
        metric: Metric,
        /// Rows, or percent of all rows.
        unit: Unit,
        /// What passes.
        threshold: Threshold,
    },
    /// A producer-written query returning one number (`{object}` and
    /// `{property}` are replaced by the engine).
    Sql {
        /// The query as written.
        query: String,
        /// What passes.
        threshold: Threshold,
    },
    /// The data is no older than `max_age_secs`: now minus the newest value
    /// of `column`, or minus the table's last change without one.
    Freshness {
        /// `latency` or `frequency`.
        property: String,
        /// The timestamp column (`element: table.column`).
        column: Option<String>,
        /// Allowed age.
        max_age_secs: i64,
        /// The SLA as written (`4 h`).
        declared: String,
    },
    /// Declared but not run by meshq: `type: text`, or a custom engine.
    NotExecutable(String),
    /// Declared wrongly; reported as an error result with this reason.
    Invalid(String),
}

/// What a metric counts (each is a number of rows).
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// Rows where the column is NULL.
    NullValues(String),
    /// Rows where the column is NULL or one of `values`.
    MissingValues {
        /// The column.
        column: String,
        /// Values that count as missing besides NULL.
        values: Vec<Literal>,
    },
    /// Non-NULL rows whose value is not in `valid` or does not match
    /// `pattern`.
    InvalidValues {
        /// The column.
        column: String,
        /// Allowed values (all when absent).
        valid: Option<Vec<Literal>>,
        /// A regular expression each value must match (anywhere in the
        /// value, as JSON Schema `pattern`; anchor it with `^…$`).
        pattern: Option<String>,
    },
    /// Distinct non-NULL values (tuples of `columns` at schema level) that
    /// occur more than once.
    DuplicateValues(Vec<String>),
    /// All rows.
    RowCount,
    /// Rows with a NULL in any key column, plus rows beyond the first of
    /// each distinct key.
    PrimaryKey(Vec<String>),
    /// Non-NULL rows outside a `logicalTypeOptions` bound.
    OutOfBound {
        /// The column.
        column: String,
        /// Which bound.
        bound: Bound,
        /// The bound's value.
        value: Literal,
    },
    /// Non-NULL rows whose length (characters) breaks `minLength` /
    /// `maxLength`.
    Length {
        /// The column.
        column: String,
        /// `minLength`.
        min: Option<u64>,
        /// `maxLength`.
        max: Option<u64>,
    },
    /// Non-NULL rows not matching `logicalTypeOptions.pattern` or the
    /// `format` (`email`).
    Pattern {
        /// The column.
        column: String,
        /// The regular expression.
        pattern: String,
    },
}

impl Metric {
    /// The column(s) it reads, for messages.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Self::NullValues(c)
            | Self::MissingValues { column: c, .. }
            | Self::InvalidValues { column: c, .. }
            | Self::OutOfBound { column: c, .. }
            | Self::Length { column: c, .. }
            | Self::Pattern { column: c, .. } => vec![c.as_str()],
            Self::DuplicateValues(cs) | Self::PrimaryKey(cs) => {
                cs.iter().map(String::as_str).collect()
            }
            Self::RowCount => Vec::new(),
        }
    }
}

/// A `logicalTypeOptions` bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `minimum`: values below it are out of bound.
    Minimum,
    /// `maximum`.
    Maximum,
    /// `exclusiveMinimum`: values at or below it.
    ExclusiveMinimum,
    /// `exclusiveMaximum`.
    ExclusiveMaximum,
}

impl Bound {
    /// The ODCS key.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Minimum => "minimum",
            Self::Maximum => "maximum",
            Self::ExclusiveMinimum => "exclusiveMinimum",
            Self::ExclusiveMaximum => "exclusiveMaximum",
        }
    }
}

/// The pattern `format: email` stands for: something@something.tld, no
/// spaces.
pub const EMAIL_PATTERN: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";

/// A literal from the contract (a valid value, a bound).
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A number.
    Number(f64),
    /// A string (also dates and timestamps, compared after coercion).
    String(String),
    /// A boolean.
    Bool(bool),
}

impl Literal {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Number(n) => n.as_f64().map(Self::Number),
            Value::String(s) => Some(Self::String(s.clone())),
            Value::Bool(b) => Some(Self::Bool(*b)),
            _ => None,
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::String(s) => write!(f, "'{s}'"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Rows, or percent (0–100) of all rows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A count.
    Rows,
    /// 100 × count / all rows (0 for an empty table).
    Percent,
}

/// The ODCS operator of a rule and its value(s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// `mustBe`.
    Be(f64),
    /// `mustNotBe`.
    NotBe(f64),
    /// `mustBeGreaterThan`.
    Gt(f64),
    /// `mustBeGreaterOrEqualTo`.
    Ge(f64),
    /// `mustBeLessThan`.
    Lt(f64),
    /// `mustBeLessOrEqualTo`.
    Le(f64),
    /// `mustBeBetween`: both ends included.
    Between(f64, f64),
    /// `mustNotBeBetween`: outside, both ends excluded from passing.
    NotBetween(f64, f64),
}

impl Threshold {
    /// Whether `measured` passes.
    pub fn passes(&self, measured: f64) -> bool {
        match *self {
            Self::Be(v) => measured == v,
            Self::NotBe(v) => measured != v,
            Self::Gt(v) => measured > v,
            Self::Ge(v) => measured >= v,
            Self::Lt(v) => measured < v,
            Self::Le(v) => measured <= v,
            Self::Between(lo, hi) => lo <= measured && measured <= hi,
            Self::NotBetween(lo, hi) => measured < lo || measured > hi,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Be(v) => write!(f, "= {v}"),
            Self::NotBe(v) => write!(f, "!= {v}"),
            Self::Gt(v) => write!(f, "> {v}"),
            Self::Ge(v) => write!(f, ">= {v}"),
            Self::Lt(v) => write!(f, "< {v}"),
            Self::Le(v) => write!(f, "<= {v}"),
            Self::Between(lo, hi) => write!(f, "between {lo} and {hi}"),
            Self::NotBetween(lo, hi) => write!(f, "not between {lo} and {hi}"),
        }
    }
}

/// The operator of `q`, or why there is none usable.
fn threshold_of(q: &DataQuality) -> Result<Threshold, String> {
    let number = |v: &Value, key: &str| -> Result<f64, String> {
        match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| format!("`{key}` is not a number")),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("`{key}: {s}` is not a number")),
            _ => Err(format!("`{key}` must be a number")),
        }
    };
    let pair = |v: &[f64], key: &str| -> Result<(f64, f64), String> {
        match v {
            [lo, hi] if lo <= hi => Ok((*lo, *hi)),
            [_, _] => Err(format!("`{key}` must list the smaller number first")),
            _ => Err(format!("`{key}` must have exactly two numbers")),
        }
    };
    let mut found = Vec::new();
    if let Some(v) = &q.must_be {
        found.push(Threshold::Be(number(v, "mustBe")?));
    }
    if let Some(v) = &q.must_not_be {
        found.push(Threshold::NotBe(number(v, "mustNotBe")?));
    }
    if let Some(v) = q.must_be_greater_than {
        found.push(Threshold::Gt(v));
    }
    if let Some(v) = q.must_be_greater_or_equal_to {
        found.push(Threshold::Ge(v));
    }
    if let Some(v) = q.must_be_less_than {
        found.push(Threshold::Lt(v));
    }
    if let Some(v) = q.must_be_less_or_equal_to {
        found.push(Threshold::Le(v));
    }
    if let Some(v) = &q.must_be_between {
        let (lo, hi) = pair(v, "mustBeBetween")?;
        found.push(Threshold::Between(lo, hi));
    }
    if let Some(v) = &q.must_not_be_between {
        let (lo, hi) = pair(v, "mustNotBeBetween")?;
        found.push(Threshold::NotBetween(lo, hi));
    }
    match found.as_slice() {
        [t] => Ok(*t),
        [] => Err(
            "no operator: give one of mustBe, mustNotBe, mustBeGreaterThan, \
                   mustBeGreaterOrEqualTo, mustBeLessThan, mustBeLessOrEqualTo, \
                   mustBeBetween, mustNotBeBetween"
                .into(),
        ),
        _ => Err("more than one operator; a rule takes exactly one".into()),
    }
}

/// Every rule of the schema object `obj` of contract `c`, in declaration
/// order: the object's own `quality`, then per property its `quality` and
/// implied checks, then the primary key, then freshness. Rules declared
/// wrongly are kept as [`Check::Invalid`] so that a run reports them.
pub fn rules_for(c: &DataContract, obj: &SchemaObject) -> Vec<QualityRule> {
    let mut b = Builder::default();
    for q in &obj.quality {
        b.declared(q, None);
    }
    for p in &obj.properties {
        for q in &p.quality {
            b.declared(q, Some(p));
        }
        b.implied(p);
    }
    let pk = primary_key(obj);
    if !pk.is_empty() {
        b.push(
            "primaryKey".into(),
            None,
            "uniqueness",
            Origin::Schema,
            Check::Metric {
                metric: Metric::PrimaryKey(pk),
                unit: Unit::Rows,
                threshold: Threshold::Be(0.0),
            },
        );
    }
    // `freshness` is the reference tool's name for the same SLA.
    for prop in ["latency", "freshness", "frequency"] {
        let Some(sla) = c
            .sla_properties
            .iter()
            .find(|s| s.property.eq_ignore_ascii_case(prop))
        else {
            continue;
        };
        let element = sla.element.as_deref().or(c.sla_default_element.as_deref());
        // `element: table.column` names this table's column; another
        // table's element is not this table's freshness.
        let column = match element.and_then(|e| e.split_once('.')) {
            Some((table, col)) if table == obj.name => Some(col.to_string()),
            Some(_) => continue,
            None => None,
        };
        let declared = format!(
            "{} {}",
            yaml_scalar(&sla.value),
            sla.unit.as_deref().unwrap_or("")
        )
        .trim()
        .to_string();
        let check = match sla_seconds(sla) {
            Some(secs) => Check::Freshness {
                property: prop.to_string(),
                column: column.clone(),
                max_age_secs: secs,
                declared,
            },
            None => Check::Invalid(format!(
                "slaProperties `{prop}`: `{declared}` is not a duration (use a number with unit d, h, m, s, …)"
            )),
        };
        b.push("freshness".into(), column, "timeliness", Origin::Sla, check);
        // `latency` wins over `frequency`, as in `meta.tables`.
        break;
    }
    b.rules
}

fn primary_key(obj: &SchemaObject) -> Vec<String> {
    let mut pk: Vec<(i64, usize, String)> = obj
        .properties
        .iter()
        .enumerate()
        .filter(|(_, p)| p.primary_key == Some(true))
        .map(|(i, p)| {
            (
                p.primary_key_position.unwrap_or(i64::MAX),
                i,
                p.name.clone(),
            )
        })
        .collect();
    pk.sort();
    pk.into_iter().map(|(_, _, n)| n).collect()
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

#[derive(Default)]
struct Builder {
    rules: Vec<QualityRule>,
    seen: BTreeMap<String, usize>,
}

impl Builder {
    fn push(
        &mut self,
        id: String,
        column: Option<String>,
        dimension: &str,
        origin: Origin,
        check: Check,
    ) {
        self.push_rule(QualityRule {
            id,
            column,
            dimension: Some(dimension.to_string()),
            severity: "error".into(),
            origin,
            check,
        });
    }

    /// Adds `rule`, making its id unique within the table (`#2`, `#3`, …).
    fn push_rule(&mut self, mut rule: QualityRule) {
        let n = self.seen.entry(rule.id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            rule.id = format!("{}#{n}", rule.id);
        }
        self.rules.push(rule);
    }

    fn declared(&mut self, q: &DataQuality, prop: Option<&SchemaProperty>) {
        let column = prop.map(|p| p.name.clone());
        let kind = q.kind.as_deref().unwrap_or("library").to_ascii_lowercase();
        let metric_name = q.metric.as_deref().or(q.rule.as_deref());
        let derived = match (&column, kind.as_str(), metric_name) {
            (Some(c), "library", Some(m)) => format!("{c}.{m}"),
            (None, "library", Some(m)) => m.to_string(),
            (Some(c), k, _) => format!("{c}.{k}"),
            (None, k, _) => k.to_string(),
        };
        let id = q.id.clone().or_else(|| q.name.clone()).unwrap_or(derived);
        let check = match kind.as_str() {
            "text" => Check::NotExecutable(
                "a `type: text` rule describes quality in words; nothing to run".into(),
            ),
            "custom" => Check::NotExecutable(format!(
                "runs on the `{}` engine, not on meshq",
                q.engine.as_deref().unwrap_or("unnamed")
            )),
            "sql" => match (&q.query, threshold_of(q)) {
                (Some(query), Ok(threshold)) => Check::Sql {
                    query: query.clone(),
                    threshold,
                },
                (None, _) => Check::Invalid("a `type: sql` rule needs a `query`".into()),
                (_, Err(e)) => Check::Invalid(e),
            },
            "library" => match metric_name {
                None => Check::Invalid("a library rule needs a `metric`".into()),
                Some(m) => match (library_metric(m, q, column.as_deref()), threshold_of(q)) {
                    (Ok(metric), Ok(threshold)) => Check::Metric {
                        metric,
                        unit: match q.unit.as_deref().map(str::to_ascii_lowercase).as_deref() {
                            Some("percent" | "percentage" | "%") => Unit::Percent,
                            _ => Unit::Rows,
                        },
                        threshold,
                    },
                    (Err(e), _) | (_, Err(e)) => Check::Invalid(e),
                },
            },
            other => Check::Invalid(format!(
                "unknown rule type `{other}` (use library, sql, text or custom)"
            )),
        };
        let unit_ok = match q.unit.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("rows" | "percent" | "percentage" | "%") => true,
            Some(_) => !matches!(check, Check::Metric { .. }),
        };
        let check = if unit_ok {
            check
        } else {
            Check::Invalid(format!(
                "unit `{}` is not supported; use rows or percent",
                q.unit.as_deref().unwrap_or_default()
            ))
        };
        self.push_rule(QualityRule {
            id,
            column,
            dimension: q.dimension.clone(),
            severity: q.severity.clone().unwrap_or_else(|| "error".into()),
            origin: Origin::Declared,
            check,
        });
    }

    fn implied(&mut self, p: &SchemaProperty) {
        let col = || p.name.clone();
        let zero = |metric| Check::Metric {
            metric,
            unit: Unit::Rows,
            threshold: Threshold::Be(0.0),
        };
        if p.required == Some(true) {
            self.push(
                format!("{}.required", p.name),
                Some(col()),
                "completeness",
                Origin::Schema,
                zero(Metric::NullValues(col())),
            );
        }
        if p.unique == Some(true) {
            self.push(
                format!("{}.unique", p.name),
                Some(col()),
                "uniqueness",
                Origin::Schema,
                zero(Metric::DuplicateValues(vec![col()])),
            );
        }
        let Some(opts) = &p.logical_type_options else {
            return;
        };
        self.bounds(p, opts);
    }

    fn bounds(&mut self, p: &SchemaProperty, o: &LogicalTypeOptions) {
        let col = || p.name.clone();
        let zero = |metric| Check::Metric {
            metric,
            unit: Unit::Rows,
            threshold: Threshold::Be(0.0),
        };
        for (bound, v) in [
            (Bound::Minimum, &o.minimum),
            (Bound::Maximum, &o.maximum),
            (Bound::ExclusiveMinimum, &o.exclusive_minimum),
            (Bound::ExclusiveMaximum, &o.exclusive_maximum),
        ] {
            let Some(v) = v else { continue };
            let check = match Literal::from_value(v) {
                Some(value) => zero(Metric::OutOfBound {
                    column: col(),
                    bound,
                    value,
                }),
                None => Check::Invalid(format!(
                    "logicalTypeOptions.{} must be a number or a string",
                    bound.key()
                )),
            };
            self.push(
                format!("{}.{}", p.name, bound.key()),
                Some(col()),
                "accuracy",
                Origin::Schema,
                check,
            );
        }
        if o.min_length.is_some() || o.max_length.is_some() {
            let id = match (o.min_length, o.max_length) {
                (Some(_), Some(_)) => "length",
                (Some(_), None) => "minLength",
                _ => "maxLength",
            };
            self.push(
                format!("{}.{id}", p.name),
                Some(col()),
                "conformity",
                Origin::Schema,
                zero(Metric::Length {
                    column: col(),
                    min: o.min_length,
                    max: o.max_length,
                }),
            );
        }
        if let Some(pattern) = &o.pattern {
            self.push(
                format!("{}.pattern", p.name),
                Some(col()),
                "conformity",
                Origin::Schema,
                zero(Metric::Pattern {
                    column: col(),
                    pattern: pattern.clone(),
                }),
            );
        }
        // Other formats (uuid, uri, …) are documentation to meshq.
        if o.format.as_deref().map(str::to_ascii_lowercase).as_deref() == Some("email") {
            self.push(
                format!("{}.format", p.name),
                Some(col()),
                "conformity",
                Origin::Schema,
                zero(Metric::Pattern {
                    column: col(),
                    pattern: EMAIL_PATTERN.into(),
                }),
            );
        }
    }
}

/// The library metric `name` of rule `q` declared on `column`.
fn library_metric(name: &str, q: &DataQuality, column: Option<&str>) -> Result<Metric, String> {
    let args = q.arguments.as_ref();
    let arg = |key: &str| args.and_then(|a| a.get(key));
    let literals = |key: &str| -> Result<Option<Vec<Literal>>, String> {
        match arg(key) {
            None => Ok(None),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    Literal::from_value(v)
                        .ok_or_else(|| format!("arguments.{key} must list numbers or strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("arguments.{key} must be a list")),
        }
    };
    let need_column = || {
        column
            .map(str::to_string)
            .ok_or_else(|| format!("metric `{name}` must be declared on a property (column)"))
    };
    match name {
        "nullValues" => Ok(Metric::NullValues(need_column()?)),
        "missingValues" => Ok(Metric::MissingValues {
            column: need_column()?,
            values: literals("missingValues")?.unwrap_or_default(),
        }),
        "invalidValues" => {
            let valid = literals("validValues")?;
            let pattern = match arg("pattern") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err("arguments.pattern must be a string".into()),
            };
            if valid.is_none() && pattern.is_none() {
                return Err(
                    "metric `invalidValues` needs arguments.validValues or arguments.pattern"
                        .into(),
                );
            }
            Ok(Metric::InvalidValues {
                column: need_column()?,
                valid,
                pattern,
            })
        }
        "duplicateValues" => match column {
            Some(c) => Ok(Metric::DuplicateValues(vec![c.to_string()])),
            None => match arg("properties") {
                Some(Value::Sequence(items)) if !items.is_empty() => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| "arguments.properties must list column names".into())
                    })
                    .collect::<Result<Vec<_>, String>>()
                    .map(Metric::DuplicateValues),
                _ => Err(
                    "metric `duplicateValues` at schema level needs arguments.properties (the columns)"
                        .into(),
                ),
            },
        },
        "rowCount" => match column {
            None => Ok(Metric::RowCount),
            Some(_) => Err("metric `rowCount` belongs on the schema object, not a property".into()),
        },
        other => Err(format!(
            "unknown metric `{other}` (ODCS 3.1 has nullValues, missingValues, invalidValues, duplicateValues, rowCount)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(yaml: &str) -> DataContract {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const HEAD: &str =
        "apiVersion: v3.1.0\nkind: DataContract\nid: c\nversion: 1.0.0\nstatus: active\n";

    fn rules(body: &str) -> Vec<QualityRule> {
        let c = contract(&format!("{HEAD}{body}"));
        rules_for(&c, &c.schema[0])
    }

    #[test]
    fn every_operator_passes_and_fails_where_it_should() {
        // (operator, passes at 5, fails at 6)
        let cases = [
            (Threshold::Be(5.0), true, false),
            (Threshold::NotBe(6.0), true, false),
            (Threshold::Gt(4.0), true, true),
            (Threshold::Ge(5.0), true, true),
            (Threshold::Lt(6.0), true, false),
            (Threshold::Le(5.0), true, false),
            (Threshold::Between(5.0, 5.5), true, false),
            (Threshold::NotBetween(5.5, 6.0), true, false),
        ];
        for (t, at5, at6) in cases {
            assert_eq!(t.passes(5.0), at5, "{t} at 5");
            assert_eq!(t.passes(6.0), at6, "{t} at 6");
        }
        // Both ends of a between are inside it.
        assert!(Threshold::Between(1.0, 2.0).passes(1.0));
        assert!(Threshold::Between(1.0, 2.0).passes(2.0));
        assert!(!Threshold::NotBetween(1.0, 2.0).passes(1.0));
        assert!(!Threshold::NotBetween(1.0, 2.0).passes(2.0));
    }

    #[test]
    fn declared_rules_get_ids_metrics_and_units() {
        let r = rules(
            "schema:\n  - name: t\n    quality:\n      - { metric: rowCount, mustBeGreaterThan: 0 }\n      - { metric: duplicateValues, arguments: { properties: [a, b] }, mustBe: 0, name: ab_unique }\n    properties:\n      - name: a\n        quality:\n          - { metric: nullValues, mustBeLessThan: 5, unit: percent, severity: warning }\n          - { metric: nullValues, mustBe: 0 }\n          - { type: sql, query: 'SELECT count(*) FROM {object}', mustBeBetween: [1, 10] }\n          - { type: custom, engine: soda, implementation: 'x' }\n          - { type: text, description: looks right }\n      - name: b\n",
        );
        let ids: Vec<_> = r.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "rowCount",
                "ab_unique",
                "a.nullValues",
                "a.nullValues#2",
                "a.sql",
                "a.custom",
                "a.text"
            ]
        );
        assert_eq!(
            r[1].check,
            Check::Metric {
                metric: Metric::DuplicateValues(vec!["a".into(), "b".into()]),
                unit: Unit::Rows,
                threshold: Threshold::Be(0.0)
            }
        );
        assert!(matches!(
            r[2].check,
            Check::Metric {
                unit: Unit::Percent,
                threshold: Threshold::Lt(5.0),
                ..
            }
        ));
        assert!(!r[2].is_error());
        assert!(r[3].is_error());
        assert!(matches!(r[5].check, Check::NotExecutable(ref m) if m.contains("soda")));
    }

    #[test]
    fn wrong_rules_are_kept_as_invalid_with_the_reason() {
        let r = rules(
            "schema:\n  - name: t\n    quality:\n      - { metric: nullValues, mustBe: 0 }\n      - { metric: rowCount }\n      - { metric: rowCount, mustBe: 1, mustNotBe: 2 }\n      - { metric: dupes, mustBe: 0 }\n      - { metric: rowCount, mustBeBetween: [5, 1] }\n    properties:\n      - name: a\n        quality:\n          - { metric: invalidValues, mustBe: 0 }\n          - { metric: nullValues, mustBe: 0, unit: bananas }\n",
        );
        let reasons: Vec<String> = r
            .iter()
            .map(|r| match &r.check {
                Check::Invalid(m) => m.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(reasons[0].contains("declared on a property"), "{reasons:?}");
        assert!(reasons[1].contains("no operator"));
        assert!(reasons[2].contains("more than one operator"));
        assert!(reasons[3].contains("unknown metric `dupes`"));
        assert!(reasons[4].contains("smaller number first"));
        assert!(reasons[5].contains("validValues or arguments.pattern"));
        assert!(reasons[6].contains("unit `bananas`"));
    }

    #[test]
    fn the_schema_implies_checks_and_the_sla_a_freshness_rule() {
        let r = rules(
            "schema:\n  - name: t\n    properties:\n      - { name: id, primaryKey: true, primaryKeyPosition: 2, required: true }\n      - { name: k, primaryKey: true, primaryKeyPosition: 1, unique: true }\n      - { name: n, logicalType: number, logicalTypeOptions: { minimum: 0, exclusiveMaximum: 10 } }\n      - { name: s, logicalType: string, logicalTypeOptions: { minLength: 2, pattern: '^[A-Z]+$', format: email } }\nslaProperties:\n  - { property: availability, value: 99.5, unit: percent }\n  - { property: latency, value: 4, unit: h, element: t.n }\n",
        );
        let ids: Vec<_> = r.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "id.required",
                "k.unique",
                "n.minimum",
                "n.exclusiveMaximum",
                "s.minLength",
                "s.pattern",
                "s.format",
                "primaryKey",
                "freshness"
            ]
        );
        assert_eq!(
            r[7].check,
            Check::Metric {
                metric: Metric::PrimaryKey(vec!["k".into(), "id".into()]),
                unit: Unit::Rows,
                threshold: Threshold::Be(0.0)
            }
        );
        assert_eq!(
            r[8].check,
            Check::Freshness {
                property: "latency".into(),
                column: Some("n".into()),
                max_age_secs: 4 * 3600,
                declared: "4 h".into()
            }
        );
        assert!(r.iter().all(|r| r.origin != Origin::Declared));
    }

    #[test]
    fn another_tables_sla_element_is_not_this_tables_freshness() {
        let r = rules(
            "schema:\n  - name: t\n    properties:\n      - { name: a }\nslaProperties:\n  - { property: latency, value: 1, unit: d, element: other.ts }\n",
        );
        assert!(r.is_empty(), "{r:?}");
        let r = rules(
            "schema:\n  - name: t\n    properties:\n      - { name: a }\nslaProperties:\n  - { property: frequency, value: 1, unit: d }\n",
        );
        assert!(matches!(
            &r[0].check,
            Check::Freshness { column: None, max_age_secs: 86_400, property, .. } if property == "frequency"
        ));
    }
}
