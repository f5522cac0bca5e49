//! Town orphans: processes of agent programs working in a Gas Town town that no live session
//! owns (Gas Town issues #736, #611, #2251: hundreds of claude/codex/opencode processes left
//! behind by killed sessions, holding tens of GB).
//!
//! The rules follow Gas Town 1.0.1's own orphan finder (`internal/util/orphan.go`): an agent
//! program's process (by its `comm`) with no controlling terminal, in no tmux pane's process
//! tree, at least a minute old. Ours adds that its working directory is inside the town, so
//! agents run elsewhere on the machine are none of the town's business, and takes ownership
//! from the caller: the town's tmux pane pids and the live pids of its pid files.
//!
//! The process table is read once per scan (one `/proc/<pid>/stat` per process); working
//! directories are read only for the few processes that passed every other test.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Process names (`comm`) of the agent programs Gas Town runs (orphan.go:410-416).
pub(crate) const AGENT_PROGRAMS: &[&str] = &[
    "claude",
    "claude-code",
    "codex",
    "opencode",
    "cursor-agent",
    "agent",
    "copilot",
];

/// Gas Town's `minOrphanAge`: a younger process may still be on its way into a session.
pub const MIN_ORPHAN_AGE: Duration = Duration::from_secs(60);

/// At most this many examples per scan.
pub(crate) const MAX_EXAMPLES: usize = 20;

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrphanScan {
    /// Orphans found; 0 when none (or `/proc/uptime` could not be read).
    pub count: u64,
    /// Their resident memory together, in MB.
    pub memory_mb: f64,
    /// up to 20, oldest first
    pub examples: Vec<Orphan>,
}

/// One orphan, as an example in the scan's log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    /// Its process id.
    pub pid: u32,
    /// Its process name, one of [`AGENT_PROGRAMS`].
    pub comm: String,
    /// Seconds since it started.
    pub age_secs: f64,
    /// Its resident memory, in MB.
    pub memory_mb: f64,
}

/// One process of the table, as its `/proc/<pid>/stat` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    /// Its process id (field 1).
    pub pid: u32,
    /// Its parent's process id (field 4); 0 for the kernel's own roots.
    pub ppid: u32,
    /// Its process name (field 2, without the parentheses), at most 15 bytes.
    pub comm: String,
    /// `tty_nr` (field 7) is not 0.
    pub has_tty: bool,
    /// Start time after boot, in clock ticks (field 22).
    pub start_ticks: u64,
    /// Resident set size, in pages (field 24).
    pub rss_pages: u64,
}

/// What [`find`] needs besides the table: the time now, the units of ticks and pages, and who
/// is scanning (never an orphan itself).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Basis {
    /// Seconds since boot (`/proc/uptime`).
    pub now_secs: f64,
    /// Clock ticks per second (`CLK_TCK`, usually 100); 100 is assumed when 0.
    pub ticks_per_second: f64,
    /// Bytes per memory page (usually 4096).
    pub page_size: u64,
    /// The scanning process.
    pub me: u32,
}

/// `PF_KTHREAD` in the `flags` field (9) of a stat line.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses a `/proc/<pid>/stat` line into an entry. `None` for a line that does not parse, and
/// for processes that cannot be orphans nor own one: kernel threads (kthreadd, its children,
/// anything flagged `PF_KTHREAD`) and zombies (dead, holding no memory, with no children).
pub(crate) fn parse_stat_line(line: &[u8]) -> Option<ProcEntry> {
    // The command name may hold spaces and parentheses: it runs from the first `(` to the last `)`.
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    if close < open {
        return None;
    }
    let pid: u32 = std::str::from_utf8(&line[..open])
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = String::from_utf8_lossy(&line[open + 1..close]).into_owned();
    // rest[0] is field 3; field n is rest[n - 3]. Fields 3 to 24 are all we need.
    let mut rest: [&[u8]; 22] = [b""; 22];
    let mut count = 0;
    let fields = line[close + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    for (slot, f) in rest.iter_mut().zip(fields) {
        *slot = f;
        count += 1;
    }
    if count < rest.len() {
        return None;
    }
    let text = |n: usize| std::str::from_utf8(rest[n - 3]).ok();
    let unsigned = |n: usize| -> Option<u64> { text(n)?.parse().ok() };
    let state = rest[0].first().copied()?;
    let ppid = unsigned(4)? as u32;
    // tty_nr and rss are signed in the kernel's format.
    let tty_nr: i64 = text(7)?.parse().ok()?;
    let flags = unsigned(9)?;
    let start_ticks = unsigned(22)?;
    let rss: i64 = text(24)?.parse().ok()?;
    if matches!(state, b'Z' | b'X' | b'x') || pid == 2 || ppid == 2 || flags & PF_KTHREAD != 0 {
        return None;
    }
    Some(ProcEntry {
        pid,
        ppid,
        comm,
        has_tty: tty_nr != 0,
        start_ticks,
        rss_pages: rss.max(0) as u64,
    })
}

/// The whole process table, one `/proc/<pid>/stat` read per process. Processes that exit
/// while it is read are left out.
pub(crate) fn read_table() -> Vec<ProcEntry> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut path = PathBuf::from("/proc");
    // A stat line is a few hundred bytes; a longer one is read the slow way.
    let mut buf = [0u8; 1024];
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        path.push(&name);
        path.push("stat");
        let parsed = match crate::collect::process::read_small(&path, &mut buf) {
            Ok(Some(raw)) => parse_stat_line(raw),
            Ok(None) => fs::read(&path).ok().and_then(|raw| parse_stat_line(&raw)),
            Err(_) => None,
        };
        path.pop();
        path.pop();
        if let Some(p) = parsed.filter(|p| p.pid == pid) {
            out.push(p);
        }
    }
    out
}

fn is_agent_program(comm: &str) -> bool {
    AGENT_PROGRAMS.iter().any(|p| comm.eq_ignore_ascii_case(p))
}

/// The orphans of `entries`: agent programs with no controlling terminal, at least `min_age`
/// old, not owned (neither they nor any ancestor, followed by ppid through the table, is one of
/// `owned_roots`), and working in the town (`is_in_town`, asked last and only for those that
/// passed every other test). Pid 1 and processes whose parent is outside our pid namespace
/// (ppid 0) are never orphans: nothing here could own them, and nothing should kill them.
pub fn find(
    entries: &[ProcEntry],
    owned_roots: &[u32],
    is_in_town: impl Fn(u32) -> bool,
    basis: Basis,
    min_age: Duration,
) -> OrphanScan {
    let tps = if basis.ticks_per_second > 0.0 {
        basis.ticks_per_second
    } else {
        100.0
    };
    let age_of = |p: &ProcEntry| (basis.now_secs - p.start_ticks as f64 / tps).max(0.0);
    let min_age = min_age.as_secs_f64();
    let candidates: Vec<&ProcEntry> = entries
        .iter()
        .filter(|p| {
            is_agent_program(&p.comm)
                && !p.has_tty
                && p.pid > 1
                && p.ppid != 0
                && p.pid != basis.me
                && age_of(p) >= min_age
        })
        .collect();
    if candidates.is_empty() {
        return OrphanScan::default();
    }
    let parent: HashMap<u32, u32> = entries.iter().map(|p| (p.pid, p.ppid)).collect();
    let owned: HashSet<u32> = owned_roots.iter().copied().collect();
    let is_owned = |pid: u32| {
        let mut cur = pid;
        // A well-formed table has no cycle; a torn read could fake one.
        for _ in 0..=entries.len() {
            if owned.contains(&cur) {
                return true;
            }
            match parent.get(&cur) {
                Some(&pp) if pp != 0 && pp != cur => cur = pp,
                _ => return false,
            }
        }
        false
    };
    let mb = |pages: u64| (pages as f64 * basis.page_size as f64) / (1024.0 * 1024.0);
    let mut orphans: Vec<&ProcEntry> = candidates
        .into_iter()
        .filter(|p| !is_owned(p.pid) && is_in_town(p.pid))
        .collect();
    orphans.sort_by_key(|p| (p.start_ticks, p.pid));
    OrphanScan {
        count: orphans.len() as u64,
        memory_mb: mb(orphans.iter().map(|p| p.rss_pages).sum()),
        examples: orphans
            .iter()
            .take(MAX_EXAMPLES)
            .map(|p| Orphan {
                pid: p.pid,
                comm: p.comm.clone(),
                age_secs: age_of(p),
                memory_mb: mb(p.rss_pages),
            })
            .collect(),
    }
}

/// Whether a `/proc/<pid>/cwd` target lies inside one of `roots`, component by component. A
/// directory removed since reads with a " (deleted)" suffix, and is still where it was.
pub(crate) fn cwd_in(cwd: &Path, roots: &[PathBuf]) -> bool {
    let stripped;
    let cwd = match cwd.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => {
            stripped = PathBuf::from(s);
            stripped.as_path()
        }
        None => cwd,
    };
    roots.iter().any(|root| cwd.starts_with(root))
}

/// Clock ticks per second and the page size, read once.
fn units() -> (f64, u64) {
    static UNITS: OnceLock<(f64, u64)> = OnceLock::new();
    *UNITS.get_or_init(|| {
        let m = crate::collect::process::Machine::current();
        (m.ticks_per_second, m.page_size)
    })
}

/// Reads the whole process table once.
///
/// Processes working under `skip_cwds` are left out: the caller counts them elsewhere (the
/// orphans of a watched agent that is retiring are that agent's `agent_orphan_count`).
pub fn scan(
    town_root: &Path,
    owned_roots: &[u32],
    skip_cwds: &[PathBuf],
    min_age: Duration,
) -> OrphanScan {
    // Uptime first: a process started during the read is never aged past its time.
    let Some(now_secs) = crate::collect::process::uptime_seconds() else {
        return OrphanScan::default();
    };
    let entries = read_table();
    let (ticks_per_second, page_size) = units();
    // The kernel names a working directory by its resolved path: compare against the root as
    // configured and, when the configured one goes through a symlink, as resolved.
    let mut roots = vec![town_root.to_path_buf()];
    if let Ok(real) = fs::canonicalize(town_root)
        && real != town_root
    {
        roots.push(real);
    }
    let basis = Basis {
        now_secs,
        ticks_per_second,
        page_size,
        me: std::process::id(),
    };
    let in_town = |pid: u32| {
        // readlink only: the target is never opened or followed.
        fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| cwd_in(&cwd, &roots) && !cwd_in(&cwd, skip_cwds))
    };
    find(&entries, owned_roots, in_town, basis, min_age)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    fn entry(pid: u32, ppid: u32, comm: &str, has_tty: bool, start: u64, rss: u64) -> ProcEntry {
        ProcEntry {
            pid,
            ppid,
            comm: comm.into(),
            has_tty,
            start_ticks: start,
            rss_pages: rss,
        }
    }

    /// 100 ticks a second, 4 KiB pages (256 pages a MB), now 10,000 s after boot.
    const BASIS: Basis = Basis {
        now_secs: 10_000.0,
        ticks_per_second: 100.0,
        page_size: 4096,
        me: 999_999,
    };

    #[test]
    fn find_counts_only_unowned_old_ttyless_agents_in_town() {
        let table = vec![
            entry(1, 0, "systemd", false, 0, 1000),
            entry(50, 1, "tmux: server", false, 100, 256),
            // A pane's shell and the claude under it: owned through its parent.
            entry(60, 50, "bash", true, 200, 256),
            entry(61, 60, "claude", false, 300, 25_600),
            // Reparented to init after its session was killed, 9,000 s old: the orphan.
            entry(70, 1, "claude", false, 100_000, 51_200),
            // Another, younger but over a minute old, under an orphaned shell.
            entry(80, 1, "sh", false, 500_000, 256),
            entry(81, 80, "codex", false, 900_000, 12_800),
            // 30 s old: may still be joining a session.
            entry(90, 1, "claude", false, 997_000, 25_600),
            // A terminal of its own: someone's interactive session.
            entry(91, 1, "claude", true, 100_000, 25_600),
            // Working outside the town.
            entry(92, 1, "opencode", false, 100_000, 25_600),
            // Not an agent program.
            entry(93, 1, "node", false, 100_000, 25_600),
            // The scanner itself never counts.
            entry(999_999, 1, "agent", false, 100_000, 25_600),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let in_town = |pid: u32| {
            asked.borrow_mut().push(pid);
            pid != 92
        };
        let scan = find(&table, &[60], in_town, BASIS, MIN_ORPHAN_AGE);
        assert_eq!(
            scan,
            OrphanScan {
                count: 2,
                memory_mb: 250.0,
                examples: vec![
                    Orphan {
                        pid: 70,
                        comm: "claude".into(),
                        age_secs: 9_000.0,
                        memory_mb: 200.0,
                    },
                    Orphan {
                        pid: 81,
                        comm: "codex".into(),
                        age_secs: 1_000.0,
                        memory_mb: 50.0,
                    },
                ],
            }
        );
        // The working directory was asked for only what passed every other test.
        let mut asked = asked.into_inner();
        asked.sort_unstable();
        assert_eq!(asked, vec![70, 81, 92]);

        // Owning the orphaned shell owns its codex; owning the claude itself owns it.
        let scan = find(
            &table,
            &[60, 80, 70],
            |pid| pid != 92,
            BASIS,
            MIN_ORPHAN_AGE,
        );
        assert_eq!(scan, OrphanScan::default());
        // With no minimum age the young one counts too.
        let scan = find(&table, &[60], |pid| pid != 92, BASIS, Duration::ZERO);
        assert_eq!(scan.count, 3);
        assert_eq!(scan.memory_mb, 350.0);
        assert_eq!(scan.examples.last().map(|o| o.pid), Some(90));
    }

    #[test]
    fn find_keeps_twenty_oldest_examples_and_counts_all() {
        let table: Vec<ProcEntry> = (0..30)
            .map(|i| {
                entry(
                    1000 + i,
                    1,
                    "Claude",
                    false,
                    10_000 + u64::from(29 - i),
                    256,
                )
            })
            .collect();
        let scan = find(&table, &[], |_| true, BASIS, MIN_ORPHAN_AGE);
        assert_eq!(scan.count, 30);
        assert_eq!(scan.memory_mb, 30.0);
        assert_eq!(scan.examples.len(), MAX_EXAMPLES);
        let pids: Vec<u32> = scan.examples.iter().map(|o| o.pid).collect();
        assert_eq!(pids, (1010..1030).rev().collect::<Vec<u32>>());
    }

    #[test]
    fn find_survives_a_parent_cycle() {
        // A torn read could show two processes as each other's parent.
        let table = vec![
            entry(10, 11, "claude", false, 0, 1),
            entry(11, 10, "claude", false, 0, 1),
        ];
        assert_eq!(find(&table, &[], |_| true, BASIS, MIN_ORPHAN_AGE).count, 2);
        assert_eq!(
            find(&table, &[11], |_| true, BASIS, MIN_ORPHAN_AGE).count,
            0
        );
    }

    /// A stat line with fields 3 to 24 (and a few after), as the kernel writes it.
    fn stat_line(pid: u32, comm: &str, state: char, ppid: u32, tty: i64, flags: u64) -> String {
        format!(
            "{pid} ({comm}) {state} {ppid} {pid} {pid} {tty} -1 {flags} 100 0 0 0 5 6 0 0 20 0 1 0 4242 1000000 777 18446744073709551615 1 1 0"
        )
    }

    #[test]
    fn parse_stat_line_reads_comm_tty_start_and_rss() {
        let line = stat_line(4321, "claude) (x y", 'S', 77, 0, 0x0040_0100);
        assert_eq!(
            parse_stat_line(line.as_bytes()),
            Some(entry(4321, 77, "claude) (x y", false, 4242, 777))
        );
        let line = stat_line(4321, "claude", 'R', 77, 34816, 0x0040_0100);
        assert_eq!(
            parse_stat_line(line.as_bytes()).map(|e| e.has_tty),
            Some(true)
        );
        // Kernel threads and zombies are left out of the table.
        let kthread = stat_line(40, "kworker/0:1", 'I', 2, 0, 0x0420_8060);
        assert_eq!(parse_stat_line(kthread.as_bytes()), None);
        let flagged = stat_line(40, "agent", 'S', 1, 0, PF_KTHREAD);
        assert_eq!(parse_stat_line(flagged.as_bytes()), None);
        let zombie = stat_line(41, "claude", 'Z', 1, 0, 0x0040_0104);
        assert_eq!(parse_stat_line(zombie.as_bytes()), None);
        // Torn or short lines do not parse.
        assert_eq!(parse_stat_line(b"12 (claude) S 1 12"), None);
        assert_eq!(parse_stat_line(b"12 claude S 1 12"), None);
    }

    #[test]
    fn cwd_in_town_by_components_and_deleted() {
        let roots = vec![PathBuf::from("/home/me/gt")];
        assert!(cwd_in(Path::new("/home/me/gt"), &roots));
        assert!(cwd_in(Path::new("/home/me/gt/rig/polecats/a"), &roots));
        assert!(cwd_in(Path::new("/home/me/gt/rig (deleted)"), &roots));
        assert!(!cwd_in(Path::new("/home/me/gt2/rig"), &roots));
        assert!(!cwd_in(Path::new("/home/me"), &roots));
    }

    #[test]
    fn read_table_sees_this_process() {
        let me = std::process::id();
        let table = read_table();
        let mine = table.iter().find(|p| p.pid == me);
        assert!(mine.is_some_and(|p| p.ppid != 0 && p.start_ticks > 0 && p.rss_pages > 0));
        // No kernel threads.
        assert!(table.iter().all(|p| p.pid != 2 && p.ppid != 2));
    }

    /// Kills the child when dropped, panics included.
    struct Reaped(Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn comm_of(pid: u32) -> Option<String> {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some(comm.trim_end().to_string())
    }

    #[test]
    fn scan_finds_a_real_orphan_in_town_unless_owned() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bin = dir.path().join("bin");
        let town = dir.path().join("town");
        let rig = town.join("rig/polecats/p1");
        fs::create_dir_all(&bin).expect("bin dir");
        fs::create_dir_all(&rig).expect("town dir");
        let claude = bin.join("claude");
        fs::copy("/bin/sleep", &claude).expect("copy /bin/sleep");
        // A child of this (multi-threaded) test binary is no process-group leader, so setsid
        // execs in place: the child's pid is the claude's, with no controlling terminal. A
        // thread forking while the copy was open for writing makes exec fail with ETXTBSY for
        // a moment: retry.
        let mut child = None;
        for _ in 0..50 {
            let spawned = Command::new("setsid")
                .arg(&claude)
                .arg("600")
                .current_dir(&rig)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut c = Reaped(spawned.expect("spawn setsid"));
            let pid = c.0.id();
            let started = std::time::Instant::now();
            while comm_of(pid).as_deref() != Some("claude")
                && matches!(c.0.try_wait(), Ok(None))
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            if comm_of(pid).as_deref() == Some("claude") {
                child = Some(c);
                break;
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = child.expect("a claude running under setsid");
        let pid = child.0.id();

        let found = scan(&town, &[], &[], Duration::ZERO);
        assert!(found.count >= 1, "{found:?}");
        let example = found.examples.iter().find(|o| o.pid == pid);
        assert!(
            example.is_some_and(|o| o.comm == "claude" && o.memory_mb > 0.0),
            "{found:?}"
        );
        assert!(found.memory_mb > 0.0);
        // Owned by itself, or by an ancestor (this test).
        for owner in [pid, std::process::id()] {
            let owned = scan(&town, &[owner], &[], Duration::ZERO);
            assert!(owned.examples.iter().all(|o| o.pid != pid), "{owned:?}");
        }
        // Too young for the default minimum age; outside another town.
        let young = scan(&town, &[], &[], MIN_ORPHAN_AGE);
        assert!(young.examples.iter().all(|o| o.pid != pid), "{young:?}");
        let elsewhere = scan(&bin, &[], &[], Duration::ZERO);
        assert!(
            elsewhere.examples.iter().all(|o| o.pid != pid),
            "{elsewhere:?}"
        );
        // Working where a retiring agent worked: that agent counts it, the town does not.
        let skipped = scan(&town, &[], std::slice::from_ref(&town), Duration::ZERO);
        assert!(skipped.examples.iter().all(|o| o.pid != pid), "{skipped:?}");
        drop(child);
    }
}
