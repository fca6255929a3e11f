//! Which statements a principal may run. Everyone may query; only the admin
//! role may change anything or look beneath the policies.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::logical_expr::{LogicalPlan, Statement};

use super::error::PolicyError;

/// Refuses, for a non-admin: DDL (tables, views, external tables, schemas,
/// functions), DML, `COPY`, `SET`/`RESET` and other session statements, and
/// `EXPLAIN VERBOSE`/`EXPLAIN ANALYZE` (they print file statistics and row
/// counts from beneath the policies). Where admins may read and write files
/// is [`crate::files`]'s business.
pub fn check_statement(plan: &LogicalPlan, is_admin: bool, admin_role: &str) -> Result<()> {
    if is_admin {
        return Ok(());
    }
    let deny = |what: String| -> Result<TreeNodeRecursion> {
        Err(PolicyError::Lockdown {
            what,
            admin_role: admin_role.to_string(),
        }
        .into())
    };
    plan.apply_with_subqueries(|node| match node {
        LogicalPlan::Ddl(ddl) => deny(statement_words(ddl.name())),
        LogicalPlan::Dml(dml) => deny(dml.op.to_string().to_uppercase()),
        LogicalPlan::Copy(_) => deny("COPY".into()),
        LogicalPlan::Statement(
            Statement::Prepare(_) | Statement::Execute(_) | Statement::Deallocate(_),
        ) => Ok(TreeNodeRecursion::Continue),
        LogicalPlan::Statement(s) => deny(statement_words(s.name())),
        LogicalPlan::Explain(e) if e.verbose => deny("EXPLAIN VERBOSE".into()),
        LogicalPlan::Analyze(_) => deny("EXPLAIN ANALYZE".into()),
        _ => Ok(TreeNodeRecursion::Continue),
    })
    .map(|_| ())
}

/// `CreateMemoryTable` → `CREATE TABLE`, `SetVariable` → `SET`: statement
/// names as users type them.
fn statement_words(name: &str) -> String {
    let mut words = String::new();
    for (i, c) in name.char_indices() {
        if i > 0 && c.is_ascii_uppercase() {
            words.push(' ');
        }
        words.push(c.to_ascii_uppercase());
    }
    match words.as_str() {
        "CREATE MEMORY TABLE" => "CREATE TABLE".into(),
        "SET VARIABLE" => "SET".into(),
        "RESET VARIABLE" => "RESET".into(),
        _ => words,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn statement_words() {
        assert_eq!(super::statement_words("CreateView"), "CREATE VIEW");
        assert_eq!(super::statement_words("CreateMemoryTable"), "CREATE TABLE");
        assert_eq!(super::statement_words("SetVariable"), "SET");
        assert_eq!(super::statement_words("DropTable"), "DROP TABLE");
    }
}
