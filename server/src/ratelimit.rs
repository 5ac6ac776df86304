//! Login rate limits: per client address and per account, with an exponential delay
//! after repeated failures.
//!
//! A key (an address or an account name) gets [`LoginLimits::free_failures`] failures for
//! free; each further failure blocks it for `base_delay × 2^(n − free)` (capped at
//! `max_delay`). A blocked key is answered `429` *before* any hashing, so a flood costs
//! the server a map lookup per request. A success clears the address and the account,
//! and remembers the address as good for that account: a flood against an account from
//! other addresses does not lock out its owner. Maps are bounded; idle entries expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures a key may make before delays start.
    pub free_failures: u32,
    /// First delay.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
    /// Entries idle this long are forgotten.
    pub forget_after: Duration,
    /// Most entries per map (the oldest go first).
    pub max_entries: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// A failure that started a burst (the key just became blocked): audited once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// `address` or `account`.
    pub scope: &'static str,
    /// The address or account name.
    pub key: String,
    /// Failures so far.
    pub failures: u32,
}

#[derive(Debug, Default)]
struct Maps {
    by_addr: HashMap<IpAddr, Slot>,
    by_account: HashMap<String, Slot>,
    /// Addresses that logged in to an account successfully.
    good: HashMap<String, Vec<IpAddr>>,
    /// Attempts being checked now.
    in_flight_addr: HashMap<IpAddr, u32>,
    in_flight_account: HashMap<String, u32>,
}

/// An admitted login attempt; the in-flight counts drop with it.
#[derive(Debug)]
pub struct Attempt<'l> {
    limiter: &'l LoginLimiter,
    addr: IpAddr,
    /// The account, when its in-flight count was taken.
    account: Option<String>,
}

impl Attempt<'_> {
    /// The address logged in to this account before.
    pub fn trusted(&self) -> bool {
        self.account.is_none()
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut m = self.limiter.maps();
        dec(&mut m.in_flight_addr, &self.addr);
        if let Some(a) = &self.account {
            dec(&mut m.in_flight_account, a);
        }
    }
}

fn dec<K: Eq + std::hash::Hash>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The limiter.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    limits: LoginLimits,
    maps: Mutex<Maps>,
}

fn blocked(slot: Option<&Slot>, now: Instant) -> Option<Duration> {
    slot.and_then(|s| s.blocked_until)
        .and_then(|until| until.checked_duration_since(now))
        .filter(|d| !d.is_zero())
}

fn prune<K: Clone + Eq + std::hash::Hash>(map: &mut HashMap<K, Slot>, limits: &LoginLimits, now: Instant) {
    if map.len() < limits.max_entries {
        return;
    }
    map.retain(|_, s| now.duration_since(s.last) < limits.forget_after);
    while map.len() >= limits.max_entries {
        let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl LoginLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            maps: Mutex::default(),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn delay(&self, failures: u32) -> Option<Duration> {
        let over = failures.checked_sub(self.limits.free_failures.saturating_add(1))?;
        let factor = 1u32.checked_shl(over.min(20)).unwrap_or(u32::MAX);
        Some(self.limits.base_delay.saturating_mul(factor).min(self.limits.max_delay))
    }

    /// `Err(retry_after)` when `addr` or (unless `addr` is known good for it) `account`
    /// is blocked now.
    pub fn check(&self, addr: IpAddr, account: &str, now: Instant) -> Result<(), Duration> {
        let m = self.maps();
        self.blocked_for(&m, addr, account, now).map_or(Ok(()), Err)
    }

    fn blocked_for(&self, m: &Maps, addr: IpAddr, account: &str, now: Instant) -> Option<Duration> {
        let by_addr = blocked(m.by_addr.get(&addr), now);
        let by_account = if self.trusted(m, addr, account) {
            None
        } else {
            blocked(m.by_account.get(account), now)
        };
        by_addr.max(by_account)
    }

    fn trusted(&self, m: &Maps, addr: IpAddr, account: &str) -> bool {
        m.good.get(account).is_some_and(|g| g.contains(&addr))
    }

    /// How many attempts a key may have in flight: what is left of its free failures
    /// (plus the one that would start the delay), and one once it is delayed. Attempts in
    /// flight count against the budget, so a burst of simultaneous guesses cannot all
    /// reach the hashing pool before the first failure is recorded.
    fn in_flight_budget(&self, slot: Option<&Slot>, now: Instant) -> u32 {
        let failures = slot
            .filter(|s| now.duration_since(s.last) < self.limits.forget_after)
            .map_or(0, |s| s.failures);
        (self.limits.free_failures + 1).saturating_sub(failures).max(1)
    }

    /// Admits an attempt: `Err(retry_after)` when blocked (see [`LoginLimiter::check`]) or
    /// when the address or account has used its in-flight budget.
    pub fn begin(&self, addr: IpAddr, account: &str, now: Instant) -> Result<Attempt<'_>, Duration> {
        let mut m = self.maps();
        if let Some(d) = self.blocked_for(&m, addr, account, now) {
            return Err(d);
        }
        let busy = Duration::from_secs(1);
        if m.in_flight_addr.get(&addr).copied().unwrap_or(0) >= self.in_flight_budget(m.by_addr.get(&addr), now) {
            return Err(busy);
        }
        let counted = !self.trusted(&m, addr, account);
        if counted {
            let budget = self.in_flight_budget(m.by_account.get(account), now);
            if m.in_flight_account.get(account).copied().unwrap_or(0) >= budget {
                return Err(busy);
            }
            if m.in_flight_account.len() >= self.limits.max_entries {
                return Err(busy);
            }
            *m.in_flight_account.entry(account.to_owned()).or_default() += 1;
        }
        *m.in_flight_addr.entry(addr).or_default() += 1;
        Ok(Attempt {
            limiter: self,
            addr,
            account: counted.then(|| account.to_owned()),
        })
    }

    /// Records a failed login; returns the bursts it started.
    pub fn failure(&self, addr: IpAddr, account: &str, now: Instant) -> Vec<Burst> {
        let mut bursts = Vec::new();
        let limits = self.limits;
        let mut m = self.maps();
        prune(&mut m.by_addr, &limits, now);
        prune(&mut m.by_account, &limits, now);
        let bump = |slot: &mut Slot| -> Option<u32> {
            if now.duration_since(slot.last) >= limits.forget_after {
                slot.failures = 0;
            }
            slot.failures = slot.failures.saturating_add(1);
            slot.last = now;
            let was_blocked = slot.blocked_until.is_some();
            slot.blocked_until = self.delay(slot.failures).map(|d| now + d);
            (!was_blocked && slot.blocked_until.is_some()).then_some(slot.failures)
        };
        let fresh = || Slot {
            failures: 0,
            blocked_until: None,
            last: now,
        };
        if let Some(n) = bump(m.by_addr.entry(addr).or_insert_with(fresh)) {
            bursts.push(Burst {
                scope: "address",
                key: addr.to_string(),
                failures: n,
            });
        }
        if let Some(n) = bump(m.by_account.entry(account.to_owned()).or_insert_with(fresh)) {
            bursts.push(Burst {
                scope: "account",
                key: account.to_owned(),
                failures: n,
            });
        }
        bursts
    }

    /// Records a successful login.
    pub fn success(&self, addr: IpAddr, account: &str) {
        let mut m = self.maps();
        m.by_addr.remove(&addr);
        m.by_account.remove(account);
        if m.good.len() >= self.limits.max_entries {
            m.good.clear();
        }
        let good = m.good.entry(account.to_owned()).or_default();
        if !good.contains(&addr) {
            if good.len() >= 16 {
                good.remove(0);
            }
            good.push(addr);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter() -> LoginLimiter {
        LoginLimiter::new(LoginLimits {
            free_failures: 2,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            forget_after: Duration::from_secs(100),
            max_entries: 4,
        })
    }

    #[test]
    fn simultaneous_attempts_are_capped_per_address_and_account() {
        let l = limiter();
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        // Two free failures: three attempts may be in flight at once.
        let burst: Vec<_> = (0..3).map(|_| l.begin(a, "root", t).unwrap()).collect();
        assert!(l.begin(a, "root", t).is_err(), "fourth from the same address");
        assert!(l.begin(b, "root", t).is_err(), "fourth on the same account");
        assert!(l.begin(b, "other", t).is_ok());
        drop(burst);
        assert!(l.begin(b, "root", t).is_ok(), "counts drop with the attempts");
        // Failures shrink the budget to one (never to zero: a delay that ends admits one).
        for _ in 0..3 {
            l.failure(a, "x", t);
        }
        let later = t + Duration::from_secs(30);
        let one = l.begin(a, "y", later).unwrap();
        assert!(l.begin(a, "z", later).is_err());
        drop(one);
        // The owner's known-good address is not held up by the account's count.
        l.success(b, "root");
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let _x: Vec<_> = (0..3).map(|_| l.begin(c, "root", later).unwrap()).collect();
        assert!(l.begin(b, "root", later).is_ok());
    }

    #[test]
    fn delays_grow_exponentially_and_cap() {
        let l = limiter();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert!(l.check(a, "root", t).is_ok());
        assert!(l.failure(a, "root", t).is_empty());
        assert!(l.failure(a, "root", t).is_empty());
        assert!(l.check(a, "root", t).is_ok(), "free failures");
        let bursts = l.failure(a, "root", t);
        assert_eq!(bursts.len(), 2, "address and account start a burst: {bursts:?}");
        assert_eq!(l.check(a, "root", t), Err(Duration::from_secs(1)));
        for _ in 0..10 {
            assert!(l.failure(a, "root", t).is_empty(), "a burst is reported once");
        }
        assert_eq!(l.check(a, "root", t), Err(Duration::from_secs(8)), "capped");
        // Another address is blocked by the account, not by its own slot.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(b, "root", t).is_err());
        assert!(l.check(b, "other", t).is_ok());
        assert!(l.check(a, "root", t + Duration::from_secs(9)).is_ok(), "delays end");
    }

    #[test]
    fn a_known_good_address_passes_an_attacked_account() {
        let l = limiter();
        let owner: IpAddr = "10.0.0.1".parse().unwrap();
        let attacker: IpAddr = "10.0.0.9".parse().unwrap();
        let t = Instant::now();
        l.success(owner, "root");
        for _ in 0..10 {
            l.failure(attacker, "root", t);
        }
        assert!(l.check(attacker, "root", t).is_err());
        assert!(l.check(owner, "root", t).is_ok());
    }

    #[test]
    fn maps_stay_bounded() {
        let l = limiter();
        let t = Instant::now();
        for i in 0..100u8 {
            l.failure(
                IpAddr::from([10, 0, 0, i]),
                &format!("user{i}"),
                t + Duration::from_millis(u64::from(i)),
            );
        }
        let m = l.maps();
        assert!(m.by_addr.len() <= 4 && m.by_account.len() <= 4);
    }
}
