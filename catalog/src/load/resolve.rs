//! Resolving each product output port to its tables: port → contract →
//! server → location → [`TableDef`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LoadedContract, LoadedProduct, Loader, is_plain_identifier, normalize};
use crate::common::find_custom;
use crate::mesh::{ColumnDef, Format, Location, TableDef, TablePolicy, TableSource};
use crate::odcs::{SchemaObject, Server};
use crate::odps::OutputPort;
use crate::problem::line_of;

/// Everything a port's tables share: the product, its port, the contract
/// and server it reads, the SQL schema (domain) and the format.
#[derive(Clone, Copy)]
pub(super) struct PortContext<'a> {
    product: &'a LoadedProduct,
    port: &'a OutputPort,
    contract: &'a LoadedContract,
    server: &'a Server,
    domain: &'a str,
    format: Format,
}

impl Loader {
    pub(super) fn resolve_tables(
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
                let in_database =
                    matches!(format, Format::Postgres | Format::FlightSql | Format::Sql);
                if format == Format::Sql {
                    if lc.contract.schema.len() != 1 {
                        self.error(
                            &lc.file,
                            line_of(&lc.text, &format!("server: {}", server.server)),
                            format!(
                                "server `{}` (format meshq-sql) defines one table, but the contract has {} schema objects",
                                server.server,
                                lc.contract.schema.len()
                            ),
                        );
                        continue;
                    }
                    match find_custom(&lp.product.custom_properties, "runAs") {
                        Some(cp) if cp.value.as_str().is_some_and(|v| !v.is_empty()) => {}
                        _ => {
                            self.error(
                                &lp.file,
                                line_of(&lp.text, "runAs").or_else(|| line_of(&lp.text, "id:")),
                                format!(
                                    "product `{}`: a product defined by SQL is evaluated as its own principal; name it with customProperties [{{ property: runAs, value: PRINCIPAL }}]",
                                    lp.product.id
                                ),
                            );
                            continue;
                        }
                    }
                }
                if lc.contract.schema.len() > 1
                    && !in_catalog
                    && !in_database
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
                let ctx = PortContext {
                    product: lp,
                    port,
                    contract: lc,
                    server,
                    domain: &domain,
                    format,
                };
                for obj in &lc.contract.schema {
                    let physical = obj.physical_name.as_deref().unwrap_or(&obj.name);
                    let location = if format == Format::Sql {
                        let Some(location) = self.sql_location(lc, server) else {
                            continue;
                        };
                        location
                    } else if format == Format::FlightSql {
                        Location::FlightSql {
                            endpoint: location_template.clone(),
                            table: physical.to_string(),
                        }
                    } else if in_database {
                        Location::Postgres {
                            host: server.host.clone().unwrap_or_default(),
                            port: server.port.map_or(5432, |p| p as u16),
                            database: server.database.clone().unwrap_or_default(),
                            schema: server.schema.clone().unwrap_or_else(|| "public".into()),
                            table: physical.to_string(),
                        }
                    } else if in_catalog {
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
                    let Some(table) = self.table_def(&ctx, obj, location) else {
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

    pub(super) fn pick_server<'c>(
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
    pub(super) fn server_location(
        &mut self,
        lc: &LoadedContract,
        s: &Server,
    ) -> Option<(Format, String)> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        if s.kind == "postgresql" {
            if s.host.is_none() || s.database.is_none() {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}` (type postgresql) needs `host` and `database`",
                        s.server
                    ),
                );
                return None;
            }
            return Some((Format::Postgres, String::new()));
        }
        let Some(format_text) = s.format.as_deref() else {
            self.error(
                &lc.file,
                line,
                format!(
                    "server `{}` has no `format`; use parquet, delta, iceberg, csv, json or flightsql",
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
                    "server `{}`: format `{format_text}` is not supported; use parquet, delta, iceberg, csv, json or flightsql",
                    s.server
                ),
            );
            return None;
        };
        if format == Format::Sql {
            if s.kind != "custom" {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}`: format meshq-sql is a product defined by SQL; declare it as `type: custom` with `path: ./FILE.sql` or the custom property `sql`",
                        s.server
                    ),
                );
                return None;
            }
            return Some((format, String::new()));
        }
        if format == Format::FlightSql {
            if s.kind != "custom" {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}`: format flightsql is a remote Flight SQL server; declare it as `type: custom` with `endpointUrl: grpc://host:port`",
                        s.server
                    ),
                );
                return None;
            }
            let endpoint = s.endpoint_url.clone().unwrap_or_default();
            let valid = ["grpc://", "grpc+tls://"].iter().any(|scheme| {
                endpoint
                    .strip_prefix(scheme)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
            });
            if !valid {
                self.error(
                    &lc.file,
                    line_of(&lc.text, "endpointUrl").or(line),
                    format!(
                        "server `{}` (format flightsql) needs `endpointUrl: grpc://host:port` (or `grpc+tls://host:port` for TLS){}",
                        s.server,
                        if endpoint.is_empty() {
                            String::new()
                        } else {
                            format!(", not `{endpoint}`")
                        }
                    ),
                );
                return None;
            }
            return Some((format, endpoint));
        }
        let text = match s.kind.as_str() {
            "local" => s.path.clone().or_else(|| s.location.clone()),
            "s3" | "gcs" | "azure" | "custom" => s.location.clone().or_else(|| s.path.clone()),
            other => {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}`: type `{other}` is not supported; meshq reads local, s3, gcs, azure, postgresql and custom (flightsql) servers",
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

    /// The statement of a `format: meshq-sql` server: the file its `path`
    /// names (relative to the contract), or its custom property `sql`.
    pub(super) fn sql_location(&mut self, lc: &LoadedContract, s: &Server) -> Option<Location> {
        let line = line_of(&lc.text, &format!("server: {}", s.server));
        let inline = find_custom(&s.custom_properties, "sql").map(|cp| cp.value.as_str());
        let (query, file) = match (&s.path, inline) {
            (Some(_), Some(_)) => {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}` gives its SQL twice (`path` and the custom property `sql`); keep one",
                        s.server
                    ),
                );
                return None;
            }
            (None, Some(Some(text))) => (text.to_string(), None),
            (None, Some(None)) => {
                self.error(
                    &lc.file,
                    line_of(&lc.text, "property: sql").or(line),
                    format!(
                        "server `{}`: the custom property `sql` must be a string",
                        s.server
                    ),
                );
                return None;
            }
            (Some(path), None) => {
                let base = lc.file.parent().unwrap_or(Path::new("."));
                let file = normalize(&base.join(path));
                match std::fs::read_to_string(&file) {
                    Ok(text) => (text, Some(file)),
                    Err(e) => {
                        self.error(
                            &lc.file,
                            line,
                            format!(
                                "server `{}`: the SQL file `{path}` cannot be read ({e})",
                                s.server
                            ),
                        );
                        return None;
                    }
                }
            }
            (None, None) => {
                self.error(
                    &lc.file,
                    line,
                    format!(
                        "server `{}` (format meshq-sql) has no SQL; give `path: ./FILE.sql` or customProperties [{{ property: sql, value: \"SELECT …\" }}]",
                        s.server
                    ),
                );
                return None;
            }
        };
        if query.trim().is_empty() {
            self.error(
                &lc.file,
                line,
                format!("server `{}`: the SQL is empty", s.server),
            );
            return None;
        }
        Some(Location::Sql { query, file })
    }

    /// The location of an Iceberg table named through a catalog:
    /// `catalog` names a `catalogs` entry, `schema` (or `database`) the
    /// namespace.
    pub(super) fn catalog_location(
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

    pub(super) fn parse_location(
        &mut self,
        lc: &LoadedContract,
        s: &Server,
        text: &str,
    ) -> Option<Location> {
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

    /// The table a schema object of `ctx` becomes at `location`; `None`
    /// after reporting why it cannot be served.
    pub(super) fn table_def(
        &mut self,
        ctx: &PortContext<'_>,
        obj: &SchemaObject,
        location: Location,
    ) -> Option<TableDef> {
        let PortContext {
            product: lp,
            port,
            contract: lc,
            server,
            domain,
            format,
        } = *ctx;
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
            let mask = match self.column_mask(lc, obj, p, &qualified) {
                Ok(m) => m,
                Err(()) => {
                    ok = false;
                    None
                }
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
                unique: p.unique.unwrap_or(false),
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
        let acceleration = match self.materialization(lp, port, lc, server, format) {
            Some(m) => Some(m),
            None => self.acceleration(lp, port, lc, server),
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
            quality: self.quality_rules(lc, obj, &qualified),
            acceleration,
            run_as: find_custom(&lp.product.custom_properties, "runAs")
                .and_then(|cp| cp.value.as_str().map(str::to_string)),
        })
    }

    /// The port's `materialize` (else the server's), for a product
    /// defined by SQL; a bad value, or one on another kind of table, is a
    /// warning and the table is served as without it.
    fn materialization(
        &mut self,
        lp: &LoadedProduct,
        port: &OutputPort,
        lc: &LoadedContract,
        server: &Server,
        format: Format,
    ) -> Option<crate::acceleration::Acceleration> {
        let (file, text, cp) = port_or_server(lp, port, lc, server, "materialize")?;
        let file = file.clone();
        let line = line_of(text, "property: materialize");
        if format != Format::Sql {
            self.warn(
                &file,
                line,
                format!(
                    "output port `{}`: `materialize` is for products defined in SQL (format: meshq-sql); this {format} table is served from its source (`acceleration` keeps a copy of a source)",
                    port.name
                ),
            );
            return None;
        }
        let base = file.parent().unwrap_or(std::path::Path::new("."));
        match crate::acceleration::Acceleration::parse_materialize(&cp.value, base) {
            Ok(m) => {
                if port_or_server(lp, port, lc, server, "acceleration").is_some() {
                    self.warn(
                        &file,
                        line,
                        format!(
                            "output port `{}`: both `materialize` and `acceleration`; the materialised table is served and `acceleration` is ignored",
                            port.name
                        ),
                    );
                }
                Some(m)
            }
            Err(e) => {
                self.warn(
                    &file,
                    line,
                    format!(
                        "output port `{}`: {e}; the product is computed when it is read",
                        port.name
                    ),
                );
                None
            }
        }
    }

    /// The port's `acceleration` (else the server's); a bad value is a
    /// warning and the table is served from its source.
    fn acceleration(
        &mut self,
        lp: &LoadedProduct,
        port: &OutputPort,
        lc: &LoadedContract,
        server: &Server,
    ) -> Option<crate::acceleration::Acceleration> {
        let (file, text, cp) = port_or_server(lp, port, lc, server, "acceleration")?;
        match crate::acceleration::Acceleration::parse(&cp.value) {
            Ok(a) => Some(a),
            Err(e) => {
                let file = file.clone();
                let line = line_of(text, "property: acceleration");
                self.warn(
                    &file,
                    line,
                    format!(
                        "output port `{}`: {e}; the port is served from its source",
                        port.name
                    ),
                );
                None
            }
        }
    }

    /// The table's quality rules; a rule declared wrongly is a warning here
    /// (the table is still served) and an error result when checks run.
    fn quality_rules(
        &mut self,
        lc: &LoadedContract,
        obj: &SchemaObject,
        qualified: &str,
    ) -> Vec<crate::quality::QualityRule> {
        let rules = crate::quality::rules_for(&lc.contract, obj);
        for r in &rules {
            if let crate::quality::Check::Invalid(why) = &r.check {
                let line = r
                    .column
                    .as_deref()
                    .and_then(|c| line_of(&lc.text, &format!("name: {c}")))
                    .or_else(|| line_of(&lc.text, "quality:"));
                self.warn(
                    &lc.file,
                    line,
                    format!("table `{qualified}`: quality rule `{}`: {why}", r.id),
                );
            }
        }
        rules
    }
}

/// The custom property `name` of the output port, else of the contract's
/// server (the port wins), with the file and text that declare it.
fn port_or_server<'a>(
    lp: &'a LoadedProduct,
    port: &'a OutputPort,
    lc: &'a LoadedContract,
    server: &'a Server,
    name: &str,
) -> Option<(&'a PathBuf, &'a String, &'a crate::common::CustomProperty)> {
    match find_custom(&port.custom_properties, name) {
        Some(cp) => Some((&lp.file, &lp.text, cp)),
        None => Some((
            &lc.file,
            &lc.text,
            find_custom(&server.custom_properties, name)?,
        )),
    }
}
