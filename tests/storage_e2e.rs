//! Storage under faults: a locked database, a full one, `kill -9` mid-write, files that are not
//! databases, and places the daemon may not write.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{Daemon, Env, wait_until};
use nix::sys::signal::Signal;
use rusqlite::Connection;

fn writer(status: &serde_json::Value) -> &serde_json::Value {
    &status["writer"]
}

fn add_workspaces(env: &Env, n: usize) {
    for i in 0..n {
        let ws = env.path(&format!("w{i}"));
        fs::create_dir_all(&ws).unwrap();
        fs::write(ws.join("f"), b"x").unwrap();
        env.hm_ok(&[
            "add",
            "workspace",
            &format!("w{i}"),
            "--path",
            &ws.display().to_string(),
        ]);
    }
}

#[test]
fn a_locked_database_delays_rows_but_collection_goes_on_and_nothing_is_lost() {
    let env = Env::new("interval = 0.1\n");
    add_workspaces(&env, 3);
    let mut daemon = env.start(&[]);
    env.wait_count("SELECT count(*) FROM health_metrics", 20);

    // Another process holds the database for 10 s.
    let locker = Connection::open(&env.db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();
    wait_until("the writer to notice the lock", || {
        writer(&env.status())["failing"] == true
    });
    let accepted_early = env.status()["measurements_accepted"].as_u64().unwrap();
    wait_until("collection to go on while locked", || {
        let s = env.status();
        s["running"] == true
            && writer(&s)["buffered_rows"].as_u64().unwrap() > 30
            && s["measurements_accepted"].as_u64().unwrap() > accepted_early + 30
    });
    let s = env.status();
    assert!(
        writer(&s)["last_error"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{s}"
    );
    // The daemon still tells the operator what is wrong, though it cannot write it down yet.
    wait_until("the database alert while locked", || {
        env.status()["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert_type"] == "database_write_failed")
    });
    // Holding the lock for its full 10 s is the fault itself, not a wait for a condition.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(locked_at.elapsed()));
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);

    wait_until("the backlog to land", || {
        let s = env.status();
        writer(&s)["failing"] == false && writer(&s)["buffered_rows"] == 0
    });
    wait_until("the database alert written and resolved", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type='database_write_failed'
             AND resource_type='database' AND resolved=1",
        ) == 1
    });
    assert!(daemon.log().contains("database write failed"));
    env.stop_and_count(&mut daemon, 0);
}

/// Shared body of the full-database tests: fill up, check the daemon copes, free space, recover.
fn full_database_recovers(env: &Env, mut daemon: Daemon, free_space: impl FnOnce()) {
    wait_until("the database to fill up", || {
        let s = env.status();
        writer(&s)["failing"] == true
            && writer(&s)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("full"))
    });
    wait_until("the buffer cap to drop old metric rows", || {
        writer(&env.status())["rows_dropped"].as_u64().unwrap() > 0
    });
    // An alert raised while full must survive the buffer cap.
    fs::remove_dir_all(env.path("w0")).unwrap();
    wait_until("the missing workspace alert", || {
        env.status()["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["resource_id"] == "w0" && a["alert_type"] == "workspace_exists")
    });
    // Less load, then space comes back.
    for i in 1..10 {
        env.hm_ok(&["remove", "workspace", &format!("w{i}")]);
    }
    free_space();
    wait_until("writes to recover", || {
        let s = env.status();
        writer(&s)["failing"] == false && writer(&s)["buffered_rows"] == 0
    });
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_id='w0'
             AND alert_type='workspace_exists' AND resolved=0"
        ),
        1,
        "the alert raised while full was kept and written"
    );
    wait_until("the database alert written and resolved", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type='database_write_failed'
             AND resource_type='database' AND resolved=1",
        ) >= 1
    });
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 1);
    let log = daemon.log();
    assert!(log.contains("database write failed"), "{log}");
    assert!(log.contains("full"), "{log}");
    assert!(log.contains("dropped the oldest metric rows"), "{log}");
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
}

#[test]
fn a_full_database_keeps_alerts_drops_oldest_metrics_past_the_cap_and_recovers() {
    let env = Env::new("interval = 0.05\nmax_db_size_mb = 0.5\nwriter_buffer_mb = 0.05\n");
    add_workspaces(&env, 10);
    let daemon = env.start(&[]);
    let db = env.db.clone();
    full_database_recovers(&env, daemon, || {
        let conn = Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("DELETE FROM health_metrics").unwrap();
    });
}

#[test]
fn a_full_disk_is_survived_too() {
    // Mounting needs privileges; the max_db_size_mb test covers the same code path.
    let Some((env, _tmpfs)) = Env::on_tmpfs("interval = 0.05\nwriter_buffer_mb = 0.05\n", "3m")
    else {
        return;
    };
    let tiny = env.path("tiny");
    add_workspaces(&env, 10);
    let daemon = env.start(&[]);
    // Leave the database about 400 KB of room.
    let filler = tiny.join("filler");
    let stat = nix::sys::statvfs::statvfs(&tiny).unwrap();
    let free = stat.blocks_available() as usize * stat.fragment_size() as usize;
    fs::write(&filler, vec![0u8; free.saturating_sub(400 * 1024)]).unwrap();
    full_database_recovers(&env, daemon, || fs::remove_file(&filler).unwrap());
}

#[test]
fn kill_9_during_heavy_writes_loses_nothing_committed_and_the_next_start_works() {
    let env = Env::new("interval = 0.02\n");
    add_workspaces(&env, 30);
    let mut daemon = env.start(&[]);
    env.wait_count("SELECT count(*) FROM health_metrics", 5000);
    let (committed, max_id): (i64, i64) = env
        .db()
        .query_row("SELECT count(*), max(id) FROM health_metrics", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit();
    assert!(env.socket.exists(), "kill -9 leaves a stale socket behind");

    let _again = env.start(&[]);
    let ok: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM health_metrics WHERE id <= {max_id}"
        )),
        committed,
        "every row committed before the kill is still there"
    );
    assert_eq!(env.status()["running"], true);
    assert_eq!(env.status()["monitored_workspaces"], 30);
}

#[test]
fn a_corrupt_database_is_refused_and_left_byte_for_byte() {
    let env = Env::new("interval = 0.1\n");
    add_workspaces(&env, 2);
    for _ in 0..20 {
        env.hm_ok(&["start", "--once"]);
    }
    let mut bytes = fs::read(&env.db).unwrap();
    assert!(bytes.len() > 6 * 4096, "{}", bytes.len());
    for b in &mut bytes[2 * 4096..4 * 4096] {
        *b = 0x5A;
    }
    fs::write(&env.db, &bytes).unwrap();
    for args in [vec!["start"], vec!["start", "--once"]] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("corrupt") && err.contains("refusing"), "{err}");
    }
    assert_eq!(fs::read(&env.db).unwrap(), bytes);
}

/// Runs the CLI as an unprivileged user when we are root (root ignores file permissions).
fn as_unprivileged(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if nix::unistd::Uid::effective().is_root() {
        cmd.uid(65534).gid(65534);
    }
}

#[test]
fn an_unwritable_directory_or_read_only_database_gets_a_clear_error() {
    let env = Env::new("interval = 0.1\n");
    // Let an unprivileged user reach the test's files.
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&env.config, fs::Permissions::from_mode(0o644)).unwrap();

    let locked_dir = env.path("locked");
    fs::create_dir(&locked_dir).unwrap();
    fs::set_permissions(&locked_dir, fs::Permissions::from_mode(0o555)).unwrap();

    let open_dir = env.path("open");
    fs::create_dir(&open_dir).unwrap();
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
    let read_only_db = open_dir.join("ro.db");
    let made = std::process::Command::new(common::bin())
        .args(["start", "--once", "--db-path"])
        .arg(&read_only_db)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for f in fs::read_dir(&open_dir).unwrap() {
        fs::set_permissions(f.unwrap().path(), fs::Permissions::from_mode(0o444)).unwrap();
    }
    let before = fs::read(&read_only_db).unwrap();

    for (db, expected) in [
        (locked_dir.join("hm.db"), "cannot create files in"),
        (read_only_db.clone(), "read-only"),
    ] {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["start", "--once", "--config"])
            .arg(&env.config)
            .arg("--db-path")
            .arg(&db);
        as_unprivileged(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", db.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{}: {err}", db.display());
    }
    assert_eq!(fs::read(&read_only_db).unwrap(), before);
}
