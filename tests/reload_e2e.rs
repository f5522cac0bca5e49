//! Config reload end to end: the real daemon re-reads its `--config` on `reload` and SIGHUP;
//! a lowered threshold opens its alert at the next cycle, a broken file is refused with its
//! error and changes nothing, what cannot change live is named, and a reload under load loses
//! no row.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{Env, wait_until};

const BASE: &str = "interval = 0.3\nalert_cooldown = 300\n\
    [thresholds.workspace_size_mb]\nwarning = 100\ncritical = 300\n";

fn size_alert(env: &Env) -> bool {
    env.alert_active("w1", "workspace_size_mb")
}

#[test]
fn a_reload_that_lowers_a_threshold_opens_the_alert_at_the_next_cycle_and_keeps_state() {
    let env = Env::new(BASE);
    let daemon = env.start(&[]);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    common::write_file(&ws.join("data"), 2 * 1024 * 1024);
    env.hm_ok(&["add", "workspace", "w1", "--path", ws.to_str().unwrap()]);
    env.hm_ok(&["add", "workspace", "gone", "--path", "/nonexistent/gone"]);
    wait_until("an alert on the missing workspace", || {
        env.alert_active("gone", "workspace_exists")
    });
    let before: i64 = env
        .db()
        .query_row(
            "SELECT id FROM health_alerts WHERE resource_id = 'gone' AND resolved = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!size_alert(&env));
    let status = env.status();
    let first_hash = status["config"]["sha256"].as_str().unwrap().to_string();

    fs::write(
        &env.config,
        BASE.replace("warning = 100\ncritical = 300", "warning = 1\ncritical = 3"),
    )
    .unwrap();
    let out = env.hm_ok(&["reload"]);
    assert!(out.contains("applied: thresholds"), "{out}");
    wait_until("the size alert after the reload", || size_alert(&env));
    // The alert state carried over: the open alert is the same row, not a new one.
    let after: i64 = env
        .db()
        .query_row(
            "SELECT id FROM health_alerts WHERE resource_id = 'gone' AND resolved = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(before, after);
    let status = env.status();
    assert_ne!(status["config"]["sha256"].as_str().unwrap(), first_hash);
    assert_eq!(status["config"]["reloads"], 1);

    // Raised again by SIGHUP: the alert the higher threshold calls healthy resolves.
    fs::write(&env.config, BASE).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the size alert to resolve after SIGHUP", || {
        !size_alert(&env)
    });
    assert!(
        daemon
            .log()
            .contains("SIGHUP received; reloading the config")
    );
    assert_eq!(env.status()["config"]["reloads"], 2);
}

#[test]
fn a_broken_file_is_refused_with_its_error_and_the_old_thresholds_stay() {
    let env = Env::new(BASE);
    let mut daemon = env.start(&[]);
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    common::write_file(&ws.join("data"), 2 * 1024 * 1024);
    env.hm_ok(&["add", "workspace", "w1", "--path", ws.to_str().unwrap()]);
    let cycles = |env: &Env| {
        env.count("SELECT count(*) FROM health_metrics WHERE metric_name = 'workspace_size_mb'")
    };
    wait_until("a cycle", || cycles(&env) > 0);
    for broken in [
        "interval = \"soon\"\n".to_string(),
        BASE.replace("warning = 100\ncritical = 300", "warning = 1\ncritical = 1"),
    ] {
        fs::write(&env.config, &broken).unwrap();
        let out = env.hm(&["reload"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("reload refused"), "{err}");
        assert!(
            err.contains("invalid") || err.contains("must differ"),
            "{err}"
        );
        // SIGHUP with the same file: logged, and the daemon goes on.
        daemon.signal(nix::sys::signal::Signal::SIGHUP);
        let seen = cycles(&env);
        wait_until("three more cycles", || cycles(&env) >= seen + 3);
        assert!(
            !size_alert(&env),
            "the old thresholds (100/300 MB) still apply"
        );
    }
    assert!(
        daemon.log().matches("reload refused").count() >= 3,
        "{}",
        daemon.log()
    );
    // The CLI reads the file too: put a good one back to ask for the status.
    fs::write(&env.config, BASE).unwrap();
    assert_eq!(env.status()["config"]["reloads"], 0);
    assert!(daemon.child.try_wait().unwrap().is_none());
}

#[test]
fn what_cannot_change_live_is_named_and_nothing_is_lost_under_load() {
    let env = Env::new(BASE);
    let mut daemon = env.start(&[]);
    for i in 0..20 {
        let ws = env.path(&format!("w{i}"));
        fs::create_dir(&ws).unwrap();
        env.hm_ok(&[
            "add",
            "workspace",
            &format!("w{i}"),
            "--path",
            ws.to_str().unwrap(),
        ]);
    }
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 100);
    // New interval (collectors restart), a new retention (kept until a restart), a batch of
    // reports while it happens.
    fs::write(
        &env.config,
        BASE.replace("interval = 0.3", "interval = 0.2\nretention_days = 3"),
    )
    .unwrap();
    let mut input = String::new();
    for i in 0..500 {
        input.push_str(&format!("check load q{i} {i}\n"));
    }
    let out = env.hm_ok(&["reload"]);
    assert!(out.contains("interval"), "{out}");
    assert!(out.contains("kept until a restart: retention"), "{out}");
    assert!(
        daemon
            .log()
            .contains("keep their old values until a restart")
    );
    let report = env.hm_with_stdin(&["report", "--stdin"], &input);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    for _ in 0..3 {
        env.hm_ok(&["reload"]);
    }
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 100);
    assert_eq!(env.status()["monitored_workspaces"], 20);
    // Every accepted measurement is a row.
    env.stop_and_count(&mut daemon, 0);
}

#[test]
fn a_reload_brings_checks_and_sinks_in_and_takes_them_out() {
    let env = Env::new(BASE);
    let _daemon = env.start(&[]);
    let notices = env.path("notices");
    let hook = env.path("hook.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            notices.display(),
            notices.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let with = format!(
        "{BASE}[[notify.exec]]\ncommand = [\"{}\"]\n\
         [[check]]\nname = \"broken\"\ncommand = [\"/bin/false\"]\ninterval = 1\n",
        hook.display()
    );
    fs::write(&env.config, &with).unwrap();
    let out = env.hm_ok(&["reload"]);
    assert!(out.contains("notify") && out.contains("check"), "{out}");
    // /bin/false exits 1: WARNING, an alert, and its notice through the new hook.
    wait_until("the new check's alert", || {
        env.alert_active("broken", "check_status")
    });
    wait_until("its notice through the new exec hook", || {
        fs::read_to_string(&notices).is_ok_and(|n| n.contains("\"alert_type\":\"check_status\""))
    });
    assert_eq!(env.status()["monitored_checks"], 1);
    fs::write(&env.config, BASE).unwrap();
    env.hm_ok(&["reload"]);
    wait_until("the check gone and its alert resolved", || {
        !env.alert_active("broken", "check_status") && env.status()["monitored_checks"] == 0
    });
}
