//! `gastown status`: one table of the town's agents and their health.

use std::fmt::Write as _;

use anyhow::bail;
use chrono::Utc;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::status::fetch_summary;
use crate::alerts::belongs_to;
use crate::collect::agent::read_heartbeat;
use crate::config::Settings;
use crate::gastown::layout::{Role, Town, TownAgent};
use crate::gastown::lifecycle::TOWN_RESOURCE;
use crate::model::{HealthStatus, ResourceType};
use crate::summary::{AlertView, Summary};

/// `gastown` commands.
#[derive(Debug, Args)]
pub struct GastownArgs {
    #[command(subcommand)]
    pub command: GastownCommand,
}

/// What to ask about the town.
#[derive(Debug, Subcommand)]
pub enum GastownCommand {
    /// The town's agents: alive, memory, heartbeat, worktree and active alerts
    Status {
        /// Print a JSON array, one object per agent
        #[arg(long)]
        json: bool,
    },
}

/// One agent's row.
#[derive(Debug, Serialize)]
pub struct AgentRow {
    pub session: String,
    pub rig: String,
    pub role: Role,
    /// `None` while nothing was measured yet.
    pub alive: Option<bool>,
    pub processes: Option<f64>,
    pub memory_mb: Option<f64>,
    pub heartbeat_age_seconds: Option<f64>,
    pub heartbeat_state: Option<String>,
    pub worktree: String,
    pub worktree_exists: bool,
    pub worktree_size_mb: Option<f64>,
    pub status: HealthStatus,
    pub active_alerts: Vec<AlertView>,
}

fn metric(summary: &Summary, rtype: ResourceType, id: &str, name: &str) -> Option<f64> {
    summary
        .resources
        .iter()
        .find(|r| r.resource_type == rtype && r.resource_id == id)?
        .metrics
        .iter()
        .find(|m| m.metric_name == name)
        .map(|m| m.value)
}

/// Builds the rows from the layout and a status document.
pub fn rows(town: &Town, agents: &[TownAgent], summary: &Summary) -> Vec<AgentRow> {
    let now = Utc::now();
    agents
        .iter()
        .map(|a| {
            let s = a.session.as_str();
            let alerts: Vec<AlertView> = summary
                .active_alerts
                .iter()
                .filter(|al| {
                    belongs_to(al.resource_type, &al.resource_id, ResourceType::Agent, s)
                        || belongs_to(
                            al.resource_type,
                            &al.resource_id,
                            ResourceType::Workspace,
                            s,
                        )
                })
                .cloned()
                .collect();
            let worst = summary
                .resources
                .iter()
                .filter(|r| {
                    r.resource_id == s
                        && matches!(
                            r.resource_type,
                            ResourceType::Agent | ResourceType::Workspace
                        )
                })
                .map(|r| r.status)
                .max()
                .unwrap_or(HealthStatus::Unknown);
            let heartbeat = read_heartbeat(&town.heartbeat_file(s), now).ok();
            AgentRow {
                session: a.session.clone(),
                rig: a.rig.clone(),
                role: a.role,
                alive: metric(summary, ResourceType::Agent, s, "agent_active").map(|v| v >= 0.5),
                processes: metric(summary, ResourceType::Agent, s, "agent_process_count"),
                memory_mb: metric(summary, ResourceType::Agent, s, "agent_memory_mb"),
                heartbeat_age_seconds: metric(
                    summary,
                    ResourceType::Agent,
                    s,
                    "heartbeat_age_seconds",
                ),
                heartbeat_state: heartbeat.and_then(|h| h.state),
                worktree: a.worktree.display().to_string(),
                worktree_exists: a.worktree.is_dir(),
                worktree_size_mb: metric(summary, ResourceType::Workspace, s, "workspace_size_mb"),
                status: worst,
                active_alerts: alerts,
            }
        })
        .collect()
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{}{unit}", crate::alerts::format_number(v)))
        .unwrap_or_else(|| "-".into())
}

/// Renders the rows for people, with the town-wide alerts below.
pub fn render(rows: &[AgentRow], town_alerts: &[AlertView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<7} {:<10} {:<5} {:>5} {:>10} {:>13} {:>10}  {:<6}  WORKTREE",
        "SESSION", "ROLE", "STATUS", "ALIVE", "PROCS", "MEMORY", "HEARTBEAT", "SIZE", "ALERTS"
    );
    for r in rows {
        let alive = match r.alive {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let heartbeat = match (&r.heartbeat_age_seconds, &r.heartbeat_state) {
            (Some(age), Some(state)) => format!("{}s {state}", age.round()),
            (Some(age), None) => format!("{}s", age.round()),
            (None, _) => "-".into(),
        };
        let worktree = if r.worktree_exists {
            r.worktree.clone()
        } else {
            format!("{} (missing)", r.worktree)
        };
        let role = match r.role {
            Role::Polecat => "polecat",
            Role::Crew => "crew",
        };
        let _ = writeln!(
            out,
            "{:<22} {:<7} {:<10} {:<5} {:>5} {:>10} {:>13} {:>10}  {:<6}  {}",
            r.session,
            role,
            r.status.as_str(),
            alive,
            opt(r.processes, ""),
            opt(r.memory_mb, " MB"),
            heartbeat,
            opt(r.worktree_size_mb, " MB"),
            r.active_alerts.len(),
            worktree
        );
        for a in &r.active_alerts {
            let _ = writeln!(out, "    {:<9} {}", a.severity.as_str(), a.message);
        }
    }
    if rows.is_empty() {
        out.push_str("(no polecats or crew in this town)\n");
    }
    for a in town_alerts {
        let _ = writeln!(out, "\nTOWN {:<9} {}", a.severity.as_str(), a.message);
    }
    out
}

/// Runs `gastown`.
pub fn run(args: &GastownArgs, settings: &Settings) -> anyhow::Result<()> {
    match &args.command {
        GastownCommand::Status { json } => {
            let summary = fetch_summary(settings)?;
            // The town named here, else the one the running daemon follows.
            let root = match (&settings.gastown, &summary.gastown_root) {
                (Some(t), _) => t.root.clone(),
                (None, Some(root)) => root.into(),
                (None, None) => bail!(
                    "no town to show: pass --gastown TOWN_ROOT, set [gastown] root in the config, \
                     or start the daemon with one"
                ),
            };
            let town = Town::new(&root);
            let agents = town.agents()?;
            let rows = rows(&town, &agents, &summary);
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let town_alerts: Vec<AlertView> = summary
                    .active_alerts
                    .iter()
                    .filter(|a| {
                        a.resource_type == ResourceType::Agent && a.resource_id == TOWN_RESOURCE
                    })
                    .cloned()
                    .collect();
                print!("{}", render(&rows, &town_alerts));
            }
        }
    }
    Ok(())
}
