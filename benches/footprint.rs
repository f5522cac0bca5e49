//! Footprint: monit against health-monitor, both watching the system, the `/` filesystem, one
//! process and one directory at a 1 s interval, run side by side and measured over the same
//! windows: CPU per cycle (utime + stime from `/proc/<pid>/stat`) and resident memory.
//!
//! Ours: `filesystems = ["/"]`, one agent (`--pid` of a `sleep`, its workspace the directory)
//! and one workspace (the directory). Ours does more per cycle than monit's `check directory`
//! (which reads the directory's own metadata): it walks the directory for its size, probes that
//! it is writable and checks its `.git`; monit in turn reads every process on the host.
//!
//! monit is installed with `apt-get install -y monit` when it is missing and this runs as root
//! with apt-get at hand; otherwise only ours is measured, with a note.
//!
//! Each side runs `INSTANCES` times (default 3), all at once, and each figure is the mean over
//! a side's instances: the readings are in 10 ms ticks, and this divides their rounding.
//!
//! Run: `cargo bench --bench footprint`. Environment: `WARMUP_SECS` (5), `WINDOW_SECS` (15),
//! `WINDOWS` (3), `INSTANCES` (3): the figures are medians over the windows.

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use health_monitor::model::{AgentOptions, MonitorSpec, WorkspaceOptions};
use health_monitor::store::write::{WriteOp, apply};
use support::{Daemon, Meter, Procs, env_u64, make_workspace, median};

const INTERVAL: f64 = 1.0;

/// The monit binary, installing it first if that is possible.
fn monit() -> Option<String> {
    let found = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(path) = found("monit") {
        return Some(path);
    }
    let root = nix::unistd::geteuid().is_root();
    if !root || found("apt-get").is_none() {
        println!(
            "note: monit is not installed and cannot be (needs root and apt-get); measuring ours only"
        );
        return None;
    }
    println!("note: installing monit (apt-get install -y monit)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "monit"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    match (status, found("monit")) {
        (Ok(s), Some(path)) if s.success() => Some(path),
        _ => {
            println!("note: apt-get install monit failed; measuring ours only");
            None
        }
    }
}

/// monit's control file: a 1 s cycle, no HTTP interface, its state kept in `dir`.
fn monit_config(dir: &Path, sleeper_pidfile: &Path, watched: &Path) -> std::path::PathBuf {
    let d = dir.display();
    let text = format!(
        "set daemon 1\n\
         set logfile {d}/monit.log\n\
         set pidfile {d}/monit.pid\n\
         set idfile {d}/monit.id\n\
         set statefile {d}/monit.state\n\
         # no `set httpd`: the HTTP interface is off\n\
         check system bench-host\n\
         check filesystem root with path /\n\
         check process sleeper with pidfile {}\n\
         check directory workspace with path {}\n",
        sleeper_pidfile.display(),
        watched.display()
    );
    let path = dir.join("monitrc");
    std::fs::write(&path, text).unwrap();
    // monit refuses a control file that others can read.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Starts one of ours in `dir`, watching `watched` and the process `sleeper`.
fn start_ours(dir: &Path, sleeper: u32, watched: &Path) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), "filesystems = [\"/\"]\n").unwrap();
    let ops = vec![
        WriteOp::MonitorSaved(MonitorSpec::Agent {
            id: "agent".into(),
            options: AgentOptions {
                pid: Some(sleeper),
                workspace: Some(watched.to_path_buf()),
                ..AgentOptions::default()
            },
        }),
        WriteOp::MonitorSaved(MonitorSpec::Workspace {
            id: "workspace".into(),
            options: WorkspaceOptions {
                path: Some(watched.to_path_buf()),
                ..WorkspaceOptions::default()
            },
        }),
    ];
    let mut conn = health_monitor::store::open_for_writing(&dir.join("hm.db")).unwrap();
    apply(&mut conn, &ops).unwrap();
    drop(conn);
    Daemon::start(dir, INTERVAL, &[])
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn main() {
    let warmup = Duration::from_secs(env_u64("WARMUP_SECS", 5));
    let window = Duration::from_secs(env_u64("WINDOW_SECS", 15));
    let windows = env_u64("WINDOWS", 3) as usize;
    let instances = env_u64("INSTANCES", 3).max(1) as usize;
    let monit_bin = monit();

    let root = tempfile::tempdir().unwrap();
    let watched = root.path().join("workspace");
    make_workspace(&watched);
    let mut procs = Procs::default();
    let sleeper = procs.spawn("sleep", &["600"]);
    let pidfile = root.path().join("sleeper.pid");
    std::fs::write(&pidfile, format!("{sleeper}\n")).unwrap();

    // Each side runs `instances` times over, all side by side: their CPU adds up over the same
    // windows, so the 10 ms rounding of each reading weighs `instances` times less.
    let ours: Vec<Daemon> = (0..instances)
        .map(|i| start_ours(&root.path().join(format!("ours{i}")), sleeper, &watched))
        .collect();
    let monits: Vec<u32> = match &monit_bin {
        Some(bin) => (0..instances)
            .map(|i| {
                let dir = root.path().join(format!("monit{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                let rc = monit_config(&dir, &pidfile, &watched);
                let mut cmd = Command::new(bin);
                cmd.arg("-I").arg("-c").arg(&rc);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                procs.spawn_command(cmd)
            })
            .collect(),
        None => Vec::new(),
    };
    let host = host_processes();

    std::thread::sleep(warmup);
    let mut pids: Vec<u32> = ours.iter().map(|d| d.pid).collect();
    pids.extend(&monits);
    let mut meter = Meter::start(&pids);
    // The whole span too: one reading at each end, so the tick rounding weighs least.
    let mut whole = Meter::start(&pids);
    // Per window, each side's mean over its instances.
    let side = |w: &[support::Window], from: usize, n: usize| {
        let cpu = mean(
            &w[from..from + n]
                .iter()
                .map(|x| x.per_cycle(INTERVAL))
                .collect::<Vec<_>>(),
        );
        let rss = mean(
            &w[from..from + n]
                .iter()
                .map(|x| x.rss_mb)
                .collect::<Vec<_>>(),
        );
        (cpu, rss)
    };
    let (mut our_cpu, mut monit_cpu, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_rss, mut monit_rss) = (0.0, 0.0);
    for k in 0..windows {
        std::thread::sleep(window);
        let w = meter.lap();
        let (o_cpu, o_rss) = side(&w, 0, instances);
        our_cpu.push(o_cpu);
        our_rss = o_rss;
        if monits.is_empty() {
            eprintln!("  window {k}: ours {o_cpu:.2} ms/cycle {o_rss:.1} MB");
        } else {
            let (m_cpu, m_rss) = side(&w, instances, instances);
            monit_cpu.push(m_cpu);
            monit_rss = m_rss;
            ratios.push(o_cpu / m_cpu);
            eprintln!(
                "  window {k}: ours {o_cpu:.2} ms/cycle {o_rss:.1} MB, monit {m_cpu:.2} ms/cycle {m_rss:.1} MB"
            );
        }
    }
    let span = whole.lap();
    for pid in &monits {
        assert!(
            support::cpu_ticks(*pid).is_some(),
            "monit died during the measurement"
        );
    }
    let rows: Vec<i64> = ours.iter().map(Daemon::rows).collect();
    for d in ours {
        d.stop();
    }

    println!(
        "footprint: system + / + one process + one directory at {INTERVAL} s; {instances} of each side by side, {windows} windows of {} s (medians of the per-instance means); {host} processes on the host; CPU resolution {} ms per reading",
        window.as_secs(),
        1000.0 / support::ticks_per_second()
    );
    let (span_ours, _) = side(&span, 0, instances);
    println!(
        "  health-monitor: {:.2} ms CPU per cycle ({span_ours:.2} over the whole {:.0} s), RSS {our_rss:.1} MB ({rows:?} rows written)",
        median(our_cpu),
        span[0].secs
    );
    if !monits.is_empty() {
        let (span_monit, _) = side(&span, instances, instances);
        let cpu_ratio = median(ratios);
        let rss_ratio = our_rss / monit_rss;
        println!(
            "  monit:          {:.2} ms CPU per cycle ({span_monit:.2} over the whole span), RSS {monit_rss:.1} MB",
            median(monit_cpu)
        );
        println!(
            "  ours/monit CPU per cycle: {cpu_ratio:.2} ({:.2} over the whole span; target <= 0.5: {}); RSS: {rss_ratio:.2} (target <= 1.5: {})",
            span_ours / span_monit,
            verdict(cpu_ratio <= 0.5),
            verdict(rss_ratio <= 1.5)
        );
    }
    drop(procs);
}

fn host_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}
