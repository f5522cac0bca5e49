//! Running one Nagios plugin: its own process group, a cleared environment, a time cap that
//! kills the whole group, bounded output, and a process-wide limit on plugins running at once.
//!
//! Nothing here polls. Three helper threads report to one channel: a reader each for stdout
//! and stderr (they send what they kept at EOF) and a waiter blocked in `waitid(WNOWAIT)`,
//! which sees the plugin exit without reaping it. The caller waits on that channel with
//! `recv_timeout` until the deadline. Because the exited plugin stays a zombie until we reap
//! it, its pid (which is also its process group id) cannot be reused meanwhile, so the final
//! `killpg` can never hit an unrelated group.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, LazyLock, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

/// The only `PATH` a plugin sees.
pub(crate) const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a plugin's stderr is kept, to explain a failure.
pub(crate) const STDERR_CAP: usize = 4096;
/// How long, after SIGKILL, we wait to see the plugin die before leaving its reaping to a
/// detached thread.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// How long, once the plugin has exited and stdout is closed, we still wait for stderr's EOF
/// (a process outside the group may hold it).
const STREAM_GRACE: Duration = Duration::from_millis(200);
/// How often a spawn refused with ETXTBSY is retried: another thread's fork, between its fork
/// and exec, may briefly hold a write handle of a plugin that was just written.
const TEXT_BUSY_RETRIES: u32 = 5;

/// What running a plugin gave.
#[derive(Debug, Clone, Default)]
pub(crate) struct PluginRun {
    /// The plugin's exit code; `None` when there is none to use (see `failure`).
    pub(crate) exit_code: Option<i32>,
    /// Its stdout, lossy UTF-8, at most the run's `output_cap` bytes.
    pub(crate) output: String,
    /// How many bytes of stdout were read past `output_cap` and discarded.
    pub(crate) truncated_bytes: u64,
    /// Its stderr, lossy UTF-8, at most [`STDERR_CAP`] bytes: only to explain failures.
    pub(crate) stderr: String,
    /// From its start to its exit, or to its kill at the timeout.
    pub(crate) duration: Duration,
    /// Why there is no usable exit code: timed out, cannot start, killed by a signal, no free
    /// slot. `None` when `exit_code` is set.
    pub(crate) failure: Option<String>,
    /// The plugin's pid, which is also its process group id; `None` when it did not start.
    pub(crate) pgid: Option<i32>,
}

impl PluginRun {
    /// A run that ended before or at its start.
    fn failed(why: String, duration: Duration) -> Self {
        PluginRun {
            failure: Some(why),
            duration,
            ..PluginRun::default()
        }
    }
}

/// A counting semaphore: how many plugins may run at once.
pub(crate) struct Slots {
    /// Slots in use.
    used: Mutex<usize>,
    /// Signalled when a slot is given back.
    freed: Condvar,
    /// How many there are.
    limit: usize,
}

/// A slot held; given back when dropped.
pub(crate) struct Slot<'a> {
    /// The semaphore it belongs to.
    slots: &'a Slots,
}

impl Slots {
    /// A semaphore of `limit` slots (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        Slots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// Takes a slot, waiting at most until `deadline`; `None` if none freed in time.
    pub(crate) fn acquire(&self, deadline: Instant) -> Option<Slot<'_>> {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while *used >= self.limit {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *used += 1;
        Some(Slot { slots: self })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self
            .slots
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *used = used.saturating_sub(1);
        drop(used);
        self.slots.freed.notify_one();
    }
}

/// The process-wide limit on plugins running at once: `max(8, 4 × available_parallelism)`.
static SLOTS: LazyLock<Slots> = LazyLock::new(|| {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    Slots::new(8.max(cpus.saturating_mul(4)))
});

/// The process groups of the plugins running now: killed when the daemon stops, since a run
/// blocked on a probe thread cannot be cancelled and its group would outlive the daemon.
static LIVE_GROUPS: LazyLock<Mutex<HashSet<i32>>> = LazyLock::new(Default::default);

/// Keeps a plugin's group in [`LIVE_GROUPS`] while it may still have members.
struct LiveGroup(i32);

impl LiveGroup {
    fn register(pgid: i32) -> Self {
        crate::util::lock(&LIVE_GROUPS).insert(pgid);
        LiveGroup(pgid)
    }
}

impl Drop for LiveGroup {
    fn drop(&mut self) {
        crate::util::lock(&LIVE_GROUPS).remove(&self.0);
    }
}

/// Kills the process group of every plugin running now (at shutdown); returns how many.
pub(crate) fn kill_running_plugins() -> usize {
    let groups: Vec<i32> = crate::util::lock(&LIVE_GROUPS).iter().copied().collect();
    for &pgid in &groups {
        kill_group(pgid);
    }
    groups.len()
}

/// Runs `command` (program and arguments, no shell) and waits at most `timeout`, including
/// the wait for a free slot; keeps the first `output_cap` bytes of its stdout.
pub(crate) fn run_plugin(command: &[String], timeout: Duration, output_cap: usize) -> PluginRun {
    run_plugin_in(&SLOTS, command, timeout, output_cap)
}

/// [`run_plugin`] with its own semaphore.
pub(crate) fn run_plugin_in(
    slots: &Slots,
    command: &[String],
    timeout: Duration,
    output_cap: usize,
) -> PluginRun {
    let begun = Instant::now();
    let deadline = begun + timeout;
    let Some(program) = command.first() else {
        return PluginRun::failed("no command to run".to_string(), Duration::ZERO);
    };
    let Some(_slot) = slots.acquire(deadline) else {
        return PluginRun::failed(
            format!("waited {} s for a free slot", secs(timeout)),
            begun.elapsed(),
        );
    };

    let mut child = match spawn(command) {
        Ok(child) => child,
        Err(e) => {
            return PluginRun::failed(
                format!("cannot run {program}: {}", describe(&e)),
                Duration::ZERO,
            );
        }
    };
    let started = Instant::now();
    let pid = child.id() as i32;
    // Until the group is killed below and its leader reaped: its pgid cannot be reused before.
    let live = LiveGroup::register(pid);
    let (tx, rx) = mpsc::channel();
    if let Err(e) = start_helpers(&mut child, pid, output_cap, &tx) {
        kill_group(pid);
        reap(child, &rx, Instant::now() + KILL_GRACE);
        let mut run = PluginRun::failed(format!("cannot watch {program}: {e}"), started.elapsed());
        run.pgid = Some(pid);
        return run;
    }
    drop(tx);

    let mut run = PluginRun {
        pgid: Some(pid),
        ..PluginRun::default()
    };
    let mut out_done = false;
    let mut err_done = false;
    let mut exited = false;
    let mut timed_out = false;
    // Until stdout's EOF and the plugin's exit, or the deadline.
    while !(out_done && exited) {
        match recv_until(&rx, deadline) {
            Some(event) => take(event, &mut run, &mut out_done, &mut err_done, &mut exited),
            None => {
                timed_out = true;
                break;
            }
        }
    }
    // Whatever is left of the group goes: after a timeout, the plugin and its children; after
    // an exit, the background children it left behind (which may hold stdout). The plugin is
    // still an unreaped zombie here, so its pgid is not reused yet.
    kill_group(pid);
    run.duration = started.elapsed();
    if timed_out {
        let grace = Instant::now() + KILL_GRACE;
        while !exited {
            match recv_until(&rx, grace) {
                Some(event) => take(event, &mut run, &mut out_done, &mut err_done, &mut exited),
                None => break,
            }
        }
    }
    // Short grace for the streams' EOF (the group is dead; only an escaped grandchild can still
    // hold them, and then the reader threads are left detached).
    let grace = Instant::now() + STREAM_GRACE;
    while !(out_done && err_done) {
        match recv_until(&rx, grace) {
            Some(event) => take(event, &mut run, &mut out_done, &mut err_done, &mut exited),
            None => break,
        }
    }

    // The group is dead (killed above): nothing of it is left for a shutdown to kill.
    drop(live);
    let status = if exited {
        child.wait().ok()
    } else {
        // Not dead within the grace (uninterruptible sleep?): a detached thread reaps it.
        let _ = thread::Builder::new()
            .name("check-reaper".to_string())
            .spawn(move || {
                let _ = child.wait();
            });
        None
    };
    if timed_out {
        run.failure = Some(format!(
            "timed out after {} s, process group killed",
            secs(timeout)
        ));
    } else {
        match status {
            Some(status) => judge_status(&mut run, status),
            None => run.failure = Some("exit status lost".to_string()),
        }
    }
    run
}

/// Starts `command` in its own process group with a cleared environment.
fn spawn(command: &[String]) -> std::io::Result<Child> {
    let mut attempt = 0;
    loop {
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        match cmd.spawn() {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && attempt < TEXT_BUSY_RETRIES => {
                attempt += 1;
                thread::sleep(Duration::from_millis(10 * u64::from(attempt)));
            }
            other => return other,
        }
    }
}

/// What the helper threads report.
enum Event {
    /// Stdout reached EOF (or failed): what was kept, and how much was discarded.
    Out(Vec<u8>, u64),
    /// Stderr reached EOF (or failed): what was kept.
    Err(Vec<u8>),
    /// The plugin exited (not yet reaped), or waiting for it failed.
    Exited,
}

/// Starts the stdout and stderr readers and the waiter.
fn start_helpers(
    child: &mut Child,
    pid: i32,
    output_cap: usize,
    tx: &Sender<Event>,
) -> std::io::Result<()> {
    if let Some(stdout) = child.stdout.take() {
        let tx = tx.clone();
        thread::Builder::new()
            .name("check-stdout".to_string())
            .spawn(move || {
                let (kept, dropped) = read_capped(stdout, output_cap);
                let _ = tx.send(Event::Out(kept, dropped));
            })?;
    } else {
        let _ = tx.send(Event::Out(Vec::new(), 0));
    }
    if let Some(stderr) = child.stderr.take() {
        let tx = tx.clone();
        thread::Builder::new()
            .name("check-stderr".to_string())
            .spawn(move || {
                let (kept, _) = read_capped(stderr, STDERR_CAP);
                let _ = tx.send(Event::Err(kept));
            })?;
    } else {
        let _ = tx.send(Event::Err(Vec::new()));
    }
    let tx = tx.clone();
    thread::Builder::new()
        .name("check-waiter".to_string())
        .spawn(move || {
            // WNOWAIT: see the exit, leave the zombie for `Child::wait` to reap.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(Pid::from_raw(pid)), flags) {}
            let _ = tx.send(Event::Exited);
        })?;
    Ok(())
}

/// Reads `from` to EOF, keeping the first `cap` bytes and counting the rest.
fn read_capped(mut from: impl Read, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += (n - room) as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, dropped)
}

/// The next event, or `None` at `deadline` (or when every helper is gone).
fn recv_until(rx: &Receiver<Event>, deadline: Instant) -> Option<Event> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A timeout or every helper gone (disconnected): nothing more will come by `deadline`.
    rx.recv_timeout(left).ok()
}

/// Records `event` in `run`.
fn take(
    event: Event,
    run: &mut PluginRun,
    out_done: &mut bool,
    err_done: &mut bool,
    exited: &mut bool,
) {
    match event {
        Event::Out(kept, dropped) => {
            run.output = String::from_utf8_lossy(&kept).into_owned();
            run.truncated_bytes = dropped;
            *out_done = true;
        }
        Event::Err(kept) => {
            run.stderr = String::from_utf8_lossy(&kept).into_owned();
            *err_done = true;
        }
        Event::Exited => *exited = true,
    }
}

/// Sets the exit code, or the failure of a plugin killed by a signal.
fn judge_status(run: &mut PluginRun, status: ExitStatus) {
    if let Some(code) = status.code() {
        run.exit_code = Some(code);
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map_or("unknown signal", |s| s.as_str());
        run.failure = Some(format!("killed by signal {sig} ({name})"));
    } else {
        run.failure = Some(format!("ended without an exit code ({status})"));
    }
}

/// SIGKILL to the process group `pgid`; "no such group" is fine.
fn kill_group(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Reaps `child` if it exits by `deadline`, else leaves it to a detached thread.
fn reap(mut child: Child, rx: &Receiver<Event>, deadline: Instant) {
    while let Some(event) = recv_until(rx, deadline) {
        if matches!(event, Event::Exited) {
            let _ = child.wait();
            return;
        }
    }
    let _ = thread::Builder::new()
        .name("check-reaper".to_string())
        .spawn(move || {
            let _ = child.wait();
        });
}

/// An I/O error for people: "No such file or directory", without "(os error 2)".
fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Seconds, as short as they can be written: `10`, `0.5`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Writes an executable `#!/bin/sh` plugin.
    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// Live (non-zombie) processes whose process group is `pgid`.
    fn group_members(pgid: i32) -> Vec<i32> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
                found.push(pid);
            }
        }
        found
    }

    /// Waits up to a second for the group to be gone; the members left.
    fn group_gone(pgid: i32) -> Vec<i32> {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            let left = group_members(pgid);
            if left.is_empty() || Instant::now() > until {
                return left;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn hanging_plugin_and_its_background_child_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "hang", "sleep 60 &\necho started\nsleep 60");
        let timeout = Duration::from_millis(1500);
        let begun = Instant::now();
        let run = run_plugin(&[plugin], timeout, 1024);
        let took = begun.elapsed();
        assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
        assert!(took >= timeout, "returned before the timeout: {took:?}");
        assert_eq!(run.exit_code, None);
        assert_eq!(
            run.failure.as_deref(),
            Some("timed out after 1.5 s, process group killed")
        );
        let pgid = run.pgid.unwrap();
        // Zombies are not counted: the plugin itself is reaped by us, but its orphaned
        // background `sleep` is init's to reap, and a container's init may never do it.
        assert_eq!(group_gone(pgid), Vec::<i32>::new(), "group {pgid} survived");
        assert_eq!(
            run.output, "started\n",
            "what it printed before the kill is kept"
        );
    }

    #[test]
    fn plugin_that_exits_while_its_background_child_holds_stdout_is_cut_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "leaver", "echo 'OK - bye'\nsleep 60 &\nexit 0");
        let timeout = Duration::from_secs(1);
        let begun = Instant::now();
        let run = run_plugin(&[plugin], timeout, 1024);
        assert!(begun.elapsed() < timeout + Duration::from_secs(1));
        assert_eq!(
            run.failure.as_deref(),
            Some("timed out after 1 s, process group killed")
        );
        assert_eq!(run.output, "OK - bye\n", "output read after the kill");
        assert_eq!(group_gone(run.pgid.unwrap()), Vec::<i32>::new());
    }

    #[test]
    fn background_child_that_closed_stdout_is_killed_after_a_normal_exit() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "detacher",
            "sleep 60 >/dev/null 2>&1 &\necho 'OK - fine'\nexit 0",
        );
        let begun = Instant::now();
        let run = run_plugin(&[plugin], Duration::from_secs(10), 1024);
        assert!(begun.elapsed() < Duration::from_secs(2));
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.failure, None);
        assert_eq!(run.output, "OK - fine\n");
        assert_eq!(group_gone(run.pgid.unwrap()), Vec::<i32>::new());
    }

    #[test]
    fn ten_megabytes_of_output_are_capped_and_counted_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "chatty",
            "head -c 10000000 /dev/zero | tr '\\0' x\nexit 1",
        );
        let begun = Instant::now();
        let run = run_plugin(&[plugin], Duration::from_secs(10), 65536);
        let took = begun.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert_eq!(run.exit_code, Some(1));
        assert_eq!(run.failure, None);
        assert_eq!(run.output.len(), 65536);
        assert!(run.output.bytes().all(|b| b == b'x'));
        assert_eq!(run.truncated_bytes, 10_000_000 - 65536);
    }

    #[test]
    fn exit_codes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        for code in [0, 1, 2, 3, 42] {
            let plugin = script(
                dir.path(),
                &format!("exit{code}"),
                &format!("echo out{code}\nexit {code}"),
            );
            let run = run_plugin(&[plugin], Duration::from_secs(10), 1024);
            assert_eq!(run.exit_code, Some(code));
            assert_eq!(run.failure, None);
            assert_eq!(run.output, format!("out{code}\n"));
            assert!(run.duration < Duration::from_secs(5));
        }
    }

    #[test]
    fn arguments_are_passed_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "args", "printf '%s|' \"$@\"");
        let run = run_plugin(
            &[
                plugin,
                "a b".to_string(),
                "$HOME".to_string(),
                ";ls".to_string(),
            ],
            Duration::from_secs(10),
            1024,
        );
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.output, "a b|$HOME|;ls|");
    }

    #[test]
    fn killed_by_a_signal_is_a_failure_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "term", "echo dying >&2\nkill -TERM $$");
        let run = run_plugin(&[plugin], Duration::from_secs(10), 1024);
        assert_eq!(run.exit_code, None);
        assert_eq!(
            run.failure.as_deref(),
            Some("killed by signal 15 (SIGTERM)")
        );
        assert_eq!(run.stderr, "dying\n");
    }

    #[test]
    fn missing_program_cannot_run() {
        let run = run_plugin(
            &["/nonexistent/check_x".to_string()],
            Duration::from_secs(5),
            1024,
        );
        assert_eq!(run.exit_code, None);
        assert_eq!(
            run.failure.as_deref(),
            Some("cannot run /nonexistent/check_x: No such file or directory")
        );
        assert_eq!(run.pgid, None);
    }

    #[test]
    fn program_that_is_not_executable_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let program = path.to_string_lossy().into_owned();
        let run = run_plugin(std::slice::from_ref(&program), Duration::from_secs(5), 1024);
        assert_eq!(run.exit_code, None);
        assert_eq!(
            run.failure.as_deref(),
            Some(format!("cannot run {program}: Permission denied").as_str())
        );
    }

    #[test]
    fn empty_command_is_a_failure() {
        let run = run_plugin(&[], Duration::from_secs(5), 1024);
        assert_eq!(run.failure.as_deref(), Some("no command to run"));
    }

    #[test]
    fn environment_is_cleared() {
        // cargo runs tests with CARGO_* variables and HOME (usually) set: none may reach it.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "env",
            "echo \"home=[$HOME] pkg=[$CARGO_PKG_NAME] path=[$PATH] lc=[$LC_ALL]\"\n/usr/bin/env",
        );
        let run = run_plugin(&[plugin], Duration::from_secs(10), 65536);
        assert_eq!(run.exit_code, Some(0));
        let mut lines = run.output.lines();
        assert_eq!(
            lines.next().unwrap(),
            format!("home=[] pkg=[] path=[{PLUGIN_PATH}] lc=[C]")
        );
        let mut names: Vec<&str> = lines.map(|l| l.split('=').next().unwrap()).collect();
        names.sort_unstable();
        // sh itself adds PWD (and maybe SHLVL, OLDPWD); nothing of ours but PATH and LC_ALL.
        names.retain(|n| !["PWD", "SHLVL", "OLDPWD", "_"].contains(n));
        assert_eq!(names, ["LC_ALL", "PATH"]);
    }

    #[test]
    fn stdin_is_null() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "stdin", "cat; echo done");
        let run = run_plugin(&[plugin], Duration::from_secs(5), 1024);
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.output, "done\n");
    }

    #[test]
    fn stderr_is_kept_apart_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "err",
            "head -c 100000 /dev/zero | tr '\\0' e >&2\necho out",
        );
        let run = run_plugin(&[plugin], Duration::from_secs(5), 1024);
        assert_eq!(run.exit_code, Some(0));
        assert_eq!(run.output, "out\n");
        assert_eq!(run.stderr.len(), STDERR_CAP);
    }

    #[test]
    fn waiting_for_a_slot_counts_against_the_timeout() {
        let slots = Slots::new(1);
        let held = slots.acquire(Instant::now()).unwrap();
        let begun = Instant::now();
        let run = run_plugin_in(
            &slots,
            &["/bin/true".to_string()],
            Duration::from_millis(300),
            1024,
        );
        assert!(begun.elapsed() >= Duration::from_millis(300));
        assert!(begun.elapsed() < Duration::from_secs(1));
        assert_eq!(run.failure.as_deref(), Some("waited 0.3 s for a free slot"));
        assert_eq!(run.pgid, None, "never started");
        drop(held);
        let run = run_plugin_in(
            &slots,
            &["/bin/true".to_string()],
            Duration::from_secs(5),
            1024,
        );
        assert_eq!(run.exit_code, Some(0));
    }

    #[test]
    fn a_freed_slot_wakes_a_waiter() {
        let slots = Slots::new(2);
        let a = slots.acquire(Instant::now()).unwrap();
        let _b = slots.acquire(Instant::now()).unwrap();
        assert!(
            slots
                .acquire(Instant::now() + Duration::from_millis(50))
                .is_none()
        );
        thread::scope(|s| {
            let waiter = s.spawn(|| {
                slots
                    .acquire(Instant::now() + Duration::from_secs(5))
                    .is_some()
            });
            thread::sleep(Duration::from_millis(50));
            drop(a);
            assert!(waiter.join().unwrap());
        });
    }

    #[test]
    fn secs_are_short() {
        assert_eq!(secs(Duration::from_secs(10)), "10");
        assert_eq!(secs(Duration::from_millis(500)), "0.5");
    }
}
