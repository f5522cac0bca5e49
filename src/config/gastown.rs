//! The `[gastown]` table: following a Gas Town town and escalating to it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::model::HealthStatus;

/// Gas Town calls a heartbeat stale after three minutes.
pub const DEFAULT_HEARTBEAT_STALE_SECS: f64 = 180.0;

/// The `[gastown]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GastownConfig {
    /// The town root, e.g. `~/gt` (or `--gastown DIR`).
    pub root: Option<PathBuf>,
    /// Seconds after which a heartbeat is stale (default 180, as Gas Town).
    pub heartbeat_stale: Option<f64>,
    /// Run `gt escalate` for alerts at or above `escalate_severity` (default true).
    pub escalate: Option<bool>,
    /// `degraded`, `unhealthy` (default) or `critical`.
    pub escalate_severity: Option<String>,
    /// The `gt` program (default `gt`, found on PATH).
    pub gt: Option<PathBuf>,
    /// Seconds one `gt escalate` may take (default 30).
    pub escalate_timeout: Option<f64>,
    /// Seconds after a spawn during which a missing process is not announced (default 120).
    pub spawn_grace: Option<f64>,
}

/// Following a town, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GastownSettings {
    /// The town root, absolute.
    pub root: PathBuf,
    pub heartbeat_stale: Duration,
    /// `Some(min severity)` when alerts are escalated through `gt escalate`.
    pub escalate: Option<HealthStatus>,
    pub gt: PathBuf,
    pub escalate_timeout: Duration,
    pub spawn_grace: Duration,
}

fn secs(key: &str, v: Option<f64>, default: f64) -> anyhow::Result<Duration> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || !(1.0..=86_400.0).contains(&v) {
        bail!("[gastown] {key} must be between 1 and 86400 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

impl GastownConfig {
    /// Validates the table with `--gastown` over its `root`; `None` when no town is followed.
    pub fn resolve(&self, root_flag: Option<&PathBuf>) -> anyhow::Result<Option<GastownSettings>> {
        let Some(root) = root_flag.or(self.root.as_ref()) else {
            return Ok(None);
        };
        let root = std::path::absolute(root)
            .with_context(|| format!("gastown root {}", root.display()))?;
        let escalate = if self.escalate.unwrap_or(true) {
            let severity = self.escalate_severity.as_deref().unwrap_or("unhealthy");
            match severity.parse::<HealthStatus>() {
                Ok(
                    s @ (HealthStatus::Degraded | HealthStatus::Unhealthy | HealthStatus::Critical),
                ) => Some(s),
                _ => bail!(
                    "[gastown] escalate_severity must be degraded, unhealthy or critical, got {severity:?}"
                ),
            }
        } else {
            None
        };
        Ok(Some(GastownSettings {
            root,
            heartbeat_stale: secs(
                "heartbeat_stale",
                self.heartbeat_stale,
                DEFAULT_HEARTBEAT_STALE_SECS,
            )?,
            escalate,
            gt: self.gt.clone().unwrap_or_else(|| PathBuf::from("gt")),
            escalate_timeout: secs("escalate_timeout", self.escalate_timeout, 30.0)?,
            spawn_grace: secs("spawn_grace", self.spawn_grace, 120.0)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_town_is_followed_only_when_named_and_escalation_is_validated() {
        assert_eq!(GastownConfig::default().resolve(None).unwrap(), None);
        let s = GastownConfig::default()
            .resolve(Some(&PathBuf::from("/srv/gt")))
            .unwrap()
            .unwrap();
        assert_eq!(s.root, PathBuf::from("/srv/gt"));
        assert_eq!(s.heartbeat_stale, Duration::from_secs(180));
        assert_eq!(s.escalate, Some(HealthStatus::Unhealthy));
        assert_eq!(s.gt, PathBuf::from("gt"));

        let cfg: GastownConfig = toml::from_str(
            "root = \"/gt\"\nheartbeat_stale = 60\nescalate_severity = \"critical\"\ngt = \"/opt/gt\"",
        )
        .unwrap();
        let s = cfg.resolve(None).unwrap().unwrap();
        assert_eq!(
            (s.heartbeat_stale, s.escalate),
            (Duration::from_secs(60), Some(HealthStatus::Critical))
        );
        let off: GastownConfig = toml::from_str("root = \"/gt\"\nescalate = false").unwrap();
        assert_eq!(off.resolve(None).unwrap().unwrap().escalate, None);
        let bad: GastownConfig =
            toml::from_str("root = \"/gt\"\nescalate_severity = \"healthy\"").unwrap();
        assert!(bad.resolve(None).is_err());
        let bad: GastownConfig = toml::from_str("root = \"/gt\"\nheartbeat_stale = 0").unwrap();
        assert!(bad.resolve(None).is_err());
        assert!(toml::from_str::<GastownConfig>("rooot = \"/gt\"").is_err());
    }
}
