//! Shared by the daemon benchmarks: processes that clean up after themselves, the real daemon on
//! a temporary database, and CPU and memory read from `/proc` the way `ps` and `top` read them.

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The daemon under test, built in release by `cargo bench`.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_health-monitor")
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Clock ticks per second (`utime` and `stime` are counted in them).
pub fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// utime + stime of a whole process (every thread, living or exited), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // rest[0] is field 3; utime and stime are fields 14 and 15.
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`...), or `Threads`.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of every living thread of `pid` by thread name, from `schedstat` (nanoseconds):
/// exact where `/proc/<pid>/stat` counts 10 ms ticks, but blind to threads that have exited.
pub fn task_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            fs::read_to_string(task.path().join("comm")),
            fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(comm.trim().to_string()).or_default() += ns;
    }
    out
}

/// CPU and memory of one process over one window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// CPU time used during the window, ms.
    pub cpu_ms: f64,
    /// Wall time of the window, s.
    pub secs: f64,
    /// Resident memory at the end of the window, MB.
    pub rss_mb: f64,
    /// Threads at the end of the window.
    pub threads: u64,
}

impl Window {
    /// CPU ms per cycle of `interval` seconds.
    pub fn per_cycle(&self, interval: f64) -> f64 {
        self.cpu_ms / (self.secs / interval)
    }
}

/// Watches processes' CPU counters from a common start.
pub struct Meter {
    start: Instant,
    ticks: Vec<u64>,
    pids: Vec<u32>,
}

impl Meter {
    pub fn start(pids: &[u32]) -> Meter {
        Meter {
            start: Instant::now(),
            ticks: pids
                .iter()
                .map(|p| cpu_ticks(*p).expect("process to measure is gone"))
                .collect(),
            pids: pids.to_vec(),
        }
    }

    /// Each process's window since `start` (or since the last `lap`), and starts the next.
    pub fn lap(&mut self) -> Vec<Window> {
        let now = Instant::now();
        let secs = now.duration_since(self.start).as_secs_f64();
        let ms_per_tick = 1000.0 / ticks_per_second();
        let mut out = Vec::new();
        for (i, pid) in self.pids.iter().enumerate() {
            let ticks = cpu_ticks(*pid).expect("process to measure is gone");
            out.push(Window {
                cpu_ms: ticks.saturating_sub(self.ticks[i]) as f64 * ms_per_tick,
                secs,
                rss_mb: status_field(*pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
                threads: status_field(*pid, "Threads").unwrap_or(0),
            });
            self.ticks[i] = ticks;
        }
        self.start = now;
        out
    }
}

/// Processes started for a benchmark, each in its own process group, all killed (with whatever
/// they started) when this is dropped, panics included. They also die with the benchmark.
#[derive(Default)]
pub struct Procs {
    children: Vec<Child>,
}

impl Procs {
    /// Starts `program args` in a new process group.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> u32 {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.spawn_command(cmd)
    }

    /// Starts a prepared command (its process group and parent-death signal are set here).
    pub fn spawn_command(&mut self, mut cmd: Command) -> u32 {
        cmd.process_group(0);
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("cannot start a benchmark process");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for child in &self.children {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real daemon on a database and socket in `dir`, stopped (SIGTERM, then SIGKILL after
/// 15 s) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    pub log: PathBuf,
    pub db: PathBuf,
}

impl Daemon {
    /// Starts `health-monitor start --interval <interval> <extra>` on `dir/hm.db` with the
    /// config `dir/config.toml`, and waits until its control socket is there.
    pub fn start(dir: &Path, interval: f64, extra: &[&str]) -> Daemon {
        Daemon::start_binary(bin(), dir, interval, extra)
    }

    /// The same with another build of the daemon (`program`).
    pub fn start_binary(program: &str, dir: &Path, interval: f64, extra: &[&str]) -> Daemon {
        let db = dir.join("hm.db");
        let socket = dir.join("hm.sock");
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(program);
        cmd.arg("start")
            .args(["--db-path".as_ref(), db.as_os_str()])
            .args(["--socket".as_ref(), socket.as_os_str()])
            .args(["--config".as_ref(), dir.join("config.toml").as_os_str()])
            .args(["--interval", &interval.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        cmd.process_group(0);
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("cannot start the daemon");
        let mut daemon = Daemon {
            pid: child.id(),
            child: Some(child),
            log,
            db,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited ({status}): {}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon never opened its socket: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The highest metric row id written so far (0 before the first): rows written between two
    /// readings show every collector ran.
    pub fn rows(&self) -> i64 {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return 0;
        };
        conn.query_row("SELECT coalesce(max(id), 0) FROM health_metrics", [], |r| {
            r.get(0)
        })
        .unwrap_or(0)
    }

    /// Stops it cleanly; panics if it does not exit 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "daemon exited {status}: {}",
                    self.log_text()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop within 30 s: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A workspace directory with a handful of files, a subdirectory and a `.git` with a HEAD.
pub fn make_workspace(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join(".git")).unwrap();
    fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    fs::write(dir.join("README.md"), "# a workspace\n".repeat(20)).unwrap();
    fs::write(dir.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    fs::write(dir.join("notes.txt"), vec![b'n'; 4096]).unwrap();
    fs::write(dir.join("src/main.rs"), "fn main() {}\n".repeat(50)).unwrap();
    fs::write(dir.join("src/lib.rs"), vec![b'l'; 10_000]).unwrap();
}

/// A process's own CPU (utime + stime) and its reaped children's (cutime + cstime: every child
/// it has waited for, with theirs), in clock ticks.
pub fn cpu_ticks_own_and_children(pid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // rest[0] is field 3; utime, stime, cutime and cstime are fields 14 to 17.
    let field = |i: usize| rest.get(i)?.parse::<u64>().ok();
    Some((field(11)? + field(12)?, field(13)? + field(14)?))
}

/// One request on a daemon's control socket (one JSON object per line, as the CLI sends it),
/// and the `data` of its answer; panics if the daemon refuses it.
pub fn control_request(socket: &Path, request: &serde_json::Value) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    (&stream).write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).unwrap();
    let mut answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["ok"], true, "the daemon refused {request}: {answer}");
    answer["data"].take()
}

/// Saves `n` agents (`aI --pid P --workspace wsI`) and `n` workspaces (`wI --path wsI`) in a
/// new database, exactly as `add` does without a daemon (the same validation and write).
pub fn save_monitors(db: &Path, pids: &[u32], workspaces: &Path, n: usize) {
    let mut ops = Vec::with_capacity(2 * n);
    for (i, pid) in pids.iter().enumerate().take(n) {
        let dir = workspaces.join(format!("ws{i}"));
        let agent = health_monitor::model::MonitorSpec::Agent {
            id: format!("a{i}"),
            options: health_monitor::model::AgentOptions {
                pid: Some(*pid),
                workspace: Some(dir.clone()),
                ..health_monitor::model::AgentOptions::default()
            },
        };
        let workspace = health_monitor::model::MonitorSpec::Workspace {
            id: format!("w{i}"),
            options: health_monitor::model::WorkspaceOptions {
                path: Some(dir),
                ..health_monitor::model::WorkspaceOptions::default()
            },
        };
        for spec in [agent, workspace] {
            health_monitor::control::protocol::validate_monitor(&spec).unwrap();
            ops.push(health_monitor::store::write::WriteOp::MonitorSaved(spec));
        }
    }
    let mut conn = health_monitor::store::open_for_writing(db).unwrap();
    health_monitor::store::write::apply(&mut conn, &ops).unwrap();
}
