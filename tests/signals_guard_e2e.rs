//! Hostile input and signals, end to end on the real binary: config files that are not regular
//! files or too big, thresholds that say no direction, signals that used to kill the daemon
//! without a flush, and a daemon stopped with SIGSTOP (the CLI's timeout, and retries that are
//! always safe because every write is idempotent).

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Env, bin, wait_until};
use nix::sys::signal::Signal;

const FAST: &str = "interval = 0.1\n";

/// Runs the binary with `args`, killing it if it is still running after `deadline`. Returns its
/// output (`None` when it had to be killed) and how long it ran.
fn run_within(
    args: &[&str],
    envs: &[(&str, &str)],
    deadline: Duration,
) -> (Option<Output>, Duration) {
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (Some(child.wait_with_output().unwrap()), started.elapsed());
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `status` with `config` as the config file (and a database of its own), within 10 s.
fn status_with_config(env: &Env, config: &Path) -> Output {
    with_config(env, "status", config)
}

/// `command` (`status`, `start --once`) with `config` as the config file, within 10 s.
fn with_config(env: &Env, command: &str, config: &Path) -> Output {
    let db = env.path("cfg.db").display().to_string();
    let config = config.display().to_string();
    let mut args: Vec<&str> = command.split(' ').collect();
    args.extend(["--db-path", &db, "--config", &config]);
    let (out, took) = run_within(&args, &[], Duration::from_secs(10));
    let out =
        out.unwrap_or_else(|| panic!("`{command} --config {config}` still running after {took:?}"));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_device_or_a_fifo_as_config_exits_2_at_once() {
    let env = Env::new("");
    for device in ["/dev/zero", "/dev/urandom"] {
        let out = status_with_config(&env, Path::new(device));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(device) && err.contains("not a regular file"),
            "{err}"
        );
    }
    let fifo = env.path("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = status_with_config(&env, &fifo);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("FIFO"), "{}", stderr(&out));
    let out = status_with_config(&env, env.dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("directory"), "{}", stderr(&out));
}

#[test]
fn a_config_over_a_megabyte_exits_2_and_one_under_it_loads_quickly() {
    let env = Env::new("");
    let overrides = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "[[override]]\nresource_type = \"workspace\"\nresource_id = \"w{i}\"\n\
                     metric = \"workspace_file_count\"\nwarning = 10\ncritical = 20\n"
                )
            })
            .collect()
    };
    // About 2 MB of [[override]]s, the shape of the hostile pass's 200k.
    let big = env.path("big.toml");
    let text = overrides(20_000);
    assert!(text.len() > 2_000_000);
    fs::write(&big, text).unwrap();
    let out = status_with_config(&env, &big);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("big.toml") && err.contains("1048576"), "{err}");
    // Just under the cap: read and resolved well within the deadline.
    let full = env.path("full.toml");
    let mut text = overrides(9_000);
    text.truncate(text[..1_000_000].rfind("[[override]]").unwrap());
    fs::write(&full, text).unwrap();
    let out = with_config(&env, "start --once", &full);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn warning_equal_to_critical_exits_2_naming_the_metric() {
    let env = Env::new("");
    for (text, needles) in [
        (
            "[thresholds.agent_active]\nwarning = 0.5\ncritical = 0.5\n",
            vec!["agent_active", "differ"],
        ),
        // One given, equal to the default of the other.
        (
            "[thresholds.memory_usage_percent]\ncritical = 80\n",
            vec!["memory_usage_percent", "differ"],
        ),
        (
            "[[override]]\nresource_type = \"workspace\"\nresource_id = \"w1\"\n\
             metric = \"workspace_exists\"\nwarning = 0.1\ncritical = 0.1\n",
            vec!["[[override]] #1", "workspace_exists", "differ"],
        ),
    ] {
        let path = env.path("equal.toml");
        fs::write(&path, text).unwrap();
        let out = status_with_config(&env, &path);
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let err = stderr(&out);
        for needle in needles {
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}

/// Starts a fast daemon on `env` and waits until it answers `status` (by then its signal
/// handlers are installed: they are set up before the control server is started).
fn start_answering(env: &Env) -> Daemon {
    fs::create_dir_all(env.path("w1")).unwrap();
    let daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &env.path("w1").display().to_string(),
    ]);
    wait_until("a row for the workspace", || {
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id = 'w1'") > 0
    });
    daemon
}

/// Sends `signal` to a daemon that has written rows, and checks it shut down as SIGTERM does.
/// Sends `signal` and checks a clean shutdown that exits with `code`.
fn shuts_down_cleanly_on(signal: Signal, code: i32) {
    let env = Env::new(FAST);
    let mut daemon = start_answering(&env);
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 20);
    daemon.signal(signal);
    assert_eq!(daemon.wait_exit(), code, "{signal}: {}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains(&format!("{signal} received; shutting down")),
        "{log}"
    );
    assert!(log.contains("health-monitor stopped"), "{log}");
    assert!(!env.socket.exists(), "{signal}: the socket is removed");
    // Everything it accepted was flushed.
    let accepted = daemon.logged_number("measurements_accepted").unwrap();
    assert_eq!(daemon.logged_number("rows_dropped"), Some(0));
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics") as u64,
        accepted
    );
    // The next start finds its monitor and no stale socket trouble.
    let _again = env.start(&[]);
    assert!(env.hm_ok(&["list"]).contains("w1"));
}

#[test]
fn sigquit_shuts_down_cleanly_like_sigterm() {
    shuts_down_cleanly_on(Signal::SIGQUIT, 0);
}

#[test]
fn sigxcpu_the_cpu_time_soft_limit_shuts_down_cleanly_too() {
    // Cleanly, but as a failure: `Restart=on-failure` brings the daemon back.
    shuts_down_cleanly_on(Signal::SIGXCPU, 1);
}

#[test]
fn sighup_sigusr1_sigusr2_sigpipe_and_the_like_leave_the_daemon_running_and_answering() {
    let env = Env::new(FAST);
    let mut daemon = start_answering(&env);
    // SIGHUP reloads the config (tests/reload_e2e.rs): the daemon goes on.
    daemon.signal(Signal::SIGHUP);
    wait_until("the reload logged", || {
        daemon.log().contains("config reloaded")
    });
    for (signal, name) in [
        (Signal::SIGUSR1, "SIGUSR1"),
        (Signal::SIGUSR2, "SIGUSR2"),
        // Their default action also ends a process: none may end this one.
        (Signal::SIGXFSZ, "SIGXFSZ"),
        (Signal::SIGALRM, "SIGALRM"),
        (Signal::SIGVTALRM, "SIGVTALRM"),
        (Signal::SIGPROF, "SIGPROF"),
        (Signal::SIGIO, "SIGIO"),
        (Signal::SIGPWR, "SIGPWR"),
    ] {
        daemon.signal(signal);
        wait_until(&format!("{name} logged as ignored"), || {
            daemon.log().contains(&format!("{name} received; ignored"))
        });
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "{name} ended it"
        );
    }
    // The Rust runtime ignores SIGPIPE; a second of each, and a SIGPIPE, change nothing either.
    for signal in [
        Signal::SIGPIPE,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        daemon.signal(signal);
    }
    // Still measuring and answering afterwards.
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 10);
    assert_eq!(env.status()["running"], true);
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );
    assert_eq!(env.hm_ok(&["stop"]).trim(), "stopped");
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
}

/// Resumes a daemon stopped with SIGSTOP when dropped, even when the test fails.
struct Stopped<'a>(&'a Daemon);

impl<'a> Stopped<'a> {
    fn stop(daemon: &'a Daemon) -> Stopped<'a> {
        daemon.signal(Signal::SIGSTOP);
        let state = || {
            let stat = fs::read_to_string(format!("/proc/{}/stat", daemon.child.id())).unwrap();
            stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
        };
        wait_until("the daemon stopped", || state() == 'T');
        Stopped(daemon)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGCONT);
    }
}

/// One raw request over the control socket, answered within 10 s.
fn raw(env: &Env, request: serde_json::Value) -> serde_json::Value {
    let stream = UnixStream::connect(&env.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn a_stopped_daemon_makes_the_cli_fail_quickly_naming_its_pid() {
    let env = Env::new(FAST);
    let daemon = start_answering(&env);
    let pid = daemon.child.id();
    let mut args = vec!["status".to_string()];
    args.extend(env.globals());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    {
        let _stopped = Stopped::stop(&daemon);
        // The default timeout: no environment variable.
        let (out, took) = run_within(&args, &[], Duration::from_secs(20));
        let out = out.expect("status still waiting after 20 s");
        assert!(took < Duration::from_secs(9), "status took {took:?}");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(
            err.contains("stopped") && err.contains(&format!("kill -CONT {pid}")),
            "{err}"
        );
        assert!(err.contains("Retrying is safe"), "{err}");
        assert!(!err.contains("os error 11"), "{err}");
        // Shorter when asked.
        let (out, took) = run_within(
            &args,
            &[("HEALTH_MONITOR_TIMEOUT", "0.5")],
            Duration::from_secs(20),
        );
        assert!(!out.unwrap().status.success());
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }
    // Resumed: it answers again.
    wait_until("status after SIGCONT", || env.try_status().is_some());
}

#[test]
fn writes_retried_after_a_timeout_are_safe() {
    let env = Env::new(FAST);
    let daemon = start_answering(&env);
    let pid = daemon.child.id();
    let w2 = env.path("w2");
    fs::create_dir(&w2).unwrap();
    let add: Vec<String> = [
        "add",
        "workspace",
        "w2",
        "--path",
        &w2.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(env.globals())
    .collect();
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    {
        let _stopped = Stopped::stop(&daemon);
        let (out, _) = run_within(
            &add,
            &[("HEALTH_MONITOR_TIMEOUT", "1")],
            Duration::from_secs(20),
        );
        let out = out.expect("add still waiting after 20 s");
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(
            err.contains("outcome is unknown") && err.contains("Retrying is safe"),
            "{err}"
        );
    }
    // The add the CLI gave up on is applied once the daemon resumes...
    wait_until("the timed-out add applied", || {
        env.try_status().is_some()
            && env.count("SELECT count(*) FROM monitors WHERE id = 'w2'") == 1
    });
    // ...and the retry is harmless and says so.
    let (out, _) = run_within(&add, &[], Duration::from_secs(20));
    let out = out.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already monitored"));
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE id = 'w2'"),
        1
    );
    assert!(env.hm_ok(&["list"]).matches("w2").count() >= 1);

    // Every write over the socket, repeated, has the effect of one and says so.
    let remove = serde_json::json!({"op": "remove", "kind": "workspace", "id": "w2"});
    assert_eq!(
        raw(&env, remove.clone()),
        serde_json::json!({"ok": true, "data": "removed"})
    );
    assert_eq!(
        raw(&env, remove),
        serde_json::json!({"ok": true, "data": "already removed"})
    );
    assert!(env.hm(&["remove", "workspace", "w2"]).status.success());
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE id = 'w2'"),
        0
    );

    let now = chrono::Utc::now();
    let silence = serde_json::json!({"op": "silence_add", "silence": {
        "resource_type": "workspace", "resource_id": "w1",
        "created_at": now, "expires_at": now + chrono::Duration::hours(1)}});
    assert_eq!(raw(&env, silence.clone())["data"], "silenced");
    assert_eq!(raw(&env, silence)["data"], "unchanged");
    let unsilence = serde_json::json!({"op": "silence_remove",
        "resource_type": "workspace", "resource_id": "w1"});
    let first = raw(&env, unsilence.clone());
    assert_eq!(first["data"]["outcome"], "removed", "{first}");
    assert_eq!(first["data"]["removed"], 1, "{first}");
    let again = raw(&env, unsilence);
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["data"]["outcome"], "already removed", "{again}");

    // An alert to acknowledge: a workspace that does not exist.
    let missing = env.path("missing").display().to_string();
    env.hm_ok(&["add", "workspace", "gone", "--path", &missing]);
    wait_until("the missing workspace's alert", || {
        env.alert_active("gone", "workspace_exists")
    });
    let id = env.count("SELECT id FROM health_alerts WHERE resource_id = 'gone' AND resolved = 0");
    let ack = serde_json::json!({"op": "ack", "id": id, "by": "test"});
    let first = raw(&env, ack.clone());
    assert_eq!(first["data"]["outcome"], "acknowledged", "{first}");
    let again = raw(&env, ack.clone());
    assert_eq!(again["data"]["outcome"], "already acknowledged", "{again}");
    assert_eq!(
        again["data"]["acknowledged_at"],
        first["data"]["acknowledged_at"]
    );
    assert!(env.hm(&["ack", &id.to_string()]).status.success());
    // Resolved since: acknowledging it again still succeeds, as already acknowledged.
    fs::create_dir(&missing).unwrap();
    wait_until("the alert resolved", || {
        !env.alert_active("gone", "workspace_exists")
    });
    wait_until("the acknowledgement stored", || {
        env.count(&format!(
            "SELECT count(*) FROM health_alerts WHERE id = {id} AND acknowledged_at IS NOT NULL"
        )) == 1
    });
    let late = raw(&env, ack);
    assert_eq!(late["ok"], true, "{late}");
    assert_eq!(late["data"]["outcome"], "already acknowledged", "{late}");
}
