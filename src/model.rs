//! Domain types shared by every layer: resources, statuses, metrics, alerts and monitor specs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The kind of thing a metric or alert is about (lowercase strings are part of the DB contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A monitored agent, by its monitor id; `gastown` is the followed Gas Town town itself.
    Agent,
    /// A monitored workspace directory, by its monitor id.
    Workspace,
    /// A SQLite file inside a workspace (`<workspace>/<path>`), or the daemon's own database.
    Database,
    /// A mounted filesystem: `system` for `/`, else its mount point.
    Filesystem,
    /// The machine's memory and swap (id `system`).
    Memory,
    /// The machine's CPU and load (id `system`).
    Cpu,
    /// Network resources; kept for the database contract, no collector reports it yet.
    Network,
    /// A scheduled Nagios-compatible check (`[[check]]`, `add check`) that watches no other
    /// resource, by its name. New in health-monitor; the original never wrote it.
    Check,
}

impl ResourceType {
    /// Every resource type, in contract order.
    pub const ALL: [ResourceType; 8] = [
        ResourceType::Agent,
        ResourceType::Workspace,
        ResourceType::Database,
        ResourceType::Filesystem,
        ResourceType::Memory,
        ResourceType::Cpu,
        ResourceType::Network,
        ResourceType::Check,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Agent => "agent",
            ResourceType::Workspace => "workspace",
            ResourceType::Database => "database",
            ResourceType::Filesystem => "filesystem",
            ResourceType::Memory => "memory",
            ResourceType::Cpu => "cpu",
            ResourceType::Network => "network",
            ResourceType::Check => "check",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown resource type {s:?}"))
    }
}

/// True when a resource is `owner` itself, or a database inside the workspace `owner`
/// (`<workspace>/<path>`): removing a workspace forgets its databases too.
pub(crate) fn belongs_to(
    resource_type: ResourceType,
    resource_id: &str,
    owner_type: ResourceType,
    owner_id: &str,
) -> bool {
    (resource_type == owner_type && resource_id == owner_id)
        || (owner_type == ResourceType::Workspace
            && resource_type == ResourceType::Database
            && resource_id
                .strip_prefix(owner_id)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// Health of a metric or resource, ordered from best to worst (`unknown` sorts first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// No usable value yet (no data, or a NaN reading).
    Unknown,
    /// Within its thresholds, or a metric without thresholds.
    Healthy,
    /// Never a metric's status: the resource's monitoring is impaired (collector restarting,
    /// parked or stalled), so its data may be stale.
    Degraded,
    /// At or past the warning threshold: a breach, which can open an alert.
    Unhealthy,
    /// At or past the critical threshold (or a condition such as `collector_failed`): a breach.
    Critical,
}

impl HealthStatus {
    /// Every status, best first.
    pub const ALL: [HealthStatus; 5] = [
        HealthStatus::Unknown,
        HealthStatus::Healthy,
        HealthStatus::Degraded,
        HealthStatus::Unhealthy,
        HealthStatus::Critical,
    ];

    /// The lowercase name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "unknown",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Critical => "critical",
        }
    }

    /// True for the statuses that open an alert.
    pub(crate) fn is_breach(self) -> bool {
        matches!(self, HealthStatus::Unhealthy | HealthStatus::Critical)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HealthStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HealthStatus::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// A warning/critical pair; when `warning > critical` lower values are worse.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The value, in the metric's unit, at which it turns unhealthy.
    pub warning: f64,
    /// The value, in the metric's unit, at which it turns critical.
    pub critical: f64,
}

impl Thresholds {
    /// Builds a threshold pair.
    pub const fn new(warning: f64, critical: f64) -> Self {
        Thresholds { warning, critical }
    }

    /// True when the metric is "lower is worse" (docs/ARCHITECTURE.md, "Direction fix for
    /// lower-is-worse metrics").
    pub(crate) fn lower_is_worse(&self) -> bool {
        self.warning > self.critical
    }

    /// The status of `value` against these thresholds.
    pub fn status(&self, value: f64) -> HealthStatus {
        if value.is_nan() {
            return HealthStatus::Unknown;
        }
        if self.lower_is_worse() {
            if value <= self.critical {
                HealthStatus::Critical
            } else if value <= self.warning {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Healthy
            }
        } else if value >= self.critical {
            HealthStatus::Critical
        } else if value >= self.warning {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        }
    }

    /// True when `value` is healthy by at least `margin` (hysteresis before an alert clears).
    pub(crate) fn clear_of(&self, value: f64, margin: f64) -> bool {
        if self.lower_is_worse() {
            value > self.warning + margin
        } else {
            value < self.warning - margin
        }
    }

    /// The comparison that breaches, for messages: `>=` or `<=`.
    pub(crate) fn comparator(&self) -> &'static str {
        if self.lower_is_worse() { "<=" } else { ">=" }
    }
}

/// Formats a time the way the database stores it: RFC 3339 UTC, microseconds, `Z`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a stored timestamp; accepts the original daemon's naive ISO format too.
pub(crate) fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|n| n.and_utc())
}

/// A metric name or unit: almost always one of the catalogue's constants, so copies are free;
/// owned only when read back from the database.
pub(crate) type Name = Cow<'static, str>;

/// A raw reading from a collector, before the analyzer applies thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// What kind of thing was measured.
    pub resource_type: ResourceType,
    /// Which one: a monitor id, `system`, a mount point or `<workspace>/<path>`.
    pub resource_id: String,
    /// A metric of the catalogue (`crate::catalog`), e.g. `cpu_usage_percent`.
    pub metric_name: Name,
    /// The reading, in `unit`; 0/1 for flags. Non-finite values are dropped by the analyzer.
    pub value: f64,
    /// The unit of `value`, one of the catalogue's `UNIT_*` (`%`, `MB`, `bool`...).
    pub unit: Name,
    /// When it was taken.
    pub timestamp: DateTime<Utc>,
    /// What the analyzer makes of it; almost always [`Judgement::Alerts`].
    pub judgement: Judgement,
    /// Thresholds the reporter gave with the reading (a pushed metric's `--warning` and
    /// `--critical`, a check's perfdata ranges): they win over the rule table's.
    pub thresholds: Option<Thresholds>,
    /// What the reporter said about the reading (a check's first line of output): the message
    /// of the alert it opens, instead of one made from the thresholds.
    pub note: Option<String>,
}

/// How the analyzer treats a reading. Some readings mean something else for some resources: a
/// Gas Town session's heartbeat is rewritten by every `gt` command, so its age says the session
/// is idle, not that it is broken; and its liveness is judged by the town watcher, which knows
/// a reap from a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Judgement {
    /// Thresholds give its status, and a breach alerts.
    #[default]
    Alerts,
    /// Thresholds give its status; something else decides what a breach means.
    StatusOnly,
    /// Stored with no thresholds: healthy, never alerts.
    Informational,
}

impl Measurement {
    /// A reading taken now.
    pub fn now(
        resource_type: ResourceType,
        resource_id: &str,
        metric_name: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Measurement {
            resource_type,
            resource_id: resource_id.to_string(),
            metric_name: Cow::Borrowed(metric_name),
            value,
            unit: Cow::Borrowed(unit),
            timestamp: Utc::now(),
            judgement: Judgement::Alerts,
            thresholds: None,
            note: None,
        }
    }

    /// The same reading, judged as `judgement` says.
    pub(crate) fn judged(mut self, judgement: Judgement) -> Self {
        self.judgement = judgement;
        self
    }
}

/// One row of `health_metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMetric {
    /// What kind of thing was measured.
    pub resource_type: ResourceType,
    /// Which one: a monitor id, `system`, a mount point or `<workspace>/<path>`.
    pub resource_id: String,
    /// The catalogue's name of the metric, e.g. `workspace_size_mb`.
    pub metric_name: Name,
    /// The reading, in `unit`.
    pub value: f64,
    /// The warning threshold applied; `None` when the metric had no thresholds.
    pub threshold_warning: Option<f64>,
    /// The critical threshold applied; `None` when the metric had no thresholds.
    pub threshold_critical: Option<f64>,
    /// When the reading was taken.
    pub timestamp: DateTime<Utc>,
    /// The unit of `value` (`%`, `MB`, `bool`...).
    pub unit: Name,
    /// What the thresholds make of `value` (`healthy` without thresholds).
    pub status: HealthStatus,
}

impl HealthMetric {
    /// Applies `thresholds` (if any) to a measurement; without thresholds a metric is healthy.
    pub(crate) fn from_measurement(m: Measurement, thresholds: Option<Thresholds>) -> Self {
        let status = match thresholds {
            Some(t) => t.status(m.value),
            None if m.value.is_nan() => HealthStatus::Unknown,
            None => HealthStatus::Healthy,
        };
        HealthMetric {
            resource_type: m.resource_type,
            resource_id: m.resource_id,
            metric_name: m.metric_name,
            value: m.value,
            threshold_warning: thresholds.map(|t| t.warning),
            threshold_critical: thresholds.map(|t| t.critical),
            timestamp: m.timestamp,
            unit: m.unit,
            status,
        }
    }

    /// The thresholds stored with this metric, when both are present.
    pub fn thresholds(&self) -> Option<Thresholds> {
        Some(Thresholds::new(
            self.threshold_warning?,
            self.threshold_critical?,
        ))
    }

    /// The key alerts are tracked by.
    pub(crate) fn alert_key(&self) -> AlertKey {
        AlertKey {
            resource_type: self.resource_type,
            resource_id: self.resource_id.clone(),
            alert_type: self.metric_name.to_string(),
        }
    }
}

/// Identifies one alert stream: at most one active alert row exists per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    /// The kind of resource the alert is on.
    pub resource_type: ResourceType,
    /// The resource's id, as in its metrics (`system`, a monitor id, ...).
    pub resource_id: String,
    /// The metric name for threshold alerts, or a named condition such as `collector_failed`.
    pub alert_type: String,
}

impl fmt::Display for AlertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.resource_type, self.resource_id, self.alert_type
        )
    }
}

/// One row of `health_alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthAlert {
    /// The row id, once stored.
    pub id: Option<i64>,
    /// The kind of resource the alert is on.
    pub resource_type: ResourceType,
    /// The resource's id, as in its metrics (`system`, a monitor id, ...).
    pub resource_id: String,
    /// The breached metric's name, or a condition such as `collector_failed`.
    pub alert_type: String,
    /// The current severity: `unhealthy` or `critical`.
    pub severity: HealthStatus,
    /// A sentence for people, rewritten at each breached sample.
    pub message: String,
    /// When the alert opened.
    pub timestamp: DateTime<Utc>,
    /// JSON details: value, thresholds and unit for a metric; the condition's own for others.
    pub metadata: serde_json::Value,
    /// True once it has recovered (or its resource was removed).
    pub resolved: bool,
    /// When it resolved; `None` while active.
    pub resolved_at: Option<DateTime<Utc>>,
    /// When an operator or system was last told about it (opening, escalation or reminder).
    pub last_notified_at: DateTime<Utc>,
    /// When an operator acknowledged it (`ack`): no more reminders until it escalates.
    #[serde(default)]
    pub acknowledged_at: Option<DateTime<Utc>>,
}

impl HealthAlert {
    /// The key of this alert.
    pub fn key(&self) -> AlertKey {
        AlertKey {
            resource_type: self.resource_type,
            resource_id: self.resource_id.clone(),
            alert_type: self.alert_type.clone(),
        }
    }
}

/// An operator's silence: alerts it covers are recorded but not sent to any sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    /// The kind of resource silenced.
    pub resource_type: ResourceType,
    /// The resource silenced; a workspace's silence covers its databases too.
    pub resource_id: String,
    /// One metric (alert type), or every alert of the resource when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it stops covering alerts (`silence add --for`).
    pub expires_at: DateTime<Utc>,
    /// The operator's note (`--comment`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Silence {
    /// True while the silence runs and the alert is on its resource (or one of a silenced
    /// workspace's databases) and, if it names one, its metric.
    pub fn covers(&self, alert: &HealthAlert, now: DateTime<Utc>) -> bool {
        now < self.expires_at
            && belongs_to(
                alert.resource_type,
                &alert.resource_id,
                self.resource_type,
                &self.resource_id,
            )
            && self.metric.as_ref().is_none_or(|m| *m == alert.alert_type)
    }

    /// True when both silence the same thing (adding one replaces the other).
    pub(crate) fn same_target(&self, other: &Silence) -> bool {
        self.resource_type == other.resource_type
            && self.resource_id == other.resource_id
            && self.metric == other.metric
    }
}

/// The rule every monitor id follows: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
pub(crate) const ID_RULE: &str =
    "an id is 1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit";

/// Checks an agent or workspace id against [`ID_RULE`], so ids never escape a directory as paths.
pub(crate) fn validate_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let ok = match chars.next() {
        Some(first) => {
            first.is_ascii_alphanumeric()
                && id.len() <= 128
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("invalid id {id:?}: {ID_RULE}"))
    }
}

/// Whether a monitor watches an agent or a workspace, or runs a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorKind {
    /// An agent: its process tree, heartbeat and workspace.
    Agent,
    /// A workspace directory and the SQLite files in it.
    Workspace,
    /// A Nagios-compatible plugin run on a schedule.
    Check,
}

impl MonitorKind {
    /// The lowercase name used in the CLI, the protocol and the `monitors` table.
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorKind::Agent => "agent",
            MonitorKind::Workspace => "workspace",
            MonitorKind::Check => "check",
        }
    }

    /// The resource type its metrics are stored under.
    pub fn resource_type(self) -> ResourceType {
        match self {
            MonitorKind::Agent => ResourceType::Agent,
            MonitorKind::Workspace => ResourceType::Workspace,
            MonitorKind::Check => ResourceType::Check,
        }
    }
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MonitorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(MonitorKind::Agent),
            "workspace" => Ok(MonitorKind::Workspace),
            "check" => Ok(MonitorKind::Check),
            _ => Err(format!(
                "unknown monitor kind {s:?} (agent, workspace or check)"
            )),
        }
    }
}

/// What to watch for one agent. Options left `None` fall back to the configured defaults.
/// At most one of `pid`, `pid_file`, `pattern` and `tmux_session` names the root process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentOptions {
    /// The agent's root process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the `pid` process started, recorded at `add`: a process holding that pid later with
    /// another start time (or in another boot) is not the agent, whose pid was reused. Unset (a
    /// monitor saved before it was recorded): the first process seen with the pid is the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<PidStart>,
    /// A file holding the root's pid, or `pid|starttime` as Gas Town writes it; re-read every cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<PathBuf>,
    /// A regular expression matched against command lines; the oldest match is the root.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A tmux session whose first pane's process is the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmux_session: Option<String>,
    /// Overrides the `agent_workspace` template for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    /// A heartbeat file (`{timestamp, state, ...}` JSON, or any file whose mtime is the beat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<PathBuf>,
    /// The tmux server to ask (`tmux -L NAME`): Gas Town runs each town on a socket of its own.
    /// Unset: tmux's default server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmux_socket: Option<String>,
    /// Seconds after which an agent whose heartbeat says `working` but has not moved, and whose
    /// tree used almost no CPU meanwhile, is reported stalled (`agent_stalled`): probably
    /// waiting at a prompt. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_after: Option<u64>,
    /// What the agent is to its orchestrator (Gas Town: `polecat`, `crew`, `witness`,
    /// `refinery`, `mayor`, `deacon`, `boot`, `dog`); shown, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Who added it, when not an operator: `gastown` for monitors that follow a town's layout
    /// (they are reconciled with it at start and removed when the town retires the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

impl AgentOptions {
    /// Checks that the options make sense together: one root source at most, a pattern that
    /// compiles, a tmux session name without target syntax.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let sources = [
            self.pid.is_some(),
            self.pid_file.is_some(),
            self.pattern.is_some(),
            self.tmux_session.is_some(),
        ];
        // A pid file with a tmux session to fall back on (Gas Town's way) is the one pair allowed.
        let fallback_pair = self.pid_file.is_some() && self.tmux_session.is_some();
        let count = sources.iter().filter(|s| **s).count();
        if count > 2 || (count == 2 && !fallback_pair) {
            return Err(
                "give at most one of --pid, --pid-file, --match and --tmux-session \
                 (or --pid-file with a --tmux-session to fall back on)"
                    .into(),
            );
        }
        for (what, m) in [
            ("managed_by", &self.managed_by),
            ("role", &self.role),
            ("tmux socket", &self.tmux_socket),
        ] {
            if let Some(m) = m {
                validate_id(m).map_err(|e| format!("{what}: {e}"))?;
            }
        }
        if let Some(secs) = self.stall_after
            && !(1..=604_800).contains(&secs)
        {
            return Err(format!(
                "stall_after must be between 1 second and 7 days, got {secs}"
            ));
        }
        if self.pid == Some(0) {
            return Err("pid 0 is not a process".into());
        }
        if let Some(start) = &self.pid_start {
            if self.pid.is_none() {
                return Err("pid_start belongs with a pid".into());
            }
            if let Some(boot) = &start.boot_id
                && (boot.is_empty()
                    || boot.len() > MAX_BOOT_ID
                    || !boot.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            {
                return Err(format!("pid_start: boot_id {boot:?} is not a boot id"));
            }
        }
        if let Some(p) = &self.pattern {
            regex::Regex::new(p).map_err(|e| format!("--match {p:?} is not a valid regex: {e}"))?;
        }
        if let Some(t) = &self.tmux_session {
            validate_id(t).map_err(|e| format!("tmux session: {e}"))?;
        }
        Ok(())
    }
}

/// When a process started, as the kernel counts it: with its pid, it names one process for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PidStart {
    /// Clock ticks after boot (field 22 of `/proc/<pid>/stat`): exact, and untouched by clock
    /// changes, unlike a wall-clock time.
    pub ticks: u64,
    /// The boot it counts from (`/proc/sys/kernel/random/boot_id`): after a reboot the process is
    /// gone whatever holds its pid. Unset where the kernel does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Longest boot id accepted (the kernel's is a 36-character UUID).
const MAX_BOOT_ID: usize = 64;

/// What to watch for one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceOptions {
    /// Overrides the `workspace_path` template for this workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// SQLite files to check besides those found automatically (relative to the workspace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dbs: Vec<PathBuf>,
    /// Who added it, when not an operator (see [`AgentOptions::managed_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// What to run for one check, and where its results go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckOptions {
    /// The plugin and its arguments, run as they are: never through a shell.
    pub command: Vec<String>,
    /// The resource its results are stored on, `TYPE:ID` (e.g. `agent:a1`); default
    /// `check:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Seconds between two runs (default: the daemon's interval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// Seconds a run may take before its process group is killed and it counts as UNKNOWN
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// `config` for a check of the config file's `[[check]]`, which is not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// A check's default timeout.
pub(crate) const DEFAULT_CHECK_TIMEOUT_SECS: u64 = 10;

impl CheckOptions {
    /// Checks the command and the resource; `name` is the check's, for messages.
    pub(crate) fn validate(&self, name: &str) -> Result<(), String> {
        let Some(program) = self.command.first() else {
            return Err(format!("check {name}: command is empty"));
        };
        if program.is_empty() {
            return Err(format!("check {name}: command's program is empty"));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(format!("check {name}: command contains a NUL byte"));
        }
        if self.timeout == Some(0) {
            return Err(format!("check {name}: timeout must be at least 1 second"));
        }
        if self.interval == Some(0) {
            return Err(format!("check {name}: interval must be at least 1 second"));
        }
        if let Some(r) = &self.resource {
            parse_resource_ref(r).map_err(|e| format!("check {name}: resource: {e}"))?;
        }
        Ok(())
    }

    /// The resource its results are stored on.
    pub(crate) fn target(&self, name: &str) -> (ResourceType, String) {
        self.resource
            .as_deref()
            .and_then(|r| parse_resource_ref(r).ok())
            .unwrap_or((ResourceType::Check, name.to_string()))
    }
}

/// Another check among `monitors` whose results go on the same resource as `spec`'s: both
/// would write that resource's `check_status`, and its alert would flap between them.
pub(crate) fn conflicting_check<'a>(
    monitors: impl IntoIterator<Item = &'a MonitorSpec>,
    spec: &MonitorSpec,
) -> Option<&'a MonitorSpec> {
    if spec.kind() != MonitorKind::Check {
        return None;
    }
    let target = spec.resource();
    monitors
        .into_iter()
        .find(|m| m.kind() == MonitorKind::Check && m.id() != spec.id() && m.resource() == target)
}

/// The refusal for a check whose resource `other` already reports on.
pub(crate) fn conflict_message(spec: &MonitorSpec, other: &MonitorSpec) -> String {
    let (t, id) = spec.resource();
    format!(
        "check {}: check {} already reports on {t}:{id}; two checks on one resource would write \
         the same check_status and its alert would flap (give one another resource)",
        spec.id(),
        other.id()
    )
}

/// Parses `TYPE:ID` (`agent:a1`), the id checked by the id rules.
pub(crate) fn parse_resource_ref(s: &str) -> Result<(ResourceType, String), String> {
    let (t, id) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not TYPE:ID (e.g. agent:a1)"))?;
    let t: ResourceType = t.parse()?;
    validate_id(id)?;
    Ok((t, id.to_string()))
}

/// A monitored agent or workspace, as persisted in the `monitors` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum MonitorSpec {
    /// An agent to watch.
    Agent {
        /// The agent's id (see [`ID_RULE`]); its metrics' resource id.
        id: String,
        /// What to watch for it.
        #[serde(default)]
        options: AgentOptions,
    },
    /// A workspace to watch.
    Workspace {
        /// The workspace's id (see [`ID_RULE`]); its metrics' resource id.
        id: String,
        /// What to watch for it.
        #[serde(default)]
        options: WorkspaceOptions,
    },
    /// A check to run.
    Check {
        /// The check's name (see [`ID_RULE`]).
        id: String,
        /// What to run.
        options: CheckOptions,
    },
}

impl MonitorSpec {
    /// Who added it, when not an operator (e.g. `gastown`).
    pub(crate) fn managed_by(&self) -> Option<&str> {
        match self {
            MonitorSpec::Agent { options, .. } => options.managed_by.as_deref(),
            MonitorSpec::Workspace { options, .. } => options.managed_by.as_deref(),
            MonitorSpec::Check { options, .. } => options.managed_by.as_deref(),
        }
    }

    /// The resource its readings are stored on: its own, or a check's `resource`.
    pub(crate) fn resource(&self) -> (ResourceType, String) {
        match self {
            MonitorSpec::Check { id, options } => options.target(id),
            other => (other.kind().resource_type(), other.id().to_string()),
        }
    }

    /// An agent monitor with default options.
    pub fn agent(id: &str) -> Self {
        MonitorSpec::Agent {
            id: id.to_string(),
            options: AgentOptions::default(),
        }
    }

    /// A workspace monitor with default options.
    pub fn workspace(id: &str) -> Self {
        MonitorSpec::Workspace {
            id: id.to_string(),
            options: WorkspaceOptions::default(),
        }
    }

    /// Agent or workspace.
    pub fn kind(&self) -> MonitorKind {
        match self {
            MonitorSpec::Agent { .. } => MonitorKind::Agent,
            MonitorSpec::Workspace { .. } => MonitorKind::Workspace,
            MonitorSpec::Check { .. } => MonitorKind::Check,
        }
    }

    /// The monitor's id.
    pub fn id(&self) -> &str {
        match self {
            MonitorSpec::Agent { id, .. }
            | MonitorSpec::Workspace { id, .. }
            | MonitorSpec::Check { id, .. } => id,
        }
    }

    /// The options as JSON, as stored in the `monitors.options` column.
    pub(crate) fn options_json(&self) -> String {
        let value = match self {
            MonitorSpec::Agent { options, .. } => serde_json::to_string(options),
            MonitorSpec::Workspace { options, .. } => serde_json::to_string(options),
            MonitorSpec::Check { options, .. } => serde_json::to_string(options),
        };
        value.unwrap_or_else(|_| "{}".to_string())
    }

    /// Rebuilds a spec from a `monitors` row.
    pub(crate) fn from_row(
        kind: MonitorKind,
        id: &str,
        options_json: &str,
    ) -> Result<Self, String> {
        validate_id(id).map_err(|e| format!("monitor {kind}: {e}"))?;
        let bad = |e: serde_json::Error| format!("monitor {kind} {id}: bad options: {e}");
        Ok(match kind {
            MonitorKind::Agent => MonitorSpec::Agent {
                id: id.to_string(),
                options: serde_json::from_str(options_json).map_err(bad)?,
            },
            MonitorKind::Workspace => MonitorSpec::Workspace {
                id: id.to_string(),
                options: serde_json::from_str(options_json).map_err(bad)?,
            },
            MonitorKind::Check => MonitorSpec::Check {
                id: id.to_string(),
                options: serde_json::from_str(options_json).map_err(bad)?,
            },
        })
    }
}

/// The set of monitors, keyed by kind and id: adding twice keeps one, removing forgets it.
#[derive(Debug, Clone, Default)]
pub struct MonitorSet {
    specs: BTreeMap<(MonitorKind, String), MonitorSpec>,
    /// [`MonitorSet::shared`]'s list, made again only after a change: the supervisor hands
    /// it out every second (the dashboard's cycle, the town's follower), and a copy of a
    /// hundred specs each time is most of what those asks cost.
    shared: std::sync::OnceLock<std::sync::Arc<[MonitorSpec]>>,
}

impl PartialEq for MonitorSet {
    fn eq(&self, other: &Self) -> bool {
        self.specs == other.specs
    }
}

/// What [`MonitorSet::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddOutcome {
    /// It was not monitored before.
    Added,
    /// It was, with other options: they are replaced.
    Updated,
    /// It was, with the same options: nothing changed.
    Unchanged,
}

impl MonitorSet {
    /// Adds or replaces a monitor.
    pub fn add(&mut self, spec: MonitorSpec) -> AddOutcome {
        self.shared.take();
        let key = (spec.kind(), spec.id().to_string());
        match self.specs.insert(key, spec.clone()) {
            None => AddOutcome::Added,
            Some(old) if old == spec => AddOutcome::Unchanged,
            Some(_) => AddOutcome::Updated,
        }
    }

    /// Removes a monitor; returns it when it was there.
    pub fn remove(&mut self, kind: MonitorKind, id: &str) -> Option<MonitorSpec> {
        self.shared.take();
        self.specs.remove(&(kind, id.to_string()))
    }

    /// True when the monitor is in the set.
    pub fn contains(&self, kind: MonitorKind, id: &str) -> bool {
        self.specs.contains_key(&(kind, id.to_string()))
    }

    /// The monitor with this kind and id.
    pub fn get(&self, kind: MonitorKind, id: &str) -> Option<&MonitorSpec> {
        self.specs.get(&(kind, id.to_string()))
    }

    /// All monitors, agents first, each kind sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = &MonitorSpec> {
        self.specs.values()
    }

    /// All monitors in [`MonitorSet::iter`]'s order, as one shared list: the same list (no
    /// copy) until the set changes.
    pub fn shared(&self) -> std::sync::Arc<[MonitorSpec]> {
        std::sync::Arc::clone(
            self.shared
                .get_or_init(|| self.specs.values().cloned().collect()),
        )
    }

    /// How many monitors of `kind` there are.
    pub fn count(&self, kind: MonitorKind) -> usize {
        self.specs.keys().filter(|(k, _)| *k == kind).count()
    }

    /// Total number of monitors.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when nothing is monitored.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
}

impl FromIterator<MonitorSpec> for MonitorSet {
    fn from_iter<I: IntoIterator<Item = MonitorSpec>>(iter: I) -> Self {
        let mut set = MonitorSet::default();
        for spec in iter {
            set.add(spec);
        }
        set
    }
}

/// The name of a monitor's collector: `agent:<id>` or `workspace:<id>`.
pub fn monitor_child_name(kind: MonitorKind, id: &str) -> String {
    format!("{kind}:{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_list_of_monitors_is_one_list_until_the_set_changes() {
        let mut set: MonitorSet = [MonitorSpec::agent("a1"), MonitorSpec::workspace("w1")]
            .into_iter()
            .collect();
        let first = set.shared();
        assert!(
            std::sync::Arc::ptr_eq(&first, &set.shared()),
            "not copied again"
        );
        assert_eq!(first.to_vec(), set.iter().cloned().collect::<Vec<_>>());
        set.add(MonitorSpec::agent("a2"));
        let second = set.shared();
        assert!(!std::sync::Arc::ptr_eq(&first, &second));
        assert_eq!(second.len(), 3);
        set.remove(MonitorKind::Agent, "a1");
        assert_eq!(set.shared().len(), 2);
        assert_eq!(first.len(), 2, "a list handed out stays as it was");
        assert_eq!(set.clone(), set, "equal sets whatever their lists");
    }

    #[test]
    fn thresholds_80_95_give_healthy_unhealthy_critical() {
        let t = Thresholds::new(80.0, 95.0);
        assert_eq!(t.status(50.0), HealthStatus::Healthy);
        assert_eq!(t.status(85.0), HealthStatus::Unhealthy);
        assert_eq!(t.status(97.0), HealthStatus::Critical);
        // The boundaries belong to the worse side, as in the original (`>=`).
        assert_eq!(t.status(80.0), HealthStatus::Unhealthy);
        assert_eq!(t.status(95.0), HealthStatus::Critical);
    }

    #[test]
    fn direction_fix_lower_is_worse_when_warning_exceeds_critical() {
        let t = Thresholds::new(0.5, 0.1);
        assert!(t.lower_is_worse());
        assert_eq!(t.status(1.0), HealthStatus::Healthy);
        assert_eq!(t.status(0.0), HealthStatus::Critical);
        assert_eq!(t.status(0.3), HealthStatus::Unhealthy);
        assert_eq!(t.comparator(), "<=");
    }

    #[test]
    fn nan_is_unknown_not_healthy() {
        assert_eq!(
            Thresholds::new(80.0, 95.0).status(f64::NAN),
            HealthStatus::Unknown
        );
    }

    #[test]
    fn hysteresis_margin_applies_in_both_directions() {
        let up = Thresholds::new(80.0, 95.0);
        assert!(!up.clear_of(79.0, 5.0));
        assert!(up.clear_of(74.0, 5.0));
        let down = Thresholds::new(0.5, 0.1);
        assert!(down.clear_of(1.0, 0.2));
        assert!(!down.clear_of(0.6, 0.2));
    }

    #[test]
    fn statuses_order_from_best_to_worst() {
        assert!(HealthStatus::Critical > HealthStatus::Unhealthy);
        assert!(HealthStatus::Unhealthy > HealthStatus::Degraded);
        assert!(HealthStatus::Degraded > HealthStatus::Healthy);
        assert!(HealthStatus::Healthy > HealthStatus::Unknown);
    }

    #[test]
    fn enum_strings_round_trip_in_lowercase() {
        for t in ResourceType::ALL {
            assert_eq!(t.as_str().parse::<ResourceType>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        for s in HealthStatus::ALL {
            assert_eq!(s.as_str().parse::<HealthStatus>().unwrap(), s);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_micros_with_z() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T18:26:20.5+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(format_timestamp(t), "2026-11-27T16:26:20.500000Z");
        assert_eq!(parse_timestamp(&format_timestamp(t)), Some(t));
        assert!(parse_timestamp("2026-11-27T16:26:20.500000").is_some());
    }

    #[test]
    fn ids_follow_the_rule() {
        for ok in ["a", "A1", "agent-1.x_y", &"a".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "..", "a/b", "a b", "é", &"a".repeat(129)] {
            let err = validate_id(bad).unwrap_err();
            assert!(err.contains(ID_RULE), "{err}");
        }
    }

    #[test]
    fn monitor_set_behaves_like_a_set() {
        let mut set = MonitorSet::default();
        assert_eq!(set.add(MonitorSpec::agent("a1")), AddOutcome::Added);
        assert_eq!(set.add(MonitorSpec::agent("a1")), AddOutcome::Unchanged);
        assert_eq!(set.add(MonitorSpec::workspace("a1")), AddOutcome::Added);
        assert_eq!(set.count(MonitorKind::Agent), 1);
        assert_eq!(set.count(MonitorKind::Workspace), 1);
        let with_pid = MonitorSpec::Agent {
            id: "a1".into(),
            options: AgentOptions {
                pid: Some(42),
                ..AgentOptions::default()
            },
        };
        assert_eq!(set.add(with_pid.clone()), AddOutcome::Updated);
        assert_eq!(set.get(MonitorKind::Agent, "a1"), Some(&with_pid));
        assert!(set.remove(MonitorKind::Agent, "a1").is_some());
        assert!(set.remove(MonitorKind::Agent, "a1").is_none());
        assert!(!set.contains(MonitorKind::Agent, "a1"));
        assert!(set.contains(MonitorKind::Workspace, "a1"));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn a_recorded_start_needs_a_pid_and_a_sane_boot_id() {
        let with = |pid, boot: &str| AgentOptions {
            pid,
            pid_start: Some(PidStart {
                ticks: 1,
                boot_id: Some(boot.into()),
            }),
            ..AgentOptions::default()
        };
        assert!(
            with(Some(7), "97351d68-c8a1-4d81-9390-1c767857e5d2")
                .validate()
                .is_ok()
        );
        assert!(with(None, "97351d68").validate().is_err());
        assert!(with(Some(7), "boot\nid").validate().is_err());
        assert!(with(Some(7), "").validate().is_err());
    }

    #[test]
    fn monitor_spec_options_round_trip_through_json() {
        let spec = MonitorSpec::Agent {
            id: "a1".into(),
            options: AgentOptions {
                pid: Some(7),
                workspace: Some("/w".into()),
                heartbeat: Some("/hb.json".into()),
                ..AgentOptions::default()
            },
        };
        let back = MonitorSpec::from_row(MonitorKind::Agent, "a1", &spec.options_json()).unwrap();
        assert_eq!(back, spec);
        // A recorded start time is kept; a row saved without one still loads.
        let started = MonitorSpec::Agent {
            id: "a1".into(),
            options: AgentOptions {
                pid: Some(7),
                pid_start: Some(PidStart {
                    ticks: 123,
                    boot_id: Some("97351d68-c8a1-4d81-9390-1c767857e5d2".into()),
                }),
                ..AgentOptions::default()
            },
        };
        let json = started.options_json();
        assert_eq!(
            json,
            r#"{"pid":7,"pid_start":{"ticks":123,"boot_id":"97351d68-c8a1-4d81-9390-1c767857e5d2"}}"#
        );
        assert_eq!(
            MonitorSpec::from_row(MonitorKind::Agent, "a1", &json).unwrap(),
            started
        );
        assert!(MonitorSpec::from_row(MonitorKind::Agent, "a1", r#"{"pid":7}"#).is_ok());
        assert!(MonitorSpec::from_row(MonitorKind::Agent, "a1", "{\"bogus\":1}").is_err());
        assert!(MonitorSpec::from_row(MonitorKind::Agent, "../x", "{}").is_err());
    }
}
