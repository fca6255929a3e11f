//! The rows of each `meta` table.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, IntervalMonthDayNanoArray, ListBuilder,
    RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray, UInt64Array,
};
use arrow::datatypes::{Field, IntervalMonthDayNano, Schema};
use datafusion::datasource::TableProvider;
use datafusion::error::Result;
use meshq_catalog::Principal;
use meshq_catalog::platform::AttributeValue;

use super::access::{Access, access_of};
use crate::engine::{Engine, ServedTable};

/// One caller's view of one mesh version.
pub(super) struct View<'a> {
    pub(super) engine: &'a Engine,
    pub(super) principal: &'a Principal,
    /// `discovery.visibility: readable-only`: hide what the caller may not
    /// read.
    pub(super) readable_only: bool,
    /// Rows for no product and no table: the tables' schemas only.
    pub(super) schema_only: bool,
}

/// Columns of a batch under construction, in order.
#[derive(Default)]
struct Columns {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl Columns {
    fn add(mut self, name: &str, nullable: bool, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), nullable));
        self.arrays.push(array);
        self
    }

    fn text(self, name: &str, values: Vec<String>) -> Self {
        self.add(name, false, Arc::new(StringArray::from(values)))
    }

    fn opt_text(self, name: &str, values: Vec<Option<String>>) -> Self {
        self.add(name, true, Arc::new(StringArray::from(values)))
    }

    fn flag(self, name: &str, values: Vec<bool>) -> Self {
        self.add(name, false, Arc::new(BooleanArray::from(values)))
    }

    fn list(self, name: &str, values: Vec<Vec<String>>) -> Self {
        let mut b = ListBuilder::new(StringBuilder::new());
        for row in values {
            for v in row {
                b.values().append_value(v);
            }
            b.append(true);
        }
        self.add(name, false, Arc::new(b.finish()))
    }

    fn opt_list(self, name: &str, values: Vec<Option<Vec<String>>>) -> Self {
        let mut b = ListBuilder::new(StringBuilder::new());
        for row in values {
            match row {
                Some(row) => {
                    for v in row {
                        b.values().append_value(v);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        self.add(name, true, Arc::new(b.finish()))
    }

    /// `table_schema` and `table_name` of each table.
    fn table_keys(self, tables: &[(&ServedTable, Access)]) -> Self {
        self.text(
            "table_schema",
            tables.iter().map(|(t, _)| t.def.domain.clone()).collect(),
        )
        .text(
            "table_name",
            tables.iter().map(|(t, _)| t.def.name.clone()).collect(),
        )
    }

    fn finish(self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(self.fields)),
            self.arrays,
        )?)
    }
}

impl View<'_> {
    fn access(&self, table: &str) -> Option<Access> {
        access_of(self.engine, table, self.principal)
    }

    /// Served tables the caller may see the metadata of, with their access.
    fn visible_tables(&self) -> Vec<(&ServedTable, Access)> {
        if self.schema_only {
            return Vec::new();
        }
        self.engine
            .served_tables()
            .iter()
            .filter_map(|t| {
                let access = self.access(&t.def.qualified_name())?;
                (!self.readable_only || access.readable).then_some((t, access))
            })
            .collect()
    }

    pub(super) fn products(&self) -> Result<RecordBatch> {
        let mesh = self.engine.mesh();
        let tables = self.visible_tables();
        let lineage = mesh.lineage();
        // With readable-only, an input product the caller may not read is
        // not named either.
        let visible_products: BTreeSet<String> = tables
            .iter()
            .filter(|(_, a)| a.readable)
            .map(|(t, _)| t.def.product_id.clone())
            .collect();
        let mut rows = Vec::new();
        for p in mesh.products.iter().filter(|_| !self.schema_only) {
            let mine: Vec<&(&ServedTable, Access)> = tables
                .iter()
                .filter(|(t, _)| t.def.product_id == p.id)
                .collect();
            let readable = mine.iter().any(|(_, a)| a.readable);
            if self.readable_only && !readable {
                continue;
            }
            // Roles any of which grants read of some table; none when a
            // table needs no role.
            let open = mine.iter().any(|(_, a)| a.read_roles.is_none());
            let roles: BTreeSet<String> = mine
                .iter()
                .flat_map(|(_, a)| a.read_roles.iter().flatten().cloned())
                .collect();
            let roles: Vec<String> = roles.into_iter().collect();
            let approvers: BTreeSet<String> = mine
                .iter()
                .filter_map(|(t, _)| mesh.contracts.get(&t.def.contract_id))
                .flat_map(|c| c.approvers_for(&roles))
                .collect();
            let inputs: BTreeSet<String> = lineage
                .iter()
                .filter(|e| e.to_product == p.id)
                .filter(|e| !self.readable_only || visible_products.contains(&e.from_product))
                .map(|e| e.from_product.clone())
                .collect();
            rows.push((
                p,
                mine.iter()
                    .map(|(t, _)| t.def.qualified_name())
                    .collect::<Vec<_>>(),
                readable,
                (!open).then_some(roles),
                approvers.into_iter().collect::<Vec<_>>(),
                inputs.into_iter().collect::<Vec<_>>(),
            ));
        }
        Columns::default()
            .text("product_id", rows.iter().map(|r| r.0.id.clone()).collect())
            .opt_text("name", rows.iter().map(|r| r.0.name.clone()).collect())
            .text("domain", rows.iter().map(|r| r.0.domain.clone()).collect())
            .opt_text(
                "version",
                rows.iter().map(|r| r.0.version.clone()).collect(),
            )
            .text("status", rows.iter().map(|r| r.0.status.clone()).collect())
            .opt_text(
                "description",
                rows.iter().map(|r| r.0.description.clone()).collect(),
            )
            .opt_text(
                "owner_team",
                rows.iter().map(|r| r.0.owner_team.clone()).collect(),
            )
            .list(
                "owner_contacts",
                rows.iter().map(|r| r.0.owner_contacts.clone()).collect(),
            )
            .list("tags", rows.iter().map(|r| r.0.tags.clone()).collect())
            .list("input_products", rows.iter().map(|r| r.5.clone()).collect())
            .list("tables", rows.iter().map(|r| r.1.clone()).collect())
            .flag("readable", rows.iter().map(|r| r.2).collect())
            .opt_list("access_roles", rows.iter().map(|r| r.3.clone()).collect())
            .list(
                "access_approvers",
                rows.iter().map(|r| r.4.clone()).collect(),
            )
            .text(
                "declared_in",
                rows.iter()
                    .map(|r| mesh.display_path(&r.0.file).display().to_string())
                    .collect(),
            )
            .finish()
    }

    pub(super) async fn tables(&self) -> Result<RecordBatch> {
        let mesh = self.engine.mesh();
        let tables = self.visible_tables();
        let mut facts = Vec::with_capacity(tables.len());
        let mut fresh = Vec::with_capacity(tables.len());
        for (t, _) in &tables {
            facts.push(self.engine.facts(t).await);
            fresh.push(super::freshness(self.engine, t).await);
        }
        let contract = |t: &ServedTable| mesh.contracts.get(&t.def.contract_id).cloned();
        let sla: Vec<Option<i64>> = fresh.iter().map(|f| f.sla_secs).collect();
        let status: Vec<String> = fresh.iter().map(|f| f.status.to_string()).collect();
        let accelerated: Vec<_> = tables
            .iter()
            .map(|(t, _)| {
                self.engine
                    .acceleration_of(&t.def.qualified_name())
                    .map(|slot| slot.status())
            })
            .collect();
        Columns::default()
            .table_keys(&tables)
            .text(
                "product_id",
                tables
                    .iter()
                    .map(|(t, _)| t.def.product_id.clone())
                    .collect(),
            )
            .text(
                "contract_id",
                tables
                    .iter()
                    .map(|(t, _)| t.def.contract_id.clone())
                    .collect(),
            )
            .opt_text(
                "contract_version",
                tables
                    .iter()
                    .map(|(t, _)| contract(t).map(|c| c.version.clone()))
                    .collect(),
            )
            .text(
                "format",
                tables
                    .iter()
                    .map(|(t, _)| t.def.source.format.to_string())
                    .collect(),
            )
            .opt_text(
                "description",
                tables
                    .iter()
                    .map(|(t, _)| t.def.description.clone())
                    .collect(),
            )
            .flag("readable", tables.iter().map(|(_, a)| a.readable).collect())
            .add(
                "row_count",
                true,
                // Only to a caller who reads every row: to anyone else the
                // total would tell how many rows a policy hides.
                Arc::new(UInt64Array::from(
                    facts
                        .iter()
                        .zip(&tables)
                        .map(|(f, (_, a))| {
                            (a.readable && a.row_filters.is_empty())
                                .then_some(f.row_count)
                                .flatten()
                        })
                        .collect::<Vec<_>>(),
                )),
            )
            .add(
                "table_version",
                true,
                Arc::new(Int64Array::from(
                    facts.iter().map(|f| f.version).collect::<Vec<_>>(),
                )),
            )
            .add(
                "last_modified",
                true,
                Arc::new(
                    TimestampMillisecondArray::from(
                        facts.iter().map(|f| f.last_modified_ms).collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
            )
            .add(
                "freshness_sla",
                true,
                Arc::new(IntervalMonthDayNanoArray::from(
                    sla.iter()
                        .map(|s| s.map(|s| IntervalMonthDayNano::new(0, 0, s * 1_000_000_000)))
                        .collect::<Vec<_>>(),
                )),
            )
            .text("freshness_status", status)
            .text(
                "quality_status",
                tables
                    .iter()
                    .map(|(t, _)| match self.engine.quality_board().latest(t) {
                        Some(r) if r.passes() => "passed".to_string(),
                        Some(_) => "failed".to_string(),
                        None => "unknown".to_string(),
                    })
                    .collect(),
            )
            .add(
                "availability_sla",
                true,
                Arc::new(Float64Array::from(
                    tables
                        .iter()
                        .map(|(t, _)| contract(t).and_then(|c| c.availability_sla))
                        .collect::<Vec<_>>(),
                )),
            )
            .flag(
                "accelerated",
                accelerated
                    .iter()
                    .map(|a| a.as_ref().is_some_and(|a| a.serving))
                    .collect(),
            )
            .add(
                "accelerated_at",
                true,
                Arc::new(
                    TimestampMillisecondArray::from(
                        accelerated
                            .iter()
                            .map(|a| {
                                a.as_ref().and_then(|a| a.built_at).and_then(|t| {
                                    t.duration_since(std::time::UNIX_EPOCH)
                                        .ok()
                                        .map(|d| d.as_millis() as i64)
                                })
                            })
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
            )
            .opt_text(
                "accelerated_version",
                accelerated
                    .iter()
                    .map(|a| a.as_ref().and_then(|a| a.version.clone()))
                    .collect(),
            )
            .opt_text(
                "acceleration_error",
                accelerated
                    .iter()
                    .map(|a| a.as_ref().and_then(|a| a.error.clone()))
                    .collect(),
            )
            .opt_text(
                "materialized_at",
                accelerated
                    .iter()
                    .map(|a| a.as_ref().and_then(|a| a.location.clone()))
                    .collect(),
            )
            .opt_text(
                "built_from",
                accelerated
                    .iter()
                    .map(|a| {
                        a.as_ref()
                            .filter(|a| !a.built_from.is_empty())
                            .map(|a| a.built_from.join(", "))
                    })
                    .collect(),
            )
            .finish()
    }

    pub(super) fn columns(&self) -> Result<RecordBatch> {
        let mut schema_names = Vec::new();
        let mut table_names = Vec::new();
        let mut names = Vec::new();
        let mut positions = Vec::new();
        let mut data_types = Vec::new();
        let mut logical = Vec::new();
        let mut descriptions = Vec::new();
        let mut classifications = Vec::new();
        let mut tags = Vec::new();
        let mut required = Vec::new();
        let mut unique = Vec::new();
        let mut primary = Vec::new();
        let mut masked = Vec::new();
        let mut kinds = Vec::new();
        let mut sources = Vec::new();
        for (t, access) in self.visible_tables() {
            let served = t.provider.schema();
            for (i, c) in t.def.columns.iter().enumerate() {
                let mask = access.masks.iter().find(|m| m.column == c.name);
                schema_names.push(t.def.domain.clone());
                table_names.push(t.def.name.clone());
                names.push(c.name.clone());
                positions.push(i as i64 + 1);
                data_types.push(
                    served
                        .field_with_name(&c.name)
                        .map(|f| f.data_type().to_string())
                        .unwrap_or_default(),
                );
                logical.push(c.logical_type.map(|l| format!("{l:?}").to_lowercase()));
                descriptions.push(c.description.clone());
                classifications.push(c.classification.clone());
                tags.push(c.tags.clone());
                required.push(c.required);
                unique.push(c.unique);
                primary.push(c.primary_key_position.is_some());
                masked.push(mask.is_some());
                kinds.push(mask.map(|m| m.kind.clone()));
                sources.push(mask.map(|m| m.source.clone()));
            }
        }
        Columns::default()
            .text("table_schema", schema_names)
            .text("table_name", table_names)
            .text("column_name", names)
            .add(
                "ordinal_position",
                false,
                Arc::new(Int64Array::from(positions)),
            )
            .text("data_type", data_types)
            .opt_text("logical_type", logical)
            .opt_text("description", descriptions)
            .opt_text("classification", classifications)
            .list("tags", tags)
            .flag("required", required)
            .flag("unique", unique)
            .flag("primary_key", primary)
            .flag("masked", masked)
            .opt_text("mask_kind", kinds)
            .opt_text("mask_source", sources)
            .finish()
    }

    pub(super) fn my_access(&self) -> Result<RecordBatch> {
        let tables = self.visible_tables();
        Columns::default()
            .table_keys(&tables)
            .flag("readable", tables.iter().map(|(_, a)| a.readable).collect())
            .text(
                "reason",
                tables.iter().map(|(_, a)| a.reason.clone()).collect(),
            )
            .list(
                "row_filters",
                tables
                    .iter()
                    .map(|(_, a)| {
                        a.row_filters
                            .iter()
                            .map(|(id, sql)| format!("{id}: {sql}"))
                            .collect()
                    })
                    .collect(),
            )
            .list(
                "masked_columns",
                tables
                    .iter()
                    .map(|(_, a)| {
                        a.masks
                            .iter()
                            .map(|m| format!("{}: {} ({})", m.column, m.kind, m.source))
                            .collect()
                    })
                    .collect(),
            )
            .finish()
    }

    pub(super) fn whoami(&self) -> Result<RecordBatch> {
        let p = self.principal;
        let attributes = p
            .attributes
            .iter()
            .map(|(k, v)| match v {
                AttributeValue::One(v) => format!("{k}={v}"),
                AttributeValue::Many(v) => format!("{k}={}", v.join(",")),
            })
            .collect();
        Columns::default()
            .opt_text("principal", vec![p.name.clone()])
            .list("roles", vec![p.roles.iter().cloned().collect()])
            .list("attributes", vec![attributes])
            .finish()
    }

    /// The latest result of every rule of every visible table. The
    /// measured value only to a caller no policy restricts on the table:
    /// a count over rows a filter hides, or an aggregate of a masked
    /// column, would tell them what the policy keeps from them.
    pub(super) fn quality(&self) -> Result<RecordBatch> {
        let tables = self.visible_tables();
        let mut keys: Vec<(&ServedTable, Access)> = Vec::new();
        let mut rows = Vec::new();
        for (t, access) in &tables {
            let Some(report) = self.engine.quality_board().latest(t) else {
                continue;
            };
            let unrestricted =
                access.readable && access.row_filters.is_empty() && access.masks.is_empty();
            for r in &report.results {
                keys.push((*t, access.clone()));
                rows.push((
                    r.rule.id.clone(),
                    r.rule.dimension.clone(),
                    r.rule.severity.clone(),
                    r.status.label().to_string(),
                    r.measured.filter(|_| unrestricted),
                    r.threshold.clone(),
                    report.checked_at_ms,
                ));
            }
        }
        Columns::default()
            .table_keys(&keys)
            .text("rule", rows.iter().map(|r| r.0.clone()).collect())
            .opt_text("dimension", rows.iter().map(|r| r.1.clone()).collect())
            .text("severity", rows.iter().map(|r| r.2.clone()).collect())
            .text("status", rows.iter().map(|r| r.3.clone()).collect())
            .add(
                "measured",
                true,
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                )),
            )
            .text("threshold", rows.iter().map(|r| r.5.clone()).collect())
            .add(
                "checked_at",
                false,
                Arc::new(
                    TimestampMillisecondArray::from(rows.iter().map(|r| r.6).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
            )
            .finish()
    }

    pub(super) fn lineage(&self) -> Result<RecordBatch> {
        let mesh = self.engine.mesh();
        let visible: BTreeSet<String> = if self.readable_only {
            self.visible_tables()
                .iter()
                .map(|(t, _)| t.def.product_id.clone())
                .collect()
        } else {
            mesh.products.iter().map(|p| p.id.clone()).collect()
        };
        let edges: Vec<_> = mesh
            .lineage()
            .into_iter()
            .filter(|e| {
                !self.schema_only
                    && visible.contains(&e.from_product)
                    && visible.contains(&e.to_product)
            })
            .collect();
        Columns::default()
            .text(
                "from_product",
                edges.iter().map(|e| e.from_product.clone()).collect(),
            )
            .text(
                "to_product",
                edges.iter().map(|e| e.to_product.clone()).collect(),
            )
            .text("via", edges.iter().map(|e| e.via.clone()).collect())
            .text(
                "declared_in",
                edges
                    .iter()
                    .map(|e| mesh.display_path(&e.declared_in).display().to_string())
                    .collect(),
            )
            .finish()
    }
}
