//! The CLI's side of the control socket: one request, one answer, with timeouts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Request, Response};

/// How long the CLI waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the caller may fall back to the database.
    #[error("no daemon is listening on {0}")]
    NoDaemon(String),
    #[error("{0}")]
    Failed(String),
}

/// Sends one request and returns the daemon's data, or its error as `Failed`.
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    request_with_timeout(socket, request, TIMEOUT)
}

/// Like [`request`], waiting up to `timeout` for the answer (for long tasks such as vacuum).
pub fn request_with_timeout(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoDaemon(socket.display().to_string()));
        }
        Err(e) => {
            return Err(ClientError::Failed(format!(
                "cannot connect to {}: {e}",
                socket.display()
            )));
        }
    };
    let failed = |e: std::io::Error| ClientError::Failed(format!("control socket: {e}"));
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(failed)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(failed)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(failed)?;
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
