//! Authentication between a coordinator and its workers.
//!
//! Every gRPC request a coordinator (or a worker, reading another worker's
//! shuffle output) sends to a worker carries a fresh credential in the
//! [`CLUSTER_AUTH_HEADER`] header:
//!
//! ```text
//! v1.<unix millis>.<16 hex nonce>.<hex HMAC-SHA256(secret, "meshq-cluster/v1\n" millis "\n" nonce)>
//! ```
//!
//! The worker checks it on every request, before the request reaches the
//! plan decoder: a missing, malformed or wrong credential, one older or
//! newer than [`MAX_SKEW`], or one whose nonce was already seen within that
//! window is refused with `UNAUTHENTICATED`, logged and counted. The secret
//! itself never travels.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

/// The header holding the credential.
pub const CLUSTER_AUTH_HEADER: &str = "x-meshq-cluster-auth";

/// How far a credential's time may be from the worker's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Most nonces a worker remembers; past this, a credential is refused
/// rather than its replay left unchecked (fail closed).
pub const MAX_REMEMBERED_NONCES: usize = 1 << 20;

/// The shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

const DOMAIN: &[u8] = b"meshq-cluster/v1\n";

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
    /// The HMAC does not match this worker's secret.
    #[error("the cluster credential was not made with this cluster's secret")]
    WrongSecret,
    /// The nonce was seen before within the window.
    #[error("the cluster credential was already used")]
    Replayed,
    /// Too many credentials in the window to check replays.
    #[error("too many cluster credentials to check for replays")]
    Overloaded,
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

    fn mac(&self, millis: u64, nonce: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(DOMAIN);
        mac.update(millis.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(nonce.as_bytes());
        mac
    }

    /// A fresh credential for one request.
    pub fn credential(&self) -> String {
        self.credential_at(now_millis(), &format!("{:016x}", rand::random::<u64>()))
    }

    fn credential_at(&self, millis: u64, nonce: &str) -> String {
        let tag = hex::encode(self.mac(millis, nonce).finalize().into_bytes());
        format!("v1.{millis}.{nonce}.{tag}")
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Checks credentials on a worker: the key, and the nonces seen within
/// the window.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: ClusterKey,
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
    /// Checks credentials made with `key`.
    pub fn new(key: ClusterKey) -> Self {
        Self {
            key,
            seen: Arc::default(),
            refused: Arc::default(),
            accepted: Arc::default(),
        }
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Checks one request's credential header value.
    pub fn check(&self, header: Option<&str>) -> Result<(), Refusal> {
        let result = self.check_at(header, now_millis());
        match result {
            Ok(()) => self.accepted.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.refused.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn check_at(&self, header: Option<&str>, now: u64) -> Result<(), Refusal> {
        let value = header.ok_or(Refusal::Missing)?;
        let mut parts = value.split('.');
        let (Some("v1"), Some(millis), Some(nonce), Some(tag), None) = (
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
        let tag = hex::decode(tag).map_err(|_| Refusal::Malformed)?;
        self.key
            .mac(millis, nonce)
            .verify_slice(&tag)
            .map_err(|_| Refusal::WrongSecret)?;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s).unwrap()
    }

    #[test]
    fn a_fresh_credential_passes_once() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let c = k.credential();
        assert_eq!(v.check(Some(&c)), Ok(()));
        assert_eq!(v.check(Some(&c)), Err(Refusal::Replayed));
        assert_eq!(v.check(Some(&k.credential())), Ok(()));
        assert_eq!(v.refused(), 1);
    }

    #[test]
    fn wrong_missing_malformed_and_stale_credentials_are_refused() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let other = key("another secret of some length");
        assert_eq!(
            v.check(Some(&other.credential())),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(v.check(None), Err(Refusal::Missing));
        for bad in [
            "",
            "v1",
            "v2.1.0000000000000000.00",
            "v1.x.0000000000000000.00",
        ] {
            assert_eq!(v.check(Some(bad)), Err(Refusal::Malformed), "{bad}");
        }
        let now = now_millis();
        let old = k.credential_at(now - 31_000, "0123456789abcdef");
        assert!(matches!(v.check(Some(&old)), Err(Refusal::Stale(_))));
        let ahead = k.credential_at(now + 31_000, "0123456789abcdee");
        assert!(matches!(v.check(Some(&ahead)), Err(Refusal::Stale(_))));
        // A tampered time or nonce breaks the HMAC.
        let good = k.credential_at(now, "0123456789abcdef");
        let tampered = good.replacen(&now.to_string(), &(now - 1).to_string(), 1);
        assert_eq!(v.check(Some(&tampered)), Err(Refusal::WrongSecret));
        assert_eq!(v.check(Some(&good)), Ok(()));
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let k = key("a cluster secret of some length");
        let v = Verifier::new(k.clone());
        let t0 = now_millis();
        let c = k.credential_at(t0, "00000000000000aa");
        assert_eq!(v.check_at(Some(&c), t0), Ok(()));
        assert_eq!(v.check_at(Some(&c), t0 + 1), Err(Refusal::Replayed));
        let later = t0 + 2 * MAX_SKEW.as_millis() as u64 + 1;
        let d = k.credential_at(later, "00000000000000bb");
        assert_eq!(v.check_at(Some(&d), later), Ok(()));
        assert!(!v.seen.lock().by_nonce.contains_key(&0xaa));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(ClusterKey::new("short").is_err());
    }
}
