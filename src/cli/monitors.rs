//! `add` and `remove`: through the daemon when it runs, straight to the database otherwise.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{absolute, parse_id, parse_kind};
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::Request;
use crate::daemon::lock::InstanceLock;
use crate::model::{AddOutcome, AgentOptions, MonitorKind, MonitorSpec, WorkspaceOptions};
use crate::store::write::{WriteOp, apply};
use crate::store::{self, query};

/// `add` options.
#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(subcommand)]
    pub target: AddTarget,
}

/// What to add.
#[derive(Debug, Subcommand)]
pub enum AddTarget {
    /// Watch an agent: its process tree (with --pid) and its workspace
    Agent {
        /// Agent id: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_id)]
        id: String,
        /// The agent's root process; without it the agent counts as alive while its workspace exists
        #[arg(long)]
        pid: Option<u32>,
        /// The agent's workspace [default: agent_workspace from the config, /tmp/agent_<ID>]
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
    },
    /// Watch a workspace directory
    Workspace {
        /// Workspace id: 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit
        #[arg(value_parser = parse_id)]
        id: String,
        /// The directory [default: workspace_path from the config, /tmp/agent-workspaces/<ID>]
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
    },
}

/// `remove` options.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// agent or workspace
    #[arg(value_parser = parse_kind)]
    pub kind: MonitorKind,
    /// Its id
    #[arg(value_parser = parse_id)]
    pub id: String,
}

impl AddTarget {
    fn spec(&self) -> anyhow::Result<MonitorSpec> {
        Ok(match self {
            AddTarget::Agent { id, pid, workspace } => MonitorSpec::Agent {
                id: id.clone(),
                options: AgentOptions {
                    pid: *pid,
                    workspace: workspace.clone().map(absolute).transpose()?,
                },
            },
            AddTarget::Workspace { id, path } => MonitorSpec::Workspace {
                id: id.clone(),
                options: WorkspaceOptions {
                    path: path.clone().map(absolute).transpose()?,
                },
            },
        })
    }
}

/// Writes to the database directly, holding the daemon lock so no daemon starts meanwhile.
fn offline_write(settings: &Settings, ops: &[WriteOp]) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(&settings.db_path)
        .context("the daemon holds the database but its socket does not answer")?;
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

/// Runs `remove`.
pub fn remove(args: &RemoveArgs, settings: &Settings) -> anyhow::Result<()> {
    let label = format!("{} {}", args.kind, args.id);
    let request = Request::Remove {
        kind: args.kind,
        id: args.id.clone(),
    };
    match client::request(&settings.socket_path, &request) {
        Ok(_) => println!("removed {label}"),
        Err(ClientError::NoDaemon(_)) => {
            let known = match store::open_read_only(&settings.db_path)? {
                Some(conn) => query::load_monitors(&conn)?
                    .iter()
                    .any(|m| m.kind() == args.kind && m.id() == args.id),
                None => false,
            };
            if !known {
                bail!("{label} is not monitored");
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
