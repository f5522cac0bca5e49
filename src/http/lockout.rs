//! Failed authentications: counted per client, logged as a summary line every few seconds, and
//! answered with 429 once a client has failed too often.
//!
//! A client gets [`FREE_FAILURES`] wrong or missing tokens; each failure after that locks its
//! writes out for a time that doubles, from [`FIRST_LOCKOUT`] up to [`MAX_LOCKOUT`]. While locked
//! out its writes are answered 429 with `Retry-After` without looking at the token, so the lockout
//! tells a guesser nothing and bounds guessing to about one try a minute. A right token clears
//! the client's record; a client that fails nothing for [`FORGET_AFTER`] starts afresh. Other
//! clients are never slowed: the state is per client address (see [`super::tally::client_of`]),
//! and answering costs a lookup, never a wait. At most [`MAX_CLIENTS`] clients are remembered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::tally::{Client, Tally, Throttle};

/// Wrong or missing tokens a client may send before it is locked out.
pub(crate) const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it.
pub(crate) const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
/// The longest lockout.
pub(crate) const MAX_LOCKOUT: Duration = Duration::from_secs(60);
/// A client that failed nothing for this long is forgotten.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Clients remembered at once; beyond it the one that failed longest ago is forgotten.
pub(crate) const MAX_CLIENTS: usize = 4096;

/// One client's record.
#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Table {
    clients: HashMap<IpAddr, Strikes>,
    failed: Tally,
    refused: Tally,
    throttle: Throttle,
}

/// The failed-authentication record of every client, shared by the handlers.
#[derive(Debug)]
pub struct Lockout {
    table: Mutex<Table>,
    capacity: usize,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout::with_capacity(MAX_CLIENTS)
    }
}

/// How long a client is locked out after `failures` failures.
fn lockout_for(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?.checked_sub(1)?;
    Some(
        FIRST_LOCKOUT
            .saturating_mul(1u32 << over.min(16))
            .min(MAX_LOCKOUT),
    )
}

impl Lockout {
    /// A record of at most `capacity` clients.
    pub fn with_capacity(capacity: usize) -> Lockout {
        Lockout {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        crate::util::lock(&self.table)
    }

    /// `Err(retry after)` while `client` is locked out; the refusal is counted for the log.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut table = self.lock();
        let until = table.clients.get(&client).and_then(|s| s.locked_until);
        match until {
            Some(until) if until > now => {
                table.refused.add(client);
                log_if_due(&mut table, now);
                Err(until - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong or missing token from `client`, locking it out past [`FREE_FAILURES`].
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let mut table = self.lock();
        if !table.clients.contains_key(&client) && table.clients.len() >= self.capacity {
            make_room(&mut table.clients, self.capacity, now);
        }
        let strikes = table.clients.entry(client).or_insert(Strikes {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(strikes.last) >= FORGET_AFTER {
            strikes.failures = 0;
        }
        strikes.failures = strikes.failures.saturating_add(1);
        strikes.last = now;
        strikes.locked_until = lockout_for(strikes.failures).map(|d| now + d);
        table.failed.add(client);
        log_if_due(&mut table, now);
    }

    /// A right token from `client`: its record is cleared.
    pub fn succeeded(&self, client: IpAddr) {
        self.lock().clients.remove(&client);
    }

    /// Writes the summary line of what was counted since the last one, when one is due.
    pub fn flush(&self, now: Instant) {
        log_if_due(&mut self.lock(), now);
    }

    /// Clients remembered.
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }
}

/// Forgets clients that failed nothing for [`FORGET_AFTER`] and are not locked out; if none, the
/// one whose last failure is oldest.
fn make_room(clients: &mut HashMap<IpAddr, Strikes>, capacity: usize, now: Instant) {
    clients.retain(|_, s| {
        now.saturating_duration_since(s.last) < FORGET_AFTER
            || s.locked_until.is_some_and(|u| u > now)
    });
    while clients.len() >= capacity {
        let Some(oldest) = clients.iter().min_by_key(|(_, s)| s.last).map(|(c, _)| *c) else {
            break;
        };
        clients.remove(&oldest);
    }
}

fn log_if_due(table: &mut Table, now: Instant) {
    if table.failed.total() + table.refused.total() == 0 || !table.throttle.due(now) {
        return;
    }
    let locked: Vec<String> = table
        .clients
        .iter()
        .filter(|(_, s)| s.locked_until.is_some_and(|u| u > now))
        .take(8)
        .map(|(c, _)| Client(*c).to_string())
        .collect();
    tracing::warn!(
        failed = table.failed.total(),
        refused = table.refused.total(),
        "failed HTTP authentication since the last report: {} wrong or missing tokens from {}; \
         {} writes refused with 429 while locked out{}",
        table.failed.total(),
        table.failed,
        table.refused.total(),
        if locked.is_empty() {
            String::new()
        } else {
            format!("; locked out now: {}", locked.join(", "))
        }
    );
    table.failed.clear();
    table.refused.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lockouts_double_from_the_first_past_the_free_failures() {
        for n in 0..=FREE_FAILURES {
            assert_eq!(lockout_for(n), None, "{n}");
        }
        assert_eq!(lockout_for(FREE_FAILURES + 1), Some(FIRST_LOCKOUT));
        assert_eq!(lockout_for(FREE_FAILURES + 2), Some(FIRST_LOCKOUT * 2));
        assert_eq!(lockout_for(FREE_FAILURES + 4), Some(FIRST_LOCKOUT * 8));
        assert_eq!(lockout_for(FREE_FAILURES + 40), Some(MAX_LOCKOUT));
        assert_eq!(lockout_for(u32::MAX), Some(MAX_LOCKOUT));
    }

    #[test]
    fn a_client_is_locked_out_after_repeated_failures_and_others_are_not() {
        let guard = Lockout::default();
        let (bad, good) = (ip("127.0.0.2"), ip("127.0.0.1"));
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES {
            assert_eq!(guard.check(bad, t0), Ok(()), "{i}");
            guard.failed(bad, t0);
        }
        assert_eq!(guard.check(bad, t0), Ok(()));
        guard.failed(bad, t0);
        assert_eq!(guard.check(bad, t0), Err(FIRST_LOCKOUT));
        assert_eq!(guard.check(good, t0), Ok(()));
        // Past the lockout it may try again; the next failure locks it out twice as long.
        let t1 = t0 + FIRST_LOCKOUT;
        assert_eq!(guard.check(bad, t1), Ok(()));
        guard.failed(bad, t1);
        assert_eq!(guard.check(bad, t1), Err(FIRST_LOCKOUT * 2));
        // A right token clears it.
        guard.succeeded(bad);
        assert_eq!(guard.check(bad, t1), Ok(()));
        assert_eq!(guard.clients(), 0);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let guard = Lockout::default();
        let c = ip("10.0.0.1");
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            guard.failed(c, t0);
        }
        let later = t0 + FORGET_AFTER;
        guard.failed(c, later);
        assert_eq!(guard.check(c, later), Ok(()));
    }

    #[test]
    fn memory_is_bounded() {
        let guard = Lockout::with_capacity(100);
        let t0 = Instant::now();
        let attacker = ip("192.0.2.1");
        for _ in 0..=FREE_FAILURES + 10 {
            guard.failed(attacker, t0);
        }
        for i in 0..10_000u32 {
            guard.failed(
                IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                t0 + Duration::from_millis(1),
            );
        }
        assert!(guard.clients() <= 100, "{}", guard.clients());
        // Forgotten clients make room first, then the one whose last failure is oldest.
        let guard = Lockout::with_capacity(3);
        guard.failed(ip("10.0.0.1"), t0);
        guard.failed(ip("10.0.0.2"), t0 + Duration::from_secs(1));
        guard.failed(ip("10.0.0.3"), t0 + Duration::from_secs(2));
        let late = t0 + FORGET_AFTER + Duration::from_millis(500);
        guard.failed(ip("10.0.0.4"), late);
        assert_eq!(guard.clients(), 3);
        let table = guard.lock();
        assert!(!table.clients.contains_key(&ip("10.0.0.1")));
        assert!(table.clients.contains_key(&ip("10.0.0.2")));
    }
}
