//! Signing and checking requests between nodes at the HTTP layer, where
//! the request's first gRPC message can be read: [`Signing`] wraps a
//! connection and signs each request ([`crate::auth`]); [`Checked`] wraps
//! a worker's service and refuses a request whose credential does not
//! hold before the service (and its plan decoder) sees it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;
use tracing::{debug, info, warn};

use crate::auth::{CLUSTER_AUTH_HEADER, ClusterKey, Refusal, Target, Verifier};
use crate::metrics::{TaskGuard, WorkerMetrics, rpc_name};

/// How long a worker waits for a signed request's first message.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest first message a worker reads (a plan fragment); a
/// credential claiming more is refused before anything is read.
pub const MAX_FIRST_MESSAGE: u64 = 256 << 20;

/// The bytes read from the start of a body, and what is left of it.
struct Prefix {
    data: Bytes,
    /// A trailers frame or an error met while reading; the body ends
    /// after it.
    last: Option<Result<Frame<Bytes>, Status>>,
    /// The rest of the body; `None` when it ended.
    rest: Option<Body>,
}

/// Reads `body` until `enough` says the bytes read suffice, or it ends.
async fn read_prefix(mut body: Body, enough: impl Fn(&[u8]) -> bool) -> Prefix {
    let mut data = BytesMut::new();
    loop {
        if enough(&data) {
            return Prefix {
                data: data.freeze(),
                last: None,
                rest: Some(body),
            };
        }
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(trailers) => {
                    return Prefix {
                        data: data.freeze(),
                        last: Some(Ok(trailers)),
                        rest: None,
                    };
                }
            },
            Some(Err(e)) => {
                return Prefix {
                    data: data.freeze(),
                    last: Some(Err(e)),
                    rest: None,
                };
            }
            None => {
                return Prefix {
                    data: data.freeze(),
                    last: None,
                    rest: None,
                };
            }
        }
    }
}

/// The length of the first gRPC message (its 5-byte frame header
/// included) at the start of `data`, once that header is there.
fn first_message_len(data: &[u8]) -> Option<usize> {
    let header: [u8; 4] = data.get(1..5)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(header))
        .ok()?
        .checked_add(5)
}

/// A body replaying the bytes read before the rest.
struct Replay {
    head: Option<Bytes>,
    last: Option<Result<Frame<Bytes>, Status>>,
    rest: Option<Body>,
}

impl From<Prefix> for Replay {
    fn from(p: Prefix) -> Self {
        Self {
            head: (!p.data.is_empty()).then_some(p.data),
            last: p.last,
            rest: p.rest,
        }
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(last) = this.last.take() {
            return Poll::Ready(Some(last));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none()
            && self.last.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }
}

/// A connection to one worker that signs every request for that worker
/// (`authority`), its RPC, its `x-` headers and its first message.
#[derive(Clone)]
pub struct Signing<S> {
    inner: S,
    key: ClusterKey,
    authority: Arc<str>,
}

impl<S> Signing<S> {
    /// Signs requests sent through `inner` to the worker `authority`
    /// (`host:port` as the request's URI names it).
    pub fn new(inner: S, key: ClusterKey, authority: &str) -> Self {
        Self {
            inner,
            key,
            authority: authority.into(),
        }
    }
}

impl<S> Service<http::Request<Body>> for Signing<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready goes with this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let key = self.key.clone();
        let authority = Arc::clone(&self.authority);
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let prefix =
                read_prefix(body, |d| first_message_len(d).is_some_and(|n| d.len() >= n)).await;
            let first = &prefix.data[..first_message_len(&prefix.data)
                .unwrap_or(prefix.data.len())
                .min(prefix.data.len())];
            // `EXPLAIN ANALYZE` names the worker of each task it sends.
            crate::placement::record(&parts.headers, first);
            let credential = key.credential(
                &Target {
                    path: parts.uri.path(),
                    authority: &authority,
                    headers: &parts.headers,
                },
                first,
            );
            if let Ok(value) = http::HeaderValue::from_str(&credential) {
                parts.headers.insert(CLUSTER_AUTH_HEADER, value);
            }
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Replay::from(prefix)),
                ))
                .await
        })
    }
}

/// At most this many refusals are logged per second; the rest are counted
/// (the metrics count every one), so a flood of bad requests cannot flood
/// the log.
pub const REFUSALS_LOGGED_PER_SECOND: u64 = 10;

static REFUSAL_LOG: LogBudget = LogBudget::new(REFUSALS_LOGGED_PER_SECOND);

enum LogTurn {
    /// Log this one; `unlogged` were left out since the last one logged.
    Log {
        unlogged: u64,
    },
    Quiet,
}

/// A budget of log lines per second.
struct LogBudget {
    per_second: u64,
    /// The second of the current window, and lines logged and left out
    /// in it.
    state: parking_lot::Mutex<(u64, u64, u64)>,
}

impl LogBudget {
    const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            state: parking_lot::const_mutex((0, 0, 0)),
        }
    }

    fn admit(&self) -> LogTurn {
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admit_at(second)
    }

    fn admit_at(&self, second: u64) -> LogTurn {
        let mut state = self.state.lock();
        let (window, logged, quiet) = &mut *state;
        let mut unlogged = 0;
        if *window != second {
            unlogged = *quiet;
            *window = second;
            *logged = 0;
            *quiet = 0;
        }
        if *logged < self.per_second {
            *logged += 1;
            LogTurn::Log { unlogged }
        } else {
            *quiet += 1;
            LogTurn::Quiet
        }
    }
}

/// A worker's service behind the credential check.
#[derive(Clone)]
pub struct Checked<S> {
    inner: S,
    verifier: Verifier,
    metrics: Arc<WorkerMetrics>,
}

impl<S> Checked<S> {
    /// `inner`, serving only requests `verifier` accepts; each request is
    /// counted in `metrics`.
    pub fn new(inner: S, verifier: Verifier, metrics: Arc<WorkerMetrics>) -> Self {
        Self {
            inner,
            verifier,
            metrics,
        }
    }
}

/// A response body that counts the bytes it sends, and holds its task's
/// place in the metrics while it is open.
struct Counted {
    inner: Body,
    metrics: Arc<WorkerMetrics>,
    _task: Option<TaskGuard>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.metrics.sent(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<S: NamedService> NamedService for Checked<S> {
    const NAME: &'static str = S::NAME;
}

fn refuse(
    why: &Refusal,
    peer: Option<SocketAddr>,
    path: &str,
    metrics: &WorkerMetrics,
) -> http::Response<Body> {
    metrics.refused(path, why);
    let peer = peer
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    match REFUSAL_LOG.admit() {
        LogTurn::Log { unlogged } if unlogged > 0 => {
            warn!(peer, rpc = rpc_name(path), reason = %why, unlogged, "refused a request without a valid cluster credential (and {unlogged} more in the last second, counted in meshq_worker_refusals_total)");
        }
        LogTurn::Log { .. } => {
            warn!(peer, rpc = rpc_name(path), reason = %why, "refused a request without a valid cluster credential");
        }
        LogTurn::Quiet => {}
    }
    Status::unauthenticated(format!(
        "this meshq worker serves only its cluster's coordinator and workers: {why}"
    ))
    .into_http()
}

impl<S> Service<http::Request<Body>> for Checked<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_string();
            let peer = parts
                .extensions
                .get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|i| i.remote_addr());
            let header = parts
                .headers
                .get(CLUSTER_AUTH_HEADER)
                .and_then(|v| v.to_str().ok());
            let target = Target {
                path: parts.uri.path(),
                authority: parts.uri.authority().map(|a| a.as_str()).unwrap_or(""),
                headers: &parts.headers,
            };
            // Before a byte of the body is read.
            let claim = match verifier.check(header, &target) {
                Ok(claim) if claim.len > MAX_FIRST_MESSAGE => {
                    verifier.count_refused();
                    return Ok(refuse(&Refusal::TooLarge(claim.len), peer, &path, &metrics));
                }
                Ok(claim) => claim,
                Err(why) => return Ok(refuse(&why, peer, &path, &metrics)),
            };
            let want = usize::try_from(claim.len).unwrap_or(usize::MAX);
            let prefix = match tokio::time::timeout(
                FIRST_MESSAGE_TIMEOUT,
                read_prefix(body, |d| d.len() >= want),
            )
            .await
            {
                Ok(prefix) => prefix,
                Err(_) => {
                    verifier.count_refused();
                    return Ok(refuse(
                        &Refusal::Slow(FIRST_MESSAGE_TIMEOUT),
                        peer,
                        &path,
                        &metrics,
                    ));
                }
            };
            if prefix.data.len() < want {
                // The sender went away (a query cancelled, a limit reached)
                // before its first message arrived: nothing to serve, and
                // nothing refused.
                debug!(
                    target: "meshq_cluster::audit",
                    peer = ?peer,
                    rpc = rpc_name(&path),
                    "a request ended before its first message arrived"
                );
                return Ok(
                    Status::cancelled("the request ended before its first message arrived")
                        .into_http(),
                );
            }
            let first = &prefix.data[..want];
            if let Err(why) = verifier.confirm(&claim, first) {
                return Ok(refuse(&why, peer, &path, &metrics));
            }
            metrics.accepted(&path);
            let rpc = rpc_name(&path);
            let peer_text = peer.map(|a| a.to_string()).unwrap_or_default();
            let task = if rpc == "CoordinatorChannel" {
                // The worker's audit: who sent which fragment.
                info!(
                    target: "meshq_cluster::audit",
                    peer = %peer_text,
                    rpc,
                    fragment_bytes = claim.len,
                    fragment_sha256 = %claim.digest_hex(),
                    "a plan fragment was accepted"
                );
                Some(metrics.task())
            } else {
                debug!(target: "meshq_cluster::audit", peer = %peer_text, rpc, "a request was accepted");
                None
            };
            let response = inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Replay::from(prefix)),
                ))
                .await?;
            Ok(response.map(|inner| {
                Body::new(Counted {
                    inner,
                    metrics,
                    _task: task,
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_budget_are_counted_not_logged() {
        let budget = LogBudget::new(2);
        let turns: Vec<bool> = (0..5)
            .map(|_| matches!(budget.admit_at(100), LogTurn::Log { .. }))
            .collect();
        assert_eq!(turns, [true, true, false, false, false]);
        // The next second logs again, saying how many were left out.
        assert!(matches!(budget.admit_at(101), LogTurn::Log { unlogged: 3 }));
        assert!(matches!(budget.admit_at(101), LogTurn::Log { unlogged: 0 }));
    }

    #[test]
    fn the_first_message_length_is_read_from_its_frame_header() {
        assert_eq!(first_message_len(&[0, 0, 0, 0, 3, 1, 2]), Some(8));
        assert_eq!(first_message_len(&[0, 0, 0]), None);
        assert_eq!(
            first_message_len(&[0, 255, 255, 255, 255]),
            Some(5 + u32::MAX as usize)
        );
    }
}
