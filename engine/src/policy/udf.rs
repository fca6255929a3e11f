//! Vectorised mask functions and the principal functions policies call.
//!
//! Mask UDFs keep their parameters (and the HMAC key) inside the function
//! object, not as SQL arguments, so `EXPLAIN` never prints a key and the
//! planner cannot constant-fold anything into a different result.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float32Array, Float64Array, LargeStringBuilder,
    PrimitiveArray, StringBuilder, StringViewBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use hmac::{Hmac, Mac};
use meshq_catalog::Principal;
use sha2::Sha256;

/// Applies `f` to every non-null string, keeping the array's string type.
fn map_strings(array: &ArrayRef, mut f: impl FnMut(&str, &mut String)) -> Result<ArrayRef> {
    let mut buf = String::new();
    macro_rules! run {
        ($iter:expr, $builder:expr) => {{
            let mut b = $builder;
            for v in $iter {
                match v {
                    Some(s) => {
                        buf.clear();
                        f(s, &mut buf);
                        b.append_value(&buf);
                    }
                    None => b.append_null(),
                }
            }
            Ok(Arc::new(b.finish()) as ArrayRef)
        }};
    }
    match array.data_type() {
        DataType::Utf8 => run!(
            array.as_string::<i32>().iter(),
            StringBuilder::with_capacity(array.len(), array.len() * 16)
        ),
        DataType::LargeUtf8 => run!(
            array.as_string::<i64>().iter(),
            LargeStringBuilder::with_capacity(array.len(), array.len() * 16)
        ),
        DataType::Utf8View => run!(
            array.as_string_view().iter(),
            StringViewBuilder::with_capacity(array.len())
        ),
        other => exec_err!("mask expects a string column, got {other}"),
    }
}

fn single_array(args: &ScalarFunctionArgs) -> Result<ArrayRef> {
    match args.args.as_slice() {
        [v] => v.to_array(args.number_rows),
        _ => exec_err!("mask functions take one argument"),
    }
}

fn string_type(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// The string masks: each keeps the column's string type and maps every
/// non-null value to masked text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StringMaskKind {
    /// Lowercase hex HMAC-SHA256 of the value's text, keyed by a secret.
    Hash {
        /// The secret's name in `meshq.yaml` `secrets` (what travels to a
        /// worker, which resolves it from its own configuration).
        secret: String,
        /// The secret's UTF-8 bytes.
        key: Vec<u8>,
    },
    /// First N chars + padding + last M chars. A value of N+M chars or
    /// fewer becomes the padding alone, so a short value is never shown
    /// whole.
    Partial {
        /// Characters kept at the start.
        show_first: usize,
        /// Text in between.
        padding: String,
        /// Characters kept at the end.
        show_last: usize,
    },
    /// Letters and digits replaced, other characters kept.
    Redact {
        /// Replacement for letters.
        letter: char,
        /// Replacement for digits.
        digit: char,
    },
}

/// A string mask UDF (`mask_hash`, `mask_partial`, `mask_redact`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StringMask {
    kind: StringMaskKind,
    signature: Signature,
}

impl fmt::Debug for StringMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a hash key.
        write!(f, "StringMask({})", self.name())
    }
}

impl StringMask {
    /// A mask of `kind`.
    pub fn new(kind: StringMaskKind) -> Self {
        Self {
            kind,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// A hash mask keyed by the UTF-8 bytes of the secret named `secret`.
    pub fn hash(secret: &str, key: &str) -> Self {
        Self::new(StringMaskKind::Hash {
            secret: secret.to_string(),
            key: key.as_bytes().to_vec(),
        })
    }

    /// What the mask does.
    pub fn kind(&self) -> &StringMaskKind {
        &self.kind
    }

    /// A partial mask.
    pub fn partial(show_first: usize, padding: &str, show_last: usize) -> Self {
        Self::new(StringMaskKind::Partial {
            show_first,
            padding: padding.to_string(),
            show_last,
        })
    }

    /// A redact mask.
    pub fn redact(letter: char, digit: char) -> Self {
        Self::new(StringMaskKind::Redact { letter, digit })
    }
}

impl ScalarUDFImpl for StringMask {
    fn name(&self) -> &str {
        match self.kind {
            StringMaskKind::Hash { .. } => "mask_hash",
            StringMaskKind::Partial { .. } => "mask_partial",
            StringMaskKind::Redact { .. } => "mask_redact",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] if string_type(t) => Ok(t.clone()),
            _ => plan_err!("{} fits string columns only", self.name()),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = single_array(&args)?;
        let out = match &self.kind {
            StringMaskKind::Hash { key, .. } => {
                // Keyed once per batch; each value clones the keyed state.
                let mac = Hmac::<Sha256>::new_from_slice(key)
                    .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
                map_strings(&array, |s, buf| {
                    let digest = mac
                        .clone()
                        .chain_update(s.as_bytes())
                        .finalize()
                        .into_bytes();
                    buf.push_str(&hex::encode(digest));
                })?
            }
            StringMaskKind::Partial {
                show_first,
                padding,
                show_last,
            } => map_strings(&array, |s, buf| {
                let n = s.chars().count();
                if n > show_first + show_last {
                    buf.extend(s.chars().take(*show_first));
                    buf.push_str(padding);
                    buf.extend(s.chars().skip(n - show_last));
                } else {
                    buf.push_str(padding);
                }
            })?,
            StringMaskKind::Redact { letter, digit } => map_strings(&array, |s, buf| {
                buf.extend(s.chars().map(|c| {
                    if c.is_alphabetic() {
                        *letter
                    } else if c.is_numeric() {
                        *digit
                    } else {
                        c
                    }
                }))
            })?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `round` mask: numbers rounded half away from zero to `digits` decimal
/// places (negative: left of the point), same type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoundMask {
    digits: i32,
    signature: Signature,
}

impl RoundMask {
    /// Rounds to `digits`.
    pub fn new(digits: i32) -> Self {
        Self {
            digits,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }

    /// The digits it rounds to.
    pub fn digits(&self) -> i32 {
        self.digits
    }

    /// Whether the mask supports values of type `t`.
    pub fn supports(t: &DataType) -> bool {
        t.is_integer()
            || matches!(
                t,
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(..)
            )
    }
}

/// Rounds `v` (an integer count of `10^-scale` units) to a multiple of
/// `10^(scale - digits)`; `None` on overflow.
fn round_scaled(v: i128, scale: i32, digits: i32) -> Option<i128> {
    let shift = scale - digits;
    if shift <= 0 {
        return Some(v);
    }
    let factor = 10i128.checked_pow(shift as u32)?;
    let q = v / factor;
    let r = v % factor;
    let q = if r.abs() * 2 >= factor {
        q + v.signum()
    } else {
        q
    };
    q.checked_mul(factor)
}

fn round_ints<T: ArrowPrimitiveType>(a: &ArrayRef, digits: i32) -> ArrayRef
where
    T::Native: TryFrom<i128> + Into<i128>,
{
    let arr: &PrimitiveArray<T> = a.as_primitive::<T>();
    let out: PrimitiveArray<T> = arr
        .iter()
        .map(|v| {
            v.and_then(|v| {
                round_scaled(v.into(), 0, digits).and_then(|r| T::Native::try_from(r).ok())
            })
        })
        .collect();
    Arc::new(out.with_data_type(a.data_type().clone()))
}

impl ScalarUDFImpl for RoundMask {
    fn name(&self) -> &str {
        "mask_round"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] if Self::supports(t) => Ok(t.clone()),
            _ => plan_err!("round mask fits integer, float and decimal(≤38) columns only"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use arrow::datatypes::*;
        let a = single_array(&args)?;
        let d = self.digits;
        let p = 10f64.powi(d);
        let out: ArrayRef = match a.data_type() {
            DataType::Int8 => round_ints::<Int8Type>(&a, d),
            DataType::Int16 => round_ints::<Int16Type>(&a, d),
            DataType::Int32 => round_ints::<Int32Type>(&a, d),
            DataType::Int64 => round_ints::<Int64Type>(&a, d),
            DataType::UInt8 => round_ints::<UInt8Type>(&a, d),
            DataType::UInt16 => round_ints::<UInt16Type>(&a, d),
            DataType::UInt32 => round_ints::<UInt32Type>(&a, d),
            DataType::UInt64 => {
                // u64 does not convert into i128 losslessly through `Into`
                // for every value in the generic path; go through Int64 range.
                let as_i: ArrayRef = cast(&a, &DataType::Decimal128(38, 0))?;
                let r = as_i.as_primitive::<Decimal128Type>();
                let out: Decimal128Array = r
                    .iter()
                    .map(|v| v.and_then(|v| round_scaled(v, 0, d)))
                    .collect();
                cast(
                    &(Arc::new(out.with_data_type(DataType::Decimal128(38, 0))) as ArrayRef),
                    &DataType::UInt64,
                )?
            }
            DataType::Float32 => {
                let p = p as f32;
                let out: Float32Array = a
                    .as_primitive::<Float32Type>()
                    .unary(|v| (v * p).round() / p);
                Arc::new(out)
            }
            DataType::Float64 => {
                let out: Float64Array = a
                    .as_primitive::<Float64Type>()
                    .unary(|v| (v * p).round() / p);
                Arc::new(out)
            }
            DataType::Decimal128(prec, scale) => {
                let arr = a.as_primitive::<Decimal128Type>();
                let out: Decimal128Array = arr
                    .iter()
                    .map(|v| v.and_then(|v| round_scaled(v, i32::from(*scale), d)))
                    .collect();
                Arc::new(out.with_precision_and_scale(*prec, *scale)?)
            }
            other => return exec_err!("round mask does not support {other}"),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// `principal_attr('k')`, `principal_attrs('k')`, `has_role('r')`,
/// `current_user()` as SQL sees them. The policy rule replaces every call
/// with a literal for the session's principal before optimisation, in
/// policies and queries alike; the function itself only types the call, and
/// if a call were ever evaluated unbound it would answer for nobody (NULL,
/// false): fail closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrincipalUdf {
    kind: PrincipalFn,
    signature: Signature,
}

/// Which principal function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalFn {
    /// `principal_attr('k')`: the attribute, or NULL.
    Attr,
    /// `principal_attrs('k')`: all values as a list.
    Attrs,
    /// `has_role('r')`.
    HasRole,
    /// `current_user()`.
    CurrentUser,
}

impl PrincipalFn {
    /// All of them.
    pub const ALL: [PrincipalFn; 4] = [Self::Attr, Self::Attrs, Self::HasRole, Self::CurrentUser];

    /// SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Attr => "principal_attr",
            Self::Attrs => "principal_attrs",
            Self::HasRole => "has_role",
            Self::CurrentUser => "current_user",
        }
    }

    /// From a SQL name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn return_type(self) -> DataType {
        match self {
            Self::Attr | Self::CurrentUser => DataType::Utf8,
            Self::Attrs => DataType::new_list(DataType::Utf8, true),
            Self::HasRole => DataType::Boolean,
        }
    }

    /// The value for `principal` given the literal argument.
    pub fn evaluate(self, principal: &Principal, arg: Option<&str>) -> ScalarValue {
        match self {
            Self::Attr => {
                ScalarValue::Utf8(arg.and_then(|k| principal.attribute(k)).map(str::to_string))
            }
            Self::Attrs => {
                let values: Vec<ScalarValue> = arg
                    .map(|k| principal.attribute_values(k))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| ScalarValue::Utf8(Some(v.to_string())))
                    .collect();
                ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Utf8))
            }
            Self::HasRole => ScalarValue::Boolean(Some(arg.is_some_and(|r| principal.has_role(r)))),
            Self::CurrentUser => ScalarValue::Utf8(principal.name.clone()),
        }
    }
}

impl PrincipalUdf {
    /// The function `kind`.
    pub fn new(kind: PrincipalFn) -> Self {
        let signature = match kind {
            PrincipalFn::CurrentUser => Signature::exact(vec![], Volatility::Stable),
            _ => Signature::exact(vec![DataType::Utf8], Volatility::Stable),
        };
        Self { kind, signature }
    }
}

impl ScalarUDFImpl for PrincipalUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.kind.return_type())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arg = match args.args.first() {
            None => None,
            Some(ColumnarValue::Scalar(
                ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v),
            )) => v.clone(),
            Some(_) => return exec_err!("{}() takes a string literal", self.kind.name()),
        };
        Ok(ColumnarValue::Scalar(
            self.kind.evaluate(&Principal::anonymous(), arg.as_deref()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::datatypes::Field;

    fn run(udf: impl ScalarUDFImpl, input: ArrayRef) -> ArrayRef {
        let field = Arc::new(Field::new("x", input.data_type().clone(), true));
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(Arc::clone(&input))],
                arg_fields: vec![Arc::clone(&field)],
                number_rows: input.len(),
                return_field: field,
                config_options: Arc::new(Default::default()),
            })
            .unwrap();
        match out {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(_) => panic!("scalar"),
        }
    }

    fn strings(a: &ArrayRef) -> Vec<Option<String>> {
        let a = cast(a, &DataType::Utf8).unwrap();
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    #[test]
    fn hash_is_hmac_sha256_hex() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let input: ArrayRef = Arc::new(StringArray::from(vec![
            Some("what do ya want for nothing?"),
            None,
        ]));
        let out = run(StringMask::hash("k", "Jefe"), input);
        assert_eq!(
            strings(&out),
            vec![
                Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843".into()),
                None
            ]
        );
        assert!(!format!("{:?}", StringMask::hash("k", "Jefe")).contains("Jefe"));
    }

    #[test]
    fn partial_and_redact() {
        let input: ArrayRef =
            Arc::new(StringArray::from(vec!["Jana Berg", "ab", "alice@acme.com"]));
        assert_eq!(
            strings(&run(StringMask::partial(1, "***", 0), Arc::clone(&input))),
            vec![
                Some("J***".into()),
                Some("a***".into()),
                Some("a***".into())
            ]
        );
        assert_eq!(
            strings(&run(
                StringMask::partial(1, "***@***", 4),
                Arc::clone(&input)
            )),
            vec![
                Some("J***@***Berg".into()),
                Some("***@***".into()),
                Some("a***@***.com".into())
            ]
        );
        let view: ArrayRef = cast(
            &(Arc::new(StringArray::from(vec!["+49 151 Äb-12"])) as ArrayRef),
            &DataType::Utf8View,
        )
        .unwrap();
        let out = run(StringMask::redact('x', '9'), view);
        assert_eq!(out.data_type(), &DataType::Utf8View);
        assert_eq!(strings(&out), vec![Some("+99 999 xx-99".into())]);
    }

    #[test]
    fn round_keeps_type() {
        let dec: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(123_456), Some(-150), None])
                .with_precision_and_scale(10, 2)
                .unwrap(),
        );
        let out = run(RoundMask::new(-2), dec);
        assert_eq!(out.data_type(), &DataType::Decimal128(10, 2));
        let out = out.as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            vec![Some(120_000), Some(0), None]
        );
        let ints: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![1_499, 1_500, -2_500]));
        let out = run(RoundMask::new(-3), ints);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec(),
            vec![1_000, 2_000, -3_000]
        );
        let f: ArrayRef = Arc::new(Float64Array::from(vec![1.2345]));
        let out = run(RoundMask::new(2), f);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Float64Type>().value(0),
            1.23
        );
    }
}
