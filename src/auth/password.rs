//! Password hashing with argon2id at OWASP's parameters (19 MiB, 2 iterations, 1 lane).
//!
//! Hashing is CPU- and memory-heavy, so it runs on a few threads of its own, as many as may
//! hash at once: a burst of logins then queues instead of starving clock-ins of CPU.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Verifying against this when the account does not exist costs the same time as a real check,
/// so response timing does not reveal which emails have accounts.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_blocking("a password nobody has, used only for timing"));

pub fn hash_blocking(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing with valid parameters does not fail")
        .to_string()
}

pub fn verify_blocking(password: &str, hash: Option<&str>) -> bool {
    let hash = hash.unwrap_or(DUMMY_HASH.as_str());
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = argon2()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && !std::ptr::eq(hash, DUMMY_HASH.as_str())
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs argon2 off the async runtime, on `threads` threads of its own. Not on tokio's blocking
/// pool: each hash takes 19 MiB, and glibc keeps a freed block in the arena of the thread that
/// used it, so hashes spread over the blocking pool's many threads would leave one block
/// resident per arena (about 300 MiB after a burst of logins); here it is one per thread.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
}

impl Hasher {
    pub fn new(threads: usize) -> Self {
        // Built once here rather than on the first login of an unknown email.
        LazyLock::force(&DUMMY_HASH);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // Ends when every Hasher clone is gone.
                    while let Ok(job) = queue.lock().expect("lock").recv() {
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .expect("a hashing thread starts");
        }
        Self { jobs }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(span.in_scope(work));
            }))
            .map_err(|_| anyhow::anyhow!("the hashing threads have stopped"))?;
        Ok(result.await?)
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        self.run(move || hash_blocking(password.expose_secret()))
            .await
    }

    /// `hash` is `None` for an unknown account: a dummy hash is checked instead and the answer
    /// is always false.
    pub async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> anyhow::Result<bool> {
        self.run(move || verify_blocking(password.expose_secret(), hash.as_deref()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash_blocking("correct horse battery");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_blocking("correct horse battery", Some(&hash)));
        assert!(!verify_blocking("wrong horse battery", Some(&hash)));
    }

    #[tokio::test]
    async fn the_hashing_threads_answer_many_callers_at_once() {
        let hasher = Hasher::new(2);
        let hash = hash_blocking("correct horse battery");
        let checks = (0..6).map(|i| {
            let (hasher, hash) = (hasher.clone(), hash.clone());
            let password = if i % 2 == 0 {
                "correct horse battery"
            } else {
                "wrong"
            };
            async move {
                hasher
                    .verify(password.to_string().into(), Some(hash))
                    .await
                    .unwrap()
            }
        });
        let results = futures::future::join_all(checks).await;
        assert_eq!(results, [true, false, true, false, true, false]);
    }

    #[test]
    fn an_unknown_account_never_verifies() {
        assert!(!verify_blocking(
            "a password nobody has, used only for timing",
            None
        ));
    }
}
