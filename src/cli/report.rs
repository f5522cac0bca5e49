//! `report`: pushes custom metrics to the running daemon, one from the arguments or many from
//! standard input, and `report --remove` retires a series.

use std::io::BufRead;

use anyhow::bail;
use clap::Args;

use super::monitors::UsageError;
use crate::config::Settings;
use crate::control::client::{self, ClientError};
use crate::control::protocol::{MAX_REPORT_METRICS, Request};
use crate::model::ResourceType;
use crate::pushed::{ReportItem, ReportOutcome};

/// `report` options.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  health-monitor report agent a1 response_time 150 --warning 100 --critical 200 --unit ms\n  \
                  printf 'agent a1 queue_depth 12 warning=50 critical=100\\n' | health-monitor report --stdin\n  \
                  health-monitor report --remove agent a1 response_time"
)]
pub struct ReportArgs {
    /// Resource type: agent, workspace, database, filesystem, memory, cpu, network or check
    #[arg(required_unless_present = "stdin")]
    pub resource_type: Option<ResourceType>,
    /// Resource id (the id rules apply; the resource need not be monitored)
    #[arg(required_unless_present = "stdin")]
    pub resource_id: Option<String>,
    /// Metric name: letters, digits and _, not a built-in metric's
    #[arg(required_unless_present = "stdin")]
    pub metric: Option<String>,
    /// The value (finite)
    #[arg(required_unless_present_any = ["stdin", "remove"], allow_negative_numbers = true)]
    pub value: Option<f64>,
    /// Value at which it turns unhealthy (with --critical; critical below warning: lower is worse)
    #[arg(long, allow_negative_numbers = true, requires = "critical")]
    pub warning: Option<f64>,
    /// Value at which it turns critical
    #[arg(long, allow_negative_numbers = true, requires = "warning")]
    pub critical: Option<f64>,
    /// Unit, e.g. ms or %
    #[arg(long)]
    pub unit: Option<String>,
    /// How long the value holds: unreported for longer, the series goes stale and
    /// `metric_stale` opens (e.g. 90s, 5m) [default: 3 intervals]
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<f64>,
    /// Read many metrics from standard input, one per line: TYPE ID METRIC VALUE
    /// [warning=W] [critical=C] [unit=U] [ttl=DURATION]; blank lines and # comments are skipped
    #[arg(long, conflicts_with_all = ["resource_type", "remove"])]
    pub stdin: bool,
    /// Retire the series TYPE ID METRIC: its value leaves the status and its alerts resolve
    #[arg(long, conflicts_with_all = ["value", "warning", "critical", "unit", "ttl"])]
    pub remove: bool,
}

/// clap value parser for `--ttl` and `ttl=`: a duration such as `90s`, in seconds.
fn parse_ttl(s: &str) -> Result<f64, String> {
    super::alerts::parse_duration(s).map(|d| d.as_secs_f64())
}

/// Parses one line of `report --stdin`: `TYPE ID METRIC VALUE [key=value...]`.
pub(crate) fn parse_line(line: &str) -> Result<ReportItem, String> {
    let mut words = line.split_whitespace();
    let mut next = |what: &str| {
        words.next().ok_or_else(|| {
            format!("missing {what} (a line is TYPE ID METRIC VALUE [key=value...])")
        })
    };
    let resource_type: ResourceType = next("TYPE")?.parse()?;
    let resource_id = next("ID")?.to_string();
    let metric = next("METRIC")?.to_string();
    let raw = next("VALUE")?;
    let value: f64 = raw
        .parse()
        .map_err(|_| format!("value {raw:?} is not a number"))?;
    finite(value)?;
    let mut item = ReportItem {
        resource_type,
        resource_id,
        metric,
        value,
        warning: None,
        critical: None,
        unit: None,
        ttl_secs: None,
    };
    for option in words {
        let (key, v) = option
            .split_once('=')
            .ok_or_else(|| format!("{option:?} is not key=value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{key}={v:?} is not a number"))
        };
        match key {
            "warning" => item.warning = Some(number(v)?),
            "critical" => item.critical = Some(number(v)?),
            "unit" => item.unit = Some(v.to_string()),
            "ttl" => item.ttl_secs = Some(parse_ttl(v)?),
            _ => {
                return Err(format!(
                    "unknown option {key:?} (warning, critical, unit or ttl)"
                ));
            }
        }
    }
    Ok(item)
}

/// The metrics of `report --stdin`, each with its line number, and the lines that do not
/// parse, each with its line number and why.
type ReadLines = (Vec<(usize, ReportItem)>, Vec<String>);

/// Refuses NaN and infinities here: JSON cannot carry them to the daemon.
fn finite(value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "value {value} is not a finite number (NaN and infinities are refused)"
        ))
    }
}

/// Reads `report --stdin`'s lines.
fn read_lines(input: impl BufRead) -> anyhow::Result<ReadLines> {
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        match parse_line(text) {
            Ok(item) => items.push((i + 1, item)),
            Err(e) => bad.push(format!("line {}: {e}", i + 1)),
        }
    }
    Ok((items, bad))
}

/// Runs `report`.
pub fn report(args: &ReportArgs, settings: &Settings) -> anyhow::Result<()> {
    if args.remove {
        return remove(args, settings);
    }
    let (items, mut problems) = if args.stdin {
        read_lines(std::io::stdin().lock())?
    } else {
        let value = args.value.unwrap_or(f64::NAN);
        finite(value).map_err(UsageError)?;
        let item = ReportItem {
            resource_type: args.resource_type.unwrap_or(ResourceType::Agent),
            resource_id: args.resource_id.clone().unwrap_or_default(),
            metric: args.metric.clone().unwrap_or_default(),
            value,
            warning: args.warning,
            critical: args.critical,
            unit: args.unit.clone(),
            ttl_secs: args.ttl,
        };
        (vec![(0, item)], Vec::new())
    };
    let mut accepted = 0;
    for chunk in items.chunks(MAX_REPORT_METRICS) {
        let request = Request::Report {
            metrics: chunk.iter().map(|(_, item)| item.clone()).collect(),
        };
        let outcome: ReportOutcome = match client::request(&settings.socket_path, &request) {
            Ok(data) => serde_json::from_value(data)?,
            Err(ClientError::NoDaemon(_)) => bail!(
                "no daemon answers on {}: pushed metrics go to the running daemon (start it \
                 first)",
                settings.socket_path.display()
            ),
            Err(e) => return Err(e.into()),
        };
        accepted += outcome.accepted;
        for refusal in outcome.refused {
            let line = chunk.get(refusal.index).map_or(0, |(line, _)| *line);
            problems.push(if line > 0 {
                format!("line {line}: {}", refusal.error)
            } else {
                refusal.error
            });
        }
    }
    println!(
        "reported {accepted} metric{}",
        if accepted == 1 { "" } else { "s" }
    );
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("refused: {p}");
    }
    Err(UsageError(format!(
        "{} of {} metrics refused",
        problems.len(),
        problems.len() + accepted
    ))
    .into())
}

/// Runs `report --remove TYPE ID METRIC`.
fn remove(args: &ReportArgs, settings: &Settings) -> anyhow::Result<()> {
    let (Some(resource_type), Some(resource_id), Some(metric)) =
        (args.resource_type, &args.resource_id, &args.metric)
    else {
        return Err(UsageError("report --remove needs TYPE ID METRIC".into()).into());
    };
    let request = Request::ReportRemove {
        resource_type,
        resource_id: resource_id.clone(),
        metric: metric.clone(),
    };
    match client::request(&settings.socket_path, &request) {
        Ok(_) => {
            println!("removed {resource_type}/{resource_id} {metric}");
            Ok(())
        }
        Err(ClientError::NoDaemon(_)) => bail!(
            "no daemon answers on {}: start it to remove a pushed series",
            settings.socket_path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_carries_the_metric_and_its_options() {
        let item = parse_line("agent a1 response_time 150 warning=100 critical=200 unit=ms ttl=2m")
            .unwrap();
        assert_eq!(item.resource_type, ResourceType::Agent);
        assert_eq!(item.resource_id, "a1");
        assert_eq!(item.metric, "response_time");
        assert_eq!(item.value, 150.0);
        assert_eq!((item.warning, item.critical), (Some(100.0), Some(200.0)));
        assert_eq!(item.unit.as_deref(), Some("ms"));
        assert_eq!(item.ttl_secs, Some(120.0));
        assert_eq!(parse_line("check c1 x -2.5").unwrap().value, -2.5);
    }

    #[test]
    fn the_docs_stdin_example_parses_line_by_line() {
        let doc = include_str!("../../docs/custom-metrics.md");
        let block = doc
            .split("```text\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let (items, bad) = read_lines(block.as_bytes()).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(items.len(), 4);
        for (_, item) in &items {
            crate::pushed::validate_metric_name(&item.metric).unwrap();
        }
    }

    #[test]
    fn bad_lines_say_why_and_the_good_ones_around_them_are_kept() {
        let input = "# a comment\n\nagent a1 ok 1\nagent a1 oops\nplanet p1 x 1\nagent a1 x NaNx\nagent a1 y 2 colour=red\nagent a1 z 3\n";
        let (items, bad) = read_lines(input.as_bytes()).unwrap();
        let lines: Vec<usize> = items.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 8]);
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad[0].starts_with("line 4: missing VALUE"), "{bad:?}");
        assert!(bad[1].contains("unknown resource type"), "{bad:?}");
        assert!(bad[2].contains("not a number"), "{bad:?}");
        assert!(bad[3].contains("unknown option \"colour\""), "{bad:?}");
    }
}
