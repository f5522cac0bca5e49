//! Soak: many cycles at a very short interval with 50 agents and 50 workspaces; memory and open
//! files must level off, not grow with the cycles.
//!
//! CI runs a short form. The long form (10,000 cycles):
//! `SOAK_CYCLES=10000 cargo test --release --test soak -- --nocapture`

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{Env, FakeAgent, wait_until};

/// Resident memory (kB) and thread count of a process, from `/proc/<pid>/status`.
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

fn open_fds(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}

#[test]
fn fifty_agents_and_fifty_workspaces_at_a_tiny_interval_level_off() {
    let cycles: i64 = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let warmup = (cycles / 10).max(50);
    let env =
        Env::new("interval = 0.02\n[thresholds.workspace_size_mb]\nwarning = 1\ncritical = 2\n");
    let agents: Vec<FakeAgent> = (0..50).map(|_| FakeAgent::spawn()).collect();
    for (i, agent) in agents.iter().enumerate() {
        env.hm_ok(&[
            "add",
            "agent",
            &format!("a{i}"),
            "--pid",
            &agent.pid().to_string(),
        ]);
    }
    for i in 0..50 {
        let ws = env.path(&format!("w{i}"));
        fs::create_dir(&ws).unwrap();
        for f in 0..20 {
            fs::write(ws.join(format!("f{f}")), vec![0u8; 100 * f]).unwrap();
        }
        // A few workspaces breach and recover over and over, exercising the alert path.
        env.hm_ok(&[
            "add",
            "workspace",
            &format!("w{i}"),
            "--path",
            &ws.display().to_string(),
        ]);
    }
    let daemon = env.start(&[]);
    let pid = daemon.child.id();
    // One agent collector's ticks count the cycles (the system collector's CPU reading needs
    // 200 ms between refreshes, so it is not the pace-setter here).
    let cycles_done = || {
        env.count(
            "SELECT count(*) FROM health_metrics WHERE resource_id = 'a0' AND metric_name = 'agent_active'",
        )
    };

    wait_until("warm-up cycles", || cycles_done() >= warmup);
    let (rss_start, threads_start) = rss_and_threads(pid);
    let fds_start = open_fds(pid);
    let started = std::time::Instant::now();
    let mut flapping = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(cycles as u64);
    // RSS at each quarter of the run: growth must flatten, not go on with the cycles.
    let mut quarters = Vec::new();
    while cycles_done() < cycles {
        let done = cycles_done();
        if quarters.len() < 3
            && done >= warmup + (cycles - warmup) * (quarters.len() as i64 + 1) / 4
        {
            quarters.push(rss_and_threads(pid).0);
        }
        assert!(std::time::Instant::now() < deadline, "soak too slow");
        // Flip one workspace over its thresholds now and then.
        flapping = !flapping;
        let big = env.path("w0/big");
        if flapping {
            fs::write(&big, vec![0u8; 3 * 1024 * 1024]).unwrap();
        } else {
            let _ = fs::remove_file(&big);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (rss_end, threads_end) = rss_and_threads(pid);
    let fds_end = open_fds(pid);
    let status = env.status();
    let rows = env.count("SELECT count(*) FROM health_metrics");
    eprintln!(
        "soak: {cycles} cycles ({} after warm-up in {:.1} s), {rows} metric rows\n  \
         RSS {rss_start} kB -> {quarters:?} -> {rss_end} kB, open fds {fds_start} -> {fds_end}, threads {threads_start} -> {threads_end}\n  \
         writer {}\n  refused {}",
        cycles - warmup,
        started.elapsed().as_secs_f64(),
        status["writer"],
        status["measurements_refused"],
    );
    assert_eq!(status["running"], true);
    assert!(
        rss_end <= rss_start * 3 / 2 + 8 * 1024,
        "RSS grew from {rss_start} kB to {rss_end} kB"
    );
    if let Some(half) = quarters.get(1) {
        assert!(
            rss_end <= half * 5 / 4 + 4 * 1024,
            "RSS still growing in the second half: {half} kB -> {rss_end} kB"
        );
    }
    assert!(
        fds_end <= fds_start + 8,
        "open fds grew from {fds_start} to {fds_end}"
    );
    assert_eq!(status["writer"]["rows_dropped"], 0);
    let alerts = env.count("SELECT count(*) FROM health_alerts WHERE resource_id = 'w0'");
    assert!(alerts >= 1, "the flapping workspace raised alerts");
    drop(agents);
}
