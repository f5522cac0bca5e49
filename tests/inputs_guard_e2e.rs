//! What operators and scripts hand the daemon, end to end with the real binary: a pid that is
//! reused while the daemon is down, heartbeats stamped by a wrong clock or not readable at all,
//! and paths that are not what they seem (`..`, a regular file, a newline, invalid UTF-8), over
//! the CLI without a daemon, the control socket and HTTP alike.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use common::{Daemon, Env, FakeAgent, wait_until};
use serde_json::{Value, json};

const FAST: &str = "interval = 0.1\n";
const TOKEN: &str = "inputs-guard-token-0123456789";

/// The start time of a process in clock ticks after boot (field 22 of its stat line).
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

/// The options saved for a monitor.
fn saved_options(env: &Env, kind: &str, id: &str) -> Value {
    try_saved_options(env, kind, id).unwrap_or_else(|| panic!("{kind} {id} not saved"))
}

/// The options of a monitor row, or `None` while the writer has not landed it yet.
fn try_saved_options(env: &Env, kind: &str, id: &str) -> Option<Value> {
    let text: String = env
        .db()
        .query_row(
            "SELECT options FROM monitors WHERE kind = ?1 AND id = ?2",
            [kind, id],
            |r| r.get(0),
        )
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// The newest value of a metric written after row `after`.
fn latest_after(env: &Env, after: i64, id: &str, metric: &str) -> Option<f64> {
    env.db()
        .query_row(
            "SELECT value FROM health_metrics WHERE id > ?1 AND resource_id = ?2
             AND metric_name = ?3 ORDER BY id DESC LIMIT 1",
            rusqlite::params![after, id, metric],
            |r| r.get(0),
        )
        .ok()
}

/// How many rows of a metric there are after row `after`.
fn rows_after(env: &Env, after: i64, id: &str, metric: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM health_metrics WHERE id > ?1 AND resource_id = ?2
             AND metric_name = ?3",
            rusqlite::params![after, id, metric],
            |r| r.get(0),
        )
        .unwrap()
}

fn last_metric_row(env: &Env) -> i64 {
    env.count("SELECT coalesce(max(id), 0) FROM health_metrics")
}

/// Stops a daemon through the CLI and waits for it to be gone.
fn stop(env: &Env, mut daemon: Daemon) {
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
}

/// Runs the CLI with raw (possibly non-UTF-8) arguments.
fn hm_raw(env: &Env, args: &[&OsStr]) -> Output {
    Command::new(common::bin())
        .args(args)
        .args(env.globals())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Sends one line on the control socket and reads the answer.
fn control(env: &Env, line: &str) -> Value {
    let stream = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (&stream).write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

/// POSTs a monitor to the HTTP API; returns the status and the JSON answer.
fn http_add(addr: &str, body: &str) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /api/v1/monitors HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    // actix answers small bodies whole; a chunked one starts with its size line.
    let body = body
        .find('{')
        .map(|at| &body[at..body.rfind('}').unwrap() + 1])
        .unwrap_or("null");
    (status, serde_json::from_str(body).unwrap())
}

/// A daemon with the HTTP API on a free loopback port.
fn start_with_http(env: &Env) -> (Daemon, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let daemon = env.start(&["--listen", &addr]);
    wait_until("the HTTP listener", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    (daemon, addr)
}

/// Sets a file's mtime.
fn set_mtime(path: &Path, when: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[test]
fn an_added_pid_has_its_start_time_recorded_offline_over_the_socket_and_over_http() {
    let env = Env::new(&format!("{FAST}[http]\ntoken = \"{TOKEN}\"\n"));
    let agent = FakeAgent::spawn();
    let pid = agent.pid();
    let ticks = start_ticks(pid);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let recorded = |options: &Value| {
        assert_eq!(options["pid"], pid, "{options}");
        assert_eq!(options["pid_start"]["ticks"], ticks, "{options}");
        assert_eq!(options["pid_start"]["boot_id"], boot.trim(), "{options}");
    };
    // No daemon: the database gets it.
    env.hm_ok(&["add", "agent", "offline", "--pid", &pid.to_string()]);
    recorded(&saved_options(&env, "agent", "offline"));
    // A pid that no process has is refused: the next process to get it would be the agent.
    let out = env.hm(&["add", "agent", "nobody", "--pid", "4194000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no process with pid 4194000"));

    let (_daemon, addr) = start_with_http(&env);
    env.hm_ok(&["add", "agent", "cli", "--pid", &pid.to_string()]);
    let answer = control(
        &env,
        &json!({"op": "add", "monitor": {"kind": "agent", "id": "raw", "options": {"pid": pid}}})
            .to_string(),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    let (status, answer) = http_add(
        &addr,
        &json!({"kind": "agent", "id": "web", "options": {"pid": pid}}).to_string(),
    );
    assert_eq!(status, 201, "{answer}");
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    for id in ["offline", "cli", "raw", "web"] {
        let listed = list.iter().find(|m| m["id"] == id).unwrap();
        recorded(&listed["options"]);
    }
    wait_until("the web agent saved", || {
        try_saved_options(&env, "agent", "web").is_some_and(|o| o["pid_start"]["ticks"] == ticks)
    });
    let answer = control(
        &env,
        r#"{"op":"add","monitor":{"kind":"agent","id":"nobody","options":{"pid":4194000}}}"#,
    );
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no process"));
    let (status, answer) = http_add(
        &addr,
        r#"{"kind":"agent","id":"nobody","options":{"pid":4194000}}"#,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("no process"));
}

#[test]
fn a_pid_reused_while_the_daemon_was_down_reads_dead_and_is_said_once() {
    let env = Env::new(FAST);
    let agent = FakeAgent::spawn();
    let pid = agent.pid();
    env.hm_ok(&["add", "agent", "a1", "--pid", &pid.to_string()]);
    let daemon = env.start(&[]);
    wait_until("the agent alive", || {
        env.latest("agent", "a1", "agent_active") == Some(1.0)
    });
    stop(&env, daemon);
    // While the daemon is down, the agent ends and another process gets its pid: the saved
    // start time is no longer the one of the process holding the pid. (A real reuse is in the
    // next test, where the kernel lets us choose the pid.)
    let mut options = saved_options(&env, "agent", "a1");
    let ticks = options["pid_start"]["ticks"].as_u64().unwrap();
    options["pid_start"]["ticks"] = json!(ticks - 1);
    env.db_write()
        .execute(
            "UPDATE monitors SET options = ?1 WHERE kind = 'agent' AND id = 'a1'",
            [options.to_string()],
        )
        .unwrap();
    let before = last_metric_row(&env);
    let daemon = env.start(&[]);
    wait_until("ten cycles after the restart", || {
        rows_after(&env, before, "a1", "agent_active") >= 10
    });
    assert_eq!(
        latest_after(&env, before, "a1", "agent_active"),
        Some(0.0),
        "{}",
        daemon.log()
    );
    assert_eq!(
        latest_after(&env, before, "a1", "agent_process_count"),
        None,
        "another process's tree is not measured"
    );
    wait_until("the agent_active alert", || {
        env.alert_active("a1", "agent_active")
    });
    let log = daemon.log();
    assert_eq!(
        log.matches(&format!("pid {pid} was reused")).count(),
        1,
        "{log}"
    );
}

/// Makes the kernel give `pid` to a new `sleep`, through `ns_last_pid`; `None` where that cannot
/// be written (not root) or another process keeps taking the pid first.
fn respawn_with_pid(pid: u32) -> Option<FakeAgent> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let next = FakeAgent::spawn();
        if next.pid() == pid {
            return Some(next);
        }
    }
    None
}

#[test]
fn a_pid_really_reused_after_a_restart_is_not_the_agent() {
    let env = Env::new(FAST);
    let mut agent = FakeAgent::spawn();
    let pid = agent.pid();
    env.hm_ok(&["add", "agent", "a1", "--pid", &pid.to_string()]);
    let daemon = env.start(&[]);
    wait_until("the agent alive", || {
        env.latest("agent", "a1", "agent_active") == Some(1.0)
    });
    stop(&env, daemon);
    agent.kill();
    let Some(impostor) = respawn_with_pid(pid) else {
        eprintln!("note: cannot choose a pid here (ns_last_pid); the reuse is simulated above");
        return;
    };
    assert_eq!(impostor.pid(), pid);
    let before = last_metric_row(&env);
    let daemon = env.start(&[]);
    wait_until("ten cycles after the restart", || {
        rows_after(&env, before, "a1", "agent_active") >= 10
    });
    assert_eq!(
        latest_after(&env, before, "a1", "agent_active"),
        Some(0.0),
        "the impostor with pid {pid} was taken for the agent: {}",
        daemon.log()
    );
    assert_eq!(
        daemon
            .log()
            .matches(&format!("pid {pid} was reused"))
            .count(),
        1
    );
}

#[test]
fn a_heartbeat_from_the_future_ages_by_its_mtime_and_bad_ones_are_said_once() {
    let env = Env::new(FAST);
    let agent = FakeAgent::spawn();
    let skewed = env.path("skewed.json");
    std::fs::write(
        &skewed,
        r#"{"timestamp":"2100-01-01T00:00:00Z","state":"working"}"#,
    )
    .unwrap();
    set_mtime(&skewed, SystemTime::now() - Duration::from_secs(400));
    let garbled = env.path("garbled.json");
    std::fs::write(&garbled, "{\"timestamp\": \"2026-").unwrap();
    set_mtime(&garbled, SystemTime::now() - Duration::from_secs(30));
    for (id, hb) in [("skewed", &skewed), ("garbled", &garbled)] {
        env.hm_ok(&[
            "add",
            "agent",
            id,
            "--pid",
            &agent.pid().to_string(),
            "--heartbeat",
            hb.to_str().unwrap(),
        ]);
    }
    let daemon = env.start(&[]);
    wait_until("ten heartbeat readings", || {
        rows_after(&env, 0, "skewed", "heartbeat_age_seconds") >= 10
            && rows_after(&env, 0, "garbled", "heartbeat_age_seconds") >= 10
    });
    let age = env
        .latest("agent", "skewed", "heartbeat_age_seconds")
        .unwrap();
    assert!(
        (395.0..460.0).contains(&age),
        "a heartbeat stamped 2100 must age by its mtime (400 s), not read 0: {age}"
    );
    wait_until("the stale heartbeat alert", || {
        env.alert_active("skewed", "heartbeat_age_seconds")
    });
    let age = env
        .latest("agent", "garbled", "heartbeat_age_seconds")
        .unwrap();
    assert!((25.0..90.0).contains(&age), "{age}");
    let log = daemon.log();
    assert_eq!(log.matches("heartbeat clock skew").count(), 1, "{log}");
    assert!(log.contains("2100-01-01T00:00:00Z"), "{log}");
    let garbled_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("garbled.json") && l.contains("is not JSON"))
        .collect();
    assert_eq!(garbled_lines.len(), 1, "{log}");
    assert!(garbled_lines[0].contains("WARN"), "{}", garbled_lines[0]);
}

#[test]
fn paths_given_to_add_are_normalized_and_checked_without_a_daemon() {
    let env = Env::new(FAST);
    let base = env.dir.path().to_str().unwrap().to_string();
    std::fs::create_dir(env.path("y")).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w",
        "--path",
        &format!("{base}/x/../y/."),
    ]);
    assert_eq!(
        saved_options(&env, "workspace", "w")["path"],
        format!("{base}/y")
    );
    // Relative ones are made absolute first, then normalized.
    let out = Command::new(common::bin())
        .current_dir(env.dir.path())
        .args(["add", "agent", "a", "--workspace", "sub/../y"])
        .args(["--heartbeat", "./hb/../hb.json"])
        .args(env.globals())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let options = saved_options(&env, "agent", "a");
    assert_eq!(options["workspace"], format!("{base}/y"));
    assert_eq!(options["heartbeat"], format!("{base}/hb.json"));

    // A regular file is not a directory to watch.
    let file = env.path("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    for args in [
        vec!["add", "workspace", "f", "--path", file],
        vec!["add", "agent", "f", "--workspace", file],
    ] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not a directory"),
            "{}",
            stderr(&out)
        );
    }
    // Control characters in any path.
    let newline = format!("{base}/a\nb");
    for args in [
        vec!["add", "workspace", "n", "--path", &newline],
        vec!["add", "agent", "n", "--workspace", &newline],
        vec!["add", "agent", "n", "--heartbeat", &newline],
        vec!["add", "agent", "n", "--pid-file", &newline],
        vec!["add", "workspace", "n", "--db", "a\tb.db"],
    ] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("control character"),
            "{}",
            stderr(&out)
        );
    }
    // Invalid UTF-8: a usage error naming the argument, not a silently emptied monitor.
    let bad = OsStr::from_bytes(b"/tmp/caf\xe9");
    for flag in ["--path", "--db"] {
        let out = hm_raw(
            &env,
            &[
                "add".as_ref(),
                "workspace".as_ref(),
                "u".as_ref(),
                flag.as_ref(),
                bad,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains("UTF-8"), "{}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{}", stderr(&out));
    }
    let listed = env.hm_ok(&["list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert_eq!(
        env.count("SELECT count(*) FROM monitors WHERE id IN ('f', 'n', 'u')"),
        0
    );
}

#[test]
fn paths_are_normalized_and_checked_over_the_socket_and_http_alike() {
    let env = Env::new(&format!("{FAST}[http]\ntoken = \"{TOKEN}\"\n"));
    let base = env.dir.path().to_str().unwrap().to_string();
    let file = env.path("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap().to_string();
    let (daemon, addr) = start_with_http(&env);

    // `..` folded away, through the CLI, the socket and HTTP.
    env.hm_ok(&[
        "add",
        "workspace",
        "cli",
        "--path",
        &format!("{base}/x/../cli"),
    ]);
    let raw = json!({"op": "add", "monitor": {"kind": "workspace", "id": "raw",
        "options": {"path": format!("{base}/x/../raw")}}});
    assert_eq!(control(&env, &raw.to_string())["ok"], true);
    let web = json!({"kind": "workspace", "id": "web",
        "options": {"path": format!("{base}/x/./../web/")}});
    let (status, answer) = http_add(&addr, &web.to_string());
    assert_eq!(status, 201, "{answer}");
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    for id in ["cli", "raw", "web"] {
        let listed = list.iter().find(|m| m["id"] == id).unwrap();
        assert_eq!(listed["path"], format!("{base}/{id}"), "{listed}");
    }

    // A regular file, a newline: refused everywhere, and nothing added.
    let newline = format!("{base}/a\nb");
    for (path, why) in [
        (file.as_str(), "is not a directory"),
        (newline.as_str(), "control character"),
    ] {
        let out = env.hm(&["add", "workspace", "bad", "--path", path]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        let raw = json!({"op": "add", "monitor": {"kind": "workspace", "id": "bad",
            "options": {"path": path}}});
        let answer = control(&env, &raw.to_string());
        assert_eq!(answer["ok"], false, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
        let agent = json!({"kind": "agent", "id": "bad", "options": {"workspace": path}});
        let (status, answer) = http_add(&addr, &agent.to_string());
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }
    // Invalid UTF-8 with a daemon running: exit 2 before anything is sent (it was exit 1).
    let out = hm_raw(
        &env,
        &[
            "add".as_ref(),
            "agent".as_ref(),
            "u".as_ref(),
            "--heartbeat".as_ref(),
            OsStr::from_bytes(b"/tmp/\xff.json"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("UTF-8"), "{}", stderr(&out));
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let table = env.hm_ok(&["list"]);
    assert_eq!(table.lines().count(), 4, "{table}");
    drop(daemon);
}
