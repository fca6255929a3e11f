//! The `customProperties` meshq reads: masks on columns, `rowFilters` and
//! `readRoles` on schema objects, Iceberg snapshot options on servers.

use std::collections::HashMap;

use super::{LoadedContract, Loader};
use crate::common::{CustomProperty, find_custom};
use crate::mesh::{IcebergSource, TablePolicy};
use crate::odcs::{SchemaObject, SchemaProperty, Server};
use crate::policy::{MaskSpec, RowFilterSpec};
use crate::problem::{column_line, line_of};

/// Custom property names meshq reads, and where they belong.
const MASK: &str = "mask";
const ROW_FILTERS: &str = "rowFilters";
const READ_ROLES: &str = "readRoles";

impl Loader {
    /// The column's `mask`, `Err` after reporting an invalid one (which
    /// keeps the table from being served).
    pub(super) fn column_mask(
        &mut self,
        lc: &LoadedContract,
        obj: &SchemaObject,
        p: &SchemaProperty,
        qualified: &str,
    ) -> Result<Option<MaskSpec>, ()> {
        let Some(cp) = find_custom(&p.custom_properties, MASK) else {
            return Ok(None);
        };
        serde_yaml_ng::from_value::<MaskSpec>(cp.value.clone())
            .map(Some)
            .map_err(|e| {
                self.error(
                    &lc.file,
                    column_line(&lc.text, &obj.name, &p.name),
                    format!(
                        "table `{qualified}`, column `{}`: invalid mask: {}; the table is not served until this is fixed",
                        p.name,
                        strip_position(&e.to_string())
                    ),
                );
            })
    }

    /// Iceberg options of a server: namespace and table for catalog tables,
    /// and the snapshot to read (customProperties `snapshotId` or
    /// `asOfTimestamp`).
    pub(super) fn iceberg_source(
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

    /// Parses `rowFilters` and `readRoles`; `None` when they are invalid,
    /// which keeps the table from being served (fail closed).
    pub(super) fn table_policy(
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
    pub(super) fn check_policy_names(
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
}

/// A serde message without its " at line N column M" (the problem carries
/// its own line).
fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}
