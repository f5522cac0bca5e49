//! The CLI's side of the control socket: one request, one answer, with timeouts.
//!
//! A daemon that does not answer in time (stopped with SIGSTOP, stuck, overloaded) gets a
//! [`ClientError::Timeout`] naming its pid. Whether a write it was sent took effect is then
//! unknown (a stopped daemon applies it when it resumes), so every write is idempotent on the
//! daemon's side: sending it again is always safe.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Request, Response};

/// How long the CLI waits for the daemon unless [`TIMEOUT_ENV`] says otherwise.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment variable: seconds the CLI waits for the daemon (e.g. `30`, `0.5`).
pub(crate) const TIMEOUT_ENV: &str = "HEALTH_MONITOR_TIMEOUT";

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the caller may fall back to the database.
    #[error("no daemon is listening on {0}")]
    NoDaemon(String),
    /// The daemon did not answer in time; the message names it and says what that means.
    #[error("{0}")]
    Timeout(String),
    /// Anything else: the connection broke, the answer was unreadable, or the daemon refused
    /// the request (its message).
    #[error("{0}")]
    Failed(String),
}

/// How long to wait for the daemon: [`TIMEOUT_ENV`] when it holds a positive number of
/// seconds (at most a day), else [`DEFAULT_TIMEOUT`].
pub fn timeout() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// Sends one request and returns the daemon's data, or its error as `Failed`.
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    request_with_timeout(socket, request, timeout())
}

/// Like [`request`], waiting up to `timeout` for the answer (for long tasks such as vacuum).
pub(crate) fn request_with_timeout(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let stream = connect(socket, self::timeout().max(timeout), request)?;
    let failed = |e: std::io::Error| ClientError::Failed(format!("control socket: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream
        .set_write_timeout(Some(self::timeout()))
        .map_err(failed)?;
    let io_failed = |e: std::io::Error, waited: Duration| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout(timed_out(socket, Some(&stream), waited, request))
        } else {
            failed(e)
        }
    };
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| io_failed(e, self::timeout()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| io_failed(e, timeout))?;
    if answer.is_empty() {
        return Err(ClientError::Failed(
            "the daemon closed the connection without answering".into(),
        ));
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Failed(format!("unreadable answer from the daemon: {e}")))?;
    if response.ok {
        Ok(response.data.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Failed(
            response
                .error
                .unwrap_or_else(|| "the daemon refused the request".into()),
        ))
    }
}

/// Connects within `timeout`. A daemon that is stopped still has its connections accepted by
/// the kernel, until its backlog is full; then a connect would wait for ever, so it runs on a
/// thread of its own (left behind on a timeout: the CLI exits soon after).
fn connect(socket: &Path, timeout: Duration, request: &Request) -> Result<UnixStream, ClientError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = socket.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        });
    let connected = match spawned {
        Ok(_) => match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                return Err(ClientError::Timeout(timed_out(
                    socket, None, timeout, request,
                )));
            }
        },
        // No thread to be had: connect here, without a bound.
        Err(_) => UnixStream::connect(socket),
    };
    match connected {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ClientError::NoDaemon(socket.display().to_string()))
        }
        Err(e) => Err(ClientError::Failed(format!(
            "cannot connect to {}: {e}",
            socket.display()
        ))),
    }
}

/// True for requests that change something (and whose effect is unknown after a timeout).
fn is_write(request: &Request) -> bool {
    !matches!(
        request,
        Request::Ping {} | Request::Status {} | Request::List {} | Request::SilenceList {}
    )
}

/// The message for a daemon that did not answer within `waited`: who it is, what state it is
/// in, what became of the request, and that retrying is safe.
fn timed_out(
    socket: &Path,
    stream: Option<&UnixStream>,
    waited: Duration,
    request: &Request,
) -> String {
    let pid = stream.and_then(peer_pid).or_else(|| lock_file_pid(socket));
    let who = match pid {
        Some(pid) => format!("the daemon (pid {pid})"),
        None => "the daemon".to_string(),
    };
    let why = match pid.and_then(process_state) {
        Some('T') | Some('t') => {
            let pid = pid.unwrap_or_default();
            format!("it is stopped (SIGSTOP or a debugger); `kill -CONT {pid}` resumes it")
        }
        Some('Z') => "it has exited but was not reaped".to_string(),
        Some('D') => "it is blocked in the kernel (disk or network I/O)".to_string(),
        _ => "it may be stuck or overloaded".to_string(),
    };
    let outcome = if is_write(request) {
        "The outcome is unknown: the request may still be applied when the daemon gets to it. \
         Retrying is safe: the same request again has the same effect as once"
    } else {
        "Retrying is safe"
    };
    format!(
        "{who} did not answer on {} within {}: {why}. {outcome} ({TIMEOUT_ENV}=SECONDS waits \
         longer).",
        socket.display(),
        humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
    )
}

/// The pid of the process listening on the other end (`SO_PEERCRED`: the kernel records it at
/// `listen()`, and answers even while that process is stopped).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    let _entered = runtime.enter();
    let clone = stream.try_clone().ok()?;
    clone.set_nonblocking(true).ok()?;
    let stream = tokio::net::UnixStream::from_std(clone).ok()?;
    let pid = stream.peer_cred().ok()?.pid()?;
    u32::try_from(pid).ok().filter(|p| *p > 0)
}

/// The pid in the instance lock file, when the socket is the default `<db-path>.sock`.
fn lock_file_pid(socket: &Path) -> Option<u32> {
    let db = socket.to_str()?.strip_suffix(".sock")?;
    crate::store::file::holder_pid(Path::new(db))
}

/// The one-letter state of a process (`R`, `S`, `D`, `T`...) from `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: the state follows the last `)`.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_daemon_times_out_with_its_pid_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.sock");
        // A listener that never answers stands for a stopped daemon.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let add = Request::Remove {
            kind: crate::model::MonitorKind::Agent,
            id: "a1".into(),
        };
        let started = std::time::Instant::now();
        let err = request_with_timeout(&path, &add, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        let ClientError::Timeout(message) = err else {
            panic!("{err:?}");
        };
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(
            message.contains("unknown") && message.contains("safe"),
            "{message}"
        );
        let err = request_with_timeout(&path, &Request::Status {}, Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("unknown") && err.contains("Retrying is safe"),
            "{err}"
        );
    }

    #[test]
    fn the_process_state_is_read_past_the_command_name() {
        assert!(matches!(
            process_state(std::process::id()),
            Some('R') | Some('S')
        ));
        assert_eq!(process_state(u32::MAX), None);
    }
}
