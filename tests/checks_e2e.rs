//! Nagios-compatible checks against the real binary: real plugins (check_tcp, check_disk,
//! check_procs, check_dummy) and hostile scripts (hanging, chatty, malformed perfdata), from
//! the config file's `[[check]]` and from `add check`, across restarts.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{DEADLINE, Env, FakeAgent, bin, wait_until};

/// Where Debian's monitoring-plugins live.
const PLUGINS: &str = "/usr/lib/nagios/plugins";

/// The path of a monitoring-plugins plugin; fails (not skips) when it is missing.
fn plugin(name: &str) -> String {
    let path = format!("{PLUGINS}/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: install monitoring-plugins (apt-get install -y monitoring-plugins); \
         CI installs it, these tests need it"
    );
    path
}

/// Writes an executable `#!/bin/sh` plugin into the environment; returns its path.
fn script(env: &Env, name: &str, body: &str) -> String {
    let path = env.path(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A `[[check]]` entry; `extra` is more TOML lines (interval, timeout, resource).
fn check_toml(name: &str, command: &[&str], extra: &str) -> String {
    let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "\n[[check]]\nname = {name:?}\ncommand = [{}]\n{extra}\n",
        command.join(", ")
    )
}

/// Runs the CLI with the global flags BEFORE `args`: `--command` takes everything after it.
fn hm(env: &Env, args: &[&str]) -> Output {
    Command::new(bin())
        .args(env.globals())
        .args(args)
        .output()
        .unwrap()
}

/// [`hm`] that must succeed; its stdout.
fn hm_ok(env: &Env, args: &[&str]) -> String {
    let out = hm(env, args);
    assert!(
        out.status.success(),
        "health-monitor {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// How many rows a metric of a resource has.
fn rows(env: &Env, t: &str, id: &str, metric: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM health_metrics WHERE resource_type = ?1 AND resource_id = ?2
             AND metric_name = ?3",
            [t, id, metric],
            |r| r.get(0),
        )
        .unwrap()
}

/// Waits until a metric has at least `n` rows.
fn wait_rows(env: &Env, t: &str, id: &str, metric: &str, n: i64) {
    wait_until(&format!("{t}/{id} {metric}: {n} rows"), || {
        rows(env, t, id, metric) >= n
    });
}

/// Waits until the newest value of a metric is `want`.
fn wait_value(env: &Env, t: &str, id: &str, metric: &str, want: f64) {
    wait_until(&format!("{t}/{id} {metric} = {want}"), || {
        env.latest(t, id, metric) == Some(want)
    });
}

/// The distinct metric names stored for a resource.
fn stored_metrics(env: &Env, t: &str, id: &str) -> BTreeSet<String> {
    let db = env.db();
    let mut stmt = db
        .prepare(
            "SELECT DISTINCT metric_name FROM health_metrics WHERE resource_type = ?1
             AND resource_id = ?2",
        )
        .unwrap();
    stmt.query_map([t, id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Unit and thresholds of the newest row of a metric.
fn newest_row(env: &Env, t: &str, id: &str, metric: &str) -> (String, Option<f64>, Option<f64>) {
    env.db()
        .query_row(
            "SELECT unit, threshold_warning, threshold_critical FROM health_metrics
             WHERE resource_type = ?1 AND resource_id = ?2 AND metric_name = ?3
             ORDER BY id DESC LIMIT 1",
            [t, id, metric],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// The message of the active alert of this type on the resource, if any.
fn active_message(env: &Env, t: &str, id: &str, alert_type: &str) -> Option<String> {
    env.db()
        .query_row(
            "SELECT message FROM health_alerts WHERE resource_type = ?1 AND resource_id = ?2
             AND alert_type = ?3 AND resolved = 0",
            [t, id, alert_type],
            |r| r.get(0),
        )
        .ok()
}

/// How many alerts (active or resolved) of this type the resource ever had.
fn alerts_ever(env: &Env, t: &str, id: &str, alert_type: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM health_alerts WHERE resource_type = ?1 AND resource_id = ?2
             AND alert_type = ?3",
            [t, id, alert_type],
            |r| r.get(0),
        )
        .unwrap()
}

/// The metric names `status --json` shows for a resource; `None` when it shows no such resource.
fn status_metrics(status: &serde_json::Value, t: &str, id: &str) -> Option<BTreeSet<String>> {
    let resource = status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resource_type"] == t && r["resource_id"] == id)?;
    Some(
        resource["metrics"]
            .as_array()?
            .iter()
            .map(|m| m["metric_name"].as_str().unwrap().to_string())
            .collect(),
    )
}

/// The timestamps (seconds since the epoch) of a metric's rows, oldest first.
fn timestamps(env: &Env, t: &str, id: &str, metric: &str) -> Vec<f64> {
    let db = env.db();
    let mut stmt = db
        .prepare(
            "SELECT timestamp FROM health_metrics WHERE resource_type = ?1 AND resource_id = ?2
             AND metric_name = ?3 ORDER BY id",
        )
        .unwrap();
    stmt.query_map([t, id, metric], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|s| {
            let s = s.unwrap();
            chrono::DateTime::parse_from_rfc3339(&s)
                .unwrap_or_else(|e| panic!("timestamp {s:?}: {e}"))
                .timestamp_micros() as f64
                / 1e6
        })
        .collect()
}

/// Live (not zombie) processes whose command line holds the argument `arg`.
fn live_with_arg(arg: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if is_live_with_arg(pid, arg) {
            found.push(pid);
        }
    }
    found
}

/// True when `pid` is a live (not zombie) process whose command line holds `arg`.
fn is_live_with_arg(pid: u32, arg: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if !cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // pid (comm) state ...; comm may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|close| stat[close + 1..].split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Kills the processes of a test's own (by pid), so a failed test leaves none behind.
fn kill_all(pids: &[u32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A string no other test or run uses, for a hanging plugin's `sleep` argument.
fn unique_sleep() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("300.{}{:09}", std::process::id(), nanos)
}

/// A TCP server on 127.0.0.1 that accepts (and closes) connections in a thread until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(listener: TcpListener) -> Server {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            // The listener is dropped here: the port refuses connections from now on.
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }

    /// Binds `port` again, retrying until the deadline (a socket in TIME_WAIT, say).
    fn rebind(port: u16) -> Server {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => return Server::start(listener),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot listen on 127.0.0.1:{port} again: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

#[test]
fn check_tcp_from_the_config_follows_a_listener_going_and_coming_back() {
    let check_tcp = plugin("check_tcp");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = Server::start(listener);
    let port_text = port.to_string();
    let env = Env::new(&check_toml(
        "web",
        &[&check_tcp, "-H", "127.0.0.1", "-p", &port_text],
        "interval = 1",
    ));
    let _daemon = env.start(&["--interval", "1"]);

    wait_value(&env, "check", "web", "check_status", 0.0);
    wait_until("check_tcp's time metric", || {
        env.latest("check", "web", "time").is_some()
    });
    let (unit, warning, critical) = newest_row(&env, "check", "web", "time");
    assert_eq!(unit, "s");
    assert_eq!((warning, critical), (None, None), "no -w/-c: no thresholds");
    let time = env.latest("check", "web", "time").unwrap();
    assert!((0.0..10.0).contains(&time), "time {time}");
    let (unit, _, _) = newest_row(&env, "check", "web", "check_status");
    assert_eq!(unit, "state");
    assert!(env.latest("check", "web", "check_duration_ms").unwrap() > 0.0);
    assert!(!env.alert_active("web", "check_status"));
    let status = env.status();
    let shown = status_metrics(&status, "check", "web").expect("check/web in the status");
    for m in ["check_status", "check_duration_ms", "time"] {
        assert!(shown.contains(m), "{m} missing from the status: {shown:?}");
    }

    // The listener goes: connection refused, CRITICAL, an alert quoting the plugin.
    drop(server);
    wait_value(&env, "check", "web", "check_status", 2.0);
    wait_until("the check_status alert", || {
        active_message(&env, "check", "web", "check_status").is_some()
    });
    let message = active_message(&env, "check", "web", "check_status").unwrap();
    assert!(
        message.starts_with("connect to address 127.0.0.1 and port"),
        "{message}"
    );
    assert!(message.contains(&port_text), "{message}");
    assert!(!message.contains('\n'), "only the first line: {message:?}");
    let status = env.status();
    let alert = status["active_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["resource_id"] == "web" && a["alert_type"] == "check_status")
        .cloned()
        .unwrap_or_else(|| panic!("no check_status alert in {status}"));
    assert_eq!(alert["severity"], "critical");
    assert_eq!(alert["resource_type"], "check");

    // It listens again: OK, and the alert resolves.
    let _server = Server::rebind(port);
    wait_value(&env, "check", "web", "check_status", 0.0);
    wait_until("the alert to resolve", || {
        !env.alert_active("web", "check_status")
    });
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_id = 'web'
             AND alert_type = 'check_status' AND resolved = 1 AND resolved_at IS NOT NULL"
        ),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM monitors"),
        0,
        "a config check is not stored"
    );
}

#[test]
fn checks_added_live_report_beside_an_agent_and_go_when_removed() {
    let check_disk = plugin("check_disk");
    let check_procs = plugin("check_procs");
    let check_dummy = plugin("check_dummy");
    let env = Env::new("");
    let agent = FakeAgent::spawn();
    let _daemon = env.start(&["--interval", "1"]);
    env.hm_ok(&["add", "agent", "a1", "--pid", &agent.pid().to_string()]);
    wait_value(&env, "agent", "a1", "agent_active", 1.0);

    let out = hm_ok(
        &env,
        &[
            "add",
            "check",
            "disk",
            "--resource",
            "agent:a1",
            "--interval",
            "1",
            "--command",
            &check_disk,
            "-w",
            "20%",
            "-c",
            "10%",
            "-p",
            "/",
        ],
    );
    assert!(out.contains("added check disk"), "{out}");
    hm_ok(
        &env,
        &[
            "add",
            "check",
            "procs",
            "--interval",
            "1",
            "--command",
            &check_procs,
            "-w",
            "100000",
            "-c",
            "200000",
        ],
    );
    let list = hm_ok(&env, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("check") && l.contains("disk") && l.contains(&check_disk)),
        "{list}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE kind = 'check'"),
        2
    );

    // check_procs on its own resource.
    wait_value(&env, "check", "procs", "check_status", 0.0);
    wait_until("check_procs's procs metric", || {
        env.latest("check", "procs", "procs").is_some()
    });
    assert!(env.latest("check", "procs", "procs").unwrap() >= 1.0);
    let (unit, warning, critical) = newest_row(&env, "check", "procs", "procs");
    assert_eq!(unit, "count");
    assert_eq!((warning, critical), (Some(100_000.0), Some(200_000.0)));

    // check_disk on the agent's resource, with the plugin's thresholds.
    wait_until("check_disk's root metric on agent/a1", || {
        env.latest("agent", "a1", "root").is_some()
            && env.latest("agent", "a1", "check_status").is_some()
    });
    let disk_status = env.latest("agent", "a1", "check_status").unwrap();
    assert!(
        [0.0, 1.0, 2.0].contains(&disk_status),
        "check_disk ran and answered: {disk_status}"
    );
    let (_, warning, critical) = newest_row(&env, "agent", "a1", "root");
    let (warning, critical) = (
        warning.expect("threshold_warning from check_disk's perfdata"),
        critical.expect("threshold_critical from check_disk's perfdata"),
    );
    assert!(
        0.0 < warning && warning < critical,
        "used space: warning {warning} below critical {critical}"
    );
    assert!(env.latest("agent", "a1", "root").unwrap() > 0.0);
    assert_eq!(
        rows(&env, "check", "a1", "check_status"),
        0,
        "nothing of the attached check on check/disk or check/a1"
    );
    assert_eq!(rows(&env, "check", "disk", "check_status"), 0);

    // Over several cycles, neither the agent's collector nor the check removes the other's
    // series from the live status.
    let disk_rows = rows(&env, "agent", "a1", "check_status");
    let agent_rows = rows(&env, "agent", "a1", "agent_active");
    let deadline = Instant::now() + DEADLINE;
    while rows(&env, "agent", "a1", "check_status") < disk_rows + 4
        || rows(&env, "agent", "a1", "agent_active") < agent_rows + 4
    {
        let status = env.status();
        let shown = status_metrics(&status, "agent", "a1").expect("agent/a1 in the status");
        for m in [
            "agent_active",
            "agent_process_count",
            "check_status",
            "check_duration_ms",
            "root",
        ] {
            assert!(shown.contains(m), "{m} missing from agent/a1: {shown:?}");
        }
        let procs = status_metrics(&status, "check", "procs").expect("check/procs shown");
        assert!(procs.contains("procs") && procs.contains("check_status"));
        assert!(
            Instant::now() < deadline,
            "check_disk or the agent stopped reporting"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!env.alert_active("a1", "agent_active"));

    // Removed: its series leave agent/a1, its rows stop; the agent's stay.
    let out = hm_ok(&env, &["remove", "check", "disk"]);
    assert!(out.contains("removed check disk"), "{out}");
    wait_until("check_disk's series to leave the status", || {
        let shown = status_metrics(&env.status(), "agent", "a1").unwrap_or_default();
        !shown.contains("check_status") && !shown.contains("root")
    });
    let after = rows(&env, "agent", "a1", "check_status");
    let agent_rows = rows(&env, "agent", "a1", "agent_active");
    wait_rows(&env, "agent", "a1", "agent_active", agent_rows + 3);
    assert_eq!(
        rows(&env, "agent", "a1", "check_status"),
        after,
        "a removed check does not run"
    );
    let shown = status_metrics(&env.status(), "agent", "a1").unwrap();
    assert!(shown.contains("agent_active"), "{shown:?}");
    assert_eq!(env.latest("agent", "a1", "agent_active"), Some(1.0));
    assert!(!hm_ok(&env, &["list"]).contains("disk"));
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE kind = 'check' AND id = 'disk'"),
        0
    );

    // A failing check on the agent: its alert goes with it, the agent stays untouched.
    hm_ok(
        &env,
        &[
            "add",
            "check",
            "meh",
            "--resource",
            "agent:a1",
            "--interval",
            "1",
            "--command",
            &check_dummy,
            "1",
            "meh: something is off",
        ],
    );
    wait_until("the WARNING alert on agent/a1", || {
        active_message(&env, "agent", "a1", "check_status").as_deref()
            == Some("WARNING: meh: something is off")
    });
    hm_ok(&env, &["remove", "check", "meh"]);
    wait_until("the alert of the removed check to resolve", || {
        active_message(&env, "agent", "a1", "check_status").is_none()
    });
    assert_eq!(alerts_ever(&env, "agent", "a1", "check_status"), 1);
    let agent_rows = rows(&env, "agent", "a1", "agent_active");
    wait_rows(&env, "agent", "a1", "agent_active", agent_rows + 2);
    assert_eq!(env.latest("agent", "a1", "agent_active"), Some(1.0));
    assert!(!env.alert_active("a1", "agent_active"));
    let shown = status_metrics(&env.status(), "agent", "a1").unwrap();
    assert!(shown.contains("agent_active"), "{shown:?}");
    assert!(!shown.contains("check_status"), "{shown:?}");
    // The other check never noticed.
    let procs_rows = rows(&env, "check", "procs", "check_status");
    wait_rows(&env, "check", "procs", "check_status", procs_rows + 1);
    drop(agent);
}

#[test]
fn a_hanging_plugin_is_killed_whole_at_its_timeout_and_delays_no_other_check() {
    let check_dummy = plugin("check_dummy");
    let env = Env::new("");
    let short = unique_sleep();
    let long = format!("{short}1");
    let hang = script(&env, "hang", &format!("sleep {short} &\nsleep {short}"));
    let hang_long = script(&env, "hang_long", &format!("sleep {long} &\nsleep {long}"));
    let mut config = check_toml("hang", &[&hang], "interval = 1\ntimeout = 1");
    config += &check_toml("hang_long", &[&hang_long], "interval = 1\ntimeout = 5");
    config += &check_toml("fast", &[&check_dummy, "0", "fine"], "interval = 1");
    fs::write(&env.config, config).unwrap();
    let mut daemon = env.start(&["--interval", "1"]);

    // The long hang starts; while it hangs, the fast check keeps its pace.
    wait_until("hang_long's two sleeps", || live_with_arg(&long).len() == 2);
    let long_pids = live_with_arg(&long);
    let fast_before = rows(&env, "check", "fast", "check_status");
    wait_rows(&env, "check", "hang_long", "check_status", 1);
    assert_eq!(
        env.latest("check", "hang_long", "check_status"),
        Some(1.5),
        "a timeout is UNKNOWN"
    );
    let fast_during = rows(&env, "check", "fast", "check_status") - fast_before;
    assert!(
        fast_during >= 3,
        "the fast check ran {fast_during} times during a 5 s hang"
    );
    let ts = timestamps(&env, "check", "fast", "check_status");
    let worst_gap = ts[(fast_before as usize).saturating_sub(1)..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max);
    assert!(
        worst_gap < 2.5,
        "the fast check waited {worst_gap:.2} s between two runs during the hang"
    );
    let duration = env
        .latest("check", "hang_long", "check_duration_ms")
        .unwrap();
    assert!(
        (4500.0..8000.0).contains(&duration),
        "killed at its 5 s timeout: {duration} ms"
    );
    wait_until("hang_long's first run's processes to be gone", || {
        long_pids.iter().all(|p| !is_live_with_arg(*p, &long))
    });

    // The short hang: UNKNOWN, an alert saying it timed out, nothing of it left behind.
    wait_value(&env, "check", "hang", "check_status", 1.5);
    wait_until("the timeout alert", || {
        active_message(&env, "check", "hang", "check_status").is_some()
    });
    let message = active_message(&env, "check", "hang", "check_status").unwrap();
    assert!(
        message.contains("timed out after 1 s"),
        "the alert says it timed out: {message}"
    );
    wait_until("a run of hang in progress", || {
        live_with_arg(&short).len() == 2
    });
    let pids = live_with_arg(&short);
    let done = rows(&env, "check", "hang", "check_status");
    wait_rows(&env, "check", "hang", "check_status", done + 2);
    wait_until("the processes of an earlier run of hang to be gone", || {
        pids.iter().all(|p| !is_live_with_arg(*p, &short))
    });
    let leftovers = live_with_arg(&short);
    assert!(
        leftovers.len() <= 2,
        "only the run in progress may have processes: {leftovers:?}"
    );
    assert!(daemon.child.try_wait().unwrap().is_none(), "still running");

    let fast = rows(&env, "check", "fast", "check_status");
    wait_rows(&env, "check", "fast", "check_status", fast + 2);
    assert_eq!(env.latest("check", "fast", "check_status"), Some(0.0));
    assert!(!env.alert_active("fast", "check_status"));

    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    // Leave nothing behind whatever the daemon did (see the shutdown test below).
    kill_all(&live_with_arg(&short));
    kill_all(&live_with_arg(&long));
}

#[test]
fn stopping_the_daemon_kills_a_plugin_in_progress() {
    let env = Env::new("");
    let arg = unique_sleep();
    let hang = script(&env, "hang", &format!("sleep {arg} &\nsleep {arg}"));
    fs::write(
        &env.config,
        check_toml("hang", &[&hang], "interval = 1\ntimeout = 20"),
    )
    .unwrap();
    let mut daemon = env.start(&["--interval", "1"]);
    wait_until("the plugin's two sleeps", || live_with_arg(&arg).len() == 2);
    let pids = live_with_arg(&arg);
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = live_with_arg(&arg);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = live_with_arg(&arg);
    }
    kill_all(&left);
    kill_all(&pids);
    assert_eq!(
        left,
        Vec::<u32>::new(),
        "the plugin's processes outlived the daemon"
    );
}

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn ten_megabytes_of_output_are_cut_and_logged_once() {
    let env = Env::new("");
    let chatty = script(
        &env,
        "chatty",
        "head -c 10000000 /dev/zero | tr '\\0' x\necho\nexit 0",
    );
    fs::write(
        &env.config,
        check_toml("chatty", &[&chatty], "interval = 1"),
    )
    .unwrap();
    let mut daemon = env.start(&["--interval", "1"]);
    let mut worst = 0;
    let begun = Instant::now();
    while rows(&env, "check", "chatty", "check_status") < 4 {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the daemon died:\n{}",
            daemon.log()
        );
        worst = worst.max(rss_kb(daemon.pid()));
        assert!(begun.elapsed() < DEADLINE, "chatty never ran 4 times");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(worst < 200 * 1024, "daemon RSS reached {worst} kB");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_metrics WHERE resource_id = 'chatty'
             AND metric_name = 'check_status' AND value != 0"
        ),
        0,
        "every run is OK"
    );
    assert!(!env.alert_active("chatty", "check_status"));
    let duration = env.latest("check", "chatty", "check_duration_ms").unwrap();
    assert!(duration < 5000.0, "draining 10 MB took {duration} ms");
    assert_eq!(
        stored_metrics(&env, "check", "chatty"),
        BTreeSet::from(["check_duration_ms".to_string(), "check_status".to_string()])
    );
    let log = daemon.log();
    let said = log.matches("output longer than 65536 bytes").count();
    assert_eq!(said, 1, "the truncation is logged once:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("check chatty") && l.contains("output longer than")),
        "{log}"
    );
    assert!(log.len() < 1_000_000, "the output did not go to the log");
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
}

#[test]
fn malformed_perfdata_keeps_the_good_data_and_is_logged_once() {
    let env = Env::new("");
    let malformed = script(
        &env,
        "malformed",
        "echo \"OK - fine | good=1;2;3 bad=abc 'unterminated=5 also_good=7s;;;\"\nexit 0",
    );
    let after_bad = script(
        &env,
        "after_bad",
        "echo \"OK - fine | bad=abc also_good=7s;;;\"\nexit 0",
    );
    let mut config = check_toml("malformed", &[&malformed], "interval = 1");
    config += &check_toml("after_bad", &[&after_bad], "interval = 1");
    fs::write(&env.config, config).unwrap();
    let daemon = env.start(&["--interval", "1"]);
    wait_rows(&env, "check", "malformed", "check_status", 4);
    wait_rows(&env, "check", "after_bad", "check_status", 4);

    assert_eq!(env.latest("check", "malformed", "check_status"), Some(0.0));
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_metrics WHERE resource_type = 'check'
             AND metric_name = 'check_status' AND value != 0"
        ),
        0
    );
    assert!(!env.alert_active("malformed", "check_status"));
    // An unterminated quote swallows the rest of the perfdata, also_good included.
    assert_eq!(
        stored_metrics(&env, "check", "malformed"),
        BTreeSet::from(["check_duration_ms", "check_status", "good"].map(String::from))
    );
    assert_eq!(env.latest("check", "malformed", "good"), Some(1.0));
    let (unit, warning, critical) = newest_row(&env, "check", "malformed", "good");
    assert_eq!(
        (unit.as_str(), warning, critical),
        ("count", Some(2.0), Some(3.0))
    );
    // A datum after a bad one is read.
    assert_eq!(
        stored_metrics(&env, "check", "after_bad"),
        BTreeSet::from(["also_good", "check_duration_ms", "check_status"].map(String::from))
    );
    assert_eq!(env.latest("check", "after_bad", "also_good"), Some(7.0));
    let (unit, warning, critical) = newest_row(&env, "check", "after_bad", "also_good");
    assert_eq!((unit.as_str(), warning, critical), ("s", None, None));

    let log = daemon.log();
    let count = |check: &str, what: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("check {check}: ")) && l.contains(what))
            .count()
    };
    assert_eq!(count("malformed", "'bad'"), 1, "logged once:\n{log}");
    assert_eq!(
        count("malformed", "unterminated quoted label"),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(count("after_bad", "'bad'"), 1, "logged once:\n{log}");
    assert_eq!(count("after_bad", "also_good"), 0, "{log}");
}

#[test]
fn bad_checks_are_refused_or_reported() {
    let check_dummy = plugin("check_dummy");

    // An empty command in the config: start fails, naming the entry.
    let broken = Env::new(&check_toml("empty", &[], ""));
    let (mut cmd, log) = broken.start_command(&["--interval", "1"]);
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("start did not fail on an empty command");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("[[check]] #1"), "names the entry: {text}");
    assert!(text.contains("empty"), "{text}");

    // A relative program, no daemon running: a usage error, nothing stored.
    let offline = Env::new("");
    let out = hm(
        &offline,
        &["add", "check", "x", "--command", "relative/path", "-v"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("relative/path must be absolute"),
        "{stderr}"
    );
    assert!(
        !offline.db.exists() || offline.count("SELECT count(*) FROM monitors") == 0,
        "nothing stored"
    );

    let env = Env::new(&check_toml(
        "cfg",
        &[&check_dummy, "0", "from the config"],
        "interval = 1",
    ));
    let _daemon = env.start(&["--interval", "1"]);
    wait_rows(&env, "check", "cfg", "check_status", 1);

    // The same with a daemon.
    let out = hm(&env, &["add", "check", "x", "--command", "relative/path"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("relative/path must be absolute"),
        "{stderr}"
    );
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 0);
    assert!(
        !hm_ok(&env, &["list"]).lines().any(|l| l.contains(" x ")),
        "x is not listed"
    );

    // The config's check cannot be removed (nor replaced) from the CLI.
    let out = hm(&env, &["remove", "check", "cfg"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("config file") && stderr.contains("[[check]]"),
        "{stderr}"
    );
    let out = hm(
        &env,
        &[
            "add",
            "check",
            "cfg",
            "--command",
            &check_dummy,
            "2",
            "hijacked",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    let cfg_rows = rows(&env, "check", "cfg", "check_status");
    wait_rows(&env, "check", "cfg", "check_status", cfg_rows + 2);
    assert_eq!(env.latest("check", "cfg", "check_status"), Some(0.0));
    assert!(!env.alert_active("cfg", "check_status"));

    // A program that is not there: UNKNOWN, saying it cannot run; removing it resolves that.
    hm_ok(
        &env,
        &[
            "add",
            "check",
            "gone",
            "--interval",
            "1",
            "--command",
            "/nonexistent/plugin",
            "-x",
        ],
    );
    wait_value(&env, "check", "gone", "check_status", 1.5);
    wait_until("the alert of the missing plugin", || {
        active_message(&env, "check", "gone", "check_status").is_some()
    });
    let message = active_message(&env, "check", "gone", "check_status").unwrap();
    assert!(
        message.contains("cannot run /nonexistent/plugin"),
        "{message}"
    );
    assert!(message.contains("No such file or directory"), "{message}");
    hm_ok(&env, &["remove", "check", "gone"]);
    wait_until("the alert of the removed check to resolve", || {
        !env.alert_active("gone", "check_status")
    });
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 0);
}

#[test]
fn added_checks_survive_restarts() {
    let check_dummy = plugin("check_dummy");
    let env = Env::new("");
    let mut daemon = env.start(&["--interval", "1"]);
    hm_ok(
        &env,
        &[
            "add",
            "check",
            "live",
            "--interval",
            "1",
            "--timeout",
            "5",
            "--command",
            &check_dummy,
            "0",
            "live one",
        ],
    );
    wait_rows(&env, "check", "live", "check_status", 1);
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    let stopped_at = rows(&env, "check", "live", "check_status");

    // Added while no daemon runs: written to the database, run from the next start.
    let out = hm_ok(
        &env,
        &[
            "add",
            "check",
            "offline",
            "--interval",
            "1",
            "--command",
            &check_dummy,
            "1",
            "offline one",
        ],
    );
    assert!(out.contains("no daemon running"), "{out}");
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE kind = 'check'"),
        2
    );

    let mut daemon = env.start(&["--interval", "1"]);
    wait_rows(&env, "check", "live", "check_status", stopped_at + 2);
    assert_eq!(env.latest("check", "live", "check_status"), Some(0.0));
    wait_value(&env, "check", "offline", "check_status", 1.0);
    wait_until("the offline check's WARNING alert", || {
        active_message(&env, "check", "offline", "check_status").as_deref()
            == Some("WARNING: offline one")
    });
    let list = hm_ok(&env, &["list"]);
    for id in ["live", "offline"] {
        assert!(
            list.lines()
                .any(|l| l.starts_with("check") && l.contains(id) && l.contains("running")),
            "{id} running in:\n{list}"
        );
    }

    // SIGTERM, and once more.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    let live = rows(&env, "check", "live", "check_status");
    let offline = rows(&env, "check", "offline", "check_status");
    let _daemon = env.start(&["--interval", "1"]);
    wait_rows(&env, "check", "live", "check_status", live + 1);
    wait_rows(&env, "check", "offline", "check_status", offline + 1);
    assert!(
        env.alert_active("offline", "check_status"),
        "still WARNING, still alerted"
    );
    assert_eq!(alerts_ever(&env, "check", "offline", "check_status"), 1);
}

#[test]
fn a_second_check_on_one_resource_is_refused_so_its_alert_cannot_flap() {
    let check_dummy = plugin("check_dummy");
    let mut config = check_toml(
        "okc",
        &[&check_dummy, "0", "fine"],
        "interval = 1\nresource = \"agent:a1\"",
    );
    config += &check_toml(
        "badc",
        &[&check_dummy, "2", "broken"],
        "interval = 1\nresource = \"agent:a1\"",
    );
    // In the config file: refused at start, naming both.
    let env = Env::new(&config);
    let out = hm(&env, &["start", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("[[check]] #2 (badc)")
            && stderr.contains("check okc already reports on agent:a1"),
        "{stderr}"
    );
    // Added live beside a config check: refused by the daemon, which keeps running.
    let env = Env::new(&check_toml(
        "okc",
        &[&check_dummy, "0", "fine"],
        "interval = 1\nresource = \"agent:a1\"",
    ));
    let _daemon = env.start(&["--interval", "1"]);
    let out = hm(
        &env,
        &[
            "add",
            "check",
            "badc",
            "--resource",
            "agent:a1",
            "--command",
            &check_dummy,
            "2",
            "x",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("already reports on agent:a1"), "{stderr}");
    // On its own resource it is fine.
    let out = hm(
        &env,
        &["add", "check", "badc", "--command", &check_dummy, "2", "x"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_rows(&env, "agent", "a1", "check_status", 3);
    assert_eq!(alerts_ever(&env, "agent", "a1", "check_status"), 0);
}

#[test]
fn a_config_check_is_refused_by_add_and_remove_without_a_daemon_too() {
    let check_dummy = plugin("check_dummy");
    let env = Env::new(&check_toml("cfg", &[&check_dummy, "0", "fine"], ""));
    let out = hm(&env, &["remove", "check", "cfg"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "remove: {stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    let out = hm(
        &env,
        &["add", "check", "cfg", "--command", &check_dummy, "2", "x"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "add: {stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    assert!(!env.db.exists() || env.count("SELECT count(*) FROM monitors") == 0);
}
