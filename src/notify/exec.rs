//! The exec sink: runs a program directly (never through a shell) with the notice as one JSON
//! line on stdin and as `HEALTH_MONITOR_*` environment variables.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::Notice;
use super::dispatch::Sink;
use crate::config::outputs::ExecSink;

/// Bytes of stdout and of stderr kept for the log; the rest is read and thrown away.
pub(crate) const OUTPUT_LIMIT: usize = 4096;

/// How often a running hook is checked for exit. Hooks are short; 10 ms costs nothing.
const POLL: Duration = Duration::from_millis(10);

/// How long to wait for output once the hook is gone: a background child that kept the pipes
/// open must not hold the sink.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// What a hook that ran to the end printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutput {
    /// How it exited (always success when returned by [`run_hook`], any from [`run_program`]).
    pub status: ExitStatus,
    /// Up to [`OUTPUT_LIMIT`] bytes, lossy UTF-8, marked when cut.
    pub stdout: String,
    /// Like `stdout`.
    pub stderr: String,
}

/// Runs `sink`'s program once for `notice`. `Ok` when it exits 0 within `timeout`; otherwise an
/// error naming what went wrong, with its output. On timeout its whole process group is killed
/// and reaped before this returns.
pub(crate) fn run_hook(
    sink: &ExecSink,
    notice: &Notice,
    timeout: Duration,
) -> Result<HookOutput, String> {
    let output = run_program(sink, Some(notice), timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failure(&output))
    }
}

/// The error [`run_hook`] gives for a program that ran to the end and failed: its exit status
/// and output.
pub fn failure(output: &HookOutput) -> String {
    with_output(
        format!("exited with {}", output.status),
        &output.stdout,
        &output.stderr,
    )
}

/// Runs `sink`'s program once like [`run_hook`], but hands back what it printed whatever its
/// exit status, for callers that must tell one failure from another (`gt escalate close` of an
/// escalation Gas Town no longer knows). `notice` goes to its stdin and environment; without
/// one its stdin is empty. `Err` only when it could not start, timed out, or could not be
/// waited for.
pub(crate) fn run_program(
    sink: &ExecSink,
    notice: Option<&Notice>,
    timeout: Duration,
) -> Result<HookOutput, String> {
    let deadline = Instant::now() + timeout;
    let mut child = spawn(sink, notice)?;
    let pid = child.id();

    // Feeding stdin from a thread: a hook that never reads cannot block us, and one that exits
    // without reading gives EPIPE there, which is fine (Rust ignores SIGPIPE).
    if let Some(mut stdin) = child.stdin.take() {
        let line = notice.map(Notice::to_json_line).unwrap_or_default();
        let _ = std::thread::Builder::new()
            .name("notify-stdin".into())
            .spawn(move || {
                let _ = stdin.write_all(line.as_bytes());
            });
    }
    let stdout = child.stdout.take().map(capture);
    let stderr = child.stderr.take().map(capture);

    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => {
            // The child is not reaped yet, so its pid (= process group id) cannot have been reused.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            Err(format!(
                "timed out after {}; killed its process group",
                seconds(timeout)
            ))
        }
        Err(e) => {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            Err(format!("cannot wait for it: {e}"))
        }
    };
    let grace = Instant::now() + OUTPUT_GRACE;
    let collect = |rx: Option<Receiver<String>>| {
        rx.and_then(|rx| rx.recv_deadline(grace).ok())
            .unwrap_or_default()
    };
    let stdout = collect(stdout);
    let stderr = collect(stderr);
    match status {
        Ok(status) => Ok(HookOutput {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(with_output(e, &stdout, &stderr)),
    }
}

fn spawn(sink: &ExecSink, notice: Option<&Notice>) -> Result<Child, String> {
    let mut cmd = Command::new(&sink.program);
    if let Some(dir) = &sink.cwd {
        cmd.current_dir(dir);
    }
    cmd.args(&sink.args)
        .envs(notice.map(Notice::env_vars).unwrap_or_default())
        // Only the daemon speaks to systemd; a hook must not feed its watchdog.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("HEALTH_MONITOR_FAULTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0);
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            // ETXTBSY: the script is still open for writing somewhere (being replaced, or a
            // fork in another thread inherited the descriptor for a moment). It passes.
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(spawn_error(&sink.program, &e)),
        }
    }
}

/// Says why a program could not start, in terms an operator can act on.
fn spawn_error(program: &Path, e: &std::io::Error) -> String {
    let p = program.display();
    match e.kind() {
        ErrorKind::NotFound => format!(
            "cannot run {p}: program not found (or its #! interpreter is missing); \
             it is run directly, not through a shell, so give a path or a name on PATH"
        ),
        ErrorKind::PermissionDenied => {
            format!("cannot run {p}: permission denied (is it executable?)")
        }
        _ => format!("cannot run {p}: {e}"),
    }
}

/// Waits for the child to exit until `deadline`; `Ok(None)` when it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Reads a pipe to its end on a thread, keeping the first [`OUTPUT_LIMIT`] bytes.
fn capture(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = std::thread::Builder::new()
        .name("notify-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut cut = false;
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = OUTPUT_LIMIT - kept.len();
                        kept.extend_from_slice(&buf[..n.min(room)]);
                        // Keep draining past the limit so the hook never blocks on a full pipe.
                        cut |= n > room;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let mut text = String::from_utf8_lossy(&kept).into_owned();
            if cut {
                text.push_str("…[truncated]");
            }
            let _ = tx.send(text);
        });
    rx
}

fn with_output(mut error: String, stdout: &str, stderr: &str) -> String {
    for (name, text) in [("stderr", stderr), ("stdout", stdout)] {
        let text = text.trim();
        if !text.is_empty() {
            error.push_str(&format!("; {name}: {text}"));
        }
    }
    error
}

fn seconds(d: Duration) -> String {
    format!("{}s", crate::alerts::format_number(d.as_secs_f64()))
}

/// The exec sink as the dispatcher drives it.
pub(crate) struct ExecHook {
    sink: ExecSink,
}

impl ExecHook {
    /// A hook for one configured program.
    pub(crate) fn new(sink: ExecSink) -> Self {
        ExecHook { sink }
    }
}

impl Sink for ExecHook {
    fn name(&self) -> String {
        format!("exec:{}", self.sink.program.display())
    }

    fn timeout(&self) -> Duration {
        self.sink.timeout
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        let out = run_hook(&self.sink, notice, timeout)?;
        tracing::debug!(
            program = %self.sink.program.display(),
            stdout = %out.stdout.trim(),
            stderr = %out.stderr.trim(),
            "exec hook ran"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{notice, script, wait_until as eventually};
    use super::*;
    use crate::config::outputs::NotifySettings;
    use crate::notify::{NoticeState, Notifier, Timings};

    fn hook(program: &Path, timeout: Duration) -> ExecSink {
        ExecSink {
            program: program.to_path_buf(),
            args: Vec::new(),
            timeout,
            cwd: None,
        }
    }

    fn env_of(path: &Path) -> std::collections::HashMap<String, String> {
        let raw = std::fs::read(path).unwrap();
        raw.split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_hook_gets_the_notice_on_stdin_and_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "save.sh",
            r#"cat > "$1/stdin.json"; env -0 > "$1/env"; echo hello; echo oops >&2"#,
        );
        let mut sink = hook(&prog, Duration::from_secs(10));
        sink.args = vec![dir.path().display().to_string()];
        let n = notice(NoticeState::Firing, "disk almost full");
        let out = run_hook(&sink, &n, sink.timeout).unwrap();
        assert_eq!(out.stdout, "hello\n");
        assert_eq!(out.stderr, "oops\n");

        let line = std::fs::read_to_string(dir.path().join("stdin.json")).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "one JSON line: {line:?}");
        let back: Notice = serde_json::from_str(&line).unwrap();
        assert_eq!(back, n);

        let env = env_of(&dir.path().join("env"));
        for (k, v) in n.env_vars() {
            assert_eq!(env.get(&k), Some(&v), "{k}");
        }
        // The daemon's own environment is passed on (a hook needs PATH).
        assert!(env.contains_key("PATH"));
    }

    #[test]
    fn shell_syntax_in_a_message_arrives_literally_and_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pwned");
        let prog = script(
            dir.path(),
            "save.sh",
            r#"cat > "$1/stdin.json"; printf '%s' "$HEALTH_MONITOR_MESSAGE" > "$1/message""#,
        );
        let mut sink = hook(&prog, Duration::from_secs(10));
        sink.args = vec![dir.path().display().to_string()];
        let m = marker.display();
        let message = format!(
            "$(touch {m}) `touch {m}`; touch {m} && echo \"quoted\" 'single' | $HOME > {m}"
        );
        let n = notice(NoticeState::Firing, &message);
        run_hook(&sink, &n, sink.timeout).unwrap();

        let saved = std::fs::read_to_string(dir.path().join("message")).unwrap();
        assert_eq!(saved, message);
        let back: Notice =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdin.json")).unwrap())
                .unwrap();
        assert_eq!(back.message, message);
        assert!(!marker.exists(), "something ran the message as a command");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        // The grandchild `sleep` proves the whole group goes, not just the script.
        let prog = script(
            dir.path(),
            "hang.sh",
            r#"echo $$ > "$1/pid"; sleep 100 & echo $! > "$1/child"; wait"#,
        );
        let mut sink = hook(&prog, Duration::from_millis(500));
        sink.args = vec![dir.path().display().to_string()];
        let started = Instant::now();
        let err = run_hook(&sink, &notice(NoticeState::Firing, "m"), sink.timeout).unwrap_err();
        let took = started.elapsed();
        assert!(err.contains("timed out after 0.5s"), "{err}");
        assert!(took < Duration::from_secs(5), "took {took:?}");

        for file in ["pid", "child"] {
            let pid: i32 = std::fs::read_to_string(dir.path().join(file))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // The script was reaped by us; the orphaned sleep is reaped by init, so wait for it.
            let gone = eventually(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            });
            assert!(gone, "{file} {pid} still alive");
        }
    }

    #[test]
    fn a_hook_that_never_reads_stdin_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(dir.path(), "deaf.sh", "exec 0<&-; exit 0");
        let sink = hook(&prog, Duration::from_secs(10));
        let long = "x".repeat(200_000); // larger than a pipe buffer
        run_hook(&sink, &notice(NoticeState::Firing, &long), sink.timeout).unwrap();
    }

    #[test]
    fn output_is_cut_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "loud.sh",
            "head -c 100000 /dev/zero | tr '\\0' a; exit 3",
        );
        let sink = hook(&prog, Duration::from_secs(10));
        let err = run_hook(&sink, &notice(NoticeState::Firing, "m"), sink.timeout).unwrap_err();
        assert!(
            err.starts_with("exited with exit status: 3"),
            "{}",
            &err[..80]
        );
        assert!(err.ends_with("…[truncated]"), "{}", &err[err.len() - 40..]);
        assert!(err.len() < OUTPUT_LIMIT + 200, "{}", err.len());
    }

    #[test]
    fn a_missing_program_gives_a_clear_error() {
        let sink = hook(Path::new("/nonexistent/hook"), Duration::from_secs(1));
        let err = run_hook(&sink, &notice(NoticeState::Firing, "m"), sink.timeout).unwrap_err();
        assert!(
            err.starts_with("cannot run /nonexistent/hook: program not found"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let err = run_hook(
            &hook(&plain, Duration::from_secs(1)),
            &notice(NoticeState::Firing, "m"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.contains("permission denied"), "{err}");
    }

    #[test]
    fn a_failing_hook_is_retried_then_counted_as_failed() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "fail.sh",
            r#"echo run >> "$1/runs"; echo broken >&2; exit 1"#,
        );
        let mut sink = hook(&prog, Duration::from_secs(10));
        sink.args = vec![dir.path().display().to_string()];
        let settings = NotifySettings {
            exec: vec![sink],
            retries: 2,
            ..Default::default()
        };
        let timings = Timings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Timings::default()
        };
        let notifier = Notifier::with_timings(&settings, timings);
        notifier.notify(&notice(NoticeState::Firing, "m"));
        assert!(eventually(Duration::from_secs(10), || notifier.report()[0]
            .failed
            == 1));
        let r = &notifier.report()[0];
        assert_eq!(r.sink, format!("exec:{}", prog.display()));
        assert_eq!((r.sent, r.failed, r.retries, r.dropped), (0, 1, 2, 0));
        let last = r.last_error.as_deref().unwrap();
        assert!(
            last.contains("exit status: 1") && last.contains("stderr: broken"),
            "{last}"
        );
        let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
        assert_eq!(runs.lines().count(), 3, "one attempt and two retries");
        notifier.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn run_program_hands_back_a_failures_output_and_runs_without_a_notice() {
        let dir = tempfile::tempdir().unwrap();
        let prog = script(
            dir.path(),
            "close.sh",
            r#"cat > "$1/stdin"; env > "$1/env"; echo said; echo 'Error: issue not found' >&2; exit 1"#,
        );
        let mut sink = hook(&prog, Duration::from_secs(10));
        sink.args = vec![dir.path().display().to_string()];
        let out = run_program(&sink, None, sink.timeout).unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("said\n", "Error: issue not found\n")
        );
        assert_eq!(
            failure(&out),
            "exited with exit status: 1; stderr: Error: issue not found; stdout: said"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stdin")).unwrap(),
            ""
        );
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        assert!(!env.contains("HEALTH_MONITOR_"), "{env}");
        // run_hook of the same program is the plain error.
        let err = run_hook(&sink, &notice(NoticeState::Resolved, "m"), sink.timeout).unwrap_err();
        assert_eq!(err, failure(&out));
    }
}
