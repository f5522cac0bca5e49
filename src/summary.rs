//! The status document: the original summary's keys plus overall status, per-resource latest
//! values and actor states; built from live or stored data, rendered as JSON or for people.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::alerts::format_value;
use crate::config::Settings;
use crate::model::{
    HealthAlert, HealthMetric, HealthStatus, MonitorKind, MonitorSpec, ResourceType,
    format_timestamp, monitor_child_name,
};
use crate::report::{ActorReport, ChildState, CycleStat, SinkReport, WriterReport};
use crate::store::{self, query};

/// How far back `recent_metrics_count` and `metrics_by_status` look.
pub(crate) const RECENT_WINDOW: Duration = Duration::hours(1);

/// An active alert as the summary lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    /// The alert's id, as `ack ID` takes it; `None` when it has none.
    pub id: Option<i64>,
    /// The kind of resource the alert is on.
    pub resource_type: ResourceType,
    /// The resource's id (`system`, a monitor id, ...).
    pub resource_id: String,
    /// The breached metric's name, or a condition such as `collector_failed`.
    pub alert_type: String,
    /// The current severity: `unhealthy` or `critical`.
    pub severity: HealthStatus,
    /// A sentence for people.
    pub message: String,
    /// When the alert opened (RFC 3339 UTC).
    pub timestamp: String,
}

/// The latest value of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricView {
    /// The catalogue's name of the metric, e.g. `memory_usage_percent`.
    pub metric_name: String,
    /// The latest reading, in `unit`.
    pub value: f64,
    /// The unit of `value` (`%`, `MB`, `bool`...).
    pub unit: String,
    /// What its thresholds make of `value`.
    pub status: HealthStatus,
    /// When the reading was taken (RFC 3339 UTC).
    pub timestamp: String,
}

/// One resource and its worst status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceView {
    /// What kind of resource it is.
    pub resource_type: ResourceType,
    /// Which one: `system`, a monitor id, a mount point or `<workspace>/<path>`.
    pub resource_id: String,
    /// Its worst metric status, raised by active conditions on it and to `degraded` while its
    /// collector is impaired; `unknown` with no data yet.
    pub status: HealthStatus,
    /// Its latest values, by metric name; empty when it has no data yet.
    pub metrics: Vec<MetricView>,
}

/// The document `status --json` prints: a superset of the original `get_health_summary()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// When the summary was built (RFC 3339 UTC).
    pub timestamp: String,
    /// True when a running daemon answered; false when read from the database alone.
    pub running: bool,
    /// Agent monitors configured.
    pub monitored_agents: usize,
    /// Workspace monitors configured.
    pub monitored_workspaces: usize,
    /// Checks configured (`[[check]]` and `add check`).
    #[serde(default)]
    pub monitored_checks: usize,
    /// Metric rows written within [`RECENT_WINDOW`] (the last hour), whatever their status.
    pub recent_metrics_count: u64,
    /// Those rows counted by status name (`healthy`, `unhealthy`, `critical`...).
    pub metrics_by_status: BTreeMap<String, u64>,
    /// How many alerts `active_alerts` lists.
    pub active_alerts_count: usize,
    /// Unresolved alerts from the database, plus (live) any the writer has not stored yet.
    pub active_alerts: Vec<AlertView>,
    /// The worst resource status, and at least the severity of every active alert; `unknown`
    /// with no data and no alerts.
    pub overall_status: HealthStatus,
    /// Every monitored resource and every resource with recent data, the machine's first.
    pub resources: Vec<ResourceView>,
    /// The supervised children and the writer, by name; empty when no daemon runs.
    pub actors: Vec<ActorReport>,
    /// The database writer's counters; `None` when no daemon runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<WriterReport>,
    /// Measurements queued for the analyzer since the daemon started.
    #[serde(default)]
    pub measurements_accepted: u64,
    /// Measurements the analyzer's queue refused because it was full.
    #[serde(default)]
    pub measurements_refused: u64,
    /// Collector batches waiting for the analyzer.
    #[serde(default)]
    pub analyzer_queue_depth: u64,
    /// Each collector's latest cycle time, by collector name (live daemons only).
    #[serde(default)]
    pub collector_cycles: BTreeMap<String, CycleStat>,
    /// Live series pushed by `report` (live daemons only).
    #[serde(default)]
    pub pushed_series: usize,
    /// The kernel notifications that bring measurements forward (live daemons only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<crate::watch::WatchStats>,
    /// The config file in force, when it was loaded and its SHA-256 (live daemons only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// What each notification sink has sent, failed and dropped (live daemons only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<SinkReport>,
    /// The Gas Town town the daemon follows, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gastown_root: Option<String>,
    /// The database file the summary describes.
    pub db_path: String,
    /// The running daemon's process id; `None` when no daemon runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Problems met while building the summary (e.g. the database could not be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Everything a summary is built from.
#[derive(Debug, Clone, Default)]
pub struct SummaryInputs {
    /// True when a running daemon builds it; false when read from the database alone.
    pub running: bool,
    /// The monitors configured.
    pub monitors: Vec<MonitorSpec>,
    /// The newest value of every series: the analyzer's when live, else from the stored rows.
    pub latest: Vec<HealthMetric>,
    /// The unresolved alerts.
    pub active_alerts: Vec<HealthAlert>,
    /// Metric rows written within [`RECENT_WINDOW`], in all and by status.
    pub recent: query::RecentCounts,
    /// The supervised children's states; empty when no daemon runs.
    pub actors: Vec<ActorReport>,
    /// The database writer's counters; `None` when no daemon runs.
    pub writer: Option<WriterReport>,
    /// Measurements queued for the analyzer since the daemon started (0 without one).
    pub measurements_accepted: u64,
    /// Measurements the analyzer's full queue refused since the daemon started (0 without one).
    pub measurements_refused: u64,
    /// Collector batches waiting for the analyzer (0 without a daemon).
    pub analyzer_queue_depth: u64,
    /// The database file the summary describes.
    pub db_path: PathBuf,
    /// The running daemon's process id; `None` when no daemon runs.
    pub pid: Option<u32>,
    /// Problems met while gathering the inputs, shown with the summary.
    pub warnings: Vec<String>,
}

/// What the database says: recent counts and active alerts.
pub(crate) struct StoredState {
    /// Metric rows written within [`RECENT_WINDOW`], in all and by status.
    pub recent: query::RecentCounts,
    /// The unresolved alerts stored; none when there is no database yet.
    pub active_alerts: Vec<HealthAlert>,
}

/// Reads the stored part of a summary (blocking: call it off the event loop).
pub(crate) fn read_stored(db: &Path, now: DateTime<Utc>) -> anyhow::Result<StoredState> {
    let Some(conn) = store::open_read_only(db)? else {
        return Ok(StoredState {
            recent: query::RecentCounts::default(),
            active_alerts: Vec::new(),
        });
    };
    Ok(StoredState {
        recent: query::recent_counts(&conn, now - RECENT_WINDOW)?,
        active_alerts: query::active_alerts(&conn)?,
    })
}

/// The summary when no daemon runs: everything from the database.
pub fn offline(settings: &Settings, now: DateTime<Utc>) -> anyhow::Result<Summary> {
    let db = &settings.db_path;
    store::check_is_database(db)?;
    let (monitors, latest) = match store::open_read_only(db)? {
        Some(conn) => (
            query::load_monitors(&conn)?,
            query::latest_metrics(&conn, Duration::minutes(10))?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let stored = read_stored(db, now)?;
    let mut warnings = Vec::new();
    if !db.exists() {
        warnings.push(format!("no database at {} yet", db.display()));
    }
    Ok(build(
        SummaryInputs {
            running: false,
            monitors,
            latest,
            active_alerts: stored.active_alerts,
            recent: stored.recent,
            db_path: db.clone(),
            warnings,
            ..Default::default()
        },
        now,
    ))
}

/// True for an alert about a condition (`collector_failed`, `database_write_failed`,
/// `session_death`...), not a threshold on a metric: its type is not a metric's name. A metric's
/// alert already shows through the metric's status; a condition's shows only through this.
pub(crate) fn is_condition(alert_type: &str) -> bool {
    crate::catalog::lookup(alert_type).is_none()
}

/// The least status an active alert gives the resource it is raised on, if any.
///
/// A condition gives its resource its severity (a crashed session is critical), except one that
/// says the resource's monitoring is impaired (`collector_failed`, `collector_stalled`): the
/// resource itself may be fine, its data is what is stale, so it shows as `degraded`, the
/// status for impaired monitoring. The overall status still takes the alert's full severity.
pub(crate) fn resource_floor(alert: &HealthAlert) -> Option<HealthStatus> {
    if alert.resolved || !is_condition(&alert.alert_type) {
        return None;
    }
    let impairs_monitoring = matches!(
        alert.alert_type.as_str(),
        crate::catalog::COLLECTOR_FAILED | crate::catalog::COLLECTOR_STALLED
    );
    Some(if impairs_monitoring {
        alert.severity.min(HealthStatus::Degraded)
    } else {
        alert.severity
    })
}

/// Where resources sort: the machine first, then agents, workspaces and the rest.
fn rank(t: ResourceType) -> u8 {
    match t {
        ResourceType::Cpu => 0,
        ResourceType::Memory => 1,
        ResourceType::Filesystem => 2,
        ResourceType::Network => 3,
        ResourceType::Agent => 4,
        ResourceType::Workspace => 5,
        ResourceType::Database => 6,
        ResourceType::Check => 7,
    }
}

/// Resources keyed so they sort as [`rank`] says, each with the latest metrics shown for it.
/// A resource's id is borrowed from its metrics' rows, owned only for a monitor without data.
type Grouped<'a> = BTreeMap<(u8, ResourceType, Cow<'a, str>), Vec<&'a HealthMetric>>;

/// One resource as the summary lists it, its latest metrics borrowed: what the dashboard's
/// event stream reads every cycle without building the whole summary.
#[derive(Debug)]
pub(crate) struct ResourceState<'a> {
    /// What kind of resource it is.
    pub(crate) resource_type: ResourceType,
    /// Which one.
    pub(crate) resource_id: Cow<'a, str>,
    /// Its status, as [`ResourceView::status`].
    pub(crate) status: HealthStatus,
    /// Its latest metrics, by name.
    pub(crate) metrics: Vec<&'a HealthMetric>,
}

/// Every resource the summary lists, in its order, with its status: the summary's resources
/// without their metrics' views (no string is copied, no timestamp formatted). The latest
/// values are owned rows or borrowed ones (the analyzer's own, read in place).
pub(crate) fn resource_states<'a, M: Borrow<HealthMetric>>(
    watched: &'a Watched,
    latest: &'a [M],
    actors: &[ActorReport],
    active_alerts: &[HealthAlert],
) -> Vec<ResourceState<'a>> {
    let grouped = group_metrics(watched, latest);
    resource_views(grouped, actors, active_alerts)
}

/// Assembles the summary.
pub fn build(inputs: SummaryInputs, now: DateTime<Utc>) -> Summary {
    let watched = Watched::new(&inputs.monitors);
    let resources: Vec<ResourceView> = resource_states(
        &watched,
        &inputs.latest,
        &inputs.actors,
        &inputs.active_alerts,
    )
    .into_iter()
    .map(ResourceState::view)
    .collect();
    let overall_status = overall_status(resources.iter().map(|r| r.status), &inputs.active_alerts);
    let active_alerts = alert_views(&inputs.active_alerts);
    Summary {
        timestamp: format_timestamp(now),
        running: inputs.running,
        monitored_agents: count_monitors(&inputs.monitors, MonitorKind::Agent),
        monitored_workspaces: count_monitors(&inputs.monitors, MonitorKind::Workspace),
        monitored_checks: count_monitors(&inputs.monitors, MonitorKind::Check),
        recent_metrics_count: inputs.recent.total,
        metrics_by_status: inputs.recent.by_status,
        active_alerts_count: active_alerts.len(),
        active_alerts,
        overall_status,
        resources,
        actors: inputs.actors,
        writer: inputs.writer,
        measurements_accepted: inputs.measurements_accepted,
        measurements_refused: inputs.measurements_refused,
        analyzer_queue_depth: inputs.analyzer_queue_depth,
        // Only a live daemon knows its cycles; `Service::summary` fills them in.
        collector_cycles: BTreeMap::new(),
        pushed_series: 0,
        events: None,
        config: None,
        notifications: Vec::new(),
        gastown_root: None,
        db_path: inputs.db_path.display().to_string(),
        pid: inputs.pid,
        warnings: inputs.warnings,
    }
}

/// Named resources, each given with its latest metrics, with their states as
/// [`resource_states`] lists them, or `None` for one it does not list (no monitor, nothing
/// shown). What a cycle of the dashboard reads for the resources that changed.
pub(crate) fn states_of<'a>(
    watched: &Watched,
    resources: impl Iterator<Item = (ResourceType, &'a str, Vec<&'a HealthMetric>)>,
    actors: &[ActorReport],
    active_alerts: &[HealthAlert],
) -> Vec<(ResourceType, &'a str, Option<ResourceState<'a>>)> {
    let impaired = impaired_children(actors);
    resources
        .map(|(t, id, mut metrics)| {
            if watched.unwatched(t, id) {
                metrics.retain(|m| !in_catalog(m));
            }
            let listed = !metrics.is_empty() || watched.monitored(t, id);
            let state = listed
                .then(|| resource_view(t, Cow::Borrowed(id), metrics, &impaired, active_alerts));
            (t, id, state)
        })
        .collect()
}

/// Every monitored resource (with or without data) and every shown metric, grouped by resource.
fn group_metrics<'a, M: Borrow<HealthMetric>>(
    watched: &'a Watched,
    latest: &'a [M],
) -> Grouped<'a> {
    let mut grouped = Grouped::new();
    // The analyzer lists a resource's metrics together: one lookup per resource, not per
    // metric (rows in another order only make more, shorter runs).
    let same_resource = |a: &M, b: &M| {
        let (a, b) = (a.borrow(), b.borrow());
        a.resource_type == b.resource_type && a.resource_id == b.resource_id
    };
    for run in latest.chunk_by(same_resource) {
        let first: &'a HealthMetric = run[0].borrow();
        let (t, id) = (first.resource_type, first.resource_id.as_str());
        let unwatched = watched.unwatched(t, id);
        let mut shown = run
            .iter()
            .map(Borrow::borrow)
            .filter(|m| !unwatched || !in_catalog(m))
            .peekable();
        if shown.peek().is_some() {
            grouped
                .entry((rank(t), t, Cow::Borrowed(id)))
                .or_default()
                .extend(shown);
        }
    }
    for (&t, ids) in &watched.resources {
        for id in ids {
            grouped
                .entry((rank(t), t, Cow::Borrowed(id.as_str())))
                .or_default();
        }
    }
    grouped
}

/// The monitored resources, looked up in one step for each row (a summary tests hundreds of
/// rows against every monitor, every cycle of the dashboard's event stream). Made once from
/// the monitors, kept while they do not change.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// Where each monitor's readings are stored (`MonitorSpec::resource`): a check on an
    /// agent's resource shows there, not as a resource of its own.
    resources: HashMap<ResourceType, HashSet<String>>,
    /// The workspace monitors' ids: their databases are theirs.
    workspaces: Vec<String>,
}

impl Watched {
    /// From the monitors.
    pub(crate) fn new(monitors: &[MonitorSpec]) -> Self {
        let mut resources: HashMap<ResourceType, HashSet<String>> = HashMap::new();
        for spec in monitors {
            let (t, id) = spec.resource();
            resources.entry(t).or_default().insert(id);
        }
        Watched {
            resources,
            workspaces: monitors
                .iter()
                .filter(|s| s.kind() == MonitorKind::Workspace)
                .map(|s| s.id().to_string())
                .collect(),
        }
    }

    /// True for a resource a monitor's readings are stored on: it is listed with or without
    /// data.
    pub(crate) fn monitored(&self, resource_type: ResourceType, resource_id: &str) -> bool {
        self.resources
            .get(&resource_type)
            .is_some_and(|ids| ids.contains(resource_id))
    }

    /// True for a resource no monitor watches: an agent, workspace or check removed (or a
    /// database of a workspace removed), whose rows linger in the database.
    fn unwatched(&self, resource_type: ResourceType, resource_id: &str) -> bool {
        match resource_type {
            // The followed town's own resource (its daemon, its orphans) has no monitor.
            ResourceType::Agent if resource_id == crate::gastown::lifecycle::TOWN_RESOURCE => false,
            ResourceType::Agent | ResourceType::Workspace | ResourceType::Check => {
                !self.monitored(resource_type, resource_id)
            }
            ResourceType::Database => !self.workspaces.iter().any(|w| {
                crate::model::belongs_to(resource_type, resource_id, ResourceType::Workspace, w)
            }),
            _ => false,
        }
    }
}

/// True for a metric of the catalogue. Any other (a pushed metric, a check's perfdata) is
/// about any resource, watched or not.
fn in_catalog(m: &HealthMetric) -> bool {
    crate::catalog::lookup(&m.metric_name).is_some()
}

/// Each grouped resource with its status, in the group's order.
fn resource_views<'a>(
    grouped: Grouped<'a>,
    actors: &[ActorReport],
    active_alerts: &[HealthAlert],
) -> Vec<ResourceState<'a>> {
    let impaired = impaired_children(actors);
    grouped
        .into_iter()
        .map(|((_, resource_type, resource_id), metrics)| {
            resource_view(
                resource_type,
                resource_id,
                metrics,
                &impaired,
                active_alerts,
            )
        })
        .collect()
}

/// The children that do not run now (restarting, parked), by name: their resources show as
/// degraded. Usually none.
fn impaired_children(actors: &[ActorReport]) -> HashMap<&str, ChildState> {
    actors
        .iter()
        .filter(|a| a.state != ChildState::Running)
        .map(|a| (a.name.as_str(), a.state))
        .collect()
}

/// One resource: its metrics by name and its worst status, lifted by impaired monitoring and
/// by active conditions on it.
fn resource_view<'a>(
    resource_type: ResourceType,
    resource_id: Cow<'a, str>,
    mut metrics: Vec<&'a HealthMetric>,
    impaired: &HashMap<&str, ChildState>,
    active_alerts: &[HealthAlert],
) -> ResourceState<'a> {
    metrics.sort_by(|a, b| a.metric_name.cmp(&b.metric_name));
    let mut status = metrics
        .iter()
        .map(|m| m.status)
        .max()
        .unwrap_or(HealthStatus::Unknown);
    // Impaired monitoring shows as degraded unless the data already says worse. (Usually
    // every child runs: then no collector's name is made.)
    if !impaired.is_empty()
        && status < HealthStatus::Degraded
        && impaired.contains_key(collector_of(resource_type, &resource_id).as_str())
    {
        status = HealthStatus::Degraded;
    }
    // An active condition on the resource shows too, though no metric says it.
    for alert in active_alerts {
        if alert.resource_type == resource_type
            && alert.resource_id == resource_id
            && let Some(floor) = resource_floor(alert)
        {
            status = status.max(floor);
        }
    }
    ResourceState {
        resource_type,
        resource_id,
        status,
        metrics,
    }
}

impl ResourceState<'_> {
    /// The resource as the summary lists it.
    fn view(self) -> ResourceView {
        ResourceView {
            resource_type: self.resource_type,
            resource_id: self.resource_id.into_owned(),
            status: self.status,
            metrics: self.metrics.into_iter().map(metric_view).collect(),
        }
    }
}

/// The supervised child that collects a resource's metrics.
fn collector_of(resource_type: ResourceType, resource_id: &str) -> String {
    match resource_type {
        ResourceType::Agent => monitor_child_name(MonitorKind::Agent, resource_id),
        ResourceType::Workspace => monitor_child_name(MonitorKind::Workspace, resource_id),
        _ => "system".to_string(),
    }
}

/// A metric's latest value as the summary lists it.
fn metric_view(m: &HealthMetric) -> MetricView {
    MetricView {
        metric_name: m.metric_name.to_string(),
        value: m.value,
        unit: m.unit.to_string(),
        status: m.status,
        timestamp: format_timestamp(m.timestamp),
    }
}

/// The worst of the resources' statuses, and at least the severity of every active alert.
pub(crate) fn overall_status(
    statuses: impl Iterator<Item = HealthStatus>,
    active_alerts: &[HealthAlert],
) -> HealthStatus {
    // A condition (a failed collector, a database that refuses writes, a crashed session) has
    // no metric status to show through, and may be raised on a resource not listed
    // (`database/<db path>`).
    statuses
        .chain(
            active_alerts
                .iter()
                .filter(|a| !a.resolved)
                .map(|a| a.severity),
        )
        .max()
        .unwrap_or(HealthStatus::Unknown)
}

/// The active alerts as the summary lists them, in their order.
fn alert_views(active_alerts: &[HealthAlert]) -> Vec<AlertView> {
    active_alerts
        .iter()
        .map(|a| AlertView {
            id: a.id,
            resource_type: a.resource_type,
            resource_id: a.resource_id.clone(),
            alert_type: a.alert_type.clone(),
            severity: a.severity,
            message: a.message.clone(),
            timestamp: format_timestamp(a.timestamp),
        })
        .collect()
}

/// How many monitors are of `kind`.
fn count_monitors(monitors: &[MonitorSpec], kind: MonitorKind) -> usize {
    monitors.iter().filter(|m| m.kind() == kind).count()
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Where the human status wraps long lines of values.
const WRAP_AT: usize = 100;

/// The summary for people.
pub(crate) fn render(s: &Summary) -> String {
    let mut out = String::new();
    let daemon = match (s.running, s.pid) {
        (true, Some(pid)) => format!("daemon running (pid {pid})"),
        (true, None) => "daemon running".to_string(),
        (false, _) => "no daemon running (from the database)".to_string(),
    };
    let _ = writeln!(
        out,
        "overall: {}    {}    db: {}",
        s.overall_status.as_str().to_uppercase(),
        daemon,
        s.db_path
    );
    let by = |k: &str| s.metrics_by_status.get(k).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "monitors: {}, {}{}    last hour: {} metrics ({} healthy, {} unhealthy, {} critical)",
        plural(s.monitored_agents, "agent"),
        plural(s.monitored_workspaces, "workspace"),
        if s.monitored_checks > 0 {
            format!(", {}", plural(s.monitored_checks, "check"))
        } else {
            String::new()
        },
        s.recent_metrics_count,
        by("healthy"),
        by("unhealthy"),
        by("critical"),
    );
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(out);
    let names: Vec<String> = s
        .resources
        .iter()
        .map(|r| format!("{}/{}", r.resource_type, r.resource_id))
        .collect();
    let width = names.iter().map(String::len).max().unwrap_or(8).max(8);
    let _ = writeln!(out, "{:<width$}  {:<9}  VALUES", "RESOURCE", "STATUS");
    for (r, name) in s.resources.iter().zip(&names) {
        let values: Vec<String> = r
            .metrics
            .iter()
            .map(|m| {
                let v = format_value(m.value, &m.unit).replace(' ', "");
                format!("{}={v}", m.metric_name)
            })
            .collect();
        let values = if values.is_empty() {
            vec!["(no data yet)".to_string()]
        } else {
            values
        };
        // Long value lists wrap under the VALUES column rather than run off the screen.
        let indent = width + 2 + 9 + 2;
        let mut line = format!("{name:<width$}  {:<9} ", r.status.as_str());
        for (i, v) in values.iter().enumerate() {
            if i > 0 && line.len() + 1 + v.len() > WRAP_AT {
                let _ = writeln!(out, "{line}");
                line = " ".repeat(indent - 1);
            }
            line.push(' ');
            line.push_str(v);
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    if s.active_alerts.is_empty() {
        let _ = writeln!(out, "no active alerts");
    } else {
        let _ = writeln!(out, "ACTIVE ALERTS ({})", s.active_alerts.len());
        for a in &s.active_alerts {
            let id = a.id.map_or("-".to_string(), |id| format!("#{id}"));
            let _ = writeln!(
                out,
                "  {id:<5} {:<9}  since {}  {}",
                a.severity.as_str(),
                a.timestamp,
                a.message
            );
        }
    }
    let troubled: Vec<&ActorReport> = s
        .actors
        .iter()
        .filter(|a| a.state != ChildState::Running || a.restarts > 0)
        .collect();
    if !troubled.is_empty() {
        let _ = writeln!(out);
        for a in troubled {
            let _ = writeln!(
                out,
                "actor {}: {:?}, {} restarts",
                a.name, a.state, a.restarts
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Measurement, Thresholds};

    fn metric(t: ResourceType, id: &str, name: &'static str, v: f64) -> HealthMetric {
        HealthMetric::from_measurement(
            Measurement::now(t, id, name, v, "%"),
            Some(Thresholds::new(80.0, 95.0)),
        )
    }

    #[test]
    fn the_summary_has_the_original_eight_keys() {
        let s = build(SummaryInputs::default(), Utc::now());
        let json = serde_json::to_value(&s).unwrap();
        for key in [
            "timestamp",
            "running",
            "monitored_agents",
            "monitored_workspaces",
            "recent_metrics_count",
            "metrics_by_status",
            "active_alerts_count",
            "active_alerts",
        ] {
            assert!(json.get(key).is_some(), "missing {key}: {json}");
        }
        assert!(s.timestamp.ends_with('Z'));
        assert_eq!(s.overall_status, HealthStatus::Unknown);
    }

    #[test]
    fn resources_take_their_worst_status_and_monitors_without_data_are_unknown() {
        let inputs = SummaryInputs {
            monitors: vec![MonitorSpec::agent("a1"), MonitorSpec::workspace("w1")],
            latest: vec![
                metric(ResourceType::Workspace, "gone", "workspace_size_mb", 99.0),
                metric(ResourceType::Workspace, "w1", "x", 10.0),
                metric(ResourceType::Workspace, "w1", "y", 90.0),
                metric(ResourceType::Cpu, "system", "cpu_usage_percent", 5.0),
                metric(ResourceType::Agent, "retired", "agent_active", 0.0),
                metric(ResourceType::Agent, "gastown", "town_daemon_alive", 1.0),
            ],
            ..Default::default()
        };
        let s = build(inputs, Utc::now());
        assert!(
            s.resources.iter().any(|r| r.resource_id == "gastown"),
            "the town's own resource has no monitor but is shown"
        );
        assert!(s.resources.iter().all(|r| r.resource_id != "retired"));
        assert_eq!(s.monitored_agents, 1);
        assert_eq!(s.monitored_workspaces, 1);
        let find = |id: &str, t| {
            s.resources
                .iter()
                .find(|r| r.resource_id == id && r.resource_type == t)
                .unwrap()
        };
        assert_eq!(
            find("w1", ResourceType::Workspace).status,
            HealthStatus::Unhealthy
        );
        assert_eq!(
            find("a1", ResourceType::Agent).status,
            HealthStatus::Unknown
        );
        assert_eq!(s.resources[0].resource_type, ResourceType::Cpu);
        assert!(s.resources.iter().all(|r| r.resource_id != "gone"));
        assert_eq!(s.overall_status, HealthStatus::Unhealthy);
        let text = render(&s);
        assert!(text.starts_with("overall: UNHEALTHY"), "{text}");
        assert!(text.contains("workspace/w1"), "{text}");
        assert!(text.contains("y=90%"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");
        assert!(text.contains("(no data yet)"), "{text}");
    }

    fn alert(t: ResourceType, id: &str, alert_type: &str, severity: HealthStatus) -> HealthAlert {
        let now = Utc::now();
        HealthAlert {
            id: Some(1),
            resource_type: t,
            resource_id: id.into(),
            alert_type: alert_type.into(),
            severity,
            message: format!("{alert_type} on {t}/{id}"),
            timestamp: now,
            metadata: serde_json::Value::Null,
            resolved: false,
            resolved_at: None,
            last_notified_at: now,
            acknowledged_at: None,
        }
    }

    fn find(s: &Summary, t: ResourceType, id: &str) -> HealthStatus {
        s.resources
            .iter()
            .find(|r| r.resource_type == t && r.resource_id == id)
            .unwrap_or_else(|| panic!("no {t}/{id} in {:?}", s.resources))
            .status
    }

    #[test]
    fn a_critical_condition_makes_the_overall_status_critical() {
        let healthy = || SummaryInputs {
            monitors: vec![MonitorSpec::workspace("w1")],
            latest: vec![
                metric(ResourceType::Cpu, "system", "cpu_usage_percent", 5.0),
                metric(ResourceType::Workspace, "w1", "workspace_size_mb", 10.0),
            ],
            ..Default::default()
        };
        assert_eq!(
            build(healthy(), Utc::now()).overall_status,
            HealthStatus::Healthy
        );
        // The database refuses writes: its resource is not listed, no metric says so.
        for condition in ["database_write_failed", "a_condition_of_tomorrow"] {
            let mut inputs = healthy();
            inputs.active_alerts = vec![alert(
                ResourceType::Database,
                "/var/lib/hm.db",
                condition,
                HealthStatus::Critical,
            )];
            let s = build(inputs, Utc::now());
            assert_eq!(s.overall_status, HealthStatus::Critical, "{condition}");
            assert!(
                s.resources
                    .iter()
                    .all(|r| r.status == HealthStatus::Healthy)
            );
            assert!(
                render(&s).starts_with("overall: CRITICAL"),
                "{}",
                render(&s)
            );
        }
        // Offline, with no fresh data at all, the open alert still shows.
        let s = build(
            SummaryInputs {
                active_alerts: vec![alert(
                    ResourceType::Workspace,
                    "w1",
                    "collector_failed",
                    HealthStatus::Critical,
                )],
                ..Default::default()
            },
            Utc::now(),
        );
        assert_eq!(s.overall_status, HealthStatus::Critical);
        // A resolved alert counts for nothing.
        let mut inputs = healthy();
        let mut resolved = alert(
            ResourceType::Agent,
            "a1",
            "session_death",
            HealthStatus::Critical,
        );
        resolved.resolved = true;
        inputs.active_alerts = vec![resolved];
        assert_eq!(
            build(inputs, Utc::now()).overall_status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn a_condition_shows_on_its_resource_and_impaired_monitoring_stays_degraded() {
        let inputs = SummaryInputs {
            monitors: vec![
                MonitorSpec::agent("a1"),
                MonitorSpec::workspace("w1"),
                MonitorSpec::workspace("w2"),
            ],
            latest: vec![
                metric(ResourceType::Cpu, "system", "cpu_usage_percent", 5.0),
                metric(ResourceType::Memory, "system", "memory_usage_percent", 10.0),
                metric(ResourceType::Agent, "a1", "agent_memory_mb", 10.0),
                metric(ResourceType::Workspace, "w1", "workspace_size_mb", 10.0),
                metric(ResourceType::Workspace, "w2", "workspace_size_mb", 10.0),
            ],
            active_alerts: vec![
                // A crashed session: the agent itself is critical.
                alert(
                    ResourceType::Agent,
                    "a1",
                    "session_death",
                    HealthStatus::Critical,
                ),
                // Its collector is parked: the workspace's data is stale, not the workspace bad.
                alert(
                    ResourceType::Workspace,
                    "w1",
                    "collector_failed",
                    HealthStatus::Critical,
                ),
                alert(
                    ResourceType::Cpu,
                    "system",
                    "collector_stalled",
                    HealthStatus::Critical,
                ),
                // A metric's alert (still open inside its hysteresis) shows through its metric,
                // not on the resource; it still counts for the overall status.
                alert(
                    ResourceType::Memory,
                    "system",
                    "memory_usage_percent",
                    HealthStatus::Unhealthy,
                ),
            ],
            ..Default::default()
        };
        let s = build(inputs, Utc::now());
        assert_eq!(find(&s, ResourceType::Agent, "a1"), HealthStatus::Critical);
        assert_eq!(
            find(&s, ResourceType::Workspace, "w1"),
            HealthStatus::Degraded
        );
        assert_eq!(
            find(&s, ResourceType::Cpu, "system"),
            HealthStatus::Degraded
        );
        assert_eq!(
            find(&s, ResourceType::Memory, "system"),
            HealthStatus::Healthy
        );
        assert_eq!(
            find(&s, ResourceType::Workspace, "w2"),
            HealthStatus::Healthy
        );
        assert_eq!(s.overall_status, HealthStatus::Critical);
        // Worse data than "degraded" is never hidden by a monitoring condition.
        let inputs = SummaryInputs {
            monitors: vec![MonitorSpec::workspace("w1")],
            latest: vec![metric(
                ResourceType::Workspace,
                "w1",
                "workspace_size_mb",
                99.0,
            )],
            active_alerts: vec![alert(
                ResourceType::Workspace,
                "w1",
                "collector_failed",
                HealthStatus::Critical,
            )],
            ..Default::default()
        };
        let s = build(inputs, Utc::now());
        assert_eq!(
            find(&s, ResourceType::Workspace, "w1"),
            HealthStatus::Critical
        );
        // A lesser condition lifts the overall status only as far as its severity.
        let inputs = SummaryInputs {
            latest: vec![metric(
                ResourceType::Cpu,
                "system",
                "cpu_usage_percent",
                5.0,
            )],
            active_alerts: vec![alert(
                ResourceType::Agent,
                "gastown",
                "town_event",
                HealthStatus::Unhealthy,
            )],
            ..Default::default()
        };
        assert_eq!(
            build(inputs, Utc::now()).overall_status,
            HealthStatus::Unhealthy
        );
    }

    #[test]
    fn a_restarting_collector_degrades_its_resource() {
        let inputs = SummaryInputs {
            monitors: vec![MonitorSpec::workspace("w1")],
            latest: vec![metric(ResourceType::Workspace, "w1", "x", 10.0)],
            actors: vec![ActorReport {
                name: "workspace:w1".into(),
                state: ChildState::Restarting,
                restarts: 2,
            }],
            ..Default::default()
        };
        let s = build(inputs, Utc::now());
        assert_eq!(s.resources[0].status, HealthStatus::Degraded);
        assert!(render(&s).contains("actor workspace:w1: Restarting, 2 restarts"));
    }

    #[test]
    fn each_section_of_the_summary_builds_on_its_own() {
        let monitors = vec![MonitorSpec::agent("a1"), MonitorSpec::workspace("w1")];
        let latest = vec![
            metric(ResourceType::Workspace, "gone", "workspace_size_mb", 1.0),
            metric(ResourceType::Workspace, "w1", "y", 90.0),
            metric(ResourceType::Workspace, "w1", "x", 10.0),
        ];
        let watched = Watched::new(&monitors);
        assert!(watched.unwatched(ResourceType::Workspace, "gone") && in_catalog(&latest[0]));
        assert!(!watched.unwatched(ResourceType::Workspace, "w1"));
        assert!(watched.unwatched(ResourceType::Database, "gone/x.db"));
        assert!(!watched.unwatched(ResourceType::Database, "w1/x.db"));
        assert!(!in_catalog(&latest[1]), "y is pushed: shown wherever it is");
        let grouped = group_metrics(&watched, &latest);
        let keys: Vec<String> = grouped
            .keys()
            .map(|(_, t, id)| format!("{t}/{id}"))
            .collect();
        assert_eq!(keys, ["agent/a1", "workspace/w1"]);
        assert_eq!(collector_of(ResourceType::Workspace, "w1"), "workspace:w1");
        assert_eq!(collector_of(ResourceType::Cpu, "system"), "system");
        let views: Vec<ResourceView> = resource_views(grouped, &[], &[])
            .into_iter()
            .map(ResourceState::view)
            .collect();
        assert_eq!(views[1].metrics[0].metric_name, "x");
        assert_eq!(views[1].status, HealthStatus::Unhealthy);
        let alerts = [alert(
            ResourceType::Database,
            "/x.db",
            "database_write_failed",
            HealthStatus::Critical,
        )];
        let statuses = || views.iter().map(|r| r.status);
        assert_eq!(overall_status(statuses(), &alerts), HealthStatus::Critical);
        assert_eq!(
            overall_status(std::iter::empty(), &[]),
            HealthStatus::Unknown
        );
        assert_eq!(alert_views(&alerts)[0].resource_id, "/x.db");
        assert_eq!(count_monitors(&monitors, MonitorKind::Agent), 1);
    }

    #[test]
    fn rows_in_any_order_group_by_resource_and_a_removed_resources_catalogue_rows_go() {
        let monitors = vec![MonitorSpec::agent("a1")];
        let latest = vec![
            metric(ResourceType::Agent, "a1", "agent_memory_mb", 1.0),
            metric(ResourceType::Agent, "gone", "agent_memory_mb", 1.0),
            metric(ResourceType::Agent, "a1", "pushed_a", 2.0),
            metric(ResourceType::Agent, "gone", "pushed_b", 3.0),
            metric(ResourceType::Agent, "gone2", "agent_memory_mb", 1.0),
        ];
        let watched = Watched::new(&monitors);
        let grouped = group_metrics(&watched, &latest);
        let shown: Vec<(String, Vec<&str>)> = grouped
            .iter()
            .map(|((_, t, id), metrics)| {
                let names = metrics.iter().map(|m| m.metric_name.as_ref()).collect();
                (format!("{t}/{id}"), names)
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("agent/a1".to_string(), vec!["agent_memory_mb", "pushed_a"]),
                // A pushed series is shown on any resource; the removed agent's own are not.
                ("agent/gone".to_string(), vec!["pushed_b"]),
            ]
        );
    }
}
