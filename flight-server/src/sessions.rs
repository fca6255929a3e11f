//! Logged-in sessions: [`ClientSession`] (a principal and its
//! [`SessionData`], kilobytes) and [`SessionStore`], bounded in total and per
//! principal, least recently used first out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::logical_expr::LogicalPlan;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use meshq_catalog::Principal;
use meshq_engine::{Engine, LiveEngine, MeshSession, SessionData};

use crate::error::{Error, Result};

/// How long an idle session stays valid.
pub const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);

/// How a session's principal was established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Login {
    /// User and password from `meshq.yaml`, checked against this PHC hash:
    /// after a reload the principal is looked up again, so changed roles
    /// apply, and a removed principal or a changed password ends it.
    Password { hash: String },
    /// A JWT, checked on every call.
    Jwt,
}

/// How long a query announced by `GetFlightInfo` stays planned for its
/// `DoGet`; a later `DoGet` plans it again.
pub const ANNOUNCED_FOR: Duration = Duration::from_secs(60);

/// Most announced queries a session keeps planned; the oldest goes first.
pub const MAX_ANNOUNCED: usize = 16;

/// A query `GetFlightInfo` planned, kept so that the `DoGet` of its ticket
/// runs that plan instead of planning the statement again.
pub(crate) struct Announcement {
    /// The ticket's nonce.
    pub nonce: u64,
    /// What the ticket says: the same SQL and parameters must come back.
    pub sql: String,
    pub params: Option<RecordBatch>,
    /// The planning context and the admitted plan.
    pub session: MeshSession,
    pub plan: LogicalPlan,
    pub at: Instant,
}

/// A logged-in client. After a reload it continues on the new mesh
/// version with its scratch tables, prepared statements and default schema.
pub struct ClientSession {
    login: Login,
    data: Arc<SessionData>,
    live: Arc<LiveEngine>,
    /// The mesh version the principal was last resolved on.
    seen: Mutex<Option<Engine>>,
    last_used: Mutex<Instant>,
    /// Queries announced and not fetched yet, newest last.
    announced: Mutex<VecDeque<Announcement>>,
}

impl ClientSession {
    pub(crate) fn new(
        live: &Arc<LiveEngine>,
        engine: Engine,
        principal: Principal,
        login: Login,
    ) -> Self {
        Self {
            login,
            data: engine.new_session_data(principal),
            live: Arc::clone(live),
            seen: Mutex::new(Some(engine)),
            last_used: Mutex::new(Instant::now()),
            announced: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps a query `GetFlightInfo` planned for the `DoGet` of its ticket.
    pub(crate) fn keep_announced(&self, announcement: Announcement) {
        let mut kept = self.announced.lock();
        kept.retain(|a| a.at.elapsed() < ANNOUNCED_FOR);
        while kept.len() >= MAX_ANNOUNCED {
            kept.pop_front();
        }
        kept.push_back(announcement);
    }

    /// The plan kept for the ticket with `nonce`, taken once: only for the
    /// same SQL and parameters, within [`ANNOUNCED_FOR`], and on the mesh
    /// version `current` plans on (so the same principal and policies).
    /// Otherwise the statement is planned again.
    pub(crate) fn take_announced(
        &self,
        nonce: u64,
        sql: &str,
        params: Option<&RecordBatch>,
        current: &MeshSession,
    ) -> Option<(MeshSession, LogicalPlan)> {
        let mut kept = self.announced.lock();
        let i = kept.iter().position(|a| a.nonce == nonce)?;
        let a = kept.remove(i)?;
        drop(kept);
        let same = a.sql == sql
            && a.params.as_ref() == params
            && a.at.elapsed() < ANNOUNCED_FOR
            && a.session.engine().same_version(current.engine());
        same.then_some((a.session, a.plan))
    }

    /// The principal, as of the last mesh version it was resolved on.
    pub fn principal(&self) -> Arc<Principal> {
        self.data.principal()
    }

    /// The session's data.
    pub fn data(&self) -> &Arc<SessionData> {
        &self.data
    }

    /// The mesh version served now (1 is the first load).
    pub fn mesh_version(&self) -> u64 {
        self.live.version()
    }

    pub(crate) fn login(&self) -> &Login {
        &self.login
    }

    fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.last_used.lock().elapsed()
    }

    /// The planning context of one statement, on the mesh version served
    /// now: taken once per call, so one statement never sees two versions.
    pub fn session(&self) -> Result<MeshSession> {
        let current = self.live.current().ok_or(Error::Loading)?;
        let mut seen = self.seen.lock();
        if !seen.as_ref().is_some_and(|e| e.same_version(&current)) {
            if let Login::Password { hash } = &self.login {
                let name = self.data.principal().name.clone().unwrap_or_default();
                let config = &current.mesh().config;
                let entry = config.principals.iter().find(|p| p.name == name);
                let Some(entry) = entry.filter(|p| p.password_hash.as_deref() == Some(hash)) else {
                    return Err(Error::PrincipalGone(name));
                };
                self.data.set_principal(Principal::from_config(entry));
            }
            *seen = Some(current.clone());
        }
        drop(seen);
        Ok(current.session_for(&self.data))
    }
}

/// Why a session left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Idle longer than [`SESSION_IDLE`].
    Idle,
    /// Its principal held too many sessions.
    PerPrincipal,
    /// The server held too many sessions.
    Total,
}

/// Sessions by bearer token.
#[derive(Default)]
pub struct SessionStore {
    tokens: Mutex<HashMap<String, Arc<ClientSession>>>,
}

impl SessionStore {
    /// Logged-in sessions now.
    pub fn len(&self) -> usize {
        self.tokens.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session of `token`, if it is valid.
    pub fn get(&self, token: &str) -> Option<Arc<ClientSession>> {
        let tokens = self.tokens.lock();
        let s = tokens.get(token)?;
        if s.idle() >= SESSION_IDLE {
            return None;
        }
        s.touch();
        Some(Arc::clone(s))
    }

    /// Keeps `session` under `token`, making room: idle sessions go first,
    /// then the principal's least recently used past `per_principal`, then
    /// the server's past `total`. Returns what was evicted.
    pub fn insert(
        &self,
        token: String,
        session: Arc<ClientSession>,
        per_principal: usize,
        total: usize,
    ) -> Vec<Eviction> {
        let mut evicted = Vec::new();
        let mut tokens = self.tokens.lock();
        let name = session.principal().name.clone();
        let own: Vec<(String, Duration)> = tokens
            .iter()
            .filter(|(_, s)| s.principal().name == name)
            .map(|(k, s)| (k.clone(), s.idle()))
            .collect();
        if own.len() >= per_principal.max(1) {
            let mut own = own;
            own.sort_by_key(|(_, idle)| std::cmp::Reverse(*idle));
            for (k, _) in own.iter().take(own.len() + 1 - per_principal.max(1)) {
                tokens.remove(k);
                evicted.push(Eviction::PerPrincipal);
            }
        }
        if tokens.len() >= total.max(1) {
            let before = tokens.len();
            tokens.retain(|_, s| s.idle() < SESSION_IDLE);
            evicted.extend(std::iter::repeat_n(Eviction::Idle, before - tokens.len()));
            while tokens.len() >= total.max(1) {
                let Some(oldest) = tokens
                    .iter()
                    .max_by_key(|(_, s)| s.idle())
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                tokens.remove(&oldest);
                evicted.push(Eviction::Total);
            }
        }
        tokens.insert(token, session);
        evicted
    }

    /// Ends the session of `token`.
    pub fn remove(&self, token: &str) -> bool {
        self.tokens.lock().remove(token).is_some()
    }
}
