//! Pushed metrics: a `report --stdin` of 1000 metrics against the real daemon (release), and
//! what such reports do to the collectors' cycle.
//!
//! Two daemons, x and y, run side by side at a 1 s interval, each watching the same `N` agents
//! (real `sleep`s, default 50) and its own copy of `N` workspaces (each agent's workspace one
//! of them), besides the system. Every report is the release binary's own
//! `health-monitor report --stdin`, fed 1000 lines: 100 agents (`a0`..`a99`, the first `N` of
//! them monitored) × 10 metrics (`bench_m0`..`bench_m9`), 300 of them with thresholds and a
//! unit (`warning=50 critical=90 unit=ms`), 10 of those crossing the critical threshold one
//! report and back the next (10 alerts open, then resolve), the others healthy. The config
//! sets `[pushed] ttl = 600`: no series goes stale between reports, whatever the pauses.
//!
//! 1. Land time. A first report to each daemon creates the 1000 series (timed, shown apart);
//!    then `LAND_ROUNDS` reports, one a second, to x and y in turn: from spawning the CLI
//!    until all 1000 rows of that report are committed (a read-only connection polls every
//!    2 ms for the `bench_*` rows above the highest id before the spawn), and the CLI's own
//!    wall time (spawn to exit; it returns once the daemon has validated and queued the
//!    report, before the rows are written). Median and worst. Target: under a second.
//! 2. Cycle slowdown. `WINDOWS` windows of `WINDOW_SECS` (after a settling second each): in
//!    each, one daemon gets (b) a report of 1000 metrics every second (its phase against the
//!    daemon's beat moves from one window to the next) while the other gets (a) none, and the
//!    roles swap from one window to the next. Both are measured over the same window, so the
//!    shared machine's noise hits both alike; the baseline is (a) in the same window. For each:
//!    the collectors' cycle time (every collector's `last_seconds` in the status document's
//!    `collector_cycles`, read over the control socket once a second: from a collector's tick
//!    to its readings back on its event loop, queueing included), the rows the collectors wrote
//!    per second (a skipped tick is missing rows) and the daemon's CPU per second (utime +
//!    stime from `/proc/<pid>/stat`; for (b) that includes analyzing and writing the reports).
//!    Ratios b/a are taken within each window, then their median. Every report of (b) is
//!    checked to have landed before the next one was sent (the last, within a second). Side
//!    by side, the CLI's and the reporting daemon's extra CPU also load the cores the quiet
//!    one runs on: this measures what a report does to its own daemon's collectors, not what
//!    a busier host does. Both daemons' status is read alike, once a second each; its cost
//!    grows through the run (it counts every metric row of the last hour), and is printed.
//!
//! Run: `cargo bench --bench report`. Environment: `N` (50), `WARMUP_SECS` (5), `LAND_ROUNDS`
//! (10), `WINDOW_SECS` (5), `WINDOWS` (10). About 80 s in all with the defaults.

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Daemon, Meter, Procs, control_request, env_u64, make_workspace, median};

const INTERVAL: f64 = 1.0;
/// Metrics per report: `REPORT_AGENTS` × `REPORT_METRICS`.
const REPORT_AGENTS: usize = 100;
const REPORT_METRICS: usize = 10;
const PER_REPORT: i64 = (REPORT_AGENTS * REPORT_METRICS) as i64;
/// How often the land poll looks at the database.
const POLL: Duration = Duration::from_millis(2);
/// A report's rows must land within this.
const LAND_TARGET_MS: f64 = 1000.0;
/// "Does not slow the collectors' cycle": the median cycle with reports over the one without,
/// in the same windows, within what this noisy machine can tell apart.
const SLOWDOWN_TARGET: f64 = 1.25;

/// The 1000 lines of report number `round` (see the top of the file).
fn report_lines(round: u64) -> String {
    let mut out = String::with_capacity(PER_REPORT as usize * 48);
    for i in 0..REPORT_AGENTS {
        for j in 0..REPORT_METRICS {
            let line = if j < 3 {
                let flips = i < 10 && j == 0 && round % 2 == 1;
                let v = if flips {
                    95
                } else {
                    20 + (i as u64 + j as u64 + round) % 25
                };
                format!("agent a{i} bench_m{j} {v} warning=50 critical=90 unit=ms\n")
            } else {
                format!(
                    "agent a{i} bench_m{j} {}.{}\n",
                    i * 10 + j,
                    (round * 7 + j as u64) % 10
                )
            };
            out.push_str(&line);
        }
    }
    out
}

/// Paths of the daemon under test.
struct Target {
    db: PathBuf,
    socket: PathBuf,
}

/// Starts `health-monitor report --stdin` fed `lines` (written from a thread: the CLI reads
/// while we write).
fn spawn_report(t: &Target, lines: String) -> Child {
    let mut child = Command::new(support::bin())
        .arg("report")
        .arg("--stdin")
        .args(["--db-path".as_ref(), t.db.as_os_str()])
        .args(["--socket".as_ref(), t.socket.as_os_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        stdin.write_all(lines.as_bytes()).unwrap();
    });
    child
}

/// Checks that a finished report said it took all 1000.
fn check_report_output(child: Child) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == format!("reported {PER_REPORT} metrics"),
        "report failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn open_ro(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn max_id(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT coalesce(max(id), 0) FROM health_metrics", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Pushed rows (`bench_*`) above `after`, up to `upto` (inclusive).
fn pushed_rows(conn: &rusqlite::Connection, after: i64, upto: i64) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM health_metrics WHERE id > ?1 AND id <= ?2 AND metric_name LIKE 'bench_%'",
        [after, upto],
        |r| r.get(0),
    )
    .unwrap()
}

/// Rows above `after`, up to `upto`, that are not pushed: the collectors'.
fn collector_rows(conn: &rusqlite::Connection, after: i64, upto: i64) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM health_metrics WHERE id > ?1 AND id <= ?2 AND metric_name NOT LIKE 'bench_%'",
        [after, upto],
        |r| r.get(0),
    )
    .unwrap()
}

/// One timed report: spawn to its 1000 rows committed, and spawn to the CLI's exit, in ms.
#[derive(Debug, Clone, Copy)]
struct Landed {
    land_ms: f64,
    cli_ms: f64,
}

fn land(t: &Target, conn: &rusqlite::Connection, round: u64) -> Landed {
    let lines = report_lines(round);
    let before = max_id(conn);
    let start = Instant::now();
    let mut child = Some(spawn_report(t, lines));
    let mut cli_ms = None;
    let deadline = start + Duration::from_secs(30);
    loop {
        if let Some(c) = child.as_mut()
            && c.try_wait().unwrap().is_some()
        {
            cli_ms = Some(start.elapsed().as_secs_f64() * 1e3);
            check_report_output(child.take().unwrap());
        }
        let n = pushed_rows(conn, before, i64::MAX);
        if n >= PER_REPORT {
            assert_eq!(n, PER_REPORT, "more rows than the report carried");
            let land_ms = start.elapsed().as_secs_f64() * 1e3;
            if let Some(c) = child.take() {
                check_report_output(c);
                cli_ms = Some(cli_ms.unwrap_or(start.elapsed().as_secs_f64() * 1e3));
            }
            return Landed {
                land_ms,
                cli_ms: cli_ms.unwrap(),
            };
        }
        assert!(
            Instant::now() < deadline,
            "report {round}: {n} of {PER_REPORT} rows after 30 s"
        );
        std::thread::sleep(POLL);
    }
}

/// What the reports sent during a (b) window came to.
#[derive(Debug, Default)]
struct Sent {
    reports: usize,
    /// Reports whose 1000 rows were all there when the next was sent (or a second after the
    /// last one).
    landed_in_time: usize,
    cli_ms: Vec<f64>,
}

/// Sends a report every second from `start + phase` until `stop`, numbering them from `round`.
fn send_every_second(
    t: &Target,
    start: Instant,
    phase: Duration,
    mut round: u64,
    stop: &AtomicBool,
) -> Sent {
    let conn = open_ro(&t.db);
    let mut sent = Sent::default();
    let mut previous: Option<i64> = None;
    let mut k = 0u32;
    let mut last_sent = Instant::now();
    loop {
        let at = start + phase + Duration::from_secs(k.into());
        while Instant::now() < at {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5)),
            );
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let before = max_id(&conn);
        if let Some(p) = previous
            && pushed_rows(&conn, p, before) >= PER_REPORT
        {
            sent.landed_in_time += 1;
        }
        let began = Instant::now();
        last_sent = began;
        let child = spawn_report(t, report_lines(round));
        check_report_output(child);
        sent.cli_ms.push(began.elapsed().as_secs_f64() * 1e3);
        sent.reports += 1;
        previous = Some(before);
        round += 1;
        k += 1;
    }
    if let Some(p) = previous {
        let deadline = last_sent + Duration::from_secs(1);
        loop {
            if pushed_rows(&conn, p, i64::MAX) >= PER_REPORT {
                sent.landed_in_time += 1;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    sent
}

/// One daemon's figures over one window.
#[derive(Debug, Clone)]
struct WindowRun {
    /// Every collector's `last_seconds` at every reading, in ms.
    cycles_ms: Vec<f64>,
    /// The median over collectors at each reading, in ms.
    reading_median_ms: Vec<f64>,
    /// The slowest collector's at each reading, in ms.
    slowest_ms: Vec<f64>,
    /// Wall time of each status request that read them, in ms.
    status_ms: Vec<f64>,
    cpu_ms_per_s: f64,
    collector_rows_per_s: f64,
    rss_mb: f64,
    reports: usize,
    landed_in_time: usize,
    cli_ms: Vec<f64>,
}

fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// The collectors' latest cycle times, in ms.
fn collector_cycles(socket: &Path) -> Vec<f64> {
    let status = control_request(socket, &serde_json::json!({"op": "status"}));
    status["collector_cycles"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["last_seconds"].as_f64().unwrap() * 1e3)
        .collect()
}

/// One window over both daemons: settles a second, then measures both for `secs` seconds,
/// while daemon `reporting` gets a report every second from the start of the settling second
/// (at `phase` into each second), numbered from `round`.
fn window(
    targets: &[Target; 2],
    daemons: &[Daemon; 2],
    secs: u64,
    reporting: usize,
    phase: Duration,
    round: u64,
    expected_collectors: usize,
) -> [WindowRun; 2] {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let t = &targets[reporting];
        let (t, stop) = (
            Target {
                db: t.db.clone(),
                socket: t.socket.clone(),
            },
            stop.clone(),
        );
        std::thread::spawn(move || send_every_second(&t, start, phase, round, &stop))
    };
    let conns = [open_ro(&targets[0].db), open_ro(&targets[1].db)];
    std::thread::sleep(Duration::from_secs(1));
    let first = [max_id(&conns[0]), max_id(&conns[1])];
    let mut meter = Meter::start(&[daemons[0].pid, daemons[1].pid]);
    let measured = Instant::now();
    let mut cycles: [Vec<Vec<f64>>; 2] = [Vec::new(), Vec::new()];
    let mut status_ms: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for s in 0..secs {
        let at = measured + Duration::from_secs_f64(s as f64 + 0.5);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        for (d, t) in targets.iter().enumerate() {
            let asked = Instant::now();
            let c = collector_cycles(&t.socket);
            status_ms[d].push(asked.elapsed().as_secs_f64() * 1e3);
            assert_eq!(c.len(), expected_collectors, "collectors in the status");
            cycles[d].push(c);
        }
    }
    std::thread::sleep(
        (measured + Duration::from_secs(secs)).saturating_duration_since(Instant::now()),
    );
    let ws = meter.lap();
    let last = [max_id(&conns[0]), max_id(&conns[1])];
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let run = |d: usize, sent: &Sent| WindowRun {
        cycles_ms: cycles[d].concat(),
        reading_median_ms: cycles[d].iter().map(|c| median(c.clone())).collect(),
        slowest_ms: cycles[d]
            .iter()
            .map(|c| c.iter().copied().fold(0.0, f64::max))
            .collect(),
        status_ms: status_ms[d].clone(),
        cpu_ms_per_s: ws[d].cpu_ms / ws[d].secs,
        collector_rows_per_s: collector_rows(&conns[d], first[d], last[d]) as f64 / ws[d].secs,
        rss_mb: ws[d].rss_mb,
        reports: sent.reports,
        landed_in_time: sent.landed_in_time,
        cli_ms: sent.cli_ms.clone(),
    };
    let none = Sent::default();
    if reporting == 0 {
        [run(0, &sent), run(1, &none)]
    } else {
        [run(0, &none), run(1, &sent)]
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn main() {
    let n = env_u64("N", 50) as usize;
    let warmup = Duration::from_secs(env_u64("WARMUP_SECS", 5));
    let land_rounds = env_u64("LAND_ROUNDS", 10).max(1);
    let window_secs = env_u64("WINDOW_SECS", 5).max(1);
    let windows = env_u64("WINDOWS", 10).max(2) as usize;

    let root = tempfile::tempdir().unwrap();
    let mut procs = Procs::default();
    let pids: Vec<u32> = (0..n).map(|_| procs.spawn("sleep", &["600"])).collect();
    let mut started = Vec::new();
    for name in ["x", "y"] {
        // Each daemon its own copy of the workspaces: one's walks and probes stay out of the
        // other's directories.
        let workspaces = root.path().join(format!("workspaces-{name}"));
        for i in 0..n {
            make_workspace(&workspaces.join(format!("ws{i}")));
        }
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            "# report bench: no pushed series goes stale between reports\n[pushed]\nttl = 600\n",
        )
        .unwrap();
        support::save_monitors(&dir.join("hm.db"), &pids, &workspaces, pids.len());
        let daemon = Daemon::start(&dir, INTERVAL, &[]);
        let target = Target {
            db: daemon.db.clone(),
            socket: dir.join("hm.sock"),
        };
        started.push((daemon, target));
    }
    let (y, x) = (started.pop().unwrap(), started.pop().unwrap());
    let daemons = [x.0, y.0];
    let targets = [x.1, y.1];
    std::thread::sleep(warmup);
    let collectors = 1 + 2 * n;

    // 1. Land time, one report a second, to each daemon in turn.
    let conns = [open_ro(&targets[0].db), open_ro(&targets[1].db)];
    let firsts: Vec<Landed> = (0..2).map(|d| land(&targets[d], &conns[d], 0)).collect();
    eprintln!(
        "  first reports (each creates the 1000 series): landed in {:.1} and {:.1} ms, CLI {:.1} and {:.1} ms",
        firsts[0].land_ms, firsts[1].land_ms, firsts[0].cli_ms, firsts[1].cli_ms
    );
    let mut round = 1u64;
    let mut landed = Vec::new();
    for r in 0..land_rounds {
        let began = Instant::now();
        let d = r as usize % 2;
        let l = land(&targets[d], &conns[d], round);
        eprintln!(
            "  report {round} (daemon {}): landed in {:.1} ms, CLI {:.1} ms",
            ["x", "y"][d],
            l.land_ms,
            l.cli_ms
        );
        landed.push(l);
        round += 1;
        std::thread::sleep(
            (began + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
        );
    }

    // 2. Both daemons over the same windows, the reports going to each in turn.
    let mut quiet: Vec<WindowRun> = Vec::new();
    let mut busy: Vec<WindowRun> = Vec::new();
    for w in 0..windows {
        let phase = Duration::from_secs_f64((w as f64 * 0.382).fract());
        let reporting = w % 2;
        let mut runs = window(
            &targets,
            &daemons,
            window_secs,
            reporting,
            phase,
            round,
            collectors,
        );
        round += runs[reporting].reports as u64;
        for (d, r) in runs.iter().enumerate() {
            eprintln!(
                "  window {w} daemon {} {}: cycle median {:.2} ms, p90 {:.2} ms, slowest median {:.2} ms; {:.1} ms CPU/s; collector rows {:.0}/s; RSS {:.1} MB; status read {:.1} ms{}",
                ["x", "y"][d],
                if d == reporting {
                    "(b) reports"
                } else {
                    "(a) quiet  "
                },
                median(r.reading_median_ms.clone()),
                percentile(r.cycles_ms.clone(), 0.9),
                median(r.slowest_ms.clone()),
                r.cpu_ms_per_s,
                r.collector_rows_per_s,
                r.rss_mb,
                median(r.status_ms.clone()),
                if d == reporting {
                    format!(
                        "; {} reports, {} landed before the next",
                        r.reports, r.landed_in_time
                    )
                } else {
                    String::new()
                }
            );
        }
        let [r0, r1] = &mut runs;
        let (b, a) = if reporting == 0 { (r0, r1) } else { (r1, r0) };
        busy.push(b.clone());
        quiet.push(a.clone());
    }
    let rss = median(busy.iter().chain(&quiet).map(|w| w.rss_mb).collect());
    let status_read = |w: &WindowRun| median(w.status_ms.clone());
    let status_first = (status_read(&quiet[0]) + status_read(&busy[0])) / 2.0;
    let status_last = (status_read(&quiet[windows - 1]) + status_read(&busy[windows - 1])) / 2.0;
    for d in daemons {
        d.stop();
    }
    drop(procs);

    // Summary.
    let land_ms: Vec<f64> = landed.iter().map(|l| l.land_ms).collect();
    let cli_ms: Vec<f64> = landed.iter().map(|l| l.cli_ms).collect();
    let worst = land_ms.iter().copied().fold(0.0, f64::max);
    let land_median = median(land_ms.clone());
    println!(
        "report: two daemons at {INTERVAL} s, each watching {n} agents (real processes) + {n} workspaces + the system ({collectors} collectors); reports of {PER_REPORT} metrics ({REPORT_AGENTS} agents x {REPORT_METRICS}, 300 with thresholds, 10 flipping critical) through `health-monitor report --stdin`"
    );
    println!(
        "  1. land time over {land_rounds} reports, one a second, to each daemon in turn (spawn of the CLI to all {PER_REPORT} rows committed; poll every {} ms):",
        POLL.as_millis()
    );
    println!(
        "     median {land_median:.1} ms, worst {worst:.1} ms; CLI wall median {:.1} ms, worst {:.1} ms; first reports (new series) {:.1} / {:.1} ms, CLI {:.1} / {:.1} ms",
        median(cli_ms.clone()),
        cli_ms.iter().copied().fold(0.0, f64::max),
        firsts[0].land_ms,
        firsts[1].land_ms,
        firsts[0].cli_ms,
        firsts[1].cli_ms
    );
    // Ratios b/a within each window (the same host state), then their median.
    let ratio = |f: &dyn Fn(&WindowRun) -> f64| {
        median(quiet.iter().zip(&busy).map(|(a, b)| f(b) / f(a)).collect())
    };
    let med = |ws: &[WindowRun], f: &dyn Fn(&WindowRun) -> f64| median(ws.iter().map(f).collect());
    let cyc_med = |w: &WindowRun| median(w.reading_median_ms.clone());
    let cyc_p90 = |w: &WindowRun| percentile(w.cycles_ms.clone(), 0.9);
    let slowest = |w: &WindowRun| median(w.slowest_ms.clone());
    let cpu = |w: &WindowRun| w.cpu_ms_per_s;
    let rows = |w: &WindowRun| w.collector_rows_per_s;
    let reports: usize = busy.iter().map(|w| w.reports).sum();
    let in_time: usize = busy.iter().map(|w| w.landed_in_time).sum();
    let busy_cli: Vec<f64> = busy.iter().flat_map(|w| w.cli_ms.clone()).collect();
    println!(
        "  2. {windows} windows of {window_secs} s, both daemons measured over each, the reports going to x and y in turn (medians over windows; ratio b/a within each window, then the median):"
    );
    println!(
        "     {:<46} {:>10} {:>12} {:>8}",
        "", "(a) quiet", "(b) reports", "b/a"
    );
    let row = |name: &str, f: &dyn Fn(&WindowRun) -> f64, digits: usize| {
        println!(
            "     {:<46} {:>10.digits$} {:>12.digits$} {:>8.2}",
            name,
            med(&quiet, f),
            med(&busy, f),
            ratio(f)
        );
    };
    row("collector cycle, median over collectors, ms", &cyc_med, 2);
    row("collector cycle, 90th percentile, ms", &cyc_p90, 2);
    row("slowest collector per reading, median, ms", &slowest, 2);
    row("collector rows written per second", &rows, 0);
    row("daemon CPU, ms per second", &cpu, 1);
    let extra = median(
        quiet
            .iter()
            .zip(&busy)
            .map(|(a, b)| b.cpu_ms_per_s - a.cpu_ms_per_s)
            .collect(),
    );
    println!(
        "     (b): {reports} reports, {in_time} landed before the next was sent; CLI wall median {:.1} ms; the reports cost the daemon ~{extra:.1} ms CPU per report of {PER_REPORT} ({:.1} us per metric); RSS {rss:.1} MB",
        median(busy_cli),
        extra * 1e3 / PER_REPORT as f64,
    );
    println!(
        "     the once-a-second status read (both sides alike) took {status_first:.1} ms in the first window, {status_last:.1} ms in the last: it counts every row of the last hour, and each daemon gains ~{:.0} rows a second",
        med(&quiet, &rows) + PER_REPORT as f64 / 2.0
    );
    let slowdown = ratio(&cyc_med);
    println!("  summary:");
    let line = |what: &str, measured: String, target: &str, met: &str| {
        println!("     {what:<58} {measured:>22} {target:>12} {met:>7}");
    };
    line("what", "measured".into(), "target", "met");
    line(
        "1000-metric report lands (median / worst)",
        format!("{land_median:.0} / {worst:.0} ms"),
        "< 1000 ms",
        verdict(worst < LAND_TARGET_MS),
    );
    line(
        "collector cycle with reports / without (median)",
        format!("{slowdown:.2}"),
        "<= 1.25",
        verdict(slowdown <= SLOWDOWN_TARGET),
    );
    line(
        "collector cycle p90 with / without",
        format!("{:.2}", ratio(&cyc_p90)),
        "",
        "",
    );
    line(
        "collector rows/s with / without",
        format!("{:.2}", ratio(&rows)),
        "1.00",
        verdict((ratio(&rows) - 1.0).abs() < 0.02),
    );
    line(
        "daemon CPU/s with / without (reports' work included)",
        format!(
            "{:.2} ({:.1} / {:.1} ms)",
            ratio(&cpu),
            med(&busy, &cpu),
            med(&quiet, &cpu)
        ),
        "reported",
        "",
    );
}
