//! Collectors against real things: process trees and orphans, pid files, command-line matches,
//! tmux panes, heartbeats, git worktrees, SQLite files, read-only filesystems, overrides.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Env, Tmpfs, wait_until};

fn latest(env: &Env, resource_type: &str, id: &str, metric: &str) -> Option<f64> {
    env.latest(resource_type, id, metric)
}

fn active(env: &Env, id: &str, alert_type: &str) -> bool {
    env.alert_active(id, alert_type)
}

fn wait_value(env: &Env, t: &str, id: &str, metric: &str, want: f64) {
    wait_until(&format!("{t}/{id} {metric} = {want}"), || {
        latest(env, t, id, metric) == Some(want)
    });
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn children_of(pid: u32) -> Vec<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_tree_is_measured_and_its_orphans_are_caught_after_kill_9() {
    let env = Env::new("interval = 0.1\n");
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 600 & sleep 600 & wait"])
        .spawn()
        .unwrap();
    let pid = parent.id();
    wait_until("two children", || children_of(pid).len() == 2);
    let kids = children_of(pid);
    let _daemon = env.start(&[]);
    env.hm_ok(&["add", "agent", "tree", "--pid", &pid.to_string()]);
    wait_value(&env, "agent", "tree", "agent_process_count", 3.0);
    assert!(latest(&env, "agent", "tree", "agent_memory_mb").unwrap() > 0.0);
    assert!(latest(&env, "agent", "tree", "agent_open_files").unwrap() >= 3.0);
    assert_eq!(
        latest(&env, "agent", "tree", "agent_orphan_count"),
        Some(0.0)
    );

    kill(pid);
    parent.wait().unwrap();
    wait_until("the orphans to be counted and alerted", || {
        latest(&env, "agent", "tree", "agent_orphan_count") == Some(2.0)
            && active(&env, "tree", "agent_orphan_count")
    });
    assert!(latest(&env, "agent", "tree", "agent_orphan_memory_mb").unwrap() > 0.0);
    assert!(active(&env, "tree", "agent_active"));
    for k in kids {
        kill(k);
    }
    wait_until("the orphan alert to resolve", || {
        !active(&env, "tree", "agent_orphan_count")
    });
}

/// `LC_ALL=C ps -o lstart= -p PID`, as Gas Town writes it.
fn lstart(pid: u32) -> String {
    let out = Command::new("ps")
        .args(["-o", "lstart=", "-p", &pid.to_string()])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_rewritten_pid_file_is_followed_and_a_reused_pid_is_dead() {
    let env = Env::new("interval = 0.1\n");
    let mut first = Command::new("sleep").arg("600").spawn().unwrap();
    let mut second = Command::new("sleep").arg("600").spawn().unwrap();
    let pid_file = env.path("agent.pid");
    fs::write(
        &pid_file,
        format!("{}|{}\n", first.id(), lstart(first.id())),
    )
    .unwrap();
    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "agent",
        "pf",
        "--pid-file",
        &pid_file.display().to_string(),
    ]);
    wait_value(&env, "agent", "pf", "agent_active", 1.0);

    // The agent restarts: new process, rewritten pid file; the old one goes away.
    fs::write(
        &pid_file,
        format!("{}|{}\n", second.id(), lstart(second.id())),
    )
    .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let rows = env.count("SELECT count(*) FROM health_metrics WHERE resource_id = 'pf' AND metric_name = 'agent_active'");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'pf' AND metric_name = 'agent_active'",
        rows + 5,
    );
    assert_eq!(
        latest(&env, "agent", "pf", "agent_active"),
        Some(1.0),
        "follows the new pid"
    );
    assert!(!active(&env, "pf", "agent_active"));

    // The same pid with another start time is someone else: dead.
    fs::write(
        &pid_file,
        format!("{}|Thu Jan  1 00:00:00 2015\n", second.id()),
    )
    .unwrap();
    wait_value(&env, "agent", "pf", "agent_active", 0.0);
    // A bare pid is trusted; a missing file is dead.
    fs::write(&pid_file, format!("{}\n", second.id())).unwrap();
    wait_value(&env, "agent", "pf", "agent_active", 1.0);
    fs::remove_file(&pid_file).unwrap();
    wait_value(&env, "agent", "pf", "agent_active", 0.0);
    second.kill().unwrap();
    second.wait().unwrap();
}

#[test]
fn a_command_line_match_finds_the_agent() {
    let env = Env::new("interval = 0.1\n");
    let mut agent = Command::new("sleep").arg("612.5").spawn().unwrap();
    let _daemon = env.start(&[]);
    env.hm_ok(&["add", "agent", "m", "--match", r"^sleep 612\.5$"]);
    wait_value(&env, "agent", "m", "agent_active", 1.0);
    wait_value(&env, "agent", "m", "agent_process_count", 1.0);
    agent.kill().unwrap();
    agent.wait().unwrap();
    wait_value(&env, "agent", "m", "agent_active", 0.0);
    let out = env.hm(&["add", "agent", "bad", "--match", "("]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid regex"));
    let out = env.hm(&["add", "agent", "two", "--pid", "1", "--match", "x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_tmux_pane_is_the_agent() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipping: no tmux here (.ci/run installs it)");
        return;
    }
    let env = Env::new("interval = 0.1\n");
    // A tmux server of the test's own (TMUX_TMPDIR), shared with the daemon, not the user's.
    let tmux_dir = env.path("tmux");
    fs::create_dir(&tmux_dir).unwrap();
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .env("TMUX_TMPDIR", &tmux_dir)
            .env_remove("TMUX")
            .status()
            .unwrap()
    };
    let session = "agent-pane";
    assert!(tmux(&["new-session", "-d", "-s", session, "sleep 600"]).success());
    // A second session keeps the server alive when the first goes: the agent must be the
    // pane's process, not the server.
    assert!(tmux(&["new-session", "-d", "-s", "keeper", "sleep 600"]).success());
    let tmux_dir_str = tmux_dir.display().to_string();
    let _daemon = env.start_with_env(&[], &[("TMUX_TMPDIR", tmux_dir_str.as_str())]);
    env.hm_ok(&["add", "agent", "tm", "--tmux-session", session]);
    wait_value(&env, "agent", "tm", "agent_active", 1.0);
    assert_eq!(
        latest(&env, "agent", "tm", "agent_process_count"),
        Some(1.0)
    );
    assert!(tmux(&["kill-session", "-t", &format!("={session}")]).success());
    wait_value(&env, "agent", "tm", "agent_active", 0.0);
    let _ = tmux(&["kill-server"]);
}

#[test]
fn a_busy_tree_shows_its_cpu() {
    let env = Env::new("interval = 0.2\n");
    let mut busy = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let _daemon = env.start(&[]);
    env.hm_ok(&["add", "agent", "busy", "--pid", &busy.id().to_string()]);
    // One core spinning is a share of the whole machine: well above zero, at most 100.
    wait_until("the busy loop's CPU", || {
        latest(&env, "agent", "busy", "agent_cpu_percent").is_some_and(|c| c > 5.0)
    });
    let cpu = latest(&env, "agent", "busy", "agent_cpu_percent").unwrap();
    assert!(cpu <= 100.0, "{cpu}");
    busy.kill().unwrap();
    busy.wait().unwrap();
}

#[test]
fn heartbeats_that_go_stale_or_stuck_raise_alerts() {
    let env = Env::new("interval = 0.1\n");
    let hb = env.path("hb.json");
    let write = |age_secs: i64, state: &str| {
        let ts = chrono::Utc::now() - chrono::Duration::seconds(age_secs);
        fs::write(
            &hb,
            format!(
                "{{\"timestamp\":\"{}\",\"state\":\"{state}\",\"context\":\"c\",\"bead\":\"b\"}}",
                ts.to_rfc3339()
            ),
        )
        .unwrap();
    };
    write(0, "working");
    let mut agent = Command::new("sleep").arg("600").spawn().unwrap();
    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "agent",
        "hb",
        "--pid",
        &agent.id().to_string(),
        "--heartbeat",
        &hb.display().to_string(),
    ]);
    wait_value(&env, "agent", "hb", "heartbeat_stuck", 0.0);
    assert!(latest(&env, "agent", "hb", "heartbeat_age_seconds").unwrap() < 60.0);
    write(700, "working");
    wait_until("a stale heartbeat alert", || {
        active(&env, "hb", "heartbeat_age_seconds")
    });
    write(0, "stuck");
    wait_until("the stuck alert, and the stale one resolved", || {
        active(&env, "hb", "heartbeat_stuck") && !active(&env, "hb", "heartbeat_age_seconds")
    });
    agent.kill().unwrap();
    agent.wait().unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn a_git_worktree_is_valid_until_its_gitdir_is_removed() {
    let env = Env::new("interval = 0.1\n");
    let repo = env.path("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    fs::write(repo.join("README"), "hi").unwrap();
    git(&repo, &["add", "README"]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let wt = env.path("wt");
    git(&repo, &["worktree", "add", "-q", &wt.display().to_string()]);
    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "workspace",
        "wt",
        "--path",
        &wt.display().to_string(),
    ]);
    env.hm_ok(&[
        "add",
        "workspace",
        "repo",
        "--path",
        &repo.display().to_string(),
    ]);
    wait_value(&env, "workspace", "wt", "git_repository_valid", 1.0);
    wait_value(&env, "workspace", "repo", "git_repository_valid", 1.0);
    fs::remove_dir_all(repo.join(".git/worktrees")).unwrap();
    wait_until("the broken worktree alert", || {
        active(&env, "wt", "git_repository_valid")
    });
    assert_eq!(
        latest(&env, "workspace", "repo", "git_repository_valid"),
        Some(1.0)
    );
}

/// Every file of a directory tree with its bytes, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn make_db(path: &Path, wal: bool) {
    let conn = rusqlite::Connection::open(path).unwrap();
    if wal {
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    conn.execute_batch(
        "CREATE TABLE issues (id INTEGER PRIMARY KEY, title TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO issues (title) SELECT hex(randomblob(40)) FROM n;",
    )
    .unwrap();
}

#[test]
fn databases_in_a_workspace_are_checked_without_being_touched() {
    let env = Env::new("interval = 0.1\n");
    let ws = env.path("ws");
    fs::create_dir_all(ws.join(".beads")).unwrap();
    fs::create_dir_all(ws.join("data")).unwrap();
    make_db(&ws.join(".beads/beads.db"), true);
    make_db(&ws.join("valid.sqlite"), false);
    make_db(&ws.join("locked.db"), false);
    make_db(&ws.join("data/listed.db"), false);
    make_db(&ws.join("corrupt.db"), false);
    let mut bytes = fs::read(ws.join("corrupt.db")).unwrap();
    for b in &mut bytes[4096..3 * 4096] {
        *b = 0x42;
    }
    fs::write(ws.join("corrupt.db"), &bytes).unwrap();
    // Before the lock: closing any descriptor of a file drops this process's POSIX locks on it.
    let before = snapshot(&ws);
    let locker = rusqlite::Connection::open(ws.join("locked.db")).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "add",
        "workspace",
        "ws",
        "--path",
        &ws.display().to_string(),
        "--db",
        "data/listed.db",
    ]);
    for (db, ok) in [
        ("ws/.beads/beads.db", 1.0),
        ("ws/valid.sqlite", 1.0),
        ("ws/data/listed.db", 1.0),
        ("ws/corrupt.db", 0.0),
        ("ws/locked.db", 0.0),
    ] {
        wait_value(&env, "database", db, "database_connectivity", ok);
        assert!(latest(&env, "database", db, "database_latency_ms").is_some());
    }
    assert!(active(&env, "ws/corrupt.db", "database_connectivity"));
    assert!(active(&env, "ws/locked.db", "database_connectivity"));
    wait_value(&env, "workspace", "ws", "workspace_writable", 1.0);
    // Several more checks, then compare every byte and every file name.
    let rows =
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id = 'ws/valid.sqlite'");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'ws/valid.sqlite'",
        rows + 10,
    );
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    wait_until("the lock released and the database fine", || {
        !active(&env, "ws/locked.db", "database_connectivity")
    });
    assert_eq!(
        snapshot(&ws),
        before,
        "monitored files unchanged, nothing left behind"
    );
    // A database that goes away takes its alert with it.
    fs::remove_file(ws.join("corrupt.db")).unwrap();
    wait_until("the deleted database's alert resolved", || {
        !active(&env, "ws/corrupt.db", "database_connectivity")
    });
    // Removing the workspace resolves its databases' alerts too.
    fs::write(ws.join("bad.db"), b"SQLite format 3\0 but then nothing").unwrap();
    wait_until("the bad database's alert", || {
        active(&env, "ws/bad.db", "database_connectivity")
    });
    env.hm_ok(&["remove", "workspace", "ws"]);
    wait_until("its alert resolved with the workspace", || {
        !active(&env, "ws/bad.db", "database_connectivity")
    });
}

#[test]
fn a_read_only_filesystem_raises_an_alert() {
    let mount = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(mount.path(), "4m") else {
        eprintln!("skipping: cannot mount a tmpfs here");
        return;
    };
    let point = mount.path().display().to_string();
    let env = Env::new(&format!(
        "interval = 0.1\nfilesystems = [\"/\", \"{point}\"]\n"
    ));
    let _daemon = env.start(&[]);
    wait_value(&env, "filesystem", &point, "filesystem_readonly", 0.0);
    assert!(latest(&env, "filesystem", &point, "inode_usage_percent").is_some());
    assert!(latest(&env, "filesystem", "system", "disk_usage_percent").is_some());
    let remounted = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(mount.path())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(remounted.success());
    wait_until("the read-only alert", || {
        active(&env, &point, "filesystem_readonly")
    });
}

#[test]
fn a_per_resource_override_with_for_cycles_waits_its_cycles() {
    let env = Env::new(
        "interval = 0.05\n[[override]]\nresource_type = \"workspace\"\nresource_id = \"wt\"\n\
         metric = \"workspace_file_count\"\nwarning = 5\ncritical = 100000\nfor_cycles = 10\n",
    );
    for id in ["wt", "other"] {
        let dir = env.path(id);
        fs::create_dir(&dir).unwrap();
        for i in 0..6 {
            fs::write(dir.join(format!("f{i}")), b"x").unwrap();
        }
    }
    let _daemon = env.start(&[]);
    for id in ["wt", "other"] {
        env.hm_ok(&[
            "add",
            "workspace",
            id,
            "--path",
            &env.path(id).display().to_string(),
        ]);
    }
    let breached = || {
        env.count(
            "SELECT count(*) FROM health_metrics WHERE resource_id = 'wt'
             AND metric_name = 'workspace_file_count' AND status = 'unhealthy' AND threshold_warning = 5",
        )
    };
    // Rows land before the alert that follows them: once the alert is seen, at least ten
    // breached rows must be in the database (read after the alert, never before).
    wait_until("the override's alert", || {
        let alerted = active(&env, "wt", "workspace_file_count");
        let rows = breached();
        assert!(
            !alerted || rows >= 10,
            "alert after only {rows} breached samples"
        );
        alerted
    });
    // The same count elsewhere is within the default thresholds.
    assert!(!active(&env, "other", "workspace_file_count"));
    assert_eq!(
        latest(&env, "workspace", "other", "workspace_file_count"),
        Some(6.0)
    );
}
