//! Policy vocabulary: column masks, row filters, table read roles (ODCS
//! `customProperties` extensions) and global policy sets
//! (`governance/*.policy.yaml`).

use serde::Deserialize;

/// Accepted `apiVersion` values of a policy set.
pub const POLICY_SET_API_VERSIONS: &[&str] = &["v1"];

/// How a column's value is hidden from a principal.
///
/// Deserialised from `{ kind: …, …parameters, exceptRoles: [...] }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
#[allow(missing_docs)]
pub enum MaskSpec {
    /// Lowercase hex HMAC-SHA256 of the value's text, keyed by a secret.
    Hash {
        #[serde(default)]
        algorithm: HashAlgorithm,
        key_ref: String,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// First N chars + padding + last M chars.
    Partial {
        #[serde(default)]
        show_first: usize,
        #[serde(default)]
        padding: String,
        #[serde(default)]
        show_last: usize,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// Same length; letters and digits replaced.
    Redact {
        #[serde(default = "default_letter")]
        letter: char,
        #[serde(default = "default_digit")]
        digit: char,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// NULL.
    Nullify {
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// Date/timestamp truncated to a unit.
    Truncate {
        unit: TruncateUnit,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// Numeric rounded to `digits` (negative rounds left of the point).
    Round {
        digits: i32,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// A literal cast to the column type.
    Constant {
        value: serde_yaml_ng::Value,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// `regexp_replace` over the value's text.
    RegexReplace {
        pattern: String,
        replacement: String,
        #[serde(default)]
        except_roles: Vec<String>,
    },
    /// Any SQL expression over the row's columns.
    Sql {
        expression: String,
        #[serde(default)]
        except_roles: Vec<String>,
    },
}

fn default_letter() -> char {
    'x'
}

fn default_digit() -> char {
    '9'
}

impl MaskSpec {
    /// Roles exempt from this mask.
    pub fn except_roles(&self) -> &[String] {
        match self {
            Self::Hash { except_roles, .. }
            | Self::Partial { except_roles, .. }
            | Self::Redact { except_roles, .. }
            | Self::Nullify { except_roles }
            | Self::Truncate { except_roles, .. }
            | Self::Round { except_roles, .. }
            | Self::Constant { except_roles, .. }
            | Self::RegexReplace { except_roles, .. }
            | Self::Sql { except_roles, .. } => except_roles,
        }
    }

    /// The mask's `kind` as written in YAML.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Hash { .. } => "hash",
            Self::Partial { .. } => "partial",
            Self::Redact { .. } => "redact",
            Self::Nullify { .. } => "nullify",
            Self::Truncate { .. } => "truncate",
            Self::Round { .. } => "round",
            Self::Constant { .. } => "constant",
            Self::RegexReplace { .. } => "regexReplace",
            Self::Sql { .. } => "sql",
        }
    }
}

/// Hash algorithms a `hash` mask supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[allow(missing_docs)]
pub enum HashAlgorithm {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
}

/// Units a `truncate` mask supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum TruncateUnit {
    Year,
    Month,
    Day,
    Hour,
}

/// A row filter on a schema object (`rowFilters` custom property); all of a
/// table's filters are ANDed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RowFilterSpec {
    /// Identifier used in errors and the audit log.
    pub id: String,
    /// SQL boolean expression over the table's columns.
    pub expression: String,
    /// Roles that see all rows.
    #[serde(default)]
    pub except_roles: Vec<String>,
    /// Human description.
    #[serde(default)]
    pub description: Option<String>,
}

/// A global policy set file (`kind: GovernancePolicySet`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PolicySet {
    pub api_version: String,
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub policies: Vec<GlobalPolicy>,
}

/// One global policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct GlobalPolicy {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: GlobalPolicyKind,
    #[serde(rename = "match")]
    pub matcher: PolicyMatch,
    #[serde(default)]
    pub except_roles: Vec<String>,
    pub mask: MaskSpec,
    #[serde(default)]
    pub description: Option<String>,
}

/// Kinds of global policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub enum GlobalPolicyKind {
    ColumnMask,
}

/// Which columns a global policy applies to: a column matches when its
/// classification is listed **or** any of its tags is listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyMatch {
    /// Column classifications (ODCS `classification`).
    #[serde(default)]
    pub classification: Vec<String>,
    /// Column tags (ODCS `tags`).
    #[serde(default)]
    pub tags: Vec<String>,
}

impl PolicyMatch {
    /// Whether a column with this classification and tags matches.
    pub fn matches(&self, classification: Option<&str>, tags: &[String]) -> bool {
        classification.is_some_and(|c| self.classification.iter().any(|x| x == c))
            || tags.iter().any(|t| self.tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_kinds_parse_and_reject_unknown_keys() {
        let m: MaskSpec = serde_yaml_ng::from_str(
            "{ kind: partial, showFirst: 1, padding: '***', showLast: 4, exceptRoles: [pii-reader] }",
        )
        .unwrap();
        assert_eq!(
            m,
            MaskSpec::Partial {
                show_first: 1,
                padding: "***".into(),
                show_last: 4,
                except_roles: vec!["pii-reader".into()]
            }
        );
        let err = serde_yaml_ng::from_str::<MaskSpec>("{ kind: nullify, bogus: 1 }").unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = serde_yaml_ng::from_str::<MaskSpec>("{ kind: scramble }").unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `scramble`"),
            "{err}"
        );
        let m: MaskSpec = serde_yaml_ng::from_str("{ kind: redact }").unwrap();
        assert_eq!(
            m,
            MaskSpec::Redact {
                letter: 'x',
                digit: '9',
                except_roles: vec![]
            }
        );
    }

    #[test]
    fn policy_match_is_classification_or_tag() {
        let m = PolicyMatch {
            classification: vec!["pii".into()],
            tags: vec!["secret".into()],
        };
        assert!(m.matches(Some("pii"), &[]));
        assert!(m.matches(None, &["secret".into()]));
        assert!(!m.matches(Some("public"), &["other".into()]));
    }
}
