//! What actix-web's server does not bound by itself: connections per client, the time a kept-alive
//! connection may take over its next request head, and the time a request body may take.
//!
//! Every accepted connection is registered by [`Connections::on_connect`] (the server's
//! `on_connect` hook) with a duplicate of its socket, so that it can be closed from outside the
//! server, and a [`Ticket`] in the connection's data that unregisters it when the connection
//! ends. [`guard_requests`] marks it busy while a request is served. Then:
//!
//! - A client holding [`Limits::per_client`] connections that opens another makes room: its
//!   connection that has been idle the longest (one that never finished a request first) is
//!   closed. If all of them are busy, the new one is refused with a 503. The same holds for all
//!   clients together at [`Limits::total`], which stays under the server's own `max_connections`
//!   so that a new connection is always accepted at once and never waits in the kernel's backlog
//!   behind slow ones. A slow client can hold its own connections, never another client's, and
//!   a client's own new connection always gets through, so a health check or a scrape from the
//!   same address as a slowloris is still answered at once.
//! - [`Connections::sweep`] closes a connection without a request in flight once it has been idle
//!   past its limit: [`Limits::first_request`] after it opened (the server's own head timeout
//!   does this too, with a 408), [`Limits::between_requests`] after its last response. The
//!   server's keep-alive timer stops at the first byte of a next request, so without this a client
//!   could hold a kept-alive connection for ever by sending that request a byte at a time.
//! - [`guard_requests`] cuts a request body off after [`BODY_TIMEOUT`].
//!
//! Memory is bounded by the server's `max_connections`: the hook runs only for accepted
//! connections, and each one's entry goes with it.

use std::any::Any;
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use actix_web::{Error, HttpMessage};
use futures_util::Stream;

use super::tally::{Tally, Throttle, client_of};

/// A request body must arrive within this time of its request head.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle connections are swept and pending log lines written.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A sweep closes a connection this long after its limit, leaving the server's own timers, which
/// answer 408, to act first.
const SWEEP_GRACE: Duration = Duration::from_secs(1);

/// What a refused connection is told.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
    retry-after: 1\r\nconnection: close\r\ncontent-length: 50\r\n\r\n\
    {\"error\":\"too many connections from this address\"}";
/// What a connection closed before it finished a request is told.
const TIMED_OUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// The bounds; [`super`] sets them from its constants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections one client may hold.
    pub per_client: usize,
    /// Connections all clients together may hold.
    pub total: usize,
    /// How long a new connection may take over its first request head.
    pub first_request: Duration,
    /// How long a kept-alive connection may stay without a request in flight.
    pub between_requests: Duration,
}

/// One registered connection.
#[derive(Debug)]
struct Conn {
    client: IpAddr,
    /// A duplicate of the connection's socket, to close it with; `None` in unit tests.
    socket: Option<TcpStream>,
    /// Requests in flight.
    busy: u32,
    /// A request was finished on it.
    served: bool,
    /// When it opened or last finished a request.
    idle_since: Instant,
    /// Closed by us; going.
    closing: bool,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Conn>,
    /// Connections per client, not counting those closing.
    open: HashMap<IpAddr, usize>,
    /// Idle connections closed to make room.
    evicted: Tally,
    /// New connections refused.
    refused: Tally,
    /// Connections closed for taking too long over a request head.
    slow: Tally,
    throttle: Throttle,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Close {
    Evicted,
    Slow,
}

impl Table {
    /// Registers a new connection of `client`, closing an idle one first when the client or the
    /// listener is full; `Err` gives the socket back when there is no room.
    fn admit(
        &mut self,
        client: IpAddr,
        socket: Option<TcpStream>,
        now: Instant,
        limits: &Limits,
    ) -> Result<u64, Option<TcpStream>> {
        let mine = self.open.get(&client).copied().unwrap_or(0);
        let live: usize = self.open.values().sum();
        let room = if self.conns.len() >= 2 * limits.total {
            // Closed ones the server has not dropped yet; it holds fewer than this.
            false
        } else if mine >= limits.per_client {
            self.evict(Some(client))
        } else if live >= limits.total {
            self.evict(None)
        } else {
            true
        };
        if !room {
            self.refused.add(client);
            return Err(socket);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                client,
                socket,
                busy: 0,
                served: false,
                idle_since: now,
                closing: false,
            },
        );
        *self.open.entry(client).or_default() += 1;
        Ok(id)
    }

    /// Closes the connection that has been idle the longest, of `client` or of anyone, preferring
    /// one that never finished a request; false when every one is busy.
    fn evict(&mut self, client: Option<IpAddr>) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && c.busy == 0 && client.is_none_or(|w| c.client == w))
            .min_by_key(|(_, c)| (c.served, c.idle_since))
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                self.close(id, Close::Evicted);
                true
            }
            None => false,
        }
    }

    /// Closes a registered connection: its entry stays until the server drops it.
    fn close(&mut self, id: u64, why: Close) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.closing {
            return;
        }
        conn.closing = true;
        if let Some(socket) = &conn.socket {
            shut(socket, (!conn.served).then_some(TIMED_OUT));
        }
        let client = conn.client;
        match why {
            Close::Evicted => self.evicted.add(client),
            Close::Slow => self.slow.add(client),
        }
        self.forget_open(client);
    }

    fn forget_open(&mut self, client: IpAddr) {
        if let Some(n) = self.open.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&client);
            }
        }
    }

    /// A connection the server dropped.
    fn remove(&mut self, id: u64, now: Instant, limits: &Limits) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if !conn.closing {
            self.forget_open(conn.client);
            // The server's head timeout closed it (its clock is coarse: it may fire a little
            // early).
            let open_for = now.saturating_duration_since(conn.idle_since);
            if !conn.served && open_for + SWEEP_GRACE >= limits.first_request {
                self.slow.add(conn.client);
            }
        }
    }

    fn busy(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy += 1;
        }
    }

    fn idle(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.busy = c.busy.saturating_sub(1);
            c.served = true;
            c.idle_since = now;
        }
    }

    /// Closes every idle connection past its limit.
    fn sweep(&mut self, now: Instant, limits: &Limits) {
        let overdue: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                let limit = if c.served {
                    limits.between_requests
                } else {
                    limits.first_request
                };
                !c.closing
                    && c.busy == 0
                    && now.saturating_duration_since(c.idle_since) > limit + SWEEP_GRACE
            })
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            self.close(id, Close::Slow);
        }
    }

    fn log_if_due(&mut self, now: Instant, limits: &Limits) {
        let (evicted, refused, slow) = (
            self.evicted.total(),
            self.refused.total(),
            self.slow.total(),
        );
        if evicted + refused + slow == 0 || !self.throttle.due(now) {
            return;
        }
        let mut parts = Vec::new();
        if evicted > 0 {
            parts.push(format!(
                "{evicted} idle closed to make room (at most {} per client, {} in all): {}",
                limits.per_client, limits.total, self.evicted
            ));
        }
        if refused > 0 {
            parts.push(format!(
                "{refused} new refused with 503, every other one busy: {}",
                self.refused
            ));
        }
        if slow > 0 {
            parts.push(format!(
                "{slow} closed for taking too long over a request head: {}",
                self.slow
            ));
        }
        tracing::warn!(
            evicted,
            refused,
            slow,
            "HTTP connections since the last report: {}",
            parts.join("; ")
        );
        self.evicted.clear();
        self.refused.clear();
        self.slow.clear();
    }
}

/// Writes `reply` if the socket takes it at once, and shuts the connection in both directions: the
/// server sees the end of its input and drops the connection.
fn shut(socket: &TcpStream, reply: Option<&[u8]>) {
    if let Some(reply) = reply {
        // The socket is non-blocking (the flag belongs to the socket, shared with the server's
        // descriptor): a full send buffer drops the reply, never waits.
        let _ = (&*socket).write(reply);
    }
    let _ = socket.shutdown(Shutdown::Both);
}

/// The connections the listener holds.
#[derive(Debug)]
pub(crate) struct Connections {
    table: Mutex<Table>,
    limits: Limits,
}

impl Connections {
    /// Nothing registered yet.
    pub fn new(limits: Limits) -> Connections {
        Connections {
            table: Mutex::new(Table::default()),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        crate::util::lock(&self.table)
    }

    /// The server's `on_connect` hook: registers the connection, or refuses it.
    pub(crate) fn on_connect(self: &Arc<Self>, io: &dyn Any, data: &mut Extensions) {
        let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        let socket = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => TcpStream::from(fd),
            Err(e) => {
                // Out of descriptors: it goes unregistered, still under the server's head timeout.
                tracing::warn!("cannot register an HTTP connection from {peer}: {e}");
                return;
            }
        };
        let client = client_of(peer.ip());
        let now = Instant::now();
        let mut table = self.lock();
        match table.admit(client, Some(socket), now, &self.limits) {
            Ok(id) => {
                data.insert(Ticket {
                    id,
                    conns: Arc::clone(self),
                });
            }
            Err(socket) => {
                if let Some(socket) = socket {
                    shut(&socket, Some(REFUSED));
                }
            }
        }
        table.log_if_due(now, &self.limits);
    }

    /// Closes idle connections past their limits and writes a pending log line.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut table = self.lock();
        table.sweep(now, &self.limits);
        table.log_if_due(now, &self.limits);
    }
}

/// A registered connection, in its connection data; unregisters it when the server drops it.
pub(crate) struct Ticket {
    id: u64,
    conns: Arc<Connections>,
}

impl Ticket {
    /// Another descriptor of the connection's socket, for a handler that writes to it itself
    /// (the dashboard's event stream); `None` when it has none (unit tests) or none is left.
    pub(crate) fn socket(&self) -> Option<TcpStream> {
        let table = self.conns.lock();
        table.conns.get(&self.id)?.socket.as_ref()?.try_clone().ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.conns
            .lock()
            .remove(self.id, Instant::now(), &self.conns.limits);
    }
}

/// Marks a connection busy while it serves a request.
struct Busy {
    id: u64,
    conns: Arc<Connections>,
}

impl Busy {
    fn new(ticket: &Ticket) -> Busy {
        ticket.conns.lock().busy(ticket.id);
        Busy {
            id: ticket.id,
            conns: Arc::clone(&ticket.conns),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conns.lock().idle(self.id, Instant::now());
    }
}

/// Middleware around every request: its connection is busy meanwhile, and its body must arrive
/// within [`BODY_TIMEOUT`].
pub(crate) async fn guard_requests(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let busy = req.conn_data::<Ticket>().map(Busy::new);
    let body = BodyDeadline {
        body: req.take_payload(),
        deadline: Box::pin(actix_web::rt::time::sleep(BODY_TIMEOUT)),
        expired: false,
    };
    req.set_payload(Payload::from(
        Box::pin(body) as Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>
    ));
    let res = next.call(req).await?;
    // Busy until the whole body is sent, not only until the handler returns: a streamed answer
    // (the dashboard's event stream) is a request in flight for as long as it lasts.
    Ok(res
        .map_into_boxed_body()
        .map_body(|_, body| HeldBody { body, _busy: busy }))
}

/// A response body that keeps its connection marked busy until it is sent or dropped.
struct HeldBody {
    body: actix_web::body::BoxBody,
    _busy: Option<Busy>,
}

impl MessageBody for HeldBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.body).poll_next(cx)
    }
}

/// A request body that fails with [`io::ErrorKind::TimedOut`] once its deadline passes.
struct BodyDeadline {
    body: Payload,
    deadline: Pin<Box<actix_web::rt::time::Sleep>>,
    expired: bool,
}

/// True when `e` is a body cut off by [`guard_requests`].
pub(crate) fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = Pin::new(&mut this.body).poll_next(cx) {
            return Poll::Ready(item);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired = true;
            return Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )))));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_client: 3,
        total: 5,
        first_request: Duration::from_secs(5),
        between_requests: Duration::from_secs(5),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn live(t: &Table, id: u64) -> bool {
        t.conns.get(&id).is_some_and(|c| !c.closing)
    }

    #[test]
    fn a_client_over_its_cap_makes_room_by_closing_its_own_idle_connections() {
        let mut t = Table::default();
        let t0 = Instant::now();
        let (slow, other) = (ip("127.0.0.2"), ip("127.0.0.1"));
        let ids: Vec<u64> = (0..3)
            .map(|i| {
                let at = t0 + Duration::from_millis(i);
                t.admit(slow, None, at, &LIMITS).unwrap()
            })
            .collect();
        let other_id = t.admit(other, None, t0, &LIMITS).unwrap();
        // The fourth of `slow` closes its oldest, never another client's.
        let fourth = t
            .admit(slow, None, t0 + Duration::from_millis(9), &LIMITS)
            .unwrap();
        assert!(!live(&t, ids[0]));
        assert!(live(&t, ids[1]) && live(&t, ids[2]) && live(&t, fourth));
        assert!(live(&t, other_id));
        assert_eq!(t.open[&slow], 3);
        assert_eq!(t.evicted.total(), 1);
        // Busy connections are not closed: with all three busy, a fourth is refused.
        for id in [ids[1], ids[2], fourth] {
            t.busy(id);
        }
        assert!(t.admit(slow, None, t0, &LIMITS).is_err());
        assert_eq!(t.refused.total(), 1);
        // One that finished a request goes after one that never did.
        t.idle(ids[1], t0);
        t.idle(ids[2], t0 + Duration::from_secs(1));
        let id = t
            .admit(slow, None, t0 + Duration::from_secs(2), &LIMITS)
            .unwrap();
        t.busy(id);
        assert!(!live(&t, ids[1]), "the one idle longest goes first");
        // The server dropping connections unregisters them.
        for id in [ids[0], ids[1]] {
            t.remove(id, t0, &LIMITS);
        }
        assert_eq!(t.conns.len(), 4);
    }

    #[test]
    fn a_full_listener_makes_room_from_anyone_idle() {
        let mut t = Table::default();
        let t0 = Instant::now();
        let first = t.admit(ip("10.0.0.1"), None, t0, &LIMITS).unwrap();
        for i in 2..=5 {
            let c = ip(&format!("10.0.0.{i}"));
            t.admit(c, None, t0 + Duration::from_millis(i), &LIMITS)
                .unwrap();
        }
        let newcomer = t.admit(ip("10.0.0.9"), None, t0, &LIMITS).unwrap();
        assert!(!live(&t, first) && live(&t, newcomer));
        assert_eq!(t.open.values().sum::<usize>(), LIMITS.total);
    }

    #[test]
    fn memory_is_bounded_by_the_connections_the_server_holds() {
        let mut t = Table::default();
        let t0 = Instant::now();
        let mut ids = Vec::new();
        for i in 0..10_000u32 {
            let c = IpAddr::from(i.to_be_bytes());
            if let Ok(id) = t.admit(c, None, t0, &LIMITS) {
                ids.push(id);
            }
            // The server drops what was closed.
            let closed: Vec<u64> = t
                .conns
                .iter()
                .filter(|(_, c)| c.closing)
                .map(|(id, _)| *id)
                .collect();
            for id in closed {
                t.remove(id, t0, &LIMITS);
            }
        }
        assert!(t.conns.len() <= LIMITS.total, "{}", t.conns.len());
        assert!(t.open.len() <= LIMITS.total);
        // Even if the server never dropped closed ones, the table stops growing.
        let mut t = Table::default();
        for _ in 0..1000 {
            let _ = t.admit(ip("10.0.0.1"), None, t0, &LIMITS);
        }
        assert_eq!(t.open[&ip("10.0.0.1")], LIMITS.per_client);
        assert_eq!(t.conns.len(), 2 * LIMITS.total);
    }

    #[test]
    fn a_sweep_closes_idle_connections_past_their_limit() {
        let mut t = Table::default();
        let t0 = Instant::now();
        let c = ip("127.0.0.1");
        let fresh = t.admit(c, None, t0, &LIMITS).unwrap();
        let kept = t.admit(c, None, t0, &LIMITS).unwrap();
        let working = t.admit(c, None, t0, &LIMITS).unwrap();
        t.busy(kept);
        t.idle(kept, t0 + Duration::from_secs(4));
        t.busy(working);
        let later = t0 + LIMITS.first_request + SWEEP_GRACE + Duration::from_millis(1);
        t.sweep(later, &LIMITS);
        assert!(!live(&t, fresh), "no request head in time");
        assert!(live(&t, kept), "its last response was 2 s ago");
        assert!(live(&t, working), "a request in flight");
        assert_eq!(t.slow.total(), 1);
        t.sweep(later + Duration::from_secs(4), &LIMITS);
        assert!(!live(&t, kept), "no next request in time");
        assert!(live(&t, working));
    }
}
