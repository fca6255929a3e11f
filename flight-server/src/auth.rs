//! Authentication: HTTP Basic in the Handshake (or on any call) against
//! `meshq.yaml` principals, bearer tokens issued by the Handshake, and bearer
//! JWTs (HS256 or RS256) checked against `auth.jwt`.
//!
//! - Wrong credentials give `Unauthenticated` with no hint which part was
//!   wrong; every failure is logged with the user name, never the password.
//! - Passwords are checked on a fixed pool of threads with reused memory,
//!   never on the async workers that serve queries, and an unknown user costs the same hash as
//!   a known one, so neither other users' latency nor which names exist can
//!   be learned by guessing.
//! - Failures are throttled per client address and per user name, with a
//!   growing backoff; while throttled, attempts are refused without hashing.
//! - Basic on every call reuses one session per credential.
//! - A JWT key that is empty, shorter than 32 bytes or unreadable disables
//!   JWT login (fail closed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use meshq_catalog::Principal;
use meshq_catalog::limits::{DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_PRINCIPAL};
use meshq_catalog::platform::{AttributeValue, JwtConfig, PlatformConfig};
use meshq_engine::{Engine, LiveEngine};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tracing::warn;

use crate::sessions::{ClientSession, Eviction, Login, SessionStore};

/// Base64 that accepts input with or without padding (the ADBC Go driver
/// omits it).
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Shortest HS256 secret accepted.
pub const MIN_HS256_SECRET: usize = 32;

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
fn header(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("authorization").and_then(|v| v.to_str().ok())
}

/// One password to check on the hashing threads.
struct HashJob {
    phc: String,
    password: String,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Password checks on a fixed pool of threads, never on the async workers
/// that serve queries. Each thread keeps one argon2 memory block and reuses
/// it, so the server holds a fixed amount of hashing memory (threads × the
/// hash's memory cost) however many logins arrive; the queue in front of
/// them is bounded.
struct PasswordChecker {
    jobs: std::sync::mpsc::SyncSender<HashJob>,
    /// Hashes verified so far (for tests).
    #[cfg(test)]
    verified: Arc<AtomicUsize>,
    /// Checked for unknown users, so they cost what known ones do.
    dummy: String,
}

/// Most logins waiting for a hashing thread; past it, refused at once.
const MAX_WAITING_LOGINS: usize = 256;

/// Whether `password` matches the PHC string `phc`, computed in `blocks`
/// (grown to the hash's memory cost on first use, then reused).
fn verify_with(blocks: &mut Vec<argon2::Block>, phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(&hash),
        argon2::Algorithm::try_from(hash.algorithm),
    ) else {
        return false;
    };
    let version = match hash.version {
        Some(v) => match argon2::Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => argon2::Version::default(),
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if blocks.len() < params.block_count() {
        blocks.resize(params.block_count(), argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = argon2::Argon2::new(algorithm, version, params.clone());
    argon
        .hash_password_into_with_memory(
            password,
            salt,
            &mut out,
            &mut blocks[..params.block_count()],
        )
        .is_ok()
        && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

impl PasswordChecker {
    fn new() -> Self {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .unwrap_or_else(|_| unreachable!("16 bytes encode"));
        let dummy = argon2::Argon2::default()
            .hash_password(&rand::random::<[u8; 16]>(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<HashJob>(MAX_WAITING_LOGINS);
        let queue = Arc::new(Mutex::new(queue));
        let verified = Arc::new(AtomicUsize::new(0));
        for i in 0..workers {
            let queue = Arc::clone(&queue);
            let verified = Arc::clone(&verified);
            let spawned = std::thread::Builder::new()
                .name(format!("meshq-login-{i}"))
                .spawn(move || {
                    let mut blocks = Vec::new();
                    loop {
                        // Ends when the checker (the sender) is dropped.
                        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        let ok = verify_with(&mut blocks, &job.phc, job.password.as_bytes());
                        verified.fetch_add(1, Ordering::SeqCst);
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a password hashing thread");
            }
        }
        #[cfg(not(test))]
        let _ = verified;
        Self {
            jobs,
            #[cfg(test)]
            verified,
            dummy,
        }
    }

    /// The principal when `password` is `user`'s, with the hash it matched.
    async fn check(
        &self,
        config: &PlatformConfig,
        user: &str,
        password: &str,
    ) -> Result<Option<(Principal, String)>, Status> {
        let entry = config.principals.iter().find(|p| p.name == user);
        let hash = entry.and_then(|p| p.password_hash.clone());
        let known = hash.is_some();
        let phc = hash.unwrap_or_else(|| self.dummy.clone());
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = HashJob {
            phc: phc.clone(),
            password: password.to_string(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                Status::unavailable("too many logins at once; try again in a moment")
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                Status::unavailable("the server is shutting down")
            }
        })?;
        let ok = answer.await.unwrap_or(false);
        Ok(match entry {
            Some(p) if ok && known => Some((Principal::from_config(p), phc)),
            _ => None,
        })
    }
}

/// Failed logins of one client address or user name.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

/// Throttles failed logins by key: past `free` failures within the window,
/// each further one blocks the key for twice as long as the last, up to
/// five minutes.
struct Throttle {
    free: u32,
    entries: Mutex<HashMap<String, Failures>>,
}

const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const MAX_THROTTLED_KEYS: usize = 10_000;

impl Throttle {
    fn new(free: u32) -> Self {
        Self {
            free,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `key` must still wait, if it is blocked.
    fn blocked(&self, key: &str) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let until = entries.get(key)?.blocked_until?;
        until.checked_duration_since(Instant::now())
    }

    fn failed(&self, key: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_THROTTLED_KEYS && !entries.contains_key(key) {
            entries.retain(|_, f| {
                now.duration_since(f.since) < THROTTLE_WINDOW
                    || f.blocked_until.is_some_and(|u| u > now)
            });
            if entries.len() >= MAX_THROTTLED_KEYS {
                entries.clear();
            }
        }
        let f = entries.entry(key.to_string()).or_insert(Failures {
            count: 0,
            since: now,
            blocked_until: None,
        });
        if now.duration_since(f.since) >= THROTTLE_WINDOW {
            *f = Failures {
                count: 0,
                since: now,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count > self.free {
            let exp = (f.count - self.free - 1).min(16);
            let backoff = Duration::from_secs(1u64 << exp).min(MAX_BACKOFF);
            f.blocked_until = Some(now + backoff);
        }
    }

    fn succeeded(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
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
    pub fn resolve(cfg: &JwtConfig) -> Result<Self, String> {
        if cfg.hs256_secret.is_none() && cfg.rs256_public_key.is_none() {
            return Err("auth.jwt sets neither hs256_secret nor rs256_public_key".into());
        }
        let hs256 = match &cfg.hs256_secret {
            None => None,
            Some(r) => {
                let secret = r
                    .resolve()
                    .map_err(|e| format!("auth.jwt.hs256_secret: {e}"))?;
                if secret.len() < MIN_HS256_SECRET {
                    return Err(format!(
                        "auth.jwt.hs256_secret: the value of `{}` is {} bytes long; an HS256 secret must have at least {MIN_HS256_SECRET} bytes",
                        r.env,
                        secret.len()
                    ));
                }
                Some(jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()))
            }
        };
        let rs256 = match &cfg.rs256_public_key {
            None => None,
            Some(r) => {
                let pem = r
                    .resolve()
                    .map_err(|e| format!("auth.jwt.rs256_public_key: {e}"))?;
                Some(
                    jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                        format!(
                            "auth.jwt.rs256_public_key: the value of `{}` is not a PEM RSA public key: {e}",
                            r.env
                        )
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
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
        let cfg = &self.config;
        let header = decode_header(token).map_err(|e| e.to_string())?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or("HS256 token but no hs256_secret configured")?,
            Algorithm::RS256 => self
                .rs256
                .as_ref()
                .ok_or("RS256 token but no rs256_public_key configured")?,
            other => return Err(format!("algorithm {other:?} is not accepted")),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&[&cfg.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<serde_json::Map<String, serde_json::Value>>(token, key, &validation)
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

/// Sees every session evicted to make room.
pub type OnEviction = Box<dyn Fn(Eviction) + Send + Sync>;

/// Issues and checks credentials.
pub struct Authenticator {
    live: Arc<LiveEngine>,
    sessions: SessionStore,
    /// Basic credentials seen on calls, by a salted digest, to their session.
    basic: Mutex<HashMap<[u8; 32], String>>,
    salt: [u8; 32],
    passwords: PasswordChecker,
    peers: Throttle,
    users: Throttle,
    jwt: Mutex<Option<(u64, Option<Arc<JwtKey>>)>>,
    on_failure: OnAuthFailure,
    on_eviction: OnEviction,
}

fn unauthenticated() -> Status {
    Status::unauthenticated("invalid credentials")
}

fn loading() -> Status {
    Status::unavailable("the mesh is still loading; try again in a moment")
}

impl Authenticator {
    /// Over the served mesh; `on_failure` sees every failed authentication,
    /// `on_eviction` every session ended to make room.
    pub fn new(live: Arc<LiveEngine>, on_failure: OnAuthFailure, on_eviction: OnEviction) -> Self {
        Self {
            live,
            sessions: SessionStore::default(),
            basic: Mutex::new(HashMap::new()),
            salt: rand::random(),
            passwords: PasswordChecker::new(),
            peers: Throttle::new(5),
            users: Throttle::new(10),
            jwt: Mutex::new(None),
            on_failure,
            on_eviction,
        }
    }

    /// The mesh version being served.
    pub fn engine(&self) -> Result<Engine, Status> {
        self.live.current().ok_or_else(loading)
    }

    /// Logged-in sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    fn note_failure(&self, user: &str, why: &str, peer: Option<SocketAddr>) {
        warn!(user, reason = why, "authentication failed");
        (self.on_failure)(
            &AuthFailure {
                user: user.to_string(),
                reason: why.to_string(),
            },
            peer,
        );
    }

    fn peer_key(peer: Option<SocketAddr>) -> String {
        peer.map(|p| p.ip().to_string())
            .unwrap_or_else(|| "(unknown)".into())
    }

    /// Checks a user and password, throttled; the principal and the hash
    /// it matched.
    async fn check_password(
        &self,
        engine: &Engine,
        user: &str,
        password: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(Principal, String), Status> {
        let peer_key = Self::peer_key(peer);
        if let Some(wait) = self
            .peers
            .blocked(&peer_key)
            .or_else(|| self.users.blocked(user))
        {
            self.note_failure(user, "throttled after repeated failures", peer);
            return Err(Status::unauthenticated(format!(
                "too many failed logins; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        match self
            .passwords
            .check(&engine.mesh().config, user, password)
            .await?
        {
            Some(found) => {
                self.users.succeeded(user);
                Ok(found)
            }
            None => {
                self.peers.failed(&peer_key);
                self.users.failed(user);
                self.note_failure(user, "wrong user or password", peer);
                Err(unauthenticated())
            }
        }
    }

    fn store(&self, engine: &Engine, token: String, session: Arc<ClientSession>) {
        let limits = &engine.mesh().config.limits;
        let evicted = self.sessions.insert(
            token,
            session,
            limits
                .max_sessions_per_principal
                .unwrap_or(DEFAULT_MAX_SESSIONS_PER_PRINCIPAL),
            limits.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS),
        );
        for e in evicted {
            (self.on_eviction)(e);
        }
    }

    /// Checks the Handshake's `Basic` credentials; returns a new bearer
    /// token and its session.
    pub async fn login_basic(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<(String, Arc<ClientSession>), Status> {
        let engine = self.engine()?;
        let Some(header) = header(metadata) else {
            self.note_failure("(none)", "no authorization header", peer);
            return Err(Status::unauthenticated(
                "send HTTP Basic credentials in the authorization header",
            ));
        };
        let (user, password) = match parse_authorization(header) {
            Ok(Credentials::Basic { user, password }) => (user, password),
            Ok(Credentials::Bearer(_)) => {
                self.note_failure("(malformed)", "the Handshake needs HTTP Basic", peer);
                return Err(unauthenticated());
            }
            Err(why) => {
                self.note_failure("(malformed)", why, peer);
                return Err(unauthenticated());
            }
        };
        let (principal, hash) = self.check_password(&engine, &user, &password, peer).await?;
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Arc::new(ClientSession::new(
            &self.live,
            engine.clone(),
            principal,
            Login::Password { hash },
        ));
        self.store(&engine, token.clone(), Arc::clone(&session));
        Ok((token, session))
    }

    /// The session behind a call's `authorization` header: a token from the
    /// Handshake, a JWT, or Basic credentials.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<ClientSession>, Status> {
        let Some(header) = header(metadata) else {
            self.note_failure("(none)", "no authorization header", peer);
            return Err(Status::unauthenticated(
                "missing authorization header; log in with the Handshake or send a bearer token",
            ));
        };
        match parse_authorization(header) {
            Ok(Credentials::Basic { user, password }) => {
                self.basic_session(header, &user, &password, peer).await
            }
            Ok(Credentials::Bearer(token)) => self.bearer_session(&token, peer),
            Err(why) => {
                self.note_failure("(malformed)", why, peer);
                Err(unauthenticated())
            }
        }
    }

    /// Basic on a call: one session per credential, checked once.
    async fn basic_session(
        &self,
        header: &str,
        user: &str,
        password: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<ClientSession>, Status> {
        let engine = self.engine()?;
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.salt)
            .chain_update(header.trim().as_bytes())
            .finalize()
            .into();
        let cached = self
            .basic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        if let Some(token) = cached
            && let Some(session) = self.sessions.get(&token)
        {
            // Still the password the session was checked against?
            let current = engine
                .mesh()
                .config
                .principals
                .iter()
                .find(|p| p.name == user)
                .and_then(|p| p.password_hash.as_deref());
            if matches!(session.login(), Login::Password { hash } if Some(hash.as_str()) == current)
            {
                return Ok(session);
            }
        }
        let (principal, hash) = self.check_password(&engine, user, password, peer).await?;
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Arc::new(ClientSession::new(
            &self.live,
            engine.clone(),
            principal,
            Login::Password { hash },
        ));
        self.store(&engine, token.clone(), Arc::clone(&session));
        let mut basic = self.basic.lock().unwrap_or_else(|e| e.into_inner());
        if basic.len() >= DEFAULT_MAX_SESSIONS {
            basic.retain(|_, t| self.sessions.get(t).is_some());
        }
        basic.insert(digest, token);
        Ok(session)
    }

    fn bearer_session(
        &self,
        token: &str,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<ClientSession>, Status> {
        if let Some(s) = self.sessions.get(token) {
            return Ok(s);
        }
        let engine = self.engine()?;
        if token.matches('.').count() == 2
            && let Some(key) = self.jwt_key(&engine)
        {
            return match key.verify(token) {
                // A JWT is checked on every call; its session lives as long
                // as the call.
                Ok(principal) => Ok(Arc::new(ClientSession::new(
                    &self.live,
                    engine,
                    principal,
                    Login::Jwt,
                ))),
                Err(why) => {
                    self.note_failure("(jwt)", &why, peer);
                    Err(unauthenticated())
                }
            };
        }
        self.note_failure("(token)", "unknown or expired bearer token", peer);
        Err(unauthenticated())
    }

    /// The JWT key of `engine`'s config, resolved once per mesh version;
    /// `None` when JWT login is off or misconfigured (logged).
    fn jwt_key(&self, engine: &Engine) -> Option<Arc<JwtKey>> {
        let cfg = engine.mesh().config.auth.jwt.as_ref()?;
        let version = engine.tables().mesh_version();
        let mut slot = self.jwt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, key)) = slot.as_ref()
            && *v == version
        {
            return key.clone();
        }
        let key = match JwtKey::resolve(cfg) {
            Ok(k) => Some(Arc::new(k)),
            Err(e) => {
                warn!(error = %e, "JWT login is disabled");
                None
            }
        };
        *slot = Some((version, key.clone()));
        key
    }

    /// Ends the session of this call's token, if it has one.
    pub fn logout(&self, metadata: &MetadataMap) -> bool {
        match header(metadata).map(parse_authorization) {
            Some(Ok(Credentials::Bearer(token))) => self.sessions.remove(&token),
            _ => false,
        }
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
        assert!(err.contains("is not set"), "{err}");
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
        assert!(err.contains("at least 32 bytes"), "{err}");
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

    #[test]
    fn throttle_backs_off_after_free_failures() {
        let t = Throttle::new(2);
        t.failed("a");
        t.failed("a");
        assert!(t.blocked("a").is_none());
        t.failed("a");
        let wait = t.blocked("a").unwrap();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        t.failed("a");
        assert!(t.blocked("a").unwrap() > Duration::from_secs(1));
        assert!(t.blocked("b").is_none());
        t.succeeded("a");
        assert!(t.blocked("a").is_none());
    }

    #[tokio::test]
    async fn unknown_users_cost_a_hash_too() {
        let checker = PasswordChecker::new();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        let cfg: PlatformConfig = serde_yaml_ng::from_str(&format!(
            "principals: [ {{ name: ana, password_hash: '{hash}', roles: [analyst] }}, {{ name: bot, roles: [etl] }} ]"
        ))
        .unwrap();
        let found = checker.check(&cfg, "ana", "s3cret").await.unwrap();
        assert_eq!(found.unwrap().1, hash);
        assert!(checker.check(&cfg, "ana", "wrong").await.unwrap().is_none());
        // An unknown user, and one without a password, cost a full hash
        // too (against a dummy of the same parameters), so timing does not
        // tell them apart.
        assert!(
            checker
                .check(&cfg, "nobody", "wrong")
                .await
                .unwrap()
                .is_none()
        );
        assert!(checker.check(&cfg, "bot", "").await.unwrap().is_none());
        assert_eq!(checker.verified.load(Ordering::SeqCst), 4);
        assert!(
            checker.dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            checker.dummy
        );
    }
}
