//! Directory walks: our walk of a 200k-file tree against `du -sb` of the same tree, measured in
//! the same run, warm cache, runs interleaved.
//!
//! The tree (10 × 10 × 10 directories, one hidden at the top, 50 or 350 files in each leaf,
//! every 20th file hidden, sizes from empty to 1 MiB) is made once under
//! `<target>/bench-data/dirwalk-200k` and reused while its marker says it is complete. Its files
//! are sparse: apparent sizes are what both walks report, and making it takes seconds.
//!
//! A fast but wrong walk fails the bench: every timed walk must find exactly the totals an
//! independent reference walk (walkdir, one thread) finds, the reference must match what was
//! made, and du's total must equal the reference's file bytes plus its directories' own sizes.
//!
//! Then the same tree kept by a [`DirSizer`] with inotify watches: the time to measure it again
//! unchanged, and after one file appears or goes, as a fraction of a full walk.
//!
//! Run: `cargo bench --bench dirwalk` (RUNS sets the number of interleaved runs, default 7;
//! THREADS our walk's threads, default 2; DIRWALK_TREE another place for the tree).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use health_monitor::collect::dirwalk::{
    DEFAULT_WALK_THREADS, DirSizer, DirStats, SizeReading, WalkOutcome, walk_with,
};
use nix::sys::resource::{UsageWho, getrusage};

/// Bumped whenever the tree's shape changes, so an old tree is made again.
const SHAPE: &str = "dirwalk-200k v1";
const FANOUT: usize = 10;
const TOTAL_FILES: u64 = 200_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `<target>/bench-data`: the bench binary runs from `<target>/release/deps`.
fn bench_data() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.ancestors()
        .nth(3)
        .expect("the bench runs from <target>/<profile>/deps")
        .join("bench-data")
}

/// Apparent size of the `n`th file: mostly source-sized, one in a hundred large.
fn file_size(n: u64) -> u64 {
    if n % 100 == 7 {
        64 * 1024 + (n * 7919) % (960 * 1024)
    } else {
        (n * 131) % 4096
    }
}

/// Makes the tree at `root` (which must not exist) and returns its totals.
fn make_tree(root: &Path) -> DirStats {
    let mut made = DirStats::default();
    let mut n = 0u64;
    fs::create_dir_all(root).unwrap();
    for a in 0..FANOUT {
        let top = if a == 0 {
            ".cache".to_string()
        } else {
            format!("crate{a}")
        };
        for b in 0..FANOUT {
            for c in 0..FANOUT {
                let leaf = root
                    .join(&top)
                    .join(format!("mod{b}"))
                    .join(format!("part{c}"));
                fs::create_dir_all(&leaf).unwrap();
                // Small and large directories alike: 50 or 350 files, 200 on average.
                let files = if (a + b + c) % 2 == 0 { 50 } else { 350 };
                for f in 0..files {
                    let name = if f % 20 == 3 {
                        format!(".hidden{f}")
                    } else {
                        format!("file{f}.rs")
                    };
                    let size = file_size(n);
                    fs::File::create(leaf.join(name))
                        .and_then(|file| file.set_len(size))
                        .unwrap();
                    made.files += 1;
                    made.bytes += size;
                    n += 1;
                }
            }
        }
    }
    made.dirs = (FANOUT + FANOUT * FANOUT + FANOUT * FANOUT * FANOUT) as u64;
    assert_eq!(made.files, TOTAL_FILES);
    made
}

/// Where the re-measure part puts (and removes) its one changing file.
fn scratch(root: &Path) -> PathBuf {
    root.join("crate5/mod5/part5/bench-scratch")
}

/// The tree and its totals, made unless a complete one is there already.
fn tree() -> (PathBuf, DirStats) {
    let base = std::env::var_os("DIRWALK_TREE")
        .map(PathBuf::from)
        .unwrap_or_else(|| bench_data().join("dirwalk-200k"));
    let marker = base.with_extension("complete");
    if let Ok(text) = fs::read_to_string(&marker) {
        let mut lines = text.lines();
        if lines.next() == Some(SHAPE) {
            let nums: Vec<u64> = lines.filter_map(|l| l.parse().ok()).collect();
            if let [bytes, files, dirs] = nums[..] {
                let made = DirStats {
                    bytes,
                    files,
                    dirs,
                    errors: 0,
                };
                return (base, made);
            }
        }
    }
    // Absent, of another shape, or interrupted while being made: start over.
    let _ = fs::remove_file(&marker);
    if base.exists() {
        fs::remove_dir_all(&base).unwrap();
    }
    let started = Instant::now();
    let made = make_tree(&base);
    fs::write(
        &marker,
        format!("{SHAPE}\n{}\n{}\n{}\n", made.bytes, made.files, made.dirs),
    )
    .unwrap();
    println!(
        "made {} in {:.1} s",
        base.display(),
        started.elapsed().as_secs_f64()
    );
    (base, made)
}

/// The independent reference: walkdir on one thread, with directories' own sizes apart.
fn reference(root: &Path) -> (DirStats, u64) {
    let mut stats = DirStats::default();
    let mut dir_bytes = 0;
    for entry in walkdir::WalkDir::new(root).same_file_system(true) {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if entry.file_type().is_dir() {
            dir_bytes += meta.len();
            stats.dirs += u64::from(entry.depth() > 0);
        } else {
            stats.files += 1;
            stats.bytes += meta.len();
        }
    }
    (stats, dir_bytes)
}

fn du(root: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sb")
        .arg(root)
        .output()
        .expect("du runs");
    assert!(out.status.success(), "du failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du prints a byte count")
}

fn ours(root: &Path, threads: usize) -> DirStats {
    match walk_with(root, Duration::from_secs(600), threads).unwrap() {
        WalkOutcome::Complete(stats) => stats,
        WalkOutcome::TimedOut(_) => panic!("the walk hit its cap"),
    }
}

/// CPU seconds (user + system) used so far by `who`.
fn cpu(who: UsageWho) -> f64 {
    let usage = getrusage(who).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// Wall and CPU seconds of `f`, whose CPU is counted against `who`.
fn timed<T>(who: UsageWho, f: impl FnOnce() -> T) -> (T, f64, f64) {
    let cpu_before = cpu(who);
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed().as_secs_f64();
    (out, wall, cpu(who) - cpu_before)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Default)]
struct Series {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

fn main() {
    let runs = env_usize("RUNS", 7).max(1);
    let threads = env_usize("THREADS", DEFAULT_WALK_THREADS);
    let started = Instant::now();
    let (root, made) = tree();
    // Left behind by an interrupted run.
    let _ = fs::remove_file(scratch(&root));
    let load_before = loadavg();

    // Warm the caches, and check that everyone measures the same tree.
    let (want, dir_bytes) = reference(&root);
    assert_eq!(
        want, made,
        "the tree is not what was made: delete it to make it again"
    );
    let du_bytes = du(&root);
    assert_eq!(
        du_bytes,
        want.bytes + dir_bytes,
        "du counts something else than the reference"
    );
    assert_eq!(ours(&root, threads), want, "our walk is wrong");

    let (mut du_s, mut ours_s, mut serial_s) =
        (Series::default(), Series::default(), Series::default());
    let (mut ratio_wall, mut ratio_cpu, mut ratio_serial) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        // Interleaved, and in alternating order, so drift on a noisy machine hits all alike.
        let mut du_run = (0.0, 0.0);
        let mut ours_run = (0.0, 0.0);
        let mut serial_run = (0.0, 0.0);
        let mut order = ["du", "ours", "serial"];
        if run % 2 == 1 {
            order.reverse();
        }
        for which in order {
            match which {
                "du" => {
                    let (bytes, wall, cpu) = timed(UsageWho::RUSAGE_CHILDREN, || du(&root));
                    assert_eq!(bytes, du_bytes, "du's total changed");
                    du_run = (wall, cpu);
                }
                "ours" => {
                    let (stats, wall, cpu) = timed(UsageWho::RUSAGE_SELF, || ours(&root, threads));
                    assert_eq!(stats, want, "our walk is wrong");
                    ours_run = (wall, cpu);
                }
                _ => {
                    let (stats, wall, cpu) = timed(UsageWho::RUSAGE_SELF, || ours(&root, 1));
                    assert_eq!(stats, want, "our one-thread walk is wrong");
                    serial_run = (wall, cpu);
                }
            }
        }
        for (series, (wall, cpu)) in [
            (&mut du_s, du_run),
            (&mut ours_s, ours_run),
            (&mut serial_s, serial_run),
        ] {
            series.wall.push(wall);
            series.cpu.push(cpu);
        }
        ratio_wall.push(ours_run.0 / du_run.0);
        ratio_cpu.push(ours_run.1 / du_run.1);
        ratio_serial.push(serial_run.0 / du_run.0);
    }

    let remeasure = remeasure(&root, want, threads);
    let ratio = median(ratio_wall);
    let full = median(ours_s.wall.clone());
    println!(
        "dirwalk: {} files, {} dirs, {} bytes; {runs} interleaved runs, warm cache (medians)\n  \
         load average before/after: {load_before} / {}\n  \
         baseline du -sb:        {:.3} s wall, {:.3} s CPU\n  \
         {:<24}{:.3} s wall, {:.3} s CPU\n  \
         ours, 1 thread:         {:.3} s wall, {:.3} s CPU\n  \
         ratio ours/du wall: {ratio:.2} (target <= 0.80: {}), CPU: {:.2}, 1 thread wall: {:.2}\n  \
         watched ({} watches): first walk {:.3} s ({:.2}x a plain walk)\n  \
         re-measure unchanged:   {:.1} us = {:.4} % of a full walk (target <= 1 %: {})\n  \
         re-measure, 1 change:   {:.1} us = {:.3} % of a full walk\n  \
         total bench time {:.1} s",
        want.files,
        want.dirs,
        want.bytes,
        loadavg(),
        median(du_s.wall),
        median(du_s.cpu),
        format!("ours, {threads} threads:"),
        median(ours_s.wall),
        median(ours_s.cpu),
        median(serial_s.wall),
        median(serial_s.cpu),
        if ratio <= 0.80 { "met" } else { "NOT met" },
        median(ratio_cpu),
        median(ratio_serial),
        remeasure.watches,
        remeasure.build,
        remeasure.build / full,
        remeasure.unchanged * 1e6,
        100.0 * remeasure.unchanged / full,
        if remeasure.unchanged <= 0.01 * full {
            "met"
        } else {
            "NOT met"
        },
        remeasure.one_change * 1e6,
        100.0 * remeasure.one_change / full,
        started.elapsed().as_secs_f64(),
    );
}

struct Remeasure {
    watches: usize,
    /// Seconds of the first measurement, which builds the watches.
    build: f64,
    /// Median seconds to measure the unchanged tree again.
    unchanged: f64,
    /// Median seconds to measure it again after one file appeared or went.
    one_change: f64,
}

/// Times a [`DirSizer`] keeping the tree with inotify watches; checks every answer.
fn remeasure(root: &Path, want: DirStats, threads: usize) -> Remeasure {
    let poll = |sizer: &mut DirSizer| -> (DirStats, f64) {
        let started = Instant::now();
        let reading = sizer.poll(root, Duration::from_secs(600));
        let took = started.elapsed().as_secs_f64();
        match reading {
            SizeReading::Known(stats) => (stats, took),
            other => panic!("the sizer says {other:?}"),
        }
    };
    let mut sizer = DirSizer::with_threads(Duration::from_secs(600), threads);
    let (stats, build) = poll(&mut sizer);
    assert_eq!(stats, want, "the watched walk is wrong");
    let watches = sizer.watches();
    assert_eq!(
        watches as u64,
        want.dirs + 1,
        "not watching every directory"
    );
    let mut unchanged = Vec::new();
    for _ in 0..101 {
        let (stats, took) = poll(&mut sizer);
        assert_eq!(stats, want, "the unchanged tree measured again is wrong");
        unchanged.push(took);
    }
    let mut one_change = Vec::new();
    let extra = 12_345;
    for _ in 0..10 {
        fs::write(scratch(root), vec![0u8; extra]).unwrap();
        let (stats, took) = poll(&mut sizer);
        let grown = DirStats {
            bytes: want.bytes + extra as u64,
            files: want.files + 1,
            ..want
        };
        assert_eq!(stats, grown, "a new file measured again is wrong");
        one_change.push(took);
        fs::remove_file(scratch(root)).unwrap();
        let (stats, took) = poll(&mut sizer);
        assert_eq!(stats, want, "a removed file measured again is wrong");
        one_change.push(took);
    }
    assert_eq!(sizer.watches(), watches, "watches came or went");
    Remeasure {
        watches,
        build,
        unchanged: median(unchanged),
        one_change: median(one_change),
    }
}
