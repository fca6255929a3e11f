//! Authentication between a coordinator and its workers.
//!
//! Every gRPC request a coordinator (or a worker, reading another worker's
//! shuffle output) sends to a worker carries a credential made for that
//! one request in the [`CLUSTER_AUTH_HEADER`] header:
//!
//! ```text
//! v2.<unix millis>.<16 hex nonce>.<first message length>.<hex SHA-256 of the first message>.<hex tag>
//! tag = HMAC-SHA256(secret, "meshq-cluster/v2\n" millis "\n" nonce "\n" length "\n" digest "\n"
//!                   RPC path "\n" authority "\n" every `x-` header but this one, sorted, "name:value\n")
//! ```
//!
//! The first message of a request is the plan fragment
//! (`CoordinatorChannel`'s `SetPlanRequest`) or the task it asks for
//! (`ExecuteTask`), as its gRPC frame. The credential is thus bound to the
//! worker it is sent to (the request's authority), the RPC, the
//! settings travelling in the headers (the statement's masks among them)
//! and the plan: a changed fragment, header or target is refused.
//!
//! The worker checks the tag, the time and the nonce before it reads the
//! body (a peer without the secret gets no byte of its request read), then
//! reads the first message and compares its length and digest. A missing,
//! malformed or wrong credential, one older or newer than [`MAX_SKEW`], one
//! whose nonce was already seen within that window, one made for another
//! authority or RPC than the request's, or a message altered after signing
//! is refused with `UNAUTHENTICATED`, logged and counted. The secret never
//! travels. A request sent unchanged to another worker with the authority
//! it was made for is refused only by a worker that knows its own names
//! ([`Verifier::answering_to`]: `meshq worker --advertise`, or the one
//! address it is bound to). Only the first message is signed: later ones
//! and the answers need TLS for integrity on a network one does not
//! control.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

/// The header holding the credential.
pub const CLUSTER_AUTH_HEADER: &str = "x-meshq-cluster-auth";

/// How far a credential's time may be from the worker's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Most nonces a worker remembers; past this, a credential is refused
/// rather than its replay left unchecked (fail closed).
pub const MAX_REMEMBERED_NONCES: usize = 1 << 20;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

const DOMAIN: &[u8] = b"meshq-cluster/v2\n";

/// The cluster's shared secret.
#[derive(Clone)]
pub struct ClusterKey {
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a credential was refused (logged; the caller sees only that it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credential header.
    #[error("the request carries no cluster credential")]
    Missing,
    /// Not of the form above.
    #[error("the cluster credential is malformed")]
    Malformed,
    /// Outside [`MAX_SKEW`] of the worker's clock.
    #[error("the cluster credential is {0} ms away from this worker's clock")]
    Stale(u64),
    /// The tag does not match this worker's secret and this request's
    /// target, RPC and headers.
    #[error(
        "the cluster credential was not made with this cluster's secret for this worker, RPC and headers"
    )]
    WrongSecret,
    /// The request names a worker this one does not answer to.
    #[error("the request is addressed to `{0}`, which is not this worker")]
    OtherWorker(String),
    /// The first message is not the one the credential was made for.
    #[error("the request's plan or task was altered after it was signed")]
    Altered,
    /// The first message is larger than a worker reads.
    #[error("the request's first message ({0} bytes) is larger than a worker reads")]
    TooLarge(u64),
    /// The first message did not arrive in time.
    #[error("the request's first message did not arrive within {0:?}")]
    Slow(Duration),
    /// The nonce was seen before within the window.
    #[error("the cluster credential was already used")]
    Replayed,
    /// Too many credentials in the window to check replays.
    #[error("too many cluster credentials to check for replays")]
    Overloaded,
}

/// What a credential is made for: one request to one worker.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The RPC's path, e.g. `/worker.WorkerService/ExecuteTask`.
    pub path: &'a str,
    /// The worker as the request addresses it (`host:port`).
    pub authority: &'a str,
    /// The request's headers; those named `x-…` are signed.
    pub headers: &'a http::HeaderMap,
}

/// What a valid credential says about the request's first message; the
/// worker compares it with the message once read ([`Verifier::confirm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The first message's length in bytes, gRPC frame header included.
    pub len: u64,
    digest: [u8; 32],
}

impl Claim {
    /// The first message's SHA-256, in hex: names the plan fragment in the
    /// worker's log.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// The SHA-256 of a request's first message.
pub fn digest(first_message: &[u8]) -> [u8; 32] {
    Sha256::digest(first_message).into()
}

impl ClusterKey {
    /// The key of `secret`; refused when shorter than [`MIN_SECRET_BYTES`].
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret must be at least {MIN_SECRET_BYTES} bytes long"
            ));
        }
        Ok(Self {
            key: Arc::new(secret.as_bytes().to_vec()),
        })
    }

    fn mac(&self, millis: u64, nonce: &str, claim: &Claim, target: &Target<'_>) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(DOMAIN);
        for part in [
            millis.to_string().as_bytes(),
            nonce.as_bytes(),
            claim.len.to_string().as_bytes(),
            hex::encode(claim.digest).as_bytes(),
            target.path.as_bytes(),
            target.authority.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        let mut signed: Vec<(&str, &[u8])> = target
            .headers
            .iter()
            .filter(|(name, _)| {
                name.as_str().starts_with("x-") && name.as_str() != CLUSTER_AUTH_HEADER
            })
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        // Stable: values of one name keep their order.
        signed.sort_by(|a, b| a.0.cmp(b.0));
        for (name, value) in signed {
            mac.update(name.as_bytes());
            mac.update(b":");
            mac.update(value);
            mac.update(b"\n");
        }
        mac
    }

    /// A fresh credential for one request to `target` whose first message
    /// is `first_message`.
    pub fn credential(&self, target: &Target<'_>, first_message: &[u8]) -> String {
        self.credential_at(
            now_millis(),
            &format!("{:016x}", rand::random::<u64>()),
            target,
            first_message,
        )
    }

    fn credential_at(
        &self,
        millis: u64,
        nonce: &str,
        target: &Target<'_>,
        first_message: &[u8],
    ) -> String {
        let claim = Claim {
            len: first_message.len() as u64,
            digest: digest(first_message),
        };
        let tag = hex::encode(
            self.mac(millis, nonce, &claim, target)
                .finalize()
                .into_bytes(),
        );
        format!(
            "v2.{millis}.{nonce}.{}.{}.{tag}",
            claim.len,
            hex::encode(claim.digest)
        )
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Checks credentials on a worker: the key, the nonces seen within the
/// window, and (when known) the names the worker answers to.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: ClusterKey,
    names: Arc<Vec<String>>,
    seen: Arc<Mutex<Nonces>>,
    refused: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Nonces {
    by_nonce: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
}

impl Verifier {
    /// Checks credentials made with `key`, for any authority.
    pub fn new(key: ClusterKey) -> Self {
        Self {
            key,
            names: Arc::default(),
            seen: Arc::default(),
            refused: Arc::default(),
            accepted: Arc::default(),
        }
    }

    /// Accepts only requests addressed to one of `names` (`host:port`,
    /// as the coordinator's URLs name this worker); empty accepts any.
    pub fn answering_to(mut self, names: Vec<String>) -> Self {
        self.names = Arc::new(names);
        self
    }

    /// The names this worker answers to (empty: any).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Checks one request's credential header value against its target,
    /// before its body is read; on success, what its first message must
    /// be. A refusal is counted.
    pub fn check(&self, header: Option<&str>, target: &Target<'_>) -> Result<Claim, Refusal> {
        self.check_at(header, target, now_millis())
            .inspect_err(|_| self.count(false))
    }

    /// Compares the first message with the claim; counts the request as
    /// accepted or refused.
    pub fn confirm(&self, claim: &Claim, first_message: &[u8]) -> Result<(), Refusal> {
        let ok = claim.len == first_message.len() as u64 && claim.digest == digest(first_message);
        self.count(ok);
        if ok { Ok(()) } else { Err(Refusal::Altered) }
    }

    /// Counts a request refused after its credential was checked (its
    /// first message never came).
    pub fn count_refused(&self) {
        self.count(false);
    }

    fn count(&self, accepted: bool) {
        let counter = if accepted {
            &self.accepted
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn check_at(
        &self,
        header: Option<&str>,
        target: &Target<'_>,
        now: u64,
    ) -> Result<Claim, Refusal> {
        let value = header.ok_or(Refusal::Missing)?;
        let mut parts = value.split('.');
        let (Some("v2"), Some(millis), Some(nonce), Some(len), Some(digest), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Malformed);
        };
        let millis: u64 = millis.parse().map_err(|_| Refusal::Malformed)?;
        if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Malformed);
        }
        let nonce_bits = u64::from_str_radix(nonce, 16).map_err(|_| Refusal::Malformed)?;
        let claim = Claim {
            len: len.parse().map_err(|_| Refusal::Malformed)?,
            digest: hex::decode(digest)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or(Refusal::Malformed)?,
        };
        let tag = hex::decode(tag).map_err(|_| Refusal::Malformed)?;
        self.key
            .mac(millis, nonce, &claim, target)
            .verify_slice(&tag)
            .map_err(|_| Refusal::WrongSecret)?;
        if !self.names.is_empty() && !self.names.iter().any(|n| n == target.authority) {
            return Err(Refusal::OtherWorker(target.authority.to_string()));
        }
        let skew = now.abs_diff(millis);
        if skew > MAX_SKEW.as_millis() as u64 {
            return Err(Refusal::Stale(skew));
        }
        let mut seen = self.seen.lock();
        // Nonces older than twice the window can no longer come back as
        // valid credentials.
        let horizon = now.saturating_sub(2 * MAX_SKEW.as_millis() as u64);
        while seen.order.front().is_some_and(|(t, _)| *t < horizon) {
            if let Some((_, n)) = seen.order.pop_front() {
                seen.by_nonce.remove(&n);
            }
        }
        if seen.by_nonce.contains_key(&nonce_bits) {
            return Err(Refusal::Replayed);
        }
        if seen.by_nonce.len() >= MAX_REMEMBERED_NONCES {
            return Err(Refusal::Overloaded);
        }
        seen.by_nonce.insert(nonce_bits, millis);
        seen.order.push_back((now, nonce_bits));
        Ok(claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s).unwrap()
    }

    const PLAN: &[u8] = b"\0\0\0\0\x04plan";

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn target<'a>(headers: &'a http::HeaderMap) -> Target<'a> {
        Target {
            path: "/worker.WorkerService/CoordinatorChannel",
            authority: "10.0.0.1:9000",
            headers,
        }
    }

    #[test]
    fn a_fresh_credential_passes_once() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let h = headers(&[]);
        let t = target(&h);
        let c = k.credential(&t, PLAN);
        let claim = v.check(Some(&c), &t).unwrap();
        assert_eq!(v.confirm(&claim, PLAN), Ok(()));
        assert_eq!(v.check(Some(&c), &t), Err(Refusal::Replayed));
        let claim = v.check(Some(&k.credential(&t, PLAN)), &t).unwrap();
        assert_eq!(v.confirm(&claim, PLAN), Ok(()));
        assert_eq!((v.accepted(), v.refused()), (2, 1));
    }

    #[test]
    fn wrong_missing_malformed_and_stale_credentials_are_refused() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let h = headers(&[]);
        let t = target(&h);
        let other = key("another secret of some length");
        assert_eq!(
            v.check(Some(&other.credential(&t, PLAN)), &t),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(v.check(None, &t), Err(Refusal::Missing));
        for bad in [
            "",
            "v2",
            "v1.1.0000000000000000.00",
            "v2.x.0000000000000000.1.00.00",
            "v2.1.0000000000000000.1.0011.00",
        ] {
            assert_eq!(v.check(Some(bad), &t), Err(Refusal::Malformed), "{bad}");
        }
        let now = now_millis();
        let old = k.credential_at(now - 31_000, "0123456789abcdef", &t, PLAN);
        assert!(matches!(v.check(Some(&old), &t), Err(Refusal::Stale(_))));
        let ahead = k.credential_at(now + 31_000, "0123456789abcdee", &t, PLAN);
        assert!(matches!(v.check(Some(&ahead), &t), Err(Refusal::Stale(_))));
        // A tampered time or nonce breaks the tag.
        let good = k.credential_at(now, "0123456789abcdef", &t, PLAN);
        let tampered = good.replacen(&now.to_string(), &(now - 1).to_string(), 1);
        assert_eq!(v.check(Some(&tampered), &t), Err(Refusal::WrongSecret));
        assert!(v.check(Some(&good), &t).is_ok());
    }

    #[test]
    fn a_credential_holds_only_for_its_worker_rpc_headers_and_plan() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let h = headers(&[
            ("x-datafusion-distributed-config-meshq_cluster.masks", "[]"),
            ("x-b", "1"),
            ("x-b", "2"),
            ("content-type", "application/grpc"),
        ]);
        let t = target(&h);
        let refused = |c: &str, t: &Target<'_>| v.check(Some(c), t);

        // Another worker, another RPC.
        let c = k.credential(&t, PLAN);
        let elsewhere = Target {
            authority: "10.0.0.2:9000",
            ..t
        };
        assert_eq!(refused(&c, &elsewhere), Err(Refusal::WrongSecret));
        let c = k.credential(&t, PLAN);
        let other_rpc = Target {
            path: "/worker.WorkerService/ExecuteTask",
            ..t
        };
        assert_eq!(refused(&c, &other_rpc), Err(Refusal::WrongSecret));

        // A travelling setting changed, added, removed or reordered.
        for changed in [
            headers(&[
                (
                    "x-datafusion-distributed-config-meshq_cluster.masks",
                    "[{}]",
                ),
                ("x-b", "1"),
                ("x-b", "2"),
            ]),
            headers(&[
                ("x-datafusion-distributed-config-meshq_cluster.masks", "[]"),
                ("x-b", "1"),
                ("x-b", "2"),
                (
                    "x-datafusion-distributed-config-meshq_cluster.settings",
                    "{}",
                ),
            ]),
            headers(&[("x-b", "1"), ("x-b", "2")]),
            headers(&[
                ("x-datafusion-distributed-config-meshq_cluster.masks", "[]"),
                ("x-b", "2"),
                ("x-b", "1"),
            ]),
        ] {
            let c = k.credential(&t, PLAN);
            assert_eq!(
                refused(
                    &c,
                    &Target {
                        headers: &changed,
                        ..t
                    }
                ),
                Err(Refusal::WrongSecret)
            );
        }
        // Headers other than `x-…` are not signed (the transport sets them).
        let transport = headers(&[
            ("x-datafusion-distributed-config-meshq_cluster.masks", "[]"),
            ("x-b", "1"),
            ("x-b", "2"),
            ("user-agent", "tonic"),
        ]);
        let c = k.credential(&t, PLAN);
        assert!(
            v.check(
                Some(&c),
                &Target {
                    headers: &transport,
                    ..t
                }
            )
            .is_ok()
        );

        // The plan changed after signing, or cut short.
        let c = k.credential(&t, PLAN);
        let claim = v.check(Some(&c), &t).unwrap();
        assert_eq!(
            v.confirm(&claim, b"\0\0\0\0\x04PLAN"),
            Err(Refusal::Altered)
        );
        let c = k.credential(&t, PLAN);
        let claim = v.check(Some(&c), &t).unwrap();
        assert_eq!(v.confirm(&claim, &PLAN[..5]), Err(Refusal::Altered));
    }

    #[test]
    fn a_worker_with_names_refuses_requests_addressed_elsewhere() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone()).answering_to(vec!["10.0.0.2:9000".into()]);
        let h = headers(&[]);
        let t = target(&h);
        // Valid for 10.0.0.1, sent (with that authority) to 10.0.0.2.
        assert_eq!(
            v.check(Some(&k.credential(&t, PLAN)), &t),
            Err(Refusal::OtherWorker("10.0.0.1:9000".into()))
        );
        let mine = Target {
            authority: "10.0.0.2:9000",
            ..t
        };
        assert!(v.check(Some(&k.credential(&mine, PLAN)), &mine).is_ok());
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let h = headers(&[]);
        let t = target(&h);
        let t0 = now_millis();
        let c = k.credential_at(t0, "00000000000000aa", &t, PLAN);
        assert!(v.check_at(Some(&c), &t, t0).is_ok());
        assert_eq!(v.check_at(Some(&c), &t, t0 + 1), Err(Refusal::Replayed));
        let later = t0 + 2 * MAX_SKEW.as_millis() as u64 + 1;
        let d = k.credential_at(later, "00000000000000bb", &t, PLAN);
        assert!(v.check_at(Some(&d), &t, later).is_ok());
        assert!(!v.seen.lock().by_nonce.contains_key(&0xaa));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(ClusterKey::new("short").is_err());
    }
}
