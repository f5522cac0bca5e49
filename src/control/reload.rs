//! Reloading the config without a restart (SIGHUP, `reload`, `systemctl reload`): the file is
//! read and validated first, and a bad one is refused with its error while the old settings
//! stay, as Prometheus and Alertmanager do. [`plan`] says what changed and what of it applies
//! live; [`Service::reload`](super::service::Service::reload) applies it: the analyzer takes the
//! new rules and cooldown keeping its alert state, the notifier its new sinks, collectors and
//! the town follower restart on new intervals and paths, the config's checks come and go.

use std::path::Path;

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::actors::deps::ConfigLoad;
use crate::config::{ConfigFile, Settings};

/// What a reload found different, and what it does about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReloadPlan {
    /// Settings that changed and take effect now.
    pub applied: Vec<&'static str>,
    /// Settings that changed but keep their old value until a restart.
    pub needs_restart: Vec<&'static str>,
    /// The collectors restart (new interval, limits or paths).
    #[serde(skip)]
    pub restart_collectors: bool,
    /// The Gas Town follower restarts (new town settings).
    #[serde(skip)]
    pub restart_town: bool,
    /// The analyzer takes new rules or a new cooldown.
    #[serde(skip)]
    pub reconfigure_analyzer: bool,
    /// The notification sinks are rebuilt.
    #[serde(skip)]
    pub rebuild_sinks: bool,
    /// The config's checks changed.
    #[serde(skip)]
    pub checks_changed: bool,
}

/// What changed from `old` to `new`, and how each change is applied.
pub fn plan(old: &Settings, new: &Settings) -> ReloadPlan {
    let mut p = ReloadPlan::default();
    let live = |name: &'static str, changed: bool, p: &mut ReloadPlan| {
        if changed {
            p.applied.push(name);
        }
        changed
    };
    if live("thresholds", old.rules != new.rules, &mut p)
        | live(
            "alert_cooldown",
            old.alert_cooldown != new.alert_cooldown,
            &mut p,
        )
    {
        p.reconfigure_analyzer = true;
    }
    let collectors = [
        ("interval", old.interval != new.interval),
        ("walk_time_cap", old.walk_time_cap != new.walk_time_cap),
        ("stall_after", old.stall_after != new.stall_after),
        (
            "agent_workspace",
            old.agent_workspace != new.agent_workspace,
        ),
        ("workspace_path", old.workspace_path != new.workspace_path),
        ("filesystems", old.filesystems != new.filesystems),
        ("events", old.events != new.events),
    ];
    for (name, changed) in collectors {
        p.restart_collectors |= live(name, changed, &mut p);
    }
    p.rebuild_sinks = live("notify", old.notify != new.notify, &mut p);
    p.checks_changed = live("check", old.checks != new.checks, &mut p);
    live("pushed", old.pushed != new.pushed, &mut p);
    match (&old.gastown, &new.gastown) {
        (Some(a), Some(b)) if a != b => {
            p.restart_town = live("gastown", true, &mut p);
            // The interval is the town follower's too.
        }
        (None, Some(_)) | (Some(_), None) => p.needs_restart.push("gastown (following or not)"),
        _ => {}
    }
    if p.restart_collectors && new.gastown.is_some() {
        p.restart_town = true;
    }
    let fixed = [
        ("db_path", old.db_path != new.db_path),
        ("socket", old.socket_path != new.socket_path),
        ("http", old.http != new.http),
        ("log_level", old.log_level != new.log_level),
        ("log_format", old.log_format != new.log_format),
        ("max_db_size_mb", old.max_db_bytes != new.max_db_bytes),
        (
            "writer_buffer_mb",
            old.writer_buffer_bytes != new.writer_buffer_bytes,
        ),
        (
            "retention",
            old.metric_retention != new.metric_retention
                || old.alert_retention != new.alert_retention,
        ),
        ("supervisor", old.restart != new.restart),
    ];
    for (name, changed) in fixed {
        if changed {
            p.needs_restart.push(name);
        }
    }
    p
}

/// Reads and validates the config file `path` again, layered under the command line's values
/// of `current`; the new settings and what was read, or why it is refused.
pub fn load(current: &Settings, path: &Path) -> anyhow::Result<(Settings, ConfigLoad)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file = ConfigFile::load(path)?;
    let mut settings = Settings::resolve(file, &current.overrides)
        .with_context(|| format!("invalid config file {}", path.display()))?;
    settings.config_path = Some(path.to_path_buf());
    Ok((
        settings,
        ConfigLoad {
            path: Some(path.to_path_buf()),
            loaded_at: Utc::now(),
            sha256: Some(hex(&Sha256::digest(&bytes))),
            reloads: 0,
        },
    ))
}

/// What the daemon's start loaded.
pub fn initial_load(settings: &Settings) -> ConfigLoad {
    let sha256 = settings
        .config_path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|bytes| hex(&Sha256::digest(&bytes)));
    ConfigLoad {
        path: settings.config_path.clone(),
        loaded_at: Utc::now(),
        sha256,
        reloads: 0,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer to a reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReply {
    /// What changed and took effect, and what changed but waits for a restart.
    #[serde(flatten)]
    pub plan: ReloadPlan,
    /// The config as now loaded.
    pub config: ConfigLoad,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CliOverrides;

    fn settings(text: &str) -> Settings {
        Settings::resolve(ConfigFile::parse(text).unwrap(), &CliOverrides::default()).unwrap()
    }

    #[test]
    fn a_threshold_change_reconfigures_the_analyzer_only() {
        let p = plan(
            &settings(""),
            &settings("[thresholds.cpu_usage_percent]\nwarning = 10\ncritical = 20\n"),
        );
        assert_eq!(p.applied, ["thresholds"]);
        assert!(p.reconfigure_analyzer && !p.restart_collectors && !p.rebuild_sinks);
        assert!(p.needs_restart.is_empty());
    }

    #[test]
    fn the_interval_restarts_collectors_and_the_database_path_waits_for_a_restart() {
        let p = plan(
            &settings("interval = 30\n"),
            &settings("interval = 5\ndb_path = \"/tmp/other.db\"\nalert_cooldown = 60\n"),
        );
        // The walk cap, the stall time and the pushed TTL follow the interval by default.
        assert_eq!(
            p.applied,
            [
                "alert_cooldown",
                "interval",
                "walk_time_cap",
                "stall_after",
                "pushed"
            ]
        );
        assert!(p.restart_collectors && p.reconfigure_analyzer);
        assert_eq!(p.needs_restart, ["db_path", "socket"]);
        assert!(plan(&settings(""), &settings("")).applied.is_empty());
    }
}
