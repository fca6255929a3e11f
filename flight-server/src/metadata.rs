//! Metadata results: SqlInfo, xdbc type info, key listings, and the wire
//! form of schemas (no view types; `ARROW:FLIGHT:SQL:*` field metadata).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{
    Nullable, Searchable, SqlInfo, SqlNullOrdering, SqlSupportedCaseSensitivity,
    SqlSupportedTransaction, XdbcDataType,
};

/// The server's SqlInfo answers (proto types as the Flight SQL spec gives).
pub fn sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "meshq");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerSubstraitMinVersion, "");
    b.append(SqlInfo::FlightSqlServerSubstraitMaxVersion, "");
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(
        SqlInfo::SqlIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityLowercase as i32,
    );
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(
        SqlInfo::SqlQuotedIdentifierCase,
        SqlSupportedCaseSensitivity::SqlCaseSensitivityCaseInsensitive as i32,
    );
    b.append(SqlInfo::SqlAllTablesAreSelectable, false);
    b.append(
        SqlInfo::SqlNullOrdering,
        SqlNullOrdering::SqlNullsSortedHigh as i32,
    );
    b.append(
        SqlInfo::SqlKeywords,
        &[
            "ABSOLUTE", "ACTION", "ARRAY", "EXPLAIN", "OFFSET", "QUALIFY",
        ][..],
    );
    b.append(
        SqlInfo::SqlNumericFunctions,
        &[
            "abs", "ceil", "floor", "ln", "log", "power", "round", "sqrt", "trunc",
        ][..],
    );
    b.append(
        SqlInfo::SqlStringFunctions,
        &[
            "concat",
            "length",
            "lower",
            "ltrim",
            "regexp_replace",
            "replace",
            "rtrim",
            "substr",
            "trim",
            "upper",
        ][..],
    );
    b.append(
        SqlInfo::SqlSystemFunctions,
        &[
            "current_user",
            "has_role",
            "principal_attr",
            "principal_attrs",
        ][..],
    );
    b.append(
        SqlInfo::SqlDatetimeFunctions,
        &[
            "current_date",
            "current_time",
            "date_bin",
            "date_part",
            "date_trunc",
            "now",
            "to_timestamp",
        ][..],
    );
    b.append(SqlInfo::SqlSearchStringEscape, "\\");
    b.append(SqlInfo::SqlExtraNameCharacters, "");
    b.append(SqlInfo::SqlSupportsColumnAliasing, true);
    b.append(SqlInfo::SqlNullPlusNullIsNull, true);
    b.append(SqlInfo::SqlSupportsConvert, HashMap::<i32, Vec<i32>>::new());
    b.append(SqlInfo::SqlSupportsTableCorrelationNames, true);
    b.append(SqlInfo::SqlSupportsDifferentTableCorrelationNames, false);
    b.append(SqlInfo::SqlSupportsExpressionsInOrderBy, true);
    b.append(SqlInfo::SqlSupportsOrderByUnrelated, true);
    // Bitmask of SqlSupportedGroupBy: unrelated (0) | beyond select (1).
    b.append(SqlInfo::SqlSupportedGroupBy, 3_i32);
    b.append(SqlInfo::SqlSupportsLikeEscapeClause, true);
    b.append(SqlInfo::SqlSupportsNonNullableColumns, true);
    b.append(SqlInfo::SqlSchemaTerm, "domain");
    b.append(SqlInfo::SqlProcedureTerm, "procedure");
    b.append(SqlInfo::SqlCatalogTerm, "catalog");
    b.append(SqlInfo::SqlCatalogAtStart, true);
    b.append(SqlInfo::SqlSelectForUpdateSupported, false);
    b.append(SqlInfo::SqlStoredProceduresSupported, false);
    b.append(SqlInfo::SqlCorrelatedSubqueriesSupported, true);
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build()
        .unwrap_or_else(|e| unreachable!("static SqlInfo data is valid: {e}"))
}

fn xdbc(name: &str, data_type: XdbcDataType, searchable: Searchable) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size: None,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(data_type, XdbcDataType::XdbcVarchar),
        searchable,
        unsigned_attribute: Some(false),
        fixed_prec_scale: matches!(data_type, XdbcDataType::XdbcDecimal),
        auto_increment: Some(false),
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// The SQL types meshq serves.
pub fn xdbc_types() -> XdbcTypeInfoData {
    let mut b = XdbcTypeInfoDataBuilder::new();
    let full = Searchable::Full;
    for (name, t) in [
        ("BOOLEAN", XdbcDataType::XdbcBit),
        ("TINYINT", XdbcDataType::XdbcTinyint),
        ("SMALLINT", XdbcDataType::XdbcSmallint),
        ("INTEGER", XdbcDataType::XdbcInteger),
        ("BIGINT", XdbcDataType::XdbcBigint),
        ("FLOAT", XdbcDataType::XdbcFloat),
        ("DOUBLE", XdbcDataType::XdbcDouble),
        ("DECIMAL", XdbcDataType::XdbcDecimal),
        ("VARCHAR", XdbcDataType::XdbcVarchar),
        ("BINARY", XdbcDataType::XdbcBinary),
        ("DATE", XdbcDataType::XdbcDate),
        ("TIME", XdbcDataType::XdbcTime),
        ("TIMESTAMP", XdbcDataType::XdbcTimestamp),
    ] {
        b.append(xdbc(name, t, full));
    }
    b.build()
        .unwrap_or_else(|e| unreachable!("static xdbc data is valid: {e}"))
}

/// `Utf8View` → `Utf8`, `BinaryView` → `Binary`, recursively, unless
/// `views` (the client asked for view types): some drivers cannot read
/// views, and short strings take more bytes as views.
pub fn wire_type(t: &DataType, views: bool) -> DataType {
    let field = |f: &FieldRef| wire_field(f, views);
    match t {
        DataType::Utf8View if !views => DataType::Utf8,
        DataType::BinaryView if !views => DataType::Binary,
        DataType::ListView(f) | DataType::List(f) => DataType::List(field(f)),
        DataType::LargeListView(f) | DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        // The Flight encoder sends dictionary columns as their values
        // (hydrated), so the advertised schema must say so too.
        DataType::Dictionary(_, v) => wire_type(v, views),
        other => other.clone(),
    }
}

fn wire_field(f: &FieldRef, views: bool) -> FieldRef {
    Arc::new(
        f.as_ref()
            .clone()
            .with_data_type(wire_type(f.data_type(), views)),
    )
}

/// The schema sent for a result whose engine schema is `schema`; view
/// types are kept when `views`.
pub fn wire_schema(schema: &Schema, views: bool) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| wire_field(f, views))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// What the contract and the caller's policies say of one column, for
/// `GetTables`: its description under the Flight SQL `REMARKS` key, and
/// meshq's own keys.
#[derive(Debug, Clone, Default)]
pub struct ColumnNotes {
    /// The contract's description.
    pub description: Option<String>,
    /// The contract's classification (`pii`, …).
    pub classification: Option<String>,
    /// The mask that applies to the caller, if any.
    pub mask_kind: Option<String>,
}

/// Description, classification and the caller's mask of each column of
/// `def`, for `GetTables`.
pub fn column_notes(
    session: &meshq_engine::MeshSession,
    def: &meshq_catalog::TableDef,
) -> HashMap<String, ColumnNotes> {
    let access =
        meshq_engine::meta::access_of(session.engine(), &def.qualified_name(), session.principal());
    def.columns
        .iter()
        .map(|c| {
            let mask_kind = access
                .iter()
                .flat_map(|a| a.masks.iter())
                .find(|m| m.column == c.name)
                .map(|m| m.kind.clone());
            (
                c.name.clone(),
                ColumnNotes {
                    description: c.description.clone(),
                    classification: c.classification.clone(),
                    mask_kind,
                },
            )
        })
        .collect()
}

/// The wire schema of `plan`'s result, its columns that are a mesh
/// table's columns (plainly selected, also through a table alias)
/// annotated with the contract's `ARROW:FLIGHT:SQL:REMARKS` and
/// `meshq.classification`. Masks are left to `GetTables` and `meta`: a
/// reload between GetFlightInfo and DoGet may change them, and DoGet must
/// send the schema GetFlightInfo announced.
pub fn result_schema(
    session: &meshq_engine::MeshSession,
    plan: &datafusion::logical_expr::LogicalPlan,
    views: bool,
) -> SchemaRef {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let wire = wire_schema(plan.schema().as_arrow(), views);
    // Table aliases (`FROM sales.orders o`) to the tables they name.
    let mut aliases: std::collections::HashMap<String, String> = Default::default();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::SubqueryAlias(a) = node {
            let mut inner = a.input.as_ref();
            loop {
                match inner {
                    LogicalPlan::TableScan(scan) => {
                        aliases.insert(a.alias.to_string(), scan.table_name.to_string());
                        break;
                    }
                    other if other.inputs().len() == 1 => inner = other.inputs()[0],
                    _ => break,
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let engine = session.engine();
    let mut notes_of: std::collections::HashMap<String, HashMap<String, ColumnNotes>> =
        Default::default();
    let fields: Vec<Field> = wire
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let (qualifier, _) = plan.schema().qualified_field(i);
            let table = qualifier.map(|q| {
                let q = q.to_string();
                aliases.get(&q).cloned().unwrap_or(q)
            });
            let def = table.as_deref().and_then(|t| {
                let (domain, name) = t.split_once('.')?;
                engine.mesh().table(domain, name)
            });
            let Some(def) = def else {
                return f.as_ref().clone();
            };
            let notes = notes_of
                .entry(def.qualified_name())
                .or_insert_with(|| column_notes(session, def));
            match notes.get(f.name()) {
                Some(n) => {
                    let mut md = f.metadata().clone();
                    annotate(
                        &mut md,
                        &ColumnNotes {
                            mask_kind: None,
                            ..n.clone()
                        },
                        false,
                    );
                    f.as_ref().clone().with_metadata(md)
                }
                None => f.as_ref().clone(),
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, wire.metadata().clone()))
}

/// Adds `notes` to a field's metadata; the caller's mask only `with_mask`.
fn annotate(md: &mut HashMap<String, String>, n: &ColumnNotes, with_mask: bool) {
    if let Some(d) = &n.description {
        md.insert("ARROW:FLIGHT:SQL:REMARKS".into(), d.clone());
    }
    if let Some(c) = &n.classification {
        md.insert("meshq.classification".into(), c.clone());
    }
    if with_mask {
        md.insert("meshq.masked".into(), n.mask_kind.is_some().to_string());
        if let Some(k) = &n.mask_kind {
            md.insert("meshq.mask_kind".into(), k.clone());
        }
    }
}

/// A table's schema for `GetTables`, with `ARROW:FLIGHT:SQL:*` metadata and,
/// for columns in `notes`, `ARROW:FLIGHT:SQL:REMARKS` (the description) and
/// `meshq.classification`, `meshq.masked`, `meshq.mask_kind`.
pub fn table_schema(
    catalog: &str,
    schema_name: &str,
    table: &str,
    schema: &Schema,
    notes: &HashMap<String, ColumnNotes>,
) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut md = f.metadata().clone();
            md.insert("ARROW:FLIGHT:SQL:CATALOG_NAME".into(), catalog.into());
            md.insert("ARROW:FLIGHT:SQL:DB_SCHEMA_NAME".into(), schema_name.into());
            md.insert("ARROW:FLIGHT:SQL:TABLE_NAME".into(), table.into());
            md.insert(
                "ARROW:FLIGHT:SQL:TYPE_NAME".into(),
                wire_type(f.data_type(), false).to_string(),
            );
            md.insert("ARROW:FLIGHT:SQL:IS_READ_ONLY".into(), "1".into());
            md.insert("ARROW:FLIGHT:SQL:IS_SEARCHABLE".into(), "1".into());
            md.insert("ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT".into(), "0".into());
            md.insert(
                "ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE".into(),
                if matches!(
                    wire_type(f.data_type(), false),
                    DataType::Utf8 | DataType::LargeUtf8
                ) {
                    "1"
                } else {
                    "0"
                }
                .into(),
            );
            if let DataType::Decimal128(p, s) | DataType::Decimal256(p, s) = f.data_type() {
                md.insert("ARROW:FLIGHT:SQL:PRECISION".into(), p.to_string());
                md.insert("ARROW:FLIGHT:SQL:SCALE".into(), s.to_string());
            }
            if let Some(n) = notes.get(f.name()) {
                annotate(&mut md, n, true);
            }
            f.as_ref()
                .clone()
                .with_data_type(wire_type(f.data_type(), false))
                .with_metadata(md)
        })
        .collect();
    Schema::new(fields)
}

/// `GetPrimaryKeys` result schema.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// One primary key column: catalog, schema, table, column, 1-based position.
pub struct PrimaryKeyRow {
    /// Catalog.
    pub catalog: String,
    /// Schema (domain).
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
    /// Position in the key, from 1.
    pub sequence: i32,
}

/// Rows of `GetPrimaryKeys`.
pub fn primary_keys_batch(rows: &[PrimaryKeyRow]) -> arrow::error::Result<RecordBatch> {
    let strings = |f: fn(&PrimaryKeyRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_new(
        primary_keys_schema(),
        vec![
            strings(|r| &r.catalog),
            strings(|r| &r.schema),
            strings(|r| &r.table),
            strings(|r| &r.column),
            Arc::new(StringArray::from(vec![None::<&str>; rows.len()])),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            )),
        ],
    )
}

/// `GetImportedKeys` / `GetExportedKeys` / `GetCrossReference` schema.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// meshq declares no foreign keys: an empty, correctly typed batch.
pub fn empty_foreign_keys() -> RecordBatch {
    RecordBatch::new_empty(foreign_keys_schema())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_become_plain_types() {
        let s = Schema::new(vec![
            Field::new("a", DataType::Utf8View, true),
            Field::new(
                "b",
                DataType::List(Arc::new(Field::new("item", DataType::BinaryView, true))),
                true,
            ),
        ]);
        let w = wire_schema(&s, false);
        assert_eq!(w.field(0).data_type(), &DataType::Utf8);
        assert_eq!(
            w.field(1).data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::Binary, true)))
        );
        // Kept for a client that asked for view types.
        let w = wire_schema(&s, true);
        assert_eq!(w.field(0).data_type(), &DataType::Utf8View);
        assert_eq!(
            w.field(1).data_type(),
            &DataType::List(Arc::new(Field::new("item", DataType::BinaryView, true)))
        );
    }

    #[test]
    fn sql_info_has_the_ids_clients_ask_for() {
        let info = sql_info();
        let ids = [
            0u32, 1, 2, 3, 4, 5, 6, 7, 8, 500, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510,
            511, 512, 513, 514, 517, 522, 529, 531, 563,
        ];
        let batch = info.record_batch(ids).unwrap();
        assert_eq!(batch.num_rows(), ids.len());
    }
}
