//! YAML parsing with errors that name the line.

use serde::de::DeserializeOwned;

/// A YAML parse failure: message plus 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// What serde/libyaml said, without the trailing position.
    pub message: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
}

/// Parses one YAML document into `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let mut message = e.to_string();
        // The library appends " at line L column C"; the line is reported
        // separately in a fixed place.
        if let Some(pos) = message.find(" at line ") {
            let tail = &message[pos..];
            let rest = tail
                .trim_start_matches(" at line ")
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start_matches(" column ")
                .trim_start_matches(|c: char| c.is_ascii_digit());
            message = format!("{}{}", &message[..pos], rest);
        }
        YamlError { message, line }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn strips_position_and_reports_line() {
        let e = parse::<T>("a: 1\nb: 2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.message, "unknown field `b`, expected `a`");
        let e = parse::<T>("a: [1\n").unwrap_err();
        assert!(e.line.is_some());
    }
}
