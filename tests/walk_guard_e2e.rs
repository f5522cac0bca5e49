//! Workspaces whose permissions change while they are watched: a root that turns unreadable
//! reads `workspace_readable` 0 within a few cycles; a subdirectory that turns unreadable makes
//! the scan incomplete, keeps the last complete size and file count, and is named once in the
//! log; readable again, the true values come back. Permissions do not stop root, so when the
//! tests run as root the daemon runs as nobody.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Daemon, Env, wait_until, write_file};

fn latest(env: &Env, metric: &str) -> Option<f64> {
    env.latest("workspace", "ws", metric)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// An environment and the daemon watching the workspace `ws` in it, run as nobody when the
/// tests run as root.
fn start(make: impl FnOnce(&Path)) -> (Env, Daemon) {
    let env = Env::new("interval = 0.1\n");
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        // Nobody must be able to write its database and socket there, and read the config.
        chmod(env.dir.path(), 0o777);
        chmod(&env.config, 0o644);
    }
    let ws = env.path("ws");
    fs::create_dir(&ws).unwrap();
    make(&ws);
    let daemon = env.start_with(&[], &[], |cmd| {
        use std::os::unix::process::CommandExt;
        if root {
            cmd.uid(65534).gid(65534);
        }
    });
    env.hm_ok(&[
        "add",
        "workspace",
        "ws",
        "--path",
        &ws.display().to_string(),
    ]);
    (env, daemon)
}

/// Cycles the workspace probe ran so far (each writes one `workspace_exists` row).
fn cycles(env: &Env) -> i64 {
    env.count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'ws'
         AND metric_name = 'workspace_exists'",
    )
}

/// Waits until the workspace probe ran `n` more cycles.
fn wait_cycles(env: &Env, n: i64) {
    let target = cycles(env) + n;
    wait_until(&format!("{n} more cycles"), || cycles(env) >= target);
}

/// Rows of `metric` whose value is not `value`.
fn rows_other_than(env: &Env, metric: &str, value: f64) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM health_metrics WHERE resource_id = 'ws'
             AND metric_name = ?1 AND value != ?2",
            rusqlite::params![metric, value],
            |r| r.get(0),
        )
        .unwrap()
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[test]
fn a_watched_workspace_whose_root_turns_unreadable_reads_unreadable() {
    let (env, mut daemon) = start(|ws| {
        write_file(&ws.join("f1"), 1000);
        fs::create_dir(ws.join("sub")).unwrap();
        write_file(&ws.join("sub/f2"), 2000);
    });
    let ws = env.path("ws");
    wait_until("the workspace measured", || {
        latest(&env, "workspace_file_count") == Some(2.0)
            && latest(&env, "workspace_readable") == Some(1.0)
    });
    // Measured again from the watch for a while.
    wait_cycles(&env, 5);
    chmod(&ws, 0o000);
    wait_until("workspace_readable 0", || {
        latest(&env, "workspace_readable") == Some(0.0)
    });
    wait_until("the unreadable workspace alert", || {
        env.alert_active("ws", "workspace_readable")
    });
    wait_cycles(&env, 10);
    assert_eq!(latest(&env, "workspace_readable"), Some(0.0));
    assert_eq!(latest(&env, "workspace_exists"), Some(1.0));
    assert_eq!(latest(&env, "workspace_scan_complete"), Some(0.0));
    // Never a size or count of what could not be read.
    assert_eq!(rows_other_than(&env, "workspace_file_count", 2.0), 0);
    assert_eq!(rows_other_than(&env, "workspace_size_mb", mb(3000)), 0);
    // Logged once, not once per cycle.
    let log = daemon.log();
    assert_eq!(
        log.matches("cannot read workspace").count(),
        1,
        "the log:\n{log}"
    );
    chmod(&ws, 0o755);
    wait_until("readable again, with its size", || {
        latest(&env, "workspace_readable") == Some(1.0)
            && latest(&env, "workspace_scan_complete") == Some(1.0)
            && !env.alert_active("ws", "workspace_readable")
    });
    wait_cycles(&env, 2);
    assert_eq!(latest(&env, "workspace_file_count"), Some(2.0));
    assert_eq!(latest(&env, "workspace_size_mb"), Some(mb(3000)));
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn a_subdirectory_that_turns_unreadable_keeps_the_last_complete_size_until_it_is_readable() {
    let (env, mut daemon) = start(|ws| {
        write_file(&ws.join("f1"), 1000);
        fs::create_dir_all(ws.join("locked/deep")).unwrap();
        write_file(&ws.join("locked/f2"), 2000);
        write_file(&ws.join("locked/deep/f3"), 3000);
    });
    let ws = env.path("ws");
    let locked = ws.join("locked");
    wait_until("the workspace measured in full", || {
        latest(&env, "workspace_file_count") == Some(3.0)
            && latest(&env, "workspace_scan_complete") == Some(1.0)
    });
    assert_eq!(latest(&env, "workspace_size_mb"), Some(mb(6000)));
    wait_cycles(&env, 5);
    chmod(&locked, 0o000);
    wait_until("workspace_scan_complete 0", || {
        latest(&env, "workspace_scan_complete") == Some(0.0)
    });
    // A file where it can be read: the truth is now 3 files, of which 2 can be seen; the last
    // complete values (3 files, 6000 bytes) stand.
    write_file(&ws.join("new"), 500);
    wait_cycles(&env, 10);
    assert_eq!(latest(&env, "workspace_scan_complete"), Some(0.0));
    assert!(env.alert_active("ws", "workspace_scan_complete"));
    assert_eq!(latest(&env, "workspace_readable"), Some(1.0));
    assert_eq!(latest(&env, "workspace_file_count"), Some(3.0));
    assert_eq!(latest(&env, "workspace_size_mb"), Some(mb(6000)));
    // Never a smaller number, not even for a cycle.
    assert_eq!(rows_other_than(&env, "workspace_file_count", 3.0), 0);
    assert_eq!(rows_other_than(&env, "workspace_size_mb", mb(6000)), 0);
    // The unreadable directory is named once, not once per cycle.
    let log = daemon.log();
    let named: Vec<_> = log
        .lines()
        .filter(|l| l.contains(&locked.display().to_string()))
        .collect();
    assert_eq!(named.len(), 1, "the log:\n{log}");
    assert!(named[0].contains("cannot read part"), "{}", named[0]);
    // Readable again: complete, with the true values.
    chmod(&locked, 0o755);
    wait_until("complete again with the true values", || {
        latest(&env, "workspace_scan_complete") == Some(1.0)
            && latest(&env, "workspace_file_count") == Some(4.0)
            && !env.alert_active("ws", "workspace_scan_complete")
    });
    assert_eq!(latest(&env, "workspace_size_mb"), Some(mb(6500)));
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
}
