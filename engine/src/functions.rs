//! Functions whose output grows with an argument's value (`repeat('x',
//! 700000000)`, `lpad`, `range`, …), bounded.
//!
//! Such a function allocates its result outside any memory pool, so one
//! call could take the server's memory. Each is wrapped: before the call the
//! wrapper computes an upper bound of the result's size from the arguments,
//! after it the real size, and either past the session's
//! `meshq.max_function_output` (the query's memory limit, else the server's,
//! else 1 GiB) fails the query with `ResourcesExhausted`, naming the
//! function and the limit. The wrapped function is otherwise the same: same
//! name, signature, types and simplifications.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, FieldRef, IntervalUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use meshq_catalog::limits::DEFAULT_MAX_FUNCTION_OUTPUT;

use crate::options::MeshqOptions;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: n characters.
    Pad,
    /// `replace(s, from, to)`: every match of `from` becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`.
    RegexpReplace,
    /// `array_repeat(e, n)`: n elements.
    ArrayRepeat,
    /// `range(…)`, `generate_series(…)`: (stop − start) / step elements.
    Range,
    /// `array_resize(a, n [, v])`: n elements.
    Resize,
}

const GROWING: [(&str, Growth); 8] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("array_resize", Growth::Resize),
];

/// The bounded versions of `state`'s growing functions, to register over
/// the originals.
pub fn bounded_functions(state: &SessionState) -> Vec<Arc<ScalarUDF>> {
    let mut out = Vec::new();
    let mut wrap = |name: &str, growth: Growth| {
        if let Some(inner) = state.scalar_functions().get(name) {
            out.push(Arc::new(ScalarUDF::new_from_impl(BoundedUdf {
                inner: Arc::clone(inner),
                growth,
            })));
        }
    };
    for (name, growth) in GROWING {
        wrap(name, growth);
    }
    wrap("generate_series", Growth::Range);
    out
}

/// Whether `udf` is one of meshq's bounded functions: it goes by a
/// built-in's name and reads its bound from the session, so it must not be
/// shipped by name to a process that would take the unbounded built-in.
pub fn is_bounded(udf: &ScalarUDF) -> bool {
    (udf.inner().as_ref() as &dyn std::any::Any).is::<BoundedUdf>()
}

/// A growing function with its output bounded.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BoundedUdf {
    inner: Arc<ScalarUDF>,
    growth: Growth,
}

/// Per-row integer values of an argument (NULL and unconvertible as None).
fn ints(arg: &ColumnarValue, rows: usize) -> Result<Vec<Option<i64>>> {
    let array = arg.to_array(rows)?;
    // Dates as days, timestamps in their unit: the step is converted to
    // the same unit (see `steps`).
    let array = cast(&array, &DataType::Int64)?;
    Ok(array
        .as_primitive::<arrow::datatypes::Int64Type>()
        .iter()
        .collect())
}

/// Per-row byte lengths of a string argument (NULL: 0).
fn byte_lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<usize>> {
    let array = arg.to_array(rows)?;
    let out = match array.data_type() {
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .map(|v| v.map_or(0, str::len))
            .collect(),
        DataType::LargeUtf8 => array
            .as_string::<i64>()
            .iter()
            .map(|v| v.map_or(0, str::len))
            .collect(),
        DataType::Utf8View => array
            .as_string_view()
            .iter()
            .map(|v| v.map_or(0, str::len))
            .collect(),
        _ => {
            let array = cast(&array, &DataType::Utf8)?;
            array
                .as_string::<i32>()
                .iter()
                .map(|v| v.map_or(0, str::len))
                .collect()
        }
    };
    Ok(out)
}

/// Rough bytes per value of an argument (for list elements).
fn value_bytes(arg: &ColumnarValue, rows: usize) -> Result<Vec<usize>> {
    let array: ArrayRef = arg.to_array(rows)?;
    let per = array.get_array_memory_size() / rows.max(1) + 16;
    Ok(vec![per; rows])
}

/// The step of a range in the unit of its start and stop: integers as they
/// are, intervals in days for dates and in the timestamp's unit otherwise.
fn steps(args: &[ColumnarValue], rows: usize) -> Result<Vec<Option<i64>>> {
    let Some(step) = args.get(2) else {
        return Ok(vec![Some(1); rows]);
    };
    let array = step.to_array(rows)?;
    let unit_nanos: i64 = match args[0].data_type() {
        DataType::Date32 | DataType::Date64 => 86_400_000_000_000,
        DataType::Timestamp(u, _) => match u {
            arrow::datatypes::TimeUnit::Second => 1_000_000_000,
            arrow::datatypes::TimeUnit::Millisecond => 1_000_000,
            arrow::datatypes::TimeUnit::Microsecond => 1_000,
            arrow::datatypes::TimeUnit::Nanosecond => 1,
        },
        _ => return ints(step, rows),
    };
    let nanos: Vec<Option<i64>> = match array.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => array
            .as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
            .iter()
            .map(|v| {
                v.map(|v| {
                    (v.months as i64 * 28 + v.days as i64) * 86_400_000_000_000 + v.nanoseconds
                })
            })
            .collect(),
        DataType::Interval(IntervalUnit::DayTime) => array
            .as_primitive::<arrow::datatypes::IntervalDayTimeType>()
            .iter()
            .map(|v| v.map(|v| (v.days as i64 * 86_400_000 + v.milliseconds as i64) * 1_000_000))
            .collect(),
        DataType::Interval(IntervalUnit::YearMonth) => array
            .as_primitive::<arrow::datatypes::IntervalYearMonthType>()
            .iter()
            .map(|v| v.map(|m| m as i64 * 28 * 86_400_000_000_000))
            .collect(),
        _ => return ints(step, rows),
    };
    // A step shorter than the unit still makes at least one element per unit.
    Ok(nanos
        .into_iter()
        .map(|n| n.map(|n| (n / unit_nanos).max(if n == 0 { 0 } else { 1 })))
        .collect())
}

impl BoundedUdf {
    /// An upper bound of the bytes the call on `args` produces.
    fn bound(&self, args: &[ColumnarValue], rows: usize) -> Result<u128> {
        let rows = rows.max(1);
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u128;
        let mut total: u128 = 0;
        match self.growth {
            Growth::Repeat if args.len() >= 2 => {
                let lens = byte_lengths(&args[0], rows)?;
                let counts = ints(&args[1], rows)?;
                for (l, c) in lens.iter().zip(counts) {
                    total += *l as u128 * n(c);
                }
            }
            Growth::Pad if args.len() >= 2 => {
                let counts = ints(&args[1], rows)?;
                let fill = match args.get(2) {
                    Some(f) => byte_lengths(f, rows)?,
                    None => vec![1; rows],
                };
                for (c, f) in counts.into_iter().zip(fill) {
                    total += n(c) * (f.max(4) as u128);
                }
            }
            Growth::Replace if args.len() >= 3 => {
                let s = byte_lengths(&args[0], rows)?;
                let from = byte_lengths(&args[1], rows)?;
                let to = byte_lengths(&args[2], rows)?;
                for i in 0..rows {
                    let matches = (s[i] / from[i].max(1)) as u128 + 1;
                    total += s[i] as u128 + matches * to[i] as u128;
                }
            }
            Growth::RegexpReplace if args.len() >= 3 => {
                let s = byte_lengths(&args[0], rows)?;
                let repl_array = args[2].to_array(rows)?;
                let repl_array = cast(&repl_array, &DataType::Utf8)?;
                let repl = repl_array.as_string::<i32>();
                for (i, len) in s.iter().enumerate() {
                    let r = if repl.is_null(i) { "" } else { repl.value(i) };
                    // A group reference can bring back the whole input.
                    let refs = r.matches('$').count() + r.matches('\\').count();
                    let per_match = r.len() as u128 + refs as u128 * *len as u128;
                    total += *len as u128 + (*len as u128 + 1) * per_match;
                }
            }
            Growth::ArrayRepeat if args.len() >= 2 => {
                let sizes = value_bytes(&args[0], rows)?;
                let counts = ints(&args[1], rows)?;
                for (s, c) in sizes.into_iter().zip(counts) {
                    total += s as u128 * n(c);
                }
            }
            Growth::Range if !args.is_empty() => {
                let (start, stop) = if args.len() == 1 {
                    (vec![Some(0); rows], ints(&args[0], rows)?)
                } else {
                    (ints(&args[0], rows)?, ints(&args[1], rows)?)
                };
                let step = steps(args, rows)?;
                for i in 0..rows {
                    let (Some(a), Some(b), Some(s)) = (start[i], stop[i], step[i]) else {
                        continue;
                    };
                    if s == 0 {
                        continue;
                    }
                    let count = ((b as i128 - a as i128) / s as i128).max(0) as u128 + 1;
                    total += count * 16;
                }
            }
            Growth::Resize if args.len() >= 2 => {
                let counts = ints(&args[1], rows)?;
                for c in counts {
                    total += n(c) * 16;
                }
            }
            _ => {}
        }
        Ok(total)
    }
}

fn limit_of(config: &ConfigOptions) -> u64 {
    MeshqOptions::of(config)
        .max_function_output
        .map(|n| n as u64)
        .unwrap_or(DEFAULT_MAX_FUNCTION_OUTPUT)
}

fn too_large(name: &str, bytes: u128, limit: u64) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "{name}() would produce about {bytes} bytes, more than one query may use ({limit} bytes, limits.query_memory or limits.memory); make the result smaller"
    ))
}

impl ScalarUDFImpl for BoundedUdf {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let limit = limit_of(&args.config_options);
        let bound = self.bound(&args.args, args.number_rows)?;
        if bound > limit as u128 {
            return Err(too_large(self.name(), bound, limit));
        }
        let out = self.inner.invoke_with_args(args)?;
        let size = match &out {
            ColumnarValue::Array(a) => a.get_array_memory_size(),
            ColumnarValue::Scalar(s) => s.size(),
        };
        if size as u64 > limit {
            return Err(too_large(self.name(), size as u128, limit));
        }
        Ok(out)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{SessionConfig, SessionContext};

    async fn ctx(limit: usize) -> SessionContext {
        let config = SessionConfig::new().with_option_extension(MeshqOptions::new(
            Arc::new(meshq_catalog::Principal::anonymous()),
            Some(limit),
        ));
        let ctx = SessionContext::new_with_config(config);
        let state = ctx.state();
        for f in bounded_functions(&state) {
            ctx.register_udf(f.as_ref().clone());
        }
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> Result<usize> {
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn growing_functions_stop_at_the_limit() {
        let ctx = ctx(1 << 20).await;
        for sql in [
            "SELECT repeat('x', 700000000)",
            "SELECT lpad('x', 700000000)",
            "SELECT rpad('x', 700000000, 'ab')",
            "SELECT replace(repeat('x', 2000), 'x', repeat('y', 1000))",
            "SELECT array_repeat(1, 100000000)",
            "SELECT range(1, 100000000)",
            "SELECT generate_series(1, 100000000)",
            "SELECT array_resize([1], 100000000)",
            "SELECT generate_series(DATE '1900-01-01', DATE '2100-01-01', INTERVAL '1 second')",
        ] {
            let e = match run(&ctx, sql).await {
                Ok(n) => panic!("{sql} answered {n} rows"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains("more than one query may use"), "{sql}: {e}");
        }
        // Within the limit, the same functions answer as before.
        assert_eq!(
            run(
                &ctx,
                "SELECT repeat('x', 1000), lpad('a', 5), range(1, 100)"
            )
            .await
            .unwrap(),
            1
        );
        let batches = ctx
            .sql("SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, replace('aXa', 'X', 'yy') AS q")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string(),
            "+--------+-----+------+\n| r      | p   | q    |\n+--------+-----+------+\n| ababab | 007 | ayya |\n+--------+-----+------+"
        );
    }
}
