//! The command line: clap types (one file per command group) and the dispatch to them.

pub mod alerts;
pub mod config_check;
pub mod daemon;
pub mod db;
pub mod gastown;
pub mod history;
pub mod monitors;
pub mod report;
pub mod shell;
pub mod status;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::{CliOverrides, ConfigFile, Settings};
use crate::model::{MonitorKind, validate_id};

/// The version `--version` prints: the package's and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HM_GIT_COMMIT"),
    ")"
);

/// Keeps a fleet of coding agents and their machine healthy.
#[derive(Debug, Parser)]
#[command(name = "health-monitor", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Options every command takes (`--db-path`, `--config`...).
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after the command name.
#[derive(Debug, Args, Clone, Default)]
pub struct GlobalArgs {
    /// SQLite database file [default: health_monitor.db]
    #[arg(long, global = true, value_name = "FILE")]
    pub db_path: Option<PathBuf>,
    /// Control socket of the daemon [default: <db-path>.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TOML config file: interval, alert_cooldown, agent_workspace, workspace_path, [thresholds.<metric>]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or a tracing filter [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log line format: text, or json for log aggregation [default: text]
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<crate::config::LogFormat>,
    /// Days metric rows are kept; resolved alerts are kept per alert_retention_days [default: 7]
    #[arg(long, global = true, value_name = "DAYS")]
    pub retention_days: Option<f64>,
    /// Follow the Gas Town town at this root: its agents, events and escalations
    #[arg(long, global = true, value_name = "TOWN_ROOT")]
    pub gastown: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (or one cycle with --once)
    Start(daemon::StartArgs),
    /// Show overall health, every resource and the active alerts
    Status(status::StatusArgs),
    /// List the monitored agents and workspaces
    List(status::ListArgs),
    /// Watch an agent or a workspace, or run a check (persisted; applied live when the daemon runs)
    Add(monitors::AddArgs),
    /// Stop watching an agent or a workspace, or running a check
    Remove(monitors::RemoveArgs),
    /// Stop the running daemon gracefully
    Stop,
    /// Reload the running daemon's config file (as SIGHUP); a bad file is refused, the old kept
    Reload,
    /// List alerts: the active ones, or all with --all
    Alerts(alerts::AlertsArgs),
    /// Acknowledge an active alert: no more reminders unless it escalates
    Ack(alerts::AckArgs),
    /// Keep a resource's alerts from being sent for a while (they are still recorded)
    Silence(alerts::SilenceArgs),
    /// Database upkeep: prune, vacuum, backup, check (safe while the daemon runs)
    Db(db::DbArgs),
    /// One metric of one resource over time: points, min/avg/max and a sparkline
    History(history::HistoryArgs),
    /// The Gas Town town followed with --gastown: its agents and their health
    Gastown(gastown::GastownArgs),
    /// Push custom metrics to the daemon (one, or many with --stdin), alerted like the rest
    Report(report::ReportArgs),
    /// Check a config file without starting anything (`config check [FILE]`)
    Config(config_check::ConfigArgs),
    /// Print shell completions: bash, zsh or fish
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff)
    Man,
}

/// clap value parser for agent and workspace ids.
pub(crate) fn parse_id(s: &str) -> Result<String, String> {
    validate_id(s).map(|_| s.to_string())
}

/// clap value parser for `agent` / `workspace` / `check`.
pub(crate) fn parse_kind(s: &str) -> Result<MonitorKind, String> {
    s.parse()
}

/// Resolves settings from the config file and the flags (flags win); `start` has its own.
pub fn settings(
    global: &GlobalArgs,
    start: Option<&daemon::StartArgs>,
) -> anyhow::Result<Settings> {
    let file = match &global.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let mut overrides = CliOverrides {
        db_path: global.db_path.clone(),
        socket: global.socket.clone(),
        log_level: global.log_level.clone(),
        log_format: global.log_format,
        retention_days: global.retention_days,
        gastown: global.gastown.clone(),
        ..CliOverrides::default()
    };
    if let Some(start) = start {
        overrides.interval = start.interval;
        overrides.alert_cooldown = start.alert_cooldown;
        overrides.on_alert = start.on_alert.clone();
        overrides.alertmanager = start.alertmanager.clone();
        overrides.listen = start.listen.clone();
        overrides.listen_public = start.listen_public;
    }
    let mut settings = Settings::resolve(file, &overrides)?;
    settings.config_path = global
        .config
        .clone()
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    Ok(settings)
}

/// clap value parser for paths that are stored (monitor paths): they must be UTF-8, since they
/// are kept as JSON text. Anything else is a usage error (exit 2) that names the argument.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Utf8Path;

impl clap::builder::TypedValueParser for Utf8Path {
    type Value = PathBuf;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<PathBuf, clap::Error> {
        match value.to_str() {
            Some(text) => Ok(PathBuf::from(text)),
            None => {
                let name = arg.map_or_else(|| "a path".to_string(), |a| a.to_string());
                let message = format!(
                    "{name}: {} is not valid UTF-8 (monitor paths are stored as text)\n",
                    std::path::Path::new(value).display()
                );
                Err(clap::Error::raw(clap::error::ErrorKind::InvalidUtf8, message).with_cmd(cmd))
            }
        }
    }
}

/// Turns a user-given path into an absolute one: the daemon does not share our working directory.
pub fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(&path)?)
}

/// Whether the database file exists; an error only when that cannot be told (e.g. a directory
/// on the way that this user may not search).
pub(crate) fn database_exists(settings: &Settings) -> anyhow::Result<bool> {
    settings
        .db_path
        .try_exists()
        .with_context(|| format!("cannot look for database {}", settings.db_path.display()))
}

/// The error of a read command that has neither a database nor a daemon to answer it: most
/// likely a mistyped `--db-path`, which must not read as "nothing wrong, nothing monitored".
pub(crate) fn missing_database(settings: &Settings) -> anyhow::Error {
    anyhow::anyhow!(
        "no database at {} and no daemon answers on {}: check --db-path (and --socket); \
         `start` creates the database",
        settings.db_path.display(),
        settings.socket_path.display()
    )
}

/// For a read command answering from the database because no daemon answers: refuses a
/// database that does not exist (see [`missing_database`]) or is not SQLite.
pub(crate) fn require_database(settings: &Settings) -> anyhow::Result<()> {
    if !database_exists(settings)? {
        return Err(missing_database(settings));
    }
    crate::store::check_is_database(&settings.db_path)
}
