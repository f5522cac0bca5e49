//! `db prune|vacuum|backup|check`: upkeep that works while the daemon runs. Writing tasks go
//! through the daemon's writer when it runs (so they never fight it for the lock); reading
//! tasks use their own read-only connection either way.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::{Args, Subcommand};

use super::GlobalArgs;
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::Request;
use crate::daemon::lock::InstanceLock;
use crate::store::maintenance::{self, MaintenanceOutcome, MaintenanceTask};
use crate::store::{self};

/// How long the CLI waits for the daemon to finish a prune or vacuum.
const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// `db` options.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// `prune`, `vacuum`, `backup` or `check`.
    #[command(subcommand)]
    pub command: DbCommand,
}

/// Database upkeep.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Delete metric rows and resolved alerts past their retention now
    Prune,
    /// Rebuild the database file to give free space back to the filesystem
    Vacuum,
    /// Copy the database to FILE with SQLite's online backup API (safe while the daemon runs)
    Backup {
        /// Where to write the copy; it must not exist
        file: PathBuf,
    },
    /// Run SQLite's integrity_check; exits 1 when the database is damaged
    Check,
}

/// Runs `db`.
pub fn run(args: &DbArgs, global: &GlobalArgs, settings: &Settings) -> anyhow::Result<()> {
    match &args.command {
        DbCommand::Prune => {
            let request = Request::Prune {
                retention_days: global.retention_days,
            };
            let now = Utc::now();
            let task = MaintenanceTask::Prune {
                metrics_before: maintenance::cutoff(now, settings.metric_retention),
                alerts_before: maintenance::cutoff(now, settings.alert_retention),
            };
            report(writing_task(settings, &request, task)?);
        }
        DbCommand::Vacuum => report(writing_task(
            settings,
            &Request::Vacuum {},
            MaintenanceTask::Vacuum,
        )?),
        DbCommand::Backup { file } => {
            existing_database(settings)?;
            let report = maintenance::backup(&settings.db_path, file)?;
            println!(
                "backed up {} to {}: {} bytes, {} metric rows, {} alerts (integrity ok)",
                settings.db_path.display(),
                report.path,
                report.bytes,
                report.metric_rows,
                report.alert_rows
            );
        }
        DbCommand::Check => {
            existing_database(settings)?;
            let conn =
                store::open_read_only(&settings.db_path)?.context("the database disappeared")?;
            let problems = maintenance::integrity_problems(&conn)
                .with_context(|| format!("cannot check {}", settings.db_path.display()))?;
            if problems.is_empty() {
                println!("{}: integrity ok", settings.db_path.display());
            } else {
                for p in &problems {
                    println!("{p}");
                }
                bail!(
                    "{} is damaged ({} problems); `db backup` may still save what is readable",
                    settings.db_path.display(),
                    problems.len()
                );
            }
        }
    }
    Ok(())
}

/// Refuses a missing or foreign file before SQLite touches it.
fn existing_database(settings: &Settings) -> anyhow::Result<()> {
    if !settings.db_path.exists() {
        bail!("no database at {}", settings.db_path.display());
    }
    store::check_is_database(&settings.db_path)
}

/// Through the daemon's writer when one runs, else directly under the daemon lock.
fn writing_task(
    settings: &Settings,
    request: &Request,
    task: MaintenanceTask,
) -> anyhow::Result<MaintenanceOutcome> {
    match client::request_with_timeout(&settings.socket_path, request, TASK_TIMEOUT) {
        Ok(data) => Ok(serde_json::from_value(data)?),
        Err(ClientError::NoDaemon(_)) => {
            existing_database(settings)?;
            let _lock = InstanceLock::acquire(&settings.db_path)
                .context("the daemon holds the database but its socket does not answer")?;
            let mut conn = store::open_for_writing(&settings.db_path)?;
            Ok(maintenance::run(&mut conn, task)?)
        }
        Err(e) => Err(e.into()),
    }
}

fn report(outcome: MaintenanceOutcome) {
    match outcome {
        MaintenanceOutcome::Prune { rows_deleted } => {
            println!("pruned {rows_deleted} rows past their retention")
        }
        MaintenanceOutcome::Vacuum {
            bytes_before,
            bytes_after,
        } => println!("vacuumed: {bytes_before} -> {bytes_after} bytes"),
    }
}
