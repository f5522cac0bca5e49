//! Client addresses as the guards count them, and counts of events by client between two log
//! lines, in bounded memory: a flood is logged as one summary line every few seconds, not one line
//! per request.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// At most one summary line per guard this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(5);
/// Clients named in one summary line; the rest are summed up as "other addresses".
const NAMED_CLIENTS: usize = 8;

/// The client a connection or a request is counted against: its address, with IPv4-mapped IPv6
/// addresses as the IPv4 address they are, and an IPv6 address as its /64 (one host commonly
/// holds a whole /64, so counting single IPv6 addresses would bound nothing).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// How a client is named in the log.
pub(crate) struct Client(pub IpAddr);

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Events counted by client since the last log line: the first [`NAMED_CLIENTS`] clients by
/// name, the others in one sum.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    clients: Vec<(IpAddr, u64)>,
    others: u64,
    total: u64,
}

impl Tally {
    /// Counts one event of `client`.
    pub fn add(&mut self, client: IpAddr) {
        self.total += 1;
        if let Some((_, n)) = self.clients.iter_mut().find(|(c, _)| *c == client) {
            *n += 1;
        } else if self.clients.len() < NAMED_CLIENTS {
            self.clients.push((client, 1));
        } else {
            self.others += 1;
        }
    }

    /// Events counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Starts counting afresh.
    pub fn clear(&mut self) {
        *self = Tally::default();
    }
}

/// `127.0.0.2 (998), 10.0.0.7 (2) and 5 from other addresses`, busiest first.
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total == 0 {
            return f.write_str("none");
        }
        let mut clients = self.clients.clone();
        clients.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (i, (client, n)) in clients.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({n})", Client(*client))?;
        }
        if self.others > 0 {
            write!(f, " and {} from other addresses", self.others)?;
        }
        Ok(())
    }
}

/// When a summary line may be written: at most once every [`LOG_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    /// True, and the clock restarted, when a line may be written at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_and_ipv6_slash_64s() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client_of(v4), v4);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(client_of(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_of(a), client_of(b));
        assert_eq!(Client(client_of(a)).to_string(), "2001:db8:1:2::/64");
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(client_of(a), client_of(other));
    }

    #[test]
    fn a_tally_names_the_busiest_clients_in_bounded_memory() {
        let mut t = Tally::default();
        assert_eq!(t.to_string(), "none");
        for i in 0..1000u32 {
            t.add(IpAddr::from(i.to_be_bytes()));
        }
        for _ in 0..5 {
            t.add("127.0.0.2".parse().unwrap());
        }
        assert_eq!(t.total(), 1005);
        assert_eq!(t.clients.len(), NAMED_CLIENTS);
        let line = t.to_string();
        assert!(line.ends_with(" and 997 from other addresses"), "{line}");
        t.clear();
        t.add("127.0.0.2".parse().unwrap());
        t.add("127.0.0.2".parse().unwrap());
        t.add("127.0.0.1".parse().unwrap());
        assert_eq!(t.to_string(), "127.0.0.2 (2), 127.0.0.1 (1)");
    }

    #[test]
    fn the_throttle_lets_a_line_through_every_few_seconds() {
        let mut th = Throttle::default();
        let t0 = Instant::now();
        assert!(th.due(t0));
        assert!(!th.due(t0 + Duration::from_secs(1)));
        assert!(!th.due(t0 + LOG_EVERY - Duration::from_millis(1)));
        assert!(th.due(t0 + LOG_EVERY));
        assert!(!th.due(t0 + LOG_EVERY + Duration::from_secs(1)));
    }
}
