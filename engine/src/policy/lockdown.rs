//! Which statements a principal may run. Everyone may query; only the admin
//! role may change anything or look beneath the policies.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement};

use super::error::PolicyError;

/// Refuses, for a non-admin: DDL (tables, views, external tables, schemas,
/// functions), DML, `COPY`, `SET`/`RESET` and other session statements, and
/// `EXPLAIN VERBOSE`/`EXPLAIN ANALYZE` (they print file statistics and row
/// counts from beneath the policies).
///
/// For everyone, admins included: `CREATE EXTERNAL TABLE` over, and `COPY`
/// into, the files of a mesh table (`protected`: table name and location),
/// which would read it around its policies or write under it.
pub fn check_statement(
    plan: &LogicalPlan,
    is_admin: bool,
    admin_role: &str,
    protected: &[(String, String)],
) -> Result<()> {
    check_locations(plan, protected)?;
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

fn check_locations(plan: &LogicalPlan, protected: &[(String, String)]) -> Result<()> {
    let refuse = |what: &str, location: &str| -> Result<TreeNodeRecursion> {
        let target = normalize_location(location);
        match protected
            .iter()
            .find(|(_, loc)| overlaps(&normalize_location(loc), &target))
        {
            Some((table, _)) => Err(PolicyError::ProtectedLocation {
                what: what.to_string(),
                location: location.to_string(),
                table: table.clone(),
            }
            .into()),
            None => Ok(TreeNodeRecursion::Continue),
        }
    };
    plan.apply_with_subqueries(|node| match node {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(t)) => {
            for l in &t.locations {
                refuse("CREATE EXTERNAL TABLE", l)?;
            }
            Ok(TreeNodeRecursion::Continue)
        }
        LogicalPlan::Copy(c) => refuse("COPY", &c.output_url),
        _ => Ok(TreeNodeRecursion::Continue),
    })
    .map(|_| ())
}

/// A location as a comparable string: local paths absolute and without
/// `.`/`..`, no `file://`, no trailing slash, cut before the first glob.
fn normalize_location(location: &str) -> String {
    let cut = location.find(['*', '?', '[']).unwrap_or(location.len());
    let location = &location[..cut];
    let location = location.strip_prefix("file://").unwrap_or(location);
    if location.contains("://") {
        return location.trim_end_matches('/').to_string();
    }
    let path = std::path::Path::new(location);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = std::path::PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.to_string_lossy().trim_end_matches('/').to_string()
}

/// One location inside the other (or equal).
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
    !a.is_empty() && !b.is_empty() && (inside(a, b) || inside(b, a))
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

    #[test]
    fn locations_overlap_by_path_prefix() {
        use super::{normalize_location, overlaps};
        let table = normalize_location("/mesh/sales/data/orders");
        assert!(overlaps(
            &table,
            &normalize_location("file:///mesh/sales/data/orders/")
        ));
        assert!(overlaps(
            &table,
            &normalize_location("/mesh/sales/data/orders/order_date=2026-10-01/x.parquet")
        ));
        assert!(overlaps(
            &table,
            &normalize_location("/mesh/sales/../sales/data/*.parquet")
        ));
        assert!(overlaps(&table, &normalize_location("/mesh")));
        assert!(!overlaps(
            &table,
            &normalize_location("/mesh/sales/data/orders2")
        ));
        assert!(!overlaps(&table, &normalize_location("/tmp/out.csv")));
        assert!(overlaps(
            &normalize_location("s3://lake/sales/orders/"),
            &normalize_location("s3://lake/sales/orders/part-0.parquet")
        ));
    }
}
