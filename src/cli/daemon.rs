//! `start` and `stop`.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::parse_id;
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::Request;
use crate::model::MonitorSpec;
use crate::summary;

/// `start` options.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Agents to watch from now on, added to those already saved
    #[arg(long, num_args = 1.., value_name = "ID", value_parser = parse_id)]
    pub agents: Vec<String>,
    /// Workspaces to watch from now on, added to those already saved
    #[arg(long, num_args = 1.., value_name = "ID", value_parser = parse_id)]
    pub workspaces: Vec<String>,
    /// Seconds between collections [default: 30, or the config file's]
    #[arg(long, value_name = "S")]
    pub interval: Option<f64>,
    /// Seconds between two notices of the same ongoing alert [default: 300]
    #[arg(long, value_name = "S")]
    pub alert_cooldown: Option<f64>,
    /// Program run for each alert notice, with the notice as JSON on stdin (repeatable)
    #[arg(long, value_name = "PROGRAM")]
    pub on_alert: Vec<std::path::PathBuf>,
    /// Alertmanager base URL to send alerts to, e.g. http://127.0.0.1:9093 (repeatable)
    #[arg(long, value_name = "URL")]
    pub alertmanager: Vec<String>,
    /// Serve /metrics, /healthz and /api/v1 on this address, e.g. 127.0.0.1:9464
    #[arg(long, value_name = "ADDR", conflicts_with = "once")]
    pub listen: Option<String>,
    /// Allow --listen on an address other than loopback
    #[arg(long)]
    pub listen_public: bool,
    /// Run one cycle, write it, print the summary and exit
    #[arg(long)]
    pub once: bool,
    /// With --once: print the summary as JSON
    #[arg(long, requires = "once")]
    pub json: bool,
}

impl StartArgs {
    /// The monitors named on the command line.
    pub fn monitors(&self) -> Vec<MonitorSpec> {
        let agents = self.agents.iter().map(|id| MonitorSpec::agent(id));
        let workspaces = self.workspaces.iter().map(|id| MonitorSpec::workspace(id));
        agents.chain(workspaces).collect()
    }
}

/// Runs `start`.
pub fn start(args: &StartArgs, settings: Settings) -> anyhow::Result<()> {
    if args.once {
        let summary = crate::daemon::run_once(&settings, args.monitors())?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else {
            print!("{}", summary::render(&summary));
        }
        return Ok(());
    }
    crate::daemon::run(settings, args.monitors())
}

/// Runs `stop`: asks the daemon to stop and waits until it is gone.
pub fn stop(settings: &Settings) -> anyhow::Result<()> {
    let socket = &settings.socket_path;
    match client::request(socket, &Request::Stop {}) {
        Ok(_) => {}
        Err(ClientError::NoDaemon(_)) => bail!("no daemon is running on {}", socket.display()),
        Err(e) => return Err(e.into()),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while socket.exists() {
        if Instant::now() > deadline {
            bail!("the daemon did not stop within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped");
    Ok(())
}

/// Runs `reload`: the daemon reads its config file again (as SIGHUP does), or refuses it with
/// the error and keeps the old one.
pub fn reload(settings: &Settings) -> anyhow::Result<()> {
    let socket = &settings.socket_path;
    let data = match client::request(socket, &Request::Reload {}) {
        Ok(data) => data,
        Err(ClientError::NoDaemon(_)) => bail!("no daemon is running on {}", socket.display()),
        Err(e) => return Err(e.into()),
    };
    let list = |key: &str| -> Vec<String> {
        data[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let applied = list("applied");
    let waiting = list("needs_restart");
    let config = &data["config"];
    println!(
        "reloaded {} (sha256 {})",
        config["path"].as_str().unwrap_or("?"),
        config["sha256"]
            .as_str()
            .map_or("?", |h| &h[..h.len().min(12)])
    );
    if applied.is_empty() {
        println!("nothing changed");
    } else {
        println!("applied: {}", applied.join(", "));
    }
    if !waiting.is_empty() {
        println!("changed, but kept until a restart: {}", waiting.join(", "));
    }
    Ok(())
}
