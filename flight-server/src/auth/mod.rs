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

mod credentials;
mod jwt;
mod passwords;
mod throttle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use meshq_catalog::Principal;
use meshq_catalog::limits::{DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSIONS_PER_PRINCIPAL};
use meshq_engine::{Engine, LiveEngine};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tracing::warn;

pub use credentials::{Credentials, parse_authorization};
pub use jwt::{JwtError, JwtKey, MIN_HS256_SECRET, check_auth_config};

use crate::error::{Error, Result};
use crate::sessions::{ClientSession, Eviction, Login, SessionStore};
use credentials::header;
use passwords::PasswordChecker;
use throttle::Throttle;

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
    pub fn engine(&self) -> Result<Engine> {
        self.live.current().ok_or(Error::Loading)
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
    ) -> Result<(Principal, String)> {
        let peer_key = Self::peer_key(peer);
        if let Some(wait) = self
            .peers
            .blocked(&peer_key)
            .or_else(|| self.users.blocked(user))
        {
            self.note_failure(user, "throttled after repeated failures", peer);
            return Err(Error::Throttled(wait.as_secs().max(1)));
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
                Err(Error::InvalidCredentials)
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
    ) -> Result<(String, Arc<ClientSession>)> {
        let engine = self.engine()?;
        let Some(header) = header(metadata) else {
            self.note_failure("(none)", "no authorization header", peer);
            return Err(Error::MissingCredentials(
                "send HTTP Basic credentials in the authorization header",
            ));
        };
        let (user, password) = match parse_authorization(header) {
            Ok(Credentials::Basic { user, password }) => (user, password),
            Ok(Credentials::Bearer(_)) => {
                self.note_failure("(malformed)", "the Handshake needs HTTP Basic", peer);
                return Err(Error::InvalidCredentials);
            }
            Err(why) => {
                self.note_failure("(malformed)", why, peer);
                return Err(Error::InvalidCredentials);
            }
        };
        self.password_session(&engine, &user, &password, peer).await
    }

    /// Checks a password and opens a session for it under a new token.
    async fn password_session(
        &self,
        engine: &Engine,
        user: &str,
        password: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(String, Arc<ClientSession>)> {
        let (principal, hash) = self.check_password(engine, user, password, peer).await?;
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let session = Arc::new(ClientSession::new(
            &self.live,
            engine.clone(),
            principal,
            Login::Password { hash },
        ));
        self.store(engine, token.clone(), Arc::clone(&session));
        Ok((token, session))
    }

    /// The session behind a call's `authorization` header: a token from the
    /// Handshake, a JWT, or Basic credentials.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<ClientSession>> {
        let Some(header) = header(metadata) else {
            self.note_failure("(none)", "no authorization header", peer);
            return Err(Error::MissingCredentials(
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
                Err(Error::InvalidCredentials)
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
    ) -> Result<Arc<ClientSession>> {
        let engine = self.engine()?;
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.salt)
            .chain_update(header.trim().as_bytes())
            .finalize()
            .into();
        let cached = self.basic.lock().get(&digest).cloned();
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
        let (token, session) = self.password_session(&engine, user, password, peer).await?;
        let mut basic = self.basic.lock();
        if basic.len() >= DEFAULT_MAX_SESSIONS {
            basic.retain(|_, t| self.sessions.get(t).is_some());
        }
        basic.insert(digest, token);
        Ok(session)
    }

    fn bearer_session(&self, token: &str, peer: Option<SocketAddr>) -> Result<Arc<ClientSession>> {
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
                    self.note_failure("(jwt)", &why.to_string(), peer);
                    Err(Error::InvalidCredentials)
                }
            };
        }
        self.note_failure("(token)", "unknown or expired bearer token", peer);
        Err(Error::InvalidCredentials)
    }

    /// The JWT key of `engine`'s config, resolved once per mesh version;
    /// `None` when JWT login is off or misconfigured (logged).
    fn jwt_key(&self, engine: &Engine) -> Option<Arc<JwtKey>> {
        let cfg = engine.mesh().config.auth.jwt.as_ref()?;
        let version = engine.tables().mesh_version();
        let mut slot = self.jwt.lock();
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

    /// Checks a user and password (throttled, audited like the Handshake)
    /// and opens a session: the web catalog's login.
    pub async fn login_password(
        &self,
        user: &str,
        password: &str,
        peer: Option<SocketAddr>,
    ) -> Result<(String, Arc<ClientSession>)> {
        let engine = self.engine()?;
        self.password_session(&engine, user, password, peer).await
    }

    /// The session of a bearer `token` (a session token or a JWT).
    pub fn session_for(&self, token: &str, peer: Option<SocketAddr>) -> Result<Arc<ClientSession>> {
        self.bearer_session(token, peer)
    }

    /// Ends the session of `token`; whether there was one.
    pub fn end(&self, token: &str) -> bool {
        self.sessions.remove(token)
    }

    /// Ends the session of this call's token, if it has one.
    pub fn logout(&self, metadata: &MetadataMap) -> bool {
        match header(metadata).map(parse_authorization) {
            Some(Ok(Credentials::Bearer(token))) => self.sessions.remove(&token),
            _ => false,
        }
    }
}
