//! The HTTP listener under hostile clients, end to end on the real binary: hundreds of slow
//! connections (slowloris) while `/healthz` and `/metrics` must stay fast, a kept-alive connection
//! and a request body sent a byte at a time, and a flood of wrong tokens that must be logged and
//! slowed while the right token from another client goes through.
//!
//! Everything connects to 127.0.0.1 only. The hostile clients connect *from* other loopback
//! addresses (127.0.0.2 ...; Linux routes all of 127.0.0.0/8 to `lo`) so that they are other
//! clients than the probes, which connect from 127.0.0.1; some slow connections come from
//! 127.0.0.1 too. Every load is bounded in count and in time and stops by itself.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, Env, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const TOKEN: &str = "guard-e2e-token-0123456789";
/// The daemon's head timeout (`CLIENT_REQUEST_TIMEOUT`), keep-alive and body timeout.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How late after its timeout a slow connection may be closed and still pass.
const SLACK: Duration = Duration::from_secs(4);
/// A probe slower than this fails the test.
const FAST: Duration = Duration::from_secs(1);
/// No load runs longer than this.
const LOAD_FOR: Duration = Duration::from_secs(14);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the daemon listening on a free port of 127.0.0.1.
fn start_listening(env: &Env) -> (Daemon, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = env.start(&["--listen", &addr.to_string(), "--interval", "0.5"]);
    wait_until("the HTTP listener to answer", || {
        probe(addr, "GET", "/healthz", &[], "").is_some()
    });
    (daemon, addr)
}

/// A connection to `addr` from the loopback address `from`, or `None` when it is not accepted
/// within 2 s.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(from, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
        .await
        .ok()?
        .ok()
}

/// One answer: status, headers (lower-case names) and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn parse(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&raw[split + 4..]).to_string(),
    })
}

/// The raw text of a request that closes its connection.
fn request_text(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Sends a request over `stream` and reads the answer to its end (3 s at most).
fn exchange(mut stream: TcpStream, text: &str) -> Option<Reply> {
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(text.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse(&raw)
}

/// A request from 127.0.0.1; `None` when it gets no answer within 3 s.
fn probe(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Reply> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    exchange(stream, &request_text(method, path, headers, body))
}

/// What a slow client does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slow {
    /// Sends a request head a header line every half second, never ending it.
    Head,
    /// Sends one whole request, reads the answer, then its next request head as slowly.
    KeptAlive,
    /// Sends a whole POST head, then its body a byte every half second.
    Body,
}

/// How a slow connection ended.
#[derive(Debug)]
struct Outcome {
    kind: Slow,
    from: IpAddr,
    /// Not accepted at all.
    refused: bool,
    /// From the time it began to be slow (its connect, or the first answer for `KeptAlive`) to
    /// the server closing it; `None` if it was still open when the load ended.
    closed_after: Option<Duration>,
    /// What the server sent after it began to be slow.
    reply: Vec<u8>,
}

/// Reads what the server sends until it closes the connection, meanwhile sending `drip` every half
/// second, up to `until`.
async fn drip_until_closed(
    stream: &mut tokio::net::TcpStream,
    drip: &[u8],
    until: Instant,
    reply: &mut Vec<u8>,
) -> bool {
    let mut buf = [0u8; 512];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(500).min(left)) => {
                if stream.write_all(drip).await.is_err() {
                    return true;
                }
            }
        }
    }
}

async fn slow_client(
    kind: Slow,
    from: IpAddr,
    addr: SocketAddr,
    until: Instant,
    settled: Arc<AtomicUsize>,
) -> Outcome {
    let mut outcome = Outcome {
        kind,
        from,
        refused: true,
        closed_after: None,
        reply: Vec::new(),
    };
    let stream = connect_from(from, addr).await;
    settled.fetch_add(1, Ordering::SeqCst);
    let Some(mut stream) = stream else {
        return outcome;
    };
    outcome.refused = false;
    let mut start = Instant::now();
    let (opening, drip): (String, &[u8]) = match kind {
        Slow::Head => (
            "GET /healthz HTTP/1.1\r\nHost: t\r\n".into(),
            b"x-slow: 1\r\n",
        ),
        Slow::Body => (
            format!(
                "POST /api/v1/monitors HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Length: 100\r\n\r\n{{"
            ),
            b" ",
        ),
        Slow::KeptAlive => {
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .is_err()
            {
                return outcome;
            }
            // The whole first answer: a head and a JSON body.
            let mut first = Vec::new();
            let mut buf = [0u8; 512];
            while !(first.windows(4).any(|w| w == b"\r\n\r\n") && first.ends_with(b"}")) {
                match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => first.extend_from_slice(&buf[..n]),
                    _ => return outcome,
                }
            }
            start = Instant::now();
            ("GET /healthz HTTP/1.1\r\n".into(), b"x-slow: 1\r\n")
        }
    };
    if stream.write_all(opening.as_bytes()).await.is_err() {
        outcome.closed_after = Some(start.elapsed());
        return outcome;
    }
    if drip_until_closed(&mut stream, drip, until, &mut outcome.reply).await {
        outcome.closed_after = Some(start.elapsed());
    }
    outcome
}

/// Runs the slow clients, all at once, on a thread of their own; `settled` counts those that have
/// connected or been refused.
fn slow_load(
    addr: SocketAddr,
    clients: Vec<(Slow, IpAddr)>,
    settled: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<Outcome>> {
    std::thread::spawn(move || {
        let rt = runtime();
        let until = Instant::now() + LOAD_FOR;
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (kind, from) in clients {
                tasks.spawn(slow_client(kind, from, addr, until, Arc::clone(&settled)));
            }
            let mut outcomes = Vec::new();
            while let Some(o) = tasks.join_next().await {
                outcomes.push(o.unwrap());
            }
            outcomes
        })
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn slow_clients_are_dropped_and_health_checks_and_scrapes_stay_fast() {
    let env = Env::new(&format!("[http]\ntoken = \"{TOKEN}\"\n"));
    let (daemon, addr) = start_listening(&env);
    let slowloris: IpAddr = "127.0.0.2".parse().unwrap();
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut clients = vec![(Slow::Head, slowloris); 300];
    clients.extend([(Slow::Head, local); 40]);
    clients.push((Slow::KeptAlive, "127.0.0.3".parse().unwrap()));
    clients.push((Slow::Body, "127.0.0.4".parse().unwrap()));
    let n = clients.len();
    let settled = Arc::new(AtomicUsize::new(0));
    let load = slow_load(addr, clients, Arc::clone(&settled));
    wait_until("the slow connections to open", || {
        settled.load(Ordering::SeqCst) == n
    });

    // Meanwhile health checks and scrapes, from 127.0.0.1 like 40 of the slow connections.
    let began = Instant::now();
    let mut took = Vec::new();
    while began.elapsed() < Duration::from_secs(4) {
        for path in ["/healthz", "/metrics"] {
            let t = Instant::now();
            let reply = probe(addr, "GET", path, &[], "");
            let elapsed = t.elapsed();
            let reply = reply.unwrap_or_else(|| panic!("no answer to {path} after {elapsed:?}"));
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            assert!(
                elapsed < FAST,
                "{path} took {elapsed:?} under the slow load"
            );
            took.push(elapsed);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let max = took.iter().max().copied().unwrap();
    eprintln!(
        "{} probes under the slow load: median {:?}, max {max:?}",
        took.len(),
        median(took.clone())
    );

    let outcomes = load.join().unwrap();
    let from = |ip: IpAddr, kind: Slow| {
        outcomes
            .iter()
            .filter(move |o| o.from == ip && o.kind == kind)
    };
    // Every slow connection was accepted at once and closed by the daemon, none later than its
    // timeout.
    for o in &outcomes {
        assert!(!o.refused, "a connection was not accepted: {o:?}");
        let closed = o
            .closed_after
            .unwrap_or_else(|| panic!("a slow connection was never closed: {o:?}"));
        assert!(
            closed < HEAD_TIMEOUT + SLACK,
            "closed after {closed:?}: {o:?}"
        );
    }
    // The slowloris kept at most its share: the rest were closed at once to make room, and the
    // ones it kept were dropped at the head timeout, with a 408.
    let held: Vec<&Outcome> = from(slowloris, Slow::Head)
        .filter(|o| o.closed_after.unwrap() >= HEAD_TIMEOUT - Duration::from_secs(1))
        .collect();
    assert!(
        (10..=32).contains(&held.len()),
        "{} slow connections held to the timeout",
        held.len()
    );
    assert!(
        held.iter()
            .all(|o| o.reply.starts_with(b"HTTP/1.1 408 Request Timeout")),
        "{held:?}"
    );
    // A kept-alive connection sending its next head slowly goes at the keep-alive limit.
    let kept: Vec<&Outcome> = from("127.0.0.3".parse().unwrap(), Slow::KeptAlive).collect();
    assert!(kept[0].closed_after.unwrap() >= HEAD_TIMEOUT - Duration::from_secs(1));
    // A body sent slowly is cut off with a 408.
    let body: Vec<&Outcome> = from("127.0.0.4".parse().unwrap(), Slow::Body).collect();
    let reply = String::from_utf8_lossy(&body[0].reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within 5 s"), "{reply}");

    // Said in the log, a summary line every few seconds at most.
    wait_until("the slow connections in the log", || {
        daemon
            .log()
            .contains("closed for taking too long over a request head")
    });
    let log = daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP connections since the last report"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("127.0.0.2 (")),
        "{lines:#?}"
    );
    let minutes = began.elapsed().as_secs() / 5 + 3;
    assert!(lines.len() as u64 <= minutes, "{lines:#?}");
    assert_eq!(probe(addr, "GET", "/healthz", &[], "").unwrap().status, 200);
}

/// A write from `from` with `token`; the status and how long it took.
fn write_from(
    rt: &Runtime,
    from: IpAddr,
    addr: SocketAddr,
    token: &str,
    id: &str,
) -> (Reply, Duration) {
    let t = Instant::now();
    let stream = rt
        .block_on(connect_from(from, addr))
        .expect("connected")
        .into_std()
        .unwrap();
    stream.set_nonblocking(false).unwrap();
    let body = format!(r#"{{"kind":"workspace","id":"{id}"}}"#);
    let bearer = format!("Bearer {token}");
    let text = request_text(
        "POST",
        "/api/v1/monitors",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        &body,
    );
    let reply = exchange(stream, &text).expect("an answer");
    (reply, t.elapsed())
}

/// The sum of `key=N` over the log lines that contain `marker`.
fn logged_sum(log: &str, marker: &str, key: &str) -> u64 {
    let needle = format!(" {key}=");
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let at = l.find(&needle)? + needle.len();
            l[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[test]
fn wrong_tokens_are_logged_and_slowed_and_never_slow_the_right_token() {
    let env = Env::new(&format!("[http]\ntoken = \"{TOKEN}\"\n"));
    let (daemon, addr) = start_listening(&env);
    let guesser: IpAddr = "127.0.0.2".parse().unwrap();
    let operator: IpAddr = "127.0.0.1".parse().unwrap();
    const GUESSES: usize = 1000;

    let began = Instant::now();
    let attack = std::thread::spawn(move || {
        let rt = runtime();
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for i in 0..GUESSES {
            if began.elapsed() > LOAD_FOR {
                break;
            }
            let (reply, _) = write_from(&rt, guesser, addr, &format!("guess-{i:020}"), "w1");
            if reply.status == 429 {
                retry_after = reply
                    .headers
                    .iter()
                    .find(|(k, _)| k == "retry-after")
                    .map(|(_, v)| v.clone());
            }
            statuses.push(reply.status);
        }
        (statuses, retry_after)
    });

    // The operator's right token, from another address, meanwhile: never slowed, never refused.
    let rt = runtime();
    let mut took = Vec::new();
    while !attack.is_finished() {
        let (reply, elapsed) = write_from(&rt, operator, addr, TOKEN, "w1");
        assert!(
            matches!(reply.status, 200 | 201),
            "the right token was refused: {reply:?}"
        );
        assert!(elapsed < FAST, "the right token took {elapsed:?}");
        took.push(elapsed);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (statuses, retry_after) = attack.join().unwrap();
    let attack_took = began.elapsed();
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    eprintln!(
        "{} guesses in {attack_took:?}: {} answered 401, {} 429; {} right-token writes meanwhile, \
         median {:?}",
        statuses.len(),
        count(401),
        count(429),
        took.len(),
        median(took.clone())
    );
    assert_eq!(
        statuses.len(),
        GUESSES,
        "the guesses did not finish in time"
    );
    assert!(!took.is_empty());
    assert_eq!(&statuses[..5], &[401; 5], "five tries are free");
    assert_eq!(
        statuses[5], 401,
        "the sixth is checked, and locks the guesser out"
    );
    assert!(count(401) <= 16, "{} guesses were checked", count(401));
    assert_eq!(count(401) + count(429), GUESSES);
    assert!(
        retry_after
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "{retry_after:?}"
    );
    // While locked out even the right token is refused from the guesser's address: the lockout
    // does not tell a guess that is right.
    let (locked, _) = write_from(&rt, guesser, addr, TOKEN, "w1");
    assert_eq!(locked.status, 429, "{locked:?}");
    assert!(
        locked
            .body
            .contains("too many failed authentications from 127.0.0.2")
    );
    // A wrong token from the operator's address is only a 401: its record is its own.
    let (wrong, _) = write_from(&rt, operator, addr, "not-the-token-0000000000", "w1");
    assert_eq!(wrong.status, 401, "{wrong:?}");

    // Logged: with the count and the address, at most one line every few seconds.
    let marker = "failed HTTP authentication since the last report";
    let total = (GUESSES + 2) as u64;
    wait_until("every failure in the log", || {
        let log = daemon.log();
        logged_sum(&log, marker, "failed") + logged_sum(&log, marker, "refused") == total
    });
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
    assert!(
        lines.iter().any(|l| l.contains("127.0.0.2 (")),
        "{lines:#?}"
    );
    let most = began.elapsed().as_secs() / 5 + 2;
    assert!(
        lines.len() as u64 <= most,
        "{} lines: {lines:#?}",
        lines.len()
    );
}
