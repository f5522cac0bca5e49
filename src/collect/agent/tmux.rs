//! Asking tmux, within a time limit, for a session's pane, the running sessions and all panes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::model::AgentOptions;

/// How long `tmux` may take to answer.
const TMUX_TIMEOUT: Duration = Duration::from_secs(2);

/// A tmux session on a given server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmuxTarget {
    /// The session's name, matched exactly (not as a prefix, as tmux would).
    pub session: String,
    /// `tmux -L NAME`; `None` is tmux's default server.
    pub socket: Option<String>,
}

impl TmuxTarget {
    pub(super) fn of(session: &str, options: &AgentOptions) -> Self {
        TmuxTarget {
            session: session.to_string(),
            socket: options.tmux_socket.clone(),
        }
    }
}

/// What tmux said about a session.
pub(super) enum TmuxAnswer {
    Pane(u32),
    NoSession,
    NoAnswer,
}

/// What one tmux command gave.
enum TmuxRun {
    Output(String),
    /// It ran and said no (no such session, no server), or there is no tmux.
    Failed,
    /// It did not answer within [`TMUX_TIMEOUT`].
    NoAnswer,
}

/// Runs `tmux [-L SOCKET] ARGS` with a time limit (a wedged tmux server must not hold a cycle).
fn run_tmux(socket: Option<&str>, args: &[&str]) -> TmuxRun {
    let mut command = Command::new("tmux");
    if let Some(socket) = socket {
        command.args(["-L", socket]);
    }
    let Ok(mut child) = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return TmuxRun::Failed;
    };
    let deadline = Instant::now() + TMUX_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return TmuxRun::Failed,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return TmuxRun::NoAnswer;
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    TmuxRun::Output(out)
}

/// The pid of the first pane of a tmux session (the session name is matched exactly).
pub(super) fn tmux_pane_pid(target: &TmuxTarget) -> TmuxAnswer {
    let name = format!("={}", target.session);
    let args = ["list-panes", "-s", "-t", &name, "-F", "#{pane_pid}"];
    match run_tmux(target.socket.as_deref(), &args) {
        TmuxRun::Output(out) => match out.lines().next().and_then(|l| l.trim().parse().ok()) {
            Some(pid) => TmuxAnswer::Pane(pid),
            None => TmuxAnswer::NoSession,
        },
        TmuxRun::Failed => TmuxAnswer::NoSession,
        TmuxRun::NoAnswer => {
            tracing::warn!(session = %target.session, socket = ?target.socket, "tmux did not answer in time");
            TmuxAnswer::NoAnswer
        }
    }
}

/// The names of the running sessions of a tmux server (`None`: the default one); empty with no
/// server or no tmux; `None` when tmux does not answer in time.
pub fn tmux_sessions(socket: Option<&str>) -> Option<std::collections::HashSet<String>> {
    match run_tmux(socket, &["list-sessions", "-F", "#{session_name}"]) {
        TmuxRun::Output(out) => Some(out.lines().map(|l| l.trim().to_string()).collect()),
        TmuxRun::Failed => Some(Default::default()),
        TmuxRun::NoAnswer => None,
    }
}

/// The process of every pane of every session of a tmux server; empty with no server; `None`
/// when tmux does not answer in time.
pub fn tmux_pane_pids(socket: Option<&str>) -> Option<Vec<u32>> {
    match run_tmux(socket, &["list-panes", "-a", "-F", "#{pane_pid}"]) {
        TmuxRun::Output(out) => Some(out.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        TmuxRun::Failed => Some(Vec::new()),
        TmuxRun::NoAnswer => None,
    }
}
