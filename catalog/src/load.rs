//! Loading a mesh directory: find files by suffix, parse them, resolve every
//! product's output ports to tables, and collect every problem on the way.
//!
//! One bad file never stops the others: it is reported and skipped, and so
//! is whatever depends on it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{CustomProperty, find_custom};
use crate::error::{Error, Result};
use crate::mesh::{
    ColumnDef, Format, IcebergSource, LoadedPolicySet, Location, Mesh, TableDef, TablePolicy,
    TableSource,
};
use crate::odcs::{DataContract, ODCS_API_VERSIONS, SchemaObject, Server};
use crate::odps::{DataProduct, ODPS_API_VERSIONS, OutputPort};
use crate::platform::{PLATFORM_FILE, PlatformConfig};
use crate::policy::{MaskSpec, POLICY_SET_API_VERSIONS, PolicySet, RowFilterSpec};
use crate::problem::{Problem, display_path, line_of};
use crate::yaml;

/// Suffix of ODPS product descriptors.
pub const PRODUCT_SUFFIX: &str = ".odps.yaml";
/// Suffix of ODCS contracts.
pub const CONTRACT_SUFFIX: &str = ".odcs.yaml";
/// Suffix of global policy sets.
pub const POLICY_SUFFIX: &str = ".policy.yaml";

/// Custom property names meshq reads, and where they belong.
const MASK: &str = "mask";
const ROW_FILTERS: &str = "rowFilters";
const READ_ROLES: &str = "readRoles";

/// A loaded mesh and everything wrong with it.
#[derive(Debug)]
pub struct LoadOutcome {
    /// What could be loaded.
    pub mesh: Mesh,
    /// Every problem found, in file order.
    pub problems: Vec<Problem>,
}

impl LoadOutcome {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }
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
    let files = discover(&root, &mut loader.problems);
    let config = loader.load_platform();
    loader.catalogs = config.catalogs.keys().cloned().collect();
    let contracts = loader.load_contracts(&files.contracts);
    let products = loader.load_products(&files.products);
    let policy_sets = loader.load_policy_sets(&files.policies);
    let tables = loader.resolve_tables(&products, &contracts);
    loader.warn_unused_contracts(&products, &contracts);
    let mesh = Mesh {
        root,
        config,
        tables,
        policy_sets,
    };
    Ok(LoadOutcome {
        mesh,
        problems: loader.problems,
    })
}

#[derive(Default)]
struct Files {
    products: Vec<PathBuf>,
    contracts: Vec<PathBuf>,
    policies: Vec<PathBuf>,
}

/// Walks the tree in sorted order, skipping hidden folders and the insides
/// of table folders (`_delta_log`, data files), which hold no descriptors.
fn discover(root: &Path, problems: &mut Vec<Problem>) -> Files {
    let mut files = Files::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(Problem::warning(
                    display_path(root, &dir),
                    format!("cannot read directory: {e}"),
                ));
                continue;
            }
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        if entries.iter().any(|e| e.file_name() == "_delta_log") {
            continue;
        }
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            let is_dir = ft.is_dir() || (ft.is_symlink() && path.is_dir());
            if is_dir {
                subdirs.push(path);
            } else if name.ends_with(PRODUCT_SUFFIX) {
                files.products.push(path);
            } else if name.ends_with(CONTRACT_SUFFIX) {
                files.contracts.push(path);
            } else if name.ends_with(POLICY_SUFFIX) {
                files.policies.push(path);
            }
        }
        // Reverse so the stack visits folders in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    files.products.sort();
    files.contracts.sort();
    files.policies.sort();
    files
}

struct LoadedContract {
    contract: DataContract,
    file: PathBuf,
    text: String,
}

struct LoadedProduct {
    product: DataProduct,
    file: PathBuf,
    text: String,
}

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

    fn read_and_parse<T: serde::de::DeserializeOwned>(
        &mut self,
        file: &Path,
    ) -> Option<(T, String)> {
        let parsed = read_and_parse(file);
        self.take_parsed(file, parsed)
    }

    /// The parsed file, or `None` after recording why it could not be.
    fn take_parsed<T>(&mut self, file: &Path, parsed: Parsed<T>) -> Option<(T, String)> {
        match parsed {
            Ok(v) => Some(v),
            Err((line, message)) => {
                self.error(file, line, message);
                None
            }
        }
    }

    fn load_platform(&mut self) -> PlatformConfig {
        let file = self.root.join(PLATFORM_FILE);
        if !file.exists() {
            self.warn(
                &file,
                None,
                "no platform config; running with no principals, stores or secrets",
            );
            return PlatformConfig::default();
        }
        let Some((mut config, text)) = self.read_and_parse::<PlatformConfig>(&file) else {
            // A broken platform file must not grant anything: serve with none.
            return PlatformConfig::default();
        };
        // A SQL catalog given as a relative file path lives beside meshq.yaml.
        for catalog in config.catalogs.values_mut() {
            if let crate::platform::CatalogConfig::Sql { uri, .. } = catalog
                && !uri.contains(':')
                && Path::new(uri.as_str()).is_relative()
            {
                *uri = normalize(&self.root.join(uri.as_str()))
                    .to_string_lossy()
                    .into_owned();
            }
        }
        let mut seen = HashMap::new();
        for p in &config.principals {
            if let Some(hash) = p.password_hash.as_deref()
                && let Err(e) = crate::principal::check_password_hash(hash)
            {
                let line = line_of(&text, &format!("name: {}", p.name));
                self.error(
                    &file,
                    line,
                    format!(
                        "principal `{}`: password_hash is {e}; the principal cannot log in with a password",
                        p.name
                    ),
                );
            }
            if seen.insert(p.name.clone(), ()).is_some() {
                let line = line_of(&text, &format!("name: {}", p.name));
                self.error(
                    &file,
                    line,
                    format!("principal `{}` is defined more than once", p.name),
                );
            }
        }
        config
    }

    fn check_header(
        &mut self,
        file: &Path,
        text: &str,
        kind: &str,
        expected_kind: &str,
        api_version: &str,
        accepted: &[&str],
    ) -> bool {
        let mut ok = true;
        if kind != expected_kind {
            self.error(
                file,
                line_of(text, "kind:"),
                format!("kind must be `{expected_kind}`, found `{kind}`"),
            );
            ok = false;
        }
        if !accepted.contains(&api_version) {
            self.error(
                file,
                line_of(text, "apiVersion:"),
                format!(
                    "apiVersion `{api_version}` is not supported; use one of {}",
                    accepted.join(", ")
                ),
            );
            ok = false;
        }
        ok
    }

    fn load_contracts(&mut self, files: &[PathBuf]) -> BTreeMap<String, LoadedContract> {
        let mut by_id: BTreeMap<String, LoadedContract> = BTreeMap::new();
        for (file, parsed) in files.iter().zip(parse_all::<DataContract>(files)) {
            let Some((contract, text)) = self.take_parsed(file, parsed) else {
                continue;
            };
            if !self.check_header(
                file,
                &text,
                &contract.kind,
                "DataContract",
                &contract.api_version,
                ODCS_API_VERSIONS,
            ) {
                continue;
            }
            if let Some(first) = by_id.get(&contract.id) {
                let msg = format!(
                    "contract id `{}` is already defined in {}; contract ids must be unique",
                    contract.id,
                    self.rel(&first.file).display()
                );
                self.error(file, line_of(&text, &contract.id), msg);
                continue;
            }
            self.lint_contract(file, &text, &contract);
            by_id.insert(
                contract.id.clone(),
                LoadedContract {
                    contract,
                    file: file.clone(),
                    text,
                },
            );
        }
        by_id
    }

    /// Checks that do not depend on products: duplicate names, warnings.
    fn lint_contract(&mut self, file: &Path, text: &str, c: &DataContract) {
        let mut servers = HashMap::new();
        for s in &c.servers {
            if servers.insert(s.server.as_str(), ()).is_some() {
                self.error(
                    file,
                    line_of(text, &format!("server: {}", s.server)),
                    format!("server `{}` is defined more than once", s.server),
                );
            }
        }
        for obj in &c.schema {
            let mut cols = HashMap::new();
            for p in &obj.properties {
                if cols.insert(p.name.as_str(), ()).is_some() {
                    self.error(
                        file,
                        line_of(text, &format!("name: {}", p.name)),
                        format!(
                            "schema `{}`: column `{}` is defined more than once",
                            obj.name, p.name
                        ),
                    );
                }
                if p.description.is_none() {
                    self.warn(
                        file,
                        line_of(text, &format!("name: {}", p.name)),
                        format!(
                            "schema `{}`: column `{}` has no description",
                            obj.name, p.name
                        ),
                    );
                }
                if p.logical_type.is_none() && p.physical_type.is_none() {
                    self.warn(
                        file,
                        line_of(text, &format!("name: {}", p.name)),
                        format!(
                            "schema `{}`: column `{}` has neither logicalType nor physicalType; its type is not checked",
                            obj.name, p.name
                        ),
                    );
                }
                if p.physical_name.as_deref().is_some_and(|n| n != p.name) {
                    self.warn(
                        file,
                        line_of(text, &format!("name: {}", p.name)),
                        format!(
                            "schema `{}`: column `{}` has physicalName `{}`; meshq reads columns by `name`",
                            obj.name,
                            p.name,
                            p.physical_name.as_deref().unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }

    fn load_products(&mut self, files: &[PathBuf]) -> Vec<LoadedProduct> {
        let mut out: Vec<LoadedProduct> = Vec::new();
        // Index of each product id in `out`: a scan of `out` per product is
        // quadratic (seconds at 10,000 products).
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (file, parsed) in files.iter().zip(parse_all::<DataProduct>(files)) {
            let Some((product, text)) = self.take_parsed(file, parsed) else {
                continue;
            };
            if !self.check_header(
                file,
                &text,
                &product.kind,
                "DataProduct",
                &product.api_version,
                ODPS_API_VERSIONS,
            ) {
                continue;
            }
            if let Some(first) = seen.get(&product.id).map(|i| &out[*i]) {
                let msg = format!(
                    "product id `{}` is already defined in {}; product ids must be unique",
                    product.id,
                    self.rel(&first.file).display()
                );
                self.error(file, line_of(&text, &product.id), msg);
                continue;
            }
            match product.domain.as_deref() {
                None | Some("") => {
                    self.error(
                        file,
                        None,
                        format!(
                            "product `{}` has no `domain`; meshq serves a product's tables in the SQL schema named by its domain",
                            product.id
                        ),
                    );
                    continue;
                }
                Some(domain) if !is_plain_identifier(domain) => {
                    self.warn(
                        file,
                        line_of(&text, "domain:"),
                        format!(
                            "domain `{domain}` is not a lowercase SQL identifier; queries must quote it as \"{domain}\""
                        ),
                    );
                }
                Some(_) => {}
            }
            seen.insert(product.id.clone(), out.len());
            out.push(LoadedProduct {
                product,
                file: file.clone(),
                text,
            });
        }
        out
    }

    fn load_policy_sets(&mut self, files: &[PathBuf]) -> Vec<LoadedPolicySet> {
        let mut out: Vec<LoadedPolicySet> = Vec::new();
        let mut policy_ids: HashMap<String, PathBuf> = HashMap::new();
        for (file, parsed) in files.iter().zip(parse_all::<PolicySet>(files)) {
            let Some((set, text)) = self.take_parsed(file, parsed) else {
                continue;
            };
            if !self.check_header(
                file,
                &text,
                &set.kind,
                "GovernancePolicySet",
                &set.api_version,
                POLICY_SET_API_VERSIONS,
            ) {
                continue;
            }
            if let Some(first) = out.iter().find(|s| s.set.id == set.id) {
                let msg = format!(
                    "policy set id `{}` is already defined in {}",
                    set.id,
                    self.rel(&first.file).display()
                );
                self.error(file, line_of(&text, &set.id), msg);
                continue;
            }
            let mut ok = true;
            for p in &set.policies {
                if let Some(first) = policy_ids.get(&p.id) {
                    let msg = format!(
                        "policy id `{}` is already used in {}; policy ids must be unique across the mesh",
                        p.id,
                        self.rel(first).display()
                    );
                    self.error(file, line_of(&text, &p.id), msg);
                    ok = false;
                }
                if p.matcher.classification.is_empty() && p.matcher.tags.is_empty() {
                    self.error(
                        file,
                        line_of(&text, &p.id),
                        format!(
                            "policy `{}`: `match` needs at least one classification or tag",
                            p.id
                        ),
                    );
                    ok = false;
                }
                policy_ids.insert(p.id.clone(), file.clone());
            }
            if ok {
                out.push(LoadedPolicySet {
                    set,
                    file: file.clone(),
                });
            }
        }
        out
    }

    fn resolve_tables(
        &mut self,
        products: &[LoadedProduct],
        contracts: &BTreeMap<String, LoadedContract>,
    ) -> Vec<Arc<TableDef>> {
        let mut tables: BTreeMap<String, Arc<TableDef>> = BTreeMap::new();
        for lp in products {
            let domain = lp.product.domain.clone().unwrap_or_default();
            for port in &lp.product.output_ports {
                let Some(contract_id) = port.contract_id.as_deref() else {
                    self.warn(
                        &lp.file,
                        line_of(&lp.text, &format!("name: {}", port.name)),
                        format!(
                            "output port `{}` has no contractId; it is not served",
                            port.name
                        ),
                    );
                    continue;
                };
                let Some(lc) = contracts.get(contract_id) else {
                    self.error(
                        &lp.file,
                        line_of(&lp.text, contract_id),
                        format!(
                            "output port `{}`: contractId `{contract_id}` does not match any contract in the mesh",
                            port.name
                        ),
                    );
                    continue;
                };
                let Some(server) = self.pick_server(lp, port, lc) else {
                    continue;
                };
                let Some((format, location_template)) = self.server_location(lc, server) else {
                    continue;
                };
                if let Some(cd) = lc.contract.domain.as_deref()
                    && cd != domain
                {
                    self.warn(
                        &lc.file,
                        line_of(&lc.text, "domain:"),
                        format!(
                            "contract domain `{cd}` differs from product `{}` domain `{domain}`; tables are served in schema `{domain}`",
                            lp.product.id
                        ),
                    );
                }
                if lc.contract.schema.is_empty() {
                    self.error(
                        &lc.file,
                        None,
                        "contract has no `schema` objects; there is no table to serve",
                    );
                    continue;
                }
                let in_catalog = format == Format::Iceberg && server.catalog.is_some();
                if lc.contract.schema.len() > 1
                    && !in_catalog
                    && !location_template.contains("{model}")
                {
                    self.error(
                        &lc.file,
                        line_of(&lc.text, &format!("server: {}", server.server)),
                        format!(
                            "server `{}` serves {} schema objects from one location; put `{{model}}` in its path/location so each table has its own",
                            server.server,
                            lc.contract.schema.len()
                        ),
                    );
                    continue;
                }
                for obj in &lc.contract.schema {
                    let physical = obj.physical_name.as_deref().unwrap_or(&obj.name);
                    let location = if in_catalog {
                        let Some(location) = self.catalog_location(lc, server, physical) else {
                            continue;
                        };
                        location
                    } else {
                        let loc_text = location_template.replace("{model}", physical);
                        let Some(location) = self.parse_location(lc, server, &loc_text) else {
                            continue;
                        };
                        location
                    };
                    let Some(table) =
                        self.table_def(lp, port, lc, obj, &domain, server, format, location)
                    else {
                        continue;
                    };
                    let key = table.qualified_name();
                    if let Some(first) = tables.get(&key) {
                        let msg = format!(
                            "table `{key}` is already served by product `{}` ({}, contract {}); rename the schema object or move the product to another domain",
                            first.product_id,
                            self.rel(&first.product_file).display(),
                            self.rel(&first.contract_file).display()
                        );
                        self.error(&lp.file, line_of(&lp.text, contract_id), msg);
                        continue;
                    }
                    tables.insert(key, Arc::new(table));
                }
            }
        }
        tables.into_values().collect()
    }

    fn pick_server<'c>(
        &mut self,
        lp: &LoadedProduct,
        port: &OutputPort,
        lc: &'c LoadedContract,
    ) -> Option<&'c Server> {
        let servers = &lc.contract.servers;
        let names = || {
            servers
                .iter()
                .map(|s| format!("`{}`", s.server))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(custom) = find_custom(&port.custom_properties, "server")
            && custom.value.as_str().is_none()
        {
            self.error(
                &lp.file,
                line_of(&lp.text, "property: server"),
                format!(
                    "output port `{}`: custom property `server` must be a server name (a string)",
                    port.name
                ),
            );
            return None;
        }
        match port.server_name() {
            Some(name) => match servers.iter().find(|s| s.server == name) {
                Some(s) => Some(s),
                None => {
                    let known = if servers.is_empty() {
                        "it has no servers".to_string()
                    } else {
                        format!("it has {}", names())
                    };
                    self.error(
                        &lp.file,
                        line_of(&lp.text, &format!("value: {name}"))
                            .or_else(|| line_of(&lp.text, name)),
                        format!(
                            "output port `{}`: server `{name}` is not defined in contract `{}` ({}); {known}",
                            port.name,
                            lc.contract.id,
                            self.rel(&lc.file).display()
                        ),
                    );
                    None
                }
            },
            None if servers.len() == 1 => servers.first(),
            None => {
                let msg = if servers.is_empty() {
                    format!(
                        "output port `{}`: contract `{}` ({}) has no servers, so there is no data to serve",
                        port.name,
                        lc.contract.id,
                        self.rel(&lc.file).display()
                    )
                } else {
                    format!(
                        "output port `{}`: contract `{}` has several servers ({}); pick one with customProperties [{{ property: server, value: NAME }}]",
                        port.name,
                        lc.contract.id,
                        names()
                    )
                };
                self.error(&lp.file, line_of(&lp.text, &port.name), msg);
                None
            }
        }
    }

    /// The format and (template) location text of a server entry.
    fn server_location(&mut self, lc: &LoadedContract, s: &Server) -> Option<(Format, String)> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        let Some(format_text) = s.format.as_deref() else {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}` has no `format`; use parquet, delta, iceberg, csv or json",
                    s.server
                ),
            );
            return None;
        };
        let Some(format) = Format::parse(format_text) else {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}`: format `{format_text}` is not supported; use parquet, delta, iceberg, csv or json",
                    s.server
                ),
            );
            return None;
        };
        let text = match s.kind.as_str() {
            "local" => s.path.clone().or_else(|| s.location.clone()),
            "s3" | "gcs" | "azure" | "custom" => s.location.clone().or_else(|| s.path.clone()),
            other => {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}`: type `{other}` is not supported; meshq reads local, s3, gcs and azure servers",
                        s.server
                    ),
                );
                return None;
            }
        };
        let Some(text) = text else {
            if format == Format::Iceberg && s.catalog.is_some() {
                return Some((format, String::new()));
            }
            let key = if s.kind == "local" {
                "path"
            } else {
                "location"
            };
            self.error(
                &lc.file,
                line,
                format!("server `{}` (type {}) has no `{key}`", s.server, s.kind),
            );
            return None;
        };
        Some((format, text))
    }

    /// The location of an Iceberg table named through a catalog:
    /// `catalog` names a `catalogs` entry, `schema` (or `database`) the
    /// namespace.
    fn catalog_location(
        &mut self,
        lc: &LoadedContract,
        s: &Server,
        table: &str,
    ) -> Option<Location> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        let catalog = s.catalog.clone().unwrap_or_default();
        if !self.catalogs.contains(&catalog) {
            let known = if self.catalogs.is_empty() {
                "meshq.yaml declares no `catalogs`".to_string()
            } else {
                format!(
                    "meshq.yaml declares {}",
                    self.catalogs
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}`: Iceberg catalog `{catalog}` is not defined; {known}",
                    s.server
                ),
            );
            return None;
        }
        let Some(namespace) = s.schema.as_deref().or(s.database.as_deref()) else {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}`: an Iceberg table in catalog `{catalog}` needs its namespace in `schema`",
                    s.server
                ),
            );
            return None;
        };
        Some(Location::Catalog {
            catalog,
            table: format!("{namespace}.{table}"),
        })
    }

    /// Iceberg options of a server: namespace and table for catalog tables,
    /// and the snapshot to read (customProperties `snapshotId` or
    /// `asOfTimestamp`).
    fn iceberg_source(
        &mut self,
        lc: &LoadedContract,
        s: &Server,
        table: &str,
    ) -> Option<IcebergSource> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        let mut snapshot_id = None;
        let mut as_of = None;
        for p in &s.custom_properties {
            match p.property.as_str() {
                "snapshotId" => match p.value.as_i64() {
                    Some(id) => snapshot_id = Some(id),
                    None => {
                        self.error(
                            &lc.file,
                            line_of(&lc.text, "property: snapshotId").or(line),
                            format!(
                                "server `{}`: customProperty `snapshotId` must be an integer snapshot id",
                                s.server
                            ),
                        );
                        return None;
                    }
                },
                "asOfTimestamp" => {
                    let text = p.value.as_str().unwrap_or_default();
                    if chrono::DateTime::parse_from_rfc3339(text).is_err() {
                        self.error(
                            &lc.file,
                            line_of(&lc.text, "property: asOfTimestamp").or(line),
                            format!(
                                "server `{}`: customProperty `asOfTimestamp` must be an RFC 3339 time such as 2026-01-31T00:00:00Z",
                                s.server
                            ),
                        );
                        return None;
                    }
                    as_of = Some(text.to_string());
                }
                _ => {}
            }
        }
        if snapshot_id.is_some() && as_of.is_some() {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}`: give either `snapshotId` or `asOfTimestamp`, not both",
                    s.server
                ),
            );
            return None;
        }
        let namespace = s
            .schema
            .as_deref()
            .or(s.database.as_deref())
            .map(|n| n.split('.').map(str::to_string).collect())
            .unwrap_or_default();
        Some(IcebergSource {
            catalog: s.catalog.clone(),
            namespace,
            table: table.to_string(),
            snapshot_id,
            as_of,
        })
    }

    fn parse_location(&mut self, lc: &LoadedContract, s: &Server, text: &str) -> Option<Location> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        if let Some(rest) = text.strip_prefix("file://") {
            return Some(Location::Local(PathBuf::from(rest)));
        }
        if text.contains("://") {
            return match url::Url::parse(text) {
                Ok(u) => {
                    let expected: &[&str] = match s.kind.as_str() {
                        "s3" => &["s3", "s3a"],
                        "gcs" => &["gs", "gcs"],
                        "azure" => &["az", "abfs", "abfss", "azure", "adl"],
                        _ => &[],
                    };
                    if !expected.is_empty() && !expected.contains(&u.scheme()) {
                        self.error(
                            &lc.file,
                            line,
                            format!(
                                "server `{}`: location `{text}` does not match server type {} (expected a {}:// URL)",
                                s.server,
                                s.kind,
                                expected[0]
                            ),
                        );
                        return None;
                    }
                    Some(Location::Url(u))
                }
                Err(e) => {
                    self.error(
                        &lc.file,
                        line,
                        format!(
                            "server `{}`: location `{text}` is not a valid URL: {e}",
                            s.server
                        ),
                    );
                    None
                }
            };
        }
        if s.kind != "local" && s.kind != "custom" {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}` (type {}): location `{text}` must be a URL",
                    s.server, s.kind
                ),
            );
            return None;
        }
        let path = Path::new(text);
        let base = lc.file.parent().unwrap_or(Path::new("."));
        let joined = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        Some(Location::Local(normalize(&joined)))
    }

    #[allow(clippy::too_many_arguments)]
    fn table_def(
        &mut self,
        lp: &LoadedProduct,
        port: &OutputPort,
        lc: &LoadedContract,
        obj: &SchemaObject,
        domain: &str,
        server: &Server,
        format: Format,
        location: Location,
    ) -> Option<TableDef> {
        let qualified = format!("{domain}.{}", obj.name);
        let mut ok = true;
        if obj.properties.is_empty() {
            self.error(
                &lc.file,
                line_of(&lc.text, &format!("name: {}", obj.name)),
                format!("table `{qualified}`: schema object has no properties (columns)"),
            );
            return None;
        }
        if !is_plain_identifier(&obj.name) {
            self.warn(
                &lc.file,
                line_of(&lc.text, &format!("name: {}", obj.name)),
                format!(
                    "table name `{}` is not a lowercase SQL identifier; queries must quote it",
                    obj.name
                ),
            );
        }
        let policy = match self.table_policy(lc, obj, &qualified) {
            Some(p) => p,
            None => {
                ok = false;
                TablePolicy::default()
            }
        };
        let mut columns = Vec::with_capacity(obj.properties.len());
        for (i, p) in obj.properties.iter().enumerate() {
            self.check_policy_names(lc, &p.custom_properties, &qualified, Some(&p.name));
            let mask = match find_custom(&p.custom_properties, MASK) {
                None => None,
                Some(cp) => match serde_yaml_ng::from_value::<MaskSpec>(cp.value.clone()) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        self.error(
                            &lc.file,
                            line_of(&lc.text, &format!("name: {}", p.name)),
                            format!(
                                "table `{qualified}`, column `{}`: invalid mask: {}; the table is not served until this is fixed",
                                p.name,
                                strip_position(&e.to_string())
                            ),
                        );
                        ok = false;
                        None
                    }
                },
            };
            let pk_position = match (p.primary_key, p.primary_key_position) {
                (Some(true), Some(pos)) if pos >= 0 => Some(pos as usize),
                (Some(true), _) => Some(1000 + i),
                _ => None,
            };
            columns.push(ColumnDef {
                name: p.name.clone(),
                logical_type: p.logical_type,
                physical_type: p.physical_type.clone(),
                required: p.required.unwrap_or(false),
                classification: p.classification.clone(),
                tags: p.tags.clone(),
                description: p.description.clone(),
                primary_key_position: pk_position,
                mask,
            });
        }
        let iceberg = if format == Format::Iceberg {
            let physical = obj.physical_name.as_deref().unwrap_or(&obj.name);
            Some(self.iceberg_source(lc, server, physical)?)
        } else {
            None
        };
        if !ok {
            return None;
        }
        Some(TableDef {
            domain: domain.to_string(),
            name: obj.name.clone(),
            product_id: lp.product.id.clone(),
            product_file: lp.file.clone(),
            port: port.name.clone(),
            contract_id: lc.contract.id.clone(),
            contract_file: lc.file.clone(),
            source: TableSource {
                format,
                location,
                server: server.server.clone(),
                delimiter: server.delimiter.clone(),
                iceberg,
            },
            columns,
            description: obj.description.clone(),
            policy,
        })
    }

    /// Parses `rowFilters` and `readRoles`; `None` when they are invalid,
    /// which keeps the table from being served (fail closed).
    fn table_policy(
        &mut self,
        lc: &LoadedContract,
        obj: &SchemaObject,
        qualified: &str,
    ) -> Option<TablePolicy> {
        self.check_policy_names(lc, &obj.custom_properties, qualified, None);
        let mut policy = TablePolicy::default();
        let mut ok = true;
        if let Some(cp) = find_custom(&obj.custom_properties, ROW_FILTERS) {
            match serde_yaml_ng::from_value::<Vec<RowFilterSpec>>(cp.value.clone()) {
                Ok(f) => policy.row_filters = f,
                Err(e) => {
                    self.error(
                        &lc.file,
                        line_of(&lc.text, "property: rowFilters"),
                        format!(
                            "table `{qualified}`: invalid rowFilters: {}; the table is not served until this is fixed",
                            strip_position(&e.to_string())
                        ),
                    );
                    ok = false;
                }
            }
        }
        if let Some(cp) = find_custom(&obj.custom_properties, READ_ROLES) {
            match serde_yaml_ng::from_value::<Vec<String>>(cp.value.clone()) {
                Ok(r) => policy.read_roles = Some(r),
                Err(e) => {
                    self.error(
                        &lc.file,
                        line_of(&lc.text, "property: readRoles"),
                        format!(
                            "table `{qualified}`: invalid readRoles (expected a list of role names): {}; the table is not served until this is fixed",
                            strip_position(&e.to_string())
                        ),
                    );
                    ok = false;
                }
            }
        }
        let mut ids = HashMap::new();
        for f in &policy.row_filters {
            if ids.insert(f.id.as_str(), ()).is_some() {
                self.error(
                    &lc.file,
                    line_of(&lc.text, &f.id),
                    format!(
                        "table `{qualified}`: row filter id `{}` is used twice",
                        f.id
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(policy)
    }

    /// A policy property spelled almost right would silently not apply;
    /// make it an error instead. Also catches policies put at the wrong level.
    fn check_policy_names(
        &mut self,
        lc: &LoadedContract,
        props: &[CustomProperty],
        qualified: &str,
        column: Option<&str>,
    ) {
        for cp in props {
            let lower = cp.property.to_ascii_lowercase();
            let canonical = [MASK, ROW_FILTERS, READ_ROLES].into_iter().find(|c| {
                c.to_ascii_lowercase() == lower
                    || format!("{}s", c.to_ascii_lowercase()) == lower
                    || c.to_ascii_lowercase() == format!("{lower}s")
            });
            let Some(canonical) = canonical else { continue };
            let at = match column {
                Some(c) => format!("table `{qualified}`, column `{c}`"),
                None => format!("table `{qualified}`"),
            };
            let line = line_of(&lc.text, &format!("property: {}", cp.property));
            if cp.property != canonical {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "{at}: custom property `{}` is not recognised; did you mean `{canonical}`?",
                        cp.property
                    ),
                );
            } else if column.is_some() && canonical != MASK {
                self.error(
                    &lc.file,
                    line,
                    format!("{at}: `{canonical}` belongs on the schema object, not on a column"),
                );
            } else if column.is_none() && canonical == MASK {
                self.error(
                    &lc.file,
                    line,
                    format!("{at}: `mask` belongs on a column (schema property), not on the table"),
                );
            }
        }
    }

    fn warn_unused_contracts(
        &mut self,
        products: &[LoadedProduct],
        contracts: &BTreeMap<String, LoadedContract>,
    ) {
        let used: std::collections::HashSet<&str> = products
            .iter()
            .flat_map(|p| p.product.output_ports.iter())
            .filter_map(|o| o.contract_id.as_deref())
            .collect();
        for (id, lc) in contracts {
            if !used.contains(id.as_str()) {
                let file = lc.file.clone();
                self.warn(
                    &file,
                    None,
                    format!(
                        "contract `{id}` is not named by any product output port; its tables are not served"
                    ),
                );
            }
        }
    }
}

/// A file's parsed value and text, or the line and message of why not.
type Parsed<T> = std::result::Result<(T, String), (Option<usize>, String)>;

fn read_and_parse<T: serde::de::DeserializeOwned>(file: &Path) -> Parsed<T> {
    let text =
        std::fs::read_to_string(file).map_err(|e| (None, format!("cannot read file: {e}")))?;
    match yaml::parse::<T>(&text) {
        Ok(v) => Ok((v, text)),
        Err(e) => Err((e.line, e.message)),
    }
}

/// Reads and parses `files` on every core, results in file order. YAML
/// parsing is most of the time a large mesh takes to load.
fn parse_all<T: serde::de::DeserializeOwned + Send>(files: &[PathBuf]) -> Vec<Parsed<T>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if workers < 2 || files.len() < 64 {
        return files.iter().map(|f| read_and_parse(f)).collect();
    }
    let chunk = files.len().div_ceil(workers);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                let h = scope.spawn(move || part.iter().map(|f| read_and_parse(f)).collect());
                (part.len(), h)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| {
                h.join().unwrap_or_else(|_| {
                    // A panic in the YAML parser: each file of the chunk is
                    // reported, and the results stay aligned with `files`.
                    (0..n)
                        .map(|_| {
                            Err((
                                None,
                                "the YAML parser failed on this part of the mesh".to_string(),
                            ))
                        })
                        .collect::<Vec<Parsed<T>>>()
                })
            })
            .collect()
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
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
fn normalize(path: &Path) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_parsing_keeps_file_order_and_reports_each_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..200 {
            let f = dir.path().join(format!("p{i:03}.yaml"));
            let text = if i % 50 == 7 {
                format!("id: [broken {i}\n")
            } else {
                format!("id: product-{i}\n")
            };
            std::fs::write(&f, text).unwrap();
            files.push(f);
        }
        files.push(dir.path().join("missing.yaml"));
        #[derive(serde::Deserialize)]
        struct Doc {
            id: String,
        }
        let parsed = parse_all::<Doc>(&files);
        assert_eq!(parsed.len(), files.len());
        for (i, p) in parsed.iter().enumerate().take(200) {
            match p {
                Ok((d, _)) => assert_eq!(d.id, format!("product-{i}")),
                Err((line, _)) => {
                    assert_eq!(i % 50, 7, "file {i}");
                    assert_eq!(*line, Some(1));
                }
            }
        }
        let Err((_, msg)) = &parsed[200] else {
            panic!("a missing file parses")
        };
        assert!(msg.starts_with("cannot read file"), "{msg}");
    }
}
