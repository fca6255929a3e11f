//! The organisation's Rego policies over the mesh (`governance/*.rego`),
//! evaluated by `meshq validate` with regorus, once per product.
//!
//! Each policy sees `input`:
//!
//! ```json
//! {
//!   "product_file": "sales/orders.odps.yaml",
//!   "product":   { ...the ODPS descriptor as written... },
//!   "contracts": [ { ...each ODCS contract its output ports name... } ],
//!   "tables": [ {
//!     "name": "sales.orders", "contract_id": "...",
//!     "columns": [ { "name": "email", "classification": "pii", "tags": [],
//!                    "masked_by": [ { "kind": "partial", "source": "contract" },
//!                                   { "kind": "hash", "source": "policy",
//!                                     "policy": "pii-hash", "file": "governance/pii.policy.yaml" } ] } ]
//!   } ]
//! }
//! ```
//!
//! and reports through `deny` (errors) and `warn` (warnings): sets of
//! messages, in either syntax (`deny[msg] { … }` or `deny contains msg if
//! { … }`).

use std::path::{Path, PathBuf};

use meshq_catalog::{Mesh, Problem};
use serde_json::{Value, json};

/// Where the policies live, under the mesh root.
pub const GOVERNANCE_DIR: &str = "governance";

/// A parsed policy file.
struct Policy {
    file: PathBuf,
    package: String,
    engine: regorus::Engine,
    /// Which of `deny` and `warn` it declares.
    rules: Vec<(&'static str, bool)>,
}

/// The `*.rego` files of `root`'s governance directory, sorted.
fn policy_files(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join(GOVERNANCE_DIR)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rego"))
        .collect();
    files.sort();
    files
}

/// Parses `text` as Rego v1, or as v0 (`deny[msg] { … }`) when it uses
/// none of v1's keywords.
fn parse(name: &str, text: &str) -> Result<(regorus::Engine, String), String> {
    let attempt = |v0: bool| {
        let mut engine = regorus::Engine::new();
        engine.set_rego_v0(v0);
        engine
            .add_policy(name.to_string(), text.to_string())
            .map(|package| (engine, package))
            .map_err(|e| e.to_string())
    };
    let v1_keywords = text.contains("import rego.v1")
        || text.contains(" if ")
        || text.contains(" if{")
        || text.contains(" contains ");
    match attempt(false) {
        Ok(ok) => Ok(ok),
        Err(e) if v1_keywords => Err(e),
        Err(_) => attempt(true),
    }
}

/// The line and the message of a regorus parse error
/// (`--> file:LINE:COL` … `error: MESSAGE`).
fn parse_error(e: &str) -> (Option<usize>, String) {
    let line = e.lines().find_map(|l| {
        let at = l.trim_start().strip_prefix("--> ")?;
        let mut parts = at.rsplitn(3, ':');
        let _col = parts.next()?;
        parts.next()?.parse().ok()
    });
    let message = e
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or(e.trim())
        .to_string();
    (line, message)
}

fn yaml_file_as_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| e.to_string())?;
    serde_json::to_value(yaml).map_err(|e| e.to_string())
}

/// The `input` document of one product (see the module docs).
pub fn input_for(mesh: &Mesh, product: &meshq_catalog::ProductInfo) -> Result<Value, String> {
    let doc = yaml_file_as_json(&product.file)?;
    let mut contracts = Vec::new();
    for id in &product.outputs {
        if let Some(c) = mesh.contracts.get(id) {
            contracts.push(yaml_file_as_json(&c.file)?);
        }
    }
    let tables: Vec<Value> = mesh
        .tables
        .iter()
        .filter(|t| t.product_id == product.id)
        .map(|t| {
            let columns: Vec<Value> = t
                .columns
                .iter()
                .map(|c| {
                    let mut masked_by = Vec::new();
                    if let Some(m) = &c.mask {
                        masked_by.push(json!({ "kind": m.kind_name(), "source": "contract" }));
                    }
                    for set in &mesh.policy_sets {
                        for p in &set.set.policies {
                            if p.matcher.matches(c.classification.as_deref(), &c.tags) {
                                masked_by.push(json!({
                                    "kind": p.mask.kind_name(),
                                    "source": "policy",
                                    "policy": p.id,
                                    "file": mesh.display_path(&set.file),
                                }));
                            }
                        }
                    }
                    json!({
                        "name": c.name,
                        "classification": c.classification,
                        "tags": c.tags,
                        "masked_by": masked_by,
                    })
                })
                .collect();
            json!({
                "name": t.qualified_name(),
                "contract_id": t.contract_id,
                "columns": columns,
            })
        })
        .collect();
    Ok(json!({
        "product_file": mesh.display_path(&product.file),
        "product": doc,
        "contracts": contracts,
        "tables": tables,
    }))
}

/// The messages of rule `rule` (a set or array of strings; undefined is
/// none).
fn messages(
    engine: &mut regorus::Engine,
    package: &str,
    rule: &str,
) -> Result<Vec<String>, String> {
    let value = engine
        .eval_rule(format!("{package}.{rule}"))
        .map_err(|e| e.to_string())?;
    let items: Vec<regorus::Value> = match &value {
        regorus::Value::Undefined => Vec::new(),
        regorus::Value::Set(s) => s.iter().cloned().collect(),
        regorus::Value::Array(a) => a.iter().cloned().collect(),
        other => {
            return Err(format!(
                "`{rule}` must be a set of messages, it is {}",
                other.to_json_str().unwrap_or_default()
            ));
        }
    };
    Ok(items
        .into_iter()
        .map(|v| match v.as_string() {
            Ok(s) => s.to_string(),
            Err(_) => v.to_json_str().unwrap_or_default(),
        })
        .collect())
}

/// Every policy's `deny` (errors) and `warn` (warnings) over every product,
/// each reported against the product's file; a policy that does not parse
/// or evaluate is an error against the policy file.
pub fn evaluate(mesh: &Mesh) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut policies = Vec::new();
    for file in policy_files(&mesh.root) {
        let shown = mesh.display_path(&file);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::error(shown, format!("cannot read: {e}")));
                continue;
            }
        };
        match parse(&shown.display().to_string(), &text) {
            Ok((engine, package)) => {
                let name = shown.display().to_string();
                let rules: Vec<(&'static str, bool)> = [("deny", true), ("warn", false)]
                    .into_iter()
                    .filter(|(r, _)| {
                        engine
                            .has_declared_rule_rooted_at(&name, r)
                            .unwrap_or(false)
                    })
                    .collect();
                if rules.is_empty() {
                    problems.push(Problem::warning(
                        shown,
                        "declares neither `deny` nor `warn`; it checks nothing",
                    ));
                    continue;
                }
                policies.push(Policy {
                    file: shown,
                    package,
                    engine,
                    rules,
                })
            }
            Err(e) => {
                let (line, message) = parse_error(&e);
                problems.push(
                    Problem::error(shown, format!("Rego policy does not parse: {message}"))
                        .at_line(line),
                );
            }
        }
    }
    if policies.is_empty() {
        return problems;
    }
    for product in &mesh.products {
        let shown = mesh.display_path(&product.file);
        let input = input_for(mesh, product).and_then(|doc| {
            regorus::Value::from_json_str(&doc.to_string()).map_err(|e| e.to_string())
        });
        let input = match input {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem::error(
                    shown,
                    format!("cannot build the Rego input: {e}"),
                ));
                continue;
            }
        };
        for policy in &mut policies {
            policy.engine.set_input(input.clone());
            for (rule, error) in policy.rules.clone() {
                match messages(&mut policy.engine, &policy.package, rule) {
                    Ok(msgs) => {
                        for m in msgs {
                            let text = format!("{} ({}): {m}", policy.file.display(), rule);
                            problems.push(if error {
                                Problem::error(shown.clone(), text)
                            } else {
                                Problem::warning(shown.clone(), text)
                            });
                        }
                    }
                    Err(e) => problems.push(Problem::error(
                        policy.file.clone(),
                        format!("evaluating `{rule}` for product `{}`: {e}", product.id),
                    )),
                }
            }
        }
    }
    problems
}
