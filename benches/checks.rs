//! Checks: 100 `[[check]]`s at a 1 s interval in the real daemon (release), against running
//! the same plugins from a shell loop.
//!
//! The plugins are Debian's `monitoring-plugins` (`/usr/lib/nagios/plugins`; installed with
//! `apt-get install -y monitoring-plugins` when missing and this runs as root with apt-get at
//! hand). The `CHECKS` (default 100) command lines: one in ten `check_procs -w 100000 -c
//! 200000` (it reads every process in `/proc`, and runs `ps`), half `check_tcp -H 127.0.0.1 -p
//! PORT` against a listener the bench keeps accepting on, the rest `check_dummy 0 ok`. Every
//! run must come back OK.
//!
//! Ours: a daemon whose config holds the `CHECKS` checks, `interval = 1`, `timeout = 10`, at
//! `--interval 1` (so its system collector runs too: about 1 ms of CPU a second, see the cycle
//! bench's fixed cost). Baseline, in the same run: `bash -c 'while :; do PLUGIN ARGS
//! >/dev/null; echo; ... (each command line once); sleep 1; done'`, with the same environment
//! as the daemon gives its plugins (`PATH` and `LC_ALL=C` only). The `echo`s go to a pipe the
//! bench counts: the shell's completed runs. Ours are the `check_status` rows written.
//!
//! CPU: `/proc/<pid>/stat` utime + stime (the process itself, every thread) + cutime + cstime
//! (the children it has reaped, with theirs: the plugins, `check_procs`'s `ps`, the shell's
//! `sleep`), read over a window after a warm-up, for the daemon and for the shell. Figures: CPU
//! per second, runs per second, CPU per completed run, and the split between the process
//! itself and its children; the daemon's resident memory and threads at the window's end.
//! Rounds are interleaved (ours, shell; then shell, ours...), each side started afresh in each,
//! and the ratios ours/shell are taken per round, then their median.
//!
//! Run: `cargo bench --bench checks`. Environment: `ROUNDS` (3), `WARMUP_SECS` (4, the shell
//! gets half), `WINDOW_SECS` (10), `CHECKS` (100). About 85 s in all with the defaults.

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/mod.rs"]
mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{
    Daemon, Procs, cpu_ticks_own_and_children, env_u64, median, status_field, ticks_per_second,
};

const INTERVAL: f64 = 1.0;
const PLUGINS: &str = "/usr/lib/nagios/plugins";
/// The only environment the daemon gives a plugin (`src/checks/plugin.rs`); the shell gets it
/// too.
const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes sure the plugins are there, installing them if that is possible.
fn ensure_plugins() {
    let there = || Path::new(&format!("{PLUGINS}/check_tcp")).exists();
    if there() {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{PLUGINS} is missing: install monitoring-plugins (apt-get install -y monitoring-plugins)"
    );
    println!("note: installing monitoring-plugins (apt-get install -y monitoring-plugins)");
    let status = Command::new("apt-get")
        .args(["install", "-y", "monitoring-plugins"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()) && there(),
        "apt-get install -y monitoring-plugins failed ({status:?})"
    );
}

/// The `n` command lines (see the top of the file).
fn commands(n: usize, port: u16) -> Vec<Vec<String>> {
    (0..n)
        .map(|i| {
            let (plugin, args): (&str, Vec<String>) = if i % 10 == 0 {
                (
                    "check_procs",
                    vec!["-w".into(), "100000".into(), "-c".into(), "200000".into()],
                )
            } else if i % 2 == 1 {
                (
                    "check_tcp",
                    vec![
                        "-H".into(),
                        "127.0.0.1".into(),
                        "-p".into(),
                        port.to_string(),
                    ],
                )
            } else {
                ("check_dummy", vec!["0".into(), "ok".into()])
            };
            std::iter::once(format!("{PLUGINS}/{plugin}"))
                .chain(args)
                .collect()
        })
        .collect()
}

/// The daemon's config: one `[[check]]` per command line.
fn config(commands: &[Vec<String>]) -> String {
    let mut out = String::from("# checks bench\n");
    for (i, c) in commands.iter().enumerate() {
        // Debug quoting of these plain ASCII words is a valid TOML basic string.
        let words: Vec<String> = c.iter().map(|w| format!("{w:?}")).collect();
        out.push_str(&format!(
            "\n[[check]]\nname = \"c{i}\"\ncommand = [{}]\ninterval = 1\ntimeout = 10\n",
            words.join(", ")
        ));
    }
    out
}

/// The shell loop: every command line once, an `echo` after each, then `sleep 1`.
fn shell_script(commands: &[Vec<String>]) -> String {
    let mut out = String::from("while :; do\n");
    for c in commands {
        out.push_str(&format!("  {} >/dev/null 2>&1; echo\n", c.join(" ")));
    }
    out.push_str("  sleep 1\ndone\n");
    out
}

/// One side's figures over one window.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// CPU of the process itself, ms per second.
    own_ms_per_s: f64,
    /// CPU of its reaped children, ms per second.
    children_ms_per_s: f64,
    runs_per_s: f64,
    /// Runs that did not come back OK (ours: `check_status` rows not 0).
    not_ok: i64,
    rss_mb: f64,
    threads: u64,
    /// Ours: the median `check_duration_ms` in the window.
    duration_ms: f64,
}

impl Run {
    fn cpu_ms_per_s(&self) -> f64 {
        self.own_ms_per_s + self.children_ms_per_s
    }

    fn cpu_ms_per_run(&self) -> f64 {
        self.cpu_ms_per_s() / self.runs_per_s
    }
}

/// CPU (own, children) in ms per second over the window from `before` (`at`) to now.
fn cpu_since(pid: u32, before: (u64, u64), at: Instant) -> (f64, f64, f64) {
    let after = cpu_ticks_own_and_children(pid).unwrap();
    let secs = at.elapsed().as_secs_f64();
    let ms_per_tick = 1000.0 / ticks_per_second();
    (
        (after.0 - before.0) as f64 * ms_per_tick / secs,
        (after.1 - before.1) as f64 * ms_per_tick / secs,
        secs,
    )
}

fn max_id(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT coalesce(max(id), 0) FROM health_metrics", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// The daemon with the checks, started afresh, measured over `window` after `warmup`.
fn ours(
    root: &Path,
    tag: &str,
    commands: &[Vec<String>],
    warmup: Duration,
    window: Duration,
) -> Run {
    let dir = root.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config(commands)).unwrap();
    let daemon = Daemon::start(&dir, INTERVAL, &[]);
    std::thread::sleep(warmup);
    let conn = rusqlite::Connection::open_with_flags(
        &daemon.db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let first = max_id(&conn);
    let before = cpu_ticks_own_and_children(daemon.pid).unwrap();
    let at = Instant::now();
    std::thread::sleep(window);
    let (own, children, secs) = cpu_since(daemon.pid, before, at);
    let last = max_id(&conn);
    let rss_mb = status_field(daemon.pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
    let threads = status_field(daemon.pid, "Threads").unwrap_or(0);
    let (runs, not_ok): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(value != 0), 0) FROM health_metrics
             WHERE id > ?1 AND id <= ?2 AND metric_name = 'check_status'",
            [first, last],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let durations: Vec<f64> = conn
        .prepare(
            "SELECT value FROM health_metrics
             WHERE id > ?1 AND id <= ?2 AND metric_name = 'check_duration_ms'",
        )
        .unwrap()
        .query_map([first, last], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    if not_ok > 0 {
        let notes: Vec<String> = conn
            .prepare(
                "SELECT resource_id || ': ' || value FROM health_metrics
                 WHERE id > ?1 AND id <= ?2 AND metric_name = 'check_status' AND value != 0
                 LIMIT 5",
            )
            .unwrap()
            .query_map([first, last], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        eprintln!("  ours: {not_ok} runs not OK, e.g. {notes:?}");
    }
    daemon.stop();
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        own_ms_per_s: own,
        children_ms_per_s: children,
        runs_per_s: runs as f64 / secs,
        not_ok,
        rss_mb,
        threads,
        duration_ms: median(durations),
    }
}

/// The shell loop, started afresh, measured over `window` after `warmup`.
fn shell(commands: &[Vec<String>], warmup: Duration, window: Duration) -> Run {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &shell_script(commands)])
        .env_clear()
        .env("PATH", PLUGIN_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null());
    let mut procs = Procs::default();
    let pid = procs.spawn_command(cmd);
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            counter.fetch_add(lines, Ordering::Relaxed);
        }
    });
    std::thread::sleep(warmup);
    let first = done.load(Ordering::Relaxed);
    let before = cpu_ticks_own_and_children(pid).unwrap();
    let at = Instant::now();
    std::thread::sleep(window);
    let (own, children, secs) = cpu_since(pid, before, at);
    let runs = done.load(Ordering::Relaxed) - first;
    drop(procs);
    Run {
        own_ms_per_s: own,
        children_ms_per_s: children,
        runs_per_s: runs as f64 / secs,
        not_ok: 0,
        rss_mb: 0.0,
        threads: 1,
        duration_ms: f64::NAN,
    }
}

fn show(side: &str, r: &Run) -> String {
    format!(
        "{side}: {:.1} ms CPU/s ({:.1} itself + {:.1} children), {:.1} runs/s, {:.3} ms CPU per run",
        r.cpu_ms_per_s(),
        r.own_ms_per_s,
        r.children_ms_per_s,
        r.runs_per_s,
        r.cpu_ms_per_run()
    )
}

fn main() {
    ensure_plugins();
    let rounds = env_u64("ROUNDS", 3).max(1) as usize;
    let warmup = Duration::from_secs(env_u64("WARMUP_SECS", 4));
    let window = Duration::from_secs(env_u64("WINDOW_SECS", 10).max(1));
    let n = env_u64("CHECKS", 100).max(1) as usize;

    // The listener check_tcp connects to: every connection accepted and closed.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let commands = commands(n, port);
    let root = tempfile::tempdir().unwrap();

    let mut our_runs: Vec<Run> = Vec::new();
    let mut shell_runs: Vec<Run> = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            if is_ours {
                let r = ours(root.path(), &format!("r{round}"), &commands, warmup, window);
                eprintln!(
                    "  round {round} {}; RSS {:.1} MB, {} threads; median check_duration_ms {:.1}",
                    show("ours ", &r),
                    r.rss_mb,
                    r.threads,
                    r.duration_ms
                );
                our_runs.push(r);
            } else {
                let r = shell(&commands, warmup / 2, window);
                eprintln!("  round {round} {}", show("shell", &r));
                shell_runs.push(r);
            }
        }
    }

    let med = |rs: &[Run], f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
    let ratio = |f: fn(&Run) -> f64| {
        median(
            our_runs
                .iter()
                .zip(&shell_runs)
                .map(|(o, s)| f(o) / f(s))
                .collect(),
        )
    };
    let kinds = |name: &str| commands.iter().filter(|c| c[0].ends_with(name)).count();
    println!(
        "checks: {n} command lines ({} check_procs, {} check_tcp against a local listener, {} check_dummy), interval 1 s; {rounds} interleaved rounds (medians), warm-up {} s (shell {} s), {} s windows; CPU resolution {} ms per reading",
        kinds("check_procs"),
        kinds("check_tcp"),
        kinds("check_dummy"),
        warmup.as_secs(),
        warmup.as_secs() / 2,
        window.as_secs(),
        1000.0 / ticks_per_second(),
    );
    println!(
        "  {:<34} {:>9} {:>12} {:>9} {:>8} {:>15} {:>16}",
        "", "CPU ms/s", "itself ms/s", "children", "runs/s", "CPU ms per run", "itself ms / run"
    );
    for (name, rs) in [
        ("ours (daemon + its plugins)", &our_runs),
        ("baseline: bash loop + its children", &shell_runs),
    ] {
        println!(
            "  {:<34} {:>9.1} {:>12.1} {:>9.1} {:>8.1} {:>15.3} {:>16.3}",
            name,
            med(rs, Run::cpu_ms_per_s),
            med(rs, |r| r.own_ms_per_s),
            med(rs, |r| r.children_ms_per_s),
            med(rs, |r| r.runs_per_s),
            med(rs, Run::cpu_ms_per_run),
            med(rs, |r| r.own_ms_per_s / r.runs_per_s),
        );
    }
    let not_ok: i64 = our_runs.iter().map(|r| r.not_ok).sum();
    println!(
        "  ours: RSS {:.1} MB, {:.0} threads at the window's end; median check_duration_ms {:.1}; {not_ok} runs not OK",
        med(&our_runs, |r| r.rss_mb),
        med(&our_runs, |r| r.threads as f64),
        med(&our_runs, |r| r.duration_ms),
    );
    println!("  ours / shell, per round then the median:");
    println!(
        "    CPU per completed plugin run  {:.2}",
        ratio(Run::cpu_ms_per_run)
    );
    println!(
        "    CPU per second                {:.2}",
        ratio(Run::cpu_ms_per_s)
    );
    println!(
        "    runs per second               {:.2}",
        ratio(|r| r.runs_per_s)
    );
    println!(
        "    the process itself, per run   {:.2}   (per second {:.2})",
        ratio(|r| r.own_ms_per_s / r.runs_per_s),
        ratio(|r| r.own_ms_per_s)
    );
    println!(
        "    children, per run             {:.2}   (per second {:.2})",
        ratio(|r| r.children_ms_per_s / r.runs_per_s),
        ratio(|r| r.children_ms_per_s)
    );
}
