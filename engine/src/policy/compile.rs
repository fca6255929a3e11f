//! Turning a table's declared policies into checked expressions, once, when
//! the mesh loads.
//!
//! Every expression is parsed and type-checked against the table's schema
//! here, so `meshq validate` reports a bad policy with its file, table and id,
//! and a query never meets an expression that cannot be planned. A policy
//! that cannot be built makes its table unreadable (fail closed).

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::functions::expr_fn::{date_trunc, regexp_replace};
use datafusion::logical_expr::{
    EmptyRelation, Expr, ExprSchemable, LogicalPlan, Projection, cast, lit,
};
use datafusion::prelude::SessionContext;
use meshq_catalog::TableDef;
use meshq_catalog::policy::{MaskSpec, TruncateUnit};
use meshq_catalog::{Mesh, Principal};

use super::udf::{RoundMask, StringMask};

/// A mask ready to apply to a column expression.
#[derive(Debug, Clone)]
pub struct CompiledMask {
    /// Column masked.
    pub column: String,
    /// Where it comes from: `mask` on the column, or `global policy <id>`.
    pub origin: String,
    /// Kind, for `EXPLAIN` and the audit.
    pub kind: &'static str,
    /// Roles that see the raw value.
    pub except_roles: Vec<String>,
    /// Id of the global policy it comes from, if any.
    pub global_policy: Option<String>,
    body: MaskBody,
}

#[derive(Debug, Clone)]
enum MaskBody {
    /// `f(column)`, typed like the column.
    Call(Arc<datafusion::logical_expr::ScalarUDF>),
    /// A constant of the column type (nullify, constant).
    Value(ScalarValue),
    /// date_trunc, cast back to the column type.
    Truncate(&'static str, DataType),
    /// regexp_replace, cast back to the column type.
    Regex(String, String, DataType),
    /// Any expression over the row, already cast to the column type.
    Sql(Expr),
}

impl CompiledMask {
    /// The masked value of `column` (an expression reading the raw column);
    /// `row` maps other column names to their raw expressions for `sql` masks.
    pub fn apply(&self, column: Expr, qualify: &dyn Fn(Expr) -> Expr) -> Expr {
        match &self.body {
            MaskBody::Call(udf) => udf.call(vec![column]),
            MaskBody::Value(v) => lit(v.clone()),
            MaskBody::Truncate(unit, t) => {
                let ts = match t {
                    DataType::Date32 | DataType::Date64 => cast(
                        column,
                        DataType::Timestamp(arrow::datatypes::TimeUnit::Second, None),
                    ),
                    _ => column,
                };
                cast(date_trunc(lit(*unit), ts), t.clone())
            }
            MaskBody::Regex(p, r, t) => cast(
                regexp_replace(
                    cast(column, DataType::Utf8),
                    lit(p.as_str()),
                    lit(r.as_str()),
                    Some(lit("g")),
                ),
                t.clone(),
            ),
            MaskBody::Sql(e) => qualify(e.clone()),
        }
    }
}

/// A row filter ready to apply.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    /// The filter's id.
    pub id: String,
    /// Roles that see every row.
    pub except_roles: Vec<String>,
    /// Boolean expression over unqualified columns; may call the principal
    /// functions, which are replaced by literals per query.
    pub expr: Expr,
}

/// A table's policies, compiled.
#[derive(Debug, Clone, Default)]
pub struct TablePolicies {
    /// `readRoles`, when declared.
    pub read_roles: Option<Vec<String>>,
    /// Masks by column (at most one per column).
    pub masks: Vec<CompiledMask>,
    /// Row filters, ANDed.
    pub row_filters: Vec<CompiledFilter>,
}

impl TablePolicies {
    /// The masks that apply to `principal` (it holds none of their
    /// exempting roles).
    pub fn masks_for<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> impl Iterator<Item = &'a CompiledMask> + 'a {
        self.masks
            .iter()
            .filter(|m| !principal.has_any_role(&m.except_roles))
    }

    /// The row filters that apply to `principal`.
    pub fn filters_for<'a>(
        &'a self,
        principal: &'a Principal,
    ) -> impl Iterator<Item = &'a CompiledFilter> + 'a {
        self.row_filters
            .iter()
            .filter(|f| !principal.has_any_role(&f.except_roles))
    }

    /// Whether there is nothing to enforce.
    pub fn is_empty(&self) -> bool {
        self.read_roles.is_none() && self.masks.is_empty() && self.row_filters.is_empty()
    }
}

/// Why a policy cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// Parsing or planning the expression failed.
    #[error("{}", .0.find_root().strip_backtrace())]
    Expression(#[from] datafusion::error::DataFusionError),
    /// A row filter that is not a condition.
    #[error("expression is of type {0}, not boolean")]
    NotBoolean(DataType),
    /// An expression DataFusion could not type.
    #[error("expression has no type")]
    Untyped,
    /// A mask kind that does not fit the column's type.
    #[error("a {kind} mask needs a {needs} column; `{column}` is {found}")]
    Unfit {
        /// The mask kind.
        kind: &'static str,
        /// What it needs.
        needs: &'static str,
        /// The column.
        column: String,
        /// Its type.
        found: DataType,
    },
    /// A hash key that is not in `meshq.yaml`.
    #[error("secret `{0}` is not defined in meshq.yaml")]
    UndefinedSecret(String),
    /// A hash key that cannot be read.
    #[error("secret `{name}`: {reason}")]
    Secret {
        /// Its name in `meshq.yaml`.
        name: String,
        /// Why (never its value).
        reason: String,
    },
    /// An empty hash key.
    #[error("secret `{0}` is empty")]
    EmptySecret(String),
    /// A constant mask whose value is not a scalar.
    #[error("a constant mask's value must be a scalar")]
    NotScalar,
    /// A constant that cannot take the column's type.
    #[error("value cannot be cast to {to}: {}", .source.strip_backtrace())]
    Cast {
        /// The column type.
        to: DataType,
        /// Why.
        source: datafusion::error::DataFusionError,
    },
    /// A regexReplace pattern that is not a regular expression.
    #[error("invalid pattern: {0}")]
    Pattern(#[from] regex::Error),
    /// A mask whose result is not of the column's type.
    #[error("mask produces {found}, not the column's type {expected}")]
    WrongType {
        /// What it produces.
        found: DataType,
        /// The column's type.
        expected: DataType,
    },
}

/// A policy that cannot be built: which, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBuildError {
    /// Policy name as users know it: `mask on column email`,
    /// `row filter own_region`, `global policy pii-hash`.
    pub policy: String,
    /// Why.
    pub reason: String,
    /// File to fix (contract or policy set).
    pub file: std::path::PathBuf,
}

/// Compiles the policies of `def`, whose served schema is `schema`.
/// `ctx` knows the principal functions (typing-only variants).
pub fn compile_table(
    mesh: &Mesh,
    def: &TableDef,
    schema: &SchemaRef,
    ctx: &SessionContext,
    secret_env: &std::collections::BTreeMap<String, String>,
) -> Result<TablePolicies, Vec<PolicyBuildError>> {
    let df_schema = match DFSchema::try_from(schema.as_ref().clone()) {
        Ok(s) => s,
        Err(e) => {
            return Err(vec![PolicyBuildError {
                policy: "table schema".into(),
                reason: e.to_string(),
                file: def.contract_file.clone(),
            }]);
        }
    };
    let mut errors = Vec::new();
    let mut out = TablePolicies {
        read_roles: def.policy.read_roles.clone(),
        ..Default::default()
    };
    for col in &def.columns {
        let Ok(field) = schema.field_with_name(&col.name) else {
            continue;
        };
        let (spec, origin, extra_except, file, global_policy) = if let Some(m) = &col.mask {
            (
                m,
                format!("mask on column {}", col.name),
                vec![],
                def.contract_file.clone(),
                None,
            )
        } else if let Some((set, policy)) = mesh.policy_sets.iter().find_map(|s| {
            s.set
                .policies
                .iter()
                .find(|p| p.matcher.matches(col.classification.as_deref(), &col.tags))
                .map(|p| (s, p))
        }) {
            (
                &policy.mask,
                format!("global policy {} on column {}", policy.id, col.name),
                policy.except_roles.clone(),
                set.file.clone(),
                Some(policy.id.clone()),
            )
        } else {
            continue;
        };
        match compile_mask(
            mesh,
            spec,
            field.data_type(),
            &col.name,
            &df_schema,
            ctx,
            secret_env,
        ) {
            Ok(body) => {
                let mut except_roles = spec.except_roles().to_vec();
                except_roles.extend(extra_except);
                out.masks.push(CompiledMask {
                    column: col.name.clone(),
                    origin,
                    kind: spec.kind_name(),
                    except_roles,
                    global_policy,
                    body,
                });
            }
            Err(reason) => errors.push(PolicyBuildError {
                policy: origin,
                reason: reason.to_string(),
                file,
            }),
        }
    }
    for f in &def.policy.row_filters {
        match compile_filter(&f.expression, &df_schema, ctx) {
            Ok(expr) => out.row_filters.push(CompiledFilter {
                id: f.id.clone(),
                except_roles: f.except_roles.clone(),
                expr,
            }),
            Err(reason) => errors.push(PolicyBuildError {
                policy: format!("row filter {}", f.id),
                reason: reason.to_string(),
                file: def.contract_file.clone(),
            }),
        }
    }
    for e in &mut errors {
        // One problem, one line.
        e.reason = e.reason.replace('\n', " ");
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Plans `exprs` over an empty relation of `schema` through the analyzer,
/// which resolves functions and coerces types exactly as a query would.
fn analyze(
    exprs: Vec<Expr>,
    schema: &DFSchema,
    ctx: &SessionContext,
) -> Result<Vec<DataType>, BuildFailure> {
    let input = Arc::new(LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(schema.clone()),
    }));
    let plan = Projection::try_new(exprs, input).map(LogicalPlan::Projection)?;
    let state = ctx.state();
    let analyzed = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})?;
    Ok(analyzed
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect())
}

/// Parses a policy expression. `current_user()` is accepted as DESIGN
/// writes it, though SQL spells the function without parentheses.
fn parse_policy_expr(
    sql: &str,
    schema: &DFSchema,
    ctx: &SessionContext,
) -> Result<Expr, BuildFailure> {
    static CURRENT_USER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)\bcurrent_user\s*\(\s*\)")
            .unwrap_or_else(|_| unreachable!("valid regex"))
    });
    let sql = CURRENT_USER.replace_all(sql, "current_user");
    Ok(ctx.parse_sql_expr(&sql, schema)?)
}

fn compile_filter(
    sql: &str,
    schema: &DFSchema,
    ctx: &SessionContext,
) -> Result<Expr, BuildFailure> {
    let expr = parse_policy_expr(sql, schema, ctx)?;
    let types = analyze(vec![expr.clone().alias("filter")], schema, ctx)?;
    match types.first() {
        Some(DataType::Boolean) => Ok(expr),
        Some(t) => Err(BuildFailure::NotBoolean(t.clone())),
        None => Err(BuildFailure::Untyped),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn compile_mask(
    mesh: &Mesh,
    spec: &MaskSpec,
    t: &DataType,
    column: &str,
    schema: &DFSchema,
    ctx: &SessionContext,
    secret_env: &std::collections::BTreeMap<String, String>,
) -> Result<MaskBody, BuildFailure> {
    let needs = |ok: bool, what: &'static str| {
        if ok {
            Ok(())
        } else {
            Err(BuildFailure::Unfit {
                kind: spec.kind_name(),
                needs: what,
                column: column.to_string(),
                found: t.clone(),
            })
        }
    };
    let body = match spec {
        MaskSpec::Hash { key_ref, .. } => {
            needs(is_string(t), "string")?;
            let secret = mesh
                .config
                .secrets
                .get(key_ref)
                .ok_or_else(|| BuildFailure::UndefinedSecret(key_ref.clone()))?;
            let key = secret
                .resolve_with(secret_env)
                .map_err(|reason| BuildFailure::Secret {
                    name: key_ref.clone(),
                    reason,
                })?;
            if key.is_empty() {
                return Err(BuildFailure::EmptySecret(key_ref.clone()));
            }
            MaskBody::Call(Arc::new(
                datafusion::logical_expr::ScalarUDF::new_from_impl(StringMask::hash(key_ref, &key)),
            ))
        }
        MaskSpec::Partial {
            show_first,
            padding,
            show_last,
            ..
        } => {
            needs(is_string(t), "string")?;
            MaskBody::Call(Arc::new(
                datafusion::logical_expr::ScalarUDF::new_from_impl(StringMask::partial(
                    *show_first,
                    padding,
                    *show_last,
                )),
            ))
        }
        MaskSpec::Redact { letter, digit, .. } => {
            needs(is_string(t), "string")?;
            MaskBody::Call(Arc::new(
                datafusion::logical_expr::ScalarUDF::new_from_impl(StringMask::redact(
                    *letter, *digit,
                )),
            ))
        }
        MaskSpec::Nullify { .. } => MaskBody::Value(ScalarValue::try_from(t)?),
        MaskSpec::Truncate { unit, .. } => {
            needs(
                matches!(
                    t,
                    DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                ),
                "date or timestamp",
            )?;
            let unit = match unit {
                TruncateUnit::Year => "year",
                TruncateUnit::Month => "month",
                TruncateUnit::Day => "day",
                TruncateUnit::Hour => "hour",
            };
            MaskBody::Truncate(unit, t.clone())
        }
        MaskSpec::Round { digits, .. } => {
            needs(RoundMask::supports(t), "numeric")?;
            MaskBody::Call(Arc::new(
                datafusion::logical_expr::ScalarUDF::new_from_impl(RoundMask::new(*digits)),
            ))
        }
        MaskSpec::Constant { value, .. } => {
            let v = match value {
                serde_yaml_ng::Value::Null => ScalarValue::Null,
                serde_yaml_ng::Value::Bool(b) => ScalarValue::Boolean(Some(*b)),
                serde_yaml_ng::Value::Number(n) if n.is_i64() => ScalarValue::Int64(n.as_i64()),
                serde_yaml_ng::Value::Number(n) => ScalarValue::Float64(n.as_f64()),
                serde_yaml_ng::Value::String(s) => ScalarValue::Utf8(Some(s.clone())),
                _ => return Err(BuildFailure::NotScalar),
            };
            let v = v.cast_to(t).map_err(|source| BuildFailure::Cast {
                to: t.clone(),
                source,
            })?;
            MaskBody::Value(v)
        }
        MaskSpec::RegexReplace {
            pattern,
            replacement,
            ..
        } => {
            needs(is_string(t), "string")?;
            regex::Regex::new(pattern)?;
            MaskBody::Regex(pattern.clone(), replacement.clone(), t.clone())
        }
        MaskSpec::Sql { expression, .. } => {
            let expr = parse_policy_expr(expression, schema, ctx)?;
            let expr = if expr.get_type(schema).ok().as_ref() == Some(t) {
                expr
            } else {
                cast(expr, t.clone())
            };
            MaskBody::Sql(expr)
        }
    };
    // Plan the mask like a query would, to catch type errors now.
    let probe = CompiledMask {
        column: column.to_string(),
        origin: String::new(),
        kind: spec.kind_name(),
        except_roles: vec![],
        global_policy: None,
        body: body.clone(),
    };
    let expr = probe.apply(
        Expr::Column(datafusion::common::Column::new_unqualified(column)),
        &|e| e,
    );
    let types = analyze(vec![expr.alias(column)], schema, ctx)?;
    match types.first() {
        Some(out) if out == t => Ok(body),
        Some(out) => Err(BuildFailure::WrongType {
            found: out.clone(),
            expected: t.clone(),
        }),
        None => Err(BuildFailure::Untyped),
    }
}
