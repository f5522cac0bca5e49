//! Alert rules: each metric's thresholds, debounce and hysteresis, with per-resource overrides,
//! and the partial rules a config file gives (`[thresholds.*]` tables, `[[override]]` entries).

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;
use serde::Deserialize;

use crate::catalog;
use crate::model::{ResourceType, Thresholds};

/// How one metric alerts: thresholds plus the debounce and hysteresis of docs/ARCHITECTURE.md,
/// "Alert state machine".
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AlertRule {
    /// The warning and critical values that set the metric's status.
    pub thresholds: Thresholds,
    /// Breached samples in a row needed before an alert opens (at least 1).
    pub for_cycles: u32,
    /// Healthy samples in a row, each clear by `hysteresis`, needed before it resolves.
    pub clear_cycles: u32,
    /// How far to the healthy side of the warning threshold, in the metric's unit, a value must
    /// be to count as clear (0: anything healthy).
    pub hysteresis: f64,
}

impl AlertRule {
    /// A rule with the default debounce (1 cycle each way) and no hysteresis.
    pub fn new(thresholds: Thresholds) -> Self {
        AlertRule {
            thresholds,
            for_cycles: 1,
            clear_cycles: 1,
            hysteresis: 0.0,
        }
    }
}

/// Thresholds and alert rules for every metric, defaults merged with the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTable {
    by_metric: HashMap<String, AlertRule>,
    /// `[[override]]`s, by metric, then resource type and id: found without a scan, however
    /// many there are.
    per_resource: HashMap<String, HashMap<ResourceType, HashMap<String, AlertRule>>>,
}

impl Default for RuleTable {
    fn default() -> Self {
        let by_metric = catalog::METRICS
            .iter()
            .filter_map(|m| Some((m.name.to_string(), AlertRule::new(m.thresholds?))))
            .collect();
        RuleTable {
            by_metric,
            per_resource: HashMap::new(),
        }
    }
}

/// Layers one table of settings over `base`, naming `label` in every error.
fn layer_rule(
    base: Option<AlertRule>,
    cfg: &ThresholdConfig,
    label: &str,
) -> anyhow::Result<AlertRule> {
    let (warning, critical) = match (cfg.warning, cfg.critical, base) {
        (Some(w), Some(c), _) => (w, c),
        (w, c, Some(b)) => (
            w.unwrap_or(b.thresholds.warning),
            c.unwrap_or(b.thresholds.critical),
        ),
        _ => bail!("{label}: both warning and critical are required"),
    };
    for (name, v) in [("warning", warning), ("critical", critical)] {
        if !v.is_finite() {
            bail!("{label}: {name} must be a finite number, got {v}");
        }
    }
    // Which of the two is higher says whether higher or lower values are worse: equal ones say
    // nothing, and silently read as "higher is worse" (a flag metric would alert when healthy).
    if warning == critical {
        bail!(
            "{label}: warning and critical are both {warning}; they must differ (critical above \
             warning means higher values are worse, below means lower values are worse)"
        );
    }
    // Giving one threshold must not silently turn "higher is worse" into "lower is worse".
    if let Some(b) = base
        && (cfg.warning.is_none() || cfg.critical.is_none())
        && Thresholds::new(warning, critical).lower_is_worse() != b.thresholds.lower_is_worse()
    {
        bail!(
            "{label}: warning {warning} and critical {critical} would reverse the metric's direction \
             (defaults {} and {}); give both to mean it",
            b.thresholds.warning,
            b.thresholds.critical
        );
    }
    let mut rule = base.unwrap_or(AlertRule::new(Thresholds::new(warning, critical)));
    rule.thresholds = Thresholds::new(warning, critical);
    for (name, value, slot) in [
        ("for_cycles", cfg.for_cycles, &mut rule.for_cycles),
        ("clear_cycles", cfg.clear_cycles, &mut rule.clear_cycles),
    ] {
        if let Some(n) = value {
            if n == 0 {
                bail!("{label}: {name} must be at least 1");
            }
            *slot = n;
        }
    }
    if let Some(h) = cfg.hysteresis {
        if !h.is_finite() || h < 0.0 {
            bail!("{label}: hysteresis must be a number >= 0, got {h}");
        }
        rule.hysteresis = h;
    }
    Ok(rule)
}

/// Accepts a built-in metric, or a custom one (pushed by `report`, or a check's perfdata label)
/// whose name follows the rule and is not a near miss of a built-in one: a typo of
/// `cpu_usage_percent` must not silently become thresholds for a metric nobody reports.
fn known_metric(metric: &str, label: &str) -> anyhow::Result<()> {
    if catalog::lookup(metric).is_some() {
        return Ok(());
    }
    let lower = metric.to_ascii_lowercase();
    if let Some(near) = catalog::METRICS
        .iter()
        .find(|m| edit_distance(m.name, &lower) <= 2 || m.name.starts_with(lower.as_str()))
    {
        bail!(
            "{label}: unknown metric {metric:?}; did you mean {:?}? (a custom metric's name must \
             not be within two letters of a built-in one, nor the start of one)",
            near.name
        );
    }
    if let Err(e) = crate::pushed::validate_metric_name(metric) {
        let known: Vec<&str> = catalog::METRICS.iter().map(|m| m.name).collect();
        bail!("{label}: {e}; built-in metrics: {}", known.join(", "));
    }
    Ok(())
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

impl RuleTable {
    /// The rule for a metric of a resource, if it has thresholds: a per-resource override
    /// first, then the metric's.
    pub(crate) fn rule(
        &self,
        resource_type: ResourceType,
        resource_id: &str,
        metric: &str,
    ) -> Option<&AlertRule> {
        self.per_resource
            .get(metric)
            .and_then(|by_type| by_type.get(&resource_type)?.get(resource_id))
            .or_else(|| self.by_metric.get(metric))
    }

    /// Merges `[thresholds.*]` tables over the defaults, rejecting unknown metrics and bad values.
    pub(crate) fn with_overrides(
        mut self,
        overrides: &BTreeMap<String, ThresholdConfig>,
    ) -> anyhow::Result<Self> {
        for (metric, cfg) in overrides {
            let label = format!("[thresholds.{metric}]");
            known_metric(metric, &label)?;
            let rule = layer_rule(self.by_metric.get(metric).copied(), cfg, &label)?;
            self.by_metric.insert(metric.clone(), rule);
        }
        Ok(self)
    }

    /// Adds `[[override]]` tables, each over its metric's rule.
    pub(crate) fn with_resource_overrides(
        mut self,
        overrides: &[ResourceOverride],
    ) -> anyhow::Result<Self> {
        for (i, o) in overrides.iter().enumerate() {
            let label = format!(
                "[[override]] #{} ({}/{}/{})",
                i + 1,
                o.resource_type,
                o.resource_id,
                o.metric
            );
            known_metric(&o.metric, &label)?;
            let cfg = ThresholdConfig {
                warning: o.warning,
                critical: o.critical,
                for_cycles: o.for_cycles,
                clear_cycles: o.clear_cycles,
                hysteresis: o.hysteresis,
            };
            let rule = layer_rule(self.by_metric.get(&o.metric).copied(), &cfg, &label)?;
            // A later one for the same resource and metric replaces an earlier one.
            self.per_resource
                .entry(o.metric.clone())
                .or_default()
                .entry(o.resource_type)
                .or_default()
                .insert(o.resource_id.clone(), rule);
        }
        Ok(self)
    }
}

/// One `[thresholds.<metric_name>]` table.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    /// Value at which the metric turns unhealthy; above `critical` means lower values are worse.
    pub warning: Option<f64>,
    /// Value at which the metric turns critical; one given alone keeps the other's default.
    pub critical: Option<f64>,
    /// Breached samples needed before an alert opens (default 1).
    pub for_cycles: Option<u32>,
    /// Healthy samples needed before an alert resolves (default 1).
    pub clear_cycles: Option<u32>,
    /// How far past the warning threshold a value must come back before the alert clears.
    pub hysteresis: Option<f64>,
}

/// One `[[override]]` table: thresholds for one metric of one resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceOverride {
    /// Kind of resource, e.g. `workspace` or `agent`.
    pub resource_type: ResourceType,
    /// Id of the one resource these thresholds apply to.
    pub resource_id: String,
    /// Metric name, as in `[thresholds.<metric_name>]`.
    pub metric: String,
    /// Value at which this resource's metric turns unhealthy (default: the metric's rule).
    pub warning: Option<f64>,
    /// Value at which this resource's metric turns critical (default: the metric's rule).
    pub critical: Option<f64>,
    /// Breached samples needed before an alert opens.
    pub for_cycles: Option<u32>,
    /// Healthy samples needed before an alert resolves.
    pub clear_cycles: Option<u32>,
    /// How far past the warning threshold a value must come back before the alert clears.
    pub hysteresis: Option<f64>,
}
