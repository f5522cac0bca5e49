//! Cycle cost: the real daemon (release) at a 1 s interval watching N agents (each a real
//! process, one in ten a small tree, each with its workspace) and N workspaces (the same
//! directories, as Gas Town sets them up), for N = 10, 100 and 1000. Its CPU time (utime +
//! stime from `/proc/<pid>/stat`, every thread, living or exited) and resident memory are read
//! over a window of several cycles after a warm-up. Rounds are interleaved (10, 100, 1000, 10,
//! 100...) and every figure is a median over them.
//!
//! The baseline, measured in the same run: a daemon with no monitors at all (the fixed cost:
//! the system collector, the actors, the writer), running beside the others for the whole
//! benchmark so that its small cost is read over a long window (`/proc` counts in 10 ms ticks).
//! Per-resource costs are given over all the CPU and above that fixed cost.
//!
//! All the processes (N = 1000's) run for the whole benchmark, so the smaller runs also show
//! what a host with ~1000 unrelated processes costs them.
//!
//! Run: `cargo bench --bench cycle`. Environment: `ROUNDS` (default 3), `WARMUP_SECS` (5),
//! `WINDOW_SECS` (10: N = 100's window; N = 10 gets 1.5 times that, N = 1000 0.8 times), `NS`
//! (a comma separated list instead of 10,100,1000), and `HM_BASE`: another build of the daemon
//! (say, a copy of an earlier `target/release/health-monitor`) for before/after comparisons:
//! after ours alone, every N of every round runs it alone, then it and ours side by side over
//! the same window (noise from the shared machine hits both alike; each watches its own copy of
//! the workspaces), with the ratios ours/base per N both ways. Side by side they also share
//! per-user limits (inotify instances), which can weigh on either.
//!
//! Town orphan scan (issue 13), measured first: with 500 extra `sleep`s on the host and ten
//! orphaned `claude`s (copies of `sleep`, in their own sessions, working in a temporary town),
//! `gastown::orphans::scan` of that town against the baselines of the same rounds: the
//! existing full table read (`process::scan_all`, what `--match` uses) and a bare listing of
//! `/proc`. Medians of interleaved rounds, CPU time of the bench's thread and wall time; the
//! scan runs at most once a minute, so its cost per cycle is its median over the cycles in a
//! minute. `ONLY=orphans` runs this part alone, `ONLY=cycle` the rest alone; `ORPHAN_ROUNDS`
//! (default 15) and `ORPHAN_SLEEPS` (500).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use health_monitor::collect::process;
use health_monitor::gastown::orphans;
use support::{Daemon, Meter, Procs, env_u64, make_workspace, median};

const INTERVAL: f64 = 1.0;

/// Agents whose root is a small tree (`sh` with two `sleep`s) instead of one `sleep`.
const TREE_EVERY: usize = 10;

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    cpu_ms_per_cycle: f64,
    rss_mb: f64,
    threads: u64,
    rows_per_cycle: f64,
}

/// A directory for one daemon, with a config that leaves everything at its default.
fn daemon_dir(root: &Path, tag: &str) -> std::path::PathBuf {
    let dir = root.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        "# cycle bench: defaults, interval from the command line\n",
    )
    .unwrap();
    dir
}

/// Starts the daemons (`programs`, side by side, each on its own fresh database) watching the
/// first `n` agents and workspaces, lets them warm up, and measures them over the same
/// `window`. Daemon `i` watches the workspaces under `workspaces[i]`: its own copies, since
/// a daemon's writability probes and walks must not show up in another's directories.
#[allow(clippy::too_many_arguments)]
fn run(
    programs: &[&str],
    root: &Path,
    tag: &str,
    n: usize,
    pids: &[u32],
    workspaces: &[std::path::PathBuf],
    warmup: Duration,
    window: Duration,
) -> Vec<Run> {
    let daemons: Vec<(std::path::PathBuf, Daemon)> = programs
        .iter()
        .enumerate()
        .map(|(i, program)| {
            let dir = daemon_dir(root, &format!("{tag}-{i}"));
            support::save_monitors(&dir.join("hm.db"), pids, &workspaces[i], n);
            let daemon = Daemon::start_binary(program, &dir, INTERVAL, &[]);
            (dir, daemon)
        })
        .collect();
    std::thread::sleep(warmup);
    let rows_before: Vec<i64> = daemons.iter().map(|(_, d)| d.rows()).collect();
    let mut meter = Meter::start(&daemons.iter().map(|(_, d)| d.pid).collect::<Vec<_>>());
    std::thread::sleep(window);
    let windows = meter.lap();
    let mut out = Vec::new();
    for (((dir, daemon), w), before) in daemons.into_iter().zip(windows).zip(rows_before) {
        let rows = daemon.rows() - before;
        daemon.stop();
        std::fs::remove_dir_all(&dir).unwrap();
        out.push(Run {
            cpu_ms_per_cycle: w.per_cycle(INTERVAL),
            rss_mb: w.rss_mb,
            threads: w.threads,
            rows_per_cycle: rows as f64 / (w.secs / INTERVAL),
        });
    }
    out
}

fn host_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count()
}

/// Orphaned agents started for the orphan-scan bench: killed when dropped, panics included.
#[derive(Default)]
struct Orphans(Vec<Child>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `program 600` in `cwd`, in a session of its own (no controlling terminal), killed if
/// the bench dies. A copy of `sleep` just written may be busy for a moment (ETXTBSY): retried.
fn spawn_orphan(program: &Path, cwd: &Path) -> Child {
    for _ in 0..100 {
        let mut cmd = Command::new(program);
        cmd.arg("600")
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("cannot start {}: {e}", program.display()),
        }
    }
    panic!("{} stayed busy", program.display());
}

/// CPU time of the calling thread, in ms.
fn thread_cpu_ms() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6
}

/// CPU and wall time of `f`, in ms.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, f64, T) {
    let cpu = thread_cpu_ms();
    let wall = Instant::now();
    let out = f();
    let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    (thread_cpu_ms() - cpu, wall_ms, out)
}

/// The orphan scan's cost per cycle at the default 30 s interval and at 1 s, in ms.
#[derive(Debug, Clone, Copy)]
struct OrphanCost {
    per_30s_cycle: f64,
    per_1s_cycle: f64,
}

/// Times `orphans::scan` against `process::scan_all` and a bare `/proc` listing, interleaved.
fn orphan_scan_bench() -> OrphanCost {
    const AGENTS: usize = 10;
    let rounds = env_u64("ORPHAN_ROUNDS", 15).max(1) as usize;
    let sleeps = env_u64("ORPHAN_SLEEPS", 500) as usize;
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("bin");
    let town = root.path().join("town");
    std::fs::create_dir_all(&bin).unwrap();
    let claude = bin.join("claude");
    std::fs::copy("/bin/sleep", &claude).unwrap();
    let mut agents = Orphans::default();
    for i in 0..AGENTS {
        let cwd = town.join(format!("rig/polecats/p{i}"));
        std::fs::create_dir_all(&cwd).unwrap();
        agents.0.push(spawn_orphan(&claude, &cwd));
    }
    let mut procs = Procs::default();
    for _ in 0..sleeps {
        procs.spawn("sleep", &["600"]);
    }
    // Every agent exec'd (its comm is its file's name) before the first reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agents.0.iter().any(|c| {
        std::fs::read_to_string(format!("/proc/{}/comm", c.id()))
            .ok()
            .as_deref()
            != Some("claude\n")
    }) {
        assert!(
            Instant::now() < deadline,
            "the orphaned agents never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let host = host_processes();
    let found = orphans::scan(&town, &[], &[], Duration::ZERO);
    assert_eq!(found.count, AGENTS as u64, "{found:?}");
    let owner = std::process::id();
    assert_eq!(orphans::scan(&town, &[owner], &[], Duration::ZERO).count, 0);

    let (mut scan, mut full, mut list) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (cpu, wall, s) = timed(|| orphans::scan(&town, &[], &[], Duration::ZERO));
        assert_eq!(s.count, AGENTS as u64);
        scan.push((cpu, wall));
        let (cpu, wall, t) = timed(|| process::scan_all(Duration::ZERO).len());
        assert!(t >= sleeps);
        full.push((cpu, wall));
        let (cpu, wall, n) = timed(host_processes);
        assert!(n >= sleeps);
        list.push((cpu, wall));
    }
    drop(procs);
    drop(agents);

    let cpu = |v: &[(f64, f64)]| median(v.iter().map(|x| x.0).collect());
    let wall = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
    // Ratios per round (the same round's baseline), then their median.
    let ratio = |a: &[(f64, f64)], b: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| {
        median(a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect())
    };
    let scan_cpu = cpu(&scan);
    let cost = OrphanCost {
        per_30s_cycle: scan_cpu * 30.0 / 60.0,
        per_1s_cycle: scan_cpu / 60.0,
    };
    println!(
        "orphan scan: {host} processes on the host ({sleeps} extra sleeps, {AGENTS} orphaned claudes in the town), {rounds} interleaved rounds (medians; CPU of the bench's thread, wall)"
    );
    println!(
        "  orphans::scan          {:>7.2} ms CPU {:>7.2} ms wall   ({:.1} us CPU per process)",
        scan_cpu,
        wall(&scan),
        scan_cpu * 1e3 / host as f64
    );
    println!(
        "  process::scan_all      {:>7.2} ms CPU {:>7.2} ms wall   (baseline: stat + cmdline of every process); scan / scan_all: CPU {:.2}, wall {:.2}",
        cpu(&full),
        wall(&full),
        ratio(&scan, &full, |x| x.0),
        ratio(&scan, &full, |x| x.1),
    );
    println!(
        "  readdir /proc          {:>7.2} ms CPU {:>7.2} ms wall   (floor: the listing alone); scan / readdir: CPU {:.2}, wall {:.2}",
        cpu(&list),
        wall(&list),
        ratio(&scan, &list, |x| x.0),
        ratio(&scan, &list, |x| x.1),
    );
    println!(
        "  at most once a minute: {:.3} ms CPU per 30 s cycle (the default interval), {:.4} ms per 1 s cycle",
        cost.per_30s_cycle, cost.per_1s_cycle
    );
    cost
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let orphan_cost = (only != "cycle").then(orphan_scan_bench);
    if only == "orphans" {
        return;
    }
    let rounds = env_u64("ROUNDS", 3) as usize;
    let warmup = Duration::from_secs(env_u64("WARMUP_SECS", 5));
    let window_secs = env_u64("WINDOW_SECS", 10) as f64;
    let window_for = |n: usize| {
        Duration::from_secs_f64(match n {
            0..=10 => window_secs * 1.5,
            11..=100 => window_secs,
            _ => window_secs * 0.8,
        })
    };
    let ns: Vec<usize> = std::env::var("NS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let max_n = ns.iter().copied().max().unwrap_or(0);
    let base_bin = std::env::var("HM_BASE").ok().filter(|s| !s.is_empty());

    let root = tempfile::tempdir().unwrap();
    // A second copy of the workspaces for HM_BASE's daemon.
    let copies = if base_bin.is_some() { 2 } else { 1 };
    let workspaces: Vec<std::path::PathBuf> = (0..copies)
        .map(|c| root.path().join(format!("workspaces{c}")))
        .collect();
    let mut procs = Procs::default();
    let pids: Vec<u32> = (0..max_n)
        .map(|i| {
            if i % TREE_EVERY == 0 {
                procs.spawn("sh", &["-c", "sleep 600 & sleep 600 & wait"])
            } else {
                procs.spawn("sleep", &["600"])
            }
        })
        .collect();
    for i in 0..max_n {
        for copy in &workspaces {
            make_workspace(&copy.join(format!("ws{i}")));
        }
    }
    let host = host_processes();

    // The fixed cost: a daemon watching only the system, beside the others all along.
    let fixed_daemon = Daemon::start(&daemon_dir(root.path(), "fixed"), INTERVAL, &[]);
    std::thread::sleep(warmup);
    let mut fixed_meter = Meter::start(&[fixed_daemon.pid]);
    let mut fixed: Vec<support::Window> = Vec::new();
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); ns.len()];
    let mut base_results: Vec<Vec<(Run, Run)>> = vec![Vec::new(); ns.len()];
    let mut base_alone: Vec<Vec<Run>> = vec![Vec::new(); ns.len()];
    for round in 0..rounds {
        for (k, &n) in ns.iter().enumerate() {
            let r = run(
                &[support::bin()],
                root.path(),
                &format!("r{round}-n{n}"),
                n,
                &pids,
                &workspaces,
                warmup,
                window_for(n),
            )[0];
            eprintln!(
                "  round {round} N={n}: {:.2} ms/cycle, RSS {:.1} MB, {} threads, {:.0} rows/cycle",
                r.cpu_ms_per_cycle, r.rss_mb, r.threads, r.rows_per_cycle
            );
            results[k].push(r);
            if let Some(base) = &base_bin {
                let b = run(
                    &[base],
                    root.path(),
                    &format!("r{round}-n{n}-base"),
                    n,
                    &pids,
                    &workspaces,
                    warmup,
                    window_for(n),
                )[0];
                eprintln!(
                    "  round {round} N={n} base alone: {:.2} ms/cycle, RSS {:.1} MB, {} threads, {:.0} rows/cycle",
                    b.cpu_ms_per_cycle, b.rss_mb, b.threads, b.rows_per_cycle
                );
                base_alone[k].push(b);
                // Side by side over the same window: noise from the shared machine hits both.
                let pair = run(
                    &[base, support::bin()],
                    root.path(),
                    &format!("r{round}-n{n}-ab"),
                    n,
                    &pids,
                    &workspaces,
                    warmup,
                    window_for(n),
                );
                eprintln!(
                    "  round {round} N={n} side by side: base {:.2} ms/cycle {:.1} MB, ours {:.2} ms/cycle {:.1} MB",
                    pair[0].cpu_ms_per_cycle,
                    pair[0].rss_mb,
                    pair[1].cpu_ms_per_cycle,
                    pair[1].rss_mb
                );
                base_results[k].push((pair[0], pair[1]));
            }
        }
        let f = fixed_meter.lap()[0];
        eprintln!(
            "  round {round} fixed cost: {:.2} ms/cycle over {:.0} s, RSS {:.1} MB",
            f.per_cycle(INTERVAL),
            f.secs,
            f.rss_mb
        );
        fixed.push(f);
    }
    fixed_daemon.stop();
    if let Some(cost) = orphan_cost {
        let fixed_1s = median(fixed.iter().map(|f| f.per_cycle(INTERVAL)).collect());
        println!(
            "orphan scan against the fixed cost at 1 s ({fixed_1s:.2} ms per cycle): {:.4} ms per cycle, {:.1} %",
            cost.per_1s_cycle,
            100.0 * cost.per_1s_cycle / fixed_1s
        );
    }

    let ms_per_tick = 1000.0 / support::ticks_per_second();
    println!(
        "cycle: interval {INTERVAL} s, {rounds} interleaved rounds (medians), warm-up {} s, windows {:.0}/{:.0}/{:.0} s for N <= 10/100/more; {} agents' processes and {host} processes on the host throughout; CPU resolution {ms_per_tick} ms per reading",
        warmup.as_secs(),
        window_for(10).as_secs_f64(),
        window_for(100).as_secs_f64(),
        window_for(1000).as_secs_f64(),
        procs.len(),
    );
    println!(
        "  {:>5} {:>9} {:>12} {:>14} {:>14} {:>8} {:>7} {:>10}",
        "N",
        "resources",
        "CPU ms/cycle",
        "ms/cyc/resrc",
        "marginal/resrc",
        "RSS MB",
        "threads",
        "rows/cycle"
    );
    let fixed_ms: Vec<f64> = fixed.iter().map(|f| f.per_cycle(INTERVAL)).collect();
    println!(
        "  {:>5} {:>9} {:>12.2} {:>14} {:>14} {:>8.1} {:>7.0} {:>10}   (baseline: no monitors, ~{:.0} s windows)",
        0,
        0,
        median(fixed_ms.clone()),
        "-",
        "-",
        median(fixed.iter().map(|f| f.rss_mb).collect()),
        median(fixed.iter().map(|f| f.threads as f64).collect()),
        "-",
        median(fixed.iter().map(|f| f.secs).collect()),
    );
    // Per round, so that ratios compare figures of the same round.
    let mut per_resource: Vec<Vec<f64>> = Vec::new();
    let mut marginal: Vec<Vec<f64>> = Vec::new();
    for (k, &n) in ns.iter().enumerate() {
        let rs = &results[k];
        let resources = (2 * n).max(1) as f64;
        let pr: Vec<f64> = rs.iter().map(|r| r.cpu_ms_per_cycle / resources).collect();
        let mr: Vec<f64> = rs
            .iter()
            .zip(&fixed_ms)
            .map(|(r, f)| (r.cpu_ms_per_cycle - f) / resources)
            .collect();
        println!(
            "  {:>5} {:>9} {:>12.2} {:>14.4} {:>14.4} {:>8.1} {:>7.0} {:>10.0}",
            n,
            2 * n,
            median(rs.iter().map(|r| r.cpu_ms_per_cycle).collect()),
            median(pr.clone()),
            median(mr.clone()),
            median(rs.iter().map(|r| r.rss_mb).collect()),
            median(rs.iter().map(|r| r.threads as f64).collect()),
            median(rs.iter().map(|r| r.rows_per_cycle).collect()),
        );
        per_resource.push(pr);
        marginal.push(mr);
    }
    // Flat per resource: the spread (largest over smallest) of the median per-resource cost
    // across every N, over all the CPU and above the fixed cost (medians: at N = 10 a single
    // round's reading is a few 10 ms ticks). Linear growth: the cost of each added resource
    // between one N and the next.
    let spread = |per: &[Vec<f64>]| {
        let medians: Vec<f64> = per.iter().map(|v| median(v.clone())).collect();
        let max = medians.iter().copied().fold(f64::MIN, f64::max);
        let min = medians.iter().copied().fold(f64::MAX, f64::min);
        max / min
    };
    if ns.len() > 1 {
        let raw = spread(&per_resource);
        let above = spread(&marginal);
        println!(
            "  per-resource cost, largest / smallest over N = {ns:?}: {raw:.2} (all CPU), {above:.2} (above the fixed cost); target <= 2: {}",
            verdict(above <= 2.0)
        );
        let mut increments: Vec<f64> = Vec::new();
        for k in 1..ns.len() {
            let added = (2 * (ns[k] - ns[k - 1])) as f64;
            let inc = median(
                (0..rounds)
                    .map(|r| {
                        (results[k][r].cpu_ms_per_cycle - results[k - 1][r].cpu_ms_per_cycle)
                            / added
                    })
                    .collect(),
            );
            println!(
                "  each resource added from N={} to N={}: {inc:.4} ms per cycle",
                ns[k - 1],
                ns[k]
            );
            increments.push(inc);
        }
        if increments.len() > 1 {
            let max = increments.iter().copied().fold(f64::MIN, f64::max);
            let min = increments.iter().copied().fold(f64::MAX, f64::min);
            println!(
                "  linear growth: largest / smallest cost per added resource {:.2}; target <= 2: {}",
                max / min,
                verdict(min > 0.0 && max / min <= 2.0)
            );
        }
    }
    if let Some(base) = &base_bin {
        println!(
            "  against HM_BASE={base}: alone, each right after ours; side by side, over the same windows:"
        );
        for (k, &n) in ns.iter().enumerate() {
            let alone = &base_alone[k];
            let ours = &results[k];
            let pairs = &base_results[k];
            let ratio =
                |f: fn(&Run) -> f64| median(pairs.iter().map(|(b, o)| f(o) / f(b)).collect());
            println!(
                "    N={n} alone: base {:.2} ms/cycle, RSS {:.1} MB, {:.0} threads; ours/base CPU {:.2}, RSS {:.2}",
                median(alone.iter().map(|r| r.cpu_ms_per_cycle).collect()),
                median(alone.iter().map(|r| r.rss_mb).collect()),
                median(alone.iter().map(|r| r.threads as f64).collect()),
                median(
                    ours.iter()
                        .zip(alone)
                        .map(|(o, b)| o.cpu_ms_per_cycle / b.cpu_ms_per_cycle)
                        .collect()
                ),
                median(
                    ours.iter()
                        .zip(alone)
                        .map(|(o, b)| o.rss_mb / b.rss_mb)
                        .collect()
                ),
            );
            println!(
                "    N={n} side by side: base {:.2} ms/cycle, RSS {:.1} MB; ours {:.2} ms/cycle, RSS {:.1} MB; ours/base CPU {:.2}, RSS {:.2}",
                median(pairs.iter().map(|(b, _)| b.cpu_ms_per_cycle).collect()),
                median(pairs.iter().map(|(b, _)| b.rss_mb).collect()),
                median(pairs.iter().map(|(_, o)| o.cpu_ms_per_cycle).collect()),
                median(pairs.iter().map(|(_, o)| o.rss_mb).collect()),
                ratio(|r| r.cpu_ms_per_cycle),
                ratio(|r| r.rss_mb),
            );
        }
    }
    if let Some(k) = ns.iter().position(|&n| n == 100) {
        let cpu = median(results[k].iter().map(|r| r.cpu_ms_per_cycle).collect());
        let rss = median(results[k].iter().map(|r| r.rss_mb).collect());
        println!(
            "  N=100 at 1 s: {cpu:.1} ms CPU per second (target <= 20: {}), RSS {rss:.1} MB (target <= 20: {})",
            verdict(cpu <= 20.0),
            verdict(rss <= 20.0)
        );
    }
    drop(procs);
}
