//! `status` and `list`: from the running daemon, or from the database when none runs.

use chrono::Utc;
use clap::Args;

use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::{MonitorInfo, Request, monitor_infos};
use crate::store::{self, query};
use crate::summary::{self, Summary};

/// `status` options.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the summary as JSON (a superset of the original daemon's summary)
    #[arg(long)]
    pub json: bool,
}

/// `list` options.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the monitors as a JSON array
    #[arg(long)]
    pub json: bool,
}

/// The summary from the daemon, or from the database when no daemon answers; with neither
/// (a mistyped `--db-path`) an error, not an empty "unknown" summary.
pub(crate) fn fetch_summary(settings: &Settings) -> anyhow::Result<Summary> {
    match client::request(&settings.socket_path, &Request::Status {}) {
        Ok(data) => Ok(serde_json::from_value(data)?),
        Err(ClientError::NoDaemon(_)) => {
            super::require_database(settings)?;
            summary::offline(settings, Utc::now())
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `status`.
pub fn status(args: &StatusArgs, settings: &Settings) -> anyhow::Result<()> {
    let summary = fetch_summary(settings)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary::render(&summary));
    }
    Ok(())
}

/// Runs `list`.
pub fn list(args: &ListArgs, settings: &Settings) -> anyhow::Result<()> {
    let infos: Vec<MonitorInfo> = match client::request(&settings.socket_path, &Request::List {}) {
        Ok(data) => serde_json::from_value(data)?,
        Err(ClientError::NoDaemon(_)) => {
            super::require_database(settings)?;
            let monitors = match store::open_read_only(&settings.db_path)? {
                Some(conn) => query::load_monitors(&conn)?,
                None => Vec::new(),
            };
            monitor_infos(&monitors, settings, &[])
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(());
    }
    if infos.is_empty() {
        println!("nothing monitored yet: try `health-monitor add workspace ID --path DIR`");
        return Ok(());
    }
    let id_width = infos.iter().map(|i| i.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<9}  {:<id_width$}  {:>7}  {:<10}  PATH",
        "KIND", "ID", "PID", "STATE"
    );
    for i in &infos {
        let pid = i.pid.map_or("-".to_string(), |p| p.to_string());
        let state = i
            .state
            .map_or("stopped".to_string(), |s| format!("{s:?}").to_lowercase());
        let default = if i.default_path { " (default)" } else { "" };
        println!(
            "{:<9}  {:<id_width$}  {pid:>7}  {state:<10}  {}{default}",
            i.kind.as_str(),
            i.id,
            i.path.display()
        );
    }
    Ok(())
}
