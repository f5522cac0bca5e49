//! Status on a big database: the latency of `status --json` on 10M metric rows (seven days of
//! a 1000-series fleet), against the original daemon's summary queries on the same database,
//! measured in the same run.
//!
//! Run: `cargo bench --bench status` (ROWS and RUNS environment variables tune it).
//!
//! The original kept no index on `timestamp` (a `(type, id, metric, timestamp)` index costs
//! ~15x on inserts, docs/ARCHITECTURE.md, "Index choice"), so its queries are run `NOT INDEXED`
//! on our tables as the baseline; the same queries using our `(timestamp, status)` index are
//! shown too.

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use health_monitor::model::format_timestamp;
use health_monitor::store::open_for_writing;
use rusqlite::{Connection, params};

const SERIES: usize = 1000;
const DAYS: i64 = 7;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills a database with `rows` metric rows over the last seven days, oldest first (as a
/// daemon writes them), plus 50 active and 5000 resolved alerts.
fn build(path: &Path, rows: usize) {
    let mut conn = open_for_writing(path).unwrap();
    let now = Utc::now();
    let per_series = rows / SERIES;
    let step = chrono::Duration::seconds(DAYS * 86_400) / per_series as i32;
    let start = now - chrono::Duration::days(DAYS);
    let ids: Vec<String> = (0..SERIES / 10).map(|i| format!("agent-{i}")).collect();
    let metrics = [
        "agent_active",
        "agent_cpu_percent",
        "agent_memory_mb",
        "agent_process_count",
        "agent_open_files",
        "agent_orphan_count",
        "heartbeat_age_seconds",
        "workspace_size_mb",
        "workspace_file_count",
        "database_latency_ms",
    ];
    for sample in 0..per_series {
        let ts = format_timestamp(start + step * sample as i32);
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO health_metrics (resource_type, resource_id, metric_name, value,
                        threshold_warning, threshold_critical, timestamp, unit, status)
                     VALUES ('agent', ?1, ?2, ?3, 80, 95, ?4, 'MB', ?5)",
                )
                .unwrap();
            for (i, id) in ids.iter().enumerate() {
                for (j, metric) in metrics.iter().enumerate() {
                    let status = if (sample + i + j) % 97 == 0 {
                        "unhealthy"
                    } else {
                        "healthy"
                    };
                    stmt.execute(params![id, metric, (sample % 100) as f64, ts, status])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    let tx = conn.transaction().unwrap();
    for i in 0..5050 {
        let resolved = i >= 50;
        tx.execute(
            "INSERT INTO health_alerts (resource_type, resource_id, alert_type, severity, message,
                timestamp, metadata, resolved, resolved_at)
             VALUES ('agent', ?1, 'agent_memory_mb', 'critical', 'memory high', ?2, '{}', ?3, ?4)",
            params![
                format!("agent-{}", i % 100),
                format_timestamp(now - chrono::Duration::minutes(i as i64)),
                resolved,
                resolved.then(|| format_timestamp(now)),
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// The original's summary: recent count, counts by status over the last hour, active alerts.
fn original_summary(conn: &Connection, not_indexed: bool) -> (i64, usize) {
    let hint = if not_indexed { "NOT INDEXED" } else { "" };
    let since = format_timestamp(Utc::now() - chrono::Duration::hours(1));
    let total: i64 = conn
        .query_row(
            &format!("SELECT COUNT(*) FROM health_metrics {hint} WHERE timestamp > ?1"),
            [&since],
            |r| r.get(0),
        )
        .unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT status, COUNT(*) FROM health_metrics {hint} WHERE timestamp > ?1 GROUP BY status"
        ))
        .unwrap();
    let by_status = stmt
        .query_map([&since], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
        .count();
    let mut stmt = conn
        .prepare(
            "SELECT resource_type, resource_id, alert_type, severity, message, timestamp
             FROM health_alerts WHERE resolved = 0 ORDER BY timestamp DESC",
        )
        .unwrap();
    let alerts = stmt.query_map([], |_| Ok(())).unwrap().count();
    (total, by_status + alerts)
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `health-monitor ... status --json` and returns its wall time and output size.
fn status_command(db: &Path, socket: &Path) -> (Duration, usize) {
    let (elapsed, out) = time(|| {
        Command::new(env!("CARGO_BIN_EXE_health-monitor"))
            .args(["status", "--json", "--db-path"])
            .arg(db)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, out.stdout.len())
}

fn main() {
    let rows = env_usize("ROWS", 10_000_000);
    let runs = env_usize("RUNS", 9);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let socket = dir.path().join("big.sock");
    let (built, ()) = time(|| build(&db, rows));
    let size_mb = std::fs::metadata(&db).unwrap().len() as f64 / 1e6;
    println!(
        "status: {rows} metric rows over {DAYS} days ({size_mb:.0} MB) built in {:.1} s",
        built.as_secs_f64()
    );

    let conn =
        Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let (mut baseline, mut indexed, mut offline) = (Vec::new(), Vec::new(), Vec::new());
    let mut recent = 0;
    // Interleaved, so a noisy moment hits all three alike.
    for _ in 0..runs {
        let (t, (n, _)) = time(|| original_summary(&conn, true));
        baseline.push(t);
        recent = n;
        indexed.push(time(|| original_summary(&conn, false)).0);
        offline.push(status_command(&db, &socket).0);
    }
    println!("  last hour: {recent} rows");
    println!(
        "  original's summary queries, no timestamp index (baseline): median {:.1} ms",
        ms(median(baseline.clone()))
    );
    println!(
        "  the same queries on our (timestamp, status) index:         median {:.1} ms",
        ms(median(indexed))
    );
    let ours = median(offline);
    println!(
        "  `health-monitor status --json`, no daemon (whole process):   median {:.1} ms  ratio {:.3} of baseline  target < 50 ms",
        ms(ours),
        ours.as_secs_f64() / median(baseline.clone()).as_secs_f64()
    );

    // With a daemon running on the same database: the answer comes over its socket.
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_health-monitor"))
        .args(["start", "--interval", "30", "--db-path"])
        .arg(&db)
        .arg("--socket")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let live: Vec<Duration> = (0..runs).map(|_| status_command(&db, &socket).0).collect();
    let live = median(live);
    println!(
        "  `health-monitor status --json`, daemon running (socket):     median {:.1} ms  ratio {:.3} of baseline  target < 50 ms",
        ms(live),
        live.as_secs_f64() / median(baseline).as_secs_f64()
    );
    let _ = Command::new(env!("CARGO_BIN_EXE_health-monitor"))
        .args(["stop", "--db-path"])
        .arg(&db)
        .arg("--socket")
        .arg(&socket)
        .output();
    let _ = daemon.wait();
}
