//! Problems found while loading or validating a mesh.

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The thing it names is not served.
    Error,
    /// Served, but worth fixing.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
        })
    }
}

/// One problem, tied to the file that has to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// File, relative to the mesh root when it lies under it.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl Problem {
    /// An error in `file`.
    pub fn error(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            file: file.into(),
            line: None,
            message: message.into(),
        }
    }

    /// A warning in `file`.
    pub fn warning(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(file, message)
        }
    }

    /// Attaches a line number.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.severity, self.message)
    }
}

/// `path` relative to `root` for display, unchanged when outside it.
pub fn display_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

/// 1-based line of the first occurrence of `needle` in `text`.
///
/// Parsed models carry no spans, so semantic errors point at the line that
/// mentions the offending value; good enough to jump to in an editor. A
/// match must end at a word boundary: `name: id` is not found in
/// `name: identifier`.
pub fn line_of(text: &str, needle: &str) -> Option<usize> {
    line_after(text, None, needle)
}

/// Like [`line_of`], searching only the lines after line `after` (all
/// lines when `None`).
pub fn line_after(text: &str, after: Option<usize>, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    let skip = after.unwrap_or(0);
    text.lines()
        .enumerate()
        .skip(skip)
        .find(|(_, l)| mentions(l, needle))
        .map(|(i, _)| i + 1)
}

fn mentions(line: &str, needle: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-';
    line.match_indices(needle).any(|(i, _)| {
        needle.ends_with(|c: char| !word(c)) || !line[i + needle.len()..].starts_with(word)
    })
}

/// The line of column `column` of schema object `object` in a contract's
/// text: the first mention after the object's own `name:` line, which comes
/// after `schema:`.
pub fn column_line(text: &str, object: &str, column: &str) -> Option<usize> {
    let schema = line_of(text, "schema:");
    let object = line_after(text, schema, &format!("name: {object}")).or(schema);
    line_after(text, object, &format!("name: {column}"))
        .or_else(|| line_of(text, &format!("name: {column}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = "\
id: orders
schema:
  - name: orders
    properties:
      - name: identifier
      - name: id
      - name: amount
  - name: refunds
    properties:
      - name: id
      - name: amount
";

    #[test]
    fn a_mention_ends_at_a_word_boundary() {
        assert_eq!(line_of(CONTRACT, "name: id"), Some(6));
        assert_eq!(line_of(CONTRACT, "name: identifier"), Some(5));
        assert_eq!(line_of(CONTRACT, "name: nope"), None);
        assert_eq!(line_of(CONTRACT, ""), None);
        assert_eq!(line_after(CONTRACT, Some(6), "name: id"), Some(10));
    }

    #[test]
    fn a_column_is_found_inside_its_own_schema_object() {
        assert_eq!(column_line(CONTRACT, "orders", "id"), Some(6));
        assert_eq!(column_line(CONTRACT, "orders", "amount"), Some(7));
        assert_eq!(column_line(CONTRACT, "refunds", "id"), Some(10));
        assert_eq!(column_line(CONTRACT, "refunds", "amount"), Some(11));
        // An object name that is also the contract id is not confused with
        // it: the search starts at `schema:`.
        assert_eq!(column_line(CONTRACT, "orders", "identifier"), Some(5));
    }
}
