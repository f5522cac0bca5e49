//! `gastown status`: one table of the town's agents and their health.

use std::fmt::Write as _;

use anyhow::bail;
use chrono::Utc;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::status::fetch_summary;
use crate::catalog;
use crate::collect::agent::read_heartbeat;
use crate::config::Settings;
use crate::gastown::layout::{Role, Town, TownAgent};
use crate::gastown::lifecycle::{SESSION_DEATH, TOWN_RESOURCE};
use crate::model::{HealthStatus, ResourceType, belongs_to};
use crate::summary::{AlertView, Summary};

/// `gastown` commands.
#[derive(Debug, Args)]
pub struct GastownArgs {
    /// `status`, the only one so far.
    #[command(subcommand)]
    pub command: GastownCommand,
}

/// What to ask about the town.
#[derive(Debug, Subcommand)]
pub enum GastownCommand {
    /// The town's sessions (polecats, crew, witnesses, refineries, mayor, deacon, boot, dogs):
    /// role, state, memory, heartbeat, worktree, alerts and open escalations; then the town's
    /// daemon and its orphaned agent processes
    Status {
        /// Print a JSON array, one object per agent
        #[arg(long)]
        json: bool,
    },
}

/// What a town session is doing, as far as its measurements tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Alive; its heartbeat says working (or it has none).
    Working,
    /// Alive; its heartbeat says idle or exiting (after `gt done`).
    Idle,
    /// Alive; its fresh heartbeat says stuck.
    Stuck,
    /// Alive, says working, but its heartbeat has not moved and its tree is idle.
    Stalled,
    /// Watched with its process gone, or Gas Town reported it crashed.
    Dead,
    /// Not watched: no session runs (it ended, or never started while we looked).
    Retired,
}

impl SessionState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Working => "working",
            SessionState::Idle => "idle",
            SessionState::Stuck => "stuck",
            SessionState::Stalled => "stalled",
            SessionState::Dead => "dead",
            SessionState::Retired => "retired",
        }
    }
}

/// One agent's row.
#[derive(Debug, Serialize)]
pub struct AgentRow {
    /// The tmux session, which is also the agent's monitor id.
    pub session: String,
    /// The rig it belongs to, or `town` for the town-level agents.
    pub rig: String,
    /// Polecat, crew, witness, refinery, mayor, deacon...
    pub role: Role,
    /// What it is doing, from its latest values and its heartbeat.
    pub state: SessionState,
    /// `None` while nothing was measured yet.
    pub alive: Option<bool>,
    /// Processes in its tree (`agent_process_count`); `None` while not measured.
    pub processes: Option<f64>,
    /// Memory of its tree in MB (`agent_memory_mb`); `None` while not measured.
    pub memory_mb: Option<f64>,
    /// Seconds since its last heartbeat; `None` while not measured.
    pub heartbeat_age_seconds: Option<f64>,
    /// The heartbeat file's `state` (`working`, `idle`...); `None` when unreadable or absent.
    pub heartbeat_state: Option<String>,
    /// Where it works: its worktree, clone or directory.
    pub worktree: String,
    /// True when the worktree directory exists now.
    pub worktree_exists: bool,
    /// Apparent size of the worktree in MB; `None` while not measured.
    pub worktree_size_mb: Option<f64>,
    /// The worst status of its agent and workspace resources (unknown when neither is known).
    pub status: HealthStatus,
    /// The Gas Town escalations health-monitor opened for this session's alerts and has not
    /// closed yet.
    pub escalations: Vec<String>,
    /// Active alerts on its agent or its workspace.
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

/// The state a session's latest values and heartbeat give it.
pub(crate) fn session_state(
    alive: Option<bool>,
    crashed: bool,
    stalled: Option<f64>,
    stuck: Option<f64>,
    heartbeat_state: Option<&str>,
) -> SessionState {
    match alive {
        None if crashed => SessionState::Dead,
        None => SessionState::Retired,
        Some(false) => SessionState::Dead,
        Some(true) if stalled.is_some_and(|v| v >= 0.5) => SessionState::Stalled,
        Some(true) if stuck.is_some_and(|v| v >= 0.5) => SessionState::Stuck,
        Some(true) if matches!(heartbeat_state, Some("idle" | "exiting")) => SessionState::Idle,
        Some(true) => SessionState::Working,
    }
}

/// Builds the rows from the layout, a status document and the open escalations (alert id,
/// escalation id). Polecats and crew are always shown (their worktrees are there); the town's
/// machinery only while it is watched or alerting.
pub fn rows(
    town: &Town,
    agents: &[TownAgent],
    summary: &Summary,
    escalations: &[(i64, String)],
) -> Vec<AgentRow> {
    let now = Utc::now();
    agents
        .iter()
        .filter_map(|a| {
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
            let value = |name: &str| metric(summary, ResourceType::Agent, s, name);
            let alive = value(catalog::AGENT_ACTIVE).map(|v| v >= 0.5);
            if !a.role.has_worktree() && alive.is_none() && alerts.is_empty() {
                return None;
            }
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
            let heartbeat_file = match a.role {
                Role::Deacon => town.deacon_heartbeat_file(),
                _ => town.heartbeat_file(s),
            };
            let heartbeat = read_heartbeat(&heartbeat_file, now).ok();
            let heartbeat_state = heartbeat.and_then(|h| h.state);
            let crashed = alerts.iter().any(|al| al.alert_type == SESSION_DEATH);
            let state = session_state(
                alive,
                crashed,
                value(catalog::AGENT_STALLED),
                value(catalog::HEARTBEAT_STUCK),
                heartbeat_state.as_deref(),
            );
            let escalations = escalations
                .iter()
                .filter(|(alert, _)| alerts.iter().any(|al| al.id == Some(*alert)))
                .map(|(_, id)| id.clone())
                .collect();
            Some(AgentRow {
                session: a.session.clone(),
                rig: a.rig.clone(),
                role: a.role,
                state,
                alive,
                processes: value(catalog::AGENT_PROCESS_COUNT),
                memory_mb: value(catalog::AGENT_MEMORY_MB),
                heartbeat_age_seconds: value(catalog::HEARTBEAT_AGE_SECONDS),
                heartbeat_state,
                worktree: a.worktree.display().to_string(),
                worktree_exists: a.worktree.is_dir(),
                worktree_size_mb: metric(
                    summary,
                    ResourceType::Workspace,
                    s,
                    catalog::WORKSPACE_SIZE_MB,
                ),
                status: worst,
                escalations,
                active_alerts: alerts,
            })
        })
        .collect()
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{}{unit}", crate::alerts::format_number(v)))
        .unwrap_or_else(|| "-".into())
}

/// Renders the rows for people, with the town itself (its daemon, its orphans) and the
/// town-wide alerts below.
pub(crate) fn render(rows: &[AgentRow], summary: &Summary, town_alerts: &[AlertView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:<8} {:<8} {:<10} {:>5} {:>10} {:>13} {:>10}  {:<6}  WORKTREE",
        "SESSION", "ROLE", "STATE", "STATUS", "PROCS", "MEMORY", "HEARTBEAT", "SIZE", "ALERTS"
    );
    for r in rows {
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
        let _ = writeln!(
            out,
            "{:<22} {:<8} {:<8} {:<10} {:>5} {:>10} {:>13} {:>10}  {:<6}  {}",
            r.session,
            r.role.as_str(),
            r.state.as_str(),
            r.status.as_str(),
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
        if !r.escalations.is_empty() {
            let _ = writeln!(out, "    escalated: {}", r.escalations.join(", "));
        }
    }
    if rows.is_empty() {
        out.push_str("(no sessions or worktrees in this town)\n");
    }
    let town = |name: &str| metric(summary, ResourceType::Agent, TOWN_RESOURCE, name);
    let daemon = match town(catalog::TOWN_DAEMON_ALIVE) {
        Some(v) if v >= 0.5 => "running",
        Some(_) => "DEAD (its pid file names a process that is gone)",
        None => "not running (no daemon/daemon.pid)",
    };
    let _ = writeln!(out, "\ngas town daemon: {daemon}");
    if let Some(count) = town(catalog::TOWN_ORPHAN_COUNT) {
        let _ = writeln!(
            out,
            "orphaned agent processes: {} ({})",
            crate::alerts::format_number(count),
            opt(town(catalog::TOWN_ORPHAN_MEMORY_MB), " MB")
        );
    }
    for a in town_alerts {
        let _ = writeln!(out, "TOWN {:<9} {}", a.severity.as_str(), a.message);
    }
    out
}

/// The open escalations recorded in the database, as (alert id, escalation id).
fn open_escalations(settings: &Settings) -> Vec<(i64, String)> {
    let Ok(Some(conn)) = crate::store::open_read_only(&settings.db_path) else {
        return Vec::new();
    };
    crate::store::query::open_escalations(&conn)
        .map(|open| {
            open.into_iter()
                .map(|e| (e.alert_id, e.escalation_id))
                .collect()
        })
        .unwrap_or_default()
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
            let rows = rows(&town, &agents, &summary, &open_escalations(settings));
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
                print!("{}", render(&rows, &summary, &town_alerts));
            }
        }
    }
    Ok(())
}
