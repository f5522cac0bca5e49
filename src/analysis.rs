//! The analyzer's logic without the actor: thresholds applied, alerts decided, latest values kept.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::alerts::{AlertEngine, AlertEvent};
use crate::model::{HealthAlert, HealthMetric, Judgement, Measurement, ResourceType};
use crate::rules::{AlertRule, RuleTable};
use crate::store::write::WriteOp;

/// What one batch of measurements produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Analysis {
    /// The batch's finite readings with thresholds applied, in batch order: rows to store.
    pub metrics: Vec<HealthMetric>,
    /// Alerts opened, escalated, reminded, downgraded or resolved by the batch.
    pub events: Vec<AlertEvent>,
}

impl Analysis {
    /// The database changes this analysis calls for, metric rows first.
    pub fn into_write_ops(self) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(1 + self.events.len());
        if !self.metrics.is_empty() {
            ops.push(WriteOp::Metrics(self.metrics));
        }
        ops.extend(self.events.iter().map(write_op));
        ops
    }
}

/// The database change for one alert event.
pub(crate) fn write_op(event: &AlertEvent) -> WriteOp {
    match event {
        AlertEvent::Fired(a) => WriteOp::AlertOpened(a.clone()),
        AlertEvent::Escalated(a) | AlertEvent::Reminder(a) | AlertEvent::Downgraded(a) => {
            WriteOp::AlertUpdated(a.clone())
        }
        AlertEvent::Resolved(a) => WriteOp::AlertResolved(a.clone()),
    }
}

/// Latest metric per resource type, resource id and metric name; nested so lookups borrow
/// `&str` and updating a known series allocates nothing.
type Latest = HashMap<ResourceType, HashMap<String, HashMap<String, HealthMetric>>>;

/// The source of the metrics pushed by `report` (socket, CLI, HTTP).
pub const PUSHED_SOURCE: &str = "pushed";

/// True for a source whose series sit beside a collector's on a resource it does not own: the
/// pushed metrics, and a check's results (a check may report on `agent:a1`). Its batches say
/// nothing about the resource's other metrics, and the resource's collector says nothing about
/// its series.
pub(crate) fn is_addon_source(source: &str) -> bool {
    source == PUSHED_SOURCE || source.starts_with("check:")
}

/// The add-on series of each resource (type, then id, then metric), with the source that owns
/// each.
type AddOns = HashMap<ResourceType, HashMap<String, HashMap<String, String>>>;

/// The resources (type, then id) whose latest values changed.
pub type ChangedResources = HashMap<ResourceType, HashSet<String>>;

/// The most resources [`Changes`] lists before it gives up and says "everything": nobody took
/// them for a long while (no page open), and a full read is then cheaper than the list.
const CHANGES_CAP: usize = 4096;

/// Which resources' latest values changed (a value, a status or a unit, a series come or
/// gone) since someone last took them: the dashboard's cycle then reads only those.
#[derive(Debug)]
struct Changes {
    resources: ChangedResources,
    /// How many ids `resources` holds.
    len: usize,
    /// Too many to list, or never taken: the taker reads everything.
    everything: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            resources: HashMap::new(),
            len: 0,
            everything: true,
        }
    }
}

impl Changes {
    fn mark(&mut self, resource_type: ResourceType, resource_id: &str) {
        if self.everything {
            return;
        }
        let ids = self.resources.entry(resource_type).or_default();
        if ids.contains(resource_id) {
            return;
        }
        ids.insert(resource_id.to_string());
        self.len += 1;
        if self.len > CHANGES_CAP {
            self.resources.clear();
            self.len = 0;
            self.everything = true;
        }
    }

    fn take(&mut self) -> Option<ChangedResources> {
        let listed = !std::mem::replace(&mut self.everything, false);
        self.len = 0;
        let resources = std::mem::take(&mut self.resources);
        listed.then_some(resources)
    }
}

/// The source of [`AnalyzerCore::epoch`]: no two cores share one.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Thresholds, alert state and the latest value of every series.
#[derive(Debug)]
pub struct AnalyzerCore {
    rules: RuleTable,
    engine: AlertEngine,
    latest: Latest,
    /// Resources whose latest values changed since [`AnalyzerCore::take_changes`].
    changes: Changes,
    /// Which core this is (a restarted analyzer has a new one, with all its values new).
    epoch: u64,
    /// The resources each collector reported in its last cycle.
    sources: HashMap<String, Vec<(ResourceType, String)>>,
    /// Series of add-on sources ([`is_addon_source`]): a collector's cycle leaves them alone.
    addons: AddOns,
}

impl AnalyzerCore {
    /// An analyzer with no history.
    pub fn new(rules: RuleTable, cooldown: Duration) -> Self {
        AnalyzerCore {
            rules,
            engine: AlertEngine::new(cooldown),
            latest: HashMap::new(),
            changes: Changes::default(),
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
            sources: HashMap::new(),
            addons: HashMap::new(),
        }
    }

    /// Takes new rules (a config reload); alert state carries over, and an open alert the new
    /// thresholds call healthy resolves at its next sample.
    pub(crate) fn set_rules(&mut self, rules: RuleTable) {
        self.rules = rules;
    }

    /// Takes back the active alerts stored in the database.
    pub(crate) fn restore(&mut self, alerts: Vec<HealthAlert>) {
        self.engine.restore(alerts);
    }

    /// Applies thresholds to each measurement and runs the alert state machine.
    ///
    /// A batch is one collector cycle: for each resource it holds every metric the collector
    /// could measure. A metric of that resource missing from the batch is no longer reported (a
    /// dead agent has no memory, a deleted workspace no size): its latest value is dropped and
    /// its alert resolves, so it cannot stay critical forever.
    ///
    /// Takes the batch by reference so the caller can keep it safe until the results are
    /// handed on (the analyzer actor re-runs a batch a panic interrupted). Non-finite values are
    /// skipped: they say nothing and cannot be stored.
    pub fn analyze(&mut self, batch: &[Measurement], now: DateTime<Utc>) -> Analysis {
        let mut analysis = Analysis {
            metrics: Vec::with_capacity(batch.len()),
            events: Vec::new(),
        };
        for m in batch.iter().filter(|m| m.value.is_finite()) {
            let metric = self.judge(m, now, &mut analysis.events);
            analysis.metrics.push(metric);
        }
        self.retire_unreported(batch, now, &mut analysis.events);
        analysis
    }

    /// One finite reading through its rule and the alert state machine; remembered as the
    /// series' latest value.
    fn judge(
        &mut self,
        m: &Measurement,
        now: DateTime<Utc>,
        events: &mut Vec<AlertEvent>,
    ) -> HealthMetric {
        let rule = self.rule_for(m);
        let metric = HealthMetric::from_measurement(m.clone(), rule.map(|r| r.thresholds));
        let event = if m.judgement == Judgement::Alerts {
            self.engine
                .observe(&metric, rule.as_ref(), m.note.as_deref(), now)
        } else {
            // Never alerts here; one opened before (by an older version, or before the
            // resource became a town session) resolves.
            self.engine.clear(&metric.alert_key(), now)
        };
        events.extend(event);
        self.remember(&metric);
        metric
    }

    /// The rule a reading is judged by: none for an informational one; the thresholds it came
    /// with (a pushed metric's, a check's perfdata) over its metric's rule, which still gives
    /// the debounce and hysteresis; else its metric's rule.
    fn rule_for(&self, m: &Measurement) -> Option<AlertRule> {
        if m.judgement == Judgement::Informational {
            return None;
        }
        let configured = self
            .rules
            .rule(m.resource_type, &m.resource_id, &m.metric_name)
            .copied();
        match m.thresholds {
            Some(thresholds) => Some(AlertRule {
                thresholds,
                ..configured.unwrap_or(AlertRule::new(thresholds))
            }),
            None => configured,
        }
    }

    /// [`analyze`](Self::analyze) for one cycle of the collector `source`. A resource that
    /// collector reported last cycle but not in this one (a deleted database, an unmounted
    /// filesystem) is gone: its values are dropped and its alerts resolve.
    ///
    /// The batch of an add-on source ([`is_addon_source`]) goes to
    /// [`analyze_addon`](Self::analyze_addon) instead.
    pub fn analyze_from(
        &mut self,
        source: &str,
        batch: &[Measurement],
        now: DateTime<Utc>,
    ) -> Analysis {
        if is_addon_source(source) {
            return self.analyze_addon(source, batch, now);
        }
        let mut analysis = self.analyze(batch, now);
        let first_of_its_resource = |i: usize, m: &Measurement| {
            !batch[..i]
                .iter()
                .any(|p| p.resource_type == m.resource_type && p.resource_id == m.resource_id)
        };
        let distinct = batch
            .iter()
            .enumerate()
            .filter(|(i, m)| first_of_its_resource(*i, m))
            .count();
        let unchanged = self.sources.get(source).is_some_and(|previous| {
            previous.len() == distinct
                && previous.iter().all(|(t, id)| {
                    batch
                        .iter()
                        .any(|m| m.resource_type == *t && m.resource_id == *id)
                })
        });
        if unchanged {
            return analysis;
        }
        let current: Vec<(ResourceType, String)> = batch
            .iter()
            .enumerate()
            .filter(|(i, m)| first_of_its_resource(*i, m))
            .map(|(_, m)| (m.resource_type, m.resource_id.clone()))
            .collect();
        let previous = self.sources.insert(source.to_string(), current.clone());
        for (t, id) in previous.unwrap_or_default() {
            if !current.contains(&(t, id.clone())) {
                analysis.events.extend(self.forget_resource(t, &id, now));
            }
        }
        analysis
    }

    /// Analyzes the batch of an add-on source: thresholds and alerts as for any reading, and
    /// nothing said about the resource's other series. A check's run is all it reports: a
    /// perfdata label of its previous run missing from this one is retired. Pushed metrics are
    /// retired only by their TTL or `report --remove` ([`retire_series`](Self::retire_series)).
    pub fn analyze_addon(
        &mut self,
        source: &str,
        batch: &[Measurement],
        now: DateTime<Utc>,
    ) -> Analysis {
        let mut analysis = Analysis {
            metrics: Vec::with_capacity(batch.len()),
            events: Vec::new(),
        };
        for m in batch.iter().filter(|m| m.value.is_finite()) {
            let metric = self.judge(m, now, &mut analysis.events);
            let owners = self
                .addons
                .entry(metric.resource_type)
                .or_default()
                .entry(metric.resource_id.clone())
                .or_default();
            if owners.get(metric.metric_name.as_ref()).map(String::as_str) != Some(source) {
                owners.insert(metric.metric_name.to_string(), source.to_string());
            }
            analysis.metrics.push(metric);
        }
        if source != PUSHED_SOURCE {
            let mut gone = Vec::new();
            for m in batch {
                let Some(owners) = self
                    .addons
                    .get(&m.resource_type)
                    .and_then(|by_id| by_id.get(&m.resource_id))
                else {
                    continue;
                };
                for (name, owner) in owners {
                    let reported = batch.iter().any(|o| {
                        o.value.is_finite()
                            && o.resource_type == m.resource_type
                            && o.resource_id == m.resource_id
                            && o.metric_name == name.as_str()
                    });
                    let key = (m.resource_type, m.resource_id.clone(), name.clone());
                    if owner == source && !reported && !gone.contains(&key) {
                        gone.push(key);
                    }
                }
            }
            for (t, id, name) in gone {
                analysis
                    .events
                    .extend(self.retire_series(t, &id, &name, now));
            }
        }
        analysis
    }

    /// Retires one series: its latest value goes, and its alert resolves.
    pub(crate) fn retire_series(
        &mut self,
        resource_type: ResourceType,
        resource_id: &str,
        metric: &str,
        now: DateTime<Utc>,
    ) -> Option<AlertEvent> {
        if let Some(by_name) = self
            .latest
            .get_mut(&resource_type)
            .and_then(|by_id| by_id.get_mut(resource_id))
            && by_name.remove(metric).is_some()
        {
            self.changes.mark(resource_type, resource_id);
        }
        if let Some(owners) = self
            .addons
            .get_mut(&resource_type)
            .and_then(|by_id| by_id.get_mut(resource_id))
        {
            owners.remove(metric);
        }
        let key = crate::model::AlertKey {
            resource_type,
            resource_id: resource_id.to_string(),
            alert_type: metric.to_string(),
        };
        self.engine.clear(&key, now)
    }

    /// Retires every series of an add-on source (a removed check).
    pub(crate) fn forget_source(&mut self, source: &str, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let mut owned: Vec<(ResourceType, String, String)> = Vec::new();
        for (t, by_id) in &self.addons {
            for (id, owners) in by_id {
                for (name, owner) in owners {
                    if owner == source {
                        owned.push((*t, id.clone(), name.clone()));
                    }
                }
            }
        }
        owned
            .into_iter()
            .filter_map(|(t, id, name)| self.retire_series(t, &id, &name, now))
            .collect()
    }

    /// Drops latest values and resolves metric alerts of the batch's resources that the batch
    /// no longer reports. Allocation-free unless something is to be retired: this runs for every
    /// batch on the ingest path.
    fn retire_unreported(
        &mut self,
        batch: &[Measurement],
        now: DateTime<Utc>,
        events: &mut Vec<AlertEvent>,
    ) {
        let same = |a: &Measurement, b: &Measurement| {
            a.resource_type == b.resource_type && a.resource_id == b.resource_id
        };
        let finite = |m: &&Measurement| m.value.is_finite();
        for (i, m) in batch
            .iter()
            .enumerate()
            .filter(|(_, m)| m.value.is_finite())
        {
            if batch[..i].iter().filter(finite).any(|p| same(p, m)) {
                continue; // Not this resource's first reading in the batch.
            }
            let reported = batch[i..]
                .iter()
                .filter(finite)
                .filter(|o| same(o, m))
                .count();
            let known = self
                .latest
                .get(&m.resource_type)
                .and_then(|by_id| by_id.get(m.resource_id.as_str()))
                .map_or(0, HashMap::len);
            // Series of add-on sources are theirs to retire, not this collector's.
            let addons = self
                .addons
                .get(&m.resource_type)
                .and_then(|by_id| by_id.get(m.resource_id.as_str()));
            let known = known.saturating_sub(addons.map_or(0, HashMap::len));
            let alerting = self.engine.has_state_for(m.resource_type, &m.resource_id);
            if known <= reported && !alerting {
                continue;
            }
            let names: Vec<&str> = batch[i..]
                .iter()
                .filter(finite)
                .filter(|o| same(o, m))
                .map(|o| o.metric_name.as_ref())
                .chain(
                    addons
                        .into_iter()
                        .flat_map(|a| a.keys().map(String::as_str)),
                )
                .collect();
            if let Some(by_name) = self
                .latest
                .get_mut(&m.resource_type)
                .and_then(|by_id| by_id.get_mut(m.resource_id.as_str()))
            {
                let before = by_name.len();
                by_name.retain(|name, _| names.contains(&name.as_str()));
                if by_name.len() != before {
                    self.changes.mark(m.resource_type, &m.resource_id);
                }
            }
            events.extend(self.engine.resolve_unreported(
                m.resource_type,
                &m.resource_id,
                &names,
                now,
            ));
        }
    }

    fn remember(&mut self, metric: &HealthMetric) {
        let by_id = self.latest.entry(metric.resource_type).or_default();
        if !by_id.contains_key(metric.resource_id.as_str()) {
            by_id.insert(metric.resource_id.clone(), HashMap::new());
        }
        let Some(by_name) = by_id.get_mut(metric.resource_id.as_str()) else {
            return;
        };
        let changed = match by_name.get_mut(metric.metric_name.as_ref()) {
            Some(slot) => {
                // What a page shows of it; a new timestamp alone is no change.
                let changed = slot.value.to_bits() != metric.value.to_bits()
                    || slot.status != metric.status
                    || slot.unit != metric.unit;
                // clone_from reuses the strings' buffers.
                slot.clone_from(metric);
                changed
            }
            None => {
                by_name.insert(metric.metric_name.to_string(), metric.clone());
                true
            }
        };
        if changed {
            self.changes
                .mark(metric.resource_type, metric.resource_id.as_str());
        }
    }

    /// Forgets a resource whose monitor was removed: its latest values go, its alerts resolve.
    pub(crate) fn forget_resource(
        &mut self,
        resource_type: ResourceType,
        resource_id: &str,
        now: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        if let Some(by_id) = self.latest.get_mut(&resource_type) {
            by_id.remove(resource_id);
        }
        self.changes.mark(resource_type, resource_id);
        if let Some(by_id) = self.addons.get_mut(&resource_type) {
            by_id.remove(resource_id);
        }
        if resource_type == ResourceType::Workspace
            && let Some(dbs) = self.latest.get_mut(&ResourceType::Database)
        {
            let changes = &mut self.changes;
            dbs.retain(|id, _| {
                let keep = !crate::model::belongs_to(
                    ResourceType::Database,
                    id,
                    resource_type,
                    resource_id,
                );
                if !keep {
                    changes.mark(ResourceType::Database, id);
                }
                keep
            });
        }
        self.engine.forget_resource(resource_type, resource_id, now)
    }

    /// The newest value of every series seen.
    pub fn latest(&self) -> impl Iterator<Item = &HealthMetric> {
        self.latest
            .values()
            .flat_map(|by_id| by_id.values())
            .flat_map(|by_name| by_name.values())
    }

    /// The newest value of every series of one resource.
    pub fn latest_of(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
    ) -> impl Iterator<Item = &HealthMetric> {
        self.latest
            .get(&resource_type)
            .and_then(|by_id| by_id.get(resource_id))
            .into_iter()
            .flat_map(|by_name| by_name.values())
    }

    /// The resources whose latest values changed (a value, a status or a unit; a series come
    /// or gone) since the last call; `None` at the first call, or when too many changed while
    /// nobody asked: then read them all.
    pub fn take_changes(&mut self) -> Option<ChangedResources> {
        self.changes.take()
    }

    /// This core's identity: a restarted analyzer's core has another, and none of what an
    /// earlier one said changed is known of it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The alerts currently open.
    pub fn active_alerts(&self) -> impl Iterator<Item = &HealthAlert> {
        self.engine.active()
    }

    /// The alert engine, for condition alerts that do not come from a metric.
    pub(crate) fn engine_mut(&mut self) -> &mut AlertEngine {
        &mut self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthStatus, Thresholds};
    use std::collections::BTreeMap;

    fn core() -> AnalyzerCore {
        AnalyzerCore::new(RuleTable::default(), Duration::from_secs(300))
    }

    fn reading(t: ResourceType, id: &str, name: &str, value: f64) -> Measurement {
        Measurement {
            metric_name: name.to_string().into(),
            ..Measurement::now(t, id, "agent_active", value, "")
        }
    }

    /// The changed resources as sorted `type/id`s; `None` for "everything".
    fn changed(a: &mut AnalyzerCore) -> Option<Vec<String>> {
        let changes = a.take_changes()?;
        let mut keys: Vec<String> = changes
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |id| format!("{t}/{id}")))
            .collect();
        keys.sort();
        Some(keys)
    }

    #[test]
    fn the_change_log_names_the_resources_whose_shown_values_changed_and_nothing_else() {
        let mut a = core();
        let now = Utc::now();
        let agent = |id: &str, name: &str, v| reading(ResourceType::Agent, id, name, v);
        assert_eq!(changed(&mut a), None, "never taken: read everything");
        a.analyze_from(
            "agent:a1",
            &[agent("a1", "x", 1.0), agent("a1", "y", 2.0)],
            now,
        );
        a.analyze_from("agent:a2", &[agent("a2", "x", 1.0)], now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a1", "agent/a2"]);
        // The same values again, later: a new timestamp is no change.
        a.analyze_from(
            "agent:a1",
            &[agent("a1", "x", 1.0), agent("a1", "y", 2.0)],
            now + chrono::Duration::seconds(1),
        );
        assert_eq!(changed(&mut a).unwrap(), Vec::<String>::new());
        // A value, a unit, a series gone.
        a.analyze_from("agent:a2", &[agent("a2", "x", 1.5)], now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a2"]);
        let mb = Measurement {
            unit: "MB".into(),
            ..agent("a2", "x", 1.5)
        };
        a.analyze_from("agent:a2", &[mb], now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a2"]);
        a.analyze_from("agent:a1", &[agent("a1", "x", 1.0)], now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a1"], "y is gone");
        // A status: the same value, judged by other thresholds.
        let pushed = |v| Measurement {
            thresholds: Some(Thresholds::new(5.0, 9.0)),
            ..agent("a3", "load", v)
        };
        a.analyze_from(PUSHED_SOURCE, &[pushed(1.0)], now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a3"]);
        let worse = Measurement {
            thresholds: Some(Thresholds::new(0.5, 0.9)),
            ..agent("a3", "load", 1.0)
        };
        a.analyze_from(PUSHED_SOURCE, &[worse], now);
        assert_eq!(
            changed(&mut a).unwrap(),
            ["agent/a3"],
            "the same value, now critical"
        );
        a.retire_series(ResourceType::Agent, "a3", "load", now);
        assert_eq!(changed(&mut a).unwrap(), ["agent/a3"], "retired");
        a.retire_series(ResourceType::Agent, "a3", "load", now);
        assert_eq!(
            changed(&mut a).unwrap(),
            Vec::<String>::new(),
            "nothing left"
        );
        // A workspace forgotten takes its databases with it.
        let ws = Measurement::now(
            ResourceType::Workspace,
            "w1",
            "workspace_size_mb",
            1.0,
            "MB",
        );
        let db = Measurement::now(ResourceType::Database, "w1/a.db", "db_size_mb", 1.0, "MB");
        a.analyze_from("workspace:w1", &[ws, db], now);
        changed(&mut a);
        a.forget_resource(ResourceType::Workspace, "w1", now);
        assert_eq!(
            changed(&mut a).unwrap(),
            ["database/w1/a.db", "workspace/w1"]
        );
        // Too many changes while nobody takes them: everything.
        let batch: Vec<Measurement> = (0..=CHANGES_CAP)
            .map(|i| agent(&format!("n{i}"), "x", 1.0))
            .collect();
        a.analyze_from(PUSHED_SOURCE, &batch, now);
        assert_eq!(changed(&mut a), None);
        assert_eq!(changed(&mut a).unwrap(), Vec::<String>::new());
        assert_ne!(core().epoch(), a.epoch(), "each core its own");
    }

    fn latest_names(a: &AnalyzerCore, id: &str) -> Vec<String> {
        let mut names: Vec<String> = a
            .latest()
            .filter(|m| m.resource_id == id)
            .map(|m| m.metric_name.to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_check_on_an_agent_and_the_agent_collector_leave_each_other_s_series_alone() {
        let mut a = core();
        let now = Utc::now();
        let agent = |v| reading(ResourceType::Agent, "a1", "agent_active", v);
        let check = |status, extra: bool| {
            let mut batch = vec![Measurement {
                note: Some("CRITICAL - Socket timeout".into()),
                ..reading(ResourceType::Agent, "a1", "check_status", status)
            }];
            if extra {
                batch.push(Measurement {
                    thresholds: Some(Thresholds::new(1.0, 5.0)),
                    ..reading(ResourceType::Agent, "a1", "time", 0.2)
                });
            }
            batch
        };
        a.analyze_from("agent:a1", &[agent(1.0)], now);
        let out = a.analyze_from("check:api", &check(2.0, true), now);
        assert_eq!(out.events.len(), 1);
        let alert = out.events[0].alert();
        assert_eq!(alert.alert_type, "check_status");
        assert_eq!(alert.message, "CRITICAL - Socket timeout");
        assert_eq!(out.metrics[1].threshold_warning, Some(1.0));
        assert_eq!(
            latest_names(&a, "a1"),
            ["agent_active", "check_status", "time"]
        );

        // The agent's next cycle knows nothing of the check: its series and alert stay.
        let out = a.analyze_from("agent:a1", &[agent(1.0)], now);
        assert!(out.events.is_empty(), "{:?}", out.events);
        assert_eq!(
            latest_names(&a, "a1"),
            ["agent_active", "check_status", "time"]
        );

        // The check's next run lacks its perfdata: that label is retired, the agent's stays.
        a.analyze_from("check:api", &check(2.0, false), now);
        assert_eq!(latest_names(&a, "a1"), ["agent_active", "check_status"]);

        // A removed check takes its series and resolves its alert.
        let events = a.forget_source("check:api", now);
        assert!(
            matches!(events.as_slice(), [AlertEvent::Resolved(r)] if r.alert_type == "check_status")
        );
        assert_eq!(latest_names(&a, "a1"), ["agent_active"]);
    }

    #[test]
    fn pushed_thresholds_win_over_the_rule_table_and_keep_its_debounce() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "response_time".to_string(),
            crate::rules::ThresholdConfig {
                warning: Some(1000.0),
                critical: Some(2000.0),
                for_cycles: Some(2),
                ..Default::default()
            },
        );
        let rules = RuleTable::default().with_overrides(&cfg).unwrap();
        let mut a = AnalyzerCore::new(rules, Duration::from_secs(300));
        let now = Utc::now();
        let pushed = |v, t: Option<Thresholds>| Measurement {
            thresholds: t,
            ..reading(ResourceType::Agent, "a1", "response_time", v)
        };
        let given = Some(Thresholds::new(100.0, 200.0));
        let first = a.analyze_from(PUSHED_SOURCE, &[pushed(150.0, given)], now);
        assert_eq!(first.metrics[0].status, HealthStatus::Unhealthy);
        assert!(first.events.is_empty(), "for_cycles 2 from the config");
        let second = a.analyze_from(PUSHED_SOURCE, &[pushed(150.0, given)], now);
        assert_eq!(second.events.len(), 1);
        // Without thresholds of its own, the config's apply.
        let third = a.analyze_from(PUSHED_SOURCE, &[pushed(150.0, None)], now);
        assert_eq!(third.metrics[0].status, HealthStatus::Healthy);
        // Another pushed series of the resource does not retire this one.
        a.analyze_from(
            PUSHED_SOURCE,
            &[reading(ResourceType::Agent, "a1", "queue_depth", 3.0)],
            now,
        );
        assert_eq!(latest_names(&a, "a1"), ["queue_depth", "response_time"]);
        assert!(
            a.retire_series(ResourceType::Agent, "a1", "response_time", now)
                .is_none()
        );
        assert_eq!(latest_names(&a, "a1"), ["queue_depth"]);
    }

    #[test]
    fn analyzing_85_percent_memory_gives_exactly_one_unhealthy_alert() {
        let mut a = core();
        let m = Measurement::now(
            ResourceType::Memory,
            "system",
            "memory_usage_percent",
            85.0,
            "%",
        );
        let out = a.analyze(&[m], Utc::now());
        assert_eq!(out.metrics.len(), 1);
        assert_eq!(out.metrics[0].status, HealthStatus::Unhealthy);
        assert_eq!(out.metrics[0].threshold_warning, Some(80.0));
        assert_eq!(out.metrics[0].threshold_critical, Some(95.0));
        assert_eq!(out.events.len(), 1);
        let alert = out.events[0].alert();
        assert_eq!(alert.severity, HealthStatus::Unhealthy);
        assert_eq!(alert.resource_type, ResourceType::Memory);
        assert_eq!(alert.resource_id, "system");
        assert!(matches!(out.events[0], AlertEvent::Fired(_)));
    }

    #[test]
    fn healthy_values_give_no_alert() {
        let mut a = core();
        let m = Measurement::now(ResourceType::Cpu, "system", "cpu_usage_percent", 10.0, "%");
        let out = a.analyze(&[m], Utc::now());
        assert!(out.events.is_empty());
        assert_eq!(out.metrics[0].status, HealthStatus::Healthy);
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let mut a = core();
        let m = Measurement::now(
            ResourceType::Cpu,
            "system",
            "cpu_usage_percent",
            f64::NAN,
            "%",
        );
        let out = a.analyze(&[m], Utc::now());
        assert!(out.metrics.is_empty() && out.events.is_empty());
    }

    #[test]
    fn a_metric_no_longer_reported_loses_its_value_and_its_alert() {
        let mut a = core();
        let now = Utc::now();
        let alive = [
            Measurement::now(ResourceType::Agent, "a1", "agent_active", 1.0, "bool"),
            Measurement::now(ResourceType::Agent, "a1", "agent_memory_mb", 20000.0, "MB"),
        ];
        let out = a.analyze(&alive, now);
        assert!(matches!(out.events.as_slice(), [AlertEvent::Fired(_)]));
        // The agent dies: only agent_active is reported from now on.
        let dead = [Measurement::now(
            ResourceType::Agent,
            "a1",
            "agent_active",
            0.0,
            "bool",
        )];
        let out = a.analyze(&dead, now);
        let resolved: Vec<&str> = out
            .events
            .iter()
            .filter(|e| matches!(e, AlertEvent::Resolved(_)))
            .map(|e| e.alert().alert_type.as_str())
            .collect();
        assert_eq!(resolved, ["agent_memory_mb"]);
        assert_eq!(a.active_alerts().count(), 1, "agent_active is the one left");
        assert!(a.latest().all(|m| m.metric_name != "agent_memory_mb"));
        // Condition alerts are not metrics: a batch never resolves them.
        let key = crate::model::AlertKey {
            resource_type: ResourceType::Agent,
            resource_id: "a1".into(),
            alert_type: "collector_failed".into(),
        };
        let cond = crate::alerts::Condition {
            severity: crate::model::HealthStatus::Critical,
            message: "x".into(),
            metadata: serde_json::json!({}),
        };
        a.engine_mut().raise(key, cond, now);
        a.analyze(&dead, now);
        assert_eq!(a.active_alerts().count(), 2);
    }

    #[test]
    fn a_resource_a_collector_stops_reporting_is_forgotten() {
        let mut a = core();
        let now = Utc::now();
        let db = |id: &str, ok: f64| {
            Measurement::now(
                ResourceType::Database,
                id,
                "database_connectivity",
                ok,
                "bool",
            )
        };
        let ws = Measurement::now(
            ResourceType::Workspace,
            "w",
            "workspace_exists",
            1.0,
            "bool",
        );
        let out = a.analyze_from(
            "workspace:w",
            &[ws.clone(), db("w/a.db", 0.0), db("w/b.db", 1.0)],
            now,
        );
        assert_eq!(out.events.len(), 1);
        // a.db was deleted: no longer reported by the workspace's collector.
        let out = a.analyze_from("workspace:w", &[ws.clone(), db("w/b.db", 1.0)], now);
        assert!(
            matches!(out.events.as_slice(), [AlertEvent::Resolved(al)] if al.resource_id == "w/a.db"),
            "{:?}",
            out.events
        );
        assert!(a.latest().all(|m| m.resource_id != "w/a.db"));
        // Another collector's batches do not count against this one's resources.
        let out = a.analyze_from(
            "system",
            &[Measurement::now(
                ResourceType::Cpu,
                "system",
                "cpu_usage_percent",
                1.0,
                "%",
            )],
            now,
        );
        assert!(out.events.is_empty());
        assert!(a.latest().any(|m| m.resource_id == "w/b.db"));
    }

    #[test]
    fn write_ops_carry_metrics_then_alerts() {
        let mut a = core();
        let batch = vec![
            Measurement::now(
                ResourceType::Memory,
                "system",
                "memory_usage_percent",
                99.0,
                "%",
            ),
            Measurement::now(ResourceType::Cpu, "system", "cpu_usage_percent", 1.0, "%"),
        ];
        let ops = a.analyze(&batch, Utc::now()).into_write_ops();
        assert!(matches!(&ops[0], WriteOp::Metrics(m) if m.len() == 2));
        assert!(
            matches!(&ops[1], WriteOp::AlertOpened(al) if al.severity == HealthStatus::Critical)
        );
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn forgetting_a_resource_drops_its_values_and_resolves_its_alerts() {
        let mut a = core();
        let now = Utc::now();
        a.analyze(
            &[
                Measurement::now(
                    ResourceType::Workspace,
                    "w1",
                    "workspace_exists",
                    0.0,
                    "bool",
                ),
                Measurement::now(
                    ResourceType::Workspace,
                    "w2",
                    "workspace_exists",
                    1.0,
                    "bool",
                ),
            ],
            now,
        );
        assert_eq!(a.active_alerts().count(), 1);
        let events = a.forget_resource(ResourceType::Workspace, "w1", now);
        assert!(matches!(events.as_slice(), [AlertEvent::Resolved(_)]));
        assert_eq!(a.latest().count(), 1);
        assert_eq!(a.active_alerts().count(), 0);
    }
}
