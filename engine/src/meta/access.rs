//! "Explain my access": for one table and one caller, whether they may
//! read it and why, and the row filters and masks that apply to them.

use datafusion::logical_expr::Expr;
use meshq_catalog::Principal;

use crate::engine::Engine;
use crate::policy::governed::TableGovernance;
use crate::policy::rule::bind_principal;

/// A mask that applies to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskFact {
    /// The masked column.
    pub column: String,
    /// `hash`, `partial`, `redact`, …
    pub kind: String,
    /// `contract <file>`, or `policy <id> in <file>` for a global policy.
    pub source: String,
}

/// What one caller may do with one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Whether the caller may read it.
    pub readable: bool,
    /// Why: the role that grants read, the roles that would, or why nobody
    /// may.
    pub reason: String,
    /// Roles any of which grants read; `None` when every principal may.
    pub read_roles: Option<Vec<String>>,
    /// (id, SQL with the caller's own values) of each row filter that
    /// applies.
    pub row_filters: Vec<(String, String)>,
    /// Masks that apply to the caller (also for a table they may not read,
    /// so they know what they would see).
    pub masks: Vec<MaskFact>,
}

/// `principal`'s access to `table` (`domain.table`) on `engine`'s version;
/// `None` when the table is not served.
pub fn access_of(engine: &Engine, table: &str, principal: &Principal) -> Option<Access> {
    let governed = engine.tables().get(table)?;
    let served = engine.served_table(table)?;
    let policies = match &governed.governance {
        TableGovernance::Ready(p) => p,
        TableGovernance::Broken(e) => {
            return Some(Access {
                readable: false,
                reason: format!("its policies cannot be evaluated, so nobody may read it: {e}"),
                read_roles: None,
                row_filters: Vec::new(),
                masks: Vec::new(),
            });
        }
    };
    let (readable, reason) = match &policies.read_roles {
        None => (
            true,
            "no read roles: every principal may read it".to_string(),
        ),
        Some(roles) => match roles.iter().find(|r| principal.has_role(r)) {
            Some(r) => (true, format!("granted by role `{r}`")),
            None => (
                false,
                format!("needs one of the roles {}", quoted(roles).join(", ")),
            ),
        },
    };
    let contract = engine.mesh().display_path(&served.def.contract_file);
    let masks = policies
        .masks_for(principal)
        .map(|m| MaskFact {
            column: m.column.clone(),
            kind: m.kind.to_string(),
            source: match &m.global_policy {
                Some(id) => match engine
                    .mesh()
                    .policy_sets
                    .iter()
                    .find(|s| s.set.policies.iter().any(|p| &p.id == id))
                {
                    Some(set) => format!(
                        "policy `{id}` in {}",
                        engine.mesh().display_path(&set.file).display()
                    ),
                    None => format!("policy `{id}`"),
                },
                None => format!("contract {}", contract.display()),
            },
        })
        .collect();
    let row_filters = policies
        .filters_for(principal)
        .map(|f| (f.id.clone(), filter_sql(&f.expr, principal)))
        .collect();
    Some(Access {
        readable,
        reason,
        read_roles: policies.read_roles.clone(),
        row_filters,
        masks,
    })
}

/// A row filter as SQL, with the principal functions replaced by the
/// caller's own values.
fn filter_sql(expr: &Expr, principal: &Principal) -> String {
    let bound = bind_principal(expr.clone(), principal)
        .map(|t| t.data)
        .unwrap_or_else(|_| expr.clone());
    let sql = match datafusion::sql::unparser::expr_to_sql(&bound) {
        Ok(sql) => sql.to_string(),
        Err(_) => return bound.to_string(),
    };
    // The unparser wraps a binary expression in parentheses.
    match sql.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
        Some(inner) if balanced(inner) => inner.to_string(),
        _ => sql,
    }
}

/// Whether every parenthesis in `s` closes one opened before it.
fn balanced(s: &str) -> bool {
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

fn quoted(roles: &[String]) -> Vec<String> {
    roles.iter().map(|r| format!("`{r}`")).collect()
}
