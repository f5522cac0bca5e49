//! Custom metrics pushed by agents and scripts (`report`, the socket's `report` op, `POST
//! /api/v1/metrics`): each report validated, each series remembered with its unit, thresholds
//! and TTL, and a series nobody reports in time marked stale. Plain logic: the analyzer actor
//! sweeps it once a second, the control service and the HTTP API feed it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::alerts::Condition;
use crate::analysis::PUSHED_SOURCE;
use crate::catalog;
use crate::model::{
    AlertKey, HealthStatus, Judgement, Measurement, ResourceType, Thresholds, validate_id,
};

/// Live pushed series accepted before new ones are refused (`[pushed] max_series`).
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// A series' TTL, when neither the report nor the config gives one, in daemon intervals.
pub const DEFAULT_TTL_INTERVALS: u32 = 3;
/// Longest metric name accepted.
const MAX_NAME: usize = 100;
/// Longest unit accepted.
const MAX_UNIT: usize = 16;
/// Longest TTL accepted: a week.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The rule a custom metric's name follows, for messages.
pub const METRIC_NAME_RULE: &str = "1 to 100 ASCII letters, digits and '_', not starting with a \
     digit, and not the name of a built-in metric or alert";

/// One metric of a report, as the socket and HTTP take it (the CLI builds the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportItem {
    /// The kind of resource it is about (`agent`, `workspace`, `check`...).
    pub resource_type: ResourceType,
    /// Which one; the id rules apply.
    pub resource_id: String,
    /// The metric's name ([`METRIC_NAME_RULE`]).
    pub metric: String,
    /// The reading.
    pub value: f64,
    /// Value at which it turns unhealthy; with `critical` above it, higher is worse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<f64>,
    /// Value at which it turns critical; below `warning`, lower is worse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
    /// Its unit (`ms`, `%`...); kept from earlier reports when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Seconds within which it must be reported again, or it goes stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
}

/// A series: its resource type, resource id and metric name.
pub type SeriesKey = (ResourceType, String, String);

/// What the daemon keeps of a series between reports, and stores in `pushed_series`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesDef {
    /// The series.
    pub resource_type: ResourceType,
    /// Its resource's id.
    pub resource_id: String,
    /// Its metric's name.
    pub metric: String,
    /// Its unit ('' when none was given).
    pub unit: String,
    /// Its own thresholds, from a report; `None` uses the config's `[thresholds.<metric>]`.
    pub thresholds: Option<Thresholds>,
    /// Its own TTL; `None` is the default.
    pub ttl_secs: Option<f64>,
}

impl SeriesDef {
    /// The series it defines.
    pub fn key(&self) -> SeriesKey {
        (
            self.resource_type,
            self.resource_id.clone(),
            self.metric.clone(),
        )
    }
}

/// A refused metric of a report: which one (0-based) and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// Its position in the report.
    pub index: usize,
    /// Why it was refused.
    pub error: String,
}

/// What a report came to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportOutcome {
    /// Metrics accepted: each becomes a row.
    pub accepted: usize,
    /// Metrics refused, each with its reason; the others were accepted all the same.
    pub refused: Vec<Refusal>,
}

/// What accepting a report leaves to do: measurements for the analyzer, definitions to store.
#[derive(Debug, Default)]
pub struct Accepted {
    /// The report's readings, with each series' thresholds.
    pub measurements: Vec<Measurement>,
    /// Series new or changed by the report, to store.
    pub changed: Vec<SeriesDef>,
    /// The answer to the reporter.
    pub outcome: ReportOutcome,
}

/// Checks a custom metric name against [`METRIC_NAME_RULE`].
pub fn validate_metric_name(name: &str) -> Result<(), String> {
    let shape_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !shape_ok {
        return Err(format!(
            "metric name {name:?} is not valid: {METRIC_NAME_RULE}"
        ));
    }
    if catalog::lookup(name).is_some() {
        return Err(format!(
            "metric {name:?} is a built-in metric, measured by health-monitor itself; pick \
             another name for a pushed metric (e.g. custom_{name})"
        ));
    }
    if is_reserved_alert(name) {
        return Err(format!(
            "metric {name:?} is the name of one of health-monitor's own alerts; pick another"
        ));
    }
    Ok(())
}

/// True for the alert types the daemon raises itself: a metric of that name would share their
/// alert key.
fn is_reserved_alert(name: &str) -> bool {
    catalog::CONDITIONS.iter().any(|c| c.name == name)
        || [
            crate::gastown::lifecycle::SESSION_DEATH,
            crate::gastown::lifecycle::MASS_DEATH,
        ]
        .contains(&name)
}

/// The thresholds a report gives, checked like the config's.
fn report_thresholds(item: &ReportItem) -> Result<Option<Thresholds>, String> {
    match (item.warning, item.critical) {
        (None, None) => Ok(None),
        (Some(w), Some(c)) => {
            if !w.is_finite() || !c.is_finite() {
                return Err("warning and critical must be finite numbers".into());
            }
            if w == c {
                return Err(format!(
                    "warning and critical are both {w}; they must differ (critical above \
                     warning: higher is worse; below: lower is worse)"
                ));
            }
            Ok(Some(Thresholds::new(w, c)))
        }
        _ => Err("give both --warning and --critical, or neither".into()),
    }
}

/// Checks one metric of a report; `Ok` is its series' definition as this report gives it.
fn check_item(item: &ReportItem) -> Result<(Option<Thresholds>, Option<f64>), String> {
    validate_id(&item.resource_id)?;
    validate_metric_name(&item.metric)?;
    if !item.value.is_finite() {
        return Err(format!(
            "value {} is not a finite number (NaN and infinities are refused)",
            item.value
        ));
    }
    if let Some(unit) = &item.unit
        && (unit.len() > MAX_UNIT || unit.chars().any(|c| c.is_control() || c == ' '))
    {
        return Err(format!(
            "unit {unit:?} must be at most {MAX_UNIT} characters without spaces"
        ));
    }
    if let Some(ttl) = item.ttl_secs
        && !(ttl >= 1.0 && ttl <= MAX_TTL.as_secs_f64())
    {
        return Err(format!(
            "ttl {ttl} s must be between 1 s and {} s (a week)",
            MAX_TTL.as_secs()
        ));
    }
    Ok((report_thresholds(item)?, item.ttl_secs))
}

/// One live series.
#[derive(Debug, Clone)]
struct Series {
    def: SeriesDef,
    /// When it goes stale unless reported again.
    deadline: DateTime<Utc>,
    /// True once its deadline passed without a report.
    stale: bool,
}

/// Every pushed series, their deadlines and what the analyzer still has to apply.
#[derive(Debug)]
pub struct Registry {
    series: HashMap<SeriesKey, Series>,
    max_series: usize,
    default_ttl: Duration,
    /// Resources whose `metric_stale` alert may have to change.
    dirty: BTreeSet<(ResourceType, String)>,
    /// Series gone stale or removed whose values the analyzer has yet to retire.
    to_retire: Vec<SeriesKey>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(
            DEFAULT_MAX_SERIES,
            Duration::from_secs(30 * u64::from(DEFAULT_TTL_INTERVALS)),
        )
    }
}

impl Registry {
    /// An empty registry: at most `max_series` live series, each stale after `default_ttl`
    /// unless it has its own.
    pub fn new(max_series: usize, default_ttl: Duration) -> Self {
        Registry {
            series: HashMap::new(),
            max_series,
            default_ttl,
            dirty: BTreeSet::new(),
            to_retire: Vec::new(),
        }
    }

    /// Sets the cap and the default TTL (from the settings, at start).
    pub fn set_limits(&mut self, max_series: usize, default_ttl: Duration) {
        self.max_series = max_series;
        self.default_ttl = default_ttl;
    }

    /// Live series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when nothing was ever pushed (or all was removed).
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn ttl_of(&self, def: &SeriesDef) -> Duration {
        def.ttl_secs
            .map_or(self.default_ttl, Duration::from_secs_f64)
    }

    /// Takes back the series stored before a restart. Their clocks start now: a reporter gets
    /// a whole TTL to reach the new daemon before its series counts as stale.
    pub fn restore(&mut self, defs: Vec<SeriesDef>, now: DateTime<Utc>) {
        for def in defs {
            let deadline = now + self.ttl_of(&def);
            self.series.insert(
                def.key(),
                Series {
                    def,
                    deadline,
                    stale: false,
                },
            );
        }
    }

    /// Validates a report and takes what passes: the others are refused one by one, with
    /// their reasons. A new series past the cap is refused; a known one is always taken.
    pub fn accept(&mut self, items: &[ReportItem], now: DateTime<Utc>) -> Accepted {
        let mut out = Accepted::default();
        for (index, item) in items.iter().enumerate() {
            let (thresholds, ttl_secs) = match check_item(item) {
                Ok(ok) => ok,
                Err(error) => {
                    out.outcome.refused.push(Refusal {
                        index,
                        error: format!(
                            "{}/{} {}: {error}",
                            item.resource_type, item.resource_id, item.metric
                        ),
                    });
                    continue;
                }
            };
            let key = (
                item.resource_type,
                item.resource_id.clone(),
                item.metric.clone(),
            );
            if !self.series.contains_key(&key) && self.series.len() >= self.max_series {
                out.outcome.refused.push(Refusal {
                    index,
                    error: format!(
                        "{}/{} {}: {} live pushed series already (the cap); retire some with \
                         `report --remove` or raise [pushed] max_series",
                        item.resource_type,
                        item.resource_id,
                        item.metric,
                        self.series.len()
                    ),
                });
                continue;
            }
            let default_ttl = self.default_ttl;
            let is_new = !self.series.contains_key(&key);
            let entry = self.series.entry(key.clone()).or_insert_with(|| Series {
                def: SeriesDef {
                    resource_type: item.resource_type,
                    resource_id: item.resource_id.clone(),
                    metric: item.metric.clone(),
                    unit: String::new(),
                    thresholds: None,
                    ttl_secs: None,
                },
                deadline: now,
                stale: false,
            });
            let before = entry.def.clone();
            if let Some(unit) = &item.unit {
                entry.def.unit.clone_from(unit);
            }
            if thresholds.is_some() {
                entry.def.thresholds = thresholds;
            }
            if ttl_secs.is_some() {
                entry.def.ttl_secs = ttl_secs;
            }
            let ttl = entry
                .def
                .ttl_secs
                .map_or(default_ttl, Duration::from_secs_f64);
            entry.deadline = now + ttl;
            if entry.stale {
                entry.stale = false;
                self.dirty
                    .insert((item.resource_type, item.resource_id.clone()));
            }
            if is_new || entry.def != before {
                out.changed.push(entry.def.clone());
            }
            out.measurements.push(Measurement {
                resource_type: item.resource_type,
                resource_id: item.resource_id.clone(),
                metric_name: item.metric.clone().into(),
                value: item.value,
                unit: entry.def.unit.clone().into(),
                timestamp: now,
                judgement: Judgement::Alerts,
                thresholds: entry.def.thresholds,
                note: None,
            });
            out.outcome.accepted += 1;
        }
        out
    }

    /// Retires a series on purpose; `false` when there is no such series.
    pub fn remove(&mut self, key: &SeriesKey) -> bool {
        let Some(gone) = self.series.remove(key) else {
            return false;
        };
        self.dirty.insert((key.0, key.1.clone()));
        if !gone.stale {
            self.to_retire.push(key.clone());
        }
        true
    }

    /// Marks the series whose deadline passed as stale.
    pub fn sweep(&mut self, now: DateTime<Utc>) {
        for (key, series) in &mut self.series {
            if !series.stale && series.deadline <= now {
                series.stale = true;
                self.dirty.insert((key.0, key.1.clone()));
                self.to_retire.push(key.clone());
            }
        }
    }

    /// The series whose values the analyzer must retire (stale or removed), once each.
    pub fn take_retired(&mut self) -> Vec<SeriesKey> {
        std::mem::take(&mut self.to_retire)
    }

    /// The `metric_stale` alert each changed resource should have now (`None`: no stale series,
    /// so none), once each.
    pub fn take_stale_changes(&mut self, now: DateTime<Utc>) -> Vec<(AlertKey, Option<Condition>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|(t, id)| {
                let stale: BTreeMap<&str, &Series> = self
                    .series
                    .values()
                    .filter(|s| s.stale && s.def.resource_type == t && s.def.resource_id == id)
                    .map(|s| (s.def.metric.as_str(), s))
                    .collect();
                let condition = (!stale.is_empty()).then(|| stale_condition(t, &id, &stale, now));
                (
                    crate::conditions::key((t, id), catalog::METRIC_STALE),
                    condition,
                )
            })
            .collect()
    }

    /// Every live series' definition, for `status` and tests.
    pub fn defs(&self) -> Vec<SeriesDef> {
        let mut defs: Vec<SeriesDef> = self.series.values().map(|s| s.def.clone()).collect();
        defs.sort_by_key(SeriesDef::key);
        defs
    }
}

/// The `metric_stale` alert of a resource with these stale series.
fn stale_condition(
    t: ResourceType,
    id: &str,
    stale: &BTreeMap<&str, &Series>,
    now: DateTime<Utc>,
) -> Condition {
    let names: Vec<&str> = stale.keys().copied().collect();
    let since: Vec<String> = stale
        .values()
        .map(|s| {
            let quiet = (now - s.deadline).num_seconds().max(0);
            format!("{} (stale for {quiet} s)", s.def.metric)
        })
        .collect();
    Condition {
        severity: HealthStatus::Unhealthy,
        message: format!(
            "{t} {id}: pushed {} not reported within {}: {}",
            if names.len() == 1 {
                "metric"
            } else {
                "metrics"
            },
            if names.len() == 1 {
                "its TTL"
            } else {
                "their TTLs"
            },
            since.join(", ")
        ),
        metadata: json!({ "metrics": names, "source": PUSHED_SOURCE }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(metric: &str, value: f64) -> ReportItem {
        ReportItem {
            resource_type: ResourceType::Agent,
            resource_id: "a1".into(),
            metric: metric.into(),
            value,
            warning: None,
            critical: None,
            unit: None,
            ttl_secs: None,
        }
    }

    fn registry() -> Registry {
        Registry::new(3, Duration::from_secs(90))
    }

    #[test]
    fn good_metrics_are_taken_and_bad_ones_refused_each_with_its_reason() {
        let mut r = registry();
        let now = Utc::now();
        let good = ReportItem {
            warning: Some(100.0),
            critical: Some(200.0),
            unit: Some("ms".into()),
            ..item("response_time", 150.0)
        };
        let items = [
            good,
            item("agent_memory_mb", 1.0),
            item("x", f64::NAN),
            item("y", f64::INFINITY),
            item("9lives", 1.0),
            item("metric_stale", 1.0),
            ReportItem {
                warning: Some(1.0),
                ..item("half", 1.0)
            },
            ReportItem {
                warning: Some(1.0),
                critical: Some(1.0),
                ..item("same", 1.0)
            },
            ReportItem {
                resource_id: "../etc".into(),
                ..item("escape", 1.0)
            },
            ReportItem {
                ttl_secs: Some(0.0),
                ..item("ttl", 1.0)
            },
        ];
        let out = r.accept(&items, now);
        assert_eq!(out.outcome.accepted, 1);
        let reasons: Vec<(usize, &str)> = out
            .outcome
            .refused
            .iter()
            .map(|f| (f.index, f.error.as_str()))
            .collect();
        assert_eq!(reasons.len(), 9, "{reasons:#?}");
        assert!(reasons[0].1.contains("built-in metric"), "{reasons:?}");
        assert!(reasons[1].1.contains("finite"));
        assert!(reasons[2].1.contains("finite"));
        assert!(reasons[3].1.contains("not valid"));
        assert!(reasons[4].1.contains("own alerts"));
        assert!(reasons[5].1.contains("both"));
        assert!(reasons[6].1.contains("must differ"));
        assert!(reasons[8].1.contains("ttl"));
        let m = &out.measurements[0];
        assert_eq!(m.thresholds, Some(Thresholds::new(100.0, 200.0)));
        assert_eq!(m.unit, "ms");
        assert_eq!(out.changed.len(), 1);
    }

    #[test]
    fn a_later_report_keeps_the_thresholds_and_unit_and_changes_nothing_to_store() {
        let mut r = registry();
        let now = Utc::now();
        let first = ReportItem {
            warning: Some(100.0),
            critical: Some(200.0),
            unit: Some("ms".into()),
            ..item("response_time", 150.0)
        };
        r.accept(&[first], now);
        let again = r.accept(&[item("response_time", 90.0)], now);
        assert!(again.changed.is_empty());
        assert_eq!(
            again.measurements[0].thresholds,
            Some(Thresholds::new(100.0, 200.0))
        );
        assert_eq!(again.measurements[0].unit, "ms");
    }

    #[test]
    fn past_the_cap_new_series_are_refused_but_known_ones_still_taken() {
        let mut r = registry();
        let now = Utc::now();
        let out = r.accept(
            &[
                item("a", 1.0),
                item("b", 1.0),
                item("c", 1.0),
                item("d", 1.0),
            ],
            now,
        );
        assert_eq!(out.outcome.accepted, 3);
        assert!(out.outcome.refused[0].error.contains("cap"));
        assert_eq!(r.accept(&[item("a", 2.0)], now).outcome.accepted, 1);
        assert!(r.remove(&(ResourceType::Agent, "a1".into(), "a".into())));
        assert_eq!(r.accept(&[item("d", 1.0)], now).outcome.accepted, 1);
    }

    #[test]
    fn a_series_not_reported_within_its_ttl_goes_stale_and_comes_back_when_reported() {
        let mut r = registry();
        let t0 = Utc::now();
        let short = ReportItem {
            ttl_secs: Some(10.0),
            ..item("fast", 1.0)
        };
        r.accept(&[short, item("slow", 1.0)], t0);
        r.sweep(t0 + Duration::from_secs(9));
        assert!(r.take_retired().is_empty());
        r.sweep(t0 + Duration::from_secs(11));
        assert_eq!(
            r.take_retired(),
            [(ResourceType::Agent, "a1".to_string(), "fast".to_string())]
        );
        let changes = r.take_stale_changes(t0 + Duration::from_secs(11));
        let [(key, Some(c))] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(key.alert_type, "metric_stale");
        assert_eq!(c.severity, HealthStatus::Unhealthy);
        assert!(c.message.contains("fast"), "{}", c.message);
        // Swept again: nothing new.
        r.sweep(t0 + Duration::from_secs(12));
        assert!(r.take_retired().is_empty() && r.take_stale_changes(t0).is_empty());
        // Reported again: the alert clears.
        r.accept(&[item("fast", 2.0)], t0 + Duration::from_secs(13));
        let changes = r.take_stale_changes(t0);
        assert!(matches!(changes.as_slice(), [(_, None)]), "{changes:?}");
    }

    #[test]
    fn restored_series_get_a_whole_ttl_from_the_restart() {
        let mut r = registry();
        let t0 = Utc::now();
        r.restore(
            vec![SeriesDef {
                resource_type: ResourceType::Check,
                resource_id: "c".into(),
                metric: "m".into(),
                unit: "ms".into(),
                thresholds: Some(Thresholds::new(1.0, 2.0)),
                ttl_secs: None,
            }],
            t0,
        );
        r.sweep(t0 + Duration::from_secs(89));
        assert!(r.take_retired().is_empty());
        r.sweep(t0 + Duration::from_secs(90));
        assert_eq!(r.take_retired().len(), 1);
    }
}
