//! `add` and `remove`: through the daemon when it runs, straight to the database otherwise.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{Utf8Path, absolute, parse_id, parse_kind};
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::{Request, prepare_monitor};
use crate::daemon::lock::InstanceLock;
use crate::model::{
    AddOutcome, AgentOptions, CheckOptions, MonitorKind, MonitorSpec, WorkspaceOptions,
};
use crate::store::write::{WriteOp, apply};
use crate::store::{self, query};

/// `add` options.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// `agent` or `workspace`, with its options.
    #[command(subcommand)]
    pub target: AddTarget,
}

/// What to add.
#[derive(Debug, Subcommand)]
pub enum AddTarget {
    /// Watch an agent: its process tree, its heartbeat and its workspace
    Agent {
        /// Agent id: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_id)]
        id: String,
        /// The agent's root process. Without --pid, --pid-file, --match or --tmux-session the
        /// agent counts as alive while its workspace exists
        #[arg(long)]
        pid: Option<u32>,
        /// A file holding the root's pid, or `pid|starttime` as Gas Town writes it; re-read every cycle
        #[arg(long, value_name = "FILE", value_parser = Utf8Path)]
        pid_file: Option<PathBuf>,
        /// A regular expression matched against command lines; the oldest matching process is the root
        #[arg(long = "match", value_name = "REGEX")]
        pattern: Option<String>,
        /// A tmux session; the process in its first pane is the root (with --pid-file: the
        /// fallback while the pid file is missing)
        #[arg(long, value_name = "NAME")]
        tmux_session: Option<String>,
        /// The agent's workspace [default: agent_workspace from the config, /tmp/agent_<ID>]
        #[arg(long, value_name = "DIR", value_parser = Utf8Path)]
        workspace: Option<PathBuf>,
        /// A heartbeat file: JSON with `timestamp` and `state`, or any file whose mtime is the beat
        #[arg(long, value_name = "FILE", value_parser = Utf8Path)]
        heartbeat: Option<PathBuf>,
        /// The tmux server of --tmux-session (`tmux -L NAME`) [default: tmux's own]
        #[arg(long, value_name = "NAME", requires = "tmux_session")]
        tmux_socket: Option<String>,
        /// Report `agent_stalled` when the heartbeat says working but has not moved for this
        /// long and the tree used almost no CPU meanwhile (e.g. 15m)
        #[arg(long, value_name = "DURATION", value_parser = parse_stall_after, requires = "heartbeat")]
        stall_after: Option<u64>,
    },
    /// Watch a workspace directory and the SQLite databases in it
    Workspace {
        /// Workspace id: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_id)]
        id: String,
        /// The directory [default: workspace_path from the config, /tmp/agent-workspaces/<ID>]
        #[arg(long, value_name = "DIR", value_parser = Utf8Path)]
        path: Option<PathBuf>,
        /// A SQLite file to check, relative to the workspace (repeatable); *.db, *.sqlite and
        /// *.sqlite3 at the top level and in .beads/ are found without it
        #[arg(long = "db", value_name = "FILE", value_parser = Utf8Path)]
        dbs: Vec<PathBuf>,
    },
    /// Run a Nagios-compatible plugin on a schedule: its exit code is `check_status`, its
    /// perfdata metrics with the plugin's thresholds
    #[command(
        after_help = "Example:\n  health-monitor add check api-up --resource agent:a1 --command \
                      /usr/lib/nagios/plugins/check_tcp -H 127.0.0.1 -p 8080\n\n\
                      --command takes every argument after it, so give it last."
    )]
    Check {
        /// Check name: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_id)]
        name: String,
        /// Where its results go, TYPE:ID (e.g. agent:a1) [default: check:<NAME>]
        #[arg(long, value_name = "TYPE:ID")]
        resource: Option<String>,
        /// Seconds between runs [default: the daemon's interval]
        #[arg(long, value_name = "SECONDS")]
        interval: Option<u64>,
        /// Seconds a run may take before its process group is killed (UNKNOWN) [default: 10]
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// The plugin (absolute path) and its arguments, run without a shell; give it last
        #[arg(long, required = true, num_args = 1.., allow_hyphen_values = true, value_name = "PROGRAM ARGS")]
        command: Vec<String>,
    },
}

/// `remove` options.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// agent, workspace or check
    #[arg(value_parser = parse_kind)]
    pub kind: MonitorKind,
    /// Its id
    #[arg(value_parser = parse_id)]
    pub id: String,
}

impl AddTarget {
    fn spec(&self) -> anyhow::Result<MonitorSpec> {
        let abs = |p: &Option<PathBuf>| p.clone().map(absolute).transpose();
        let spec = match self {
            AddTarget::Agent {
                id,
                pid,
                pid_file,
                pattern,
                tmux_session,
                workspace,
                heartbeat,
                tmux_socket,
                stall_after,
            } => MonitorSpec::Agent {
                id: id.clone(),
                options: AgentOptions {
                    pid: *pid,
                    // Recorded by `prepare_monitor`, from the running process.
                    pid_start: None,
                    pid_file: abs(pid_file)?,
                    pattern: pattern.clone(),
                    tmux_session: tmux_session.clone(),
                    workspace: abs(workspace)?,
                    heartbeat: abs(heartbeat)?,
                    tmux_socket: tmux_socket.clone(),
                    stall_after: *stall_after,
                    role: None,
                    managed_by: None,
                },
            },
            AddTarget::Workspace { id, path, dbs } => MonitorSpec::Workspace {
                id: id.clone(),
                options: WorkspaceOptions {
                    path: abs(path)?,
                    dbs: dbs.clone(),
                    managed_by: None,
                },
            },
            AddTarget::Check {
                name,
                resource,
                interval,
                timeout,
                command,
            } => {
                // `--command` takes everything after it: say so when our own flags went in.
                let ours = [
                    "--resource",
                    "--interval",
                    "--timeout",
                    "--db-path",
                    "--socket",
                ];
                let swallowed: Vec<&str> = command[1..]
                    .iter()
                    .map(String::as_str)
                    .filter(|a| ours.contains(a))
                    .collect();
                if !swallowed.is_empty() {
                    eprintln!(
                        "note: {} went to the plugin as its arguments: --command takes every \
                         argument after it, so give health-monitor's own options before it",
                        swallowed.join(", ")
                    );
                }
                MonitorSpec::Check {
                    id: name.clone(),
                    options: CheckOptions {
                        command: command.clone(),
                        resource: resource.clone(),
                        interval: *interval,
                        timeout: *timeout,
                        managed_by: None,
                    },
                }
            }
        };
        // Same normalization and checks as the daemon's, before anything is sent or saved; the
        // pid's start time is recorded here, so an offline `add` saves it too.
        prepare_monitor(spec).map_err(|e| UsageError(e).into())
    }
}

/// A mistake in what the user asked for: exit code 2, like clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Writes to the database directly, holding the daemon lock so no daemon starts meanwhile.
pub(crate) fn offline_write(settings: &Settings, ops: &[WriteOp]) -> anyhow::Result<()> {
    store::check_writable(&settings.db_path)?;
    let _lock = InstanceLock::acquire(&settings.db_path)
        .context("the daemon holds the database but its socket does not answer")?;
    store::check_is_database(&settings.db_path)?;
    let mut conn = store::open_for_writing(&settings.db_path)?;
    apply(&mut conn, ops).context("cannot save the change")?;
    Ok(())
}

/// Runs `add`.
pub fn add(args: &AddArgs, settings: &Settings) -> anyhow::Result<()> {
    let spec = args.target.spec()?;
    let label = format!("{} {}", spec.kind(), spec.id());
    let request = Request::Add {
        monitor: spec.clone(),
    };
    match client::request(&settings.socket_path, &request) {
        Ok(data) => {
            let outcome: AddOutcome = serde_json::from_value(data)?;
            match outcome {
                AddOutcome::Added => println!("added {label}"),
                AddOutcome::Updated => println!("updated {label}"),
                AddOutcome::Unchanged => println!("{label} is already monitored"),
            }
        }
        Err(ClientError::NoDaemon(_)) => {
            refuse_offline_check(settings, &spec)?;
            offline_write(settings, &[WriteOp::MonitorSaved(spec)])?;
            println!(
                "added {label} to {} (no daemon running: watched from the next start)",
                settings.db_path.display()
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The config file's check of this kind and id, if any.
fn config_check<'a>(
    settings: &'a Settings,
    kind: MonitorKind,
    id: &str,
) -> Option<&'a MonitorSpec> {
    settings
        .checks
        .iter()
        .find(|c| c.kind() == kind && c.id() == id)
}

/// The refusal for a change to a check of the config file.
fn config_managed(spec: &MonitorSpec) -> String {
    format!(
        "check {} comes from the config file's [[check]]; change it there",
        spec.id()
    )
}

/// What the daemon would refuse, checked without it: a check of the config file, or one on
/// the resource of another check (stored or in the config).
fn refuse_offline_check(settings: &Settings, spec: &MonitorSpec) -> anyhow::Result<()> {
    if spec.kind() != MonitorKind::Check {
        return Ok(());
    }
    if let Some(config) = config_check(settings, spec.kind(), spec.id()) {
        return Err(UsageError(config_managed(config)).into());
    }
    let stored = match store::open_read_only(&settings.db_path) {
        Ok(Some(conn)) => query::load_monitors(&conn).unwrap_or_default(),
        _ => Vec::new(),
    };
    if let Some(other) =
        crate::model::conflicting_check(stored.iter().chain(&settings.checks), spec)
    {
        return Err(UsageError(crate::model::conflict_message(spec, other)).into());
    }
    Ok(())
}

/// Runs `remove`.
pub fn remove(args: &RemoveArgs, settings: &Settings) -> anyhow::Result<()> {
    let label = format!("{} {}", args.kind, args.id);
    let request = Request::Remove {
        kind: args.kind,
        id: args.id.clone(),
    };
    match client::request(&settings.socket_path, &request) {
        // A remove is idempotent: one repeated (after a timeout, say) finds nothing to do.
        Ok(reply) if reply.as_str() == Some("already removed") => {
            println!("{label} is not monitored (nothing to remove)")
        }
        Ok(_) => println!("removed {label}"),
        Err(ClientError::NoDaemon(_)) => {
            if let Some(spec) = config_check(settings, args.kind, &args.id) {
                return Err(UsageError(config_managed(spec)).into());
            }
            // A mistyped --db-path must not read as "nothing to do".
            super::require_database(settings)?;
            let known = match store::open_read_only(&settings.db_path)? {
                Some(conn) => query::load_monitors(&conn)?
                    .iter()
                    .any(|m| m.kind() == args.kind && m.id() == args.id),
                None => false,
            };
            if !known {
                println!("{label} is not monitored (nothing to remove)");
                return Ok(());
            }
            offline_write(
                settings,
                &[
                    WriteOp::MonitorDeleted(args.kind, args.id.clone()),
                    WriteOp::ResourceAlertsResolved(
                        args.kind.resource_type(),
                        args.id.clone(),
                        chrono::Utc::now(),
                    ),
                ],
            )?;
            println!("removed {label} from {}", settings.db_path.display());
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// clap value parser for `--stall-after`: a duration such as `15m`, in whole seconds.
fn parse_stall_after(s: &str) -> Result<u64, String> {
    super::alerts::parse_duration(s).map(|d| d.as_secs().max(1))
}
