//! systemd integration: the shipped unit verifies, READY=1 comes once the actors run,
//! WATCHDOG=1 keeps coming while the daemon is healthy and stops when the analyzer is parked.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Env, bin, wait_until};

/// The datagrams systemd would receive, read until `until` holds or the deadline passes.
fn read_until(sock: &UnixDatagram, what: &str, mut until: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + common::DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; got {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = until(&msg);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
}

fn notify_socket(env: &Env) -> (UnixDatagram, String) {
    let path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, path.display().to_string())
}

#[test]
fn ready_comes_once_the_actors_run_then_the_watchdog_is_fed_until_stopping() {
    let env = Env::new("");
    let (sock, path) = notify_socket(&env);
    let mut daemon = env.start_with_env(
        &["--interval", "0.2"],
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let got = read_until(&sock, "READY=1", |m| m.contains("READY=1"));
    assert!(
        !got.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog ping before READY: {got:?}"
    );
    let mut pings = 0;
    read_until(&sock, "three watchdog pings", |m| {
        pings += m.matches("WATCHDOG=1").count();
        pings >= 3
    });
    env.hm_ok(&["stop"]);
    read_until(&sock, "STOPPING=1", |m| m.contains("STOPPING=1"));
    assert!(daemon.child.wait().unwrap().success());
}

#[test]
fn the_watchdog_goes_hungry_when_the_analyzer_is_parked() {
    let env = Env::new(
        "[supervisor]\ninitial_backoff = 0.01\nmax_backoff = 0.05\nmax_restarts = 1\n\
         window = 60\npark_pause = 600\n",
    );
    let (sock, path) = notify_socket(&env);
    let _daemon = env.start_with_env(
        &["--interval", "0.1"],
        &[
            ("NOTIFY_SOCKET", path.as_str()),
            ("WATCHDOG_USEC", "200000"),
            (
                "HEALTH_MONITOR_FAULTS",
                "panic:analyzer:1,panic:analyzer:1,panic:analyzer:1",
            ),
        ],
    );
    read_until(&sock, "READY=1", |m| m.contains("READY=1"));
    wait_until("the analyzer parked", || {
        env.try_status()
            .and_then(|s| Env::actor(&s, "analyzer"))
            .is_some_and(|a| a["state"] == "parked")
    });
    // One ping may have been in flight when it parked; after that, silence for many periods.
    let quiet_from = Instant::now() + Duration::from_millis(300);
    let mut buf = [0u8; 4096];
    while Instant::now() < quiet_from + Duration::from_secs(1) {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            assert!(
                Instant::now() < quiet_from || !msg.contains("WATCHDOG=1"),
                "watchdog fed while the analyzer is parked: {msg}"
            );
        }
    }
}

#[test]
fn the_shipped_unit_file_verifies() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("note: systemd-analyze is not installed; skipping the unit check");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/health-monitor.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert!(unit.contains("Restart=on-failure"));
    // Verify it as shipped, pointing ExecStart at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/bin/health-monitor", bin());
    let path = dir.path().join("health-monitor.service");
    std::fs::write(&path, local).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Without systemd as PID 1 verify may grumble about the bus; the unit's own lines must not.
    let own_problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("health-monitor.service"))
        .collect();
    assert!(own_problems.is_empty(), "{stderr}");
}
