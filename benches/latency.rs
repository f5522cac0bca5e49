//! Alert latency: time from a threshold breach (a file written into a watched workspace) to the
//! alert row committed in the database, against the target of one interval plus 100 ms.
//!
//! Run: `cargo bench --bench latency` (RUNS and INTERVAL environment variables tune it).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hm(args: &[&str], db: &Path, socket: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_health-monitor"))
        .args(args)
        .arg("--db-path")
        .arg(db)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

/// Active alerts on the workspace's size, read without disturbing the writer.
fn active(db: &Path) -> i64 {
    let Ok(conn) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row(
        "SELECT count(*) FROM health_alerts WHERE resource_id = 'lat'
         AND alert_type = 'workspace_size_mb' AND resolved = 0",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

/// Polls every 2 ms until `cond` holds; the time it took.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn main() {
    let runs = env_f64("RUNS", 10.0) as usize;
    let interval = env_f64("INTERVAL", 1.0);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lat.db");
    let socket = dir.path().join("lat.sock");
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let config = dir.path().join("config.toml");
    // Breached at 1 MB, critical far away: one alert per breach.
    std::fs::write(
        &config,
        "[thresholds.workspace_size_mb]\nwarning = 1\ncritical = 100000\n",
    )
    .unwrap();
    let out = hm(
        &["add", "workspace", "lat", "--path", ws.to_str().unwrap()],
        &db,
        &socket,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_health-monitor"))
            .args(["start", "--interval", &interval.to_string(), "--config"])
            .arg(&config)
            .arg("--db-path")
            .arg(&db)
            .arg("--socket")
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait(Duration::from_secs(30), || socket.exists()).expect("the daemon started");
    let limit = Duration::from_secs_f64(interval * 5.0 + 5.0);
    let mut latencies = Vec::new();
    for run in 0..runs {
        // Breach at a random point of the cycle: the file lands, then the clock starts.
        std::thread::sleep(Duration::from_millis(
            (run as u64 * 137) % (interval * 1000.0) as u64,
        ));
        let file = ws.join("big.bin");
        std::fs::write(&file, vec![1u8; 2 * 1024 * 1024]).unwrap();
        let breached = Instant::now();
        wait(limit, || active(&db) == 1).expect("the alert was committed");
        latencies.push(breached.elapsed());
        std::fs::remove_file(&file).unwrap();
        wait(limit, || active(&db) == 0).expect("the alert resolved");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = *latencies.last().unwrap();
    let target = Duration::from_secs_f64(interval) + Duration::from_millis(100);
    println!(
        "latency: breach (file written) to alert row committed, interval {interval} s, {runs} breaches"
    );
    println!(
        "  median {:.0} ms, worst {:.0} ms; target <= {:.0} ms (one interval + 100 ms): median is {:.2} of the target",
        median.as_secs_f64() * 1000.0,
        worst.as_secs_f64() * 1000.0,
        target.as_secs_f64() * 1000.0,
        median.as_secs_f64() / target.as_secs_f64()
    );
}
