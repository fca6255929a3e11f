//! Authentication: HTTP Basic in the Handshake (or on any call) against
//! `meshq.yaml` principals, bearer tokens issued by the Handshake, and bearer
//! JWTs (HS256 or RS256) checked against `auth.jwt`.
//!
//! Wrong credentials give `Unauthenticated` with no hint which part was
//! wrong; every failure is logged with the user name, never the password.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use meshq_catalog::Principal;
use meshq_catalog::platform::{AttributeValue, JwtConfig};
use meshq_engine::{Engine, LiveEngine, MeshSession};
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

/// How a session's principal was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// User and password from `meshq.yaml`: looked up again after a
    /// reload, so changed roles apply and a removed principal is logged out.
    Password,
    /// A JWT, checked on every call.
    Jwt,
}

/// A logged-in client: its principal, its SQL session and options. After a
/// reload the session continues on the new mesh version, with its scratch
/// tables and default schema.
pub struct ClientSession {
    login: Login,
    live: Arc<LiveEngine>,
    state: Mutex<SessionState>,
    last_used: Mutex<Instant>,
}

struct SessionState {
    engine: Engine,
    principal: Principal,
    session: MeshSession,
}

impl ClientSession {
    fn new(live: &Arc<LiveEngine>, engine: Engine, principal: Principal, login: Login) -> Self {
        let session = engine.session(&principal);
        Self {
            login,
            live: Arc::clone(live),
            state: Mutex::new(SessionState {
                engine,
                principal,
                session,
            }),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// The principal, as of the current mesh version.
    pub fn principal(&self) -> Principal {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .principal
            .clone()
    }

    /// The session and the mesh version a call runs on: taken once per call,
    /// so one query never sees two versions.
    pub fn session(&self) -> Result<(Engine, MeshSession), Status> {
        let current = self.live.current().ok_or_else(loading)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.engine.same_version(&current) {
            let principal = match self.login {
                Login::Jwt => state.principal.clone(),
                Login::Password => {
                    let name = state.principal.name.clone().unwrap_or_default();
                    current.mesh().config.principal(&name).ok_or_else(|| {
                        Status::unauthenticated(format!(
                            "principal `{name}` no longer exists in meshq.yaml; log in again"
                        ))
                    })?
                }
            };
            let session = current.continue_session(&state.session, &principal);
            *state = SessionState {
                engine: current,
                principal,
                session,
            };
        }
        Ok((state.engine.clone(), state.session.clone()))
    }
}

fn loading() -> Status {
    Status::unavailable("the mesh is still loading; try again in a moment")
}

/// A failed authentication, for the audit log.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    /// The user name given, or `(token)` / `(jwt)`.
    pub user: String,
    /// Why, for the server log and the audit (never the secret).
    pub reason: String,
}

/// Sees every failed authentication, with the client's address.
pub type OnAuthFailure = Box<dyn Fn(&AuthFailure, Option<SocketAddr>) + Send + Sync>;

/// Issues and checks credentials.
pub struct Authenticator {
    live: Arc<LiveEngine>,
    tokens: Mutex<HashMap<String, Arc<ClientSession>>>,
    failures: Mutex<HashMap<String, u32>>,
    on_failure: OnAuthFailure,
}

fn unauthenticated() -> Status {
    Status::unauthenticated("invalid credentials")
}

impl Authenticator {
    /// Over the served mesh; `on_failure` sees every failed authentication.
    pub fn new(live: Arc<LiveEngine>, on_failure: OnAuthFailure) -> Self {
        Self {
            live,
            tokens: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            on_failure,
        }
    }

    /// The mesh version being served.
    pub fn engine(&self) -> Result<Engine, Status> {
        self.live.current().ok_or_else(loading)
    }

    /// Logged-in sessions.
    pub fn sessions(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn note_failure(&self, user: &str, why: &str, peer: Option<SocketAddr>) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Counts per user name, for the log; names are the caller's to
        // choose, so the map is bounded (the audit log keeps every failure).
        if f.len() >= MAX_TOKENS && !f.contains_key(user) {
            f.clear();
        }
        let n = f.entry(user.to_string()).or_default();
        *n += 1;
        warn!(user, failures = *n, reason = why, "authentication failed");
        drop(f);
        (self.on_failure)(
            &AuthFailure {
                user: user.to_string(),
                reason: why.to_string(),
            },
            peer,
        );
    }

    /// Checks `Basic` credentials; returns a new bearer token and the session.
    pub fn login_basic(
        &self,
        header: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(String, Arc<ClientSession>), Status> {
        let engine = self.engine()?;
        let malformed = |why: &str| {
            self.note_failure("(malformed)", why, peer);
            unauthenticated()
        };
        let Some(encoded) = header.strip_prefix("Basic ") else {
            return Err(malformed("not HTTP Basic"));
        };
        let Some(decoded) = LENIENT_B64
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return Err(malformed("Basic credentials are not base64 UTF-8"));
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return Err(malformed("Basic credentials lack a `:`"));
        };
        let Some(principal) = engine.mesh().config.authenticate(user, password) else {
            self.note_failure(user, "wrong user or password", peer);
            return Err(unauthenticated());
        };
        Ok(self.issue(engine, principal))
    }

    fn issue(&self, engine: Engine, principal: Principal) -> (String, Arc<ClientSession>) {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Arc::new(ClientSession::new(
            &self.live,
            engine,
            principal,
            Login::Password,
        ));
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
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<ClientSession>, Status> {
        let Some(header) = metadata.get("authorization").and_then(|v| v.to_str().ok()) else {
            self.note_failure("(none)", "no authorization header", peer);
            return Err(Status::unauthenticated(
                "missing authorization header; log in with the Handshake or send a bearer token",
            ));
        };
        if header.starts_with("Basic ") {
            return self.login_basic(header, peer).map(|(_, s)| s);
        }
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
        else {
            self.note_failure("(malformed)", "neither Basic nor Bearer", peer);
            return Err(unauthenticated());
        };
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
        let engine = self.engine()?;
        match &engine.mesh().config.auth.jwt {
            Some(jwt) if token.matches('.').count() == 2 => {
                let principal = match verify_jwt(jwt, token) {
                    Ok(p) => p,
                    Err(why) => {
                        self.note_failure("(jwt)", &why, peer);
                        return Err(unauthenticated());
                    }
                };
                // A JWT is checked on every call; the session is per call.
                Ok(Arc::new(ClientSession::new(
                    &self.live,
                    engine,
                    principal,
                    Login::Jwt,
                )))
            }
            _ => {
                self.note_failure("(token)", "unknown or expired bearer token", peer);
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
