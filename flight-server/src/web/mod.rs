//! The web catalog: server-rendered pages beside Flight SQL (`meshq serve
//! --http ADDR`). Every page is computed from the `meta` schema queried in
//! the visitor's own session, so it shows what `meta` shows them, under
//! the same policies; `/sql` runs statements through the same path as
//! Flight SQL (admission, limits, audit). Logins are the Flight SQL
//! sessions (same principals, argon2 hashes, throttling, session limits),
//! carried by an `HttpOnly`, `SameSite=Strict` cookie; `Authorization:
//! Bearer` (a session token or a JWT) works too. Forms carry a CSRF token
//! derived from the session. No script runs in the pages; the stylesheet
//! is served from the binary.

mod html;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use meshq_engine::LiveEngine;
use parking_lot::Mutex;
use sha2::Sha256;

use crate::audit::{self, AuditRecord};
use crate::auth::Authenticator;
use crate::cancel::CancelRegistry;
use crate::operations::Operations;
use crate::query::Lifecycle;
use crate::sessions::ClientSession;

/// The name of the session cookie.
const COOKIE: &str = "meshq_session";

/// Web logins remembered before expired ones are forgotten (the session
/// store bounds the live ones).
const MAX_LOGINS: usize = 10_000;

/// What the pages share.
pub struct WebState {
    auth: Arc<Authenticator>,
    queries: Lifecycle,
    ops: Arc<Operations>,
    live: Arc<LiveEngine>,
    /// Signs CSRF tokens (one per session).
    csrf_key: [u8; 32],
    /// When each web login was made (they last `auth.web_session_ttl`).
    logins: Mutex<HashMap<String, Instant>>,
    /// The cookie is marked `Secure` (the catalog is served over TLS).
    secure: bool,
}

impl WebState {
    /// Over the Flight SQL service's authenticator: one set of sessions.
    pub fn new(
        auth: Arc<Authenticator>,
        live: Arc<LiveEngine>,
        ops: Arc<Operations>,
        secure: bool,
    ) -> Self {
        Self {
            auth,
            queries: Lifecycle::new(Arc::clone(&ops), Arc::new(CancelRegistry::default())),
            ops,
            live,
            csrf_key: rand::random(),
            logins: Mutex::new(HashMap::new()),
            secure,
        }
    }

    /// Records a web login made now (forgetting those past their lifetime
    /// when there are many).
    fn logged_in(&self, token: &str) {
        let ttl = self.ttl();
        let mut logins = self.logins.lock();
        if logins.len() >= MAX_LOGINS {
            logins.retain(|_, at| at.elapsed() < ttl);
        }
        logins.insert(token.to_string(), Instant::now());
    }

    /// Whether `token` is a web login past its lifetime; such a login is
    /// ended.
    fn expired(&self, token: &str) -> bool {
        let started = self.logins.lock().get(token).copied();
        match started {
            Some(at) if at.elapsed() >= self.ttl() => {
                self.logins.lock().remove(token);
                self.auth.end(token);
                true
            }
            _ => false,
        }
    }

    fn ttl(&self) -> Duration {
        self.live
            .current()
            .and_then(|e| e.mesh().config.auth.web_session_ttl.as_ref().map(|d| d.0))
            .unwrap_or(Duration::from_secs(8 * 3600))
    }

    /// The CSRF token of the session `token`.
    fn csrf(&self, token: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.csrf_key).expect("any key length");
        mac.update(token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn page_view(&self, visitor: &Visitor, path: &str) {
        self.ops.audit(&AuditRecord {
            ts: audit::now(),
            event: "web_page",
            principal: visitor.client.principal().name.clone(),
            client: visitor.peer.map(|p| p.to_string()),
            sql_shape: Some(path.to_string()),
            outcome: "ok",
            ..Default::default()
        });
    }
}

/// The logged-in visitor of a request.
pub(crate) struct Visitor {
    client: Arc<ClientSession>,
    /// The session token (cookie or bearer), for the CSRF token.
    token: String,
    peer: Option<SocketAddr>,
    /// Authenticated by the cookie a browser sends by itself (forms need
    /// the CSRF token); a bearer header is sent only on purpose.
    by_cookie: bool,
}

impl Visitor {
    /// Whether a form's `csrf` field may act for this visitor.
    pub(crate) fn csrf_ok(&self, state: &WebState, csrf: &str) -> bool {
        !self.by_cookie || csrf == state.csrf(&self.token)
    }
}

/// A request without a valid session: to the login page (an API call gets
/// 401).
pub(crate) struct NotLoggedIn {
    api: bool,
    next: String,
}

impl IntoResponse for NotLoggedIn {
    fn into_response(self) -> Response {
        if self.api {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "log in at /login, or send Authorization: Bearer <token or JWT>\n",
            )
                .into_response();
        }
        let next = form_urlencoded(&self.next);
        Redirect::to(&format!("/login?next={next}")).into_response()
    }
}

fn form_urlencoded(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.to_string())
        })
}

impl FromRequestParts<Arc<WebState>> for Visitor {
    type Rejection = NotLoggedIn;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let rejection = || NotLoggedIn {
            api: parts.uri.path().starts_with("/api/"),
            next: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        if let Some(token) = bearer {
            // A web login's token keeps its lifetime when sent as a bearer.
            if state.expired(&token) {
                return Err(rejection());
            }
            return match state.auth.session_for(&token, peer) {
                Ok(client) => Ok(Self {
                    client,
                    token,
                    peer,
                    by_cookie: false,
                }),
                Err(_) => Err(rejection()),
            };
        }
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(rejection());
        };
        // A web login ends after its lifetime, whatever its use.
        if !state.logins.lock().contains_key(&token) || state.expired(&token) {
            return Err(rejection());
        }
        match state.auth.session_for(&token, peer) {
            Ok(client) => Ok(Self {
                client,
                token,
                peer,
                by_cookie: true,
            }),
            Err(_) => {
                state.logins.lock().remove(&token);
                Err(rejection())
            }
        }
    }
}

/// Security headers on every response: no framing, no inline script or
/// style, nothing from elsewhere, no caching of pages that hold a
/// principal's view.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    res
}

/// The catalog's routes.
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .route("/", get(pages::products))
        .route("/products", get(pages::products))
        .route("/products/{id}", get(pages::product))
        .route("/tables/{table}", get(pages::table))
        .route("/me", get(pages::me))
        .route("/lineage", get(pages::lineage))
        .route("/sql", get(pages::sql_form).post(pages::sql_run))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/static/style.css", get(pages::stylesheet))
        .route("/api/products", get(pages::api_products))
        .route("/api/products/{id}", get(pages::api_product))
        .route("/api/tables/{table}", get(pages::api_table))
        .route("/api/lineage", get(pages::api_lineage))
        .route("/api/me", get(pages::api_me))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Serves the catalog on `listener` until `shutdown` resolves; over TLS
/// with `tls` (the server's certificate and key).
pub async fn serve_web(
    listener: tokio::net::TcpListener,
    state: Arc<WebState>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // Without Nagle's algorithm, as the Flight SQL server and the workers:
    // the last small frame of a streamed answer goes out at once instead
    // of waiting for the client's delayed acknowledgement.
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config).tap_io(|io| {
                let _ = io.get_ref().0.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            let listener = listener.tap_io(|io| {
                let _ = io.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The rustls configuration of the catalog from PEM files (HTTP/1.1).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

mod tls {
    //! Connections accepted over TLS: handshakes run beside the accept
    //! loop (a slow or silent client holds up no other), bounded in time.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;

    /// How long a client has to finish its handshake.
    const HANDSHAKE: Duration = Duration::from_secs(10);

    pub(super) struct TlsListener {
        ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        local: std::io::Result<SocketAddr>,
        _accepting: datafusion::common::runtime::SpawnedTask<()>,
    }

    impl TlsListener {
        pub(super) fn new(
            listener: TcpListener,
            config: Arc<tokio_rustls::rustls::ServerConfig>,
        ) -> Self {
            let local = listener.local_addr();
            let (tx, ready) = tokio::sync::mpsc::channel(64);
            let acceptor = TlsAcceptor::from(config);
            let accepting = datafusion::common::runtime::SpawnedTask::spawn(async move {
                loop {
                    let (tcp, peer) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "web catalog: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((tls, peer)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "web catalog: TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "web catalog: TLS handshake timed out")
                            }
                        }
                    });
                }
            });
            Self {
                ready,
                local,
                _accepting: accepting,
            }
        }
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match self.ready.recv().await {
                Some(c) => c,
                // The accept loop ended: nothing more will come.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            match &self.local {
                Ok(a) => Ok(*a),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            }
        }
    }
}
