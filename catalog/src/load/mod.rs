//! Loading a mesh directory: find files by suffix, parse them, resolve every
//! product's output ports to tables, and collect every problem on the way.
//!
//! One bad file never stops the others: it is reported and skipped, and so
//! is whatever depends on it.

//! | file | step |
//! |---|---|
//! | `discover.rs` | find files by suffix, read and parse them (in parallel) |
//! | `parse.rs` | check each document on its own: header, ids, lint |
//! | `resolve.rs` | port → contract → server → location → table |
//! | `properties.rs` | the `customProperties` meshq reads (masks, filters, roles, snapshots) |

mod discover;
mod parse;
mod properties;
mod resolve;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mesh::Mesh;
use crate::odcs::DataContract;
use crate::odps::DataProduct;
use crate::problem::{Problem, display_path, line_of};
use crate::products::{ContractInfo, ProductInfo};

/// Suffix of ODPS product descriptors.
pub const PRODUCT_SUFFIX: &str = ".odps.yaml";
/// Suffix of ODCS contracts.
pub const CONTRACT_SUFFIX: &str = ".odcs.yaml";
/// Suffix of global policy sets.
pub const POLICY_SUFFIX: &str = ".policy.yaml";

/// SQL schema names a product's domain may not take: `public` is every
/// session's scratch schema (it would shadow the product), `meta` and
/// `information_schema` are served by meshq itself.
pub const RESERVED_DOMAINS: &[&str] = &["public", "meta", "information_schema"];

/// A loaded mesh and everything wrong with it.
#[derive(Debug)]
pub struct LoadOutcome {
    /// What could be loaded.
    pub mesh: Mesh,
    /// Every problem found, in file order.
    pub problems: Vec<Problem>,
}

/// Loads the mesh under `root`. Fails only when `root` itself is unusable;
/// everything else becomes a [`Problem`].
pub fn load_mesh(root: &Path) -> Result<LoadOutcome> {
    let meta = std::fs::metadata(root).map_err(|source| Error::MeshRoot {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::MeshRoot {
            path: root.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let root = root.canonicalize().map_err(|source| Error::MeshRoot {
        path: root.to_path_buf(),
        source,
    })?;
    let mut loader = Loader {
        root: root.clone(),
        problems: Vec::new(),
        catalogs: Vec::new(),
    };
    let files = discover::discover(&root, &mut loader.problems);
    let config = loader.load_platform();
    loader.catalogs = config.catalogs.keys().cloned().collect();
    let contracts = loader.load_contracts(&files.contracts);
    let products = loader.load_products(&files.products);
    let policy_sets = loader.load_policy_sets(&files.policies);
    let tables = loader.resolve_tables(&products, &contracts);
    loader.warn_unused_contracts(&products, &contracts);
    let mut infos: Vec<ProductInfo> = products
        .iter()
        .map(|p| ProductInfo::from_odps(&p.product, &p.file))
        .collect();
    loader.sql_inputs(&tables, &mut infos, &products);
    let mesh = Mesh {
        root,
        config,
        tables,
        policy_sets,
        products: infos.into_iter().map(Arc::new).collect(),
        contracts: contracts
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    Arc::new(ContractInfo::from_odcs(&c.contract, &c.file)),
                )
            })
            .collect(),
    };
    Ok(LoadOutcome {
        mesh,
        problems: loader.problems,
    })
}

/// A contract that parsed, with its file and text (for line numbers).
struct LoadedContract {
    contract: DataContract,
    file: PathBuf,
    text: String,
}

/// A product descriptor that parsed, with its file and text.
struct LoadedProduct {
    product: DataProduct,
    file: PathBuf,
    text: String,
}

/// The state of one load: the mesh root and the problems found so far.
/// Each step adds its methods in its own file.
struct Loader {
    root: PathBuf,
    problems: Vec<Problem>,
    /// Names of the Iceberg catalogs `meshq.yaml` declares.
    catalogs: Vec<String>,
}

impl Loader {
    fn rel(&self, path: &Path) -> PathBuf {
        display_path(&self.root, path)
    }

    fn error(&mut self, file: &Path, line: Option<usize>, msg: impl Into<String>) {
        let p = Problem::error(self.rel(file), msg).at_line(line);
        self.problems.push(p);
    }

    fn warn(&mut self, file: &Path, line: Option<usize>, msg: impl Into<String>) {
        let p = Problem::warning(self.rel(file), msg).at_line(line);
        self.problems.push(p);
    }
}

/// Lowercase ASCII identifier that SQL needs no quotes for.
pub fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Removes `.` and `..` components without touching the filesystem (the
/// path may not exist yet; that is reported when the table is opened).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl Loader {
    /// Adds to each product defined by SQL the inputs its statement reads
    /// (the mesh tables it names, by their contracts), so lineage shows
    /// them; a table read but not declared in `inputPorts`, or declared
    /// but not read, is a warning.
    fn sql_inputs(
        &mut self,
        tables: &[Arc<crate::mesh::TableDef>],
        infos: &mut [ProductInfo],
        products: &[LoadedProduct],
    ) {
        use sqlparser::dialect::GenericDialect;
        use sqlparser::parser::Parser;
        for t in tables {
            let crate::mesh::Location::Sql { query, .. } = &t.source.location else {
                continue;
            };
            // A statement that does not parse is reported when the
            // mesh is served.
            let Ok(statements) = Parser::parse_sql(&GenericDialect {}, query) else {
                continue;
            };
            let mut read: Vec<(String, String)> = Vec::new();
            for s in &statements {
                let _ = sqlparser::ast::visit_relations(s, |name| {
                    let parts: Vec<String> = name
                        .0
                        .iter()
                        .filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase()))
                        .collect();
                    let key = parts[parts.len().saturating_sub(2)..].join(".");
                    if let Some(input) = tables.iter().find(|d| d.qualified_name() == key)
                        && !read.iter().any(|(k, _)| *k == key)
                    {
                        read.push((key, input.contract_id.clone()));
                    }
                    std::ops::ControlFlow::<()>::Continue(())
                });
            }
            let Some(info) = infos.iter_mut().find(|p| p.id == t.product_id) else {
                continue;
            };
            let Some(lp) = products.iter().find(|p| p.product.id == t.product_id) else {
                continue;
            };
            for (table, contract) in &read {
                if !info.inputs.iter().any(|(_, c)| c == contract) {
                    self.warn(
                        &lp.file,
                        line_of(&lp.text, "inputPorts").or_else(|| line_of(&lp.text, "id:")),
                        format!(
                            "product `{}`: its SQL reads `{table}` (contract `{contract}`), which its inputPorts do not declare; lineage shows it from the SQL",
                            t.product_id
                        ),
                    );
                    info.inputs.push(("sql".to_string(), contract.clone()));
                }
            }
            let unread: Vec<String> = info
                .inputs
                .iter()
                .filter(|(_, c)| !read.iter().any(|(_, r)| r == c))
                .map(|(port, c)| format!("`{port}` ({c})"))
                .collect();
            for port in unread {
                self.warn(
                    &lp.file,
                    line_of(&lp.text, "inputPorts"),
                    format!(
                        "product `{}`: input port {port} is declared but its SQL does not read it",
                        t.product_id
                    ),
                );
            }
        }
    }
}
