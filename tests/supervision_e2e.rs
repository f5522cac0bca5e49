//! Supervision under injected faults: every child restarts, siblings carry on, nothing accepted
//! is lost, and a child that keeps failing is parked, alerted on, and recovers.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{Env, FakeAgent, wait_until};

const FAST: &str = "interval = 0.1\n[supervisor]\ninitial_backoff = 0.05\n";

fn metric_rows(env: &Env) -> u64 {
    env.count("SELECT count(*) FROM health_metrics") as u64
}

/// Stops the daemon cleanly and checks that every measurement it accepted became a row.
fn stop_and_check_nothing_lost(env: &Env, daemon: &mut common::Daemon) {
    wait_until("stop to be accepted", || env.hm(&["stop"]).status.success());
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    let accepted = daemon
        .logged_number("measurements_accepted")
        .expect("final counters logged");
    assert_eq!(daemon.logged_number("measurements_refused"), Some(0));
    assert_eq!(daemon.logged_number("rows_dropped"), Some(0));
    assert!(accepted > 0);
    assert_eq!(
        metric_rows(env),
        accepted,
        "every accepted measurement is a row"
    );
}

#[test]
fn every_child_restarts_after_a_panic_and_siblings_carry_on() {
    let env = Env::new(FAST);
    for ws in ["w1", "w2"] {
        fs::create_dir(env.path(ws)).unwrap();
        env.hm_ok(&[
            "add",
            "workspace",
            ws,
            "--path",
            &env.path(ws).display().to_string(),
        ]);
    }
    let agent = FakeAgent::spawn();
    env.hm_ok(&["add", "agent", "a1", "--pid", &agent.pid().to_string()]);
    let faults = "panic:workspace:w1:3,panic:agent:a1:4,panic:system:5,panic:analyzer:6,panic:writer:7,panic:control:3";
    let mut daemon = env.start_with_env(&[], &[("HEALTH_MONITOR_FAULTS", faults)]);

    let faulted = [
        "workspace:w1",
        "agent:a1",
        "system",
        "analyzer",
        "writer",
        "control",
    ];
    wait_until("every faulted actor restarted and running", || {
        let Some(status) = env.try_status() else {
            return false; // The control server itself may be restarting.
        };
        faulted.iter().all(|name| {
            Env::actor(&status, name).is_some_and(|a| a["restarts"] == 1 && a["state"] == "running")
        })
    });
    let status = env.status();
    let w2 = Env::actor(&status, "workspace:w2").unwrap();
    assert_eq!(w2["restarts"], 0, "a sibling never notices: {status}");
    assert_eq!(w2["state"], "running");
    // Everyone goes on measuring after the restarts.
    let before = |id: &str| {
        env.count(&format!(
            "SELECT count(*) FROM health_metrics WHERE resource_id = '{id}'"
        ))
    };
    let (w1, w2, a1, sys) = (before("w1"), before("w2"), before("a1"), before("system"));
    wait_until("rows from every collector after the restarts", || {
        before("w1") > w1 + 5
            && before("w2") > w2 + 5
            && before("a1") > a1 + 5
            && before("system") > sys + 5
    });
    let log = daemon.log();
    assert!(log.contains("injected fault"), "panics are logged");
    assert!(log.contains("actor restarted"), "restarts are logged");
    stop_and_check_nothing_lost(&env, &mut daemon);
}

#[test]
fn analyzer_and_writer_panics_under_load_lose_no_accepted_row() {
    let env =
        Env::new("interval = 0.02\n[supervisor]\ninitial_backoff = 0.01\nmax_restarts = 20\n");
    for i in 0..20 {
        let ws = format!("w{i}");
        fs::create_dir(env.path(&ws)).unwrap();
        fs::write(env.path(&ws).join("f"), b"data").unwrap();
        env.hm_ok(&[
            "add",
            "workspace",
            &ws,
            "--path",
            &env.path(&ws).display().to_string(),
        ]);
    }
    let faults = "panic:analyzer:5,panic:analyzer:40,panic:analyzer:90,panic:writer:3,panic:writer:15,panic:writer:30";
    let mut daemon = env.start_with_env(&[], &[("HEALTH_MONITOR_FAULTS", faults)]);
    wait_until("three analyzer and three writer restarts", || {
        env.try_status().is_some_and(|s| {
            Env::actor(&s, "analyzer").is_some_and(|a| a["restarts"] == 3)
                && Env::actor(&s, "writer").is_some_and(|a| a["restarts"] == 3)
        })
    });
    let rows = metric_rows(&env);
    wait_until("writes after the last restart", || {
        metric_rows(&env) > rows + 200
    });
    stop_and_check_nothing_lost(&env, &mut daemon);
}

#[test]
fn a_collector_that_keeps_failing_is_parked_degraded_alerted_then_recovers() {
    let env = Env::new(
        "interval = 0.1\n[supervisor]\ninitial_backoff = 0.05\nmax_restarts = 2\n\
         window = 60\npark_pause = 1.5\nstable_after = 1\n",
    );
    fs::create_dir(env.path("w1")).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &env.path("w1").display().to_string(),
    ]);
    let faults = "panic:workspace:w1:1,panic:workspace:w1:1,panic:workspace:w1:1";
    let _daemon = env.start_with_env(&[], &[("HEALTH_MONITOR_FAULTS", faults)]);

    wait_until("the collector parked, degraded and alerted", || {
        let status = env.status();
        let parked = Env::actor(&status, "workspace:w1").is_some_and(|a| a["state"] == "parked");
        let degraded = status["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resource_id"] == "w1" && r["status"] == "degraded");
        let alerted = status["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["resource_id"] == "w1" && a["alert_type"] == "collector_failed");
        parked && degraded && alerted
    });
    wait_until("the collector_failed row in the database", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_type='workspace' AND resource_id='w1'
             AND alert_type='collector_failed' AND severity='critical' AND resolved=0",
        ) == 1
    });
    // After the pause it runs again (no faults left); once it holds, the alert resolves.
    wait_until("the restart to hold and the alert to resolve", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type='collector_failed' AND resolved=1",
        ) == 1
    });
    let status = env.status();
    let actor = Env::actor(&status, "workspace:w1").unwrap();
    assert_eq!(actor["state"], "running");
    assert_eq!(actor["restarts"], 3);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id='w1' AND metric_name='workspace_exists'",
        1,
    );
}

#[test]
fn a_malformed_fault_plan_is_refused_with_exit_2() {
    let env = Env::new(FAST);
    let (mut cmd, _) = env.start_command(&[]);
    let out = cmd
        .env("HEALTH_MONITOR_FAULTS", "panic:workspace:w1")
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HEALTH_MONITOR_FAULTS"));
}

#[test]
fn a_collector_failed_alert_left_by_a_previous_run_resolves_once_the_collector_holds() {
    let config = "interval = 0.1\n[supervisor]\ninitial_backoff = 0.05\nmax_restarts = 1\n\
                  park_pause = 600\nstable_after = 1\n";
    let env = Env::new(config);
    fs::create_dir(env.path("w1")).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &env.path("w1").display().to_string(),
    ]);
    let faults = "panic:workspace:w1:1,panic:workspace:w1:1";
    let mut daemon = env.start_with_env(&[], &[("HEALTH_MONITOR_FAULTS", faults)]);
    let failed_active = || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type='collector_failed' AND resolved=0",
        )
    };
    wait_until("the collector_failed alert in the database", || {
        failed_active() == 1
    });
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);

    // A new run without faults: the collector holds, and the old alert resolves.
    let _again = env.start(&[]);
    wait_until("the old collector_failed alert to resolve", || {
        failed_active() == 0
    });
    assert_eq!(
        env.count("SELECT count(*) FROM health_alerts WHERE alert_type='collector_failed'"),
        1
    );
}
