//! `config check [FILE]`: validates a config file without starting anything, like `promtool
//! check config` and `monit -t`. Prints the effective settings, every threshold with its source
//! (default, file, override) and warnings; exits 0 when valid, 2 when not.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::monitors::UsageError;
use crate::catalog;
use crate::config::{CliOverrides, ConfigFile, Settings};
use crate::model::{MonitorSpec, ResourceType, Thresholds};

/// `config` options.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do with the config.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file without starting anything: exit 0 when valid, 2 when not
    Check {
        /// The file [default: --config]
        file: Option<PathBuf>,
    },
}

/// Where a threshold comes from.
fn source_of(metric: &str, file: &ConfigFile) -> &'static str {
    if file.thresholds.contains_key(metric) {
        "file"
    } else {
        "default"
    }
}

/// Why a threshold can never fire, if it cannot: a percentage past 100, a flag's beyond 0..1,
/// a count or size that would have to go negative.
fn never_fires(metric: &str, unit: &str, t: Thresholds) -> Option<String> {
    let (w, c) = (t.warning, t.critical);
    let nonnegative = matches!(unit, "%" | "MB" | "count" | "bool" | "ms" | "s" | "ratio");
    if !t.lower_is_worse() {
        if unit == "%" && w > 100.0 {
            return Some(format!(
                "{metric}: warning {w} is above 100 %: it can never fire"
            ));
        }
        if unit == "bool" && w > 1.0 {
            return Some(format!(
                "{metric}: warning {w} is above 1 for a 0/1 flag: it can never fire"
            ));
        }
    } else if nonnegative && w < 0.0 {
        return Some(format!(
            "{metric}: lower is worse and warning {w} is below 0, which it never reaches: it can never fire"
        ));
    } else if nonnegative && c < 0.0 && metric != catalog::WORKSPACE_SCAN_COMPLETE {
        return Some(format!(
            "{metric}: critical {c} is below 0, which it never reaches: it only ever warns"
        ));
    }
    None
}

/// The monitors stored in the database `settings` names, when it can be read.
fn stored_monitors(settings: &Settings) -> Option<Vec<MonitorSpec>> {
    let conn = crate::store::open_read_only(&settings.db_path).ok()??;
    crate::store::query::load_monitors(&conn).ok()
}

/// The report of a valid config: its settings, thresholds and warnings.
pub(crate) fn describe(
    path: &Path,
    file: &ConfigFile,
    settings: &Settings,
    stored: Option<&[MonitorSpec]>,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut warnings = Vec::new();
    let _ = writeln!(out, "config {} is valid\n", path.display());
    let _ = writeln!(out, "settings:");
    let secs = |d: std::time::Duration| format!("{} s", d.as_secs_f64());
    let rows: Vec<(&str, String)> = vec![
        ("db_path", settings.db_path.display().to_string()),
        ("socket", settings.socket_path.display().to_string()),
        ("interval", secs(settings.interval)),
        ("alert_cooldown", secs(settings.alert_cooldown)),
        ("log_level", settings.log_level.clone()),
        (
            "log_format",
            format!("{:?}", settings.log_format).to_lowercase(),
        ),
        ("retention", secs(settings.metric_retention)),
        ("alert_retention", secs(settings.alert_retention)),
        ("walk_time_cap", secs(settings.walk_time_cap)),
        ("stall_after", secs(settings.stall_after)),
        (
            "max_db_size",
            settings
                .max_db_bytes
                .map_or("none".to_string(), |b| format!("{} MB", b / (1024 * 1024))),
        ),
        (
            "writer_buffer",
            format!("{} MB", settings.writer_buffer_bytes / (1024 * 1024)),
        ),
        (
            "http",
            match settings.http.listen {
                Some(addr) => format!(
                    "{addr} (writes {})",
                    if settings.http.token.is_some() {
                        "enabled"
                    } else {
                        "disabled: no token"
                    }
                ),
                None => "off".to_string(),
            },
        ),
        (
            "notify",
            format!(
                "{} exec, {} webhook, {} alertmanager{}",
                settings.notify.exec.len(),
                settings.notify.webhooks.len(),
                settings.notify.alertmanagers.len(),
                if settings.notify.escalate.is_some() {
                    ", gt escalate"
                } else {
                    ""
                }
            ),
        ),
        (
            "gastown",
            settings
                .gastown
                .as_ref()
                .map_or("not followed".to_string(), |t| t.root.display().to_string()),
        ),
        (
            "pushed",
            format!(
                "at most {} series, ttl {}",
                settings.pushed.max_series,
                secs(settings.pushed.default_ttl)
            ),
        ),
        ("checks", settings.checks.len().to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<16} {v}");
    }
    let _ = writeln!(out, "\nthresholds (warning / critical, source):");
    let mut names: BTreeSet<String> = catalog::METRICS
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    names.extend(file.thresholds.keys().cloned());
    for name in &names {
        let Some(rule) = settings
            .rules
            .rule(ResourceType::Agent, "", name)
            .copied()
            .or_else(|| {
                ResourceType::ALL
                    .into_iter()
                    .find_map(|t| settings.rules.rule(t, "", name).copied())
            })
        else {
            continue;
        };
        let t = rule.thresholds;
        let custom = catalog::lookup(name).is_none();
        let source = source_of(name, file);
        let mut line = format!(
            "  {name:<26} {} / {}  {}{}",
            crate::alerts::format_number(t.warning),
            crate::alerts::format_number(t.critical),
            source,
            if custom { " (custom metric)" } else { "" }
        );
        if rule.for_cycles > 1 || rule.clear_cycles > 1 || rule.hysteresis > 0.0 {
            let _ = write!(
                line,
                "  for {} clear {} hysteresis {}",
                rule.for_cycles,
                rule.clear_cycles,
                crate::alerts::format_number(rule.hysteresis)
            );
        }
        let _ = writeln!(out, "{line}");
        if source == "file" {
            let unit = catalog::lookup(name).map_or("", |m| m.unit);
            warnings.extend(never_fires(name, unit, t));
        }
    }
    for (i, o) in file.overrides.iter().enumerate() {
        let Some(rule) = settings
            .rules
            .rule(o.resource_type, &o.resource_id, &o.metric)
        else {
            continue;
        };
        let t = rule.thresholds;
        let _ = writeln!(
            out,
            "  {:<26} {} / {}  override #{} ({}/{})",
            o.metric,
            crate::alerts::format_number(t.warning),
            crate::alerts::format_number(t.critical),
            i + 1,
            o.resource_type,
            o.resource_id
        );
        let unit = catalog::lookup(&o.metric).map_or("", |m| m.unit);
        warnings
            .extend(never_fires(&o.metric, unit, t).map(|w| format!("override #{}: {w}", i + 1)));
        if let Some(stored) = stored {
            let watched = stored
                .iter()
                .chain(&settings.checks)
                .any(|m| m.resource() == (o.resource_type, o.resource_id.clone()))
                || matches!(
                    o.resource_type,
                    ResourceType::Cpu
                        | ResourceType::Memory
                        | ResourceType::Filesystem
                        | ResourceType::Database
                        | ResourceType::Network
                );
            if !watched && settings.gastown.is_none() {
                warnings.push(format!(
                    "override #{} is for {}/{}, which no monitor watches (in {})",
                    i + 1,
                    o.resource_type,
                    o.resource_id,
                    settings.db_path.display()
                ));
            }
        }
    }
    if settings.http.token.is_some() && settings.http.listen.is_none() {
        warnings.push("[http] token is set but no listen address: the HTTP API is off".into());
    }
    (out, warnings)
}

/// Runs `config check`.
pub fn run(args: &ConfigArgs, global: &super::GlobalArgs) -> anyhow::Result<()> {
    let ConfigCommand::Check { file } = &args.command;
    let Some(path) = file.clone().or_else(|| global.config.clone()) else {
        return Err(UsageError("config check needs a FILE (or --config FILE)".to_string()).into());
    };
    let overrides = CliOverrides {
        db_path: global.db_path.clone(),
        socket: global.socket.clone(),
        ..CliOverrides::default()
    };
    // Read twice: once to keep what the file says (for the sources), once to resolve.
    let checked = ConfigFile::load(&path).and_then(|file| {
        let settings = Settings::resolve(ConfigFile::load(&path)?, &overrides)?;
        Ok((file, settings))
    });
    let (file, settings) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            return Err(
                UsageError(format!("config {} is not valid: {e:#}", path.display())).into(),
            );
        }
    };
    let stored = stored_monitors(&settings);
    let (text, warnings) = describe(&path, &file, &settings, stored.as_deref());
    print!("{text}");
    if warnings.is_empty() {
        println!("\nno warnings");
    } else {
        println!("\nwarnings:");
        for w in &warnings {
            println!("  {w}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (String, Vec<String>) {
        let file = ConfigFile::parse(text).unwrap();
        let settings =
            Settings::resolve(ConfigFile::parse(text).unwrap(), &CliOverrides::default()).unwrap();
        describe(
            Path::new("c.toml"),
            &file,
            &settings,
            Some(&[MonitorSpec::agent("a1")]),
        )
    }

    #[test]
    fn every_threshold_is_listed_with_its_source() {
        let (text, warnings) = check(
            "[thresholds.cpu_usage_percent]\nwarning = 70\ncritical = 90\nfor_cycles = 3\n\
             [thresholds.response_time]\nwarning = 100\ncritical = 200\n\
             [[override]]\nresource_type = \"agent\"\nresource_id = \"a1\"\nmetric = \"agent_memory_mb\"\nwarning = 100\ncritical = 200\n",
        );
        assert!(
            text.contains("cpu_usage_percent          70 / 90  file  for 3 clear 1"),
            "{text}"
        );
        assert!(
            text.contains("memory_usage_percent       80 / 95  default"),
            "{text}"
        );
        assert!(
            text.contains("response_time              100 / 200  file (custom metric)"),
            "{text}"
        );
        assert!(
            text.contains("agent_memory_mb            100 / 200  override #1 (agent/a1)"),
            "{text}"
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn thresholds_that_cannot_fire_and_overrides_for_nobody_are_warned_about() {
        let (_, warnings) = check(
            "[thresholds.disk_usage_percent]\nwarning = 120\ncritical = 150\n\
             [thresholds.agent_active]\nwarning = -1\ncritical = -2\n\
             [[override]]\nresource_type = \"workspace\"\nresource_id = \"nobody\"\nmetric = \"workspace_size_mb\"\nwarning = 1\ncritical = 2\n",
        );
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].contains("agent_active") && warnings[0].contains("never fire"));
        assert!(warnings[1].contains("disk_usage_percent") && warnings[1].contains("above 100"));
        assert!(warnings[2].contains("workspace/nobody, which no monitor watches"));
    }
}
