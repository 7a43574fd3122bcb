//! Password hashing with argon2id at OWASP's parameters (19 MiB, 2 iterations, 1 lane).
//!
//! Hashing is CPU- and memory-heavy, so it runs on the blocking pool, and a semaphore caps how
//! many run at once: a burst of logins then queues instead of starving clock-ins of CPU.

use std::sync::{Arc, LazyLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tracing::Instrument;

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

/// Runs argon2 off the async runtime with at most `permits` hashes at once.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(max_concurrent: usize) -> Self {
        // Built once here rather than on the first login of an unknown email.
        LazyLock::force(&DUMMY_HASH);
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let span = tracing::Span::current();
        Ok(tokio::task::spawn_blocking(move || {
            span.in_scope(|| hash_blocking(password.expose_secret()))
        })
        .await?)
    }

    /// `hash` is `None` for an unknown account: a dummy hash is checked instead and the answer
    /// is always false.
    pub async fn verify(
        &self,
        password: SecretString,
        hash: Option<String>,
    ) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let span = tracing::Span::current();
        Ok(tokio::task::spawn_blocking(move || {
            span.in_scope(|| verify_blocking(password.expose_secret(), hash.as_deref()))
        })
        .instrument(tracing::Span::current())
        .await?)
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

    #[test]
    fn an_unknown_account_never_verifies() {
        assert!(!verify_blocking(
            "a password nobody has, used only for timing",
            None
        ));
    }
}
