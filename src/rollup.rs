//! Rollups of every series (min, max, sum and count of its samples) per minute and per ten
//! minutes, so a chart of a week of 1 s samples reads 1,008 rows, not 604,800. The analyzer
//! feeds every metric row through [`Rollups::observe`]; a bucket's row is written
//! (`metric_rollups`) when the series moves past it, when it stops reporting, and at shutdown.
//! Rows of one bucket written twice (a flush at shutdown, then more samples after a restart)
//! merge in the database. Minutes are kept two days ([`MINUTE_RETENTION_SECS`]), ten-minute
//! buckets as long as the metric rows.
//!
//! The last hour of each resource's main metric ([`main_metric`]) is also kept in memory, for
//! the dashboard's sparklines: 1000 resources would otherwise cost 1000 range reads a page.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog;
use crate::model::{HealthMetric, ResourceType};

/// The width of the fine rollup bucket, in seconds.
pub const BUCKET_SECS: i64 = 60;
/// The width of the coarse rollup bucket, in seconds.
pub const COARSE_SECS: i64 = 600;
/// How long minute buckets are kept: charts up to a day read them.
pub const MINUTE_RETENTION_SECS: i64 = 2 * 86_400;
/// Closed buckets of a main metric kept in memory: an hour.
const RECENT_BUCKETS: usize = 60;

/// One minute of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollupRow {
    /// The series' resource type.
    pub resource_type: ResourceType,
    /// The series' resource id.
    pub resource_id: String,
    /// The series' metric.
    pub metric: String,
    /// The bucket's start, in Unix seconds (a multiple of `width`).
    pub bucket_start: i64,
    /// The bucket's width in seconds: [`BUCKET_SECS`] or [`COARSE_SECS`].
    pub width: i64,
    /// The smallest sample of the minute.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
    /// The sum of the samples.
    pub sum: f64,
    /// How many samples.
    pub count: u64,
}

/// A bucket being filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Acc {
    /// The minute's start, in Unix seconds.
    pub bucket_start: i64,
    /// The smallest sample so far.
    pub min: f64,
    /// The largest sample so far.
    pub max: f64,
    /// The sum of the samples so far.
    pub sum: f64,
    /// How many samples so far.
    pub count: u64,
}

impl Acc {
    fn new(bucket_start: i64, value: f64) -> Self {
        Acc {
            bucket_start,
            min: value,
            max: value,
            sum: value,
            count: 1,
        }
    }

    fn add(&mut self, value: f64) {
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        self.count += 1;
    }

    /// Folds another bucket's samples into this one.
    pub fn merge(&mut self, other: &Acc) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = Acc {
                bucket_start: self.bucket_start,
                ..*other
            };
            return;
        }
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The mean of the samples.
    pub fn avg(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

/// The metric a resource's sparkline shows: the catalogue's first choice among those it has.
pub fn main_metric(resource_type: ResourceType) -> Option<&'static str> {
    Some(match resource_type {
        ResourceType::Cpu => catalog::CPU_USAGE_PERCENT,
        ResourceType::Memory => catalog::MEMORY_USAGE_PERCENT,
        ResourceType::Filesystem => catalog::DISK_USAGE_PERCENT,
        ResourceType::Agent => catalog::AGENT_MEMORY_MB,
        ResourceType::Workspace => catalog::WORKSPACE_SIZE_MB,
        ResourceType::Database => catalog::DATABASE_LATENCY_MS,
        ResourceType::Check => catalog::CHECK_DURATION_MS,
        ResourceType::Network => return None,
    })
}

/// One series' open minute and ten minutes and, for a main metric, its last hour of closed
/// minutes.
#[derive(Debug, Clone)]
struct SeriesAcc {
    open: Acc,
    coarse: Acc,
    recent: Option<VecDeque<Acc>>,
}

impl SeriesAcc {
    fn new(bucket: i64, value: f64, main: bool) -> Self {
        SeriesAcc {
            open: Acc::new(bucket, value),
            coarse: Acc {
                count: 0,
                ..Acc::new(coarse_of(bucket), value)
            },
            recent: main.then(VecDeque::new),
        }
    }

    /// Closes the open minute into `closed` (and into the ten minutes it belongs to), then
    /// starts `next` (when given) or leaves it empty.
    fn close_minute(&mut self, key: (ResourceType, &str, &str), closed: &mut Vec<RollupRow>) {
        let done = self.open;
        self.open.count = 0;
        if done.count == 0 {
            return;
        }
        closed.push(row(key, &done, BUCKET_SECS));
        if let Some(recent) = &mut self.recent {
            recent.push_back(done);
            while recent.len() > RECENT_BUCKETS {
                recent.pop_front();
            }
        }
        let coarse = coarse_of(done.bucket_start);
        if coarse != self.coarse.bucket_start {
            self.close_coarse(key, closed);
            self.coarse = Acc {
                count: 0,
                ..Acc::new(coarse, 0.0)
            };
        }
        self.coarse.merge(&done);
    }

    fn close_coarse(&mut self, key: (ResourceType, &str, &str), closed: &mut Vec<RollupRow>) {
        if self.coarse.count > 0 {
            closed.push(row(key, &self.coarse, COARSE_SECS));
            self.coarse.count = 0;
        }
    }
}

/// The ten minutes a bucket start falls in.
fn coarse_of(bucket_start: i64) -> i64 {
    bucket_start.div_euclid(COARSE_SECS) * COARSE_SECS
}

/// Open buckets per resource type, id and metric (nested so lookups borrow `&str`).
type Open = HashMap<ResourceType, HashMap<String, HashMap<String, SeriesAcc>>>;

/// Every series' open minute, and the closed minutes waiting to be written.
#[derive(Debug, Default)]
pub struct Rollups {
    open: Open,
    closed: Vec<RollupRow>,
}

/// The minute `t` falls in, in Unix seconds.
pub fn bucket_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(BUCKET_SECS) * BUCKET_SECS
}

fn row((t, id, metric): (ResourceType, &str, &str), acc: &Acc, width: i64) -> RollupRow {
    RollupRow {
        resource_type: t,
        resource_id: id.to_string(),
        metric: metric.to_string(),
        bucket_start: acc.bucket_start,
        width,
        min: acc.min,
        max: acc.max,
        sum: acc.sum,
        count: acc.count,
    }
}

impl Rollups {
    /// Adds one metric row's sample to its series' minute; a series moving to a later minute
    /// closes the earlier one. A sample older than its series' open minute (a clock step back)
    /// starts that minute again: the rows merge in the database.
    pub fn observe(&mut self, m: &HealthMetric) {
        if !m.value.is_finite() {
            return;
        }
        let bucket = bucket_of(m.timestamp);
        let by_id = self.open.entry(m.resource_type).or_default();
        if !by_id.contains_key(m.resource_id.as_str()) {
            by_id.insert(m.resource_id.clone(), HashMap::new());
        }
        let Some(by_name) = by_id.get_mut(m.resource_id.as_str()) else {
            return;
        };
        let key = (
            m.resource_type,
            m.resource_id.as_str(),
            m.metric_name.as_ref(),
        );
        match by_name.get_mut(m.metric_name.as_ref()) {
            Some(series) if series.open.bucket_start == bucket && series.open.count > 0 => {
                series.open.add(m.value)
            }
            Some(series) => {
                series.close_minute(key, &mut self.closed);
                series.open = Acc::new(bucket, m.value);
            }
            None => {
                let main = main_metric(m.resource_type) == Some(m.metric_name.as_ref());
                by_name.insert(
                    m.metric_name.to_string(),
                    SeriesAcc::new(bucket, m.value, main),
                );
            }
        }
    }

    /// Closes the minutes of series that have not reported since before `now`'s minute, and
    /// forgets series silent for an hour; returns every closed minute not yet taken.
    pub fn take_closed(&mut self, now: DateTime<Utc>) -> Vec<RollupRow> {
        let current = bucket_of(now);
        let forget_before = current - BUCKET_SECS * RECENT_BUCKETS as i64;
        for (t, by_id) in &mut self.open {
            for (id, by_name) in by_id.iter_mut() {
                by_name.retain(|metric, series| {
                    let key = (*t, id.as_str(), metric.as_str());
                    if series.open.count > 0 && series.open.bucket_start < current {
                        // Emptied, not removed: the series keeps its recent history.
                        series.close_minute(key, &mut self.closed);
                    }
                    if series.coarse.bucket_start < coarse_of(current) {
                        series.close_coarse(key, &mut self.closed);
                    }
                    series.open.bucket_start >= forget_before
                });
            }
            by_id.retain(|_, by_name| !by_name.is_empty());
        }
        std::mem::take(&mut self.closed)
    }

    /// Every minute not yet written, the open ones included (at shutdown).
    pub fn take_all(&mut self) -> Vec<RollupRow> {
        let mut rows = std::mem::take(&mut self.closed);
        for (t, by_id) in &mut self.open {
            for (id, by_name) in by_id.iter_mut() {
                for (metric, series) in by_name.iter_mut() {
                    let key = (*t, id.as_str(), metric.as_str());
                    series.close_minute(key, &mut rows);
                    series.close_coarse(key, &mut rows);
                }
            }
        }
        rows
    }

    /// The open minute of a series, if it has samples (a chart's newest point).
    pub fn open_bucket(&self, t: ResourceType, id: &str, metric: &str) -> Option<Acc> {
        self.open
            .get(&t)?
            .get(id)?
            .get(metric)
            .map(|s| s.open)
            .filter(|a| a.count > 0)
    }

    /// The last hour of a resource's main metric, oldest first, the open minute last.
    pub fn recent_main(&self, t: ResourceType, id: &str) -> Vec<Acc> {
        let Some(series) = main_metric(t).and_then(|m| self.open.get(&t)?.get(id)?.get(m)) else {
            return Vec::new();
        };
        let mut out: Vec<Acc> = series.recent.iter().flatten().copied().collect();
        if series.open.count > 0 {
            out.push(series.open);
        }
        out
    }

    /// Forgets a resource whose monitor was removed.
    pub fn forget(&mut self, t: ResourceType, id: &str) -> Vec<RollupRow> {
        let mut rows = Vec::new();
        if let Some(by_name) = self.open.get_mut(&t).and_then(|by_id| by_id.remove(id)) {
            for (metric, mut series) in by_name {
                let key = (t, id, metric.as_str());
                series.close_minute(key, &mut rows);
                series.close_coarse(key, &mut rows);
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Measurement;

    fn metric(name: &'static str, value: f64, at: DateTime<Utc>) -> HealthMetric {
        let m = Measurement {
            timestamp: at,
            ..Measurement::now(ResourceType::Workspace, "w1", name, value, "MB")
        };
        HealthMetric::from_measurement(m, None)
    }

    fn t(secs: i64) -> DateTime<Utc> {
        // A minute boundary (1_800_000_000 is a multiple of 60).
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_minute_closes_when_its_series_moves_on_or_goes_quiet() {
        let mut r = Rollups::default();
        for (s, v) in [(0, 1.0), (20, 5.0), (59, 3.0)] {
            r.observe(&metric("workspace_size_mb", v, t(s)));
        }
        assert!(r.take_closed(t(59)).is_empty());
        r.observe(&metric("workspace_size_mb", 10.0, t(61)));
        let closed = r.take_closed(t(61));
        assert_eq!(closed.len(), 1);
        let row = &closed[0];
        assert_eq!((row.min, row.max, row.sum, row.count), (1.0, 5.0, 9.0, 3));
        assert_eq!((row.bucket_start, row.width), (t(0).timestamp(), 60));
        // Nothing since 61 s: at 130 s the second minute closes on its own.
        let closed = r.take_closed(t(130));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].sum, 10.0);
        // The ten minutes close past their end, with both minutes in them.
        let closed = r.take_closed(t(600));
        assert_eq!(closed.len(), 1);
        let coarse = &closed[0];
        assert_eq!((coarse.width, coarse.count, coarse.sum), (600, 4, 19.0));
        assert_eq!((coarse.min, coarse.max), (1.0, 10.0));
        // Its history is kept for the sparkline, oldest first.
        let recent = r.recent_main(ResourceType::Workspace, "w1");
        assert_eq!(recent.iter().map(Acc::avg).collect::<Vec<_>>(), [3.0, 10.0]);
    }

    #[test]
    fn at_shutdown_the_open_minutes_are_written_too_and_only_main_metrics_keep_history() {
        let mut r = Rollups::default();
        r.observe(&metric("workspace_size_mb", 2.0, t(0)));
        r.observe(&metric("workspace_file_count", 7.0, t(0)));
        assert_eq!(
            r.open_bucket(ResourceType::Workspace, "w1", "workspace_file_count")
                .unwrap()
                .sum,
            7.0
        );
        let mut all = r.take_all();
        all.sort_by(|a, b| (&a.metric, a.width).cmp(&(&b.metric, b.width)));
        let got: Vec<(&str, i64)> = all.iter().map(|r| (r.metric.as_str(), r.width)).collect();
        assert_eq!(
            got,
            [
                ("workspace_file_count", 60),
                ("workspace_file_count", 600),
                ("workspace_size_mb", 60),
                ("workspace_size_mb", 600)
            ]
        );
        assert!(r.take_all().is_empty(), "written once");
        r.observe(&metric("workspace_file_count", 1.0, t(70)));
        r.take_closed(t(200));
        assert!(r.recent_main(ResourceType::Workspace, "w1").len() <= 1);
    }

    #[test]
    fn an_hour_of_history_at_most_and_silent_series_are_forgotten() {
        let mut r = Rollups::default();
        for minute in 0..90 {
            r.observe(&metric("workspace_size_mb", minute as f64, t(minute * 60)));
        }
        r.take_closed(t(90 * 60));
        let recent = r.recent_main(ResourceType::Workspace, "w1");
        assert_eq!(recent.len(), 60);
        assert_eq!(recent.last().unwrap().avg(), 89.0);
        r.take_closed(t(200 * 60));
        assert!(r.recent_main(ResourceType::Workspace, "w1").is_empty());
    }
}
