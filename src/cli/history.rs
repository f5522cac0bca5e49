//! `history TYPE ID METRIC`: one series from the database, with min, average, max and a
//! terminal sparkline.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use super::alerts::parse_duration;
use crate::alerts::format_value;
use crate::catalog;
use crate::config::Settings;
use crate::control::client;
use crate::control::protocol::{Request, validate_resource_id};
use crate::model::{ResourceType, format_timestamp};
use crate::store::query::{self, Point};
use crate::store::{self};

/// Width of the sparkline in characters.
const SPARK_WIDTH: usize = 60;
/// Points listed in text mode (the newest); `--json` has them all.
const TEXT_POINTS: usize = 20;

/// `history` options.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Resource type: agent, workspace, database, filesystem, memory, cpu
    pub resource_type: ResourceType,
    /// Resource id, e.g. a1, w1, system, /home
    pub resource_id: String,
    /// Metric name, e.g. agent_memory_mb (see the README's metric table)
    pub metric: String,
    /// How far back, e.g. 30m, 1h, 7d
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,
    /// Print the series and its statistics as JSON
    #[arg(long)]
    pub json: bool,
}

/// The series with its statistics, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct History {
    /// The resource type asked for.
    pub resource_type: ResourceType,
    /// The resource id asked for.
    pub resource_id: String,
    /// The metric asked for.
    pub metric: String,
    /// The values' unit (`MB`, `%`...); `None` for a metric neither stored nor known.
    pub unit: Option<String>,
    /// Start of the window (now minus `--since`), as an RFC 3339 timestamp.
    pub since: String,
    /// Points in the window.
    pub count: usize,
    /// Smallest value; `None` when there are no points.
    pub min: Option<f64>,
    /// Mean of the values; `None` when there are no points.
    pub avg: Option<f64>,
    /// Largest value; `None` when there are no points.
    pub max: Option<f64>,
    /// Every sample in the window, oldest first.
    pub points: Vec<Point>,
}

impl History {
    /// Computes the statistics of `points`.
    pub fn new(
        args: &HistoryArgs,
        since: DateTime<Utc>,
        points: Vec<Point>,
        unit: Option<String>,
    ) -> Self {
        let values = points.iter().map(|p| p.value);
        let (min, max) =
            values
                .clone()
                .fold((None, None), |(lo, hi): (Option<f64>, Option<f64>), v| {
                    (
                        Some(lo.map_or(v, |l| l.min(v))),
                        Some(hi.map_or(v, |h| h.max(v))),
                    )
                });
        // A float sum divided back can land an ulp outside the range (five equal values whose
        // sum rounds up): the mean of values is never above their max nor below their min.
        let avg = (!points.is_empty()).then(|| {
            let mean = values.sum::<f64>() / points.len() as f64;
            match (min, max) {
                (Some(lo), Some(hi)) => mean.clamp(lo, hi),
                _ => mean,
            }
        });
        History {
            resource_type: args.resource_type,
            resource_id: args.resource_id.clone(),
            metric: args.metric.clone(),
            unit,
            since: format_timestamp(since),
            count: points.len(),
            min,
            avg,
            max,
            points,
        }
    }
}

/// A sparkline of `values` in at most `width` characters: each character is the mean of its
/// share of the points, scaled between the series' min and max.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let buckets = values.len().min(width);
    let means: Vec<f64> = (0..buckets)
        .map(|b| {
            let start = b * values.len() / buckets;
            let end = ((b + 1) * values.len() / buckets).max(start + 1);
            let slice = &values[start..end];
            slice.iter().sum::<f64>() / slice.len() as f64
        })
        .collect();
    let lo = means.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    means
        .iter()
        .map(|v| {
            if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
                BARS[3] // A flat line sits in the middle, not on the floor.
            } else {
                BARS[(((v - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// Renders the history for people.
pub(crate) fn render(h: &History) -> String {
    let unit = h.unit.as_deref().unwrap_or("");
    let n = |v: Option<f64>| v.map(|v| format_value(v, unit)).unwrap_or("-".into());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} {} since {}: {} points",
        h.resource_type, h.resource_id, h.metric, h.since, h.count
    );
    if h.points.is_empty() {
        return out;
    }
    let values: Vec<f64> = h.points.iter().map(|p| p.value).collect();
    let _ = writeln!(out, "min {}  avg {}  max {}", n(h.min), n(h.avg), n(h.max));
    let _ = writeln!(out, "{}", sparkline(&values, SPARK_WIDTH));
    let first = h
        .points
        .first()
        .map(|p| p.timestamp.format("%Y-%m-%d %H:%M:%S"));
    let last = h
        .points
        .last()
        .map(|p| p.timestamp.format("%Y-%m-%d %H:%M:%S"));
    if let (Some(first), Some(last)) = (first, last) {
        let _ = writeln!(out, "{first} .. {last} UTC");
    }
    let shown = h.points.len().min(TEXT_POINTS);
    if shown < h.points.len() {
        let _ = writeln!(
            out,
            "\nlast {shown} points (--json for all {}):",
            h.points.len()
        );
    } else {
        out.push('\n');
    }
    for p in &h.points[h.points.len() - shown..] {
        let _ = writeln!(
            out,
            "{}  {:>12}  {}",
            p.timestamp.format("%Y-%m-%d %H:%M:%S"),
            format_value(p.value, unit),
            p.status.as_str()
        );
    }
    out
}

/// Runs `history`.
pub fn history(args: &HistoryArgs, settings: &Settings) -> anyhow::Result<()> {
    validate_resource_id(args.resource_type, &args.resource_id).map_err(anyhow::Error::msg)?;
    if !super::database_exists(settings)? {
        // History lives only in the database: a daemon answering cannot stand in for it.
        match client::request(&settings.socket_path, &Request::Ping {}) {
            Ok(data) => bail!(
                "no database at {}, though a daemon{} answers on {}: history is read from the \
                 database, so pass the daemon's --db-path",
                settings.db_path.display(),
                data.get("pid")
                    .and_then(serde_json::Value::as_u64)
                    .map(|p| format!(" (pid {p})"))
                    .unwrap_or_default(),
                settings.socket_path.display()
            ),
            Err(_) => return Err(super::missing_database(settings)),
        }
    }
    store::check_is_database(&settings.db_path)?;
    let since = Utc::now() - chrono::Duration::from_std(args.since)?;
    let (points, unit) = match store::open_read_only(&settings.db_path)? {
        Some(conn) => query::series(
            &conn,
            args.resource_type,
            &args.resource_id,
            &args.metric,
            since,
        )?,
        None => (Vec::new(), None),
    };
    let unit = unit.or_else(|| catalog::lookup(&args.metric).map(|m| m.unit.to_string()));
    let h = History::new(args, since, points, unit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(());
    }
    print!("{}", render(&h));
    if h.count == 0 && catalog::lookup(&args.metric).is_none() {
        let known: Vec<&str> = catalog::METRICS.iter().map(|m| m.name).collect();
        println!(
            "({} is not a metric this daemon writes; known: {})",
            args.metric,
            known.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_between_min_and_max() {
        assert_eq!(sparkline(&[0.0, 7.0], 60), "▁█");
        assert_eq!(
            sparkline(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], 60),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0, 5.0, 5.0], 60), "▄▄▄");
        assert_eq!(sparkline(&[], 60), "");
        // 1000 points fold into the width, each character the mean of its share.
        let values: Vec<f64> = (0..1000)
            .map(|i| if i < 500 { 0.0 } else { 10.0 })
            .collect();
        let line = sparkline(&values, 10);
        assert_eq!(line, "▁▁▁▁▁█████");
    }

    #[test]
    fn statistics_and_text_show_the_series() {
        let args = HistoryArgs {
            resource_type: ResourceType::Agent,
            resource_id: "a1".into(),
            metric: "agent_memory_mb".into(),
            since: Duration::from_secs(3600),
            json: false,
        };
        let t0 = Utc::now();
        let points: Vec<Point> = [10.0, 30.0, 20.0]
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                timestamp: t0 + chrono::Duration::seconds(i as i64),
                value: *v,
                status: crate::model::HealthStatus::Healthy,
            })
            .collect();
        let h = History::new(&args, t0, points, Some("MB".into()));
        assert_eq!((h.min, h.avg, h.max), (Some(10.0), Some(20.0), Some(30.0)));
        let text = render(&h);
        assert!(text.contains("min 10 MB  avg 20 MB  max 30 MB"), "{text}");
        assert!(text.contains("▁█▅"), "{text}");
        assert!(text.contains("30 MB  healthy"), "{text}");
        let empty = History::new(&args, t0, Vec::new(), None);
        assert_eq!(empty.avg, None);
        // Three 0.1s sum to 0.30000000000000004, a third of which is above 0.1: the mean
        // stays within the values' range.
        let same: Vec<Point> = (0..3)
            .map(|i| Point {
                timestamp: t0 + chrono::Duration::seconds(i),
                value: 0.1,
                status: crate::model::HealthStatus::Healthy,
            })
            .collect();
        let h = History::new(&args, t0, same, None);
        assert_eq!((h.min, h.avg, h.max), (Some(0.1), Some(0.1), Some(0.1)));
        assert!(render(&empty).contains("0 points"));
    }
}
