//! Slows repeated authentication failures per source address and per account,
//! so that password guessing costs time without locking real users out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures tolerated before delays start.
const FREE_FAILURES: u32 = 3;
const MAX_DELAY: Duration = Duration::from_secs(10);
/// A record is forgotten after this long without failures.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct AuthLimiter {
    by_ip: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    by_account: Mutex<HashMap<String, (u32, Instant)>>,
}

fn bump<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, (u32, Instant)>>, key: K) -> u32 {
    let mut m = map.lock().unwrap();
    let now = Instant::now();
    if m.len() >= MAX_ENTRIES {
        m.retain(|_, (_, t)| now.duration_since(*t) < FORGET_AFTER);
    }
    let e = m.entry(key).or_insert((0, now));
    if now.duration_since(e.1) >= FORGET_AFTER {
        e.0 = 0;
    }
    e.0 += 1;
    e.1 = now;
    e.0
}

fn count<K: std::hash::Hash + Eq>(map: &Mutex<HashMap<K, (u32, Instant)>>, key: &K) -> u32 {
    let m = map.lock().unwrap();
    match m.get(key) {
        Some((n, t)) if t.elapsed() < FORGET_AFTER => *n,
        _ => 0,
    }
}

fn delay_for(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let exp = (failures - FREE_FAILURES - 1).min(10);
    (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_DELAY)
}

impl AuthLimiter {
    /// Record a failure; returns how long to wait before answering it.
    pub fn failure(&self, ip: IpAddr, account: Option<&str>) -> Duration {
        let a = bump(&self.by_ip, ip);
        let b = account
            .map(|acc| bump(&self.by_account, acc.to_string()))
            .unwrap_or(0);
        delay_for(a.max(b))
    }

    /// Delay to apply before even trying (a source or account already failing a lot).
    pub fn penalty(&self, ip: IpAddr, account: Option<&str>) -> Duration {
        let a = count(&self.by_ip, &ip);
        let b = account
            .map(|acc| count(&self.by_account, &acc.to_string()))
            .unwrap_or(0);
        delay_for(a.max(b).saturating_sub(1))
    }

    pub fn success(&self, account: &str) {
        self.by_account.lock().unwrap().remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_free_failures_and_cap() {
        let l = AuthLimiter::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(l.failure(ip, Some("a@x")), Duration::ZERO);
        }
        let d1 = l.failure(ip, Some("a@x"));
        let d2 = l.failure(ip, Some("a@x"));
        assert!(d1 > Duration::ZERO && d2 > d1);
        for _ in 0..20 {
            l.failure(ip, None);
        }
        assert_eq!(l.failure(ip, None), MAX_DELAY);
        // Another address guessing the same account is slowed too.
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(l.failure(other, Some("a@x")) > Duration::ZERO);
        l.success("a@x");
        assert_eq!(l.penalty(other, Some("a@x")), Duration::ZERO);
    }
}
