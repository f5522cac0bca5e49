//! Alert latency: from an event to its alert row committed in the database, and to its notice
//! delivered to an exec hook. Three events: `kill -9` of an agent's root, its heartbeat
//! rewritten to `stuck`, and its workspace removed (`rm -rf`). Each at the default 30 s
//! interval and at 1 s, by the daemon as it is (the kernel tells it: pidfd, inotify) and, in
//! the same run, by the same daemon with `events = false`, which waits for its next cycle as
//! every daemon did before. Targets for the kernel's path: median <= 100 ms and worst <= 250 ms
//! for all three, at both intervals.
//!
//! Each round adds fresh resources to the running daemon (an agent to kill, an agent whose
//! heartbeat turns `stuck`, a workspace to remove), waits for their first measurement and then
//! for a point of the cycle that differs from round to round, makes the three events at once,
//! and polls the database and the hook's file every millisecond.
//!
//! Run: `cargo bench --bench latency` (about 5 minutes). Environment: `INTERVALS` (`30,1`),
//! `RUNS` (rounds per daemon, 10), `POLL_RUNS` (rounds of the polling daemon at intervals over
//! 5 s, which take an interval each: 3).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};
use support::{Daemon, Procs, env_u64, median};

/// The three events, as `(resource prefix, alert type, what happens)`.
const EVENTS: [(&str, &str, &str); 3] = [
    ("k", "agent_active", "kill -9 of the agent's root"),
    ("h", "heartbeat_stuck", "heartbeat rewritten to stuck"),
    ("w", "workspace_exists", "workspace removed (rm -rf)"),
];

/// Gas Town's heartbeat as `gt heartbeat` writes it: rewritten in place.
fn beat(path: &Path, state: &str) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    fs::write(
        path,
        format!(r#"{{"timestamp":"{now}","state":"{state}"}}"#),
    )
    .unwrap();
}

fn hm(dir: &Path, args: &[&str]) {
    let out = Command::new(support::bin())
        .args(args)
        .arg("--db-path")
        .arg(dir.join("hm.db"))
        .arg("--socket")
        .arg(dir.join("hm.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One daemon under test: `events` on or off.
struct Subject {
    dir: tempfile::TempDir,
    daemon: Daemon,
    interval: f64,
}

impl Subject {
    fn start(root: &Path, interval: f64, events: bool) -> Subject {
        let dir = tempfile::tempdir_in(root).unwrap();
        fs::write(
            dir.path().join("config.toml"),
            format!("events = {events}\n"),
        )
        .unwrap();
        let hook = dir.path().join("hook.sh");
        fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$HEALTH_MONITOR_RESOURCE_ID $HEALTH_MONITOR_ALERT_TYPE $HEALTH_MONITOR_STATE\" >> {}\n",
                dir.path().join("notices").display()
            ),
        )
        .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(dir.path().join("shared-ws")).unwrap();
        let daemon = Daemon::start(
            dir.path(),
            interval,
            &["--on-alert", hook.to_str().unwrap()],
        );
        Subject {
            dir,
            daemon,
            interval,
        }
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// One round: fresh resources, their first measurement, then the three events at once.
    /// Returns, per event, the time to the alert row committed and to the notice delivered.
    fn round(&self, n: usize, procs: &mut Procs) -> Vec<(Duration, Duration)> {
        let shared = self.path("shared-ws");
        let victim = procs.spawn("sleep", &["3600"]);
        let beating = procs.spawn("sleep", &["3600"]);
        let heartbeat = self.path(&format!("hb{n}.json"));
        beat(&heartbeat, "working");
        let ws = self.path(&format!("ws{n}"));
        fs::create_dir_all(ws.join("src")).unwrap();
        for i in 0..5 {
            fs::write(ws.join(format!("src/f{i}.rs")), b"fn main() {}\n").unwrap();
        }
        let dir = self.dir.path();
        let shared = shared.to_str().unwrap();
        hm(
            dir,
            &[
                "add",
                "agent",
                &format!("k{n}"),
                "--pid",
                &victim.to_string(),
                "--workspace",
                shared,
            ],
        );
        hm(
            dir,
            &[
                "add",
                "agent",
                &format!("h{n}"),
                "--pid",
                &beating.to_string(),
                "--workspace",
                shared,
                "--heartbeat",
                heartbeat.to_str().unwrap(),
            ],
        );
        hm(
            dir,
            &[
                "add",
                "workspace",
                &format!("w{n}"),
                "--path",
                ws.to_str().unwrap(),
            ],
        );
        let db =
            Connection::open_with_flags(&self.daemon.db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let measured = format!(
            "SELECT count(DISTINCT resource_id) FROM health_metrics WHERE resource_id IN \
             ('k{n}', 'h{n}', 'w{n}') AND metric_name IN ('agent_active', 'heartbeat_stuck', \
             'workspace_exists')"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while db.query_row(&measured, [], |r| r.get::<_, i64>(0)).unwrap() < 3 {
            assert!(Instant::now() < deadline, "round {n}: never measured");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A different point of the cycle each round (and a moment for the watches to be set:
        // they follow each first measurement).
        let offset = (n as f64 * 0.37).fract() * self.interval;
        std::thread::sleep(Duration::from_secs_f64(offset) + Duration::from_millis(50));
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        let killed = Instant::now();
        beat(&heartbeat, "stuck");
        let stuck = Instant::now();
        fs::remove_dir_all(&ws).unwrap();
        let removed = Instant::now();
        let began = [killed, stuck, removed];
        let mut committed: HashMap<usize, Duration> = HashMap::new();
        let mut noticed: HashMap<usize, Duration> = HashMap::new();
        let notices = self.path("notices");
        let limit = Duration::from_secs_f64(self.interval * 2.0 + 10.0);
        let open = format!(
            "SELECT resource_id, alert_type FROM health_alerts WHERE resolved = 0 AND \
             resource_id IN ('k{n}', 'h{n}', 'w{n}')"
        );
        while committed.len() < 3 || noticed.len() < 3 {
            assert!(
                removed.elapsed() < limit,
                "round {n}: alerts {committed:?}, notices {noticed:?}: {}",
                self.daemon.log_text()
            );
            let mut stmt = db.prepare_cached(&open).unwrap();
            let rows: Vec<(String, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let text = fs::read_to_string(&notices).unwrap_or_default();
            for (i, (prefix, alert, _)) in EVENTS.iter().enumerate() {
                let id = format!("{prefix}{n}");
                if !committed.contains_key(&i) && rows.iter().any(|(r, a)| *r == id && a == alert) {
                    committed.insert(i, began[i].elapsed());
                }
                let line = format!("{id} {alert} firing");
                if !noticed.contains_key(&i) && text.lines().any(|l| l == line) {
                    noticed.insert(i, began[i].elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (0..3).map(|i| (committed[&i], noticed[&i])).collect()
    }
}

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let intervals: Vec<f64> = std::env::var("INTERVALS")
        .unwrap_or_else(|_| "30,1".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let runs = env_u64("RUNS", 10) as usize;
    let poll_runs = env_u64("POLL_RUNS", 3) as usize;
    let root = tempfile::tempdir().unwrap();
    let mut verdicts = Vec::new();
    for &interval in &intervals {
        for events in [true, false] {
            let rounds = if events || interval <= 5.0 {
                runs
            } else {
                poll_runs
            };
            let mode = if events {
                "kernel (pidfd, inotify)"
            } else {
                "polling (events = false)"
            };
            let subject = Subject::start(root.path(), interval, events);
            let mut procs = Procs::default();
            let mut results: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); 3];
            for n in 0..rounds {
                for (i, r) in subject.round(n, &mut procs).into_iter().enumerate() {
                    results[i].push(r);
                }
            }
            println!("interval {interval} s, {mode}, {rounds} rounds:");
            for (i, (_, _, what)) in EVENTS.iter().enumerate() {
                let commit: Vec<f64> = results[i].iter().map(|r| ms(&r.0)).collect();
                let notice: Vec<f64> = results[i].iter().map(|r| ms(&r.1)).collect();
                let worst = |xs: &[f64]| xs.iter().copied().fold(0.0, f64::max);
                let (cm, cw) = (median(commit.clone()), worst(&commit));
                let (nm, nw) = (median(notice.clone()), worst(&notice));
                println!(
                    "  {what:32} alert row committed: median {cm:6.0} ms, worst {cw:6.0} ms; \
                     notice delivered: median {nm:6.0} ms, worst {nw:6.0} ms"
                );
                if events {
                    let met = cm <= 100.0 && cw <= 250.0 && nm <= 100.0 && nw <= 250.0;
                    verdicts.push(format!(
                        "{what} at {interval} s: {}",
                        if met { "met" } else { "MISSED" }
                    ));
                }
            }
            subject.daemon.stop();
        }
    }
    println!(
        "targets (kernel's path: median <= 100 ms, worst <= 250 ms, to the row and to the notice):"
    );
    for v in verdicts {
        println!("  {v}");
    }
}
