//! A day in a simulated Gas Town town, built from the formats of `../shared/gastown/` (each traced
//! to the Gas Town 1.0.1 line that writes it): rigs from its `rigs.json`, its old events as the
//! events file's history, real processes behind `pid|lstart` pid files, sessions in a real tmux
//! on the town's own socket, heartbeats as `gt` writes them, and a stand-in `gt` on PATH that
//! records its arguments and answers `escalate --json` and `escalate close` as the real one does.
//!
//! One test lives through an ordinary day (spawn, work, done, idle reap, doctor cleanup, pruner
//! rewrite, `gt down`, a restart over stale pid files) and asserts that nothing at all is raised
//! and `gt` is never called. Another breaks things for real (a crash, orphans after a reap, a
//! stalled polecat beside a busy one, a stuck one, a stale deacon, a dead Gas Town daemon,
//! orphaned agent processes) and asserts exactly which alerts open and which `gt` calls are made.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use common::{Env, FakeAgent, wait_until};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Gas Town's reference files.
fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/gastown")
        .join(rel)
}

/// Config that keeps the machine's own alerts out of a test about the town: on a loaded CI
/// host CPU or load may well pass their thresholds, and they would be escalated like any other.
const QUIET_MACHINE: &str = "filesystems = [\"/\"]
[thresholds.cpu_usage_percent]
warning = 1000
critical = 2000
[thresholds.load_per_core]
warning = 1000
critical = 2000
[thresholds.memory_usage_percent]
warning = 1000
critical = 2000
[thresholds.swap_usage_percent]
warning = 1000
critical = 2000
[thresholds.disk_usage_percent]
warning = 1000
critical = 2000
[thresholds.inode_usage_percent]
warning = 1000
critical = 2000
[thresholds.filesystem_readonly]
warning = 2
critical = 3
";

/// A short burst of CPU (a few ms of a shell loop).
const BUSY_BURST: &str = "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.2";

/// A session at work: it uses CPU, as a working polecat does (one that uses none is stalled).
const BUSY: &str = "while :; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 0.2; done";

/// A test environment whose config is the town's `[gastown]` table plus [`QUIET_MACHINE`].
fn town_env(settings: &str, gastown: &str) -> Env {
    Env::new(&format!(
        "{settings}\n{QUIET_MACHINE}\n[gastown]\n{gastown}"
    ))
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux").arg("-V").output().is_ok();
    if !ok {
        eprintln!("skipping: no tmux here (.ci/run installs it)");
    }
    ok
}

/// A town in a temporary directory named `gt`, like `~/gt`.
struct FakeTown {
    root: PathBuf,
    bin: PathBuf,
    gt_log: PathBuf,
    tmux_dir: PathBuf,
    socket: String,
    processes: Vec<Child>,
}

/// The socket Gas Town derives for a town (internal/session/registry.go:152-192): the lowercased
/// base name with runs outside `[a-z0-9-]` made `-`, then the first 6 hex digits of the SHA-256
/// of the canonical path.
fn gas_town_socket(root: &Path) -> String {
    let canonical = fs::canonicalize(root).unwrap();
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hex: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
    format!("gt-{hex}")
}

/// A timestamp as Go's `time.RFC3339` writes it (events: whole seconds).
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl FakeTown {
    fn new(env: &Env) -> FakeTown {
        let root = env.path("gt");
        for d in [
            "mayor",
            ".runtime/pids",
            ".runtime/heartbeats",
            "daemon",
            "deacon",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy(shared("mayor/rigs.json"), root.join("mayor/rigs.json")).unwrap();
        fs::copy(shared("mayor/rigs.json"), root.join("rigs.json")).unwrap();
        // Yesterday's events, crashes among them: history the daemon must not act on.
        fs::copy(shared("events.jsonl"), root.join(".events.jsonl")).unwrap();
        let bin = env.path("bin");
        fs::create_dir_all(&bin).unwrap();
        let gt_log = env.path("gt.log");
        let counter = env.path("gt.counter");
        let gt = bin.join("gt");
        // `gt escalate ... --json` answers as escalate_impl.go:184-196 does (MarshalIndent,
        // keys sorted); `gt escalate close ID --reason R` as :368-369.
        fs::write(
            &gt,
            format!(
                r#"#!/bin/sh
{{ printf '%s\0' "$(pwd)" "$@"; printf '\036'; }} >> {log}
if [ "$1" = escalate ] && [ "$2" = close ]; then
    printf '✓ Escalation closed: %s\n  Reason: %s\n' "$3" "$5"
    exit 0
fi
if [ "$1" = escalate ]; then
    n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo "$n" > {counter}
    sev=""; src=""; json=0; prev=""
    for a in "$@"; do
        case "$prev" in -s) sev=$a ;; --source) src=$a ;; esac
        [ "$a" = --json ] && json=1
        prev=$a
    done
    if [ "$json" = 1 ]; then
        printf '{{\n  "actions": [\n    "bead",\n    "mail:mayor"\n  ],\n  "delivery": [\n    {{\n      "target": "mayor/",\n      "channel": "mail",\n      "created": true\n    }}\n  ],\n  "id": "hq-esc%s",\n  "severity": "%s",\n  "source": "%s",\n  "status": "ok",\n  "targets": [\n    "mayor/"\n  ]\n}}\n' "$n" "$sev" "$src"
    else
        printf '🚨 Escalation created: hq-esc%s\n' "$n"
    fi
fi
"#,
                log = gt_log.display(),
                counter = counter.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&gt, fs::Permissions::from_mode(0o755)).unwrap();
        let tmux_dir = env.path("tmux");
        fs::create_dir_all(&tmux_dir).unwrap();
        let socket = gas_town_socket(&root);
        FakeTown {
            root,
            bin,
            gt_log,
            tmux_dir,
            socket,
            processes: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `tmux -L <town socket> ARGS`, on this test's own tmux directory.
    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TMUX_TMPDIR", &self.tmux_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts session `name` running `script` on the town's tmux server, and (unless
    /// `pid_file` is false) writes its pid file as session.TrackPID does:
    /// `<pane pid>|<LC_ALL=C ps -o lstart=>`. Returns the pane's pid.
    fn session(&self, name: &str, script: &str, pid_file: bool) -> u32 {
        let out = self.tmux(&["new-session", "-d", "-s", name, script]);
        assert!(out.status.success(), "tmux: {out:?}");
        let out = self.tmux(&["list-panes", "-t", &format!("={name}"), "-F", "#{pane_pid}"]);
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        if pid_file {
            let lstart = Command::new("ps")
                .args(["-o", "lstart=", "-p", &pid.to_string()])
                .env("LC_ALL", "C")
                .output()
                .unwrap();
            let lstart = String::from_utf8_lossy(&lstart.stdout).trim().to_string();
            fs::write(
                self.path(&format!(".runtime/pids/{name}.pid")),
                format!("{pid}|{lstart}\n"),
            )
            .unwrap();
        }
        pid
    }

    fn kill_session(&self, name: &str) {
        let out = self.tmux(&["kill-session", "-t", &format!("={name}")]);
        assert!(out.status.success(), "{out:?}");
    }

    /// A polecat's worktree (`<rig>/polecats/<name>/<rig>/`), with a beads database.
    fn polecat(&self, name: &str) -> PathBuf {
        let wt = self.path(&format!("acme/polecats/{name}/acme"));
        fs::create_dir_all(wt.join(".beads")).unwrap();
        let db = rusqlite::Connection::open(wt.join(".beads/beads.db")).unwrap();
        db.execute_batch("CREATE TABLE IF NOT EXISTS issues (id TEXT)")
            .unwrap();
        wt
    }

    /// A session heartbeat as polecat.SessionHeartbeat marshals it (RFC3339Nano, no newline;
    /// state, context and bead omitted when empty).
    fn heartbeat(&self, session: &str, at: DateTime<Utc>, state: Option<&str>) {
        let mut beat = json!({"timestamp": at.to_rfc3339_opts(SecondsFormat::Nanos, true)});
        if let Some(state) = state {
            beat["state"] = json!(state);
        }
        fs::write(
            self.path(&format!(".runtime/heartbeats/{session}.json")),
            beat.to_string(),
        )
        .unwrap();
    }

    /// The deacon's heartbeat as deacon.Heartbeat marshals it (MarshalIndent).
    fn deacon_heartbeat(&self, at: DateTime<Utc>) {
        let text = format!(
            "{{\n  \"timestamp\": \"{}\",\n  \"cycle\": 412,\n  \"last_action\": \"starting patrol cycle\",\n  \"healthy_agents\": 0,\n  \"unhealthy_agents\": 0\n}}",
            at.to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        fs::write(self.path("deacon/heartbeat.json"), text).unwrap();
    }

    /// Starts a process standing in for Gas Town's daemon and writes `daemon/daemon.pid` as
    /// pidfile.go does: `<pid>\n<nonce>`, no trailing newline.
    fn gas_town_daemon(&mut self) -> u32 {
        let child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id();
        self.processes.push(child);
        fs::write(
            self.path("daemon/daemon.pid"),
            format!("{pid}\n9f2c4e1a7b3d5f60"),
        )
        .unwrap();
        pid
    }

    /// One events line as events.LogFeed writes it: struct order, payload keys sorted.
    fn event(&self, at: DateTime<Utc>, kind: &str, actor: &str, payload: Value) -> String {
        let line = format!(
            r#"{{"ts":"{}","source":"gt","type":"{kind}","actor":"{actor}","payload":{payload},"visibility":"feed"}}"#,
            rfc3339(at)
        );
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.path(".events.jsonl"))
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()).unwrap();
        line
    }

    /// What the hourly pruner does (internal/krc/krc.go:231-369): the kept lines to
    /// `.events.jsonl.tmp`, renamed over the file.
    fn prune(&self, keep: impl Fn(&str) -> bool) {
        let text = fs::read_to_string(self.path(".events.jsonl")).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| keep(l))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(self.path(".events.jsonl.tmp"), kept).unwrap();
        fs::rename(self.path(".events.jsonl.tmp"), self.path(".events.jsonl")).unwrap();
    }

    /// Every `gt` call: (working directory, arguments).
    fn gt_calls(&self) -> Vec<(String, Vec<String>)> {
        let text = fs::read_to_string(&self.gt_log).unwrap_or_default();
        text.split('\u{1e}')
            .filter(|c| !c.is_empty())
            .map(|c| {
                let mut parts = c.split('\0').filter(|p| !p.is_empty()).map(String::from);
                let cwd = parts.next().unwrap();
                (cwd, parts.collect())
            })
            .collect()
    }

    /// The escalations made: (level, source).
    fn escalations(&self) -> Vec<(String, String)> {
        self.gt_calls()
            .iter()
            .filter(|(_, a)| a[0] == "escalate" && a[1] == "-s")
            .map(|(_, a)| {
                assert_eq!(a.last().map(String::as_str), Some("--json"), "{a:?}");
                let source = a.iter().position(|x| x == "--source").unwrap() + 1;
                (a[2].clone(), a[source].clone())
            })
            .collect()
    }

    /// The escalations closed: their ids.
    fn closes(&self) -> Vec<String> {
        self.gt_calls()
            .iter()
            .filter(|(_, a)| a[0] == "escalate" && a[1] == "close")
            .map(|(_, a)| {
                assert_eq!(a[3], "--reason", "{a:?}");
                a[2].clone()
            })
            .collect()
    }

    /// The id the stand-in gave the escalation whose source is `source`.
    fn escalation_id(&self, source: &str) -> String {
        let n = self
            .escalations()
            .iter()
            .position(|(_, s)| s == source)
            .unwrap_or_else(|| panic!("{source} was not escalated: {:?}", self.escalations()));
        format!("hq-esc{}", n + 1)
    }

    fn start(&self, env: &Env) -> common::Daemon {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let root = self.root.display().to_string();
        let tmux_dir = self.tmux_dir.display().to_string();
        env.start_with_env(
            &["--gastown", &root],
            &[("PATH", path.as_str()), ("TMUX_TMPDIR", tmux_dir.as_str())],
        )
    }
}

impl Drop for FakeTown {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
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

fn watched(env: &Env, kind: &str, id: &str) -> bool {
    monitors(env).iter().any(|(k, i)| k == kind && i == id)
}

fn alive(env: &Env, session: &str) -> bool {
    env.latest("agent", session, "agent_active") == Some(1.0)
}

/// Every alert ever opened: (resource id, alert type).
fn alerts_opened(env: &Env) -> BTreeSet<(String, String)> {
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT resource_id, alert_type FROM health_alerts")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits for `cycles` more metric rows of `session`: the daemon has looked again.
fn wait_cycles(env: &Env, session: &str, cycles: i64) {
    let sql = format!(
        "SELECT count(*) FROM health_metrics WHERE resource_id = '{session}' AND metric_name = 'agent_active'"
    );
    let now = env.count(&sql);
    env.wait_count(&sql, now + cycles);
}

fn gastown_status(env: &Env) -> Vec<Value> {
    serde_json::from_str(&env.hm_ok(&["gastown", "status", "--json"])).unwrap()
}

fn row<'a>(rows: &'a [Value], session: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["session"] == session)
        .unwrap_or_else(|| panic!("{session} not in {rows:#?}"))
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn the_town_socket_is_derived_as_gas_town_derives_it() {
    // The README of ../shared/gastown: /home/me/gt runs on `tmux -L gt-78b699`.
    let digest = Sha256::digest(b"/home/me/gt");
    assert_eq!(
        format!("{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2]),
        "78b699"
    );
    let env = Env::new("");
    let town = FakeTown::new(&env);
    assert!(town.socket.starts_with("gt-") && town.socket.len() == 9);
}

#[test]
fn an_ordinary_day_raises_nothing_and_calls_no_gt() {
    if !have_tmux() {
        return;
    }
    let env = town_env(
        "interval = 0.2\nalert_cooldown = 0.5",
        "death_confirm = 2\nstall_after = 3\nspawn_grace = 5\norphan_scan_every = 1\norphan_min_age = 1\n",
    );
    let mut town = FakeTown::new(&env);
    let now = Utc::now();
    for name in ["quartz", "onyx", "jasper"] {
        town.polecat(name);
    }
    for crew in ["max", "ada"] {
        fs::create_dir_all(town.path(&format!("acme/crew/{crew}"))).unwrap();
    }
    fs::create_dir_all(town.path("acme/witness")).unwrap();
    fs::create_dir_all(town.path("deacon/dogs/boot")).unwrap();
    // Quartz works (it uses CPU: a working polecat that uses none is stalled) until it is done.
    let idle_marker = town.path("quartz-is-done");
    town.session(
        "ac-quartz",
        &format!(
            "while [ ! -e {} ]; do {BUSY_BURST}; done; exec sleep 600",
            idle_marker.display()
        ),
        true,
    );
    town.heartbeat("ac-quartz", now, Some("working"));
    // Onyx says stuck, but that heartbeat is the fixture's, from April: stale, so not stuck.
    town.session("ac-onyx", "exec sleep 600", true);
    fs::copy(
        shared(".runtime/heartbeats/ac-onyx.json"),
        town.path(".runtime/heartbeats/ac-onyx.json"),
    )
    .unwrap();
    // An idle crew member: its v1 heartbeat (timestamp only) is ten minutes old.
    town.session("ac-crew-max", "exec sleep 600", true);
    town.heartbeat("ac-crew-max", now - Duration::minutes(10), None);
    town.session("ac-crew-ada", "exec sleep 600", true);
    town.heartbeat("ac-crew-ada", now, Some("idle"));
    // Boot runs to completion and exits every daemon tick (cmd/boot.go:70).
    town.session("hq-boot", "exec sleep 600", true);
    // The witness has no pid file: found through the town's tmux socket.
    town.session("ac-witness", "exec sleep 600", false);
    town.session("hq-mayor", "exec sleep 600", true);
    town.session("hq-deacon", "exec sleep 600", true);
    town.deacon_heartbeat(now);
    let gt_daemon = town.gas_town_daemon();
    // Jasper's session ended yesterday; its pid file stayed, naming a process long gone.
    fs::copy(
        shared(".runtime/pids/ac-quartz.pid"),
        town.path(".runtime/pids/ac-jasper.pid"),
    )
    .unwrap();
    let mut daemon = town.start(&env);

    let sessions = [
        "ac-quartz",
        "ac-onyx",
        "ac-crew-max",
        "ac-crew-ada",
        "ac-witness",
        "hq-mayor",
        "hq-deacon",
        "hq-boot",
    ];
    wait_until("every running session measured alive", || {
        sessions.iter().all(|s| alive(&env, s))
    });
    assert!(
        !watched(&env, "agent", "ac-jasper"),
        "a stale pid file is not a session"
    );
    for ws in ["ac-quartz", "ac-onyx", "ac-jasper", "ac-crew-max"] {
        assert!(watched(&env, "workspace", ws), "{ws}: {:?}", monitors(&env));
    }
    let list: Vec<Value> = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    let witness = list
        .iter()
        .find(|m| m["kind"] == "agent" && m["id"] == "ac-witness")
        .unwrap();
    assert_eq!(witness["options"]["role"], "witness", "{witness}");
    assert_eq!(
        witness["options"]["tmux_socket"].as_str(),
        Some(town.socket.as_str())
    );
    wait_until(
        "the Gas Town daemon and a town orphan scan measured",
        || {
            env.latest("agent", "gastown", "town_daemon_alive") == Some(1.0)
                && env.latest("agent", "gastown", "town_orphan_count") == Some(0.0)
        },
    );
    assert_eq!(
        env.latest("agent", "ac-onyx", "heartbeat_stuck"),
        Some(0.0),
        "stuck counts only while fresh"
    );

    // 09:00 a new polecat is spawned and its session starts.
    let t0 = now;
    town.session("ac-jasper", BUSY, true);
    town.event(
        t0,
        "spawn",
        "gt",
        json!({"polecat": "jasper", "rig": "acme"}),
    );
    town.heartbeat("ac-jasper", Utc::now(), Some("working"));
    town.event(
        t0 + Duration::seconds(17),
        "session_start",
        "acme/polecats/jasper",
        json!({"actor_pid": "acme/polecats/jasper-1", "cwd": town.path("acme/polecats/jasper/acme"),
            "role": "acme/polecats/jasper", "session_id": "6f1c2a9e-4b7d-4e0a-9a51-2f3c8d7e1b41"}),
    );
    wait_until("jasper watched and alive", || alive(&env, "ac-jasper"));

    // 09:41 quartz is done: it goes idle and keeps its session and worktree.
    town.heartbeat("ac-quartz", Utc::now(), Some("exiting"));
    town.event(
        t0 + Duration::minutes(41),
        "done",
        "acme/polecats/quartz",
        json!({"bead": "ac-x7k2", "branch": "polecat/quartz/ac-x7k2@mol4w2ra"}),
    );
    wait_cycles(&env, "ac-quartz", 10);
    assert!(watched(&env, "agent", "ac-quartz") && watched(&env, "workspace", "ac-quartz"));
    assert_eq!(row(&gastown_status(&env), "ac-quartz")["state"], "idle");
    // Its Claude sits at the prompt, and the next gt sub-command resets the heartbeat to
    // `working` (root.go persistentPreRun; daemon.go:2733-2736): the look of a stall. It is idle.
    fs::write(&idle_marker, "").unwrap();
    town.heartbeat(
        "ac-quartz",
        Utc::now() - Duration::minutes(1),
        Some("working"),
    );
    let quiet_since = env.count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'ac-quartz' AND metric_name = 'agent_stalled'",
    );
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'ac-quartz' AND metric_name = 'agent_stalled'",
        quiet_since + 25,
    );
    assert_eq!(env.latest("agent", "ac-quartz", "agent_stalled"), Some(0.0));

    // 09:45 the crew hands off: the pane's process is respawned, its pid file left as it was
    // (only a session start writes it).
    let old_pane = fs::read_to_string(town.path(".runtime/pids/ac-crew-max.pid")).unwrap();
    let out = town.tmux(&[
        "respawn-pane",
        "-k",
        "-t",
        "=ac-crew-max:",
        "exec sleep 600",
    ]);
    assert!(out.status.success(), "{out:?}");
    town.event(
        t0 + Duration::minutes(45),
        "handoff",
        "acme/crew/max",
        json!({"subject": "Context near limit - continuing ac-r4p1", "to_session": true}),
    );
    wait_cycles(&env, "ac-crew-max", 15);
    assert_eq!(
        fs::read_to_string(town.path(".runtime/pids/ac-crew-max.pid")).unwrap(),
        old_pane
    );
    assert!(
        watched(&env, "agent", "ac-crew-max") && alive(&env, "ac-crew-max"),
        "the new pane is the session"
    );
    // Boot finishes its run and is started again; `gt crew stop ada` kills her session. Neither
    // logs a word.
    town.kill_session("hq-boot");
    town.kill_session("ac-crew-ada");
    wait_until("boot and ada retired", || {
        !watched(&env, "agent", "hq-boot") && !watched(&env, "agent", "ac-crew-ada")
    });
    town.session("hq-boot", "exec sleep 600", true);

    // 09:57 the daemon reaps it, 15 minutes after its last activity: the session is killed,
    // its heartbeat removed, and only then is the death logged (daemon.go:2822-2841).
    town.kill_session("ac-quartz");
    fs::remove_file(town.path(".runtime/heartbeats/ac-quartz.json")).unwrap();
    wait_until("the reaped session seen dead", || {
        env.latest("agent", "ac-quartz", "agent_active") == Some(0.0)
    });
    town.event(
        t0 + Duration::minutes(57),
        "session_death",
        "acme/quartz",
        json!({"agent": "acme/polecats/quartz", "caller": "daemon",
            "reason": "idle-reap: idle, idle 15m3s (threshold 15m0s)", "session": "ac-quartz"}),
    );
    wait_until("quartz retired", || !watched(&env, "agent", "ac-quartz"));
    assert!(
        watched(&env, "workspace", "ac-quartz"),
        "an idle polecat keeps its worktree"
    );

    // 10:02 the doctor cleans up jasper as a zombie (agent "unknown").
    town.kill_session("ac-jasper");
    town.event(
        t0 + Duration::minutes(62),
        "session_death",
        "ac-jasper",
        json!({"agent": "unknown", "caller": "gt doctor", "reason": "zombie cleanup", "session": "ac-jasper"}),
    );
    wait_until("jasper retired", || !watched(&env, "agent", "ac-jasper"));

    // 11:00 the hourly pruner rewrites the file. Yesterday's crash lines and today's spawn are
    // still in it: none of them is acted on again.
    town.prune(|l| !l.contains("\"type\":\"nudge\""));
    wait_until("the rewrite read", || {
        daemon.log().contains("events file rewritten")
    });
    wait_cycles(&env, "ac-onyx", 10);
    assert!(
        !watched(&env, "agent", "ac-jasper"),
        "a replayed spawn brought jasper back"
    );

    // 18:00 gt down: the sentinel first; crew, witness and refinery stopped without an event;
    // the town sessions each log their death; the daemon stopped (its pid file removed); the
    // sentinel removed; then the halt (down.go, session/town.go).
    fs::write(town.path("daemon/shutting-down"), "4242").unwrap();
    for s in ["ac-crew-max", "ac-witness"] {
        town.kill_session(s);
    }
    wait_until("the crew seen dead", || {
        env.latest("agent", "ac-crew-max", "agent_active") == Some(0.0)
    });
    for (session, name) in [
        ("hq-mayor", "Mayor"),
        ("hq-boot", "Boot"),
        ("hq-deacon", "Deacon"),
    ] {
        town.event(
            t0 + Duration::hours(9),
            "session_death",
            session,
            json!({"agent": name, "caller": "gt down", "reason": "user shutdown", "session": session}),
        );
        town.kill_session(session);
    }
    // A clean stop: the daemon removes its pid file on its way out.
    fs::remove_file(town.path("daemon/daemon.pid")).unwrap();
    kill(gt_daemon);
    wait_until("the town sessions retired", || {
        let m = monitors(&env);
        [
            "ac-crew-max",
            "ac-witness",
            "hq-mayor",
            "hq-boot",
            "hq-deacon",
        ]
        .iter()
        .all(|s| !m.contains(&("agent".into(), s.to_string())))
    });
    fs::remove_file(town.path("daemon/shutting-down")).unwrap();
    town.event(
        t0 + Duration::hours(9) + Duration::seconds(5),
        "halt",
        "gt",
        json!({"services": ["dolt", "daemon", "deacon", "boot", "mayor", "acme/refinery",
            "acme/witness", "gastown/refinery", "gastown/witness", "crew"]}),
    );
    wait_cycles(&env, "ac-onyx", 10);
    assert!(
        watched(&env, "agent", "ac-onyx"),
        "gt down leaves polecats running"
    );

    // The next morning health-monitor restarts over a town full of stale pid files.
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
    let mut daemon = town.start(&env);
    wait_cycles(&env, "ac-onyx", 10);
    let agents: Vec<String> = monitors(&env)
        .into_iter()
        .filter(|(k, _)| k == "agent")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(agents, ["ac-onyx"], "stale pid files brought sessions back");

    let rows = gastown_status(&env);
    assert_eq!(row(&rows, "ac-onyx")["state"], "working");
    assert_eq!(row(&rows, "ac-quartz")["state"], "retired");
    assert_eq!(row(&rows, "ac-crew-max")["role"], "crew");
    let text = env.hm_ok(&["gastown", "status"]);
    assert!(text.contains("gas town daemon: not running"), "{text}");
    assert_eq!(
        alerts_opened(&env),
        BTreeSet::new(),
        "an ordinary day raised alerts"
    );
    assert_eq!(town.gt_calls(), Vec::new(), "an ordinary day called gt");
    assert!(!daemon.log().contains(" ERROR "), "{}", daemon.log());
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0);
}

#[test]
fn every_real_failure_is_caught_escalated_once_and_closed() {
    if !have_tmux() {
        return;
    }
    let env = town_env(
        "interval = 0.2\nalert_cooldown = 0.5",
        "death_confirm = 1.5\nstall_after = 3\nspawn_grace = 5\norphan_scan_every = 1\norphan_min_age = 1\n",
    );
    let mut town = FakeTown::new(&env);
    let now = Utc::now();
    for name in ["onyx", "jasper", "opal", "garnet", "jade"] {
        town.polecat(name);
    }
    // Onyx is at work: it uses CPU (a working polecat that uses none is stalled, below).
    let busy = BUSY;
    town.session("ac-onyx", busy, true);
    town.heartbeat("ac-onyx", now, Some("working"));
    // Jasper's tree holds a process in a session of its own: killing the tmux session leaves it.
    let jasper = town.session("ac-jasper", "setsid sleep 600 & exec sleep 600", true);
    town.heartbeat("ac-jasper", now, Some("idle"));
    // Opal says working but its heartbeat has not moved for 20 minutes and it uses no CPU:
    // waiting at a prompt. Garnet's heartbeat is as old, but it is busy.
    town.session("ac-opal", "exec sleep 600", true);
    town.heartbeat("ac-opal", now - Duration::minutes(20), Some("working"));
    town.session("ac-garnet", busy, true);
    town.heartbeat("ac-garnet", now - Duration::minutes(20), Some("working"));
    // Jade ran `gt heartbeat --state=stuck` a moment ago.
    town.session("ac-jade", "exec sleep 600", true);
    town.heartbeat("ac-jade", now, Some("stuck"));
    town.session("hq-deacon", "exec sleep 600", true);
    town.deacon_heartbeat(now);
    let gt_daemon = town.gas_town_daemon();
    wait_until("jasper's detached child", || children_of(jasper).len() == 1);
    let jasper_orphan = children_of(jasper)[0];
    // A claude left behind after a kill, still working in the town: no terminal, no pane.
    let claude = town.path("claude");
    fs::copy("/bin/sleep", &claude).unwrap();
    let stray = Command::new("setsid")
        .arg(&claude)
        .arg("600")
        .current_dir(town.path("acme/polecats/onyx/acme"))
        .spawn()
        .unwrap();
    let mut stray = FakeAgent(stray);
    let daemon = town.start(&env);

    // A stalled polecat is news; a busy one with as old a heartbeat is not.
    wait_until("opal stalled", || {
        env.alert_active("ac-opal", "agent_stalled")
    });
    assert_eq!(env.latest("agent", "ac-garnet", "agent_stalled"), Some(0.0));
    // A stuck one, and the orphaned claude.
    wait_until("jade stuck", || {
        env.alert_active("ac-jade", "heartbeat_stuck")
    });
    wait_until("the town orphan", || {
        env.alert_active("gastown", "town_orphan_count")
    });
    let rows = gastown_status(&env);
    assert_eq!(row(&rows, "ac-opal")["state"], "stalled");
    assert_eq!(row(&rows, "ac-jade")["state"], "stuck");
    assert_eq!(row(&rows, "ac-garnet")["state"], "working");
    assert_eq!(row(&rows, "hq-deacon")["role"], "deacon");
    stray.kill();
    wait_until("the town orphan gone", || {
        !env.alert_active("gastown", "town_orphan_count")
    });

    // A crash: onyx's session dies. Gas Town says nothing at first: so many deliberate ends log
    // nothing that a death alone is no alert; onyx is retired quietly.
    town.kill_session("ac-onyx");
    wait_until("onyx retired", || !watched(&env, "agent", "ac-onyx"));
    assert!(!env.alert_active("ac-onyx", "session_death"));
    // Then Gas Town's health check finds it dead with work on its hook: the incident.
    town.event(
        Utc::now(),
        "session_death",
        "ac-onyx",
        json!({"agent": "acme/polecats/onyx", "caller": "daemon",
            "reason": "crash detected by daemon health check", "session": "ac-onyx"}),
    );
    wait_until("the crash raised", || {
        env.alert_active("ac-onyx", "session_death")
    });
    wait_until("the crash escalated", || {
        town.escalations()
            .contains(&("critical".into(), "health-monitor:agent:ac-onyx".into()))
    });
    let onyx_escalation = town.escalation_id("health-monitor:agent:ac-onyx");
    wait_until("onyx shown dead with its open escalation", || {
        let rows = gastown_status(&env);
        let onyx = row(&rows, "ac-onyx");
        onyx["state"] == "dead" && onyx["escalations"] == json!([onyx_escalation])
    });
    // Its 3 minutes later check logs it again: the same alert, no second escalation.
    town.event(
        Utc::now(),
        "session_death",
        "ac-onyx",
        json!({"agent": "acme/polecats/onyx", "caller": "daemon",
            "reason": "crash detected by daemon health check", "session": "ac-onyx"}),
    );
    // Respawned: the alert resolves and its escalation is closed.
    town.session("ac-onyx", busy, true);
    town.event(
        Utc::now(),
        "session_start",
        "acme/polecats/onyx",
        json!({"actor_pid": "acme/polecats/onyx-2", "cwd": town.path("acme/polecats/onyx/acme"),
            "role": "acme/polecats/onyx", "session_id": "0b9e7f52-1c3a-4d8e-b6f2-7a4e9c1d2f37"}),
    );
    wait_until("onyx back", || {
        !env.alert_active("ac-onyx", "session_death")
    });
    wait_until("the crash's escalation closed", || {
        town.closes().contains(&onyx_escalation)
    });

    // An idle reap that leaves an orphan: the reap is quiet, the orphan is not.
    town.kill_session("ac-jasper");
    town.event(
        Utc::now(),
        "session_death",
        "acme/jasper",
        json!({"agent": "acme/polecats/jasper", "caller": "daemon",
            "reason": "idle-reap: idle, idle 15m0s (threshold 15m0s)", "session": "ac-jasper"}),
    );
    wait_until("the reap's orphan alerting", || {
        env.alert_active("ac-jasper", "agent_orphan_count")
    });
    assert!(
        watched(&env, "agent", "ac-jasper"),
        "retired with its orphan alive"
    );
    kill(jasper_orphan);
    wait_until("jasper retired once its orphan is gone", || {
        !watched(&env, "agent", "ac-jasper")
    });

    // The deacon's patrol stops: stale at 5 minutes, critical at 20; then it patrols again.
    town.deacon_heartbeat(Utc::now() - Duration::minutes(6));
    wait_until("the stale deacon", || {
        env.alert_active("hq-deacon", "heartbeat_age_seconds")
    });
    town.deacon_heartbeat(Utc::now() - Duration::minutes(21));
    wait_until("the very stale deacon", || {
        env.db()
            .query_row(
                "SELECT severity FROM health_alerts WHERE resource_id = 'hq-deacon' AND resolved = 0",
                [],
                |r| r.get::<_, String>(0),
            )
            .is_ok_and(|s| s == "critical")
    });
    town.deacon_heartbeat(Utc::now());
    wait_until("the deacon patrols again", || {
        !env.alert_active("hq-deacon", "heartbeat_age_seconds")
    });

    // Gas Town's own daemon dies: its pid file stays, naming a dead process.
    kill(gt_daemon);
    wait_until("the dead Gas Town daemon", || {
        env.alert_active("gastown", "town_daemon_alive")
    });
    // The next `gt status` (IsRunning, daemon.go:2241-2247) removes the stale pid file: the
    // daemon is no less dead for it.
    fs::remove_file(town.path("daemon/daemon.pid")).unwrap();
    wait_cycles(&env, "ac-opal", 15);
    assert!(env.alert_active("gastown", "town_daemon_alive"));
    assert_eq!(
        env.latest("agent", "gastown", "town_daemon_alive"),
        Some(0.0)
    );
    let text = env.hm_ok(&["gastown", "status"]);
    assert!(text.contains("gas town daemon: DEAD"), "{text}");
    assert!(text.contains("orphaned agent processes: 0"), "{text}");

    // Exactly these alerts, each escalated once at its level, and every one resolved closed.
    let expected: BTreeSet<(String, String)> = [
        ("ac-opal", "agent_stalled"),
        ("ac-jade", "heartbeat_stuck"),
        ("gastown", "town_orphan_count"),
        ("ac-onyx", "session_death"),
        ("ac-jasper", "agent_orphan_count"),
        ("hq-deacon", "heartbeat_age_seconds"),
        ("gastown", "town_daemon_alive"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while town.escalations().len() < 7 {
        assert!(
            std::time::Instant::now() < deadline,
            "escalations: {:?}\nalerts: {:?}",
            town.escalations(),
            alerts_opened(&env)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(alerts_opened(&env), expected, "{:?}", town.escalations());
    let mut escalated = town.escalations();
    escalated.sort();
    let want = |level: &str, source: &str| (level.to_string(), source.to_string());
    assert_eq!(
        escalated,
        [
            want("critical", "health-monitor:agent:ac-jade"),
            want("critical", "health-monitor:agent:ac-onyx"),
            want("critical", "health-monitor:agent:gastown"),
            want("high", "health-monitor:agent:ac-jasper"),
            want("high", "health-monitor:agent:ac-opal"),
            want("high", "health-monitor:agent:gastown"),
            want("high", "health-monitor:agent:hq-deacon"),
        ]
    );
    for calls in town.gt_calls() {
        assert_eq!(
            Path::new(&calls.0),
            town.root.as_path(),
            "gt runs in the town"
        );
    }
    let resolved = [
        "health-monitor:agent:ac-onyx",
        "health-monitor:agent:ac-jasper",
        "health-monitor:agent:hq-deacon",
    ];
    wait_until("every resolved alert's escalation closed", || {
        let closes = town.closes();
        resolved
            .iter()
            .all(|s| closes.contains(&town.escalation_id(s)))
    });
    // The town orphan's escalation too: it was the first `high` from agent/gastown.
    let closes = town.closes();
    assert_eq!(closes.len(), 4, "{closes:?}");
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[test]
fn monitors_are_reconciled_with_the_layout_at_start() {
    if !have_tmux() {
        return;
    }
    let env = Env::new("interval = 0.2\n");
    let town = FakeTown::new(&env);
    town.polecat("quartz");
    town.polecat("jade");
    town.session("ac-jade", "exec sleep 600", true);
    fs::create_dir_all(town.path("acme/crew/max")).unwrap();
    // An operator watches ac-jade their own way before the town is followed.
    let theirs = FakeAgent::spawn();
    env.hm_ok(&[
        "add",
        "agent",
        "ac-jade",
        "--pid",
        &theirs.pid().to_string(),
    ]);
    let daemon = town.start(&env);
    assert!(watched(&env, "workspace", "ac-crew-max"));
    assert!(watched(&env, "workspace", "ac-quartz"));
    assert!(
        !watched(&env, "agent", "ac-quartz"),
        "no session: not an agent"
    );
    wait_until("the town's first rescan", || {
        daemon.log().contains("town layout read again")
    });
    wait_cycles(&env, "ac-jade", 10);
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
    fs::remove_dir_all(town.path("acme/crew/max")).unwrap();
    let _daemon = town.start(&env);
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

#[test]
fn a_line_written_to_the_events_file_is_read_when_written_not_at_the_next_poll() {
    if !have_tmux() {
        return;
    }
    let env = town_env("interval = 30", "");
    let town = FakeTown::new(&env);
    let daemon = town.start(&env);
    wait_until("the events file watched", || {
        env.status()["events"]["watches"].as_u64() >= Some(1)
    });
    // The follower polls every second besides: half a second on average, were it not told.
    let mut latencies = Vec::new();
    for i in 0..5u64 {
        std::thread::sleep(std::time::Duration::from_millis(137 * i % 1000));
        town.event(
            Utc::now(),
            "nudge",
            &format!("acme/polecats/probe{i}"),
            json!({}),
        );
        let written = std::time::Instant::now();
        let seen = format!("probe{i}");
        while !daemon.log().contains(&seen) {
            assert!(
                written.elapsed() < std::time::Duration::from_secs(10),
                "event {i} never read"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        latencies.push(written.elapsed());
    }
    latencies.sort();
    eprintln!("events read after {latencies:?}");
    assert!(
        latencies[2] < std::time::Duration::from_millis(250),
        "read at the poll, not when written: {latencies:?}"
    );
}
