//! Ingest: metrics per second from the analyzer through the writer thread into a file database
//! with the real schema and indexes, against the ceiling of a raw rusqlite batched insert of the
//! same rows into the same schema, measured in the same run. As in the daemon, every row is
//! also summed into its series' rollups, whose closed buckets go to the writer each second.
//!
//! Run: `cargo bench --bench ingest` (ROWS and RUNS environment variables tune it).

// A bench is a test harness of its own: a failed unwrap is its failure report.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use health_monitor::actors::writer::{self, WriterConfig};
use health_monitor::analysis::AnalyzerCore;
use health_monitor::config::RestartPolicy;
use health_monitor::model::{HealthMetric, Measurement, ResourceType, format_timestamp};
use health_monitor::rules::RuleTable;
use health_monitor::store::open_for_writing;
use health_monitor::store::write::WriteOp;
use rusqlite::params;

/// Readings per collector message, as an agent collector sends them.
const PER_MESSAGE: usize = 8;
/// Rows per transaction in the baseline (the writer's own batch limit).
const BASELINE_BATCH: usize = 10_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn readings(n: usize) -> Vec<Measurement> {
    (0..n)
        .map(|i| {
            let mut m = Measurement::now(
                ResourceType::Workspace,
                &format!("ws-{}", i % 100),
                "workspace_size_mb",
                (i % 900) as f64,
                "MB",
            );
            m.timestamp = Utc::now();
            m
        })
        .collect()
}

/// The ceiling: the same rows, analyzed beforehand, inserted by one prepared statement in
/// large transactions on one connection.
fn raw_insert(rows: &[HealthMetric]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_for_writing(&dir.path().join("raw.db")).unwrap();
    let start = Instant::now();
    for chunk in rows.chunks(BASELINE_BATCH) {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO health_metrics (resource_type, resource_id, metric_name, value,
                        threshold_warning, threshold_critical, timestamp, unit, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .unwrap();
            for m in chunk {
                stmt.execute(params![
                    m.resource_type.as_str(),
                    m.resource_id,
                    m.metric_name,
                    m.value,
                    m.threshold_warning,
                    m.threshold_critical,
                    format_timestamp(m.timestamp),
                    m.unit,
                    m.status.as_str(),
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    start.elapsed()
}

/// Ours: collector-sized messages through the analyzer core and the writer thread, until the
/// writer confirms everything is committed.
fn pipeline(batch: &[Measurement]) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hm.db");
    // Locked and watched as the daemon's is, so the path check before each commit is measured.
    let file = health_monitor::store::file::DatabaseFile::lock(&path).unwrap();
    let conn = open_for_writing(&path).unwrap();
    let (handle, thread) = writer::spawn(
        writer::opener(path),
        Some(conn),
        Some(file),
        WriterConfig::default(),
        RestartPolicy::default(),
    )
    .unwrap();
    let mut core = AnalyzerCore::new(RuleTable::default(), Duration::from_secs(300));
    let messages: Vec<Vec<Measurement>> = batch.chunks(PER_MESSAGE).map(|c| c.to_vec()).collect();
    // Each simulated collector always reports the same resources, as real ones do: message k
    // covers resources 8k..8k+7 of 100, which repeat every 25 messages.
    let sources: Vec<String> = (0..25).map(|i| format!("collector:{i}")).collect();
    // The analyzer also sums every row into its series' rollups (for the dashboard's charts),
    // and hands closed buckets over on its 1 s beat.
    let mut rollups = health_monitor::rollup::Rollups::default();
    let mut last_beat = Instant::now();
    let start = Instant::now();
    for (k, msg) in messages.into_iter().enumerate() {
        let source = &sources[k % sources.len()];
        let analysis = core.analyze_from(source, &msg, Utc::now());
        for m in &analysis.metrics {
            rollups.observe(m);
        }
        let mut ops = analysis.into_write_ops();
        if last_beat.elapsed() >= Duration::from_secs(1) {
            last_beat = Instant::now();
            let closed = rollups.take_closed(Utc::now());
            if !closed.is_empty() {
                ops.push(WriteOp::Rollups(closed));
            }
        }
        // The daemon's analyzer never blocks: a full queue would count a refusal. Here we
        // want the sustained rate, so wait for room instead of dropping.
        loop {
            match handle.submit(ops) {
                Ok(()) => break,
                Err(back) => {
                    ops = back;
                    std::thread::yield_now();
                }
            }
        }
    }
    let rest = rollups.take_all();
    while handle.submit(vec![WriteOp::Rollups(rest.clone())]).is_err() {
        std::thread::yield_now();
    }
    handle.flush_blocking(Duration::from_secs(600)).unwrap();
    let took = start.elapsed();
    handle.shutdown_blocking(Duration::from_secs(60)).unwrap();
    thread.join().unwrap();
    took
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let n = env_usize("ROWS", 200_000);
    let runs = env_usize("RUNS", 5);
    let batch = readings(n);
    let mut core = AnalyzerCore::new(RuleTable::default(), Duration::from_secs(300));
    let analyzed = core.analyze(&batch, Utc::now()).metrics;
    let (mut raw_rates, mut ours_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // Interleaved, so drift on a noisy machine hits both sides alike.
        let raw = n as f64 / raw_insert(&analyzed).as_secs_f64();
        let ours = n as f64 / pipeline(&batch).as_secs_f64();
        raw_rates.push(raw);
        ours_rates.push(ours);
        ratios.push(ours / raw);
    }
    println!(
        "ingest: {n} rows x {runs} runs (medians)\n  baseline raw rusqlite batched insert: {:.0} rows/s\n  analyzer + writer thread:             {:.0} rows/s\n  ratio ours/baseline: {:.2} (target >= 0.80), ours >= 100k rows/s: {}",
        median(raw_rates),
        median(ours_rates.clone()),
        median(ratios),
        median(ours_rates) >= 100_000.0
    );
}
