//! The `[pushed]` table (limits of custom metrics pushed by `report`) and the `[[check]]`
//! entries (Nagios-compatible plugins run on a schedule).

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::model::{CheckOptions, MonitorSpec, validate_id};
use crate::pushed::{DEFAULT_MAX_SERIES, DEFAULT_TTL_INTERVALS};

/// Who a check of the config file is managed by: it is not stored, and `add` and `remove`
/// leave it alone.
pub(crate) const CONFIG_MANAGED: &str = "config";

/// The `[pushed]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedConfig {
    /// Live pushed series accepted before new ones are refused (default 10,000).
    pub max_series: Option<usize>,
    /// Seconds a series may go unreported before it is stale (default 3 intervals).
    pub ttl: Option<f64>,
}

/// The limits of pushed metrics, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushedSettings {
    /// Live pushed series accepted before new ones are refused.
    pub max_series: usize,
    /// A series' TTL when its reports give none.
    pub default_ttl: Duration,
}

impl PushedConfig {
    /// Validates the table; `interval` gives the default TTL.
    pub(crate) fn resolve(&self, interval: Duration) -> anyhow::Result<PushedSettings> {
        let max_series = self.max_series.unwrap_or(DEFAULT_MAX_SERIES);
        if max_series == 0 || max_series > 1_000_000 {
            bail!("[pushed] max_series must be between 1 and 1000000, got {max_series}");
        }
        let default_ttl = match self.ttl {
            None => interval * DEFAULT_TTL_INTERVALS,
            Some(t) if t.is_finite() && (1.0..=7.0 * 86400.0).contains(&t) => {
                Duration::from_secs_f64(t)
            }
            Some(t) => bail!("[pushed] ttl must be between 1 and 604800 seconds, got {t}"),
        };
        Ok(PushedSettings {
            max_series,
            default_ttl,
        })
    }
}

/// One `[[check]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// The check's name: its resource is `check/<name>` unless `resource` says otherwise.
    pub name: String,
    /// The plugin (an absolute path) and its arguments; never run through a shell.
    pub command: Vec<String>,
    /// `TYPE:ID` of the resource its results belong to, e.g. `agent:a1`.
    pub resource: Option<String>,
    /// Seconds between two runs (default: the daemon's interval).
    pub interval: Option<u64>,
    /// Seconds a run may take (default 10).
    pub timeout: Option<u64>,
}

/// The config file's checks as monitors, each validated like one added by `add check`.
pub(crate) fn resolve_checks(checks: &[CheckConfig]) -> anyhow::Result<Vec<MonitorSpec>> {
    let mut specs: Vec<MonitorSpec> = Vec::with_capacity(checks.len());
    for (i, c) in checks.iter().enumerate() {
        let label = format!("[[check]] #{} ({})", i + 1, c.name);
        validate_id(&c.name)
            .map_err(anyhow::Error::msg)
            .context(label.clone())?;
        if specs.iter().any(|s| s.id() == c.name) {
            bail!("{label}: another [[check]] has the same name");
        }
        let spec = MonitorSpec::Check {
            id: c.name.clone(),
            options: CheckOptions {
                command: c.command.clone(),
                resource: c.resource.clone(),
                interval: c.interval,
                timeout: c.timeout,
                managed_by: Some(CONFIG_MANAGED.into()),
            },
        };
        crate::control::protocol::validate_monitor(&spec)
            .map_err(anyhow::Error::msg)
            .context(label.clone())?;
        if let Some(other) = crate::model::conflicting_check(&specs, &spec) {
            bail!("{label}: {}", crate::model::conflict_message(&spec, other));
        }
        specs.push(spec);
    }
    Ok(specs)
}
