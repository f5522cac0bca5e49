//! The `[gastown]` table: following a Gas Town town and escalating to it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::model::HealthStatus;

/// Gas Town calls a heartbeat stale after three minutes.
pub(crate) const DEFAULT_HEARTBEAT_STALE_SECS: f64 = 180.0;
/// The deacon's tmux session, whose heartbeat is `deacon/heartbeat.json`.
pub(crate) const DEACON_SESSION: &str = "hq-deacon";
/// Gas Town's deacon heartbeat is stale at 5 minutes (internal/deacon/heartbeat.go)...
pub(crate) const DEACON_HEARTBEAT_STALE_SECS: f64 = 300.0;
/// ...and very stale at 20.
pub(crate) const DEACON_HEARTBEAT_VERY_STALE_SECS: f64 = 1200.0;

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
    /// Seconds a session started by an event may take to show its process before a reading
    /// that finds none counts (default 120).
    pub spawn_grace: Option<f64>,
    /// Seconds two readings of a dead process must be apart before the session counts as ended
    /// (one may fall in a restart's gap; default 10).
    pub death_confirm: Option<f64>,
    /// Seconds a polecat may say `working` with an unmoved heartbeat and an idle tree before it
    /// is reported stalled (default 900, Gas Town's idle timeout).
    pub stall_after: Option<f64>,
    /// Seconds between two reads of the whole process table for town orphans (default 60).
    pub orphan_scan_every: Option<f64>,
    /// Seconds an agent-program process must have run before it can count as a town orphan
    /// (default 60, as Gas Town's own orphan check).
    pub orphan_min_age: Option<f64>,
}

/// Following a town, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GastownSettings {
    /// The town root, absolute.
    pub root: PathBuf,
    /// Age past which a session's heartbeat is stale and its state is read as nothing
    /// (default 180 s).
    pub heartbeat_stale: Duration,
    /// `Some(min severity)` when alerts are escalated through `gt escalate`.
    pub escalate: Option<HealthStatus>,
    /// The `gt` program: a path, or a name looked up on `PATH` (default `gt`).
    pub gt: PathBuf,
    /// Longest one `gt escalate` may take (default 30 s).
    pub escalate_timeout: Duration,
    /// How long a session started by an event may take to show its process (default 120 s).
    pub spawn_grace: Duration,
    /// How far apart two readings of a dead process must be before the session counts as ended
    /// (default 10 s).
    pub death_confirm: Duration,
    /// Whole seconds.
    pub stall_after: u64,
    /// Time between two reads of the whole process table for town orphans (default 60 s).
    pub orphan_scan_every: Duration,
    /// How long an agent-program process must have run before it can count as a town orphan
    /// (default 60 s).
    pub orphan_min_age: Duration,
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
            death_confirm: secs("death_confirm", self.death_confirm, 10.0)?,
            stall_after: secs("stall_after", self.stall_after, 900.0)?
                .as_secs()
                .max(1),
            orphan_scan_every: secs("orphan_scan_every", self.orphan_scan_every, 60.0)?,
            orphan_min_age: secs("orphan_min_age", self.orphan_min_age, 60.0)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_table_is_valid_and_names_every_key() {
        let doc = include_str!("../../docs/gastown.md");
        let start = doc
            .find("```toml\n[gastown]")
            .expect("docs/gastown.md's example")
            + 8;
        let text = &doc[start..start + doc[start..].find("```").unwrap()];
        let file: toml::Table = toml::from_str(text).unwrap();
        let table = file["gastown"].as_table().unwrap();
        let cfg: GastownConfig = table.clone().try_into().unwrap();
        let s = cfg.resolve(None).unwrap().unwrap();
        assert_eq!(s.death_confirm, Duration::from_secs(10));
        assert_eq!(s.stall_after, 900);
        // Every key the table takes is shown: GastownConfig denies unknown ones, so a key
        // missing here is one the page does not document.
        let keys = [
            "root",
            "heartbeat_stale",
            "escalate",
            "escalate_severity",
            "gt",
            "escalate_timeout",
            "spawn_grace",
            "death_confirm",
            "stall_after",
            "orphan_scan_every",
            "orphan_min_age",
        ];
        // Naming every field without `..`: a new field does not compile until it is listed.
        let GastownConfig {
            root: _,
            heartbeat_stale: _,
            escalate: _,
            escalate_severity: _,
            gt: _,
            escalate_timeout: _,
            spawn_grace: _,
            death_confirm: _,
            stall_after: _,
            orphan_scan_every: _,
            orphan_min_age: _,
        } = GastownConfig::default();
        assert_eq!(table.len(), keys.len(), "{table:?}");
        for key in keys {
            assert!(table.contains_key(key), "{key} is not in docs/gastown.md");
        }
    }

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
