//! Password hashing with argon2id at OWASP's parameters (7 MiB, 5 iterations, 1 lane).
//!
//! Hashing is CPU- and memory-heavy, so it runs on a few threads of its own, as many as may
//! hash at once: a burst of logins then queues instead of starving clock-ins of CPU.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock, Mutex, mpsc};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};

/// OWASP lists five argon2id settings as equally strong, trading memory for passes: 46 MiB with
/// one pass down to 7 MiB with five. This is the last. Measured here, two hashes at once ran
/// 15-35 % faster than with 19 MiB and two passes (the first choice): two 19 MiB hashes overflow
/// the machine's shared 32 MiB cache, two 7 MiB ones do not. Stored hashes carry their own
/// parameters, and a login upgrades an older one (see `is_current`).
fn params() -> Params {
    Params::new(7 * 1024, 5, 1, None).expect("OWASP argon2 parameters are valid")
}

/// True when `hash` was made with today's algorithm and parameters; a hash that is not is made
/// again at the next successful login, so that every account costs the same to check.
pub fn is_current(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let wanted = params();
    parsed.algorithm == Algorithm::Argon2id.ident()
        && parsed.version == Some(Version::V0x13.into())
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == wanted.m_cost()
                && p.t_cost() == wanted.t_cost()
                && p.p_cost() == wanted.p_cost()
        })
}

/// Verifying against this when the account does not exist costs the same time as a real check,
/// so response timing does not reveal which emails have accounts.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_blocking("a password nobody has, used only for timing"));

thread_local! {
    /// This thread's argon2 working memory (7 MiB, more after verifying an older, larger hash),
    /// kept and reused by every hash it computes rather than allocated and freed each time: a
    /// hashing thread holds one block of memory for its life, and no hash pays for zeroing it.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// What `PasswordHasher::hash_password` computes, in this thread's reused memory.
fn compute<'a>(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: Salt<'a>,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let params_string = ParamsString::try_from(&params)?;
    let argon2 = Argon2::new(algorithm, version, params);
    let output =
        MEMORY.with_borrow_mut(|memory| {
            let needed = argon2.params().block_count();
            if memory.len() < needed {
                memory.resize(needed, Block::default());
            }
            Output::init_with(output_len, |out| {
                Ok(argon2.hash_password_into_with_memory(
                    password,
                    salt_bytes,
                    out,
                    &mut memory[..],
                )?)
            })
        })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: params_string,
        salt: Some(salt),
        hash: Some(output),
    })
}

pub fn hash_blocking(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params(),
        password.as_bytes(),
        salt.as_salt(),
    )
    .expect("hashing with valid parameters does not fail")
    .to_string()
}

/// Checks `password` against a stored hash with the hash's own parameters (so hashes made
/// under older parameters still verify); the comparison is constant-time.
pub fn verify_blocking(password: &str, hash: Option<&str>) -> bool {
    let hash = hash.unwrap_or(DUMMY_HASH.as_str());
    let matches = || -> argon2::password_hash::Result<bool> {
        let parsed = PasswordHash::new(hash)?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Ok(false);
        };
        let version = parsed.version.map(Version::try_from).transpose()?;
        let computed = compute(
            Algorithm::try_from(parsed.algorithm)?,
            version.unwrap_or_default(),
            Params::try_from(&parsed)?,
            password.as_bytes(),
            salt,
        )?;
        Ok(computed.hash == Some(expected))
    };
    matches().unwrap_or(false) && !std::ptr::eq(hash, DUMMY_HASH.as_str())
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs argon2 off the async runtime, on `threads` threads of its own. Not on tokio's blocking
/// pool: each hash takes megabytes, and an allocator keeps a freed block near the thread that
/// used it, so hashes spread over the blocking pool's many threads would leave one block
/// resident per thread (about 300 MiB after a burst of logins); here it is one per thread.
#[derive(Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
}

impl Hasher {
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        // Built first, on a hashing thread (whose memory it reuses), rather than on the first
        // login of an unknown email.
        let _ = jobs.send(Box::new(|| {
            LazyLock::force(&DUMMY_HASH);
        }));
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    // Ends when every Hasher clone is gone. The queue is locked only to take
                    // a job (a guard taken in a `while let` condition would be held while the
                    // job runs, and the threads would hash one at a time).
                    loop {
                        let next = queue.lock().expect("lock").recv();
                        let Ok(job) = next else { break };
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
                // A request that went away while its job waited (it timed out, or its client
                // hung up) needs no hash: a burst of them would otherwise keep the threads busy
                // long after it ended, and every login behind it would wait and time out too.
                if done.is_closed() {
                    return;
                }
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

    #[tokio::test]
    async fn a_job_whose_request_went_away_while_it_waited_is_not_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let hasher = Hasher::new(1);
        // The one thread is kept busy until released.
        let (release, held) = mpsc::channel::<()>();
        hasher
            .jobs
            .send(Box::new(move || {
                let _ = held.recv();
            }))
            .unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            hasher.run(move || flag.store(true, Ordering::SeqCst)),
        )
        .await;
        assert!(waited.is_err(), "the request gave up while its job waited");
        release.send(()).unwrap();
        // Queued after it: once this has run, the abandoned job has been taken off the queue.
        assert_eq!(hasher.run(|| 7).await.unwrap(), 7);
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn reused_memory_computes_what_the_library_computes() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0c2FsdA").unwrap();
        let library = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        // Twice on one thread: the second hash runs in memory the first one filled.
        for _ in 0..2 {
            let ours = compute(
                Algorithm::Argon2id,
                Version::V0x13,
                params(),
                b"correct horse battery",
                salt.as_salt(),
            )
            .unwrap();
            assert_eq!(ours.to_string(), library);
        }
        // A hash made elsewhere, with other parameters, verifies by its own.
        let other = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 3, 1, None).unwrap(),
        )
        .hash_password(b"older parameters", &salt)
        .unwrap()
        .to_string();
        assert!(verify_blocking("older parameters", Some(&other)));
        assert!(!verify_blocking("older parameter", Some(&other)));
        assert!(
            Argon2::default()
                .verify_password(
                    b"correct horse battery",
                    &PasswordHash::new(&hash_blocking("correct horse battery")).unwrap()
                )
                .is_ok()
        );
        assert!(!verify_blocking("anything", Some("not a phc string")));
    }

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash_blocking("correct horse battery");
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"));
        assert!(verify_blocking("correct horse battery", Some(&hash)));
        assert!(!verify_blocking("wrong horse battery", Some(&hash)));
    }

    #[test]
    fn only_a_hash_with_todays_parameters_is_current() {
        assert!(is_current(&hash_blocking("correct horse battery")));
        let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0c2FsdA").unwrap();
        for (m, t) in [(19 * 1024, 2), (7 * 1024, 4), (8 * 1024, 5)] {
            let older = compute(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
                b"correct horse battery",
                salt.as_salt(),
            )
            .unwrap()
            .to_string();
            assert!(!is_current(&older), "{older}");
        }
        assert!(!is_current("not a phc string"));
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

    #[tokio::test]
    async fn the_hashing_threads_run_side_by_side() {
        // Each job waits for the other to start: on threads that took turns, the first would
        // give up waiting.
        let hasher = Hasher::new(2);
        let (a_started, a_seen) = std::sync::mpsc::channel::<()>();
        let (b_started, b_seen) = std::sync::mpsc::channel::<()>();
        let meet = |started: std::sync::mpsc::Sender<()>, other: std::sync::mpsc::Receiver<()>| {
            move || {
                let _ = started.send(());
                other
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .is_ok()
            }
        };
        let (a, b) = tokio::join!(
            hasher.run(meet(a_started, b_seen)),
            hasher.run(meet(b_started, a_seen))
        );
        assert!(a.unwrap() && b.unwrap());
    }

    #[test]
    fn an_unknown_account_never_verifies() {
        assert!(!verify_blocking(
            "a password nobody has, used only for timing",
            None
        ));
    }
}
