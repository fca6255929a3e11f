//! The `authorization` header: `Basic` and `Bearer`, schemes matched
//! case-insensitively.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tonic::metadata::MetadataMap;

/// Base64 that accepts input with or without padding (the ADBC Go driver
/// omits it).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials of an `authorization` header. Schemes are matched
/// case-insensitively, everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(user:password)`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `Bearer token` (a session token or a JWT).
    Bearer(String),
}

/// Reads an `authorization` header; the error says what is wrong with it
/// (for the log), never echoing it.
pub fn parse_authorization(header: &str) -> Result<Credentials, &'static str> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = LENIENT_B64
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("Basic credentials are not base64 UTF-8")?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("Basic credentials lack a `:`")?;
        Ok(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err("empty bearer token");
        }
        Ok(Credentials::Bearer(rest.to_string()))
    } else {
        Err("neither Basic nor Bearer")
    }
}

/// The `authorization` header of a call.
pub(crate) fn header(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("authorization").and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_schemes_are_case_insensitive() {
        for h in ["Basic YW5hOng=", "basic YW5hOng", "BASIC  YW5hOng="] {
            assert_eq!(
                parse_authorization(h).unwrap(),
                Credentials::Basic {
                    user: "ana".into(),
                    password: "x".into()
                },
                "{h}"
            );
        }
        for h in ["Bearer abc", "bearer abc", "BEARER   abc "] {
            assert_eq!(
                parse_authorization(h).unwrap(),
                Credentials::Bearer("abc".into()),
                "{h}"
            );
        }
        assert!(parse_authorization("Digest x").is_err());
        assert!(parse_authorization("Bearer ").is_err());
        assert!(parse_authorization("Basic !!!").is_err());
    }
}
