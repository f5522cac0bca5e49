//! End to end: the real daemon, real processes and directories, and what it wrote to SQLite.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{Env, FakeAgent, wait_until, write_file};
use nix::sys::signal::Signal;

/// A fast interval and small size thresholds, so tests take seconds.
const FAST: &str = "interval = 0.2\nalert_cooldown = 300\n\
    [thresholds.workspace_size_mb]\nwarning = 1\ncritical = 3\n";

const MB: usize = 1024 * 1024;

fn active_size_alerts(env: &Env, id: &str) -> i64 {
    env.count(&format!(
        "SELECT count(*) FROM health_alerts WHERE resource_type = 'workspace' AND resource_id = '{id}'
         AND alert_type = 'workspace_size_mb' AND resolved = 0"
    ))
}

#[test]
fn added_workspace_and_agent_get_rows() {
    let env = Env::new(FAST);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    write_file(&ws.join("f"), 4096);
    let agent = FakeAgent::spawn();
    let _daemon = env.start(&[]);
    let pid = agent.pid().to_string();
    let ws_str = ws.display().to_string();
    assert!(
        env.hm_ok(&["add", "workspace", "w1", "--path", &ws_str])
            .contains("added workspace w1")
    );
    assert!(
        env.hm_ok(&["add", "agent", "a1", "--pid", &pid, "--workspace", &ws_str])
            .contains("added agent a1")
    );

    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_type='workspace' AND resource_id='w1'
         AND metric_name='workspace_exists' AND value=1 AND status='healthy'",
        1,
    );
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_type='workspace' AND resource_id='w1'
         AND metric_name='workspace_size_mb' AND unit='MB' AND threshold_warning=1 AND threshold_critical=3",
        1,
    );
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_type='agent' AND resource_id='a1'
         AND metric_name='agent_active' AND value=1",
        1,
    );
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_type='agent' AND resource_id='a1'
         AND metric_name='agent_memory_mb' AND value > 0",
        1,
    );
    for (t, m) in [
        ("cpu", "cpu_usage_percent"),
        ("memory", "memory_usage_percent"),
        ("filesystem", "disk_usage_percent"),
    ] {
        env.wait_count(
            &format!(
                "SELECT count(*) FROM health_metrics WHERE resource_type='{t}'
                 AND resource_id='system' AND metric_name='{m}'"
            ),
            1,
        );
    }
    let ts: String = env
        .db()
        .query_row("SELECT timestamp FROM health_metrics LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(ts.ends_with('Z') && ts.len() == 27, "{ts}");

    let status = env.status();
    assert_eq!(status["running"], true);
    assert_eq!(status["monitored_agents"], 1);
    assert_eq!(status["monitored_workspaces"], 1);
    let list: serde_json::Value = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["kind"], "agent");
    assert_eq!(list[0]["pid"], agent.pid());
}

#[test]
fn size_alert_opens_escalates_once_and_resolves() {
    let env = Env::new(FAST);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);

    write_file(&ws.join("a"), 3 * MB / 2);
    wait_until("an unhealthy size alert", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_id='w1' AND alert_type='workspace_size_mb'
             AND severity='unhealthy' AND resolved=0",
        ) == 1
    });
    let meta: String = env
        .db()
        .query_row(
            "SELECT metadata FROM health_alerts WHERE alert_type='workspace_size_mb'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["threshold_warning"], 1.0);
    assert_eq!(meta["threshold_critical"], 3.0);
    assert_eq!(meta["unit"], "MB");
    assert!(meta["value"].as_f64().unwrap() >= 1.5);

    write_file(&ws.join("b"), 2 * MB);
    wait_until("the alert to escalate to critical", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_id='w1' AND alert_type='workspace_size_mb'
             AND severity='critical' AND resolved=0",
        ) == 1
    });
    // Several more cycles pass while breached: still exactly one row for the key.
    let cycles = env.count("SELECT count(*) FROM health_metrics WHERE resource_id='w1'");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id='w1'",
        cycles + 10,
    );
    assert_eq!(active_size_alerts(&env, "w1"), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM health_alerts WHERE alert_type='workspace_size_mb'"),
        1
    );
    // (Other alerts may be active too, e.g. CPU on a busy machine: look at w1's only.)
    let status = env.status();
    let w1: Vec<&serde_json::Value> = status["active_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["resource_id"] == "w1")
        .collect();
    assert_eq!(w1.len(), 1, "{status}");
    assert_eq!(w1[0]["severity"], "critical");
    assert_eq!(status["overall_status"], "critical");

    fs::remove_file(ws.join("a")).unwrap();
    fs::remove_file(ws.join("b")).unwrap();
    wait_until("the alert to resolve", || {
        active_size_alerts(&env, "w1") == 0
    });
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type='workspace_size_mb'
             AND resolved=1 AND resolved_at IS NOT NULL"
        ),
        1
    );
}

#[test]
fn killed_agent_raises_a_critical_alert() {
    let env = Env::new(FAST);
    let mut agent = FakeAgent::spawn();
    let _daemon = env.start(&[]);
    env.hm_ok(&["add", "agent", "a1", "--pid", &agent.pid().to_string()]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id='a1' AND metric_name='agent_active' AND value=1",
        1,
    );
    assert_eq!(
        env.count("SELECT count(*) FROM health_alerts WHERE resource_id='a1'"),
        0
    );
    agent.kill();
    wait_until("a critical agent_active alert", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_type='agent' AND resource_id='a1'
             AND alert_type='agent_active' AND severity='critical' AND resolved=0",
        ) == 1
    });
    let status = env.status();
    let agent_view = status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource_id"] == "a1")
        .unwrap()
        .clone();
    assert_eq!(agent_view["status"], "critical");
}

#[test]
fn a_removed_monitor_stops_getting_rows_and_its_alerts_resolve() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    // No such directory: a critical workspace_exists alert.
    env.hm_ok(&[
        "add",
        "workspace",
        "gone",
        "--path",
        &env.path("nope").display().to_string(),
    ]);
    wait_until("the missing workspace alert", || {
        env.count("SELECT count(*) FROM health_alerts WHERE resource_id='gone' AND resolved=0") == 1
    });
    assert!(
        env.hm_ok(&["remove", "workspace", "gone"])
            .contains("removed workspace gone")
    );
    wait_until("its alert to resolve", || {
        env.count("SELECT count(*) FROM health_alerts WHERE resource_id='gone' AND resolved=0") == 0
    });
    let rows = env.count("SELECT count(*) FROM health_metrics WHERE resource_id='gone'");
    // Let at least ten system cycles pass, then check no new row came for it.
    let system = env.count("SELECT count(*) FROM health_metrics WHERE resource_type='cpu'");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_type='cpu'",
        system + 10,
    );
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id='gone'"),
        rows
    );
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 0);
    // Removing it again is safe (a retry after a timeout): nothing to do, and said so.
    let out = env.hm(&["remove", "workspace", "gone"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not monitored (nothing to remove)"),
        "{out:?}"
    );
}

#[test]
fn monitors_and_alert_state_survive_a_restart() {
    let env = Env::new(FAST);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    write_file(&ws.join("a"), 2 * MB);
    let mut daemon = env.start(&["--agents", "a1"]);
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);
    wait_until("the size alert", || active_size_alerts(&env, "w1") == 1);
    assert_eq!(env.hm_ok(&["stop"]).trim(), "stopped");
    assert_eq!(daemon.wait_exit(), 0);
    assert!(!env.socket.exists(), "stop removes the socket");

    // No daemon: status and list answer from the database.
    let offline = env.status();
    assert_eq!(offline["running"], false);
    assert_eq!(offline["monitored_agents"], 1);
    // a1 has no pid and its default workspace /tmp/agent_a1 is missing: it is down too.
    let types: Vec<&str> = offline["active_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"workspace_size_mb"), "{types:?}");
    assert_eq!(offline["active_alerts_count"], types.len());
    let rows_before = env.count("SELECT count(*) FROM health_metrics WHERE resource_id='w1'");

    let _again = env.start(&[]);
    let list: serde_json::Value = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "w1"]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id='w1'",
        rows_before + 10,
    );
    // The breach goes on after the restart: still the same single alert row.
    assert_eq!(
        env.count("SELECT count(*) FROM health_alerts WHERE alert_type='workspace_size_mb'"),
        1
    );
}

#[test]
fn a_second_daemon_on_the_same_database_is_refused() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let out = env.hm(&["start"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(
        env.socket.exists(),
        "the first daemon's socket is untouched"
    );
    env.hm_ok(&["status"]);
}

#[test]
fn sigterm_and_sigint_flush_remove_the_socket_and_exit_zero() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let env = Env::new(FAST);
        let mut daemon = env.start(&["--workspaces", "w1"]);
        env.wait_count(
            "SELECT count(*) FROM health_metrics WHERE resource_id='w1'",
            1,
        );
        daemon.signal(sig);
        assert_eq!(daemon.wait_exit(), 0, "{sig}: {}", daemon.log());
        assert!(!env.socket.exists(), "{sig} leaves no socket");
        let log = daemon.log();
        assert!(log.contains("health-monitor stopped"), "{log}");
        // Everything was checkpointed into the main file.
        let wal = env.path("hm.db-wal");
        assert!(!wal.exists() || fs::metadata(&wal).unwrap().len() == 0);
    }
}

#[test]
fn the_control_socket_is_private() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let mode = fs::metadata(&env.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn start_once_writes_one_cycle_and_prints_the_summary() {
    let env = Env::new(FAST);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);
    let out = env.hm_ok(&["start", "--once", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["running"], false);
    assert_eq!(summary["monitored_workspaces"], 1);
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id='w1' AND metric_name='workspace_exists'"),
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics WHERE metric_name='cpu_usage_percent'"),
        1
    );
    let text = env.hm_ok(&["start", "--once"]);
    assert!(text.starts_with("overall: "), "{text}");
    assert!(text.contains("workspace/w1"), "{text}");
    assert!(!env.socket.exists());
}

#[test]
fn offline_add_is_picked_up_at_start() {
    let env = Env::new(FAST);
    let ws = env.path("w9");
    fs::create_dir(&ws).unwrap();
    let out = env.hm_ok(&[
        "add",
        "workspace",
        "w9",
        "--path",
        &ws.display().to_string(),
    ]);
    assert!(out.contains("no daemon running"), "{out}");
    let _daemon = env.start(&[]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id='w9' AND metric_name='workspace_exists' AND value=1",
        1,
    );
}

#[test]
fn bad_ids_flags_and_configs_exit_2_with_a_clear_message() {
    let env = Env::new(FAST);
    for args in [
        vec!["add", "agent", "../etc"],
        vec!["add", "workspace", "a/b"],
        vec!["start", "--agents", "-x"],
        vec!["remove", "agent", ".hidden"],
    ] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("starting with a letter or digit") || err.contains("unexpected argument"),
            "{args:?}: {err}"
        );
    }
    let out = env.hm(&["start", "--interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));

    fs::write(&env.config, "interval = 1\nbogus_key = 3\n").unwrap();
    let out = env.hm(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bogus_key") && err.contains("config.toml"),
        "{err}"
    );

    // A name that is not built in is a custom metric's (pushed or a check's perfdata), unless
    // it is a near miss of a built-in one: a typo.
    fs::write(
        &env.config,
        "[thresholds.cpu_usage_precent]\nwarning = 1\ncritical = 2\n",
    )
    .unwrap();
    let out = env.hm(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("cpu_usage_precent") && err.contains("did you mean \"cpu_usage_percent\""),
        "{err}"
    );
}

#[test]
fn malformed_control_messages_get_an_error_and_the_daemon_keeps_going() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let stream = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for bad in [
        "{not json",
        r#"{"op":"explode"}"#,
        r#"{"op":"add","monitor":{"kind":"agent","id":"../x"}}"#,
    ] {
        (&stream).write_all(format!("{bad}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["ok"], false, "{bad}: {line}");
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    // Same connection, still served.
    (&stream).write_all(b"{\"op\":\"ping\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert_eq!(env.status()["running"], true);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_untouched() {
    let env = Env::new(FAST);
    let content = b"precious notes, not a database\n".repeat(50);
    fs::write(&env.db, &content).unwrap();
    for args in [vec!["start"], vec!["start", "--once"], vec!["status"]] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not a SQLite database"));
    }
    assert_eq!(fs::read(&env.db).unwrap(), content);
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = std::process::Command::new(common::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected_start = format!("health-monitor {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected_start), "{text}");
    let commit = text[expected_start.len()..]
        .trim_end()
        .trim_end_matches(')');
    let hash = commit.trim_end_matches("-dirty");
    assert!(
        hash == "unknown" || (hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit())),
        "{text}"
    );
    // Built in a git checkout (as the tests are), the commit is known.
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert_ne!(hash, "unknown", "{text}");
    }
}
