//! Test helpers for the sinks: fixed alerts and notices, hook scripts, a scripted HTTP server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Receiver, Sender};

use super::{Notice, NoticeState};
use crate::alerts::AlertEvent;
use crate::model::{HealthAlert, HealthStatus, ResourceType};

/// 2026-11-27T12:00:00Z plus `secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + chrono::Duration::seconds(secs)
}

/// A stored (id 42) workspace size alert opened at `at(secs)`, as the engine builds it.
pub(crate) fn alert_at(secs: i64) -> HealthAlert {
    HealthAlert {
        id: Some(42),
        resource_type: ResourceType::Workspace,
        resource_id: "w1".into(),
        alert_type: "workspace_size_mb".into(),
        severity: HealthStatus::Unhealthy,
        message: "workspace w1: workspace_size_mb is 1500 MB (>= warning threshold 1000)".into(),
        timestamp: at(secs),
        metadata: serde_json::json!({
            "metric_name": "workspace_size_mb",
            "value": 1500.0,
            "threshold_warning": 1000.0,
            "threshold_critical": 5000.0,
            "unit": "MB",
        }),
        resolved: false,
        resolved_at: None,
        last_notified_at: at(secs),
        acknowledged_at: None,
    }
}

/// A notice about [`alert_at`]`(0)` in `state`: reminded at 300 s, resolved at 600 s.
pub fn notice(state: NoticeState, message: &str) -> Notice {
    let mut a = alert_at(0);
    a.message = message.to_string();
    let event = match state {
        NoticeState::Firing => AlertEvent::Fired(a),
        NoticeState::Reminder => {
            a.last_notified_at = at(300);
            AlertEvent::Reminder(a)
        }
        NoticeState::Resolved => {
            a.resolved = true;
            a.resolved_at = Some(at(600));
            AlertEvent::Resolved(a)
        }
    };
    Notice::from_event(&event, at(0)).unwrap()
}

/// Writes an executable `/bin/sh` script into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Polls `check` until it holds or `limit` passes; true when it held.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How the test server answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Read the request and never answer (until the server is dropped).
    Hang,
}

/// One request as the server read it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    /// The first value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 server on 127.0.0.1 answering with a script of replies, then 200s.
pub(crate) struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<Vec<Recorded>>>,
    arrivals: Receiver<Recorded>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    /// Connections left hanging, closed when the server is dropped.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl TestServer {
    /// Starts serving; each connection carries one request.
    pub fn start(script: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::unbounded();
        let next = Arc::new(AtomicUsize::new(0));
        let (log2, held2, stop2) = (log.clone(), held.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let reply = script
                    .get(next.fetch_add(1, Ordering::SeqCst))
                    .copied()
                    .unwrap_or(Reply::Status(200));
                let (log, held, tx) = (log2.clone(), held2.clone(), tx.clone());
                std::thread::spawn(move || serve(conn, reply, &log, &held, &tx));
            }
        });
        TestServer {
            url: format!("http://{addr}"),
            log,
            arrivals: rx,
            stop,
            addr,
            held,
        }
    }

    /// The next request to arrive, waiting at most `limit`.
    pub(crate) fn next_request(&self, limit: Duration) -> Option<Recorded> {
        self.arrivals.recv_timeout(limit).ok()
    }

    /// Every request so far, in arrival order.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.held.lock().unwrap().clear();
    }
}

fn serve(
    conn: TcpStream,
    reply: Reply,
    log: &Mutex<Vec<Recorded>>,
    held: &Mutex<Vec<TcpStream>>,
    tx: &Sender<Recorded>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut reader) = conn.try_clone().map(BufReader::new) else {
        return;
    };
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // The wake-up connection of Drop, or a client that gave up.
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let req = Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    log.lock().unwrap().push(req.clone());
    let _ = tx.send(req);
    match reply {
        Reply::Hang => held.lock().unwrap().push(conn),
        Reply::Status(code) => {
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {code} Scripted\r\nContent-Length: 7\r\nConnection: close\r\n\r\nanswer\n"
            );
        }
    }
}
