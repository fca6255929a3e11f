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

/// Most prepared statements a session keeps planned; the oldest goes
/// first (it is planned again when it runs).
pub const MAX_PREPARED: usize = 64;

/// A plan kept in a session so that a later call with the same statement
/// runs it instead of planning again: a query `GetFlightInfo` announced
/// (for the `DoGet` of its ticket), or a prepared statement (for each
/// execution, before its parameters are bound).
pub(crate) struct KeptPlan {
    /// What the later call must send again: the same SQL and parameters.
    pub sql: String,
    pub params: Option<RecordBatch>,
    /// The mesh version it was planned on.
    pub engine: Engine,
    /// The admitted plan.
    pub plan: LogicalPlan,
    pub at: Instant,
}

impl KeptPlan {
    /// Whether a later call may run it: `sql` and `params` are the
    /// statement's and `current` is the same mesh version (so the same
    /// principal and policies).
    fn valid_for(&self, sql: &str, params: Option<&RecordBatch>, current: &Engine) -> bool {
        self.sql == sql && self.params.as_ref() == params && self.engine.same_version(current)
    }
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
    /// Queries announced and not fetched yet, by ticket nonce, newest last,
    /// each with the session that planned it: its `DoGet` runs the plan
    /// there rather than building another session. Prepared statements
    /// keep no session: one lives until it is closed, and a session holds
    /// a copy of DataFusion's session state (function registries and
    /// settings), tens of kilobytes.
    announced: Mutex<VecDeque<(u64, KeptPlan, MeshSession)>>,
    /// Prepared statements' plans, by handle id.
    prepared: Mutex<HashMap<String, KeptPlan>>,
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
            prepared: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps a query `GetFlightInfo` planned for the `DoGet` of the ticket
    /// with `nonce`.
    pub(crate) fn keep_announced(&self, nonce: u64, kept: KeptPlan, session: MeshSession) {
        let mut announced = self.announced.lock();
        announced.retain(|(_, k, _)| k.at.elapsed() < ANNOUNCED_FOR);
        while announced.len() >= MAX_ANNOUNCED {
            announced.pop_front();
        }
        announced.push_back((nonce, kept, session));
    }

    /// The plan kept for the ticket with `nonce`, taken once, within
    /// [`ANNOUNCED_FOR`]; see [`KeptPlan`] for when it is valid.
    pub(crate) fn take_announced(
        &self,
        nonce: u64,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Option<(MeshSession, LogicalPlan)> {
        let mut announced = self.announced.lock();
        let i = announced.iter().position(|(n, _, _)| *n == nonce)?;
        let (_, kept, session) = announced.remove(i)?;
        drop(announced);
        if kept.at.elapsed() >= ANNOUNCED_FOR {
            return None;
        }
        kept.valid_for(sql, params, &self.engine().ok()?)
            .then_some((session, kept.plan))
    }

    /// Keeps the plan of the prepared statement `id` (before parameters
    /// are bound) until it is closed.
    pub(crate) fn keep_prepared(&self, id: &str, kept: KeptPlan) {
        let mut prepared = self.prepared.lock();
        while prepared.len() >= MAX_PREPARED {
            let Some(oldest) = prepared
                .iter()
                .min_by_key(|(_, k)| k.at)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            prepared.remove(&oldest);
        }
        prepared.insert(id.to_string(), kept);
    }

    /// The kept plan of the prepared statement `id`, with a new session to
    /// run it in; see [`KeptPlan`] for when it is valid.
    pub(crate) fn prepared_plan(&self, id: &str, sql: &str) -> Option<(MeshSession, LogicalPlan)> {
        let current = self.engine().ok()?;
        let plan = {
            let prepared = self.prepared.lock();
            let kept = prepared.get(id)?;
            kept.valid_for(sql, None, &current)
                .then(|| kept.plan.clone())?
        };
        Some((current.session_for(&self.data), plan))
    }

    /// Forgets every kept plan: the session ran DDL, DML or `SET`.
    pub(crate) fn forget_plans(&self) {
        self.announced.lock().clear();
        self.prepared.lock().clear();
    }

    /// Forgets the prepared statement `id`.
    pub(crate) fn forget_prepared(&self, id: &str) {
        self.prepared.lock().remove(id);
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
        Ok(self.engine()?.session_for(&self.data))
    }

    /// The mesh version served now, with the principal resolved on it:
    /// after a reload a password login is looked up again, and one whose
    /// principal is gone (or whose password changed) ends here.
    fn engine(&self) -> Result<Engine> {
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
        Ok(current)
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
