//! Settings in three layers: built-in defaults, a TOML file, then command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::catalog;
use crate::model::ResourceType;
use crate::rules::{ResourceOverride, RuleTable, ThresholdConfig};

pub mod custom;
pub mod gastown;
pub mod outputs;

pub use gastown::GastownSettings;
pub use outputs::{HttpSettings, LogFormat, NotifySettings};

/// Default database file, relative to the working directory (as in the original).
pub(crate) const DEFAULT_DB_PATH: &str = "health_monitor.db";
/// Default collection interval in seconds.
pub(crate) const DEFAULT_INTERVAL_SECS: f64 = 30.0;
/// Default minimum time between two notices of the same alert, in seconds.
pub(crate) const DEFAULT_ALERT_COOLDOWN_SECS: f64 = 300.0;
/// Default log level.
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// Default workspace of an agent; `{id}` is replaced by the agent id.
pub(crate) const DEFAULT_AGENT_WORKSPACE: &str = "/tmp/agent_{id}";
/// Default path of a workspace; `{id}` is replaced by the workspace id.
pub(crate) const DEFAULT_WORKSPACE_PATH: &str = "/tmp/agent-workspaces/{id}";
/// Shortest interval accepted; anything shorter only burns CPU.
pub(crate) const MIN_INTERVAL_SECS: f64 = 0.01;

/// How the supervisor restarts what fails (the `[supervisor]` table, in seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// First delay before a restart; it doubles with each failure.
    pub initial_backoff: Duration,
    /// Longest delay before a restart; the doubling stops here.
    pub max_backoff: Duration,
    /// More restarts than this within `window` park the child.
    pub max_restarts: usize,
    /// Span over which restarts are counted; a child that runs this long starts its backoff over.
    pub window: Duration,
    /// How long a parked child waits before one more try.
    pub park_pause: Duration,
    /// How long a restarted child must run before its `collector_failed` alert resolves.
    pub stable_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
            park_pause: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// The `[supervisor]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Seconds before the first restart, doubling with each failure (default 0.1).
    pub initial_backoff: Option<f64>,
    /// Seconds the doubling backoff stops at (default 30); at least `initial_backoff`.
    pub max_backoff: Option<f64>,
    /// More restarts than this within `window` park the child (default 5).
    pub max_restarts: Option<usize>,
    /// Seconds over which restarts are counted against `max_restarts` (default 60).
    pub window: Option<f64>,
    /// Seconds a parked child waits before one more try (default 300).
    pub park_pause: Option<f64>,
    /// Seconds a restarted child must run before its `collector_failed` alert resolves
    /// (default 60).
    pub stable_after: Option<f64>,
    /// A measurement running longer raises `collector_stalled` (default: 10 intervals, >= 60 s).
    pub stall_after: Option<f64>,
}

impl SupervisorConfig {
    fn resolve(&self) -> anyhow::Result<RestartPolicy> {
        let d = RestartPolicy::default();
        let secs = |key: &str, v: Option<f64>, default: Duration| -> anyhow::Result<Duration> {
            match v {
                Some(v) => seconds(&format!("supervisor.{key}"), v, 0.001),
                None => Ok(default),
            }
        };
        let policy = RestartPolicy {
            initial_backoff: secs("initial_backoff", self.initial_backoff, d.initial_backoff)?,
            max_backoff: secs("max_backoff", self.max_backoff, d.max_backoff)?,
            max_restarts: self.max_restarts.unwrap_or(d.max_restarts),
            window: secs("window", self.window, d.window)?,
            park_pause: secs("park_pause", self.park_pause, d.park_pause)?,
            stable_after: secs("stable_after", self.stable_after, d.stable_after)?,
        };
        if policy.max_backoff < policy.initial_backoff {
            bail!("supervisor.max_backoff must be at least supervisor.initial_backoff");
        }
        Ok(policy)
    }
}

/// The `--config` file as written by the operator. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Database file (default `health_monitor.db`, relative to the working directory).
    pub db_path: Option<PathBuf>,
    /// Control socket (default: `<db_path>.sock`).
    pub socket: Option<PathBuf>,
    /// Seconds between collections.
    pub interval: Option<f64>,
    /// Seconds between two notices of the same ongoing alert.
    pub alert_cooldown: Option<f64>,
    /// `info` (default), another level, or `target=level` directives such as
    /// `health_monitor=debug,info`.
    pub log_level: Option<String>,
    /// Template of an agent's workspace path, with `{id}`.
    pub agent_workspace: Option<String>,
    /// Template of a workspace's path, with `{id}`.
    pub workspace_path: Option<String>,
    /// Whether the kernel's notifications (an agent's process ending, a heartbeat's state, a pid
    /// file, a workspace root deleted) bring a measurement forward, between cycles (default
    /// true). Off, everything is measured at the cycle only.
    pub events: Option<bool>,
    /// Seconds a directory walk may take before it gives up (default: 10 intervals, 30 to 600).
    pub walk_time_cap: Option<f64>,
    /// Largest the database may grow, in MB; past it writes fail like a full disk (default: no cap).
    pub max_db_size_mb: Option<f64>,
    /// Memory for rows the database has not taken yet, in MB (default 64); past it the oldest
    /// metric rows are dropped and counted. Alerts are never dropped.
    pub writer_buffer_mb: Option<f64>,
    /// Mount points to watch (default: every real filesystem).
    pub filesystems: Option<Vec<PathBuf>>,
    /// Days metric rows are kept (default 7).
    pub retention_days: Option<f64>,
    /// Days resolved alerts are kept after resolution (default 30); active ones always stay.
    pub alert_retention_days: Option<f64>,
    /// `[thresholds.<metric_name>]` tables.
    #[serde(default)]
    pub thresholds: BTreeMap<String, ThresholdConfig>,
    /// `[supervisor]`: restart backoff and intensity.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// `[[override]]` tables: thresholds for one metric of one resource.
    #[serde(default, rename = "override")]
    pub overrides: Vec<ResourceOverride>,
    /// `text` (default) or `json`.
    pub log_format: Option<LogFormat>,
    /// `[notify]`: exec hooks, webhooks, Alertmanagers.
    #[serde(default)]
    pub notify: outputs::NotifyConfig,
    /// `[http]`: the /metrics, /healthz and /api/v1 listener.
    #[serde(default)]
    pub http: outputs::HttpConfig,
    /// `[gastown]`: following a Gas Town town.
    #[serde(default)]
    pub gastown: gastown::GastownConfig,
    /// `[pushed]`: limits of the metrics pushed by `report`.
    #[serde(default)]
    pub pushed: custom::PushedConfig,
    /// `[[check]]` entries: plugins run on a schedule.
    #[serde(default, rename = "check")]
    pub checks: Vec<custom::CheckConfig>,
}

/// Largest config file accepted, in bytes (1 MiB): a real one is a few kilobytes, and a device
/// such as `/dev/zero` or a generated file of 200k `[[override]]`s must not exhaust memory.
pub(crate) const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// What a file that is not a regular file is, for the error message.
fn file_kind(file_type: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Reads a config file's text: only a regular file (a symlink to one is fine) of at most
/// [`MAX_CONFIG_BYTES`], never blocking on a FIFO nor reading a device without end.
fn read_config_text(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let refuse_kind = |file_type: std::fs::FileType| -> anyhow::Error {
        anyhow::anyhow!(
            "config file {shown} is {}, not a regular file; give a TOML file",
            file_kind(file_type)
        )
    };
    let too_big = |size: u64| -> anyhow::Error {
        anyhow::anyhow!(
            "config file {shown} is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes (1 MiB)"
        )
    };
    // Checked before opening: opening a device can have effects of its own.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read config file {shown}"))?;
    if !meta.is_file() {
        return Err(refuse_kind(meta.file_type()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big(meta.len()));
    }
    // Non-blocking, so a FIFO swapped in after the check cannot hang the open; checked again on
    // what was opened.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .with_context(|| format!("cannot read config file {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read config file {shown}"))?;
    if !meta.is_file() {
        return Err(refuse_kind(meta.file_type()));
    }
    // A file growing while it is read is cut at the cap, and refused.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read config file {shown}"))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("config file {shown} is not UTF-8 text: {e}"))
}

impl ConfigFile {
    /// Reads and parses a config file; errors name the file and the problem. Only a regular
    /// file of at most [`MAX_CONFIG_BYTES`] is read.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = read_config_text(path)?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config text.
    pub fn parse(text: &str) -> anyhow::Result<ConfigFile> {
        Ok(toml::from_str(text)?)
    }
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    /// `--db-path`: the database file.
    pub db_path: Option<PathBuf>,
    /// `--socket`: the control socket.
    pub socket: Option<PathBuf>,
    /// `--interval`: seconds between collections.
    pub interval: Option<f64>,
    /// `--alert-cooldown`: seconds between two notices of the same alert.
    pub alert_cooldown: Option<f64>,
    /// `--log-level`: a level or `target=level` directives.
    pub log_level: Option<String>,
    /// `--log-format`: `text` or `json`.
    pub log_format: Option<LogFormat>,
    /// `--retention-days`: days metric rows are kept.
    pub retention_days: Option<f64>,
    /// `--on-alert`: programs run for each notice.
    pub on_alert: Vec<PathBuf>,
    /// `--alertmanager`: Alertmanager base URLs.
    pub alertmanager: Vec<String>,
    /// `--listen`: HTTP address.
    pub listen: Option<String>,
    /// `--listen-public`: allow a non-loopback HTTP address.
    pub listen_public: bool,
    /// `--gastown`: the town root to follow.
    pub gastown: Option<PathBuf>,
}

/// The resolved settings the daemon and the CLI run with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database file.
    pub db_path: PathBuf,
    /// The control socket (default: `<db_path>.sock`).
    pub socket_path: PathBuf,
    /// Time between two collections (default 30 s).
    pub interval: Duration,
    /// Least time between two notices of the same ongoing alert (default 300 s).
    pub alert_cooldown: Duration,
    /// Validated log level or `target=level` directives (default `info`).
    pub log_level: String,
    /// Template of an agent's workspace path, with `{id}` (default `/tmp/agent_{id}`).
    pub agent_workspace: String,
    /// Template of a workspace's path, with `{id}` (default `/tmp/agent-workspaces/{id}`).
    pub workspace_path: String,
    /// Thresholds and alert rules for every metric: defaults, `[thresholds.*]`, `[[override]]`s.
    pub rules: RuleTable,
    /// How failed actors are restarted (`[supervisor]`).
    pub restart: RestartPolicy,
    /// When a directory walk gives up and the last complete size is kept.
    pub walk_time_cap: Duration,
    /// When a measurement that has not returned raises `collector_stalled`.
    pub stall_after: Duration,
    /// Kernel notifications bring measurements forward (see [`crate::watch`]).
    pub events: bool,
    /// Cap on the database file, in bytes.
    pub max_db_bytes: Option<u64>,
    /// Cap on the writer's buffer of uncommitted rows, in bytes.
    pub writer_buffer_bytes: usize,
    /// Mount points to watch; empty means every real filesystem.
    pub filesystems: Vec<PathBuf>,
    /// How long metric rows are kept.
    pub metric_retention: Duration,
    /// How long resolved alerts are kept.
    pub alert_retention: Duration,
    /// How log lines are written (default text).
    pub log_format: LogFormat,
    /// Where alert notices go besides the log.
    pub notify: NotifySettings,
    /// The HTTP listener, if any.
    pub http: HttpSettings,
    /// The Gas Town town followed, if any.
    pub gastown: Option<GastownSettings>,
    /// Limits of pushed metrics (`[pushed]`).
    pub pushed: custom::PushedSettings,
    /// The checks of the config file (`[[check]]`), as monitors that are never stored.
    pub checks: Vec<crate::model::MonitorSpec>,
    /// The config file these came from, if any: what a reload reads again.
    pub config_path: Option<PathBuf>,
    /// The command line's values, which a reload layers over the file again.
    pub overrides: CliOverrides,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::resolve(ConfigFile::default(), &CliOverrides::default())
            .expect("built-in defaults are valid")
    }
}

impl Settings {
    /// Layers flags over the file over the defaults and validates the result, stage by stage:
    /// each stage's errors come before the next one's.
    pub fn resolve(file: ConfigFile, cli: &CliOverrides) -> anyhow::Result<Settings> {
        let (db_path, socket_path) = resolve_paths(&file, cli);
        let (interval, alert_cooldown) = resolve_intervals(&file, cli)?;
        let (log_level, log_format) = resolve_logging(&file, cli)?;
        let (agent_workspace, workspace_path) = resolve_templates(&file)?;
        let gastown = file.gastown.resolve(cli.gastown.as_ref())?;
        let rules = resolve_rules(&file, gastown.is_some())?;
        let restart = file.supervisor.resolve()?;
        let Limits {
            walk_time_cap,
            max_db_bytes,
            writer_buffer_bytes,
            filesystems,
            metric_retention,
            alert_retention,
            stall_after,
        } = Limits::resolve(&file, cli, interval)?;
        let notify = resolve_notify(&file, cli, gastown.as_ref())?;
        let http = file
            .http
            .resolve(cli.listen.as_deref(), cli.listen_public)?;
        let pushed = file.pushed.resolve(interval)?;
        let checks = custom::resolve_checks(&file.checks)?;
        Ok(Settings {
            db_path,
            socket_path,
            interval,
            alert_cooldown,
            log_level,
            agent_workspace,
            workspace_path,
            rules,
            restart,
            walk_time_cap,
            stall_after,
            events: file.events.unwrap_or(true),
            max_db_bytes,
            writer_buffer_bytes,
            metric_retention,
            alert_retention,
            filesystems,
            log_format,
            notify,
            http,
            gastown,
            pushed,
            checks,
            config_path: None,
            overrides: cli.clone(),
        })
    }

    /// Where an agent's workspace is when the monitor does not say.
    pub(crate) fn default_agent_workspace(&self, id: &str) -> PathBuf {
        expand_template(&self.agent_workspace, id)
    }

    /// Where a workspace is when the monitor does not say.
    pub(crate) fn default_workspace_path(&self, id: &str) -> PathBuf {
        expand_template(&self.workspace_path, id)
    }
}

/// Paths stage: the database, and the control socket that follows it unless given.
fn resolve_paths(file: &ConfigFile, cli: &CliOverrides) -> (PathBuf, PathBuf) {
    let db_path = cli
        .db_path
        .clone()
        .or_else(|| file.db_path.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DB_PATH));
    let socket_path = cli
        .socket
        .clone()
        .or_else(|| file.socket.clone())
        .unwrap_or_else(|| default_socket_path(&db_path));
    (db_path, socket_path)
}

/// Intervals stage: the collection interval, then the alert cooldown.
fn resolve_intervals(
    file: &ConfigFile,
    cli: &CliOverrides,
) -> anyhow::Result<(Duration, Duration)> {
    let interval = seconds(
        "interval",
        cli.interval
            .or(file.interval)
            .unwrap_or(DEFAULT_INTERVAL_SECS),
        MIN_INTERVAL_SECS,
    )?;
    let alert_cooldown = seconds(
        "alert_cooldown",
        cli.alert_cooldown
            .or(file.alert_cooldown)
            .unwrap_or(DEFAULT_ALERT_COOLDOWN_SECS),
        0.0,
    )?;
    Ok((interval, alert_cooldown))
}

/// Logging stage: the validated log level, and the log format.
fn resolve_logging(file: &ConfigFile, cli: &CliOverrides) -> anyhow::Result<(String, LogFormat)> {
    let log_level = cli
        .log_level
        .clone()
        .or_else(|| file.log_level.clone())
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    validate_log_level(&log_level)?;
    let log_format = cli.log_format.or(file.log_format).unwrap_or_default();
    Ok((log_level, log_format))
}

/// Templates stage: an agent's workspace, then a workspace's path, each with `{id}`.
fn resolve_templates(file: &ConfigFile) -> anyhow::Result<(String, String)> {
    let agent_workspace = file
        .agent_workspace
        .clone()
        .unwrap_or_else(|| DEFAULT_AGENT_WORKSPACE.into());
    validate_template("agent_workspace", &agent_workspace)?;
    let workspace_path = file
        .workspace_path
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKSPACE_PATH.into());
    validate_template("workspace_path", &workspace_path)?;
    Ok((agent_workspace, workspace_path))
}

/// Thresholds stage: `[thresholds.*]` over the defaults, a town's deacon rule, `[[override]]`s.
fn resolve_rules(file: &ConfigFile, town: bool) -> anyhow::Result<RuleTable> {
    let mut rules = RuleTable::default().with_overrides(&file.thresholds)?;
    if town {
        rules = rules.with_resource_overrides(&[deacon_heartbeat_override()])?;
    }
    rules.with_resource_overrides(&file.overrides)
}

/// A town's rule for its deacon's patrol heartbeat, which an operator's `[[override]]` beats.
fn deacon_heartbeat_override() -> ResourceOverride {
    // The deacon's patrol heartbeat is stale at 5 minutes and very stale at 20, as Gas Town
    // reads it (deacon/heartbeat.go). Other session heartbeats never alert by their age (see
    // daemon::children::probe_for).
    ResourceOverride {
        resource_type: ResourceType::Agent,
        resource_id: gastown::DEACON_SESSION.into(),
        metric: catalog::HEARTBEAT_AGE_SECONDS.into(),
        warning: Some(gastown::DEACON_HEARTBEAT_STALE_SECS),
        critical: Some(gastown::DEACON_HEARTBEAT_VERY_STALE_SECS),
        for_cycles: None,
        clear_cycles: None,
        hysteresis: None,
    }
}

/// Limits stage: walk and stall times, database and buffer caps, filesystems and retention.
struct Limits {
    walk_time_cap: Duration,
    max_db_bytes: Option<u64>,
    writer_buffer_bytes: usize,
    filesystems: Vec<PathBuf>,
    metric_retention: Duration,
    alert_retention: Duration,
    stall_after: Duration,
}

impl Limits {
    /// Validates the limits, in this order; the defaulted times follow `interval`.
    fn resolve(
        file: &ConfigFile,
        cli: &CliOverrides,
        interval: Duration,
    ) -> anyhow::Result<Limits> {
        let walk_time_cap = match file.walk_time_cap {
            Some(secs) => seconds("walk_time_cap", secs, 0.001)?,
            None => (interval * 10).clamp(Duration::from_secs(30), Duration::from_secs(600)),
        };
        let max_db_bytes = file
            .max_db_size_mb
            .map(|v| megabytes("max_db_size_mb", v))
            .transpose()?;
        let writer_buffer_bytes =
            megabytes("writer_buffer_mb", file.writer_buffer_mb.unwrap_or(64.0))? as usize;
        let filesystems = file.filesystems.clone().unwrap_or_default();
        if let Some(p) = filesystems.iter().find(|p| !p.is_absolute()) {
            bail!(
                "filesystems: {} must be an absolute mount point",
                p.display()
            );
        }
        let metric_retention = days(
            "retention_days",
            cli.retention_days.or(file.retention_days),
            7.0,
        )?;
        let alert_retention = days("alert_retention_days", file.alert_retention_days, 30.0)?;
        let stall_after = match file.supervisor.stall_after {
            Some(v) => seconds("supervisor.stall_after", v, 0.01)?,
            None => (interval * 10).max(Duration::from_secs(60)),
        };
        Ok(Limits {
            walk_time_cap,
            max_db_bytes,
            writer_buffer_bytes,
            filesystems,
            metric_retention,
            alert_retention,
            stall_after,
        })
    }
}

/// Notify stage: `[notify]` with `--on-alert` and `--alertmanager`, plus a town's escalation.
fn resolve_notify(
    file: &ConfigFile,
    cli: &CliOverrides,
    town: Option<&GastownSettings>,
) -> anyhow::Result<NotifySettings> {
    let mut notify = file.notify.resolve(&cli.on_alert, &cli.alertmanager)?;
    if let Some(town) = town
        && let Some(min_severity) = town.escalate
    {
        notify.escalate = Some(outputs::EscalateSink {
            program: town.gt.clone(),
            min_severity,
            timeout: town.escalate_timeout,
            cwd: Some(town.root.clone()),
        });
    }
    Ok(notify)
}

/// The control socket that goes with a database: `<db-path>.sock`.
pub(crate) fn default_socket_path(db_path: &Path) -> PathBuf {
    let mut s = db_path.as_os_str().to_owned();
    s.push(".sock");
    PathBuf::from(s)
}

/// Replaces `{id}` in a path template. Ids are validated, so they cannot climb out of it.
pub(crate) fn expand_template(template: &str, id: &str) -> PathBuf {
    PathBuf::from(template.replace("{id}", id))
}

fn validate_template(key: &str, template: &str) -> anyhow::Result<()> {
    if !template.contains("{id}") {
        bail!("{key} = {template:?} must contain {{id}}, which is replaced by the monitor's id");
    }
    Ok(())
}

fn seconds(key: &str, value: f64, min: f64) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < min || value > 86_400.0 * 365.0 {
        bail!("{key} must be a number of seconds between {min} and one year, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// A size in MB as bytes: positive and at most 1e9 MB.
fn megabytes(key: &str, v: f64) -> anyhow::Result<u64> {
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        bail!("{key} must be a positive number of MB, got {v}");
    }
    Ok((v * 1024.0 * 1024.0) as u64)
}

/// A number of days (`default` when not given): positive and at most 100 years.
fn days(key: &str, v: Option<f64>, default: f64) -> anyhow::Result<Duration> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 36_500.0 {
        bail!("{key} must be a positive number of days, got {v}");
    }
    Ok(Duration::from_secs_f64(v * 86_400.0))
}

/// Accepts a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or comma-separated
/// `target=level` directives such as `health_monitor=debug,actix=warn`.
pub(crate) fn validate_log_level(spec: &str) -> anyhow::Result<()> {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let level_ok = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let target_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let ok = !spec.is_empty()
        && spec.split(',').all(|d| match d.split_once('=') {
            Some((target, level)) => target_ok(target) && level_ok(level),
            None => level_ok(d),
        });
    if !ok {
        bail!(
            "invalid log level {spec:?}: use error, warn, info, debug, trace or off (or target=level,...)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Thresholds;

    #[test]
    fn defaults_match_the_original() {
        let s = Settings::default();
        assert_eq!(s.db_path, PathBuf::from("health_monitor.db"));
        assert_eq!(s.socket_path, PathBuf::from("health_monitor.db.sock"));
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.alert_cooldown, Duration::from_secs(300));
        assert_eq!(s.log_level, "info");
        assert_eq!(s.restart, RestartPolicy::default());
        assert_eq!(s.restart.initial_backoff, Duration::from_millis(100));
        assert_eq!(s.restart.max_restarts, 5);
        assert_eq!(s.walk_time_cap, Duration::from_secs(300));
        assert_eq!(s.max_db_bytes, None);
        assert_eq!(s.writer_buffer_bytes, 64 * 1024 * 1024);
        assert_eq!(s.metric_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(s.alert_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(
            s.default_agent_workspace("a1"),
            PathBuf::from("/tmp/agent_a1")
        );
        assert_eq!(
            s.default_workspace_path("w1"),
            PathBuf::from("/tmp/agent-workspaces/w1")
        );
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let file = ConfigFile::parse(
            "interval = 5\nalert_cooldown = 60\nagent_workspace = \"/srv/{id}\"\n\
             [thresholds.workspace_size_mb]\nwarning = 1\ncritical = 3\n",
        )
        .unwrap();
        let cli = CliOverrides {
            interval: Some(2.0),
            ..Default::default()
        };
        let s = Settings::resolve(file, &cli).unwrap();
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.alert_cooldown, Duration::from_secs(60));
        assert_eq!(s.default_agent_workspace("x"), PathBuf::from("/srv/x"));
        let rule = s
            .rules
            .rule(ResourceType::Workspace, "w", "workspace_size_mb")
            .unwrap();
        assert_eq!(rule.thresholds, Thresholds::new(1.0, 3.0));
        // Untouched metrics keep their defaults.
        let mem = s
            .rules
            .rule(ResourceType::Memory, "system", "memory_usage_percent")
            .unwrap();
        assert_eq!(mem.thresholds, Thresholds::new(80.0, 95.0));
    }

    #[test]
    fn bad_config_names_the_problem() {
        let err = |text: &str| {
            let file = ConfigFile::parse(text);
            match file {
                Err(e) => format!("{e:#}"),
                Ok(f) => format!(
                    "{:#}",
                    Settings::resolve(f, &CliOverrides::default()).unwrap_err()
                ),
            }
        };
        assert!(err("intervall = 3").contains("intervall"));
        assert!(err("interval = -1").contains("interval"));
        assert!(err("interval = \"x\"").contains("interval"));
        assert!(
            err("[thresholds.cpu_usage_percen]\nwarning = 1\ncritical = 2")
                .contains("did you mean \"cpu_usage_percent\"")
        );
        assert!(err("[thresholds.9bad]\nwarning = 1\ncritical = 2").contains("not valid"));
        assert!(err("[thresholds.metric_stale]\nwarning = 1\ncritical = 2").contains("own alerts"));
        assert!(err("filesystems = [\"data\"]").contains("absolute"));
        assert!(err("[thresholds.agent_active]\nwarning = nan").contains("finite"));
        assert!(err("[thresholds.agent_active]\nfor_cycles = 0").contains("for_cycles"));
        assert!(err("workspace_path = \"/tmp/ws\"").contains("{id}"));
        assert!(err("[supervisor]\nwindow = -1").contains("supervisor.window"));
        assert!(err("[supervisor]\nrestarts = 1").contains("restarts"));
        assert!(err("max_db_size_mb = 0").contains("max_db_size_mb"));
        assert!(err("[thresholds.disk_usage_percent]\nwarning = 97").contains("reverse"));
        assert!(err("retention_days = -2").contains("retention_days"));
        assert!(err("log_level = \"loud!\"").contains("log level"));
        assert!(err("log_level = \"x=loud\"").contains("log level"));
        validate_log_level("DEBUG").unwrap();
        validate_log_level("health_monitor=debug,actix=warn").unwrap();
    }

    #[test]
    fn equal_warning_and_critical_are_refused_with_the_reason() {
        let err = |text: &str| {
            let file = ConfigFile::parse(text).unwrap();
            format!(
                "{:#}",
                Settings::resolve(file, &CliOverrides::default()).unwrap_err()
            )
        };
        let e = err("[thresholds.agent_active]\nwarning = 0.5\ncritical = 0.5\n");
        assert!(
            e.contains("[thresholds.agent_active]") && e.contains("must differ"),
            "{e}"
        );
        // One given, equal to the other's default.
        let e = err("[thresholds.memory_usage_percent]\ncritical = 80\n");
        assert!(
            e.contains("memory_usage_percent") && e.contains("both 80"),
            "{e}"
        );
        let e = err(
            "[[override]]\nresource_type = \"workspace\"\nresource_id = \"w\"\n\
             metric = \"workspace_exists\"\nwarning = 0.1\n",
        );
        assert!(
            e.contains("[[override]] #1") && e.contains("workspace_exists") && e.contains("differ"),
            "{e}"
        );
    }

    #[test]
    fn only_a_regular_file_of_at_most_a_megabyte_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = |p: &Path| format!("{:#}", ConfigFile::load(p).unwrap_err());
        let e = err(Path::new("/dev/zero"));
        assert!(
            e.contains("character device") && e.contains("/dev/zero"),
            "{e}"
        );
        assert!(err(dir.path()).contains("a directory"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(err(&fifo).contains("FIFO"));
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        assert!(err(&big).contains("limit is 1048576 bytes"));
        let exact = dir.path().join("exact.toml");
        std::fs::write(&exact, "#".repeat(MAX_CONFIG_BYTES as usize)).unwrap();
        ConfigFile::load(&exact).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&exact, &link).unwrap();
        ConfigFile::load(&link).unwrap();
        assert!(err(&dir.path().join("missing.toml")).contains("cannot read config file"));
    }

    #[test]
    fn per_resource_overrides_win_for_their_resource_only() {
        let file = ConfigFile::parse(
            "[thresholds.workspace_file_count]\nwarning = 100\ncritical = 1000\n\
             [[override]]\nresource_type = \"workspace\"\nresource_id = \"wt\"\n\
             metric = \"workspace_file_count\"\nwarning = 5\ncritical = 100000\nfor_cycles = 2\n",
        )
        .unwrap();
        let s = Settings::resolve(file, &CliOverrides::default()).unwrap();
        let wt = s
            .rules
            .rule(ResourceType::Workspace, "wt", "workspace_file_count")
            .unwrap();
        assert_eq!(wt.thresholds, Thresholds::new(5.0, 100_000.0));
        assert_eq!(wt.for_cycles, 2);
        let other = s
            .rules
            .rule(ResourceType::Workspace, "other", "workspace_file_count")
            .unwrap();
        assert_eq!(other.thresholds, Thresholds::new(100.0, 1000.0));
        assert_eq!(other.for_cycles, 1);
        let agent = s
            .rules
            .rule(ResourceType::Agent, "wt", "workspace_file_count")
            .unwrap();
        assert_eq!(agent.thresholds, Thresholds::new(100.0, 1000.0));
        let bad = ConfigFile::parse(
            "[[override]]\nresource_type = \"spaceship\"\nresource_id = \"x\"\nmetric = \"agent_active\"\n",
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("spaceship"));
        let bad = ConfigFile::parse(
            "[[override]]\nresource_type = \"agent\"\nresource_id = \"x\"\nmetric = \"agent_activ\"\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            Settings::resolve(bad, &CliOverrides::default()).unwrap_err()
        );
        assert!(
            err.contains("[[override]] #1") && err.contains("unknown metric"),
            "{err}"
        );
    }

    #[test]
    fn the_readme_config_example_is_valid() {
        let readme = include_str!("../../README.md");
        let section = readme
            .find("## Configuration")
            .expect("a Configuration section");
        let start = section
            + readme[section..].find("```toml\n").expect("a toml example")
            + "```toml\n".len();
        let end = start + readme[start..].find("```").unwrap();
        let file = ConfigFile::parse(&readme[start..end]).unwrap();
        let s = Settings::resolve(file, &CliOverrides::default()).unwrap();
        assert_eq!(s.filesystems.len(), 2);
        assert_eq!(
            s.rules
                .rule(ResourceType::Workspace, "wt", "workspace_file_count")
                .unwrap()
                .for_cycles,
            2
        );
        // Every other TOML snippet in the README and in docs/ parses too.
        let docs = [
            readme,
            include_str!("../../docs/gastown.md"),
            include_str!("../../docs/custom-metrics.md"),
        ];
        let mut blocks = 0;
        for block in docs.iter().flat_map(|d| d.split("```toml\n").skip(1)) {
            let text = &block[..block.find("```").unwrap()];
            let file = ConfigFile::parse(text).unwrap_or_else(|e| panic!("{e:#}\n{text}"));
            Settings::resolve(file, &CliOverrides::default())
                .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
            blocks += 1;
        }
        assert!(blocks >= 2, "README's example and the [gastown] one");
    }

    #[test]
    fn a_town_sets_the_deacons_heartbeat_threshold_and_escalation() {
        let file = ConfigFile::parse("[gastown]\nroot = \"/gt\"\nheartbeat_stale = 60\n").unwrap();
        let s = Settings::resolve(file, &CliOverrides::default()).unwrap();
        let thresholds = |s: &Settings, id: &str| {
            let rule = s
                .rules
                .rule(ResourceType::Agent, id, catalog::HEARTBEAT_AGE_SECONDS)
                .unwrap();
            (rule.thresholds.warning, rule.thresholds.critical)
        };
        assert_eq!(thresholds(&s, "hq-deacon"), (300.0, 1200.0));
        assert_eq!(
            thresholds(&s, "a"),
            (180.0, 600.0),
            "an operator's agent keeps the defaults"
        );
        let escalate = s.notify.escalate.expect("escalation on by default");
        assert_eq!(escalate.cwd.as_deref(), Some(Path::new("/gt")));
        assert_eq!(escalate.min_severity, crate::model::HealthStatus::Unhealthy);
        // An [[override]] still wins over the town's.
        let file = ConfigFile::parse(
            "[gastown]\nroot = \"/gt\"\n[[override]]\nresource_type = \"agent\"\nresource_id = \"hq-deacon\"\nmetric = \"heartbeat_age_seconds\"\nwarning = 30\ncritical = 90\n",
        )
        .unwrap();
        let s = Settings::resolve(file, &CliOverrides::default()).unwrap();
        assert_eq!(thresholds(&s, "hq-deacon"), (30.0, 90.0));
    }

    #[test]
    fn partial_threshold_override_keeps_the_other_default() {
        let file = ConfigFile::parse("[thresholds.memory_usage_percent]\ncritical = 99\n").unwrap();
        let s = Settings::resolve(file, &CliOverrides::default()).unwrap();
        let rule = s
            .rules
            .rule(ResourceType::Memory, "system", "memory_usage_percent");
        assert_eq!(rule.unwrap().thresholds, Thresholds::new(80.0, 99.0));
    }

    #[test]
    fn socket_follows_db_path_unless_given() {
        let cli = CliOverrides {
            db_path: Some("/var/lib/hm/x.db".into()),
            ..Default::default()
        };
        let s = Settings::resolve(ConfigFile::default(), &cli).unwrap();
        assert_eq!(s.socket_path, PathBuf::from("/var/lib/hm/x.db.sock"));
    }

    #[test]
    fn each_stage_resolves_its_own_settings() {
        let file = ConfigFile::parse(
            "interval = 5\nfilesystems = [\"/\"]\nmax_db_size_mb = 1\n[supervisor]\nstall_after = 2\n",
        )
        .unwrap();
        let cli = CliOverrides {
            db_path: Some("/d/x.db".into()),
            retention_days: Some(2.0),
            ..Default::default()
        };
        assert_eq!(
            resolve_paths(&file, &cli),
            (PathBuf::from("/d/x.db"), PathBuf::from("/d/x.db.sock"))
        );
        let (interval, alert_cooldown) = resolve_intervals(&file, &cli).unwrap();
        assert_eq!(interval, Duration::from_secs(5));
        assert_eq!(alert_cooldown, Duration::from_secs(300));
        assert_eq!(
            resolve_logging(&file, &cli).unwrap(),
            ("info".to_string(), LogFormat::Text)
        );
        let (agent_workspace, _) = resolve_templates(&file).unwrap();
        assert_eq!(agent_workspace, DEFAULT_AGENT_WORKSPACE);
        let rules = resolve_rules(&file, true).unwrap();
        let deacon = rules
            .rule(
                ResourceType::Agent,
                gastown::DEACON_SESSION,
                catalog::HEARTBEAT_AGE_SECONDS,
            )
            .unwrap();
        assert_eq!(
            deacon.thresholds.warning,
            gastown::DEACON_HEARTBEAT_STALE_SECS
        );
        let limits = Limits::resolve(&file, &cli, interval).unwrap();
        assert_eq!(limits.walk_time_cap, Duration::from_secs(50));
        assert_eq!(limits.stall_after, Duration::from_secs(2));
        assert_eq!(limits.max_db_bytes, Some(1024 * 1024));
        assert_eq!(limits.metric_retention, Duration::from_secs(2 * 86_400));
        assert_eq!(limits.filesystems, [PathBuf::from("/")]);
        assert!(
            resolve_notify(&file, &cli, None)
                .unwrap()
                .escalate
                .is_none()
        );
        assert_eq!(megabytes("k", 2.0).unwrap(), 2 * 1024 * 1024);
        assert_eq!(
            format!("{:#}", days("k", Some(0.0), 1.0).unwrap_err()),
            "k must be a positive number of days, got 0"
        );
    }
}
