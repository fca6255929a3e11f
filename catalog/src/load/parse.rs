//! Parsing the mesh's documents: `meshq.yaml`, contracts, products and
//! policy sets, each checked on its own (header, duplicate ids, lint).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::{
    LoadedContract, LoadedProduct, Loader, RESERVED_DOMAINS, is_plain_identifier, normalize,
};
use crate::mesh::LoadedPolicySet;
use crate::odcs::{DataContract, ODCS_API_VERSIONS};
use crate::odps::{DataProduct, ODPS_API_VERSIONS};
use crate::platform::{PLATFORM_FILE, PlatformConfig};
use crate::policy::{POLICY_SET_API_VERSIONS, PolicySet};
use crate::problem::{column_line, line_of};

use super::discover::parse_all;

impl Loader {
    pub(super) fn load_platform(&mut self) -> PlatformConfig {
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

    pub(super) fn check_header(
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

    pub(super) fn load_contracts(&mut self, files: &[PathBuf]) -> BTreeMap<String, LoadedContract> {
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
    pub(super) fn lint_contract(&mut self, file: &Path, text: &str, c: &DataContract) {
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
                        column_line(text, &obj.name, &p.name),
                        format!(
                            "schema `{}`: column `{}` is defined more than once",
                            obj.name, p.name
                        ),
                    );
                }
                if p.description.is_none() {
                    self.warn(
                        file,
                        column_line(text, &obj.name, &p.name),
                        format!(
                            "schema `{}`: column `{}` has no description",
                            obj.name, p.name
                        ),
                    );
                }
                if p.logical_type.is_none() && p.physical_type.is_none() {
                    self.warn(
                        file,
                        column_line(text, &obj.name, &p.name),
                        format!(
                            "schema `{}`: column `{}` has neither logicalType nor physicalType; its type is not checked",
                            obj.name, p.name
                        ),
                    );
                }
                if p.physical_name.as_deref().is_some_and(|n| n != p.name) {
                    self.warn(
                        file,
                        column_line(text, &obj.name, &p.name),
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

    pub(super) fn load_products(&mut self, files: &[PathBuf]) -> Vec<LoadedProduct> {
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
                Some(domain)
                    if RESERVED_DOMAINS.contains(&domain.to_ascii_lowercase().as_str()) =>
                {
                    self.error(
                        file,
                        line_of(&text, "domain:"),
                        format!(
                            "product `{}`: domain `{domain}` is reserved (meshq serves `{}` itself); choose another domain",
                            product.id,
                            domain.to_ascii_lowercase()
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

    pub(super) fn load_policy_sets(&mut self, files: &[PathBuf]) -> Vec<LoadedPolicySet> {
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

    pub(super) fn warn_unused_contracts(
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
