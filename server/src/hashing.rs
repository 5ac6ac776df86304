//! Password hashing on a bounded pool.
//!
//! Argon2 is slow and memory-hard on purpose (19 MiB per hash by default). Run on
//! `spawn_blocking` it let a wrong-password flood start hundreds of threads, each leaving
//! its own malloc arena full of freed blocks (6.3 GB RSS). Here a fixed set of worker
//! threads (at most one per core) hashes one password each at a time into a memory block
//! it keeps and reuses, so memory is bounded by `workers × cost`; callers wait for a
//! worker for a bounded time and otherwise get [`PoolBusy`] (answered `429`).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Argon2, Block, Params};
use rand_core::OsRng;
use tokio::sync::{oneshot, Semaphore};

/// Largest argon2 memory cost (KiB) a stored hash may ask for: a hash with a larger one
/// never verifies instead of allocating it.
pub const MAX_M_COST_KIB: u32 = 64 * 1024;

/// The pool is saturated for longer than the caller may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct PoolBusy;

enum Work {
    Verify(String, String, oneshot::Sender<bool>),
    VerifyDummy(String, oneshot::Sender<bool>),
    Hash(String, oneshot::Sender<Option<String>>),
}

/// A bounded password-hashing pool. Cheap to clone.
#[derive(Clone)]
pub struct HashPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    /// One permit per worker: a request holds one while its job is queued or running,
    /// so the queue never holds more jobs than there are workers.
    permits: Semaphore,
    /// Untrusted attempts (unknown addresses, unknown users) also need one of these: one
    /// worker fewer than the pool, so a flood leaves a worker to the accounts' owners.
    untrusted: Semaphore,
    queue: Mutex<mpsc::Sender<Work>>,
    wait: Duration,
    workers: usize,
    /// Hashes computed (verifications included).
    done: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool")
            .field("workers", &self.inner.workers)
            .field("wait", &self.inner.wait)
            .finish_non_exhaustive()
    }
}

/// Worker count by default: the number of cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl HashPool {
    /// Starts `workers` threads (at least one). Callers wait at most `wait` for a worker.
    pub fn new(workers: usize, wait: Duration) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // A real hash of a random password, made by a worker on first need: unknown users
        // are checked against it so that they cost the same as known ones.
        let dummy = Arc::new(std::sync::OnceLock::new());
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            let done = Arc::clone(&done);
            let dummy = Arc::clone(&dummy);
            std::thread::Builder::new()
                .name(format!("keyfloat-hash-{i}"))
                .spawn(move || worker(&rx, &done, &dummy))?;
        }
        Ok(Self {
            inner: Arc::new(PoolInner {
                permits: Semaphore::new(workers),
                untrusted: Semaphore::new(workers.saturating_sub(1).max(1)),
                queue: Mutex::new(tx),
                wait,
                workers,
                done,
            }),
        })
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Hashes computed so far (each login attempt that reached the pool counts one).
    pub fn hashes_done(&self) -> u64 {
        self.inner.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run<T>(
        &self,
        trusted: bool,
        work: impl FnOnce(oneshot::Sender<T>) -> Work,
        failed: T,
    ) -> Result<T, PoolBusy> {
        let lane = if trusted {
            None
        } else {
            Some(
                tokio::time::timeout(self.inner.wait, self.inner.untrusted.acquire())
                    .await
                    .map_err(|_| PoolBusy)?
                    .map_err(|_| PoolBusy)?,
            )
        };
        let permit = tokio::time::timeout(self.inner.wait, self.inner.permits.acquire())
            .await
            .map_err(|_| PoolBusy)?
            .map_err(|_| PoolBusy)?;
        let (tx, rx) = oneshot::channel();
        let sent = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(work(tx))
            .is_ok();
        let out = if sent { rx.await.unwrap_or(failed) } else { failed };
        drop((permit, lane));
        Ok(out)
    }

    /// Checks `password` against `phc` (false on a malformed or too costly hash).
    /// `trusted`: the caller's address logged in to this account before (it may use every
    /// worker; others leave one free).
    pub async fn verify(&self, password: String, phc: String, trusted: bool) -> Result<bool, PoolBusy> {
        self.run(trusted, |tx| Work::Verify(password, phc, tx), false).await
    }

    /// Checks `password` against the dummy hash: the same cost as a real check, always
    /// false. For unknown user names.
    pub async fn verify_dummy(&self, password: String) -> Result<bool, PoolBusy> {
        self.run(false, |tx| Work::VerifyDummy(password, tx), false)
            .await
            .map(|_| false)
    }

    /// A new argon2id PHC hash of `password` (for an authenticated admin: trusted).
    pub async fn hash(&self, password: String) -> Result<Option<String>, PoolBusy> {
        self.run(true, |tx| Work::Hash(password, tx), None).await
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Work>>, done: &std::sync::atomic::AtomicU64, dummy: &std::sync::OnceLock<String>) {
    // Reused for every hash this thread computes: no per-hash 19 MiB allocation.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let work = match rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv() {
            Ok(w) => w,
            Err(_) => return,
        };
        // Counted before answering, so a caller sees its own hash counted.
        match work {
            Work::Verify(password, phc, tx) => {
                let ok = verify_with(&mut memory, &password, &phc);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send(ok);
            }
            Work::VerifyDummy(password, tx) => {
                let phc = dummy.get_or_init(|| {
                    let mut bytes = [0u8; 24];
                    rand_core::RngCore::fill_bytes(&mut OsRng, &mut bytes);
                    hash_with(&mut memory, &base64_of(&bytes)).unwrap_or_default()
                });
                let _ = verify_with(&mut memory, &password, phc);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send(false);
            }
            Work::Hash(password, tx) => {
                let phc = hash_with(&mut memory, &password);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = tx.send(phc);
            }
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

fn blocks(memory: &mut Vec<Block>, params: &Params) -> Option<()> {
    if params.m_cost() > MAX_M_COST_KIB {
        return None;
    }
    let n = params.block_count();
    if memory.len() < n {
        memory.resize(n, Block::default());
    }
    Some(())
}

/// Verifies with caller-owned memory blocks.
pub fn verify_with(memory: &mut Vec<Block>, password: &str, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version {
        Some(v) => match argon2::Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => argon2::Version::default(),
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if blocks(memory, &params).is_none() {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let a = Argon2::new(algorithm, version, params.clone());
    if a.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..params.block_count()])
        .is_err()
    {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// Argon2id (default parameters) PHC hash with caller-owned memory blocks.
pub fn hash_with(memory: &mut Vec<Block>, password: &str) -> Option<String> {
    let params = Params::default();
    blocks(memory, &params)?;
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let raw_salt = salt.decode_b64(&mut salt_buf).ok()?;
    let mut out = [0u8; 32];
    let a = Argon2::default();
    a.hash_password_into_with_memory(
        password.as_bytes(),
        raw_salt,
        &mut out,
        &mut memory[..params.block_count()],
    )
    .ok()?;
    // Same PHC string as `hash_password` would give for this salt and output.
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(u32::from(argon2::Version::default())),
        params: argon2::password_hash::ParamsString::try_from(&params).ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).ok()?),
    };
    Some(phc.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pooled_hashes_are_ordinary_phc_strings() {
        let mut mem = Vec::new();
        let h = hash_with(&mut mem, "s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        // Interoperates with the crate's own verifier, both ways.
        assert!(crate::auth::verify_password("s3cret", &h));
        assert!(!crate::auth::verify_password("other", &h));
        let theirs = crate::auth::hash_password("pw").unwrap();
        assert!(verify_with(&mut mem, "pw", &theirs));
        assert!(!verify_with(&mut mem, "pW", &theirs));
        assert!(!verify_with(&mut mem, "pw", "not a hash"));
    }

    /// A stored hash asking for 4 GiB is refused, not allocated.
    #[test]
    fn a_costly_hash_is_refused_without_allocating() {
        let mut mem = Vec::new();
        let h = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!verify_with(&mut mem, "x", h));
        assert!(mem.is_empty());
    }

    /// A pool of `workers` (callers wait up to `wait` for one) and its hash of "a".
    async fn pool_with_hash_of_a(workers: usize, wait: Duration) -> (HashPool, String) {
        let pool = HashPool::new(workers, wait).unwrap();
        let h = pool.hash("a".into()).await.unwrap().unwrap();
        (pool, h)
    }

    /// `n` untrusted callers verifying `password` against `h` at once.
    fn spawn_untrusted_verifies(
        pool: &HashPool,
        password: &str,
        h: &str,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<bool, PoolBusy>>> {
        (0..n)
            .map(|_| {
                let (pool, password, h) = (pool.clone(), password.to_string(), h.to_string());
                tokio::spawn(async move { pool.verify(password, h, false).await })
            })
            .collect()
    }

    /// More callers than workers: the excess waits at most `wait`, then is told busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excess_callers_are_refused_after_the_wait() {
        let (pool, h) = pool_with_hash_of_a(1, Duration::from_millis(1)).await;
        let calls = spawn_untrusted_verifies(&pool, "a", &h, 8);
        let mut busy = 0;
        let mut ok = 0;
        for c in calls {
            match c.await.unwrap() {
                Ok(true) => ok += 1,
                Ok(false) => panic!("right password refused"),
                Err(PoolBusy) => busy += 1,
            }
        }
        assert!(ok >= 1 && busy >= 1, "ok {ok} busy {busy}");
        assert!(!pool.verify_dummy("a".into()).await.unwrap());
    }

    /// With two workers an untrusted flood holds at most one; a trusted caller gets the
    /// other at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn untrusted_callers_leave_a_worker_free() {
        let (pool, h) = pool_with_hash_of_a(2, Duration::from_secs(30)).await;
        let flood = spawn_untrusted_verifies(&pool, "x", &h, 6);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.inner.untrusted.available_permits(), 0, "the flood holds its lane");
        assert_eq!(pool.inner.permits.available_permits(), 1, "one worker stays free");
        assert!(pool.verify("a".into(), h.clone(), true).await.unwrap());
        for f in flood {
            assert!(!f.await.unwrap().unwrap());
        }
    }
}
