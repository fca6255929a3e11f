//! Authentication: HTTP Basic in the Handshake (or on any call) against
//! `meshq.yaml` principals, bearer tokens issued by the Handshake, and bearer
//! JWTs (HS256 or RS256) checked against `auth.jwt`.
//!
//! Wrong credentials give `Unauthenticated` with no hint which part was
//! wrong; every failure is logged with the user name, never the password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use meshq_catalog::Principal;
use meshq_catalog::platform::{AttributeValue, JwtConfig, PlatformConfig};
use meshq_engine::{Engine, MeshSession};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

/// Base64 that accepts input with or without padding (the ADBC Go driver
/// omits it).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How long an idle bearer token stays valid.
const TOKEN_IDLE: Duration = Duration::from_secs(8 * 3600);
/// Most tokens kept at once; the least recently used go first.
const MAX_TOKENS: usize = 10_000;

/// A logged-in client: its principal, its SQL session and options.
pub struct ClientSession {
    /// Who.
    pub principal: Principal,
    /// The session queries run in (scratch tables live here).
    pub session: MeshSession,
    last_used: Mutex<Instant>,
}

impl ClientSession {
    fn new(engine: &Engine, principal: Principal) -> Self {
        let session = engine.session(&principal);
        Self {
            principal,
            session,
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// Issues and checks credentials.
pub struct Authenticator {
    engine: Engine,
    tokens: Mutex<HashMap<String, Arc<ClientSession>>>,
    failures: Mutex<HashMap<String, u32>>,
}

fn unauthenticated() -> Status {
    Status::unauthenticated("invalid credentials")
}

impl Authenticator {
    /// For `engine`'s platform config.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The engine sessions are made from.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn config(&self) -> &PlatformConfig {
        &self.engine.mesh().config
    }

    fn note_failure(&self, user: &str, why: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(user.to_string()).or_default();
        *n += 1;
        warn!(user, failures = *n, reason = why, "authentication failed");
    }

    /// Checks `Basic` credentials; returns a new bearer token and the session.
    pub fn login_basic(&self, header: &str) -> Result<(String, Arc<ClientSession>), Status> {
        let encoded = header
            .strip_prefix("Basic ")
            .ok_or_else(unauthenticated)?
            .trim();
        let decoded = LENIENT_B64
            .decode(encoded)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthenticated)?;
        let (user, password) = decoded.split_once(':').ok_or_else(unauthenticated)?;
        let Some(principal) = self.config().authenticate(user, password) else {
            self.note_failure(user, "wrong user or password");
            return Err(unauthenticated());
        };
        Ok(self.issue(principal))
    }

    fn issue(&self, principal: Principal) -> (String, Arc<ClientSession>) {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Arc::new(ClientSession::new(&self.engine, principal));
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_TOKENS {
            let now = Instant::now();
            tokens.retain(|_, s| {
                now.duration_since(*s.last_used.lock().unwrap_or_else(|e| e.into_inner()))
                    < TOKEN_IDLE
            });
            if tokens.len() >= MAX_TOKENS
                && let Some(oldest) = tokens
                    .iter()
                    .min_by_key(|(_, s)| *s.last_used.lock().unwrap_or_else(|e| e.into_inner()))
                    .map(|(k, _)| k.clone())
            {
                tokens.remove(&oldest);
            }
        }
        tokens.insert(token.clone(), Arc::clone(&session));
        (token, session)
    }

    /// The session behind a call's `authorization` header: a token from the
    /// Handshake, a JWT, or Basic credentials.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<ClientSession>, Status> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing authorization header; log in with the Handshake or send a bearer token"))?;
        if header.starts_with("Basic ") {
            return self.login_basic(header).map(|(_, s)| s);
        }
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(unauthenticated)?
            .trim();
        if let Some(s) = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
        {
            let mut last = s.last_used.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < TOKEN_IDLE {
                *last = Instant::now();
                return Ok(Arc::clone(s));
            }
        }
        match &self.config().auth.jwt {
            Some(jwt) if token.matches('.').count() == 2 => {
                let principal = verify_jwt(jwt, token).map_err(|why| {
                    self.note_failure("(jwt)", &why);
                    unauthenticated()
                })?;
                // A JWT is checked on every call; the session is per call.
                Ok(Arc::new(ClientSession::new(&self.engine, principal)))
            }
            _ => {
                self.note_failure("(token)", "unknown or expired bearer token");
                Err(unauthenticated())
            }
        }
    }

    /// Ends the session of this call's token, if it has one.
    pub fn logout(&self, metadata: &MetadataMap) {
        if let Some(token) = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(token.trim());
        }
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

/// Validates a JWT and reads its principal. The error is for the log only.
pub fn verify_jwt(cfg: &JwtConfig, token: &str) -> Result<Principal, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
    let header = decode_header(token).map_err(|e| e.to_string())?;
    let key = match header.alg {
        Algorithm::HS256 => {
            let secret = cfg
                .hs256_secret
                .as_ref()
                .ok_or("HS256 token but no hs256_secret configured")?
                .resolve()?;
            DecodingKey::from_secret(secret.as_bytes())
        }
        Algorithm::RS256 => {
            let pem = cfg
                .rs256_public_key
                .as_ref()
                .ok_or("RS256 token but no rs256_public_key configured")?
                .resolve()?;
            DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?
        }
        other => return Err(format!("algorithm {other:?} is not accepted")),
    };
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&cfg.issuer]);
    validation.set_audience(&[&cfg.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
        .map_err(|e| e.to_string())?;
    let claims = data.claims;
    let name = claims
        .get(&cfg.user_claim)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("claim `{}` missing", cfg.user_claim))?;
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
        // An unset variable: without the secret nothing verifies.
        let var = "MESHQ_TEST_JWT_SECRET_AUTH_RS";
        let cfg = jwt_config(var);
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let good = serde_json::json!({"sub": "ana", "iss": "idp", "aud": "meshq", "exp": exp, "groups": ["analyst"], "region": "EMEA"});
        // The secret comes from the environment; without it nothing verifies.
        assert!(verify_jwt(&cfg, &token(good.clone(), "s3cret")).is_err());
        // Tests must not change the environment, so a variable that is always
        // set stands in for the secret.
        let cfg_literal: JwtConfig = JwtConfig {
            hs256_secret: Some(meshq_catalog::platform::SecretRef { env: "PATH".into() }),
            ..cfg
        };
        let path = std::env::var("PATH").unwrap();
        let p = verify_jwt(&cfg_literal, &token(good.clone(), &path)).unwrap();
        assert_eq!(p.name.as_deref(), Some("ana"));
        assert!(p.has_role("analyst"));
        assert_eq!(p.attribute("region"), Some("EMEA"));
        // Wrong key, issuer, audience, expired: refused.
        assert!(verify_jwt(&cfg_literal, &token(good.clone(), "other")).is_err());
        let mut bad = good.clone();
        bad["iss"] = "evil".into();
        assert!(verify_jwt(&cfg_literal, &token(bad, &path)).is_err());
        let mut bad = good.clone();
        bad["aud"] = "other".into();
        assert!(verify_jwt(&cfg_literal, &token(bad, &path)).is_err());
        let mut bad = good;
        bad["exp"] = (exp - 7200).into();
        assert!(verify_jwt(&cfg_literal, &token(bad, &path)).is_err());
    }

    #[test]
    fn basic_with_and_without_padding() {
        // "ana:x" is 5 bytes: padded "YW5hOng=", unpadded "YW5hOng".
        assert_eq!(LENIENT_B64.decode("YW5hOng=").unwrap(), b"ana:x");
        assert_eq!(LENIENT_B64.decode("YW5hOng").unwrap(), b"ana:x");
    }
}
