//! Parsing a plugin's output, plugin API v3
//! (<https://www.monitoring-plugins.org/doc/guidelines.html#AEN200>): the first line is
//! `TEXT | PERFDATA`; later lines are long text, and everything after the first `|` on a
//! later line, to the end of the output, is more perfdata.
//!
//! A datum is `'label'=value[UOM];[warn];[crit];[min];[max]`. Its warning and critical ranges
//! are Nagios ranges; they become our [`Thresholds`] only when each is really one-sided.

use std::collections::HashSet;

use crate::model::Thresholds;

/// The longest summary kept, in characters.
pub(crate) const SUMMARY_CAP: usize = 512;
/// The longest metric name made from a label, in characters.
pub(crate) const METRIC_NAME_CAP: usize = 100;
/// The units of measurement the plugin API allows.
const UNITS: &[&str] = &["ms", "us", "KB", "MB", "GB", "TB", "s", "%", "B", "c"];
/// How much of a bad token a problem quotes.
const QUOTE_CAP: usize = 60;

/// A plugin's output, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PluginOutput {
    /// The first line's text (before its `|`), trimmed, at most [`SUMMARY_CAP`] characters.
    pub(crate) summary: String,
    /// The data that parsed, in output order.
    pub(crate) perfdata: Vec<PerfDatum>,
    /// What could not be used, for people: data skipped, ranges not mapped, names refused.
    pub(crate) problems: Vec<String>,
}

/// One datum of perfdata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PerfDatum {
    /// The label as the plugin wrote it (quotes removed, `''` made `'`).
    pub(crate) label: String,
    /// The metric name made from it ([`metric_name`]).
    pub(crate) metric: String,
    /// The value, always finite.
    pub(crate) value: f64,
    /// Its unit of measurement as written (`s`, `%`, `B`, ...); empty for a count of things.
    pub(crate) unit: String,
    /// The smallest value possible, if the plugin said.
    pub(crate) min: Option<f64>,
    /// The largest value possible, if the plugin said.
    pub(crate) max: Option<f64>,
    /// The warning and critical ranges as our thresholds, when they map.
    pub(crate) thresholds: Option<Thresholds>,
    /// Why the ranges were dropped, when they do not map.
    pub(crate) unmapped: Option<String>,
}

/// Parses a plugin's whole output.
pub(crate) fn parse_output(output: &str) -> PluginOutput {
    let (first, rest) = output.split_once('\n').unwrap_or((output, ""));
    let (text, perf) = match first.split_once('|') {
        Some((text, perf)) => (text, Some(perf)),
        None => (first, None),
    };
    let mut parsed = PluginOutput {
        summary: cap_chars(text.trim(), SUMMARY_CAP),
        ..PluginOutput::default()
    };
    let mut names = HashSet::new();
    if let Some(perf) = perf {
        parse_perfdata(perf, &mut parsed, &mut names);
    }
    if let Some((_, more)) = rest.split_once('|') {
        parse_perfdata(more, &mut parsed, &mut names);
    }
    parsed
}

/// Parses space-separated data into `out`, skipping (with a problem) what does not parse.
fn parse_perfdata(text: &str, out: &mut PluginOutput, names: &mut HashSet<String>) {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return;
        }
        let (label, after) = if let Some(quoted) = rest.strip_prefix('\'') {
            match unquote(quoted) {
                Some(found) => found,
                None => {
                    out.problems.push(format!(
                        "perfdata `{}`: unterminated quoted label, rest of the perfdata skipped",
                        quote(rest)
                    ));
                    return;
                }
            }
        } else {
            let end = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        let Some(after) = after.strip_prefix('=') else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.problems.push(format!(
                "perfdata `{}`: not label=value, skipped",
                quote(&rest[..end])
            ));
            rest = &rest[end..];
            continue;
        };
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let spec = &after[..end];
        rest = &after[end..];
        match datum(&label, spec) {
            Ok(d) => {
                if let Some(reason) = &d.unmapped {
                    out.problems.push(format!(
                        "perfdata '{label}': {reason}, its thresholds are ignored"
                    ));
                }
                if crate::catalog::lookup(&d.metric).is_some() {
                    out.problems.push(format!(
                        "perfdata '{label}': metric name {} is a built-in metric, skipped",
                        d.metric
                    ));
                } else if !names.insert(d.metric.clone()) {
                    out.problems.push(format!(
                        "perfdata '{label}': metric name {} is already used by another datum, skipped",
                        d.metric
                    ));
                } else {
                    out.perfdata.push(d);
                }
            }
            Err(why) => out
                .problems
                .push(format!("perfdata '{label}': {why}, skipped")),
        }
    }
}

/// Reads a quoted label after its opening quote: the label (`''` is a quote) and what
/// follows the closing quote; `None` when it never closes.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut label = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                chars.next();
                label.push('\'');
            } else {
                return Some((label, &text[at + 1..]));
            }
        } else {
            label.push(c);
        }
    }
    None
}

/// One datum from its label and `value[UOM];[warn];[crit];[min];[max]`.
fn datum(label: &str, spec: &str) -> Result<PerfDatum, String> {
    if label.is_empty() {
        return Err("empty label".to_string());
    }
    let fields: Vec<&str> = spec.split(';').collect();
    if fields.len() > 5 {
        return Err(format!("`{}` has more than 5 fields", quote(spec)));
    }
    let field = |i: usize| fields.get(i).copied().filter(|f| !f.is_empty());
    let Some(raw_value) = field(0) else {
        return Err("no value".to_string());
    };
    if raw_value == "U" {
        return Err("value U (undetermined)".to_string());
    }
    let (value, unit) = number_with_unit(raw_value)?;
    let min = field(3).map(|f| bound(f, unit)).transpose()?;
    let max = field(4).map(|f| bound(f, unit)).transpose()?;
    let (thresholds, unmapped) = match map_thresholds(field(1), field(2), min, max) {
        Ok(t) => (t, None),
        Err(why) => (None, Some(why)),
    };
    Ok(PerfDatum {
        label: label.to_string(),
        metric: metric_name(label),
        value,
        unit: unit.to_string(),
        min,
        max,
        thresholds,
        unmapped,
    })
}

/// A finite number followed by one of the plugin API's units (or none).
fn number_with_unit(text: &str) -> Result<(f64, &str), String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value = number(digits).map_err(|_| format!("value `{}` is not a number", quote(text)))?;
    if !unit.is_empty() && !UNITS.contains(&unit) {
        return Err(format!(
            "unit `{}` is not one of the plugin API's ({})",
            quote(unit),
            UNITS.join(" ")
        ));
    }
    Ok((value, unit))
}

/// A min or max: a number, optionally in the value's own unit.
fn bound(text: &str, unit: &str) -> Result<f64, String> {
    let digits = text
        .strip_suffix(unit)
        .filter(|_| !unit.is_empty())
        .unwrap_or(text);
    number(digits).map_err(|_| format!("min/max `{}` is not a number", quote(text)))
}

/// A finite number in the C locale's notation; never NaN or infinite.
fn number(text: &str) -> Result<f64, ()> {
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
    {
        return Err(());
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or(())
}

/// The metric name made from a label: characters outside `[A-Za-z0-9_]` become `_`, runs of
/// `_` collapse, `_` is trimmed from both ends; a label of only `/` (check_disk's root mount)
/// is `root`; nothing left is `value`; a leading digit gets a `_` before it; at most
/// [`METRIC_NAME_CAP`] characters.
pub(crate) fn metric_name(label: &str) -> String {
    if !label.is_empty() && label.chars().all(|c| c == '/') {
        return "root".to_string();
    }
    let mut name = String::with_capacity(label.len());
    for c in label.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        };
        if !(c == '_' && name.ends_with('_')) {
            name.push(c);
        }
    }
    let name = name.trim_matches('_');
    let mut name = if name.is_empty() {
        "value".to_string()
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{name}")
    } else {
        name.to_string()
    };
    name.truncate(METRIC_NAME_CAP); // ASCII only by now
    while name.len() > 1 && name.ends_with('_') {
        name.pop();
    }
    name
}

/// A Nagios range: alert when the value is outside `start..=end`, or inside it with `@`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Range {
    /// `@`: alert inside the range instead of outside it.
    pub(crate) inside: bool,
    /// The lower end; `-inf` for `~`.
    pub(crate) start: f64,
    /// The upper end; `+inf` when omitted after the colon.
    pub(crate) end: f64,
}

/// Parses `[@][start:][end]`: `10` is 0..10, `10:` is 10..inf, `~:10` is -inf..10.
pub(crate) fn parse_range(text: &str) -> Result<Range, String> {
    let bad = || format!("range `{}` is not a Nagios range", quote(text));
    let (inside, body) = match text.strip_prefix('@') {
        Some(body) => (true, body),
        None => (false, text),
    };
    let (start, end) = match body.split_once(':') {
        Some((start, end)) => (
            match start {
                "~" => f64::NEG_INFINITY,
                "" => 0.0,
                s => number(s).map_err(|_| bad())?,
            },
            match end {
                "" | "~" => f64::INFINITY,
                e => number(e).map_err(|_| bad())?,
            },
        ),
        None => (0.0, number(body).map_err(|_| bad())?),
    };
    if start > end {
        return Err(format!("range `{}` starts after it ends", quote(text)));
    }
    Ok(Range { inside, start, end })
}

/// Where a one-sided range alerts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    /// At or above the bound ("higher is worse").
    Higher(f64),
    /// At or below the bound ("lower is worse").
    Lower(f64),
}

/// The one side on which `range` can alert, given the datum's `min` and `max`; `Ok(None)`
/// when it can never alert.
///
/// An end is out of reach when it is infinite or at/past `min`/`max`. Without a `min`, values
/// are taken as never negative (the API's units are all counts, sizes, times and percentages),
/// so a start of 0 is out of reach: `10` and `0:10` are "above 10". A plugin that gives a
/// negative `min` gets its range read as written.
///
/// Our thresholds alert AT the bound (`value >= critical`); Nagios alerts only PAST the end of
/// an alert-outside range (`value > 10` for `10`). So `procs=250;250` is unhealthy here and
/// OK to Nagios. `@` ranges include their ends in Nagios too, and map exactly.
fn one_sided(range: &Range, min: Option<f64>, max: Option<f64>) -> Result<Option<Side>, String> {
    let floor = range.start == f64::NEG_INFINITY
        || match min {
            Some(min) => range.start <= min,
            None => range.start == 0.0,
        };
    let ceiling = range.end == f64::INFINITY || max.is_some_and(|max| range.end >= max);
    match (range.inside, floor, ceiling) {
        (false, true, true) => Ok(None),
        (false, true, false) => Ok(Some(Side::Higher(range.end))),
        (false, false, true) => Ok(Some(Side::Lower(range.start))),
        (false, false, false) => Err(format!(
            "alerts below {} and above {} (two-sided)",
            range.start, range.end
        )),
        (true, true, true) => Err("alerts on every possible value".to_string()),
        (true, true, false) => Ok(Some(Side::Lower(range.end))),
        (true, false, true) => Ok(Some(Side::Higher(range.start))),
        (true, false, false) => Err(format!(
            "alerts inside {}..{}, away from both ends",
            range.start, range.end
        )),
    }
}

/// The thresholds of a datum's `warn` and `crit` ranges (either may be absent). `Ok(None)`:
/// no thresholds; `Err`: ranges our model cannot express, and why.
pub(crate) fn map_thresholds(
    warn: Option<&str>,
    crit: Option<&str>,
    min: Option<f64>,
    max: Option<f64>,
) -> Result<Option<Thresholds>, String> {
    let side = |which: &str, text: Option<&str>| -> Result<Option<Side>, String> {
        let Some(text) = text else { return Ok(None) };
        let range = parse_range(text).map_err(|e| format!("{which} {e}"))?;
        one_sided(&range, min, max).map_err(|e| format!("{which} range `{}` {e}", quote(text)))
    };
    let w = side("warning", warn)?;
    let c = side("critical", crit)?;
    use Side::{Higher, Lower};
    Ok(Some(match (w, c) {
        (None, None) => return Ok(None),
        // Warning only: a critical that is never reached.
        (Some(Higher(w)), None) => Thresholds::new(w, f64::MAX),
        (Some(Lower(w)), None) => Thresholds::new(w, f64::MIN),
        // Critical only, higher is worse: equal thresholds read as "higher is worse"
        // (`warning > critical` is false) and go straight from healthy to critical at `c`.
        (None, Some(Higher(c))) => Thresholds::new(c, c),
        // Critical only, lower is worse: equal thresholds would read as "higher is worse", so
        // the warning sits one float above: unhealthy only at exactly that value.
        (None, Some(Lower(c))) => Thresholds::new(c.next_up(), c),
        (Some(Higher(w)), Some(Higher(c))) if w <= c => Thresholds::new(w, c),
        (Some(Lower(w)), Some(Lower(c))) if w > c => Thresholds::new(w, c),
        (Some(Lower(w)), Some(Lower(c))) if w == c => Thresholds::new(c.next_up(), c),
        (Some(Higher(w)), Some(Higher(c))) => {
            return Err(format!(
                "warning {w} is above critical {c} (both alert above)"
            ));
        }
        (Some(Lower(w)), Some(Lower(c))) => {
            return Err(format!(
                "warning {w} is below critical {c} (both alert below)"
            ));
        }
        (Some(_), Some(_)) => {
            return Err("warning and critical alert on opposite sides".to_string());
        }
    }))
}

/// `text`, at most `cap` characters (the last one `…` when cut).
fn cap_chars(text: &str, cap: usize) -> String {
    if text.chars().count() <= cap {
        return text.to_string();
    }
    let mut kept: String = text.chars().take(cap.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

/// A bad token, short enough to quote in a problem.
fn quote(text: &str) -> String {
    cap_chars(text, QUOTE_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::plugin::run_plugin;
    use crate::model::HealthStatus;
    use std::time::Duration;

    /// Maps `warn;crit` with no min/max.
    fn map(warn: &str, crit: &str) -> Result<Option<Thresholds>, String> {
        map_mm(warn, crit, None, None)
    }

    fn map_mm(
        warn: &str,
        crit: &str,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<Option<Thresholds>, String> {
        map_thresholds(non_empty(warn), non_empty(crit), min, max)
    }

    fn non_empty(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }

    fn t(w: f64, c: f64) -> Result<Option<Thresholds>, String> {
        Ok(Some(Thresholds::new(w, c)))
    }

    /// The path of an installed plugin; fails the test when monitoring-plugins is missing.
    fn plugin(name: &str) -> String {
        let path = format!("/usr/lib/nagios/plugins/{name}");
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: install monitoring-plugins (apt-get install -y monitoring-plugins)"
        );
        path
    }

    fn run(command: &[&str]) -> String {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let run = run_plugin(&command, Duration::from_secs(20), 65536);
        assert!(
            run.exit_code.is_some(),
            "{command:?}: {:?} {}",
            run.failure,
            run.stderr
        );
        run.output
    }

    #[test]
    fn ranges_parse() {
        let r = |inside, start, end| Ok(Range { inside, start, end });
        assert_eq!(parse_range("10"), r(false, 0.0, 10.0));
        assert_eq!(parse_range("10:"), r(false, 10.0, f64::INFINITY));
        assert_eq!(parse_range("~:10"), r(false, f64::NEG_INFINITY, 10.0));
        assert_eq!(parse_range("10:20"), r(false, 10.0, 20.0));
        assert_eq!(parse_range("@10:20"), r(true, 10.0, 20.0));
        assert_eq!(parse_range("10:~"), r(false, 10.0, f64::INFINITY));
        assert_eq!(parse_range("-5.5:2e1"), r(false, -5.5, 20.0));
        assert_eq!(parse_range(":7"), r(false, 0.0, 7.0));
        for bad in ["", "@", "abc", "20:10", "1:2:3", "inf", "nan", "10s", "~"] {
            assert!(parse_range(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn one_sided_ranges_map_to_thresholds() {
        // N, ~:N, 0:N: higher is worse at N.
        assert_eq!(map("10", "20"), t(10.0, 20.0));
        assert_eq!(map("~:10", "~:20"), t(10.0, 20.0));
        assert_eq!(map("0:10", "0:20"), t(10.0, 20.0));
        // N:, N:~: lower is worse at N.
        assert_eq!(map("20:", "10:"), t(20.0, 10.0));
        assert_eq!(map("20:~", "10:~"), t(20.0, 10.0));
        let low = Thresholds::new(20.0, 10.0);
        assert_eq!(low.status(25.0), HealthStatus::Healthy);
        assert_eq!(low.status(15.0), HealthStatus::Unhealthy);
        assert_eq!(low.status(5.0), HealthStatus::Critical);
    }

    #[test]
    fn two_sided_ranges_map_only_when_one_side_is_out_of_reach() {
        // Alert outside 10..20 with nothing known: two-sided.
        let err = map("10:20", "").unwrap_err();
        assert!(err.contains("two-sided"), "{err}");
        // Its start is at the min: only the top can be breached.
        assert_eq!(map_mm("10:20", "10:30", Some(10.0), None), t(20.0, 30.0));
        // Its end is at the max: only the bottom can be breached.
        assert_eq!(map_mm("30:100", "20:100", None, Some(100.0)), t(30.0, 20.0));
        // A negative min makes 0..N two-sided again.
        assert!(map_mm("10", "", Some(-40.0), None).is_err());
        // Out of reach on both sides: it never alerts, no thresholds, no complaint.
        assert_eq!(map_mm("0", "0", Some(0.0), Some(0.0)), Ok(None));
        assert_eq!(map_mm("0:100", "", None, Some(100.0)), Ok(None));
    }

    #[test]
    fn inside_ranges_map_when_they_touch_an_end() {
        let err = map("@10:20", "").unwrap_err();
        assert!(err.contains("away from both ends"), "{err}");
        // Touches the max: alert at or above the start.
        assert_eq!(
            map_mm("@80:100", "@90:100", None, Some(100.0)),
            t(80.0, 90.0)
        );
        assert_eq!(map("@80:", "@90:"), t(80.0, 90.0));
        // Touches the min: alert at or below the end.
        assert_eq!(map_mm("@0:20", "@0:10", Some(0.0), None), t(20.0, 10.0));
        assert_eq!(map("@~:20", "@~:10"), t(20.0, 10.0));
        assert_eq!(map("@20", "@10"), t(20.0, 10.0)); // @0:N, values taken as never negative
        assert!(
            map_mm("@0:100", "", Some(0.0), Some(100.0)).is_err(),
            "alerts on everything"
        );
    }

    #[test]
    fn warning_or_critical_alone() {
        // Warning only: never critical.
        assert_eq!(map("10", ""), t(10.0, f64::MAX));
        assert_eq!(map("10:", ""), t(10.0, f64::MIN));
        let w = Thresholds::new(10.0, f64::MAX);
        assert_eq!(w.status(1e300), HealthStatus::Unhealthy);
        assert_eq!(
            Thresholds::new(10.0, f64::MIN).status(-1e300),
            HealthStatus::Unhealthy
        );
        // Critical only, higher is worse: equal thresholds, which Thresholds::status reads as
        // higher-is-worse with no unhealthy band.
        assert_eq!(map("", "20"), t(20.0, 20.0));
        let c = Thresholds::new(20.0, 20.0);
        assert!(!c.lower_is_worse());
        assert_eq!(c.status(19.9), HealthStatus::Healthy);
        assert_eq!(c.status(20.0), HealthStatus::Critical);
        assert_eq!(c.status(25.0), HealthStatus::Critical);
        // Critical only, lower is worse: warning one float above.
        let c = map("", "5:").unwrap().unwrap();
        assert!(c.lower_is_worse());
        assert_eq!(c.critical, 5.0);
        assert!(c.warning > 5.0 && c.warning < 5.000001);
        assert_eq!(c.status(5.1), HealthStatus::Healthy);
        assert_eq!(c.status(5.0), HealthStatus::Critical);
        assert_eq!(c.status(1.0), HealthStatus::Critical);
        // Equal lower-is-worse pair: same treatment.
        let c = map("5:", "5:").unwrap().unwrap();
        assert!(c.lower_is_worse());
        assert_eq!(c.status(4.0), HealthStatus::Critical);
        // Vacuous warning with a real critical: critical only.
        assert_eq!(map_mm("0:100", "90", None, Some(100.0)), t(90.0, 90.0));
    }

    #[test]
    fn ranges_that_do_not_combine_are_unmapped() {
        assert!(map("20", "10").unwrap_err().contains("above critical"));
        assert!(map("10:", "20:").unwrap_err().contains("below critical"));
        assert!(map("10", "20:").unwrap_err().contains("opposite sides"));
        assert!(map("x", "10").unwrap_err().starts_with("warning range"));
        let out = parse_output("OK | a=5;20;10 b=5;10:20;30");
        assert_eq!(
            out.perfdata.len(),
            2,
            "the data stay, only their thresholds go"
        );
        assert!(
            out.perfdata
                .iter()
                .all(|d| d.thresholds.is_none() && d.unmapped.is_some())
        );
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems[0].starts_with("perfdata 'a': warning 20 is above critical 10"));
        assert!(out.problems[1].contains("two-sided"), "{:?}", out.problems);
    }

    #[test]
    fn first_line_summary_and_perfdata() {
        let out = parse_output("  DISK OK - fine;| a=1 b=2.5s;3;4;0;10  c=-3%\n");
        assert_eq!(out.summary, "DISK OK - fine;");
        assert_eq!(out.problems, Vec::<String>::new());
        let got: Vec<(&str, f64, &str)> = out
            .perfdata
            .iter()
            .map(|d| (d.metric.as_str(), d.value, d.unit.as_str()))
            .collect();
        assert_eq!(got, [("a", 1.0, ""), ("b", 2.5, "s"), ("c", -3.0, "%")]);
        let b = &out.perfdata[1];
        assert_eq!((b.min, b.max), (Some(0.0), Some(10.0)));
        assert_eq!(b.thresholds, Some(Thresholds::new(3.0, 4.0)));
        assert_eq!(b.unmapped, None);
    }

    #[test]
    fn perfdata_on_later_lines() {
        let out = parse_output(
            "OK - all fine | first=1\nlong text line 1\nline 2 | second=2;5;9\nthird=3c\n'fourth one'=4B\n",
        );
        assert_eq!(out.summary, "OK - all fine");
        let names: Vec<&str> = out.perfdata.iter().map(|d| d.metric.as_str()).collect();
        assert_eq!(names, ["first", "second", "third", "fourth_one"]);
        assert_eq!(out.problems, Vec::<String>::new());
        // Long text before the later `|` is not perfdata, and with no `|` at all there is none.
        let out = parse_output("OK - text\nmore=1 text\n");
        assert!(out.perfdata.is_empty());
        assert!(out.problems.is_empty());
        let out = parse_output("OK\nlong\n| x=1\ny=2 | z=3");
        let names: Vec<&str> = out.perfdata.iter().map(|d| d.metric.as_str()).collect();
        assert_eq!(names, ["x", "y", "z"]);
        // A second `|` in the later perfdata is just a bad token.
        assert_eq!(out.problems, ["perfdata `|`: not label=value, skipped"]);
    }

    #[test]
    fn quoted_labels() {
        let out = parse_output("OK | 'free space'=1 'it''s'=2 'a=b c'=3 ''''=4 'x'y=5 'open=6");
        let labels: Vec<(&str, &str)> = out
            .perfdata
            .iter()
            .map(|d| (d.label.as_str(), d.metric.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("free space", "free_space"),
                ("it's", "it_s"),
                ("a=b c", "a_b_c"),
                ("'", "value")
            ]
        );
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(
            out.problems[0].contains("not label=value"),
            "{:?}",
            out.problems
        );
        assert!(
            out.problems[1].contains("unterminated"),
            "{:?}",
            out.problems
        );
    }

    #[test]
    fn units() {
        let out =
            parse_output("OK | a=1 b=2s c=3ms d=4us e=5% f=6B g=7KB h=8MB i=9GB j=10TB k=11c");
        let units: Vec<&str> = out.perfdata.iter().map(|d| d.unit.as_str()).collect();
        assert_eq!(
            units,
            ["", "s", "ms", "us", "%", "B", "KB", "MB", "GB", "TB", "c"]
        );
        let values: Vec<f64> = out.perfdata.iter().map(|d| d.value).collect();
        assert_eq!(
            values,
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
        );
        assert!(out.problems.is_empty());
        let out = parse_output("OK | a=1MiB b=2 c=3bytes d=4.5e-3s");
        let names: Vec<&str> = out.perfdata.iter().map(|d| d.metric.as_str()).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(out.perfdata[1].value, 0.0045);
        assert_eq!(out.problems.len(), 2);
        assert!(out.problems[0].contains("unit `MiB`"), "{:?}", out.problems);
    }

    #[test]
    fn undetermined_and_malformed_data_are_skipped_and_the_rest_kept() {
        let out = parse_output(
            "WARNING - x | good1=1 u=U bare =5 novalue= nan=NaN inf=inf big=1e999 x=1,5 \
             six=1;2;3;4;5;6 good2=2;;;0 badmin=3;;;zero good3=3",
        );
        let names: Vec<&str> = out.perfdata.iter().map(|d| d.metric.as_str()).collect();
        assert_eq!(names, ["good1", "good2", "good3"]);
        assert!(out.perfdata.iter().all(|d| d.value.is_finite()));
        let expect = [
            "perfdata 'u': value U (undetermined), skipped",
            "perfdata `bare`: not label=value, skipped",
            "perfdata '': empty label, skipped",
            "perfdata 'novalue': no value, skipped",
            "perfdata 'nan': value `NaN` is not a number, skipped",
            "perfdata 'inf': value `inf` is not a number, skipped",
            "perfdata 'big': value `1e999` is not a number, skipped",
            "perfdata 'x': unit `,5` is not one of the plugin API's (ms us KB MB GB TB s % B c), skipped",
            "perfdata 'six': `1;2;3;4;5;6` has more than 5 fields, skipped",
            "perfdata 'badmin': min/max `zero` is not a number, skipped",
        ];
        assert_eq!(out.problems, expect);
    }

    #[test]
    fn metric_names_are_sanitized() {
        assert_eq!(metric_name("/"), "root");
        assert_eq!(metric_name("//"), "root");
        assert_eq!(metric_name("/boot"), "boot");
        assert_eq!(metric_name("/var/lib/docker"), "var_lib_docker");
        assert_eq!(metric_name("time"), "time");
        assert_eq!(metric_name("a  -- b__c"), "a_b_c");
        assert_eq!(metric_name("__x__"), "x");
        assert_eq!(metric_name("%%"), "value");
        assert_eq!(metric_name("1min"), "_1min");
        assert_eq!(metric_name("/1"), "_1");
        assert_eq!(metric_name("déjà vu"), "d_j_vu");
        assert_eq!(metric_name(&"a".repeat(150)).len(), METRIC_NAME_CAP);
        let name = metric_name(&format!("{}/b", "a".repeat(99)));
        assert_eq!(name, "a".repeat(99), "no trailing `_` after the cut");
    }

    #[test]
    fn built_in_and_duplicate_names_are_refused() {
        let out = parse_output("OK | check_status=1 'cpu usage percent'=2 ok=3 /x=4 x=5");
        let names: Vec<&str> = out.perfdata.iter().map(|d| d.metric.as_str()).collect();
        assert_eq!(names, ["ok", "x"]);
        assert_eq!(
            out.problems,
            [
                "perfdata 'check_status': metric name check_status is a built-in metric, skipped",
                "perfdata 'cpu usage percent': metric name cpu_usage_percent is a built-in metric, skipped",
                "perfdata 'x': metric name x is already used by another datum, skipped",
            ]
        );
    }

    #[test]
    fn summary_is_capped_and_empty_output_is_empty() {
        let out = parse_output(&format!("{}|a=1", "é".repeat(600)));
        assert_eq!(out.summary.chars().count(), SUMMARY_CAP);
        assert!(out.summary.ends_with('…'));
        assert_eq!(out.perfdata.len(), 1);
        assert_eq!(parse_output(""), PluginOutput::default());
        assert_eq!(parse_output("OK\r\n").summary, "OK");
    }

    #[test]
    fn real_check_tcp_output() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let text = run(&[
            &plugin("check_tcp"),
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "-w",
            "1",
            "-c",
            "2",
        ]);
        // TCP OK - 0.000 second response time on 127.0.0.1 port N|time=0.000122s;1.000000;2.000000;0.000000;10.000000
        let out = parse_output(&text);
        assert!(out.summary.starts_with("TCP OK - "), "{text}");
        assert_eq!(out.problems, Vec::<String>::new(), "{text}");
        assert_eq!(out.perfdata.len(), 1, "{text}");
        let time = &out.perfdata[0];
        assert_eq!((time.metric.as_str(), time.unit.as_str()), ("time", "s"));
        assert!(time.value >= 0.0 && time.value < 2.0, "{text}");
        assert_eq!((time.min, time.max), (Some(0.0), Some(10.0)));
        assert_eq!(time.thresholds, Some(Thresholds::new(1.0, 2.0)));
    }

    #[test]
    fn real_check_disk_output() {
        let text = run(&[&plugin("check_disk"), "-w", "20%", "-c", "10%", "-p", "/"]);
        // DISK OK - free space: / 68548MiB (73% inode=96%);| /=25694306304B;216442024755;243497277849;0;270552530944
        let out = parse_output(&text);
        assert!(out.summary.starts_with("DISK "), "{text}");
        assert_eq!(out.problems, Vec::<String>::new(), "{text}");
        let root = out.perfdata.iter().find(|d| d.label == "/").expect(&text);
        assert_eq!((root.metric.as_str(), root.unit.as_str()), ("root", "B"));
        let (min, max) = (root.min.unwrap(), root.max.unwrap());
        assert_eq!(min, 0.0);
        assert!(root.value >= min && root.value <= max, "{text}");
        let t = root.thresholds.expect(&text);
        // Used bytes: warn at 80 % of the size, critical at 90 %, higher is worse.
        assert!(
            !t.lower_is_worse() && t.warning < t.critical && t.critical < max,
            "{t:?}"
        );
        assert!((t.warning / max - 0.8).abs() < 0.01, "{t:?} of {max}");
    }

    #[test]
    fn real_check_procs_output() {
        let text = run(&[&plugin("check_procs"), "-w", "250", "-c", "400"]);
        // PROCS OK: 66 processes | procs=66;250;400;0;
        let out = parse_output(&text);
        assert!(out.summary.starts_with("PROCS "), "{text}");
        assert_eq!(out.problems, Vec::<String>::new(), "{text}");
        assert_eq!(out.perfdata.len(), 1, "{text}");
        let procs = &out.perfdata[0];
        assert_eq!((procs.metric.as_str(), procs.unit.as_str()), ("procs", ""));
        assert!(procs.value >= 1.0, "{text}");
        assert_eq!((procs.min, procs.max), (Some(0.0), None));
        assert_eq!(procs.thresholds, Some(Thresholds::new(250.0, 400.0)));
        // Nothing in the text of the count but digits: the summary holds the same number.
        assert!(
            out.summary.contains(&format!("{} process", procs.value)),
            "{text}"
        );
    }
}
