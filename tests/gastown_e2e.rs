//! Following a fake Gas Town town: discovery from the layout, heartbeats fresh and stale, an
//! events file appended to while the daemon runs (spawn, done with orphans, deaths, mass death,
//! malformed and partial lines, rotation), escalations through a stand-in `gt` on PATH, and
//! reconciliation with the layout at start.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::{Env, FakeAgent, wait_until};
use serde_json::{Value, json};

/// A town in a temporary directory, with a stand-in `gt` that records its arguments.
struct FakeTown {
    root: PathBuf,
    bin: PathBuf,
    gt_log: PathBuf,
    processes: Vec<Child>,
}

impl FakeTown {
    fn new(env: &Env) -> FakeTown {
        let root = env.path("town");
        fs::create_dir_all(root.join("mayor")).unwrap();
        fs::create_dir_all(root.join(".runtime/pids")).unwrap();
        fs::create_dir_all(root.join(".runtime/heartbeats")).unwrap();
        fs::write(
            root.join("mayor/rigs.json"),
            r#"{"version": 1, "rigs": {"ac": {"git_url": "https://example/ac.git",
                "beads": {"repo": "ac", "prefix": "ac-"}}}}"#,
        )
        .unwrap();
        // Old history the daemon must not replay.
        fs::write(
            root.join(".events.jsonl"),
            "{\"ts\":\"2026-01-01T00:00:00Z\",\"source\":\"gt\",\"type\":\"session_death\",\"actor\":\"gt\",\"payload\":{\"session\":\"ac-ghost\",\"reason\":\"old news\"},\"visibility\":\"audit\"}\n",
        )
        .unwrap();
        let bin = env.path("bin");
        fs::create_dir_all(&bin).unwrap();
        let gt_log = env.path("gt.log");
        let gt = bin.join("gt");
        fs::write(
            &gt,
            format!(
                "#!/bin/sh\n{{ printf '%s\\0' \"$(pwd)\" \"$@\"; printf '\\036'; }} >> {}\n",
                gt_log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&gt, fs::Permissions::from_mode(0o755)).unwrap();
        FakeTown {
            root,
            bin,
            gt_log,
            processes: Vec::new(),
        }
    }

    /// A polecat's worktree (new layout), with a beads database.
    fn polecat(&self, name: &str) -> PathBuf {
        let wt = self.root.join(format!("ac/polecats/{name}/ac"));
        fs::create_dir_all(wt.join(".beads")).unwrap();
        let db = rusqlite::Connection::open(wt.join(".beads/beads.db")).unwrap();
        db.execute_batch("CREATE TABLE IF NOT EXISTS issues (id TEXT)")
            .unwrap();
        wt
    }

    /// Starts `sh -c SCRIPT` as the session's process and writes its pid file.
    fn run(&mut self, session: &str, script: &str) -> u32 {
        let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        let pid = child.id();
        fs::write(
            self.root.join(format!(".runtime/pids/{session}.pid")),
            format!("{pid}\n"),
        )
        .unwrap();
        self.processes.push(child);
        pid
    }

    fn heartbeat(&self, session: &str, age_secs: i64, state: &str) {
        let ts = chrono::Utc::now() - chrono::Duration::seconds(age_secs);
        fs::write(
            self.root
                .join(format!(".runtime/heartbeats/{session}.json")),
            json!({"timestamp": ts.to_rfc3339(), "state": state, "context": "", "bead": "ac-1"})
                .to_string(),
        )
        .unwrap();
    }

    fn append(&self, text: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.root.join(".events.jsonl"))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn event(&self, kind: &str, actor: &str, payload: Value) {
        let line = json!({"ts": chrono::Utc::now().to_rfc3339(), "source": "gt", "type": kind,
            "actor": actor, "payload": payload, "visibility": "feed"});
        self.append(&format!("{line}\n"));
    }

    /// Every `gt` call: (working directory, arguments).
    fn gt_calls(&self) -> Vec<(String, Vec<String>)> {
        let text = fs::read_to_string(&self.gt_log).unwrap_or_default();
        // Each call: NUL-terminated working directory and arguments, then a record separator.
        text.split('\u{1e}')
            .filter(|c| !c.is_empty())
            .map(|c| {
                let mut parts = c.split('\0').filter(|p| !p.is_empty()).map(String::from);
                let cwd = parts.next().unwrap();
                (cwd, parts.collect())
            })
            .collect()
    }

    fn escalations_for(&self, source: &str) -> Vec<Vec<String>> {
        self.gt_calls()
            .into_iter()
            .map(|(_, args)| args)
            .filter(|a| a.iter().any(|x| x == source))
            .collect()
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

impl Drop for FakeTown {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn monitors(env: &Env) -> Vec<(String, String)> {
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    list.iter()
        .map(|m| {
            (
                m["kind"].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has_monitor(env: &Env, kind: &str, id: &str) -> bool {
    monitors(env).iter().any(|(k, i)| k == kind && i == id)
}

fn latest(env: &Env, t: &str, id: &str, metric: &str) -> Option<f64> {
    env.latest(t, id, metric)
}

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

const CONFIG: &str = "interval = 0.2\nalert_cooldown = 0.5\n[gastown]\nspawn_grace = 1\n";

fn start(env: &Env, town: &FakeTown) -> common::Daemon {
    let root = town.root.to_str().unwrap().to_string();
    let path = town.path_env();
    env.start_with_env(&["--gastown", &root], &[("PATH", path.as_str())])
}

#[test]
fn a_town_is_discovered_its_heartbeats_read_and_its_alerts_escalated() {
    let env = Env::new(CONFIG);
    let mut town = FakeTown::new(&env);
    town.polecat("quartz");
    fs::create_dir_all(town.root.join("ac/crew/max")).unwrap();
    fs::create_dir_all(town.root.join("ac/crew/idle")).unwrap();
    town.run("ac-quartz", "exec sleep 600");
    town.heartbeat("ac-quartz", 5, "working");
    // Max's session runs, but its heartbeat is ten minutes old: stale, and past critical.
    town.run("ac-crew-max", "exec sleep 600");
    town.heartbeat("ac-crew-max", 600, "working");
    // Jade is alive and beating, but says it is stuck.
    town.polecat("jade");
    town.run("ac-jade", "exec sleep 600");
    town.heartbeat("ac-jade", 1, "stuck");
    let _daemon = start(&env, &town);

    for (kind, id) in [
        ("agent", "ac-quartz"),
        ("workspace", "ac-quartz"),
        ("agent", "ac-crew-max"),
        ("workspace", "ac-crew-max"),
        ("workspace", "ac-crew-idle"),
    ] {
        assert!(
            has_monitor(&env, kind, id),
            "{kind} {id} not found: {:?}",
            monitors(&env)
        );
    }
    assert!(
        !has_monitor(&env, "agent", "ac-crew-idle"),
        "a crew clone without a session is not a dead agent"
    );
    wait_until("quartz measured alive with its beads database", || {
        latest(&env, "agent", "ac-quartz", "agent_active") == Some(1.0)
            && latest(
                &env,
                "database",
                "ac-quartz/.beads/beads.db",
                "database_connectivity",
            ) == Some(1.0)
    });
    assert!(latest(&env, "agent", "ac-quartz", "heartbeat_age_seconds").unwrap() < 60.0);
    // The stale heartbeat escalates through gt, once, from the town root.
    let source = "health-monitor:agent:ac-crew-max";
    wait_until("the stale heartbeat escalated", || {
        town.escalations_for(source)
            .iter()
            .any(|a| a.iter().any(|x| x.contains("heartbeat_age_seconds")))
    });
    let calls = town.gt_calls();
    let (cwd, args) = calls
        .iter()
        .find(|(_, a)| a.contains(&source.to_string()))
        .unwrap();
    assert_eq!(Path::new(cwd), town.root.as_path(), "gt runs in the town");
    assert_eq!(args[0], "escalate");
    assert_eq!(args[1..3], ["-s".to_string(), "critical".to_string()]);
    assert!(args[3].contains("ac-crew-max"), "{args:?}");
    assert_eq!(args[4], "-r");
    assert_eq!(args[6..], ["--source".to_string(), source.to_string()]);
    // Reminders never escalate again.
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 200);
    let heartbeat_escalations = town
        .escalations_for(source)
        .into_iter()
        .filter(|a| a.iter().any(|x| x.contains("heartbeat_age_seconds")))
        .count();
    assert_eq!(heartbeat_escalations, 1);
    // A stuck agent alerts and escalates too.
    wait_until("the stuck heartbeat alerted and escalated", || {
        env.alert_active("ac-jade", "heartbeat_stuck")
            && !town
                .escalations_for("health-monitor:agent:ac-jade")
                .is_empty()
    });
    // The old history was not replayed.
    assert!(
        town.escalations_for("health-monitor:agent:ac-ghost")
            .is_empty()
    );

    let rows: Vec<Value> =
        serde_json::from_str(&env.hm_ok(&["gastown", "status", "--json"])).unwrap();
    let quartz = rows.iter().find(|r| r["session"] == "ac-quartz").unwrap();
    assert_eq!(quartz["alive"], true);
    assert_eq!(quartz["role"], "polecat");
    assert_eq!(quartz["heartbeat_state"], "working");
    assert!(quartz["memory_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(quartz["worktree_exists"], true);
    let max = rows.iter().find(|r| r["session"] == "ac-crew-max").unwrap();
    assert_eq!(max["role"], "crew");
    assert!(
        !max["active_alerts"].as_array().unwrap().is_empty(),
        "{max}"
    );
    let text = env.hm_ok(&["gastown", "status"]);
    assert!(
        text.contains("ac-quartz") && text.contains("ac-crew-max"),
        "{text}"
    );
}

#[test]
fn lifecycle_events_add_retire_and_alert() {
    let env = Env::new(CONFIG);
    let mut town = FakeTown::new(&env);
    town.polecat("quartz");
    // Quartz's process has a child that will outlive it.
    let root = town.run("ac-quartz", "sleep 600 & wait");
    wait_until("quartz's child", || children_of(root).len() == 1);
    let orphan = children_of(root)[0];
    town.heartbeat("ac-quartz", 1, "working");
    let daemon = start(&env, &town);
    wait_until("quartz measured", || {
        latest(&env, "agent", "ac-quartz", "agent_process_count") == Some(2.0)
    });

    // spawn: a new polecat is watched.
    town.polecat("onyx");
    town.run("ac-onyx", "exec sleep 600");
    town.heartbeat("ac-onyx", 1, "working");
    town.event("spawn", "gt", json!({"rig": "ac", "polecat": "onyx"}));
    wait_until("onyx watched", || {
        has_monitor(&env, "agent", "ac-onyx") && has_monitor(&env, "workspace", "ac-onyx")
    });
    wait_until("onyx measured alive", || {
        latest(&env, "agent", "ac-onyx", "agent_active") == Some(1.0)
    });

    // A death nobody explained: critical, escalated.
    town.event(
        "session_death",
        "ac/onyx",
        json!({"session": "ac-onyx", "agent": "ac/polecats/onyx", "reason": "tmux server died", "caller": "daemon"}),
    );
    wait_until("the session_death alert", || {
        env.alert_active("ac-onyx", "session_death")
    });
    wait_until("the death escalated", || {
        town.escalations_for("health-monitor:agent:ac-onyx")
            .iter()
            .any(|a| a[2] == "critical" && a[3].contains("tmux server died"))
    });

    // done, then the root dies leaving its child: the monitor stays while the orphan lives.
    town.event(
        "done",
        "ac/polecats/quartz",
        json!({"bead": "ac-1", "branch": "polecat/quartz"}),
    );
    kill(root);
    wait_until("the orphan counted", || {
        latest(&env, "agent", "ac-quartz", "agent_orphan_count") == Some(1.0)
    });
    town.event(
        "session_death",
        "ac/quartz",
        json!({"session": "ac-quartz", "reason": "exited"}),
    );
    // A later event that shows it has been read: the death before it was read too.
    town.polecat("marker");
    town.run("ac-marker", "exec sleep 600");
    town.event("spawn", "gt", json!({"rig": "ac", "polecat": "marker"}));
    wait_until("the marker watched", || {
        has_monitor(&env, "agent", "ac-marker")
    });
    assert!(
        has_monitor(&env, "agent", "ac-quartz"),
        "retired with an orphan alive"
    );
    assert!(
        !has_monitor(&env, "workspace", "ac-quartz"),
        "a finished polecat's worktree is let go at once"
    );
    assert!(
        !env.alert_active("ac-quartz", "session_death"),
        "a death after done is not news"
    );
    assert!(env.alert_active("ac-quartz", "agent_orphan_count"));
    kill(orphan);
    wait_until("quartz retired once the orphan is gone", || {
        !has_monitor(&env, "agent", "ac-quartz") && !has_monitor(&env, "workspace", "ac-quartz")
    });

    // Onyx died unexplained; the witness kills it: retired, its death alert resolved for good.
    town.event(
        "kill",
        "gt",
        json!({"rig": "ac", "target": "onyx", "reason": "gt stop"}),
    );
    for p in &mut town.processes {
        let _ = p.kill();
        let _ = p.wait();
    }
    wait_until("onyx retired", || !has_monitor(&env, "agent", "ac-onyx"));
    wait_until("its death alert resolved", || {
        !env.alert_active("ac-onyx", "session_death")
    });
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 60);
    assert!(
        !env.alert_active("ac-onyx", "session_death"),
        "raised again after removal"
    );
    assert_eq!(
        town.escalations_for("health-monitor:agent:ac-onyx")
            .iter()
            .filter(|a| a[3].contains("tmux server died"))
            .count(),
        1,
        "the death is escalated once"
    );

    // Malformed and partial lines are skipped; the follower keeps going.
    town.append("this is not json\n{\"type\": \"mass_");
    town.append("death\", \"actor\": \"daemon\", \"payload\": {\"count\": 3, \"window\": \"30s\", \"sessions\": [\"ac-a\", \"ac-b\", \"ac-c\"]}}\n");
    wait_until("the mass death alert", || {
        env.alert_active("gastown", "mass_death")
    });
    assert!(daemon.log().contains("skipping malformed event line"));

    // Rotation: a new file in place of the old one is followed from its start.
    fs::rename(
        town.root.join(".events.jsonl"),
        town.root.join(".events.jsonl.1"),
    )
    .unwrap();
    fs::write(town.root.join(".events.jsonl"), "").unwrap();
    town.event(
        "session_start",
        "ac/polecats/onyx",
        json!({"session_id": "uuid", "role": "polecat"}),
    );
    wait_until("a restart clears the death alert", || {
        !env.alert_active("ac-onyx", "session_death")
    });
}

#[test]
fn monitors_are_reconciled_with_the_layout_at_start() {
    let env = Env::new(CONFIG);
    let mut town = FakeTown::new(&env);
    town.polecat("quartz");
    town.polecat("jade");
    town.run("ac-jade", "exec sleep 600");
    fs::create_dir_all(town.root.join("ac/crew/max")).unwrap();
    // An operator watches ac-jade their own way before the town is followed.
    let theirs = FakeAgent::spawn();
    env.hm_ok(&[
        "add",
        "agent",
        "ac-jade",
        "--pid",
        &theirs.pid().to_string(),
    ]);
    let daemon = start(&env, &town);
    assert!(has_monitor(&env, "workspace", "ac-crew-max"));
    assert!(has_monitor(&env, "workspace", "ac-quartz"));
    assert!(
        !has_monitor(&env, "agent", "ac-quartz"),
        "no session: not an agent"
    );
    // The town's first rescan leaves the operator's monitor as it is.
    wait_until("the town's first rescan", || {
        daemon.log().contains("town layout read again")
    });
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 60);
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    let jade = list
        .iter()
        .find(|m| m["kind"] == "agent" && m["id"] == "ac-jade")
        .unwrap();
    assert_eq!(
        jade["pid"],
        theirs.pid(),
        "the operator's monitor was replaced: {jade}"
    );
    env.hm_ok(&[
        "add",
        "workspace",
        "mine",
        "--path",
        env.path("mine").to_str().unwrap(),
    ]);
    env.hm_ok(&["stop"]);
    let mut daemon = daemon;
    assert_eq!(daemon.wait_exit(), 0);
    // Max left the town while the daemon was down; an operator's monitor is not the town's.
    fs::remove_dir_all(town.root.join("ac/crew/max")).unwrap();
    let _daemon = start(&env, &town);
    let now = monitors(&env);
    assert!(!now.iter().any(|(_, id)| id == "ac-crew-max"), "{now:?}");
    assert!(
        now.contains(&("workspace".into(), "ac-quartz".into())),
        "{now:?}"
    );
    assert!(
        now.contains(&("workspace".into(), "mine".into())),
        "{now:?}"
    );
    // Not a town: a clear error.
    let other = Env::new("");
    let out = other.hm(&[
        "start",
        "--once",
        "--gastown",
        env.path("nowhere").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rigs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
