//! Process trees read straight from `/proc`: cost grows with the tree, not with the host's process count.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one `/proc/<pid>/stat` line says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its process id.
    pub pid: u32,
    /// Its parent's process id (0 for the kernel's own roots).
    pub ppid: u32,
    /// `R`, `S`, `D`, `Z`...
    pub state: char,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid it identifies a process.
    pub start_ticks: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
    /// Threads of the process.
    pub threads: u64,
}

impl ProcStat {
    /// Zombies and dead processes no longer run.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name may hold spaces and parentheses, so
/// fields are counted from the last `)`.
pub(crate) fn parse_stat(line: &str) -> Option<ProcStat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    // rest[0] is field 3 (state); field n is rest[n - 3]. Fields 3 to 24 are all we need.
    let mut rest = [""; 22];
    let mut count = 0;
    for (slot, f) in rest
        .iter_mut()
        .zip(line.get(close + 1..)?.split_whitespace())
    {
        *slot = f;
        count += 1;
    }
    let field = |n: usize| -> Option<u64> {
        if n - 3 >= count {
            return None;
        }
        rest[n - 3].parse().ok()
    };
    Some(ProcStat {
        pid,
        state: rest[0].chars().next()?,
        ppid: field(4)? as u32,
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
        threads: field(20)?,
    })
}

/// Formats a `/proc` path on the stack.
struct ProcPath {
    buf: [u8; 64],
    len: usize,
}

impl ProcPath {
    fn new(args: std::fmt::Arguments) -> Option<ProcPath> {
        use std::io::Write;
        let mut buf = [0u8; 64];
        let mut cursor = io::Cursor::new(&mut buf[..]);
        cursor.write_fmt(args).ok()?;
        let len = cursor.position() as usize;
        Some(ProcPath { buf, len })
    }

    fn path(&self) -> &Path {
        use std::os::unix::ffi::OsStrExt;
        Path::new(std::ffi::OsStr::from_bytes(&self.buf[..self.len]))
    }
}

/// Reads a small `/proc` file into `buf` with plain reads: no heap, none of the `statx` and
/// `lseek` calls `fs::read` spends on sizing a buffer for a file whose size says nothing.
/// `Ok(None)` when it does not fit.
pub(crate) fn read_small<'a>(path: &Path, buf: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Ok(None);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => return Ok(Some(&buf[..len])),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads one process's stat; `None` when it is gone.
pub(crate) fn read_stat(pid: u32) -> Option<ProcStat> {
    let path = ProcPath::new(format_args!("/proc/{pid}/stat"))?;
    // A stat line is well under 1.5 KB; a longer one is read the slow way.
    let mut buf = [0u8; 1536];
    let raw = match read_small(path.path(), &mut buf).ok()? {
        Some(raw) => std::borrow::Cow::Borrowed(raw),
        None => std::borrow::Cow::Owned(fs::read(path.path()).ok()?),
    };
    // A command name need not be UTF-8.
    parse_stat(&String::from_utf8_lossy(&raw))
}

/// Pids listed in a `children` file, appended to `out`.
fn read_children(path: &Path, out: &mut Vec<u32>) -> io::Result<()> {
    let mut buf = [0u8; 1024];
    let raw = match read_small(path, &mut buf)? {
        Some(raw) => std::borrow::Cow::Borrowed(raw),
        None => std::borrow::Cow::Owned(fs::read(path)?),
    };
    out.extend(
        raw.split(u8::is_ascii_whitespace)
            .filter_map(|p| std::str::from_utf8(p).ok()?.parse::<u32>().ok()),
    );
    Ok(())
}

/// Direct children of `pid`, from `/proc/<pid>/task/*/children`. `Err` when the kernel lacks
/// that file (or the process is gone).
pub fn children(pid: u32) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let mut path: PathBuf = task?.path();
        path.push("children");
        match read_children(&path, &mut out) {
            Ok(()) => {}
            // A thread that exits while we read is not an error.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && path.parent().is_some_and(|t| !t.exists()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Direct children of a process whose stat was just read: a single-threaded one has one
/// `children` file, read without listing its tasks.
fn children_of(stat: &ProcStat) -> io::Result<Vec<u32>> {
    if stat.threads != 1 {
        return children(stat.pid);
    }
    let pid = stat.pid;
    let path = ProcPath::new(format_args!("/proc/{pid}/task/{pid}/children"))
        .ok_or_else(|| io::Error::other("pid too long"))?;
    let mut out = Vec::new();
    match read_children(path.path(), &mut out) {
        Ok(()) => Ok(out),
        // It started a thread since: list them all.
        Err(e) if e.kind() == io::ErrorKind::NotFound => children(pid),
        Err(e) => Err(e),
    }
}

/// Every pid in `/proc`.
fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Children of every process, from a full `/proc` scan: the fallback for kernels without
/// `task/*/children`.
fn children_by_scan() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(stat) = read_stat(pid) {
            map.entry(stat.ppid).or_default().push(pid);
        }
    }
    map
}

/// The root and all its living descendants (zombies excluded), root first.
pub fn tree(root: u32) -> Vec<ProcStat> {
    match read_stat(root) {
        Some(root_stat) => tree_from(root_stat),
        None => Vec::new(),
    }
}

/// [`tree`] from a root whose stat was just read.
pub(crate) fn tree_from(root_stat: ProcStat) -> Vec<ProcStat> {
    let root = root_stat.pid;
    let mut out = vec![root_stat];
    let mut seen = HashSet::from([root]);
    let mut scanned: Option<HashMap<u32, Vec<u32>>> = None;
    // Breadth first: `out` is the queue, `next` its head.
    let mut next = 0;
    while let Some(parent) = out.get(next).copied() {
        next += 1;
        let pid = parent.pid;
        let kids = match children_of(&parent) {
            Ok(kids) => kids,
            Err(_) if read_stat(pid).is_none() => Vec::new(),
            Err(_) => scanned
                .get_or_insert_with(children_by_scan)
                .get(&pid)
                .cloned()
                .unwrap_or_default(),
        };
        for kid in kids {
            if seen.insert(kid)
                && let Some(stat) = read_stat(kid)
                && stat.ppid == pid
            {
                out.push(stat);
            }
        }
    }
    out.retain(|p| p.pid == root || p.is_running());
    out
}

/// Machine constants needed to turn ticks and pages into seconds and bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Machine {
    /// Clock ticks per second (`CLK_TCK`, 100 when unknown), the unit of CPU and start times.
    pub ticks_per_second: f64,
    /// Bytes per memory page (4096 when unknown), the unit of resident set sizes.
    pub page_size: u64,
    /// The machine's CPUs (`cpuN` lines of `/proc/stat`): 100 % CPU means all of them busy.
    pub cpus: usize,
    /// When the machine booted, in seconds since the epoch (`btime` in `/proc/stat`).
    pub boot_time: f64,
}

impl Machine {
    /// Reads the constants of this machine.
    pub fn current() -> Machine {
        use nix::unistd::{SysconfVar, sysconf};
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
        let page = sysconf(SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096);
        let boot_time = read_boot_time().unwrap_or(0.0);
        Machine {
            ticks_per_second: ticks as f64,
            page_size: page as u64,
            cpus: online_cpus(),
            boot_time,
        }
    }

    /// When a process started, in seconds since the epoch.
    pub(crate) fn start_epoch(&self, stat: &ProcStat) -> f64 {
        self.boot_time + stat.start_ticks as f64 / self.ticks_per_second
    }

    /// The boot time again: it moves when the clock is stepped, and start times with it.
    pub(crate) fn refresh_boot_time(&mut self) {
        if let Some(bt) = read_boot_time() {
            self.boot_time = bt;
        }
    }

    /// Pages to MB.
    pub(crate) fn megabytes(&self, pages: u64) -> f64 {
        (pages * self.page_size) as f64 / (1024.0 * 1024.0)
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once: with a start time in ticks
/// after boot it tells a process from any later one that gets its pid, even across a reboot.
pub fn boot_id() -> Option<&'static str> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let id = id.trim();
            (!id.is_empty()).then(|| id.to_string())
        })
        .as_deref()
}

/// When a running process started, to be recorded with its pid (`add agent --pid`); `None` when
/// no such process runs.
pub(crate) fn process_start(pid: u32) -> Option<crate::model::PidStart> {
    let stat = read_stat(pid).filter(ProcStat::is_running)?;
    Some(crate::model::PidStart {
        ticks: stat.start_ticks,
        boot_id: boot_id().map(str::to_string),
    })
}

/// `btime` from `/proc/stat`: when the machine booted, in seconds since the epoch.
fn read_boot_time() -> Option<f64> {
    fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The machine's CPUs (all of them, not this process's cgroup or affinity share): agent CPU is
/// a share of the whole machine.
fn online_cpus() -> usize {
    let from_stat = fs::read_to_string("/proc/stat").ok().map(|s| {
        s.lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
    });
    match from_stat {
        Some(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Seconds since boot, from `/proc/uptime`.
pub(crate) fn uptime_seconds() -> Option<f64> {
    fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open file descriptors of a process; 0 when they cannot be listed (another user's process).
pub(crate) fn open_files(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fd");
    // Since Linux 6.2 the size of `/proc/<pid>/fd` is the number of open descriptors: one
    // stat instead of listing them all (profiled: the listing was a tenth of an agent probe).
    // Older kernels say 0, and so does a process with nothing open: then count the entries.
    match fs::metadata(&dir) {
        Ok(meta) if meta.len() > 0 => meta.len(),
        Ok(_) => fs::read_dir(&dir).map_or(0, |d| d.count() as u64),
        Err(_) => 0,
    }
}

/// A process of a tree, as remembered from one cycle to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Member {
    /// Its process id.
    pub pid: u32,
    /// Its start time after boot, in clock ticks, so a reused pid is told apart.
    pub start_ticks: u64,
}

/// One reading of an agent's process tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TreeSample {
    /// The root process runs, and is the same process as before (its start time has not changed).
    pub alive: bool,
    /// A process runs with the root's pid, but it started at another time: not the agent's (the
    /// pid was reused).
    pub reused: bool,
    /// Running processes in the tree, the root included; 0 for a dead root.
    pub process_count: usize,
    /// CPU of the tree as a share of the whole machine; `None` for a dead root.
    pub cpu_percent: Option<f64>,
    /// Resident memory of the whole tree, in MB.
    pub memory_mb: f64,
    /// File descriptors open across the tree (from `/proc/<pid>/fd`).
    pub open_files: u64,
    /// Every process of the tree, root first.
    pub members: Vec<Member>,
}

impl TreeSample {
    /// The reading of a root that is not there.
    pub fn dead() -> Self {
        TreeSample {
            alive: false,
            reused: false,
            process_count: 0,
            cpu_percent: None,
            memory_mb: 0.0,
            open_files: 0,
            members: Vec::new(),
        }
    }
}

/// CPU ticks per process, keyed by (pid, start time) so a reused pid is a new process.
type TickCounts = HashMap<(u32, u64), u64>;

/// Follows an agent's root process from cycle to cycle, turning tick counters into CPU
/// percentages. The root may change (a rewritten pid file): history then starts over.
#[derive(Debug)]
pub(crate) struct TreeSampler {
    machine: Machine,
    root: Option<Member>,
    previous: Option<(Instant, TickCounts)>,
}

impl TreeSampler {
    /// A sampler with no history.
    pub fn new(machine: Machine) -> Self {
        TreeSampler {
            machine,
            root: None,
            previous: None,
        }
    }

    /// Reads the tree under `root`. With `start_ticks` (recorded when the monitor was added) the
    /// root must have started at exactly that tick of this boot. With `expected_start` (seconds
    /// since the epoch, from a pid file; two readings where a DST change makes the local time
    /// ambiguous) it must have started then, within 2 s. A `pinned` root must be the process
    /// first seen with this pid. Any way, a reused pid counts as dead (and `reused`).
    ///
    /// The first reading's CPU is each process's average since it started (as `ps` shows it);
    /// later readings cover the time since the previous one.
    pub fn sample(
        &mut self,
        root: u32,
        expected_start: Option<(f64, f64)>,
        start_ticks: Option<u64>,
        pinned: bool,
    ) -> TreeSample {
        let now = Instant::now();
        if expected_start.is_some() {
            self.machine.refresh_boot_time();
        }
        let m = self.machine;
        let Some(root_stat) = read_stat(root).filter(ProcStat::is_running) else {
            self.previous = None;
            return TreeSample::dead();
        };
        let same_process = match (start_ticks, expected_start, self.root) {
            (Some(ticks), _, _) => root_stat.start_ticks == ticks,
            (None, Some((early, late)), _) => {
                let started = m.start_epoch(&root_stat);
                (started - early).abs() <= 2.0 || (started - late).abs() <= 2.0
            }
            (None, None, Some(known)) if pinned && known.pid == root => {
                known.start_ticks == root_stat.start_ticks
            }
            (None, None, _) => true,
        };
        if !same_process {
            self.previous = None;
            return TreeSample {
                reused: true,
                ..TreeSample::dead()
            };
        }
        let member = Member {
            pid: root,
            start_ticks: root_stat.start_ticks,
        };
        if self.root != Some(member) {
            self.root = Some(member);
            self.previous = None;
        }
        let procs = tree_from(root_stat);
        let memory_mb = m.megabytes(procs.iter().map(|p| p.rss_pages).sum());
        let ticks: TickCounts = procs
            .iter()
            .map(|p| ((p.pid, p.start_ticks), p.cpu_ticks))
            .collect();
        let busy_seconds_per_second = match &self.previous {
            Some((then, before)) => {
                let elapsed = now.duration_since(*then).as_secs_f64().max(1e-3);
                let delta: u64 = ticks
                    .iter()
                    .map(|(k, t)| t.saturating_sub(before.get(k).copied().unwrap_or(0)))
                    .sum();
                delta as f64 / m.ticks_per_second / elapsed
            }
            None => {
                let uptime = uptime_seconds().unwrap_or(0.0);
                procs
                    .iter()
                    .map(|p| {
                        let age = uptime - p.start_ticks as f64 / m.ticks_per_second;
                        if age > 0.0 {
                            p.cpu_ticks as f64 / m.ticks_per_second / age
                        } else {
                            0.0
                        }
                    })
                    .sum()
            }
        };
        self.previous = Some((now, ticks));
        let cpu_percent = (busy_seconds_per_second / m.cpus as f64 * 100.0).clamp(0.0, 100.0);
        TreeSample {
            alive: true,
            reused: false,
            process_count: procs.len(),
            cpu_percent: Some(cpu_percent),
            memory_mb,
            open_files: procs.iter().map(|p| open_files(p.pid)).sum(),
            members: procs
                .iter()
                .map(|p| Member {
                    pid: p.pid,
                    start_ticks: p.start_ticks,
                })
                .collect(),
        }
    }
}

/// One process in a full scan of the process table.
#[derive(Debug, Clone)]
pub struct ScannedProcess {
    /// Its `/proc/<pid>/stat` reading.
    pub stat: ProcStat,
    /// Arguments joined by spaces.
    pub cmdline: String,
}

/// Reads every process with its command line. Only `--match` needs this; the result is shared
/// by every agent for `max_age` so the table is read once per cycle, never once per agent.
pub fn scan_all(max_age: std::time::Duration) -> Arc<Vec<ScannedProcess>> {
    static CACHE: Mutex<Option<(Instant, Arc<Vec<ScannedProcess>>)>> = Mutex::new(None);
    let mut cache = crate::util::lock(&CACHE);
    if let Some((at, scan)) = cache.as_ref()
        && at.elapsed() < max_age
    {
        return scan.clone();
    }
    let mut out = Vec::new();
    for pid in all_pids() {
        let (Some(stat), Ok(raw)) = (read_stat(pid), fs::read(format!("/proc/{pid}/cmdline")))
        else {
            continue;
        };
        if raw.is_empty() {
            continue; // Kernel threads.
        }
        let cmdline = String::from_utf8_lossy(&raw)
            .trim_end_matches('\0')
            .replace('\0', " ");
        out.push(ScannedProcess { stat, cmdline });
    }
    let scan = Arc::new(out);
    *cache = Some((Instant::now(), scan.clone()));
    scan
}

/// The root of the processes whose command line matches: among matches whose parent does not
/// match too, the oldest. The monitor itself never matches.
pub(crate) fn find_match(pattern: &regex::Regex, scan: &[ScannedProcess]) -> Option<u32> {
    let me = std::process::id();
    let matching: Vec<&ScannedProcess> = scan
        .iter()
        .filter(|p| p.stat.pid != me && pattern.is_match(&p.cmdline))
        .collect();
    let pids: HashSet<u32> = matching.iter().map(|p| p.stat.pid).collect();
    matching
        .iter()
        .filter(|p| !pids.contains(&p.stat.ppid))
        .min_by_key(|p| (p.stat.start_ticks, p.stat.pid))
        .map(|p| p.stat.pid)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "4242 (my (weird) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.ppid, 1);
        assert_eq!(s.state, 'S');
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.rss_pages, 250);
        assert_eq!(s.threads, 1);
        assert!(parse_stat("garbage").is_none());
        // Cut short before the fields we need.
        assert!(parse_stat("4242 (x) S 1 4242").is_none());
    }

    #[test]
    fn open_files_counts_a_process_descriptors() {
        // stdin, stdout, stderr and one more file, counted by size and by listing alike.
        let mut child = Command::new("sh")
            .args(["-c", "exec 3</dev/null; exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let listed = || fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Until `exec sleep` has happened the shell may hold other descriptors.
        while !fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep") {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The test harness may hand down descriptors of its own (cargo's jobserver): at least
        // the four, and the same number as a listing finds.
        assert!(listed() >= 4, "{}", listed());
        assert_eq!(open_files(pid), listed());
        assert_eq!(open_files(u32::MAX), 0, "no such process");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_shell_with_two_children_is_a_tree_of_three() {
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = parent.id();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut found = Vec::new();
        while Instant::now() < deadline {
            found = tree(pid);
            if found.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("pkill")
            .args(["-P", &pid.to_string()])
            .status();
        let _ = parent.kill();
        let _ = parent.wait();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].pid, pid);
        assert!(found[1..].iter().all(|p| p.ppid == pid));
    }

    /// Spawns `sleep 30` and waits until it has really become `sleep` (right after spawn the
    /// child may still be between fork and exec, or just exec'd with nothing resident yet).
    pub(crate) fn spawn_sleep() -> std::process::Child {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        // `sleep` asleep in nanosleep: exec'd and its memory mapped in.
        let settled = |pid: u32| {
            fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() == "sleep\n"
                && read_stat(pid).is_some_and(|s| s.state == 'S' && s.rss_pages > 0)
        };
        while !settled(child.id()) {
            assert!(Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn sampler_sees_life_then_death() {
        let mut child = spawn_sleep();
        let mut sampler = TreeSampler::new(Machine::current());
        let first = sampler.sample(child.id(), None, None, true);
        assert!(first.alive);
        assert_eq!(first.process_count, 1);
        assert!(first.memory_mb > 0.0);
        let cpu = first.cpu_percent.unwrap();
        assert!((0.0..=100.0).contains(&cpu), "{cpu}");
        child.kill().unwrap();
        // Not yet reaped: a zombie is not alive either.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while sampler.sample(child.id(), None, None, true).alive {
            assert!(Instant::now() < deadline, "killed child still looks alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            read_stat(child.id()).is_some(),
            "the zombie is still in /proc"
        );
        child.wait().unwrap();
        let gone = sampler.sample(child.id(), None, None, true);
        assert!(!gone.alive);
        assert_eq!(gone.cpu_percent, None);
    }

    #[test]
    fn a_recorded_start_tells_the_process_from_a_reuse_of_its_pid() {
        let mut child = spawn_sleep();
        let pid = child.id();
        let start = process_start(pid).expect("the sleep runs");
        assert_eq!(start.ticks, read_stat(pid).unwrap().start_ticks);
        assert_eq!(start.boot_id.as_deref(), boot_id());
        let mut sampler = TreeSampler::new(Machine::current());
        let same = sampler.sample(pid, None, Some(start.ticks), false);
        assert!(same.alive && !same.reused, "{same:?}");
        // Another start time with the same pid: someone else's process.
        let mut sampler = TreeSampler::new(Machine::current());
        let other = sampler.sample(pid, None, Some(start.ticks + 1), false);
        assert!(!other.alive && other.reused, "{other:?}");
        assert_eq!(other.cpu_percent, None);
        // A pinned root seen once, then a different process with its pid, is a reuse too.
        let mut pinned = TreeSampler::new(Machine::current());
        assert!(pinned.sample(pid, None, None, true).alive);
        pinned.root = Some(Member {
            pid,
            start_ticks: start.ticks + 1,
        });
        assert!(pinned.sample(pid, None, None, true).reused);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_start(pid), None, "not running");
        let gone = TreeSampler::new(Machine::current()).sample(pid, None, Some(start.ticks), false);
        assert!(!gone.alive && !gone.reused, "dead, not reused: {gone:?}");
    }

    #[test]
    fn children_of_any_thread_of_a_multi_threaded_parent_are_found() {
        // The child is started by a second thread of this process, and listed under it.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            let child = spawn_sleep();
            started_tx.send(child.id()).unwrap();
            let _ = done_rx.recv();
            child
        });
        let pid = started_rx.recv().unwrap();
        let me = read_stat(std::process::id()).unwrap();
        let found = tree(std::process::id());
        done_tx.send(()).unwrap();
        let mut child = helper.join().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(me.threads > 1, "{me:?}");
        assert!(found.iter().any(|p| p.pid == pid), "{found:?}");
        assert_eq!(found[0].pid, std::process::id());
    }

    #[test]
    fn a_missing_pid_has_no_tree() {
        assert!(tree(u32::MAX - 1).is_empty());
    }
}
