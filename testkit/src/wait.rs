//! Polling with a deadline: the one way tests wait for something to happen.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(5);

/// Polls `ready` until it holds; panics after `limit`, naming `what`.
#[track_caller]
pub fn wait_until(limit: Duration, what: impl Display, mut ready: impl FnMut() -> bool) {
    wait_for(limit, what, || if ready() { Ok(()) } else { Err("not yet") })
}

/// Polls `step` until it returns `Ok`; panics after `limit`, naming `what` and the last
/// `Err` (what was seen instead).
#[track_caller]
pub fn wait_for<T, E: Display>(limit: Duration, what: impl Display, step: impl FnMut() -> Result<T, E>) -> T {
    wait_for_every(POLL, limit, what, step)
}

/// [`wait_for`] polling every `every` (for steps that cost, e.g. running a command).
#[track_caller]
pub fn wait_for_every<T, E: Display>(
    every: Duration,
    limit: Duration,
    what: impl Display,
    mut step: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match step() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Spins (no sleep: for races measured in microseconds) until `ready` holds; returns when
/// it saw it. Panics after `limit`, naming `what`.
#[track_caller]
pub fn spin_until(limit: Duration, what: impl Display, mut ready: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::hint::spin_loop();
    }
}

/// [`wait_until`] for async tests: sleeps on the runtime's timer between polls.
pub async fn wait_until_async<F, Fut>(limit: Duration, what: impl Display, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_async(limit, what, || {
        let poll = ready();
        async move {
            if poll.await {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    })
    .await
}

/// [`wait_for`] for async tests.
pub async fn wait_for_async<T, E, F, Fut>(limit: Duration, what: impl Display, mut step: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match step().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), "the third poll", || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for never; last seen: not yet")]
    fn panics_after_the_limit_naming_what() {
        wait_until(Duration::from_millis(20), "never", || false);
    }

    #[tokio::test]
    async fn async_variant_polls_on_the_runtime() {
        let mut n = 0;
        wait_until_async(Duration::from_secs(5), "two polls", || {
            n += 1;
            let done = n >= 2;
            async move { done }
        })
        .await;
        assert_eq!(n, 2);
    }
}
