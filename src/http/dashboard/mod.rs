//! The dashboard: the overview (`GET /`) and a resource's page (`GET /resource/TYPE/ID`),
//! rendered on the server from compile-time templates (askama, which escapes every value), with
//! the SVG charts drawn here too. `static/app.js` adds the live updates (the event stream of
//! [`events`]) and the actions (ack, silence) on top; without it the pages read the same.

pub(crate) mod actions;
pub(crate) mod direct;
pub(crate) mod events;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use chrono::{DateTime, Utc};

use super::api::{ApiError, State};
use crate::chart::{self, Range};
use crate::live::{LiveAlert, LiveDiff, LiveResource, LiveState};
use crate::model::{HealthAlert, HealthMetric, HealthStatus, ResourceType, format_timestamp};
use crate::summary::Summary;

/// The script the pages load: the live updates and the actions.
const APP_JS: &str = include_str!("../../../static/app.js");
/// The pages' style sheet.
const APP_CSS: &str = include_str!("../../../static/app.css");
/// A chart's drawing box, in SVG units.
const CHART_WIDTH: f64 = 720.0;
/// A chart's height.
const CHART_HEIGHT: f64 = 160.0;
/// Rows of a resource's alert history.
const HISTORY_ROWS: usize = 50;
/// Values a resource row of the overview shows.
const ROW_VALUES: usize = 4;

/// The symbol shown beside a status word (never instead of it).
pub(crate) fn icon(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Healthy => "✓",
        HealthStatus::Unhealthy => "!",
        HealthStatus::Critical => "✖",
        HealthStatus::Degraded => "◐",
        HealthStatus::Unknown => "?",
    }
}

/// A resource's page address: its id percent-encoded, `/` kept (mount points, databases).
pub(crate) fn resource_href(resource_type: ResourceType, id: &str) -> String {
    let mut out = format!("/resource/{resource_type}/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long ago, for people: `12 s`, `5 min`, `3 h`, `2 d`.
fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - since).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// A group of the overview: its kind and title, in the summary's order.
fn group_title(t: ResourceType) -> (&'static str, &'static str) {
    match t {
        ResourceType::Cpu | ResourceType::Memory | ResourceType::Filesystem => ("system", "System"),
        ResourceType::Network => ("network", "Network"),
        ResourceType::Agent => ("agent", "Agents"),
        ResourceType::Workspace => ("workspace", "Workspaces"),
        ResourceType::Database => ("database", "Databases"),
        ResourceType::Check => ("check", "Checks"),
    }
}

/// One resource row of the overview.
pub(crate) struct ResourceRow {
    resource_type: String,
    id: String,
    /// What its link says: the id, or for the machine's own resources what they are.
    label: String,
    status: String,
    icon: &'static str,
    values: String,
    href: String,
    spark: String,
    spark_label: String,
}

/// One group of resource rows.
pub(crate) struct Group {
    kind: &'static str,
    title: &'static str,
    rows: Vec<ResourceRow>,
}

/// One active alert row.
pub(crate) struct AlertRow {
    id: i64,
    severity: String,
    icon: &'static str,
    resource_type: String,
    resource: String,
    metric: String,
    message: String,
    since: String,
    age: String,
    acked: bool,
    silenced: bool,
    href: String,
}

/// One silence row.
pub(crate) struct SilenceRow {
    resource_type: String,
    id: String,
    metric: String,
    until: String,
    comment: String,
}

/// The overview page.
#[derive(Template)]
#[template(path = "overview.html")]
pub(crate) struct Overview {
    overall: String,
    overall_icon: &'static str,
    writes: bool,
    interval_secs: f64,
    groups: Vec<Group>,
    alerts: Vec<AlertRow>,
    silences: Vec<SilenceRow>,
    generated: String,
}

/// A resource page's range link.
pub(crate) struct RangeLink {
    name: &'static str,
    href: String,
    current: bool,
}

/// One chart of a resource page.
pub(crate) struct Chart {
    metric: String,
    status: String,
    latest: String,
    svg: chart::ChartSvg,
    axis: String,
}

/// One row of a resource's alert history.
pub(crate) struct HistoryRow {
    severity: String,
    icon: &'static str,
    metric: String,
    message: String,
    opened: String,
    resolved: String,
}

/// A resource's page.
#[derive(Template)]
#[template(path = "resource.html")]
pub(crate) struct ResourcePage {
    overall: String,
    overall_icon: &'static str,
    writes: bool,
    interval_secs: f64,
    resource_type: String,
    id: String,
    status: String,
    status_icon: &'static str,
    ranges: Vec<RangeLink>,
    range: &'static str,
    charts: Vec<Chart>,
    history: Vec<HistoryRow>,
    width: f64,
    height: f64,
    generated: String,
}

/// One reading as a resource's row shows it: the metric's name, its value and its unit.
type Reading<'a> = (&'a str, f64, &'a str);

/// Puts a resource's main metric first; the others keep their order (by name).
fn order_readings(resource_type: ResourceType, readings: &mut [Reading<'_>]) {
    let main = crate::rollup::main_metric(resource_type);
    readings.sort_by_key(|r| Some(r.0) != main);
}

/// The values of a resource as its row shows them, from its ordered readings: at most a few.
fn values_text(readings: &[Reading<'_>]) -> String {
    let mut text = String::new();
    write_values_text(&mut text, readings);
    text
}

/// [`values_text`] into `out` (cleared first), in one buffer: `name=value` with the value as
/// [`format_value`](crate::alerts::format_value) gives it, without its spaces. A changed row's
/// text is made every cycle, so it is written in place, not made of a string per part.
fn write_values_text(out: &mut String, readings: &[Reading<'_>]) {
    out.clear();
    if readings.is_empty() {
        out.push_str("no data yet");
        return;
    }
    for (i, (name, value, unit)) in readings.iter().take(ROW_VALUES).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        out.push_str(name);
        out.push('=');
        crate::alerts::write_number(out, *value);
        match *unit {
            "" | "bool" | "count" | "ratio" | "state" => {}
            u => out.extend(u.chars().filter(|c| *c != ' ')),
        }
    }
    if readings.len() > ROW_VALUES {
        let _ = write!(out, " (+{} more)", readings.len() - ROW_VALUES);
    }
}

/// Each resource's values text as last made, with the readings it shows: a cycle makes again
/// only the texts whose readings changed (from one cycle to the next, most keep theirs).
#[derive(Debug, Default)]
pub(crate) struct ValuesCache {
    /// By `type/id`.
    by_resource: std::collections::HashMap<String, CachedValues>,
    /// The cycle going on; a resource not seen in it is forgotten at its end.
    cycle: u64,
    /// Texts made, for the tests.
    made: u64,
}

/// One resource's values text and what it was made from.
#[derive(Debug, Default)]
struct CachedValues {
    /// The readings shown (the first [`ROW_VALUES`], ordered), the values as bits: a NaN is
    /// then equal to itself.
    shown: Vec<(String, u64, String)>,
    /// How many readings the resource had (the text says how many more there are).
    count: usize,
    text: String,
    /// The cycle that last saw it.
    seen: u64,
}

impl CachedValues {
    /// Made again from `readings`, in the buffers it had: usually only a value changed.
    fn remade(mut self, readings: &[Reading<'_>]) -> Self {
        let shown = &readings[..readings.len().min(ROW_VALUES)];
        self.shown.truncate(shown.len());
        for (i, (name, value, unit)) in shown.iter().enumerate() {
            match self.shown.get_mut(i) {
                Some((n, v, u)) => {
                    if n != name {
                        n.clear();
                        n.push_str(name);
                    }
                    *v = value.to_bits();
                    if u != unit {
                        u.clear();
                        u.push_str(unit);
                    }
                }
                None => self
                    .shown
                    .push((name.to_string(), value.to_bits(), unit.to_string())),
            }
        }
        self.count = readings.len();
        write_values_text(&mut self.text, readings);
        self
    }

    /// True when `readings` make this text.
    fn made_of(&self, readings: &[Reading<'_>]) -> bool {
        let shown = &readings[..readings.len().min(ROW_VALUES)];
        self.count == readings.len()
            && self.shown.len() == shown.len()
            && self
                .shown
                .iter()
                .zip(shown)
                .all(|((n, v, u), (name, value, unit))| {
                    *v == value.to_bits() && n == name && u == unit
                })
    }
}

impl ValuesCache {
    /// The values text of resource `key` if these ordered readings made it (then it is seen in
    /// this cycle); `None` if they changed, or for a resource new to the cache.
    fn cached(&mut self, key: &str, readings: &[Reading<'_>]) -> Option<&str> {
        let cycle = self.cycle;
        let cached = self.by_resource.get_mut(key)?;
        if !cached.made_of(readings) {
            return None;
        }
        cached.seen = cycle;
        Some(&cached.text)
    }

    /// The values text of resource `key` with these ordered readings, made only if they
    /// changed since the last cycle.
    fn text(&mut self, key: &str, readings: &[Reading<'_>]) -> String {
        let cycle = self.cycle;
        let Some(cached) = self.by_resource.get_mut(key) else {
            self.made += 1;
            let cached = CachedValues {
                shown: Vec::new(),
                count: 0,
                text: String::new(),
                seen: cycle,
            }
            .remade(readings);
            let text = cached.text.clone();
            self.by_resource.insert(key.to_string(), cached);
            return text;
        };
        if !cached.made_of(readings) {
            self.made += 1;
            *cached = std::mem::take(cached).remade(readings);
        }
        cached.seen = cycle;
        cached.text.clone()
    }

    /// Ends a cycle: forgets the resources it did not see.
    fn end_cycle(&mut self) {
        let cycle = self.cycle;
        self.by_resource.retain(|_, c| c.seen == cycle);
        self.cycle += 1;
    }
}

/// A resource of the live state, by its `type/id`.
fn live_resource(
    resource_type: ResourceType,
    id: &str,
    status: HealthStatus,
    mut readings: Vec<Reading<'_>>,
) -> (String, LiveResource) {
    order_readings(resource_type, &mut readings);
    let resource = LiveResource {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        status: status.as_str().to_string(),
        values: values_text(&readings),
    };
    (format!("{resource_type}/{id}"), resource)
}

/// The active alerts as a page shows them: newest first, each with whether a silence covers it.
fn live_alerts(
    active: &[HealthAlert],
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
) -> Vec<LiveAlert> {
    let mut alerts: Vec<&HealthAlert> = active.iter().filter(|a| a.id.is_some()).collect();
    alerts.sort_by(|a, b| b.timestamp.cmp(&a.timestamp).then(b.id.cmp(&a.id)));
    alerts
        .into_iter()
        .map(|a| LiveAlert {
            id: a.id.unwrap_or_default(),
            severity: a.severity.as_str().to_string(),
            resource_type: a.resource_type.to_string(),
            resource: a.resource_id.clone(),
            metric: a.alert_type.clone(),
            message: a.message.clone(),
            since: format_timestamp(a.timestamp),
            acked: a.acknowledged_at.is_some(),
            silenced: silences.iter().any(|s| s.covers(a, now)),
        })
        .collect()
}

/// The silences in force as a page shows them.
fn live_silences(
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
) -> Vec<crate::live::LiveSilence> {
    silences
        .iter()
        .filter(|s| s.expires_at > now)
        .map(|s| crate::live::LiveSilence {
            resource_type: s.resource_type.to_string(),
            id: s.resource_id.clone(),
            metric: s.metric.clone().unwrap_or_default(),
            until: format_timestamp(s.expires_at),
            comment: s.comment.clone().unwrap_or_default(),
        })
        .collect()
}

/// What a page shows that changes with each cycle, from the live summary, the analyzer's
/// active alerts and the silences.
pub(crate) fn live_state(
    summary: &Summary,
    active: &[HealthAlert],
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
) -> LiveState {
    let resources = summary
        .resources
        .iter()
        .map(|r| {
            let readings = r
                .metrics
                .iter()
                .map(|m| (m.metric_name.as_str(), m.value, m.unit.as_str()))
                .collect();
            live_resource(r.resource_type, &r.resource_id, r.status, readings)
        })
        .collect::<BTreeMap<_, _>>();
    LiveState {
        overall: summary.overall_status.as_str().to_string(),
        resources,
        alerts: live_alerts(active, silences, now),
        silences: live_silences(silences, now),
    }
}

/// What a cycle's state is made of, each part borrowed where it is kept: the monitors (as
/// [`Watched`](crate::summary::Watched), kept while they do not change) and the actors' states
/// from the supervisor, the analyzer's latest values (read in place on the analyzer) and its
/// open alerts.
pub(crate) struct LiveView<'a> {
    /// The monitored resources.
    pub(crate) watched: &'a crate::summary::Watched,
    /// Every child's state, and the writer's.
    pub(crate) actors: &'a [crate::report::ActorReport],
    /// The newest value of every series (read by [`update_state`] only).
    pub(crate) latest: &'a [&'a HealthMetric],
    /// The alerts open now.
    pub(crate) active_alerts: &'a [HealthAlert],
}

/// Brings the event stream's state up to date with what the daemon holds, in place, and says
/// what changed (`None`: nothing). The state ends as [`live_state`] makes it from the live
/// summary, without building the summary; a resource whose status and readings did not change
/// costs no string, its values text kept in `cache` from one cycle to the next.
pub(crate) fn update_state(
    state: &mut LiveState,
    inputs: &LiveView<'_>,
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
    cache: &mut ValuesCache,
) -> Option<LiveDiff> {
    let resources = crate::summary::resource_states(
        inputs.watched,
        inputs.latest,
        inputs.actors,
        inputs.active_alerts,
    );
    let mut changed: Vec<(String, LiveResource)> = Vec::new();
    let mut kept = 0;
    let mut key = String::new();
    for r in &resources {
        key.clear();
        let _ = write!(key, "{}/{}", r.resource_type, r.resource_id);
        if state.resources.contains_key(key.as_str()) {
            kept += 1;
        }
        if let Some(resource) = set_resource(state, &key, r, cache) {
            changed.push((key.clone(), resource));
        }
    }
    cache.end_cycle();
    let mut removed = Vec::new();
    if kept < state.resources.len() {
        // Rare (a monitor removed, a pushed series expired): only then are the keys made again.
        let seen: std::collections::HashSet<String> = resources
            .iter()
            .map(|r| format!("{}/{}", r.resource_type, r.resource_id))
            .collect();
        state.resources.retain(|k, _| {
            let keep = seen.contains(k);
            if !keep {
                removed.push(k.clone());
            }
            keep
        });
    }
    let overall =
        crate::summary::overall_status(resources.iter().map(|r| r.status), inputs.active_alerts);
    finish_update(state, changed, removed, overall, inputs, silences, now)
}

/// [`update_state`] for a cycle in which only the resources `changed` gives (each with its
/// latest metrics) may have changed (the analyzer says which; the monitors, the children's
/// states and the conditions on the other resources are as in the previous cycle): only those
/// are looked at, and the state ends as [`update_state`] would leave it. The cost follows what
/// changed, not the fleet's size. `inputs.latest` is not read.
pub(crate) fn update_changed<'a>(
    state: &mut LiveState,
    inputs: &LiveView<'_>,
    changed: impl Iterator<Item = (ResourceType, &'a str, Vec<&'a HealthMetric>)>,
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
) -> Option<LiveDiff> {
    let states =
        crate::summary::states_of(inputs.watched, changed, inputs.actors, inputs.active_alerts);
    let (mut updated, mut removed) = (Vec::new(), Vec::new());
    let (mut key, mut values) = (String::new(), String::new());
    for (t, id, r) in &states {
        key.clear();
        let _ = write!(key, "{t}/{id}");
        let Some(r) = r else {
            if state.resources.remove(key.as_str()).is_some() {
                removed.push(key.clone());
            }
            continue;
        };
        // Its readings changed: the text is made again at once, with no cache to ask (a
        // full cycle's cache finds its texts stale by their readings, never wrong).
        write_values_text(&mut values, &ordered_readings(r));
        let status = r.status.as_str();
        match state.resources.get_mut(key.as_str()) {
            Some(live) if live.status == status && live.values == values => {}
            Some(live) => {
                if live.status != status {
                    live.status = status.to_string();
                }
                live.values.clone_from(&values);
                updated.push((key.clone(), live.clone()));
            }
            None => {
                let resource = LiveResource {
                    resource_type: t.to_string(),
                    id: id.to_string(),
                    status: status.to_string(),
                    values: values.clone(),
                };
                state.resources.insert(key.clone(), resource.clone());
                updated.push((key.clone(), resource));
            }
        }
    }
    removed.sort();
    // The other resources' statuses are as the state holds them.
    let statuses = state
        .resources
        .values()
        .map(|r| r.status.parse().unwrap_or(HealthStatus::Unknown));
    let overall = crate::summary::overall_status(statuses, inputs.active_alerts);
    finish_update(state, updated, removed, overall, inputs, silences, now)
}

/// A resource's readings in its row's order (its main metric first).
fn ordered_readings<'a>(r: &crate::summary::ResourceState<'a>) -> Vec<Reading<'a>> {
    let mut readings: Vec<Reading<'a>> = r
        .metrics
        .iter()
        .map(|m| (m.metric_name.as_ref(), m.value, m.unit.as_ref()))
        .collect();
    order_readings(r.resource_type, &mut readings);
    readings
}

/// Sets resource `key` of the state to what `r` says (a new resource is added); returns it when
/// that changed it.
fn set_resource(
    state: &mut LiveState,
    key: &str,
    r: &crate::summary::ResourceState<'_>,
    cache: &mut ValuesCache,
) -> Option<LiveResource> {
    let readings = ordered_readings(r);
    let status = r.status.as_str();
    let Some(live) = state.resources.get_mut(key) else {
        let resource = LiveResource {
            resource_type: r.resource_type.to_string(),
            id: r.resource_id.to_string(),
            status: status.to_string(),
            values: cache.text(key, &readings),
        };
        state.resources.insert(key.to_string(), resource.clone());
        return Some(resource);
    };
    if live.status == status && cache.cached(key, &readings) == Some(live.values.as_str()) {
        return None;
    }
    let values = cache.text(key, &readings);
    if live.status == status && live.values == values {
        return None;
    }
    live.status = status.to_string();
    live.values = values;
    Some(live.clone())
}

/// The rest of a cycle's update, after its resources: the overall status, the alerts and the
/// silences, and what changed of it all.
fn finish_update(
    state: &mut LiveState,
    mut changed: Vec<(String, LiveResource)>,
    removed: Vec<String>,
    overall: HealthStatus,
    inputs: &LiveView<'_>,
    silences: &[crate::model::Silence],
    now: DateTime<Utc>,
) -> Option<LiveDiff> {
    let overall_changed = state.overall != overall.as_str();
    if overall_changed {
        state.overall = overall.as_str().to_string();
    }
    let alerts = live_alerts(inputs.active_alerts, silences, now);
    let alerts = (alerts != state.alerts).then(|| {
        state.alerts = alerts;
        state.alerts.clone()
    });
    let silences = live_silences(silences, now);
    let silences = (silences != state.silences).then(|| {
        state.silences = silences;
        state.silences.clone()
    });
    if changed.is_empty()
        && removed.is_empty()
        && alerts.is_none()
        && silences.is_none()
        && !overall_changed
    {
        return None;
    }
    // In the state's order, as `LiveState::diff` lists them.
    changed.sort_by(|a, b| a.0.cmp(&b.0));
    Some(LiveDiff {
        overall: state.overall.clone(),
        changed: changed.into_iter().map(|(_, r)| r).collect(),
        removed,
        alerts,
        silences,
    })
}

/// The overview's model. `town_sessions` are the agents a followed Gas Town town manages: they
/// get a group of their own, with the town itself.
#[allow(clippy::too_many_arguments)] // A page's inputs, each of its own source.
pub(crate) fn overview(
    summary: &Summary,
    active: &[HealthAlert],
    silences: &[crate::model::Silence],
    town_sessions: &std::collections::HashSet<String>,
    rollups: &crate::rollup::Rollups,
    interval_secs: f64,
    writes: bool,
    now: DateTime<Utc>,
) -> Overview {
    let state = live_state(summary, active, silences, now);
    let mut groups: Vec<Group> = Vec::new();
    {
        for r in &summary.resources {
            let in_town = r.resource_type == ResourceType::Agent
                && (town_sessions.contains(&r.resource_id)
                    || r.resource_id == crate::gastown::lifecycle::TOWN_RESOURCE);
            let (kind, title) = if in_town {
                ("gastown", "Gas Town sessions")
            } else {
                group_title(r.resource_type)
            };
            let recent: Vec<f64> = rollups
                .recent_main(r.resource_type, &r.resource_id)
                .iter()
                .map(|a| a.avg())
                .collect();
            let live = state
                .resources
                .get(&format!("{}/{}", r.resource_type, r.resource_id));
            let label = match r.resource_type {
                ResourceType::Cpu | ResourceType::Memory if r.resource_id == "system" => {
                    r.resource_type.to_string()
                }
                ResourceType::Filesystem if r.resource_id == "system" => "filesystem /".into(),
                ResourceType::Filesystem => format!("filesystem {}", r.resource_id),
                _ => r.resource_id.clone(),
            };
            let row = ResourceRow {
                resource_type: r.resource_type.to_string(),
                id: r.resource_id.clone(),
                label,
                status: r.status.as_str().to_string(),
                icon: icon(r.status),
                values: live.map(|l| l.values.clone()).unwrap_or_default(),
                href: resource_href(r.resource_type, &r.resource_id),
                spark: chart::sparkline(&recent, 120.0, 24.0),
                spark_label: format!(
                    "{} over the last hour",
                    crate::rollup::main_metric(r.resource_type).unwrap_or("main metric")
                ),
            };
            match groups.iter_mut().find(|g| g.kind == kind) {
                Some(g) => g.rows.push(row),
                None => groups.push(Group {
                    kind,
                    title,
                    rows: vec![row],
                }),
            }
        }
    }
    let alerts = state
        .alerts
        .iter()
        .map(|a| {
            let since = crate::model::parse_timestamp(&a.since).unwrap_or(now);
            let resource_type = a.resource_type.parse().unwrap_or(ResourceType::Agent);
            AlertRow {
                id: a.id,
                icon: icon(a.severity.parse().unwrap_or(HealthStatus::Unknown)),
                severity: a.severity.clone(),
                href: resource_href(resource_type, &a.resource),
                resource_type: a.resource_type.clone(),
                resource: a.resource.clone(),
                metric: a.metric.clone(),
                message: a.message.clone(),
                since: a.since.clone(),
                age: age(since, now),
                acked: a.acked,
                silenced: a.silenced,
            }
        })
        .collect();
    Overview {
        overall: state.overall.clone(),
        overall_icon: icon(summary.overall_status),
        writes,
        interval_secs,
        groups,
        alerts,
        silences: state
            .silences
            .iter()
            .map(|s| SilenceRow {
                resource_type: s.resource_type.clone(),
                id: s.id.clone(),
                metric: s.metric.clone(),
                until: s.until.clone(),
                comment: s.comment.clone(),
            })
            .collect(),
        generated: format_timestamp(now),
    }
}

/// A page that could not be served: its status and why, as a page (the browser's reader is a
/// person, not a program).
#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    status: String,
    message: String,
}

/// The error page for `e`.
fn error_page(e: ApiError) -> HttpResponse {
    let page = ErrorPage {
        status: e.status.to_string(),
        message: e.message.clone(),
    };
    match page.render() {
        Ok(body) => HttpResponse::build(e.status)
            .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((CACHE_CONTROL, "no-store"))
            .body(body),
        Err(_) => HttpResponse::build(e.status).body(e.message),
    }
}

/// An HTML answer.
fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((CACHE_CONTROL, "no-store"))
        .body(body)
}

/// A page could not be rendered.
fn render_error(e: askama::Error) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        format!("cannot render the page: {e}"),
    )
}

/// `GET /`: the overview.
pub(crate) async fn overview_page(state: web::Data<State>) -> HttpResponse {
    render_overview(state).await.unwrap_or_else(error_page)
}

async fn render_overview(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let service = &state.service;
    let summary = service
        .live_summary()
        .await
        .map_err(ApiError::from_service)?;
    let snapshot = service.deps.analyzer.snapshot().await.unwrap_or_default();
    let silences = service.deps.analyzer.memory().silences(Utc::now());
    let town_sessions = match service.supervisor.live().await {
        Ok(live) => live
            .monitors
            .iter()
            .filter(|m| m.managed_by() == Some(crate::gastown::layout::MANAGED_BY))
            .map(|m| m.id().to_string())
            .collect(),
        Err(_) => Default::default(),
    };
    let now = Utc::now();
    let page = overview(
        &summary,
        &snapshot.active_alerts,
        &silences,
        &town_sessions,
        &service.deps.analyzer.rollups(),
        service.deps.settings.interval.as_secs_f64(),
        state.token.is_some(),
        now,
    );
    Ok(html(page.render().map_err(render_error)?))
}

/// The query of a resource page.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RangeQuery {
    /// `1h` (the default), `6h`, `24h` or `7d`.
    pub(crate) range: Option<String>,
}

/// `GET /resource/{type}/{id}`: every metric of a resource as a chart over `?range=` (1h,
/// 6h, 24h or 7d), with its thresholds, and its alert history.
pub(crate) async fn resource_page(
    state: web::Data<State>,
    path: web::Path<(String, String)>,
    query: Result<web::Query<RangeQuery>, actix_web::Error>,
) -> HttpResponse {
    let query = match query {
        Ok(q) => q.into_inner(),
        Err(e) => return error_page(ApiError::from_extractor("query", &e)),
    };
    render_resource(state, path, query)
        .await
        .unwrap_or_else(error_page)
}

async fn render_resource(
    state: web::Data<State>,
    path: web::Path<(String, String)>,
    query: RangeQuery,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = path.into_inner();
    let resource_type: ResourceType = resource_type.parse().map_err(ApiError::bad_request)?;
    let range = Range::from_query(query.range.as_deref()).map_err(ApiError::bad_request)?;
    let service = &state.service;
    let summary = service
        .live_summary()
        .await
        .map_err(ApiError::from_service)?;
    let snapshot = service.deps.analyzer.snapshot().await.unwrap_or_default();
    let view = summary
        .resources
        .iter()
        .find(|r| r.resource_type == resource_type && r.resource_id == id);
    let latest: Vec<HealthMetric> = snapshot
        .latest
        .into_iter()
        .filter(|m| m.resource_type == resource_type && m.resource_id == id)
        .collect();
    if view.is_none() && latest.is_empty() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            format!("no resource {resource_type}/{id}"),
        ));
    }
    let now = Utc::now();
    let data = actions::chart_data(service, resource_type, &id, &latest, range, now).await?;
    let mut charts: Vec<Chart> = data
        .into_iter()
        .map(|(m, points)| {
            let since = now.timestamp() - range.secs();
            let svg = chart::layout(
                &points,
                m.thresholds(),
                since,
                now.timestamp(),
                CHART_WIDTH,
                CHART_HEIGHT,
            );
            let axis = format!(
                "{} to {} {}, over {}; {} points (min, mean and max of each)",
                crate::alerts::format_number(svg.y_min.max(svg.y_min)),
                crate::alerts::format_number(svg.y_max),
                m.unit,
                range.as_str(),
                points.len()
            );
            Chart {
                metric: m.metric_name.to_string(),
                status: m.status.as_str().to_string(),
                latest: crate::alerts::format_value(m.value, &m.unit),
                svg,
                axis,
            }
        })
        .collect();
    charts.sort_by(|a, b| a.metric.cmp(&b.metric));
    let history = actions::history(service, resource_type, &id, HISTORY_ROWS).await?;
    let status = view.map_or(HealthStatus::Unknown, |v| v.status);
    let base = resource_href(resource_type, &id);
    let page = ResourcePage {
        overall: summary.overall_status.as_str().to_string(),
        overall_icon: icon(summary.overall_status),
        writes: state.token.is_some(),
        interval_secs: service.deps.settings.interval.as_secs_f64(),
        resource_type: resource_type.to_string(),
        id,
        status: status.as_str().to_string(),
        status_icon: icon(status),
        ranges: Range::ALL
            .into_iter()
            .map(|r| RangeLink {
                name: r.as_str(),
                href: format!("{base}?range={}", r.as_str()),
                current: r == range,
            })
            .collect(),
        range: range.as_str(),
        charts,
        history: history
            .into_iter()
            .map(|a| HistoryRow {
                severity: a.severity.as_str().to_string(),
                icon: icon(a.severity),
                metric: a.alert_type,
                message: a.message,
                opened: format_timestamp(a.timestamp),
                resolved: a.resolved_at.map(format_timestamp).unwrap_or_default(),
            })
            .collect(),
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        generated: format_timestamp(now),
    };
    Ok(html(page.render().map_err(render_error)?))
}

/// `GET /static/app.js` and `/static/app.css`, from inside the binary.
pub(crate) async fn static_file(req: HttpRequest) -> HttpResponse {
    let (body, kind) = match req.match_info().get("file") {
        Some("app.js") => (APP_JS, "text/javascript; charset=utf-8"),
        Some("app.css") => (APP_CSS, "text/css; charset=utf-8"),
        _ => return HttpResponse::NotFound().json(serde_json::json!({"error": "no such file"})),
    };
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, kind))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_percent_encoded_in_addresses_but_keep_their_slashes() {
        assert_eq!(
            resource_href(ResourceType::Filesystem, "/mnt/my disk"),
            "/resource/filesystem//mnt/my%20disk"
        );
        assert_eq!(
            resource_href(ResourceType::Agent, "a<1>\"'"),
            "/resource/agent/a%3C1%3E%22%27"
        );
    }

    fn hostile_summary() -> (Summary, Vec<HealthAlert>) {
        use crate::model::{Measurement, Thresholds};
        let m = HealthMetric::from_measurement(
            Measurement {
                metric_name: "evil".into(),
                unit: "<script>".into(),
                ..Measurement::now(ResourceType::Agent, "a1", "", 5.0, "")
            },
            Some(Thresholds::new(1.0, 2.0)),
        );
        let alert = HealthAlert {
            id: Some(7),
            resource_type: ResourceType::Agent,
            resource_id: "a1".into(),
            alert_type: "evil".into(),
            severity: HealthStatus::Critical,
            message: "<script>window.__pwned=1</script> & \"quoted\"".into(),
            timestamp: Utc::now(),
            metadata: serde_json::Value::Null,
            resolved: false,
            resolved_at: None,
            last_notified_at: Utc::now(),
            acknowledged_at: None,
        };
        let summary = crate::summary::build(
            crate::summary::SummaryInputs {
                running: true,
                latest: vec![m],
                active_alerts: vec![alert.clone()],
                ..Default::default()
            },
            Utc::now(),
        );
        (summary, vec![alert])
    }

    #[test]
    fn every_value_from_the_daemon_is_escaped_and_the_only_script_is_ours() {
        let (summary, alerts) = hostile_summary();
        let page = overview(
            &summary,
            &alerts,
            &[],
            &Default::default(),
            &crate::rollup::Rollups::default(),
            1.0,
            true,
            Utc::now(),
        )
        .render()
        .unwrap();
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(page.contains(r#"<script src="/static/app.js" defer></script>"#));
        assert!(
            page.contains("&#60;script&#62;window.__pwned=1&#60;/script&#62;"),
            "{page}"
        );
        assert!(page.contains("evil=5&#60;script&#62;"), "{page}");
        assert!(page.contains(r#"data-id="7""#) && page.contains(r#"data-severity="critical""#));
        // The status is a word beside its icon, never a colour alone.
        assert!(page.contains("✖</span> critical"), "{page}");
    }

    #[test]
    fn ages_read_for_people() {
        let now = Utc::now();
        assert_eq!(age(now - chrono::Duration::seconds(5), now), "5 s");
        assert_eq!(age(now - chrono::Duration::seconds(300), now), "5 min");
        assert_eq!(age(now - chrono::Duration::hours(3), now), "3 h");
        assert_eq!(age(now - chrono::Duration::days(2), now), "2 d");
    }

    fn reading(t: ResourceType, id: &str, name: &str, value: f64, unit: &str) -> HealthMetric {
        use crate::model::{Measurement, Thresholds};
        HealthMetric::from_measurement(
            Measurement {
                metric_name: name.to_string().into(),
                unit: unit.to_string().into(),
                ..Measurement::now(t, id, "", value, "")
            },
            Some(Thresholds::new(80.0, 95.0)),
        )
    }

    /// What a cycle is made of, owned: [`LiveView`]'s parts.
    #[derive(Default)]
    struct Inputs {
        monitors: Vec<crate::model::MonitorSpec>,
        actors: Vec<crate::report::ActorReport>,
        latest: Vec<HealthMetric>,
        active_alerts: Vec<HealthAlert>,
    }

    /// Two agents, one with a pushed series, and a workspace without data yet.
    fn inputs(load: f64, queue: f64) -> Inputs {
        use crate::model::MonitorSpec;
        Inputs {
            monitors: vec![
                MonitorSpec::agent("a1"),
                MonitorSpec::agent("a2"),
                MonitorSpec::workspace("w1"),
            ],
            latest: vec![
                reading(ResourceType::Agent, "a1", "bench_load", load, "%"),
                reading(ResourceType::Agent, "a1", "bench_queue", queue, ""),
                reading(ResourceType::Agent, "a2", "bench_load", 1.0, "%"),
                reading(ResourceType::Agent, "feed", "bench_rate", 2.5, "/s"),
            ],
            ..Default::default()
        }
    }

    /// [`update_state`] on `inputs`, its latest values borrowed as the analyzer lends them.
    fn update(
        state: &mut LiveState,
        inputs: &Inputs,
        now: DateTime<Utc>,
        cache: &mut ValuesCache,
    ) -> Option<LiveDiff> {
        let latest: Vec<&HealthMetric> = inputs.latest.iter().collect();
        let watched = crate::summary::Watched::new(&inputs.monitors);
        let view = LiveView {
            watched: &watched,
            actors: &inputs.actors,
            latest: &latest,
            active_alerts: &inputs.active_alerts,
        };
        update_state(state, &view, &[], now, cache)
    }

    /// What the overview's page would show of `inputs`: the state from the whole summary.
    fn from_summary(inputs: &Inputs) -> LiveState {
        let summary = crate::summary::build(
            crate::summary::SummaryInputs {
                running: true,
                monitors: inputs.monitors.clone(),
                latest: inputs.latest.clone(),
                active_alerts: inputs.active_alerts.clone(),
                actors: inputs.actors.clone(),
                ..Default::default()
            },
            Utc::now(),
        );
        live_state(&summary, &inputs.active_alerts, &[], Utc::now())
    }

    #[test]
    fn a_cycle_updates_the_state_in_place_to_what_the_summary_shows_and_says_what_changed() {
        let now = Utc::now();
        let mut cache = ValuesCache::default();
        let mut state = LiveState::default();
        let steps = [
            inputs(10.0, 3.0),
            inputs(10.0, 3.0),
            inputs(12.0, 3.0),
            inputs(97.0, 3.0),
            {
                let mut gone = inputs(97.0, 3.0);
                gone.monitors.remove(1);
                gone.latest.remove(2);
                gone
            },
        ];
        for (i, step) in steps.iter().enumerate() {
            let before = state.clone();
            let diff = update(&mut state, step, now, &mut cache);
            assert_eq!(state, from_summary(step), "step {i}");
            assert_eq!(diff, state.diff(&before), "step {i}");
        }
        assert_eq!(state.resources["agent/a1"].status, "critical");
        assert_eq!(state.overall, "critical");
        assert!(!state.resources.contains_key("agent/a2"));
        assert_eq!(state.resources["workspace/w1"].values, "no data yet");
        assert_eq!(
            state.resources["agent/a1"].values,
            "bench_load=97%  bench_queue=3"
        );
    }

    #[test]
    fn values_texts_are_made_again_only_for_the_readings_that_changed() {
        let now = Utc::now();
        let mut cache = ValuesCache::default();
        let mut state = LiveState::default();
        update(&mut state, &inputs(10.0, 3.0), now, &mut cache);
        let made = cache.made;
        assert_eq!(made, 4, "every resource's at first");
        assert!(update(&mut state, &inputs(10.0, 3.0), now, &mut cache).is_none());
        assert_eq!(cache.made, made, "none changed, none made");
        let diff = update(&mut state, &inputs(10.0, 4.0), now, &mut cache).unwrap();
        assert_eq!(cache.made, made + 1, "only a1's");
        let ids: Vec<&str> = diff.changed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a1"]);
        // A state changed behind the cache's back is still brought to what the readings say.
        state.resources.get_mut("agent/a2").unwrap().values = "stale".into();
        let diff = update(&mut state, &inputs(10.0, 4.0), now, &mut cache).unwrap();
        assert_eq!(diff.changed[0].values, "bench_load=1%");
        // A resource that goes is forgotten by the cache too.
        let mut gone = inputs(10.0, 4.0);
        gone.latest.pop();
        update(&mut state, &gone, now, &mut cache);
        assert!(!cache.by_resource.contains_key("agent/feed"));
        assert_eq!(cache.by_resource.len(), 3);
    }

    #[test]
    fn a_row_shows_its_main_metric_first_and_says_how_many_more_it_has() {
        let main = crate::rollup::main_metric(ResourceType::Agent).unwrap();
        let mut readings: Vec<Reading<'_>> = vec![
            ("a", 5.0, "%"),
            ("b", 1.0, ""),
            (main, 12.0, "MB"),
            ("c", 2.0, ""),
            ("d", 3.0, ""),
        ];
        order_readings(ResourceType::Agent, &mut readings);
        let names: Vec<&str> = readings.iter().map(|r| r.0).collect();
        assert_eq!(names, [main, "a", "b", "c", "d"]);
        let text = values_text(&readings);
        assert_eq!(text, format!("{main}=12MB  a=5%  b=1  c=2 (+1 more)"));
        assert_eq!(values_text(&[]), "no data yet");
    }

    #[test]
    fn a_row_s_values_are_written_as_format_value_gives_them_without_spaces() {
        let values = [
            0.0,
            -0.0,
            -0.001,
            0.005,
            0.004,
            1.0,
            1.5,
            12.345,
            100.0,
            -7.25,
            1e12,
            3e-9,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let units = [
            "", "%", "MB", "bool", "count", "ratio", "state", "ms", "req / s",
        ];
        for value in values {
            for unit in units {
                let old = crate::alerts::format_value(value, unit).replace(' ', "");
                assert_eq!(values_text(&[("m", value, unit)]), format!("m={old}"));
            }
        }
        // A text made again in its old buffers is the text made anew.
        let mut cache = ValuesCache::default();
        cache.text("agent/a1", &[("x", 1.0, "MB"), ("y", 2.0, "%")]);
        let again = cache.text("agent/a1", &[("x", 1.25, "ms"), ("z", 3.0, "")]);
        assert_eq!(again, values_text(&[("x", 1.25, "ms"), ("z", 3.0, "")]));
        assert_eq!(
            cache.cached("agent/a1", &[("x", 1.25, "ms"), ("z", 3.0, "")]),
            Some(again.as_str())
        );
        let fewer = cache.text("agent/a1", &[("x", 1.25, "ms")]);
        assert_eq!(fewer, "x=1.25ms");
        assert!(
            cache
                .cached("agent/a1", &[("x", 1.25, "ms"), ("z", 3.0, "")])
                .is_none()
        );
    }
}
