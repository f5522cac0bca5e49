//! The kernel tells, the daemon measures at once: an agent's root killed, a heartbeat turned
//! `stuck`, a pid file rewritten, a workspace removed or moved are alerted within 2 s at a 30 s
//! interval; a storm of rewrites leaves the daemon responsive and its cycle on time; an inotify
//! queue overflow is survived; a reused pid is never taken for the agent.

// A test's unwrap is its failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::{Env, FakeAgent, wait_until};

/// The overflow test lowers a kernel-wide limit for the inotify instances created meanwhile:
/// it runs alone (write), the others together (read).
static KERNEL_LIMITS: RwLock<()> = RwLock::new(());

/// Long enough that no cycle comes during a test's wait: whatever is measured sooner was
/// brought forward.
const SLOW: &str = "30";

/// What "at once" must mean at a 30 s interval.
const AT_ONCE: Duration = Duration::from_secs(2);

/// Waits up to [`AT_ONCE`] for `cond`; how long it took, or a panic naming `what`.
fn within_at_once(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < AT_ONCE,
            "{what} not seen within {AT_ONCE:?} (the next cycle is 30 s away)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Gas Town's heartbeat as `gt heartbeat` writes it: rewritten in place (`os.WriteFile`).
fn beat(path: &Path, state: &str) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    fs::write(
        path,
        format!(r#"{{"timestamp":"{now}","state":"{state}"}}"#),
    )
    .unwrap();
}

fn rows(env: &Env, id: &str, metric: &str) -> i64 {
    env.count(&format!(
        "SELECT count(*) FROM health_metrics WHERE resource_id = '{id}' AND metric_name = '{metric}'"
    ))
}

fn events(env: &Env) -> serde_json::Value {
    env.status()["events"].clone()
}

#[test]
fn a_killed_agent_is_alerted_and_notified_long_before_its_next_cycle() {
    let _shared = KERNEL_LIMITS.read().unwrap();
    let env = Env::new("");
    let ws = env.path("ws");
    fs::create_dir(&ws).unwrap();
    let notices = env.path("notices");
    let hook = env.path("hook.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$HEALTH_MONITOR_STATE $HEALTH_MONITOR_ALERT_TYPE\" >> {}\n",
            notices.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let mut agent = FakeAgent::spawn();
    let pid = agent.pid().to_string();
    env.hm_ok(&[
        "add",
        "agent",
        "a1",
        "--pid",
        &pid,
        "--workspace",
        ws.to_str().unwrap(),
    ]);
    let daemon = env.start(&["--interval", SLOW, "--on-alert", hook.to_str().unwrap()]);
    wait_until("the first measurement, with the root's pidfd held", || {
        rows(&env, "a1", "agent_active") >= 1 && events(&env)["pidfds"].as_u64() >= Some(1)
    });
    let before = rows(&env, "a1", "agent_active");
    agent.kill();
    let took = within_at_once("agent_active alerted", || {
        env.alert_active("a1", "agent_active")
    });
    eprintln!("killed agent alerted after {took:?}");
    within_at_once("the exec hook's notice", || {
        fs::read_to_string(&notices).is_ok_and(|n| n.contains("firing agent_active"))
    });
    // One measurement brought forward, not a cycle early: the orphan check ran with it.
    assert_eq!(rows(&env, "a1", "agent_active"), before + 1);
    assert_eq!(env.latest("agent", "a1", "agent_orphan_count"), Some(0.0));
    let ev = events(&env);
    assert!(ev["exits"].as_u64() >= Some(1), "{ev}");
    assert_eq!(ev["pidfds"], 0, "the pidfd of a dead root is let go: {ev}");
    assert!(
        daemon.log().contains("measuring out of cycle"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_stuck_heartbeat_a_rewritten_pid_file_and_a_removed_workspace_are_measured_at_once() {
    let _shared = KERNEL_LIMITS.read().unwrap();
    let env = Env::new("");
    let runtime = env.path("runtime");
    fs::create_dir(&runtime).unwrap();
    let (ws, gone, moved) = (env.path("ws"), env.path("gone"), env.path("moved"));
    for dir in [&ws, &gone, &moved] {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("file"), b"x").unwrap();
    }
    let heartbeat = runtime.join("a1.json");
    beat(&heartbeat, "working");
    let agent = FakeAgent::spawn();
    let a1 = agent.pid().to_string();
    // An agent found by its pid file, as Gas Town writes one ("<pid>\n").
    let other = FakeAgent::spawn();
    let pid_file = runtime.join("a2.pid");
    fs::write(&pid_file, format!("{}\n", other.pid())).unwrap();
    let ws_arg = ws.to_str().unwrap();
    env.hm_ok(&[
        "add",
        "agent",
        "a1",
        "--pid",
        &a1,
        "--workspace",
        ws_arg,
        "--heartbeat",
        heartbeat.to_str().unwrap(),
    ]);
    env.hm_ok(&[
        "add",
        "agent",
        "a2",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--workspace",
        ws_arg,
    ]);
    env.hm_ok(&["add", "workspace", "gone", "--path", gone.to_str().unwrap()]);
    env.hm_ok(&[
        "add",
        "workspace",
        "moved",
        "--path",
        moved.to_str().unwrap(),
    ]);
    let _daemon = env.start(&["--interval", SLOW]);
    wait_until("every first measurement", || {
        rows(&env, "a1", "heartbeat_stuck") >= 1
            && rows(&env, "a2", "agent_active") >= 1
            && rows(&env, "gone", "workspace_exists") >= 1
            && rows(&env, "moved", "workspace_exists") >= 1
    });
    // A heartbeat rewritten with the same state says nothing new: no measurement.
    let beats = rows(&env, "a1", "heartbeat_stuck");
    beat(&heartbeat, "working");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rows(&env, "a1", "heartbeat_stuck"), beats);

    beat(&heartbeat, "stuck");
    let took = within_at_once("heartbeat_stuck alerted", || {
        env.alert_active("a1", "heartbeat_stuck")
    });
    eprintln!("stuck heartbeat alerted after {took:?}");
    beat(&heartbeat, "working");
    within_at_once("heartbeat_stuck resolved", || {
        !env.alert_active("a1", "heartbeat_stuck")
    });

    // The pid file now names a process that is gone.
    fs::write(&pid_file, "999999999\n").unwrap();
    within_at_once("agent_active of a2 alerted", || {
        env.alert_active("a2", "agent_active")
    });

    let status = Command::new("rm").arg("-rf").arg(&gone).status().unwrap();
    assert!(status.success());
    within_at_once("workspace_exists of a removed root alerted", || {
        env.alert_active("gone", "workspace_exists")
    });
    fs::rename(&moved, env.path("moved-away")).unwrap();
    within_at_once("workspace_exists of a moved root alerted", || {
        env.alert_active("moved", "workspace_exists")
    });
    // Back where it was: watched again (the next cycle would see it anyway; so does a poke of
    // its other events once re-watched).
    drop(agent);
    drop(other);
}

/// Agent `a1` (a `sleep`, with a `working` heartbeat) and workspace `w1`, its workspace,
/// added to the database: the agent, the workspace directory and the heartbeat file.
fn agent_and_workspace(env: &Env) -> (FakeAgent, std::path::PathBuf, std::path::PathBuf) {
    let ws = env.path("ws");
    fs::create_dir(&ws).unwrap();
    let heartbeat = env.path("a1.json");
    beat(&heartbeat, "working");
    let agent = FakeAgent::spawn();
    let pid = agent.pid().to_string();
    let (ws_arg, hb_arg) = (ws.to_str().unwrap(), heartbeat.to_str().unwrap());
    env.hm_ok(&[
        "add",
        "agent",
        "a1",
        "--pid",
        &pid,
        "--workspace",
        ws_arg,
        "--heartbeat",
        hb_arg,
    ]);
    env.hm_ok(&["add", "workspace", "w1", "--path", ws_arg]);
    (agent, ws, heartbeat)
}

#[test]
fn a_storm_of_heartbeat_rewrites_leaves_the_daemon_responsive_and_its_cycle_on_time() {
    let _shared = KERNEL_LIMITS.read().unwrap();
    let env = Env::new("");
    let (agent, _ws, heartbeat) = agent_and_workspace(&env);
    let _daemon = env.start(&["--interval", "1"]);
    wait_until("first measurements", || {
        rows(&env, "w1", "workspace_exists") >= 2
    });
    let agent_before = rows(&env, "a1", "agent_active");
    let ws_before = rows(&env, "w1", "workspace_exists");
    // 10,000 rewrites in about a second, the state changing at every one.
    let writer = {
        let heartbeat = heartbeat.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..10_000u32 {
                beat(&heartbeat, if i % 2 == 0 { "stuck" } else { "working" });
                // Paced to a second, if the machine is fast enough.
                let due = Duration::from_micros(100 * u64::from(i));
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
            start.elapsed()
        })
    };
    // The daemon answers all along.
    let mut slowest = Duration::ZERO;
    while !writer.is_finished() {
        let asked = Instant::now();
        let status = env.status();
        slowest = slowest.max(asked.elapsed());
        assert_eq!(status["running"], true);
    }
    let storm = writer.join().unwrap();
    beat(&heartbeat, "working");
    // Two more cycles after the storm: every beat measured the workspace.
    let settle = Instant::now();
    std::thread::sleep(Duration::from_millis(2100));
    let window = storm + settle.elapsed();
    let ws_rows = rows(&env, "w1", "workspace_exists") - ws_before;
    let agent_rows = rows(&env, "a1", "agent_active") - agent_before;
    eprintln!(
        "storm of {storm:?}: status answered in at most {slowest:?}; in {window:?}, {ws_rows} \
         workspace cycles and {agent_rows} agent measurements"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "status took {slowest:?} in the storm"
    );
    // One cycle a second, the storm's second included (one may fall just outside).
    let cycles = window.as_secs_f64().floor() as i64;
    assert!(ws_rows >= cycles - 1, "{ws_rows} cycles in {window:?}");
    // At most one measurement brought forward per 100 ms, besides the cycles.
    let most = (window.as_secs_f64() / 0.1).ceil() as i64 + cycles + 2;
    assert!(
        agent_rows <= most,
        "{agent_rows} agent measurements in {window:?} (at most {most})"
    );
    assert!(
        agent_rows > cycles,
        "the storm brought no measurement forward"
    );
    drop(agent);
}

/// Sets `/proc/sys/fs/inotify/max_queued_events` for the inotify instances created until the
/// guard is dropped, which puts the old value back.
struct QueueLimit(String);

impl QueueLimit {
    const PATH: &str = "/proc/sys/fs/inotify/max_queued_events";

    fn set(limit: u32) -> Option<QueueLimit> {
        let old = fs::read_to_string(Self::PATH).ok()?;
        fs::write(Self::PATH, limit.to_string()).ok()?;
        Some(QueueLimit(old))
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, self.0.trim());
    }
}

#[test]
fn an_inotify_queue_overflow_is_survived_and_everything_is_measured_again() {
    let _alone = KERNEL_LIMITS.write().unwrap();
    let env = Env::new("");
    let (mut agent, ws, _heartbeat) = agent_and_workspace(&env);
    // A tiny queue for the daemon's instance: a burst of file creations overflows it.
    let Some(limit) = QueueLimit::set(16) else {
        eprintln!("skipped: cannot set {} (not root?)", QueueLimit::PATH);
        return;
    };
    let daemon = env.start(&["--interval", SLOW]);
    wait_until("the first measurements, with the instance made", || {
        rows(&env, "w1", "workspace_size_mb") >= 1 && events(&env)["watches"].as_u64() >= Some(2)
    });
    drop(limit);
    let agent_rows = rows(&env, "a1", "agent_active");
    let ws_rows = rows(&env, "w1", "workspace_size_mb");
    // Files created faster than the kernel thread reads (it gathers for 10 ms at a time).
    let mut made = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while events(&env)["overflows"].as_u64() < Some(1) {
        assert!(Instant::now() < deadline, "no overflow: {}", events(&env));
        for _ in 0..500 {
            fs::write(ws.join(format!("f{made}")), b"0123456789").unwrap();
            made += 1;
        }
    }
    // Everything watched is measured again, at once.
    within_at_once("the agent measured again", || {
        rows(&env, "a1", "agent_active") > agent_rows
    });
    within_at_once("the workspace measured again", || {
        rows(&env, "w1", "workspace_size_mb") > ws_rows
    });
    assert!(
        daemon.log().contains("inotify queue overflowed"),
        "{}",
        daemon.log()
    );
    // Its size is right: the tree was walked again, not trusted after losing events.
    let files = fs::read_dir(&ws).unwrap().count() as f64;
    wait_until("the file count after the overflow", || {
        env.latest("workspace", "w1", "workspace_file_count") == Some(files)
    });
    // And the kernel still tells.
    agent.kill();
    within_at_once("agent_active alerted after the overflow", || {
        env.alert_active("a1", "agent_active")
    });
}

/// Spawns `sleep` until one gets `pid` (as root, by setting the next pid through
/// `/proc/sys/kernel/ns_last_pid`); `None` when that cannot be done here.
fn sleep_with_pid(pid: u32) -> Option<FakeAgent> {
    for _ in 0..50 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let candidate = FakeAgent::spawn();
        if candidate.pid() == pid {
            return Some(candidate);
        }
    }
    None
}

#[test]
fn a_reused_pid_is_never_mistaken_for_the_agent() {
    let _shared = KERNEL_LIMITS.read().unwrap();
    let env = Env::new("");
    let ws = env.path("ws");
    fs::create_dir(&ws).unwrap();
    let mut agent = FakeAgent::spawn();
    let pid = agent.pid();
    env.hm_ok(&[
        "add",
        "agent",
        "a1",
        "--pid",
        &pid.to_string(),
        "--workspace",
        ws.to_str().unwrap(),
    ]);
    let daemon = env.start(&["--interval", "1"]);
    wait_until("the agent measured alive", || {
        env.latest("agent", "a1", "agent_active") == Some(1.0)
            && events(&env)["pidfds"].as_u64() >= Some(1)
    });
    agent.kill();
    let Some(_impostor) = sleep_with_pid(pid) else {
        eprintln!("skipped: cannot make a process with pid {pid} (not root?)");
        return;
    };
    within_at_once("agent_active alerted", || {
        env.alert_active("a1", "agent_active")
    });
    // Cycles go by with the impostor running under the agent's pid: still dead.
    let rows_then = rows(&env, "a1", "agent_active");
    wait_until("three more cycles", || {
        rows(&env, "a1", "agent_active") >= rows_then + 3
    });
    assert!(env.alert_active("a1", "agent_active"));
    assert_eq!(env.latest("agent", "a1", "agent_active"), Some(0.0));
    assert!(daemon.log().contains("was reused"), "{}", daemon.log());
}

/// inotify instances a process holds (`anon_inode:inotify` among its descriptors).
fn inotify_instances(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy() == "anon_inode:inotify")
        })
        .count()
}

#[test]
fn one_inotify_instance_serves_every_tree_past_the_128_a_user_gets() {
    let _shared = KERNEL_LIMITS.read().unwrap();
    let trees = 150;
    let root = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..trees).map(|i| format!("w{i}")).collect();
    for id in &ids {
        fs::create_dir_all(root.path().join(id).join("src")).unwrap();
        fs::write(root.path().join(id).join("src/main.rs"), "fn main() {}\n").unwrap();
    }
    let env = Env::new(&format!(
        "workspace_path = \"{}/{{id}}\"\n",
        root.path().display()
    ));
    let mut args = vec!["--interval", SLOW, "--workspaces"];
    args.extend(ids.iter().map(String::as_str));
    let daemon = env.start(&args);
    // Every tree watched: its root and its `src`, two directories each.
    wait_until("every tree watched", || {
        events(&env)["watches"].as_u64() >= Some(2 * trees as u64)
    });
    assert_eq!(inotify_instances(daemon.pid()), 1);
    // The kernel tells of the last tree too, the 150th on the one instance.
    let last = root.path().join(&ids[trees - 1]);
    fs::rename(&last, root.path().join("moved")).unwrap();
    within_at_once("the last tree's root moved, alerted", || {
        env.alert_active(&ids[trees - 1], "workspace_exists")
    });
}
