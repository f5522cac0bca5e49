//! The database file under a careless operator: deleted while in use, replaced while in use,
//! reached by a second daemon through another name, a full disk at start, a backup that fails.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Env, Tmpfs, wait_until};
use rusqlite::Connection;
use serde_json::Value;

/// A hook that appends each notice (one JSON line) to `out`.
fn notice_hook(env: &Env, out: &Path) -> String {
    let hook = env.path("hook.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    hook.display().to_string()
}

/// The notices the hook received about `alert_type`, as (state, severity, message).
fn notices(out: &Path, alert_type: &str) -> Vec<(String, String, String)> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|n| n["alert_type"] == alert_type)
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (s("state"), s("severity"), s("message"))
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /healthz`: the status code and the JSON body.
fn healthz(addr: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let code = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Polls `cond` until it holds or the harness deadline passes, without failing.
fn wait_until_or(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while !cond() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn incident(env: &Env) -> Value {
    env.status()["writer"]["database_file"].clone()
}

/// A workspace `w1` (present) and `gone` (missing, so its alert is active), and a silence.
fn populate(env: &Env) {
    let w1 = env.path("w1");
    fs::create_dir_all(&w1).unwrap();
    fs::write(w1.join("f"), b"x").unwrap();
    env.hm_ok(&["add", "workspace", "w1", "--path", w1.to_str().unwrap()]);
    let gone = env.path("gone");
    fs::create_dir_all(&gone).unwrap();
    env.hm_ok(&["add", "workspace", "gone", "--path", gone.to_str().unwrap()]);
    fs::remove_dir(&gone).unwrap();
    env.hm_ok(&[
        "silence",
        "add",
        "--resource",
        "workspace:w1",
        "--for",
        "1h",
    ]);
}

#[test]
fn a_deleted_database_is_recreated_with_everything_and_the_operator_is_told() {
    let env = Env::new("interval = 0.1\n");
    let out = env.path("notices.jsonl");
    let hook = notice_hook(&env, &out);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = env.start(&["--on-alert", &hook, "--listen", &addr]);
    populate(&env);
    wait_until("the missing workspace's alert", || {
        env.alert_active("gone", "workspace_exists")
    });
    env.wait_count("SELECT count(*) FROM health_metrics", 50);
    let before = env.count("SELECT count(*) FROM health_metrics");

    // What a cleanup script does: the database goes, its WAL and shared memory stay.
    fs::remove_file(&env.db).unwrap();
    wait_until("the daemon to recreate the database", || {
        env.db.exists() && incident(&env)["kind"] == "deleted" && incident(&env)["ongoing"] == false
    });
    let found = incident(&env);
    assert!(found["copy"]["whole"] == true, "{found}");
    assert!(
        found["message"]
            .as_str()
            .unwrap()
            .contains("nothing was lost"),
        "{found}"
    );
    // Everything the old file held is in the new one, and new rows land there.
    let db = env.db();
    assert!(
        db.query_row("SELECT count(*) FROM health_metrics", [], |r| r
            .get::<_, i64>(0))
            .unwrap()
            >= before
    );
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 2);
    assert_eq!(env.count("SELECT count(*) FROM silences"), 1);
    assert!(env.alert_active("gone", "workspace_exists"));
    env.wait_count("SELECT count(*) FROM health_metrics", before + 50);
    // Loud: the log, a critical notice through the sinks, the alert row, /healthz.
    wait_until("the critical notice", || {
        notices(&out, "database_file_lost")
            .iter()
            .any(|(state, severity, m)| {
                state == "firing" && severity == "critical" && m.contains("deleted")
            })
    });
    wait_until("the file alert written and resolved", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type = 'database_file_lost' AND resolved = 1",
        ) == 1
    });
    let (code, body) = healthz(&addr);
    assert_eq!(code, 200, "{body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("was deleted"),
        "{body}"
    );
    assert!(
        daemon.log().contains("was deleted while in use"),
        "{}",
        daemon.log()
    );
    // A second time works as the first.
    fs::remove_file(&env.db).unwrap();
    wait_until("the second recreation", || {
        env.db.exists() && env.status()["writer"]["file_incidents"] == 2
    });
    env.stop_and_count(&mut daemon, 0);
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 2);
}

#[test]
fn a_replaced_database_is_never_touched_and_our_rows_wait_beside_it() {
    let env = Env::new("interval = 0.1\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut daemon = env.start(&["--listen", &addr]);
    populate(&env);
    env.wait_count("SELECT count(*) FROM health_metrics", 50);

    // Another application's database, moved over ours.
    let theirs = env.path("theirs.db");
    {
        let c = Connection::open(&theirs).unwrap();
        c.execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO notes (body) SELECT 'note ' || i FROM n;",
        )
        .unwrap();
    }
    let their_bytes = fs::read(&theirs).unwrap();
    fs::rename(&theirs, &env.db).unwrap();
    wait_until("the daemon to notice", || {
        incident(&env)["kind"] == "replaced" && incident(&env)["ongoing"] == true
    });
    let found = incident(&env);
    let saved = found["saved_copy"].as_str().unwrap().to_string();
    // Rows go on being accepted and are held while the path is not ours.
    let held = env.status()["writer"]["buffered_rows"].as_u64().unwrap();
    wait_until("rows to be held in memory", || {
        env.status()["writer"]["buffered_rows"].as_u64().unwrap() > held + 30
    });
    // Their file is byte for byte theirs, with no WAL of ours beside it to apply.
    assert_eq!(fs::read(&env.db).unwrap(), their_bytes);
    let wal = env.path("hm.db-wal");
    assert!(!wal.exists() || fs::metadata(&wal).unwrap().len() == 0);
    {
        let c = Connection::open(&env.db).unwrap();
        let notes: i64 = c
            .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(notes, 500);
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let ours: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'health_metrics'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(ours, 0, "none of our tables in their file");
    }
    assert_eq!(
        fs::read(&env.db).unwrap(),
        their_bytes,
        "opening it changed nothing either"
    );
    // Our rows up to the replacement are in the copy beside it.
    {
        let c = Connection::open(&saved).unwrap();
        let monitors: i64 = c
            .query_row("SELECT count(*) FROM monitors", [], |r| r.get(0))
            .unwrap();
        assert_eq!(monitors, 2);
    }
    // Said everywhere: status, /healthz, the log, an alert (held with the rest).
    let (code, body) = healthz(&addr);
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("replaced"), "{body}");
    assert!(
        daemon.log().contains("replaced by another file"),
        "{}",
        daemon.log()
    );
    wait_until("the database alert", || {
        env.status()["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert_type"] == "database_file_lost" && a["severity"] == "critical")
    });

    // The operator moves their file away: our copy goes back and the held rows land.
    fs::rename(&env.db, env.path("theirs-again.db")).unwrap();
    wait_until("writing to resume", || {
        let s = env.status();
        s["writer"]["database_file"]["ongoing"] == false && s["writer"]["buffered_rows"] == 0
    });
    assert!(!Path::new(&saved).exists(), "our copy is at the path now");
    assert_eq!(
        fs::read(env.path("theirs-again.db")).unwrap(),
        their_bytes,
        "their file was never written"
    );
    wait_until("the file alert resolved", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type = 'database_file_lost' AND resolved = 1",
        ) == 1
    });
    env.stop_and_count(&mut daemon, 0);
}

#[test]
fn our_copy_moved_back_over_theirs_resumes_writing_too() {
    let env = Env::new("interval = 0.1\n");
    let mut daemon = env.start(&[]);
    populate(&env);
    env.wait_count("SELECT count(*) FROM health_metrics", 20);
    let theirs = env.path("theirs.db");
    Connection::open(&theirs)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    fs::rename(&theirs, &env.db).unwrap();
    wait_until("the daemon to notice", || incident(&env)["ongoing"] == true);
    let saved = incident(&env)["saved_copy"].as_str().unwrap().to_string();
    fs::rename(&saved, &env.db).unwrap();
    wait_until("writing to resume", || {
        let s = env.status();
        s["writer"]["database_file"]["ongoing"] == false && s["writer"]["buffered_rows"] == 0
    });
    env.stop_and_count(&mut daemon, 0);
}

#[test]
fn a_second_daemon_through_a_symlink_or_a_hard_link_is_refused_with_the_first_ones_pid() {
    let env = Env::new("interval = 0.2\n");
    let daemon = env.start(&[]);
    let pid = daemon.pid();
    let symlink = env.path("sym.db");
    std::os::unix::fs::symlink(&env.db, &symlink).unwrap();
    let hard = env.path("hard.db");
    fs::hard_link(&env.db, &hard).unwrap();
    for (i, other) in [&symlink, &hard].into_iter().enumerate() {
        let log = env.path(&format!("other{i}.log"));
        let mut second = std::process::Command::new(common::bin())
            .args(["start", "--db-path", other.to_str().unwrap()])
            .args([
                "--socket",
                env.path(&format!("other{i}.sock")).to_str().unwrap(),
            ])
            .args(["--config", env.config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // A second daemon that is let in runs for ever: kill it rather than wait.
        let mut code = None;
        wait_until_or(|| {
            code = second.try_wait().unwrap().map(|s| s.code());
            code.is_some()
        });
        if code.is_none() {
            let _ = second.kill();
            let _ = second.wait();
        }
        let stderr = fs::read_to_string(&log).unwrap();
        assert_eq!(code, Some(Some(1)), "{stderr}");
        assert!(stderr.contains("already running"), "{stderr}");
        assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    }
    // The first one runs on, alone.
    let s = env.status();
    assert_eq!(s["running"], true);
    assert_eq!(s["pid"].as_u64(), Some(pid as u64), "{s}");
}

#[test]
fn a_full_disk_at_start_is_no_reason_not_to_start() {
    let Some((env, _tmpfs)) = Env::on_tmpfs("interval = 0.1\n", "3m") else {
        return;
    };
    let tiny = env.path("tiny");
    // A first run leaves monitors, an active alert and a silence.
    let mut first = env.start(&[]);
    populate(&env);
    wait_until("the missing workspace's alert", || {
        env.alert_active("gone", "workspace_exists")
    });
    env.hm_ok(&["stop"]);
    assert_eq!(first.wait_exit(), 0, "{}", first.log());
    let rows_before = env.count("SELECT count(*) FROM health_metrics") as u64;
    // A clean stop leaves the WAL empty; a reader that closed last may leave both files, which
    // would let SQLite open without allocating anything. Without them it must size new ones.
    for leftover in ["hm.db-wal", "hm.db-shm"] {
        let _ = fs::remove_file(tiny.join(leftover));
    }
    // Not a byte left: one big file, then pages until not even one fits.
    let filler = tiny.join("filler");
    let _ = fs::write(&filler, vec![0u8; 4 * 1024 * 1024]);
    for i in 0.. {
        if fs::write(tiny.join(format!("page{i}")), [0u8; 4096]).is_err() {
            break;
        }
    }
    let mut daemon = env.start(&[]);
    wait_until("collection to go on with nothing written", || {
        let s = env.status();
        s["measurements_accepted"].as_u64().unwrap() > 20
            && s["writer"]["buffered_rows"].as_u64().unwrap() > 20
            && s["writer"]["failing"] == true
    });
    wait_until("the database alert", || {
        env.status()["active_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["alert_type"] == "database_write_failed")
    });
    assert!(daemon.log().contains("starting anyway"), "{}", daemon.log());
    let s = env.status();
    assert_eq!(s["monitored_workspaces"], 2, "the stored monitors run: {s}");
    fs::remove_file(&filler).unwrap();
    wait_until("the held rows to land", || {
        let w = &env.status()["writer"];
        w["buffered_rows"] == 0 && w["failing"] == false
    });
    env.stop_and_count(&mut daemon, rows_before);
    // The stored alert was taken up again, not raised a second time.
    assert_eq!(
        env.count("SELECT count(*) FROM health_alerts WHERE resource_id = 'gone' AND resolved = 0"),
        1
    );
}

#[test]
fn a_backup_that_fails_for_lack_of_room_leaves_nothing_behind() {
    let env = Env::new("");
    {
        let conn = health_monitor::store::open_for_writing(&env.db).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO health_metrics (resource_type, resource_id, metric_name, value, timestamp, status)
             SELECT 'system', 'host', 'cpu_percent', i, '2026-01-01T00:00:00Z', 'healthy' FROM n;",
        )
        .unwrap();
    }
    let small = env.path("small");
    fs::create_dir(&small).unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&small, "256k") else {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let out = env.hm(&["db", "backup", small.join("copy.db").to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("full") || stderr.contains("space"),
        "{stderr}"
    );
    let left: Vec<_> = fs::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_deleted_database_on_a_disk_without_room_for_a_copy_keeps_the_state_and_counts_the_loss() {
    // Smaller than a whole copy's headroom: only the state can be copied.
    let Some((env, _tmpfs)) = Env::on_tmpfs("interval = 0.05\n", "6m") else {
        return;
    };
    let tiny = env.path("tiny");
    let mut daemon = env.start(&[]);
    populate(&env);
    wait_until("the missing workspace's alert", || {
        env.alert_active("gone", "workspace_exists")
    });
    env.wait_count("SELECT count(*) FROM health_metrics", 200);
    fs::remove_file(&env.db).unwrap();
    wait_until("the daemon to recreate the database", || {
        let i = incident(&env);
        env.db.exists() && i["kind"] == "deleted" && i["ongoing"] == false
    });
    let found = incident(&env);
    assert_eq!(found["copy"]["whole"], false, "{found}");
    let lost = found["copy"]["metric_rows_lost"].as_u64().unwrap();
    assert!(lost >= 200, "{found}");
    let message = found["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{lost} metric rows")),
        "{message}"
    );
    assert!(daemon.log().contains(&format!("{lost} metric rows")));
    // The state is all there, and new rows land beside it.
    assert_eq!(env.count("SELECT count(*) FROM monitors"), 2);
    assert_eq!(env.count("SELECT count(*) FROM silences"), 1);
    assert!(env.alert_active("gone", "workspace_exists"));
    env.wait_count("SELECT count(*) FROM health_metrics", 20);
    // The deleted file's space went back to the disk with the old connection.
    let held: Vec<String> = fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| {
            target.starts_with(tiny.to_str().unwrap()) && target.ends_with("(deleted)")
        })
        .collect();
    assert!(held.is_empty(), "still open: {held:?}");
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
}
