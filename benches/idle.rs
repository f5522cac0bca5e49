//! Idle cost: CPU per minute of a daemon watching 100 agents and 100 workspaces where nothing
//! happens, at the default 30 s interval, against a baseline daemon in the same run, side by
//! side over the same windows. Holding pidfds and inotify watches must cost nothing while the
//! kernel has nothing to tell: the figure must not rise.
//!
//! The baseline is `BASELINE_BIN`, a build of the daemon before it was event-driven (build one
//! with `git worktree add /tmp/base <commit> && cargo build --release` there); without it, the
//! same binary with `events = false` stands in, which is said.
//!
//! CPU is read two ways: the threads' `schedstat` (nanoseconds; the probe threads live 60 s
//! between jobs, longer than the interval, so none exits unseen), and `/proc/<pid>/stat` over
//! the whole span (10 ms ticks: coarse for a daemon that uses tens of ms a minute).
//!
//! Run: `BASELINE_BIN=/path/to/old/health-monitor cargo bench --bench idle` (about 5 minutes).
//! Environment: `AGENTS` (100, and as many workspaces), `WARMUP_SECS` (45), `WINDOW_SECS` (60),
//! `WINDOWS` (3).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::time::Duration;

use support::{Daemon, Meter, Procs, env_u64, make_workspace, median, save_monitors};

const INTERVAL: f64 = 30.0;

/// One daemon: `program`, its own copies of the workspaces, the shared agents.
fn start(program: &str, dir: &Path, pids: &[u32], config: &str) -> Daemon {
    std::fs::create_dir_all(dir.join("workspaces")).unwrap();
    for i in 0..pids.len() {
        make_workspace(&dir.join(format!("workspaces/ws{i}")));
    }
    std::fs::write(dir.join("config.toml"), config).unwrap();
    save_monitors(
        &dir.join("hm.db"),
        pids,
        &dir.join("workspaces"),
        pids.len(),
    );
    Daemon::start_binary(program, dir, INTERVAL, &[])
}

fn main() {
    let agents = env_u64("AGENTS", 100) as usize;
    let warmup = Duration::from_secs(env_u64("WARMUP_SECS", 45));
    let window = Duration::from_secs(env_u64("WINDOW_SECS", 60));
    let windows = env_u64("WINDOWS", 3) as usize;
    let baseline = std::env::var("BASELINE_BIN").ok();
    let root = tempfile::tempdir().unwrap();
    let mut procs = Procs::default();
    let pids: Vec<u32> = (0..agents)
        .map(|_| procs.spawn("sleep", &["3600"]))
        .collect();
    let ours = start(support::bin(), &root.path().join("ours"), &pids, "");
    let (base, base_name) = match &baseline {
        Some(bin) => (
            start(bin, &root.path().join("base"), &pids, ""),
            format!("BASELINE_BIN ({bin})"),
        ),
        None => (
            start(
                support::bin(),
                &root.path().join("base"),
                &pids,
                "events = false\n",
            ),
            "this binary with events = false (no BASELINE_BIN given)".to_string(),
        ),
    };
    std::thread::sleep(warmup);
    let rows_before = (ours.rows(), base.rows());
    let threads = |pid: u32| -> u64 { support::task_cpu_ns(pid).values().sum() };
    let mut whole = Meter::start(&[ours.pid, base.pid]);
    let mut last = (
        threads(ours.pid),
        threads(base.pid),
        std::time::Instant::now(),
    );
    let (mut ours_cpu, mut base_cpu, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..windows {
        std::thread::sleep(window);
        let now = (
            threads(ours.pid),
            threads(base.pid),
            std::time::Instant::now(),
        );
        let minutes = now.2.duration_since(last.2).as_secs_f64() / 60.0;
        let o = now.0.saturating_sub(last.0) as f64 / 1e6 / minutes;
        let b = now.1.saturating_sub(last.1) as f64 / 1e6 / minutes;
        last = now;
        eprintln!("  window {k}: ours {o:.1} ms/min, baseline {b:.1} ms/min (schedstat)");
        ours_cpu.push(o);
        base_cpu.push(b);
        ratios.push(o / b);
    }
    let span = whole.lap();
    let per_minute = |x: &support::Window| x.cpu_ms / x.secs * 60.0;
    let (span_ours, span_base) = (per_minute(&span[0]), per_minute(&span[1]));
    let rows = (ours.rows() - rows_before.0, base.rows() - rows_before.1);
    let watch = support::control_request(
        &root.path().join("ours/hm.sock"),
        &serde_json::json!({"op": "status"}),
    )["events"]
        .clone();
    ours.stop();
    base.stop();
    let ratio = median(ratios);
    println!(
        "idle: {agents} agents + {agents} workspaces, nothing happening, interval {INTERVAL} s; {windows} windows of {} s after {} s; CPU resolution {} ms per reading",
        window.as_secs(),
        warmup.as_secs(),
        1000.0 / support::ticks_per_second()
    );
    println!(
        "  event-driven: {:.1} ms CPU per minute ({span_ours:.1} over the whole span by /proc stat; {} rows written; kernel: {watch})",
        median(ours_cpu),
        rows.0
    );
    println!(
        "  baseline:     {:.1} ms CPU per minute ({span_base:.1} by /proc stat; {} rows written): {base_name}",
        median(base_cpu),
        rows.1
    );
    println!(
        "  ratio {ratio:.2} ({:.2} by /proc stat); target: must not rise (<= 1.05, within the noise): {}",
        span_ours / span_base,
        if ratio <= 1.05 { "met" } else { "MISSED" }
    );
    drop(procs);
}
