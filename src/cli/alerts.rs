//! `alerts`, `ack` and `silence`: alerts from the database; acknowledgements and silences through
//! the daemon when it runs, straight to the database otherwise.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::monitors::{UsageError, offline_write};
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::{Request, validate_resource_id, validate_silence};
use crate::model::{HealthAlert, ResourceType, Silence, format_timestamp};
use crate::store::write::WriteOp;
use crate::store::{self, query};
use crate::summary::Summary;

/// Most alerts `alerts --all` lists.
const LIST_LIMIT: usize = 1000;

/// `alerts` options.
#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Include resolved alerts (newest first, up to 1000)
    #[arg(long)]
    pub all: bool,
    /// Print a JSON array of alert objects, each with its `id`
    #[arg(long)]
    pub json: bool,
}

/// `ack` options.
#[derive(Debug, Args)]
pub struct AckArgs {
    /// The alert's id, as `alerts` shows it
    pub alert_id: i64,
}

/// `silence` commands.
#[derive(Debug, Args)]
pub struct SilenceArgs {
    /// `add`, `list` or `remove`.
    #[command(subcommand)]
    pub command: SilenceCommand,
}

/// What to do with silences.
#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Stop sending a resource's alerts for a while (they are still recorded)
    Add {
        /// TYPE:ID, e.g. agent:a1, workspace:w1, filesystem:/home
        #[arg(long, value_name = "TYPE:ID", value_parser = parse_resource)]
        resource: (ResourceType, String),
        /// Only this metric's alerts [default: every alert of the resource]
        #[arg(long, value_name = "METRIC")]
        metric: Option<String>,
        /// How long, e.g. 30m, 2h, 1d
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
        duration: Duration,
        /// Why, for whoever reads `silence list`
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Show the silences in force
    List {
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// End a resource's silences
    Remove {
        /// TYPE:ID
        #[arg(long, value_name = "TYPE:ID", value_parser = parse_resource)]
        resource: (ResourceType, String),
        /// Only the silence on this metric [default: all of the resource's]
        #[arg(long, value_name = "METRIC")]
        metric: Option<String>,
    },
}

/// clap value parser for `TYPE:ID`.
pub(crate) fn parse_resource(s: &str) -> Result<(ResourceType, String), String> {
    let (kind, id) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not TYPE:ID (e.g. agent:a1)"))?;
    let kind: ResourceType = kind.parse()?;
    validate_resource_id(kind, id)?;
    Ok((kind, id.to_string()))
}

/// clap value parser for durations such as `90s`, `30m`, `2h`, `1d` or `1h30m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30m, 2h or 1d: {e}"))?;
    if d.is_zero() || d > Duration::from_secs(366 * 86_400) {
        return Err(format!(
            "{s:?}: a duration must be more than 0 and at most a year"
        ));
    }
    Ok(d)
}

/// The name recorded with an acknowledgement: the user running the command.
fn operator() -> String {
    let uid = nix::unistd::getuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => user.name,
        _ => format!("uid {uid}"),
    }
}

/// Reads alerts (and silences, to mark the silenced ones) straight from the database. With no
/// database there, the active alerts of a daemon answering on the socket; with neither (a
/// mistyped `--db-path`), an error rather than "no alerts".
fn read_alerts(settings: &Settings, all: bool) -> anyhow::Result<(Vec<HealthAlert>, Vec<Silence>)> {
    if !super::database_exists(settings)? {
        return daemon_alerts(settings, all);
    }
    store::check_is_database(&settings.db_path)?;
    match store::open_read_only(&settings.db_path)? {
        Some(conn) => Ok((
            query::alerts(&conn, all, LIST_LIMIT)?,
            query::active_silences(&conn, Utc::now())?,
        )),
        None => Err(super::missing_database(settings)),
    }
}

/// The active alerts a daemon answering on the socket holds, when the database named is not
/// there (another `--db-path` than the daemon's, or a file deleted under it). It says so on
/// stderr: resolved alerts and acknowledgements are only in a database.
fn daemon_alerts(
    settings: &Settings,
    all: bool,
) -> anyhow::Result<(Vec<HealthAlert>, Vec<Silence>)> {
    let summary: Summary = match client::request(&settings.socket_path, &Request::Status {}) {
        Ok(data) => serde_json::from_value(data)?,
        Err(ClientError::NoDaemon(_)) => return Err(super::missing_database(settings)),
        Err(e) => return Err(e.into()),
    };
    let pid = summary
        .pid
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    eprintln!(
        "warning: no database at {}; showing the active alerts of the daemon{pid} on {} \
         (its database: {}){}",
        settings.db_path.display(),
        settings.socket_path.display(),
        summary.db_path,
        if all {
            "; resolved alerts are only in a database"
        } else {
            ""
        }
    );
    let silences = client::request(&settings.socket_path, &Request::SilenceList {})
        .ok()
        .and_then(|data| serde_json::from_value(data).ok())
        .unwrap_or_default();
    let now = Utc::now();
    let mut alerts: Vec<HealthAlert> = summary
        .active_alerts
        .into_iter()
        .map(|a| {
            let timestamp = DateTime::parse_from_rfc3339(&a.timestamp)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or(now);
            HealthAlert {
                id: a.id,
                resource_type: a.resource_type,
                resource_id: a.resource_id,
                alert_type: a.alert_type,
                severity: a.severity,
                message: a.message,
                timestamp,
                metadata: serde_json::Value::Null,
                resolved: false,
                resolved_at: None,
                last_notified_at: timestamp,
                acknowledged_at: None,
            }
        })
        .collect();
    alerts.sort_by_key(|a| std::cmp::Reverse(a.timestamp));
    Ok((alerts, silences))
}

/// One alert's state for people: active, acknowledged, silenced or resolved.
fn alert_state(a: &HealthAlert, silences: &[Silence], now: DateTime<Utc>) -> &'static str {
    if a.resolved {
        "resolved"
    } else if silences.iter().any(|s| s.covers(a, now)) {
        "silenced"
    } else if a.acknowledged_at.is_some() {
        "acked"
    } else {
        "active"
    }
}

/// Renders alerts as a table, newest first.
pub(crate) fn render_alerts(
    alerts: &[HealthAlert],
    silences: &[Silence],
    now: DateTime<Utc>,
) -> String {
    if alerts.is_empty() {
        return "no alerts\n".to_string();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<9}  {:<9}  {:<19}  MESSAGE",
        "ID", "SEVERITY", "STATE", "SINCE (UTC)"
    );
    for a in alerts {
        let since = a.timestamp.format("%Y-%m-%d %H:%M:%S").to_string();
        let _ = writeln!(
            out,
            "{:>6}  {:<9}  {:<9}  {:<19}  {}",
            a.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            a.severity.as_str(),
            alert_state(a, silences, now),
            since,
            a.message
        );
    }
    out
}

/// Runs `alerts`.
pub fn alerts(args: &AlertsArgs, settings: &Settings) -> anyhow::Result<()> {
    let (alerts, silences) = read_alerts(settings, args.all)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&alerts)?);
    } else {
        print!("{}", render_alerts(&alerts, &silences, Utc::now()));
    }
    Ok(())
}

/// Runs `ack`.
pub fn ack(args: &AckArgs, settings: &Settings) -> anyhow::Result<()> {
    let by = operator();
    let request = Request::Ack {
        id: args.alert_id,
        by: Some(by.clone()),
    };
    match client::request(&settings.socket_path, &request) {
        Ok(_) => {}
        Err(ClientError::NoDaemon(_)) => {
            super::require_database(settings)?;
            let alert = match store::open_read_only(&settings.db_path)? {
                Some(conn) => query::alert_by_id(&conn, args.alert_id)?,
                None => None,
            };
            match alert {
                None => bail!("no alert has id {}", args.alert_id),
                Some(a) if a.resolved => bail!("alert {} is already resolved", args.alert_id),
                Some(_) => {}
            }
            offline_write(
                settings,
                &[WriteOp::AlertAcknowledged {
                    id: args.alert_id,
                    key: None,
                    at: Utc::now(),
                    by: by.clone(),
                }],
            )?;
        }
        Err(e) => return Err(e.into()),
    }
    println!(
        "acknowledged alert {} as {by}: no more reminders unless it escalates",
        args.alert_id
    );
    Ok(())
}

/// Runs `silence`.
pub fn silence(args: &SilenceArgs, settings: &Settings) -> anyhow::Result<()> {
    match &args.command {
        SilenceCommand::Add {
            resource,
            metric,
            duration,
            comment,
        } => {
            let now = Utc::now();
            let silence = Silence {
                resource_type: resource.0,
                resource_id: resource.1.clone(),
                metric: metric.clone(),
                created_at: now,
                expires_at: now + chrono::Duration::from_std(*duration)?,
                comment: comment.clone(),
            };
            validate_silence(&silence).map_err(UsageError)?;
            let request = Request::SilenceAdd {
                silence: silence.clone(),
            };
            send_or_write(
                settings,
                &request,
                &[WriteOp::SilenceSaved(silence.clone())],
            )?;
            println!(
                "silenced {}:{}{} until {}",
                silence.resource_type,
                silence.resource_id,
                metric.as_ref().map(|m| format!(" {m}")).unwrap_or_default(),
                format_timestamp(silence.expires_at)
            );
        }
        SilenceCommand::List { json } => {
            let silences: Vec<Silence> =
                match client::request(&settings.socket_path, &Request::SilenceList {}) {
                    Ok(data) => serde_json::from_value(data)?,
                    Err(ClientError::NoDaemon(_)) => {
                        super::require_database(settings)?;
                        read_alerts(settings, false)?.1
                    }
                    Err(e) => return Err(e.into()),
                };
            if *json {
                println!("{}", serde_json::to_string_pretty(&silences)?);
            } else {
                print!("{}", render_silences(&silences));
            }
        }
        SilenceCommand::Remove { resource, metric } => {
            let request = Request::SilenceRemove {
                resource_type: resource.0,
                resource_id: resource.1.clone(),
                metric: metric.clone(),
            };
            let op = WriteOp::SilencesRemoved {
                resource_type: resource.0,
                resource_id: resource.1.clone(),
                metric: metric.clone(),
            };
            send_or_write(settings, &request, &[op])?;
            println!("removed the silences of {}:{}", resource.0, resource.1);
        }
    }
    Ok(())
}

/// Sends a request to the daemon, or applies `ops` to the database when none runs.
fn send_or_write(settings: &Settings, request: &Request, ops: &[WriteOp]) -> anyhow::Result<()> {
    match client::request(&settings.socket_path, request) {
        Ok(_) => Ok(()),
        Err(ClientError::NoDaemon(_)) => {
            offline_write(settings, ops).context("cannot save the silence")
        }
        Err(e) => Err(e.into()),
    }
}

/// Renders silences as a table.
pub(crate) fn render_silences(silences: &[Silence]) -> String {
    if silences.is_empty() {
        return "no silences\n".to_string();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40}  {:<24}  {:<20}  COMMENT",
        "RESOURCE", "METRIC", "UNTIL"
    );
    for s in silences {
        let _ = writeln!(
            out,
            "{:<40}  {:<24}  {:<20}  {}",
            format!("{}:{}", s.resource_type, s.resource_id),
            s.metric.as_deref().unwrap_or("(all)"),
            s.expires_at.format("%Y-%m-%d %H:%M:%S"),
            s.comment.as_deref().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_durations_parse_or_say_why() {
        assert_eq!(
            parse_resource("agent:a1").unwrap(),
            (ResourceType::Agent, "a1".to_string())
        );
        assert_eq!(
            parse_resource("database:w1/.beads/beads.db").unwrap().1,
            "w1/.beads/beads.db"
        );
        assert!(parse_resource("agent:../x").is_err());
        assert!(parse_resource("a1").unwrap_err().contains("TYPE:ID"));
        assert!(parse_resource("robot:a1").is_err());
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
