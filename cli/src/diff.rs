//! `meshq diff OLD NEW`: what a change to a mesh means for its consumers.
//!
//! Every change is classified per product:
//! - **breaking**: a table or column removed (or renamed, which is both a
//!   removal and an addition), a type changed to one the old values cannot
//!   be cast to without loss, a product's domain changed;
//! - **policy**: a mask removed or changed, `exceptRoles` or `readRoles`
//!   widened, a row filter removed or changed, a classification removed or
//!   changed, a global policy removed or changed: governance must review;
//! - **compatible**: tables and columns added, descriptions, quality rules.
//!
//! A breaking change to a table whose contract's major version did not go
//! up is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use meshq_catalog::odcs::LogicalType;
use meshq_catalog::{ColumnDef, Mesh, TableDef};
use serde_json::{Value, json};

/// How a change affects consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Impact {
    /// Consumers' queries may break.
    Breaking,
    /// What someone may see changes: needs governance review.
    Policy,
    /// Nothing a consumer relies on changes.
    Compatible,
}

impl Impact {
    /// `breaking`, `policy` or `compatible`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Breaking => "breaking",
            Self::Policy => "policy",
            Self::Compatible => "compatible",
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The product it concerns (its id), or `mesh` for global policy sets.
    pub product: String,
    /// The table (`domain.table`), when it concerns one.
    pub table: Option<String>,
    /// How it affects consumers.
    pub impact: Impact,
    /// What changed.
    pub message: String,
    /// A breaking change whose contract's major version did not go up.
    pub error: bool,
}

/// The changes from `old` to `new`, products in id order.
pub fn diff(old: &Mesh, new: &Mesh) -> Vec<Change> {
    let mut out = Vec::new();
    let old_products: BTreeMap<&str, _> = old.products.iter().map(|p| (p.id.as_str(), p)).collect();
    let new_products: BTreeMap<&str, _> = new.products.iter().map(|p| (p.id.as_str(), p)).collect();
    for (id, op) in &old_products {
        let mut push = |table: Option<String>, impact, message: String| {
            out.push(Change {
                product: id.to_string(),
                table,
                impact,
                message,
                error: false,
            })
        };
        let Some(np) = new_products.get(id) else {
            push(None, Impact::Breaking, "product removed".into());
            continue;
        };
        if op.domain != np.domain {
            push(
                None,
                Impact::Breaking,
                format!(
                    "domain changed from `{}` to `{}`: every table's name changes",
                    op.domain, np.domain
                ),
            );
        }
    }
    for id in new_products.keys() {
        if !old_products.contains_key(id) {
            out.push(Change {
                product: id.to_string(),
                table: None,
                impact: Impact::Compatible,
                message: "product added".into(),
                error: false,
            });
        }
    }
    // Tables by product and table name (a domain change is reported
    // above; the table still pairs up).
    let key = |t: &TableDef| (t.product_id.clone(), t.name.clone());
    let old_tables: BTreeMap<_, _> = old.tables.iter().map(|t| (key(t), t)).collect();
    let new_tables: BTreeMap<_, _> = new.tables.iter().map(|t| (key(t), t)).collect();
    for (k, ot) in &old_tables {
        match new_tables.get(k) {
            None => {
                if new_products.contains_key(k.0.as_str()) {
                    out.push(table_change(
                        ot,
                        Impact::Breaking,
                        "table removed (or renamed)".into(),
                    ));
                }
            }
            Some(nt) => {
                let mut changes = table_changes(ot, nt);
                let bumped = major(&contract_version(old, ot)) < major(&contract_version(new, nt));
                for c in &mut changes {
                    c.error = c.impact == Impact::Breaking && !bumped;
                }
                out.extend(changes);
            }
        }
    }
    for (k, nt) in &new_tables {
        if !old_tables.contains_key(k) {
            out.push(table_change(nt, Impact::Compatible, "table added".into()));
        }
    }
    // A product or table removed is breaking whatever the version says:
    // nothing is left to bump.
    for c in &mut out {
        if c.impact == Impact::Breaking && c.table.is_none() {
            c.error = true;
        }
        if c.impact == Impact::Breaking && c.message.starts_with("table removed") {
            c.error = true;
        }
    }
    out.extend(policy_set_changes(old, new));
    out.sort_by(|a, b| (&a.product, &a.table, a.impact).cmp(&(&b.product, &b.table, b.impact)));
    out
}

fn contract_version(mesh: &Mesh, t: &TableDef) -> String {
    mesh.contracts
        .get(&t.contract_id)
        .map(|c| c.version.clone())
        .unwrap_or_default()
}

/// The major version of `v` (`2.1.0` → 2, `v3` → 3); 0 when unreadable.
fn major(v: &str) -> u64 {
    v.trim()
        .trim_start_matches(['v', 'V'])
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn table_change(t: &TableDef, impact: Impact, message: String) -> Change {
    Change {
        product: t.product_id.clone(),
        table: Some(t.qualified_name()),
        impact,
        message,
        error: false,
    }
}

fn roles_widened(old: &[String], new: &[String]) -> Vec<String> {
    let old: BTreeSet<&String> = old.iter().collect();
    new.iter().filter(|r| !old.contains(r)).cloned().collect()
}

fn table_changes(ot: &TableDef, nt: &TableDef) -> Vec<Change> {
    let mut out = Vec::new();
    let mut push = |impact, message: String| out.push(table_change(nt, impact, message));
    let old_cols: BTreeMap<&str, &ColumnDef> =
        ot.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_cols: BTreeMap<&str, &ColumnDef> =
        nt.columns.iter().map(|c| (c.name.as_str(), c)).collect();
    for (name, oc) in &old_cols {
        let Some(nc) = new_cols.get(name) else {
            push(
                Impact::Breaking,
                format!("column `{name}` removed (or renamed)"),
            );
            continue;
        };
        if let Some(why) = type_change(oc, nc) {
            push(why.0, format!("column `{name}`: {}", why.1));
        }
        if oc.classification.is_some() && oc.classification != nc.classification {
            push(
                Impact::Policy,
                format!(
                    "column `{name}`: classification `{}` {}",
                    oc.classification.as_deref().unwrap_or_default(),
                    match &nc.classification {
                        Some(c) => format!("changed to `{c}`"),
                        None => "removed".into(),
                    }
                ),
            );
        }
        let removed_tags: Vec<_> = oc.tags.iter().filter(|t| !nc.tags.contains(t)).collect();
        if !removed_tags.is_empty() {
            push(
                Impact::Policy,
                format!(
                    "column `{name}`: tags removed: {removed_tags:?} (global policies match tags)"
                ),
            );
        }
        match (&oc.mask, &nc.mask) {
            (Some(m), None) => push(
                Impact::Policy,
                format!("column `{name}`: mask `{}` removed", m.kind_name()),
            ),
            (Some(a), Some(b)) if a != b => {
                let widened = roles_widened(a.except_roles(), b.except_roles());
                push(
                    Impact::Policy,
                    if a.kind_name() != b.kind_name() {
                        format!(
                            "column `{name}`: mask changed from `{}` to `{}`",
                            a.kind_name(),
                            b.kind_name()
                        )
                    } else if !widened.is_empty() {
                        format!("column `{name}`: mask exceptRoles widened by {widened:?}")
                    } else {
                        format!("column `{name}`: mask `{}` changed", b.kind_name())
                    },
                )
            }
            (None, Some(m)) => push(
                Impact::Compatible,
                format!("column `{name}`: mask `{}` added", m.kind_name()),
            ),
            _ => {}
        }
        if oc.description != nc.description {
            push(
                Impact::Compatible,
                format!("column `{name}`: description changed"),
            );
        }
    }
    for name in new_cols.keys() {
        if !old_cols.contains_key(name) {
            push(Impact::Compatible, format!("column `{name}` added"));
        }
    }
    match (&ot.policy.read_roles, &nt.policy.read_roles) {
        (Some(_), None) => push(
            Impact::Policy,
            "readRoles removed: every principal may now read it".into(),
        ),
        (Some(a), Some(b)) => {
            let widened = roles_widened(a, b);
            if !widened.is_empty() {
                push(Impact::Policy, format!("readRoles widened by {widened:?}"));
            }
        }
        _ => {}
    }
    let new_filters: BTreeMap<&str, _> = nt
        .policy
        .row_filters
        .iter()
        .map(|f| (f.id.as_str(), f))
        .collect();
    for f in &ot.policy.row_filters {
        match new_filters.get(f.id.as_str()) {
            None => push(Impact::Policy, format!("row filter `{}` removed", f.id)),
            Some(n) if *n != f => {
                let widened = roles_widened(&f.except_roles, &n.except_roles);
                push(
                    Impact::Policy,
                    if n.expression != f.expression {
                        format!(
                            "row filter `{}` changed from `{}` to `{}`",
                            f.id, f.expression, n.expression
                        )
                    } else if !widened.is_empty() {
                        format!("row filter `{}`: exceptRoles widened by {widened:?}", f.id)
                    } else {
                        format!("row filter `{}` changed", f.id)
                    },
                )
            }
            _ => {}
        }
    }
    if ot.description != nt.description {
        push(Impact::Compatible, "description changed".into());
    }
    if ot.quality != nt.quality {
        push(Impact::Compatible, "quality rules changed".into());
    }
    out
}

/// Integer widths in bytes by SQL/Spark name.
fn int_width(t: &str) -> Option<u8> {
    Some(match t {
        "TINYINT" | "BYTE" | "INT8" => 1,
        "SMALLINT" | "SHORT" | "INT16" => 2,
        "INT" | "INTEGER" | "INT32" => 4,
        "BIGINT" | "LONG" | "INT64" => 8,
        _ => return None,
    })
}

fn decimal(t: &str) -> Option<(u32, u32)> {
    let inner = t
        .strip_prefix("DECIMAL(")
        .or_else(|| t.strip_prefix("NUMERIC("))?
        .strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
}

fn is_text(t: &str) -> bool {
    matches!(t, "STRING" | "VARCHAR" | "TEXT") || t.starts_with("VARCHAR(")
}

/// Whether every value of physical type `old` fits `new` unchanged.
fn lossless(old: &str, new: &str) -> bool {
    if old == new || is_text(new) && !new.starts_with("VARCHAR(") {
        return true;
    }
    if let (Some(a), Some(b)) = (int_width(old), int_width(new)) {
        return a <= b;
    }
    if let (Some(w), Some((p, s))) = (int_width(old), decimal(new)) {
        let digits = [3, 5, 10, 19][w.trailing_zeros() as usize];
        return p - s >= digits;
    }
    if let (Some(w), true) = (int_width(old), matches!(new, "DOUBLE" | "FLOAT64")) {
        return w <= 4;
    }
    if let (Some((p1, s1)), Some((p2, s2))) = (decimal(old), decimal(new)) {
        return s2 >= s1 && p2 - s2 >= p1 - s1;
    }
    matches!(
        (old, new),
        ("FLOAT" | "REAL" | "FLOAT32", "DOUBLE" | "FLOAT64")
            | ("DATE", "TIMESTAMP" | "TIMESTAMP_NTZ")
    )
}

fn logical_lossless(old: LogicalType, new: LogicalType) -> bool {
    old == new
        || new == LogicalType::String
        || matches!(
            (old, new),
            (LogicalType::Integer, LogicalType::Number)
                | (LogicalType::Date, LogicalType::Timestamp)
        )
}

fn type_change(oc: &ColumnDef, nc: &ColumnDef) -> Option<(Impact, String)> {
    let norm = |t: &Option<String>| {
        t.as_deref()
            .map(|s| s.trim().to_ascii_uppercase().replace(' ', ""))
    };
    let (op, np) = (norm(&oc.physical_type), norm(&nc.physical_type));
    if let (Some(o), Some(n)) = (&op, &np)
        && o != n
    {
        let impact = if lossless(o, n) {
            Impact::Compatible
        } else {
            Impact::Breaking
        };
        return Some((
            impact,
            format!(
                "physicalType {} → {}{}",
                oc.physical_type.as_deref().unwrap_or_default(),
                nc.physical_type.as_deref().unwrap_or_default(),
                if impact == Impact::Breaking {
                    " (not castable without loss)"
                } else {
                    " (widened)"
                }
            ),
        ));
    }
    match (oc.logical_type, nc.logical_type) {
        (Some(o), Some(n)) if o != n => Some(if logical_lossless(o, n) {
            (
                Impact::Compatible,
                format!("logicalType {o} → {n} (widened)"),
            )
        } else {
            (
                Impact::Breaking,
                format!("logicalType {o} → {n} (not castable without loss)"),
            )
        }),
        _ => None,
    }
}

fn policy_set_changes(old: &Mesh, new: &Mesh) -> Vec<Change> {
    let index = |m: &Mesh| -> BTreeMap<String, String> {
        m.policy_sets
            .iter()
            .flat_map(|s| {
                s.set
                    .policies
                    .iter()
                    .map(|p| (p.id.clone(), format!("{p:?}")))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (a, b) = (index(old), index(new));
    let mut out = Vec::new();
    for (id, text) in &a {
        let message = match b.get(id) {
            None => format!("global policy `{id}` removed"),
            Some(t) if t != text => format!("global policy `{id}` changed"),
            _ => continue,
        };
        out.push(Change {
            product: "mesh".into(),
            table: None,
            impact: Impact::Policy,
            message,
            error: false,
        });
    }
    out
}

/// The report for people.
pub fn to_text(changes: &[Change]) -> String {
    let mut s = String::new();
    let mut last: Option<&str> = None;
    for c in changes {
        if last != Some(c.product.as_str()) {
            let _ = writeln!(s, "{}", c.product);
            last = Some(&c.product);
        }
        let _ = writeln!(
            s,
            "  {:<10} {}{}{}",
            c.impact.label(),
            c.table
                .as_deref()
                .map(|t| format!("{t}: "))
                .unwrap_or_default(),
            c.message,
            if c.error {
                "  [error: breaking without a major version bump of the contract]"
            } else {
                ""
            }
        );
    }
    let count = |i| changes.iter().filter(|c| c.impact == i).count();
    let _ = writeln!(
        s,
        "{} breaking ({} without a major version bump), {} policy-relevant, {} compatible change(s)",
        count(Impact::Breaking),
        changes.iter().filter(|c| c.error).count(),
        count(Impact::Policy),
        count(Impact::Compatible)
    );
    s
}

/// The report for bots.
pub fn to_json(changes: &[Change]) -> Value {
    json!({
        "changes": changes.iter().map(|c| json!({
            "product": c.product,
            "table": c.table,
            "impact": c.impact.label(),
            "message": c.message,
            "error": c.error,
        })).collect::<Vec<_>>(),
        "errors": changes.iter().filter(|c| c.error).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_lossless_and_narrowing_is_not() {
        for (old, new, ok) in [
            ("INT", "BIGINT", true),
            ("BIGINT", "INT", false),
            ("INT", "DECIMAL(12,2)", true),
            ("BIGINT", "DECIMAL(12,2)", false),
            ("DECIMAL(12,2)", "DECIMAL(14,2)", true),
            ("DECIMAL(12,2)", "DECIMAL(12,3)", false),
            ("DECIMAL(12,2)", "DECIMAL(11,2)", false),
            ("FLOAT", "DOUBLE", true),
            ("DOUBLE", "FLOAT", false),
            ("DATE", "TIMESTAMP", true),
            ("TIMESTAMP", "DATE", false),
            ("INT", "STRING", true),
            ("STRING", "INT", false),
            ("INT", "DOUBLE", true),
            ("BIGINT", "DOUBLE", false),
        ] {
            assert_eq!(lossless(old, new), ok, "{old} → {new}");
        }
    }

    #[test]
    fn major_versions() {
        assert_eq!(major("2.1.0"), 2);
        assert_eq!(major("v3"), 3);
        assert_eq!(major("draft"), 0);
    }
}
