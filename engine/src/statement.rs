//! SQL text before it is parsed: the size and depth limits, and the
//! spellings clients use that DataFusion's parser does not accept.
//!
//! The depth check works on tokens, not on a syntax tree: a tree deep
//! enough to matter could already exhaust the stack while it is built,
//! walked or dropped. Every binary operator and set operation counts one
//! level within its parentheses, every parenthesis one more, so the figure
//! bounds the depth of the tree the parser would build.

use std::borrow::Cow;

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use meshq_catalog::limits::{
    DEFAULT_MAX_EXPRESSION_DEPTH, DEFAULT_MAX_STATEMENT_BYTES, LimitsConfig,
};

/// Stack size of threads that plan and run statements. With the default
/// depth limit, DataFusion's deepest recursions stay well within it.
pub const THREAD_STACK_BYTES: usize = 16 << 20;

/// Refuses statements longer or deeper than `limits` allow, before parsing.
pub fn check_text(sql: &str, limits: &LimitsConfig) -> Result<()> {
    let max_bytes = limits
        .max_statement_bytes
        .map(|b| b.0)
        .unwrap_or(DEFAULT_MAX_STATEMENT_BYTES);
    if sql.len() as u64 > max_bytes {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "the statement is {} bytes long, more than limits.max_statement_bytes ({max_bytes}); send a shorter statement (for long lists of values, use a table)",
            sql.len()
        )));
    }
    let max_depth = limits
        .max_expression_depth
        .unwrap_or(DEFAULT_MAX_EXPRESSION_DEPTH);
    let parens = paren_depth(sql);
    if parens > MAX_PAREN_DEPTH {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "the statement nests parentheses {parens} deep, more than {MAX_PAREN_DEPTH}; flatten nested CASTs, calls and subqueries (WITH helps)"
        )));
    }
    let depth = nesting_depth(sql);
    if depth > max_depth {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "the statement nests about {depth} levels of operators and parentheses, more than limits.max_expression_depth ({max_depth}); split long chains of AND/OR/+ into IN lists, CASE or several statements"
        )));
    }
    Ok(())
}

fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::BETWEEN
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::CASE
                | Keyword::WHEN
        ),
        Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::Mod
        | Token::StringConcat
        | Token::Eq
        | Token::DoubleEq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Caret
        | Token::Ampersand
        | Token::Pipe
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::DoubleColon
        | Token::Arrow
        | Token::LongArrow
        | Token::Tilde
        | Token::ExclamationMark => true,
        _ => false,
    }
}

/// Deepest nesting of parentheses accepted. The SQL parser gives up at 50
/// levels, and some constructs (`CAST`, `TRY_CAST`) make it backtrack
/// exponentially just below that: 48 nested `CAST`s took minutes.
pub const MAX_PAREN_DEPTH: usize = 40;

/// How deep parentheses and brackets nest in `sql` (0 when it cannot be
/// tokenized).
pub fn paren_depth(sql: &str) -> usize {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return 0;
    };
    let (mut depth, mut deepest) = (0usize, 0usize);
    for t in &tokens {
        match t {
            Token::LParen | Token::LBracket => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// An upper bound of the nesting depth of `sql`'s syntax tree; 0 when it
/// cannot be tokenized (the parser reports that).
pub fn nesting_depth(sql: &str) -> usize {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return 0;
    };
    // Operators seen in each open parenthesis, outermost first.
    let mut frames: Vec<usize> = vec![0];
    let mut total = 0usize;
    let mut deepest = 0usize;
    for t in &tokens {
        match t {
            Token::LParen | Token::LBracket => {
                frames.push(0);
                total += 1;
            }
            Token::RParen | Token::RBracket => {
                if frames.len() > 1
                    && let Some(ops) = frames.pop()
                {
                    total -= ops + 1;
                }
            }
            Token::SemiColon => {
                total = 0;
                frames = vec![0];
            }
            t if is_operator(t) => {
                if let Some(last) = frames.last_mut() {
                    *last += 1;
                }
                total += 1;
            }
            _ => {}
        }
        deepest = deepest.max(total);
    }
    deepest
}

/// Rewrites what clients send into what DataFusion parses: JDBC/ODBC `?`
/// placeholders become `$1`, `$2`, …; `current_user()` becomes
/// `current_user` (SQL spells it without parentheses; DESIGN and many users
/// with). Tokens inside strings, identifiers and comments are untouched.
pub fn normalize(sql: &str) -> Cow<'_, str> {
    let lower = sql.to_ascii_lowercase();
    if !sql.contains('?') && !lower.contains("current_user") {
        return sql.into();
    }
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return sql.into();
    };
    let is_current_user = |t: &Token| matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("current_user"));
    let needs_work = tokens.iter().enumerate().any(|(i, t)| {
        matches!(t, Token::Placeholder(p) if p == "?")
            || (is_current_user(t) && call_parens(&tokens, i).is_some())
    });
    if !needs_work {
        return sql.into();
    }
    let mut out = String::with_capacity(sql.len());
    let mut n = 0;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            t if is_current_user(t) => {
                out.push_str(&t.to_string());
                if let Some(end) = call_parens(&tokens, i) {
                    i = end;
                }
            }
            other => out.push_str(&other.to_string()),
        }
        i += 1;
    }
    out.into()
}

/// When `tokens[i]` is followed by `(` `)` (with only whitespace between),
/// the index of the `)`.
fn call_parens(tokens: &[Token], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let skip = |j: &mut usize| {
        while matches!(tokens.get(*j), Some(Token::Whitespace(_))) {
            *j += 1;
        }
    };
    skip(&mut j);
    if !matches!(tokens.get(j), Some(Token::LParen)) {
        return None;
    }
    j += 1;
    skip(&mut j);
    matches!(tokens.get(j), Some(Token::RParen)).then_some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_placeholders() {
        assert_eq!(
            normalize("SELECT * FROM t WHERE a = ? AND b > ?"),
            "SELECT * FROM t WHERE a = $1 AND b > $2"
        );
        assert_eq!(
            normalize("SELECT '?' AS q, \"what?\" FROM t WHERE a = ? -- why?\n"),
            "SELECT '?' AS q, \"what?\" FROM t WHERE a = $1 -- why?\n"
        );
        assert_eq!(normalize("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn current_user_with_parentheses() {
        assert_eq!(normalize("SELECT current_user()"), "SELECT current_user");
        assert_eq!(
            normalize("SELECT CURRENT_USER ( ), 'current_user()'"),
            "SELECT CURRENT_USER, 'current_user()'"
        );
        assert_eq!(normalize("SELECT current_user"), "SELECT current_user");
    }

    #[test]
    fn depth_bounds_chains_and_parentheses() {
        assert_eq!(nesting_depth("SELECT 1"), 0);
        let chain = format!("SELECT 1{}", "+1".repeat(250));
        assert_eq!(nesting_depth(&chain), 250);
        let list = format!(
            "SELECT * FROM t WHERE x IN ({})",
            (0..10_000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(nesting_depth(&list), 2);
        assert_eq!(nesting_depth("SELECT ((1 + 2) * 3)"), 3);
        let unions = "SELECT 1 UNION ALL ".repeat(300) + "SELECT 1";
        assert_eq!(nesting_depth(&unions), 300);
        // Statements are measured one at a time.
        assert_eq!(nesting_depth("SELECT 1 + 1; SELECT 2"), 1);
        let limits = LimitsConfig::default();
        assert!(check_text(&list, &limits).is_ok());
        let deep = format!("SELECT 1{}", "+1".repeat(5000));
        let e = check_text(&deep, &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_expression_depth"), "{e}");
        let casts = format!("SELECT {}1{}", "CAST(".repeat(48), " AS BIGINT)".repeat(48));
        let e = check_text(&casts, &limits).unwrap_err().to_string();
        assert!(e.contains("parentheses 48 deep"), "{e}");
        let long = format!("SELECT '{}'", "x".repeat(2 << 20));
        let e = check_text(&long, &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_statement_bytes"), "{e}");
    }
}
