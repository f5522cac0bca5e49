//! The status tells the truth: an active condition alert (here a parked collector's
//! `collector_failed`) makes the overall status critical, live and from the database; and read
//! commands pointed at a database that does not exist fail instead of reporting "nothing wrong".

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{Env, bin, wait_until};
use serde_json::Value;

/// A collector that fails twice within the window is parked for ten minutes (the test's span).
/// The machine's metrics never breach (the test box may be busy): only the condition can make
/// anything critical.
const PARKING: &str = "interval = 0.1\n\
     [supervisor]\ninitial_backoff = 0.05\nmax_restarts = 1\nwindow = 60\npark_pause = 600\n\
     [thresholds.cpu_usage_percent]\nwarning = 1000\ncritical = 2000\n\
     [thresholds.load_per_core]\nwarning = 1000\ncritical = 2000\n\
     [thresholds.memory_usage_percent]\nwarning = 1000\ncritical = 2000\n\
     [thresholds.swap_usage_percent]\nwarning = 1000\ncritical = 2000\n\
     [thresholds.disk_usage_percent]\nwarning = 1000\ncritical = 2000\n\
     [thresholds.inode_usage_percent]\nwarning = 1000\ncritical = 2000\n";

/// No resource of the status is critical: whatever makes the overall status critical is not a
/// metric.
fn no_resource_is_critical(status: &Value) -> bool {
    status["resources"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] != "critical")
}

/// Runs the binary with exactly these arguments (no environment defaults).
fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn resource_status(status: &Value, resource_type: &str, id: &str) -> Option<String> {
    status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resource_type"] == resource_type && r["resource_id"] == id)
        .and_then(|r| r["status"].as_str().map(str::to_string))
}

#[test]
fn a_parked_collector_makes_the_overall_status_critical_live_and_from_the_database() {
    let env = Env::new(PARKING);
    fs::create_dir(env.path("w1")).unwrap();
    let path = env.path("w1").display().to_string();
    env.hm_ok(&["add", "workspace", "w1", "--path", &path]);
    let faults = "panic:workspace:w1:1,panic:workspace:w1:1";
    let mut daemon = env.start_with_env(&[], &[("HEALTH_MONITOR_FAULTS", faults)]);
    wait_until("the collector parked and collector_failed raised", || {
        env.try_status().is_some_and(|s| {
            Env::actor(&s, "workspace:w1").is_some_and(|a| a["state"] == "parked")
                && s["active_alerts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a["alert_type"] == "collector_failed")
        })
    });
    // The machine's own metrics are healthy, and no metric says anything is critical.
    wait_until("the system's metrics", || {
        resource_status(&env.status(), "cpu", "system").is_some()
    });

    // Live: the daemon answers.
    let live = env.status();
    assert_eq!(live["running"], true, "{live}");
    assert!(no_resource_is_critical(&live), "{live}");
    assert!(
        live["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["alert_type"] == "collector_failed"),
        "{live}"
    );
    assert_eq!(live["overall_status"], "critical", "{live}");
    // The workspace's monitoring is impaired: degraded, as before, not hidden or inflated.
    assert_eq!(
        resource_status(&live, "workspace", "w1").as_deref(),
        Some("degraded"),
        "{live}"
    );
    let live_text = env.hm_ok(&["status"]);
    assert!(live_text.starts_with("overall: CRITICAL"), "{live_text}");

    // A daemon answering on the socket stands in for a database that is not there: `status`
    // and `alerts` answer from it, naming what they did, rather than failing or saying nothing.
    let socket = env.socket.display().to_string();
    let elsewhere = env.path("typo.db").display().to_string();
    let out = run(&[
        "status",
        "--json",
        "--db-path",
        &elsewhere,
        "--socket",
        &socket,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let through: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(through["overall_status"], "critical", "{through}");
    let out = run(&["alerts", "--db-path", &elsewhere, "--socket", &socket]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.contains("collector workspace:w1 failed"), "{table}");
    let warning = text(&out.stderr);
    assert!(
        warning.contains(&format!("no database at {elsewhere}")),
        "{warning}"
    );
    assert!(
        warning.contains("showing the active alerts of the daemon"),
        "{warning}"
    );
    // History is only in a database: it fails, and says a daemon answers.
    let out = run(&[
        "history",
        "cpu",
        "system",
        "cpu_usage_percent",
        "--db-path",
        &elsewhere,
        "--socket",
        &socket,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("though a daemon (pid"), "{err}");
    assert!(
        !Path::new(&elsewhere).exists(),
        "a read created {elsewhere}"
    );

    // Offline: the daemon is gone, the alert is still open in the database.
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    assert!(env.alert_active("w1", "collector_failed"));
    let offline = env.status();
    assert_eq!(offline["running"], false, "{offline}");
    assert!(no_resource_is_critical(&offline), "{offline}");
    assert_eq!(offline["overall_status"], "critical", "{offline}");
    assert_eq!(
        resource_status(&offline, "workspace", "w1").as_deref(),
        Some("degraded"),
        "{offline}"
    );
    let offline_text = env.hm_ok(&["status"]);
    assert!(
        offline_text.starts_with("overall: CRITICAL"),
        "{offline_text}"
    );
    assert!(
        offline_text.contains("no daemon running (from the database)"),
        "{offline_text}"
    );
}

#[test]
fn read_commands_on_a_database_that_does_not_exist_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("helth_monitor.db");
    let socket = dir.path().join("hm.sock");
    let (db_arg, socket_arg) = (db.display().to_string(), socket.display().to_string());
    let globals = [
        "--db-path",
        db_arg.as_str(),
        "--socket",
        socket_arg.as_str(),
    ];
    let reads: &[&[&str]] = &[
        &["status"],
        &["status", "--json"],
        &["list"],
        &["list", "--json"],
        &["alerts"],
        &["alerts", "--all", "--json"],
        &["silence", "list"],
        &["ack", "1"],
        &["history", "cpu", "system", "cpu_usage_percent"],
        &["gastown", "status"],
        // Not a read, but "nothing to remove" from a mistyped path would hide the typo.
        &["remove", "agent", "a1"],
    ];
    for args in reads {
        let mut all = args.to_vec();
        all.extend_from_slice(&globals);
        let out = run(&all);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(&format!("no database at {db_arg}"))
                && stderr.contains(&format!("no daemon answers on {socket_arg}")),
            "{args:?}: {stderr}"
        );
        assert!(
            !stdout.contains("UNKNOWN") && !stdout.contains("no alerts"),
            "{args:?}: {stdout}"
        );
        assert!(!db.exists(), "{args:?} created the database");
    }

    // `add` without a daemon creates the database on purpose, and the reads then answer.
    let ws = dir.path().join("w1");
    fs::create_dir(&ws).unwrap();
    let ws = ws.display().to_string();
    let mut add = vec!["add", "workspace", "w1", "--path", ws.as_str()];
    add.extend_from_slice(&globals);
    let out = run(&add);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(db.exists());
    for args in [
        &["status"][..],
        &["list"],
        &["alerts"],
        &["silence", "list"],
    ] {
        let mut all = args.to_vec();
        all.extend_from_slice(&globals);
        let out = run(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let mut list = vec!["list", "--json"];
    list.extend_from_slice(&globals);
    let listed: Value = serde_json::from_slice(&run(&list).stdout).unwrap();
    assert_eq!(listed[0]["id"], "w1", "{listed}");
}
