//! Password checks on a fixed pool of threads with reused memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use meshq_catalog::Principal;
use meshq_catalog::platform::PlatformConfig;
use parking_lot::Mutex;
use tracing::warn;

use crate::error::{Error, Result};

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
pub(crate) struct PasswordChecker {
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
    pub(crate) fn new() -> Self {
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
                        let job = match queue.lock().recv() {
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
    pub(crate) async fn check(
        &self,
        config: &PlatformConfig,
        user: &str,
        password: &str,
    ) -> Result<Option<(Principal, String)>> {
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
            std::sync::mpsc::TrySendError::Full(_) => Error::LoginsBusy,
            std::sync::mpsc::TrySendError::Disconnected(_) => Error::ShuttingDown,
        })?;
        let ok = answer.await.unwrap_or(false);
        Ok(match entry {
            Some(p) if ok && known => Some((Principal::from_config(p), phc)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
