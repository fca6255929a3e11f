//! Reading the source formats: scalars, durations, types, and the notes
//! every import keeps of what it changed, kept as text, or could not
//! convert.

use serde_yaml_ng::{Mapping, Value};

use super::model::Map;

/// How a source element fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoteKind {
    /// Converted, with a change the reader should know of.
    Changed,
    /// Kept as a `type: text` quality rule: meshq lists it, does not run it.
    KeptAsText,
    /// Not converted: not in the output.
    NotConverted,
}

/// One thing the report says about a source element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// How it fared.
    pub kind: NoteKind,
    /// Where in the source (`models.orders.fields.email.pii`).
    pub path: String,
    /// What the reader should know.
    pub text: String,
}

/// The notes of one source file.
#[derive(Debug, Default)]
pub struct Notes(pub Vec<Note>);

impl Notes {
    pub(crate) fn add(&mut self, kind: NoteKind, path: impl Into<String>, text: impl Into<String>) {
        self.0.push(Note {
            kind,
            path: path.into(),
            text: text.into(),
        });
    }

    pub(crate) fn changed(&mut self, path: impl Into<String>, text: impl Into<String>) {
        self.add(NoteKind::Changed, path, text);
    }

    pub(crate) fn text_rule(&mut self, path: impl Into<String>, text: impl Into<String>) {
        self.add(NoteKind::KeptAsText, path, text);
    }

    pub(crate) fn dropped(&mut self, path: impl Into<String>, text: impl Into<String>) {
        self.add(NoteKind::NotConverted, path, text);
    }

    /// Reports every key of `map` (at `path`) not in `known`.
    pub(crate) fn unknown_keys(&mut self, path: &str, map: &Mapping, known: &[&str]) {
        for (k, v) in map {
            let key = key_text(k);
            if !known.contains(&key.as_str()) {
                self.dropped(
                    join(path, &key),
                    format!(
                        "`{key}` has no counterpart in ODPS/ODCS or meshq (value: {})",
                        short(v)
                    ),
                );
            }
        }
    }
}

/// `a.b`, or `b` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn key_text(k: &Value) -> String {
    text(k).unwrap_or_else(|| short(k))
}

/// A value in one line, shortened.
pub(crate) fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    };
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

/// A value in full, on one line (JSON), for a `text` rule that carries the
/// original check.
pub(crate) fn full(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| short(other)),
    }
}

/// A scalar as text (strings, numbers, booleans).
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `map[key]` as text.
pub(crate) fn get_text(map: &Mapping, key: &str) -> Option<String> {
    map.get(key).and_then(text).filter(|s| !s.trim().is_empty())
}

/// `map[key]` as a mapping.
pub(crate) fn get_map<'a>(map: &'a Mapping, key: &str) -> Option<&'a Mapping> {
    map.get(key).and_then(Value::as_mapping)
}

/// `map[key]` as a list.
pub(crate) fn get_list<'a>(map: &'a Mapping, key: &str) -> Option<&'a Vec<Value>> {
    map.get(key).and_then(Value::as_sequence)
}

/// `map[key]` as a boolean (`true`, `"true"`, `yes`).
pub(crate) fn get_bool(map: &Mapping, key: &str) -> Option<bool> {
    match map.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" => Some(true),
            "false" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A list of strings (a list, or one string).
pub(crate) fn get_strings(map: &Mapping, key: &str) -> Vec<String> {
    match map.get(key) {
        Some(Value::Sequence(items)) => items.iter().filter_map(text).collect(),
        Some(v) => text(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A number: `99.9`, `"99.9%"`, `"99.9 %"`.
pub(crate) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('%').trim().parse().ok(),
        _ => None,
    }
}

/// A YAML number, integral when it is.
pub(crate) fn num_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        Value::Number((n as i64).into())
    } else {
        Value::Number(n.into())
    }
}

/// A threshold in the source (`5`, `1.5`, `"2%"`) as a YAML number and
/// whether it was a percentage.
pub(crate) fn threshold(text: &str) -> Option<(Value, bool)> {
    let t = text.trim();
    let percent = t.ends_with('%');
    let n: f64 = t.trim_end_matches('%').trim().parse().ok()?;
    Some((num_value(n), percent))
}

/// A duration (`25h`, `1 day`, `30 minutes`, `PT1H`, `P1D`) as a number and
/// an ODCS unit meshq reads (`s`, `m`, `h`, `d`, `w`, `y`).
pub(crate) fn duration(text: &str) -> Option<(Value, &'static str)> {
    let t = text.trim().to_ascii_lowercase();
    if let Some(iso) = t.strip_prefix('p') {
        // ISO 8601: one component only (P1D, PT6H, PT30M).
        let (time, body) = match iso.strip_prefix('t') {
            Some(b) => (true, b),
            None => (false, iso),
        };
        let unit_char = body.chars().last()?;
        let n: f64 = body[..body.len() - 1].parse().ok()?;
        let unit = match (time, unit_char) {
            (true, 'h') => "h",
            (true, 'm') => "m",
            (true, 's') => "s",
            (false, 'd') => "d",
            (false, 'w') => "w",
            (false, 'y') => "y",
            _ => return None,
        };
        return Some((num_value(n), unit));
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let n: f64 = t[..split].trim().parse().ok()?;
    let unit = match t[split..].trim() {
        "s" | "sec" | "secs" | "second" | "seconds" => "s",
        "m" | "min" | "mins" | "minute" | "minutes" => "m",
        "h" | "hr" | "hrs" | "hour" | "hours" => "h",
        "d" | "day" | "days" => "d",
        "w" | "week" | "weeks" => "w",
        "y" | "yr" | "year" | "years" => "y",
        _ => return None,
    };
    Some((num_value(n), unit))
}

/// The ODCS logical type of a source type name, and the physical type to
/// keep (the source's name, with precision and scale for decimals).
pub(crate) fn logical_type(source: &str) -> Option<&'static str> {
    let base = source
        .trim()
        .split(['(', '<', ' '])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some(match base.as_str() {
        "string" | "text" | "varchar" | "char" | "str" | "nvarchar" | "uuid" | "email" => "string",
        "int" | "integer" | "int32" | "int64" | "long" | "bigint" | "smallint" | "tinyint"
        | "short" | "byte" => "integer",
        "float" | "double" | "decimal" | "numeric" | "number" | "real" | "float32" | "float64" => {
            "number"
        }
        "bool" | "boolean" => "boolean",
        "date" => "date",
        "timestamp" | "timestamp_tz" | "timestamp_ntz" | "timestamptz" | "datetime" => "timestamp",
        "time" => "time",
        "array" | "list" => "array",
        "object" | "record" | "struct" | "map" | "json" => "object",
        _ => return None,
    })
}

/// A field's logical type (from its `type`) and physical type (the type
/// as written, with `precision` and `scale`); a type with no logical
/// counterpart is noted.
pub(crate) fn field_types(
    f: &Mapping,
    path: &str,
    notes: &mut Notes,
) -> (Option<&'static str>, Option<String>) {
    let source_type = get_text(f, "type");
    let logical = source_type.as_deref().and_then(logical_type);
    if let (Some(t), None) = (&source_type, logical) {
        notes.changed(
            join(path, "type"),
            format!("type `{t}` has no ODCS logical type; kept as physicalType only"),
        );
    }
    let physical = source_type.map(|t| match (get_text(f, "precision"), get_text(f, "scale")) {
        (Some(p), Some(s)) => format!("{t}({p},{s})"),
        (Some(p), None) => format!("{t}({p})"),
        _ => t,
    });
    (logical, physical)
}

/// A field's `example` and `examples` values.
pub(crate) fn examples(f: &Mapping) -> Vec<Value> {
    let mut out = Vec::new();
    for key in ["example", "examples"] {
        match f.get(key) {
            Some(Value::Sequence(items)) => out.extend(items.iter().cloned()),
            Some(v) => out.push(v.clone()),
            None => {}
        }
    }
    out
}

/// A server entry from a data location (`s3://…`, `abfss://…`, `gs://…`,
/// a local path), or why it cannot be one.
pub(crate) fn server_for_location(
    name: &str,
    location: &str,
    format: Option<&str>,
) -> Result<Map, String> {
    let format = format
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| format!("location `{location}` has no `format`"))?;
    let scheme = location.split("://").next().unwrap_or_default();
    let server = Map::new().set("server", name);
    let server = if !location.contains("://") || scheme == "file" {
        server
            .set("type", "local")
            .set("path", location.trim_start_matches("file://"))
    } else {
        let kind = match scheme {
            "s3" | "s3a" => "s3",
            "abfss" | "abfs" | "az" | "azure" | "adl" | "wasbs" => "azure",
            // ODCS has no GCS server type: meshq reads `gs://` from a custom one.
            "gs" | "gcs" => "custom",
            other => {
                return Err(format!(
                    "a `{other}://` location is not object storage meshq reads (s3, abfss/az, gs) nor a local path"
                ));
            }
        };
        server.set("type", kind).set("location", location)
    };
    Ok(server.set("format", format))
}

/// A slug for identifiers: lower case, `_` for anything not alphanumeric.
pub(crate) fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, n, unit) in [
            ("25h", 25, "h"),
            ("1 day", 1, "d"),
            ("30 minutes", 30, "m"),
            ("PT6H", 6, "h"),
            ("P1D", 1, "d"),
            ("2 weeks", 2, "w"),
            ("1 year", 1, "y"),
        ] {
            assert_eq!(
                duration(text),
                Some((Value::Number(n.into()), unit)),
                "{text}"
            );
        }
        assert_eq!(duration("soon"), None);
        assert_eq!(duration("5 fortnights"), None);
    }

    #[test]
    fn numbers_and_thresholds() {
        assert_eq!(number(&Value::String("99.9%".into())), Some(99.9));
        assert_eq!(threshold("2%"), Some((Value::Number(2.into()), true)));
        assert_eq!(threshold("1.5"), Some((Value::Number(1.5.into()), false)));
        assert_eq!(threshold("x"), None);
    }

    #[test]
    fn locations() {
        let s: Value =
            server_for_location("p", "abfss://c@acct.dfs.core.windows.net/x", Some("Delta"))
                .unwrap()
                .into();
        assert_eq!(s["type"], "azure");
        assert_eq!(s["format"], "delta");
        let s: Value = server_for_location("p", "./data/x", Some("parquet"))
            .unwrap()
            .into();
        assert_eq!(s["type"], "local");
        assert_eq!(s["path"], "./data/x");
        assert!(server_for_location("p", "ftp://x/y", Some("csv")).is_err());
        assert!(server_for_location("p", "s3://b/x", None).is_err());
    }

    #[test]
    fn types_and_slugs() {
        assert_eq!(logical_type("decimal(12,2)"), Some("number"));
        assert_eq!(logical_type("TIMESTAMP_NTZ"), Some("timestamp"));
        assert_eq!(logical_type("long"), Some("integer"));
        assert_eq!(logical_type("geography"), None);
        assert_eq!(slug("Orders Latest (v2)"), "orders_latest_v2");
    }
}
