//! The audit log: one JSON line per query and per failed authentication.
//!
//! A line never holds a row value or a SQL literal: the statement is logged
//! as its *shape* (literals replaced by `?`) and a hash of that shape, so
//! the same query with other values has the same hash. The fields are
//! documented in `docs/operating.md`.

use parking_lot::Mutex;
use std::io::Write;
use std::path::Path;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::warn;

/// Where audit lines go.
pub struct AuditLog {
    sink: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Appends to `path` (created if absent); `-` is standard output.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::to_writer(Box::new(std::io::stdout())));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::to_writer(Box::new(file)))
    }

    /// To any writer.
    pub fn to_writer(sink: Box<dyn Write + Send>) -> Self {
        Self {
            sink: Mutex::new(sink),
        }
    }

    /// Writes one record as one line. A failing sink is reported in the
    /// server log and never fails the query.
    pub fn write(&self, record: &AuditRecord) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push(b'\n');
        let mut sink = self.sink.lock();
        // One write per line, so lines from concurrent queries never interleave.
        if let Err(e) = sink.write_all(&line).and_then(|_| sink.flush()) {
            warn!(error = %e, "cannot write the audit log");
        }
    }
}

/// One audit line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC, milliseconds.
    pub ts: String,
    /// `query` or `auth_failure`.
    pub event: &'static str,
    /// Principal name; absent when unknown (anonymous or failed login).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// For failed logins: the user name given, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Client IP and port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Query id, also in the server log and error messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    /// Flight SQL call: `statement`, `prepared`, `update`, `prepared_update`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<&'static str>,
    /// Statement kind: `query`, `explain`, `ddl`, `dml`, `set`, `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<&'static str>,
    /// The statement with every literal replaced by `?`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_shape: Option<String>,
    /// First 16 hex digits of SHA-256 of `sql_shape`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql_hash: Option<String>,
    /// Mesh tables read (`domain.table`).
    pub tables: Vec<String>,
    /// Their products.
    pub products: Vec<String>,
    /// `domain.table.column:kind` of each mask applied.
    pub masks: Vec<String>,
    /// `domain.table:filter` of each row filter applied.
    pub row_filters: Vec<String>,
    /// Global policy ids among them.
    pub global_policies: Vec<String>,
    /// The statements sent to database sources (PostgreSQL), each with
    /// every literal replaced by `?`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub source_statements: Vec<String>,
    /// Rows returned.
    pub rows: u64,
    /// Arrow bytes returned.
    pub bytes: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// `hit` when the result came from the result cache, `miss` when it
    /// was computed and could be kept; absent when the cache is off or the
    /// query is not cacheable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_cache: Option<&'static str>,
    /// Time waiting in the queue, milliseconds.
    pub queued_ms: u64,
    /// From the call to the last batch (or the error), milliseconds.
    pub duration_ms: u64,
    /// `ok`, `error` or `cancelled` (the client went away or cancelled).
    pub outcome: &'static str,
    /// gRPC code name for errors, e.g. `PERMISSION_DENIED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// Mesh version the query ran on.
    pub mesh_version: u64,
}

/// Now, as the audit log writes it.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The statement with literals replaced by `?` and whitespace and comments
/// collapsed, and the hash of that. Statements the tokenizer cannot read
/// get no shape, only a hash of their length, never their text.
pub fn sql_shape(sql: &str) -> (Option<String>, String) {
    let hash = |s: &str| hex::encode(&Sha256::digest(s.as_bytes())[..8]);
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return (None, hash(&format!("unreadable:{}", sql.len())));
    };
    let mut out = String::with_capacity(sql.len());
    let mut space = false;
    for t in tokens {
        match t {
            Token::Whitespace(_) => space = true,
            other => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                if is_literal(&other) {
                    out.push('?');
                } else {
                    out.push_str(&other.to_string());
                }
            }
        }
    }
    let h = hash(&out);
    (Some(out), h)
}

fn is_literal(t: &Token) -> bool {
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_have_no_literals() {
        let (a, ha) = sql_shape(
            "SELECT *  FROM sales.orders -- note\n WHERE customer_id = 'C-42' AND total > 99.5",
        );
        let (b, hb) = sql_shape("select * from sales.orders where customer_id = 'X' and total > 1");
        let a = a.unwrap();
        assert_eq!(
            a,
            "SELECT * FROM sales.orders WHERE customer_id = ? AND total > ?"
        );
        assert!(!a.contains("C-42") && !a.contains("99.5"));
        // Keywords keep their case, so these differ only by that.
        assert_ne!(ha, hb);
        assert_eq!(
            b.unwrap(),
            "select * from sales.orders where customer_id = ? and total > ?"
        );
        let (c, hc) =
            sql_shape("SELECT * FROM sales.orders WHERE customer_id = 'C-7' AND total > 3");
        assert_eq!(hc, ha);
        assert!(c.is_some());
        let (none, h) = sql_shape("SELECT 'unterminated");
        assert!(none.is_none());
        assert!(!h.is_empty());
    }
}
