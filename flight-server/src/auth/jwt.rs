//! Bearer JWTs (HS256 or RS256) checked against `auth.jwt`.

use meshq_catalog::Principal;
use meshq_catalog::platform::{AttributeValue, JwtConfig, PlatformConfig};

/// Shortest HS256 secret accepted.
pub const MIN_HS256_SECRET: usize = 32;

/// Why `auth.jwt` cannot be used, or why a token was refused. Key problems
/// go to `meshq validate` and the log; token problems only to the log (the
/// client is told its credentials are invalid, nothing more).
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// `auth.jwt` names no key at all.
    #[error("auth.jwt sets neither hs256_secret nor rs256_public_key")]
    NoKey,
    /// A key's environment variable is not set.
    #[error("auth.jwt.{setting}: {message}")]
    Secret {
        /// The `auth.jwt` key naming the variable.
        setting: &'static str,
        /// What is wrong, naming the variable (never its value).
        message: String,
    },
    /// An HS256 secret shorter than [`MIN_HS256_SECRET`].
    #[error(
        "auth.jwt.hs256_secret: the value of `{env}` is {len} bytes long; an HS256 secret must have at least {MIN_HS256_SECRET} bytes"
    )]
    ShortSecret {
        /// The variable holding the secret.
        env: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The RS256 key is not a PEM RSA public key.
    #[error(
        "auth.jwt.rs256_public_key: the value of `{env}` is not a PEM RSA public key: {source}"
    )]
    NotPem {
        /// The variable holding the key.
        env: String,
        /// The PEM parser's error.
        source: jsonwebtoken::errors::Error,
    },
    /// A token signed with an algorithm whose key is not configured.
    #[error("{0:?} token but no {1} configured")]
    KeyMissing(jsonwebtoken::Algorithm, &'static str),
    /// A token signed with an algorithm meshq never accepts.
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(jsonwebtoken::Algorithm),
    /// The token lacks the user claim.
    #[error("claim `{0}` missing")]
    ClaimMissing(String),
    /// The token is malformed, badly signed, expired or for someone else.
    #[error(transparent)]
    Token(#[from] jsonwebtoken::errors::Error),
}

/// A JWT verification key, resolved from `auth.jwt`.
#[derive(Clone)]
pub struct JwtKey {
    config: JwtConfig,
    hs256: Option<jsonwebtoken::DecodingKey>,
    rs256: Option<jsonwebtoken::DecodingKey>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .finish()
    }
}

impl JwtKey {
    /// The key material of `cfg`. Every problem is an error, and an error
    /// disables JWT login: an empty or short HS256 secret would let anyone
    /// sign tokens.
    pub fn resolve(cfg: &JwtConfig) -> Result<Self, JwtError> {
        if cfg.hs256_secret.is_none() && cfg.rs256_public_key.is_none() {
            return Err(JwtError::NoKey);
        }
        let hs256 = match &cfg.hs256_secret {
            None => None,
            Some(r) => {
                let secret = r.resolve().map_err(|message| JwtError::Secret {
                    setting: "hs256_secret",
                    message,
                })?;
                if secret.len() < MIN_HS256_SECRET {
                    return Err(JwtError::ShortSecret {
                        env: r.env.clone(),
                        len: secret.len(),
                    });
                }
                Some(jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()))
            }
        };
        let rs256 = match &cfg.rs256_public_key {
            None => None,
            Some(r) => {
                let pem = r.resolve().map_err(|message| JwtError::Secret {
                    setting: "rs256_public_key",
                    message,
                })?;
                Some(
                    jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|source| {
                        JwtError::NotPem {
                            env: r.env.clone(),
                            source,
                        }
                    })?,
                )
            }
        };
        Ok(Self {
            config: cfg.clone(),
            hs256,
            rs256,
        })
    }

    /// Validates a JWT and reads its principal. The error is for the log.
    pub fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
        let cfg = &self.config;
        let header = decode_header(token)?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or(JwtError::KeyMissing(header.alg, "hs256_secret"))?,
            Algorithm::RS256 => self
                .rs256
                .as_ref()
                .ok_or(JwtError::KeyMissing(header.alg, "rs256_public_key"))?,
            other => return Err(JwtError::Algorithm(other)),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)?;
        let claims = data.claims;
        let name = claims
            .get(&cfg.user_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| JwtError::ClaimMissing(cfg.user_claim.clone()))?;
        let mut attributes = std::collections::BTreeMap::new();
        for a in &cfg.attribute_claims {
            let values = claim_strings(claims.get(a));
            match values.len() {
                0 => {}
                1 => {
                    attributes.insert(a.clone(), AttributeValue::One(values[0].clone()));
                }
                _ => {
                    attributes.insert(a.clone(), AttributeValue::Many(values));
                }
            }
        }
        Ok(Principal {
            name: Some(name.to_string()),
            roles: claim_strings(claims.get(&cfg.roles_claim))
                .into_iter()
                .collect(),
            attributes,
        })
    }
}

fn claim_strings(v: Option<&serde_json::Value>) -> Vec<String> {
    match v {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// Problems of `meshq.yaml`'s authentication settings, for `meshq validate`
/// and the server log.
pub fn check_auth_config(config: &PlatformConfig) -> Vec<String> {
    match &config.auth.jwt {
        Some(jwt) => match JwtKey::resolve(jwt) {
            Ok(_) => vec![],
            Err(e) => vec![format!("{e}; JWT login is disabled until this is fixed")],
        },
        None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_config(secret_env: &str) -> JwtConfig {
        serde_yaml_ng::from_str(&format!(
            "{{ issuer: idp, audience: meshq, hs256_secret: {{ env: {secret_env} }}, roles_claim: groups, attribute_claims: [region] }}"
        ))
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn hs256_jwt_claims_become_a_principal() {
        // An unset variable: without the secret JWT login is off.
        let err = JwtKey::resolve(&jwt_config("MESHQ_TEST_JWT_SECRET_UNSET")).unwrap_err();
        assert!(err.to_string().contains("is not set"), "{err}");
        // Tests must not change the environment; PATH is set and long.
        let path = std::env::var("PATH").unwrap();
        assert!(path.len() >= MIN_HS256_SECRET);
        let key = JwtKey::resolve(&jwt_config("PATH")).unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let good = serde_json::json!({"sub": "ana", "iss": "idp", "aud": "meshq", "exp": exp, "groups": ["analyst"], "region": "EMEA"});
        let p = key.verify(&token(good.clone(), &path)).unwrap();
        assert_eq!(p.name.as_deref(), Some("ana"));
        assert!(p.has_role("analyst"));
        assert_eq!(p.attribute("region"), Some("EMEA"));
        // Wrong key, issuer, audience, expired: refused.
        assert!(key.verify(&token(good.clone(), "other")).is_err());
        let mut bad = good.clone();
        bad["iss"] = "evil".into();
        assert!(key.verify(&token(bad, &path)).is_err());
        let mut bad = good.clone();
        bad["aud"] = "other".into();
        assert!(key.verify(&token(bad, &path)).is_err());
        let mut bad = good;
        bad["exp"] = (exp - 7200).into();
        assert!(key.verify(&token(bad, &path)).is_err());
    }

    #[test]
    fn short_or_empty_secrets_disable_jwt() {
        // HOME is set on every test machine but shorter than 32 bytes here
        // only if it is; find a variable that is set and short instead.
        let short = std::env::vars()
            .find(|(_, v)| !v.is_empty() && v.len() < MIN_HS256_SECRET)
            .map(|(k, _)| k)
            .expect("some short variable is set");
        let err = JwtKey::resolve(&jwt_config(&short)).unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        let problems = check_auth_config(
            &serde_yaml_ng::from_str(&format!(
                "auth: {{ jwt: {{ issuer: i, audience: a, hs256_secret: {{ env: {short} }} }} }}"
            ))
            .unwrap(),
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("JWT login is disabled"),
            "{problems:?}"
        );
    }
}
