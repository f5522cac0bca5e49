//! Nagios-compatible checks: plugins run on a schedule, their exit code and perfdata turned
//! into measurements.
//!
//! [`plugin`] runs a plugin (own process group, cleared environment, time cap, bounded
//! output, a process-wide limit on plugins at once); [`perfdata`] parses its output (plugin
//! API v3); [`CheckProbe`] turns both into `check_status`, `check_duration_ms` and one
//! measurement per perfdatum.

mod perfdata;
pub(crate) mod plugin;

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use crate::catalog;
use crate::collect::Probe;
use crate::model::{Judgement, Measurement, ResourceType};

use perfdata::{PluginOutput, parse_output};
use plugin::{PluginRun, run_plugin};

/// How much of a plugin's stdout is read; the rest is drained and discarded.
const OUTPUT_CAP: usize = 64 * 1024;
/// How many distinct problems a probe remembers (and logs); past that they are not logged.
const MAX_LOGGED_PROBLEMS: usize = 64;
/// How much of stderr's first line an alert message quotes.
const STDERR_QUOTE_CAP: usize = 200;

/// Runs one check's plugin each cycle.
pub(crate) struct CheckProbe {
    /// The check's name, for logs.
    name: String,
    /// Where its readings are stored: the resource type...
    resource_type: ResourceType,
    /// ...and the resource id.
    resource_id: String,
    /// The plugin and its arguments, run without a shell.
    command: Vec<String>,
    /// How long a run may take, waiting for a free slot included.
    timeout: Duration,
    /// The problems already logged: each is logged once.
    logged: HashSet<String>,
}

impl CheckProbe {
    /// The probe of check `name`, storing its readings on `resource_type/resource_id`.
    pub(crate) fn new(
        name: &str,
        resource_type: ResourceType,
        resource_id: &str,
        command: Vec<String>,
        timeout: Duration,
    ) -> Self {
        CheckProbe {
            name: name.to_string(),
            resource_type,
            resource_id: resource_id.to_string(),
            command,
            timeout,
            logged: HashSet::new(),
        }
    }

    /// Logs `problem` unless it was logged before (at most [`MAX_LOGGED_PROBLEMS`] of them).
    fn warn_once(&mut self, problem: String) {
        if self.logged.len() > MAX_LOGGED_PROBLEMS || self.logged.contains(&problem) {
            return;
        }
        if self.logged.len() == MAX_LOGGED_PROBLEMS {
            tracing::warn!(
                check = %self.name,
                "check {}: more distinct problems with its output; no more are logged",
                self.name
            );
            self.logged.insert(String::new());
            return;
        }
        tracing::warn!(check = %self.name, "check {}: {problem}", self.name);
        self.logged.insert(problem);
    }
}

impl Probe for CheckProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let run = run_plugin(&self.command, self.timeout, OUTPUT_CAP);
        let (readings, problems) = readings(self.resource_type, &self.resource_id, &run);
        for problem in problems {
            self.warn_once(problem);
        }
        readings
    }
}

/// The name of a plugin state.
fn state_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "WARNING",
        2 => "CRITICAL",
        _ => "UNKNOWN",
    }
}

/// The measurements of one run, and the problems with its output.
fn readings(
    resource_type: ResourceType,
    resource_id: &str,
    run: &PluginRun,
) -> (Vec<Measurement>, Vec<String>) {
    let mut problems = Vec::new();
    let stderr = stderr_line(&run.stderr);
    let with_stderr = |note: String| match &stderr {
        Some(line) => format!("{note}; stderr: {line}"),
        None => note,
    };
    let mut parsed = PluginOutput::default();
    let (value, note) = match (run.exit_code, &run.failure) {
        (Some(code @ 0..=3), _) => {
            parsed = parse_output(usable_output(run));
            if run.truncated_bytes > 0 {
                problems.push(format!(
                    "output longer than {OUTPUT_CAP} bytes; the rest, and any perfdata in it, was discarded"
                ));
            }
            let value = if code == 3 {
                catalog::CHECK_UNKNOWN_VALUE
            } else {
                f64::from(code)
            };
            let note = if !parsed.summary.is_empty() {
                parsed.summary.clone()
            } else if run.output.trim().is_empty() {
                with_stderr(format!("{}: plugin printed nothing", state_name(code)))
            } else {
                with_stderr(format!(
                    "{}: plugin printed no status text",
                    state_name(code)
                ))
            };
            (value, note)
        }
        (Some(code), _) => {
            let summary = parse_output(usable_output(run)).summary;
            let note = format!("UNKNOWN: exit code {code} is not a plugin state");
            let note = if summary.is_empty() {
                with_stderr(note)
            } else {
                format!("{note}: {summary}")
            };
            (catalog::CHECK_UNKNOWN_VALUE, note)
        }
        (None, failure) => {
            let why = failure.as_deref().unwrap_or("no exit code");
            (
                catalog::CHECK_UNKNOWN_VALUE,
                with_stderr(format!("UNKNOWN: {why}")),
            )
        }
    };
    problems.append(&mut parsed.problems);

    let mut status = Measurement::now(
        resource_type,
        resource_id,
        catalog::CHECK_STATUS,
        value,
        catalog::UNIT_STATE,
    );
    status.note = Some(note);
    let timestamp = status.timestamp;
    let mut duration = Measurement::now(
        resource_type,
        resource_id,
        catalog::CHECK_DURATION_MS,
        run.duration.as_secs_f64() * 1000.0,
        catalog::UNIT_MS,
    )
    .judged(Judgement::Informational);
    duration.timestamp = timestamp;

    let mut out = Vec::with_capacity(2 + parsed.perfdata.len());
    out.push(status);
    out.push(duration);
    for datum in parsed.perfdata {
        // The plugin API's "no unit" is a number of things.
        let unit = if datum.unit.is_empty() {
            Cow::Borrowed(catalog::UNIT_COUNT)
        } else {
            Cow::Owned(datum.unit)
        };
        out.push(Measurement {
            resource_type,
            resource_id: resource_id.to_string(),
            metric_name: Cow::Owned(datum.metric),
            value: datum.value,
            unit,
            timestamp,
            judgement: Judgement::Alerts,
            thresholds: datum.thresholds,
            note: None,
        });
    }
    (out, problems)
}

/// The output to parse: when it was cut at the cap, without its last, partial, perfdata token
/// (a datum cut in its value would parse as a wrong number).
fn usable_output(run: &PluginRun) -> &str {
    let text = run.output.as_str();
    if run.truncated_bytes == 0 {
        return text;
    }
    match (text.find('|'), text.rfind(char::is_whitespace)) {
        (Some(bar), Some(space)) if space > bar => &text[..space],
        (Some(bar), _) => &text[..bar],
        _ => text,
    }
}

/// The first non-blank line of stderr, trimmed and capped, to explain a failure.
fn stderr_line(stderr: &str) -> Option<String> {
    let line = stderr.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(if line.chars().count() > STDERR_QUOTE_CAP {
        let mut kept: String = line.chars().take(STDERR_QUOTE_CAP - 1).collect();
        kept.push('…');
        kept
    } else {
        line.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Thresholds;
    use std::os::unix::fs::PermissionsExt;

    const CHECK_TCP: &str = "/usr/lib/nagios/plugins/check_tcp";

    fn check_tcp() -> String {
        assert!(
            std::path::Path::new(CHECK_TCP).exists(),
            "{CHECK_TCP} is missing: install monitoring-plugins (apt-get install -y monitoring-plugins)"
        );
        CHECK_TCP.to_string()
    }

    fn find<'a>(ms: &'a [Measurement], name: &str) -> &'a Measurement {
        ms.iter()
            .find(|m| m.metric_name == name)
            .unwrap_or_else(|| panic!("no {name} in {ms:?}"))
    }

    fn probe(command: Vec<String>, timeout: Duration) -> CheckProbe {
        CheckProbe::new("web", ResourceType::Check, "web", command, timeout)
    }

    fn ran(exit_code: Option<i32>, output: &str, failure: Option<&str>) -> PluginRun {
        PluginRun {
            exit_code,
            output: output.to_string(),
            failure: failure.map(str::to_string),
            duration: Duration::from_millis(12),
            ..PluginRun::default()
        }
    }

    fn status_and_note(run: &PluginRun) -> (f64, String) {
        let (ms, _) = readings(ResourceType::Check, "web", run);
        let status = find(&ms, catalog::CHECK_STATUS);
        (status.value, status.note.clone().unwrap())
    }

    #[test]
    fn check_tcp_against_a_listener_then_without_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let command = vec![
            check_tcp(),
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.clone(),
        ];
        let mut probe = probe(command, Duration::from_secs(10));

        let ms = probe.measure();
        let status = find(&ms, catalog::CHECK_STATUS);
        assert_eq!(status.value, 0.0, "{ms:?}");
        assert_eq!(status.unit, catalog::UNIT_STATE);
        assert_eq!(
            (status.resource_type, status.resource_id.as_str()),
            (ResourceType::Check, "web")
        );
        let note = status.note.as_deref().unwrap();
        assert!(note.starts_with("TCP OK - "), "{note}");
        assert!(note.contains(&format!("port {port}")), "{note}");
        let time = find(&ms, "time");
        assert_eq!(time.unit, "s");
        assert!(time.value >= 0.0 && time.value < 10.0);
        assert_eq!(time.judgement, Judgement::Alerts);
        assert_eq!(time.thresholds, None, "check_tcp without -w/-c gives none");
        let duration = find(&ms, catalog::CHECK_DURATION_MS);
        assert_eq!(duration.unit, catalog::UNIT_MS);
        assert_eq!(duration.judgement, Judgement::Informational);
        assert!(duration.value > 0.0 && duration.value < 10_000.0);
        assert_eq!(ms.len(), 3, "{ms:?}");
        assert!(probe.logged.is_empty(), "{:?}", probe.logged);

        drop(listener);
        let ms = probe.measure();
        let status = find(&ms, catalog::CHECK_STATUS);
        assert_eq!(status.value, 2.0, "{ms:?}");
        let note = status.note.as_deref().unwrap();
        // connect to address 127.0.0.1 and port N: Connection refused
        assert!(
            note.starts_with("connect to address 127.0.0.1 and port"),
            "{note}"
        );
        assert!(note.contains("Connection refused"), "{note}");
    }

    #[test]
    fn check_tcp_thresholds_reach_the_measurement() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let command: Vec<String> = [
            CHECK_TCP,
            "-H",
            "127.0.0.1",
            "-p",
            &port,
            "-w",
            "2",
            "-c",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        check_tcp();
        let ms = probe(command, Duration::from_secs(10)).measure();
        assert_eq!(
            find(&ms, "time").thresholds,
            Some(Thresholds::new(2.0, 5.0))
        );
    }

    #[test]
    fn exit_codes_map_to_status_values() {
        assert_eq!(
            status_and_note(&ran(Some(0), "OK - fine", None)),
            (0.0, "OK - fine".into())
        );
        assert_eq!(
            status_and_note(&ran(Some(1), "WARNING - meh\n", None)),
            (1.0, "WARNING - meh".into())
        );
        assert_eq!(
            status_and_note(&ran(Some(2), "CRITICAL - bad|x=1", None)),
            (2.0, "CRITICAL - bad".into())
        );
        assert_eq!(
            status_and_note(&ran(Some(3), "UNKNOWN - what", None)),
            (catalog::CHECK_UNKNOWN_VALUE, "UNKNOWN - what".into())
        );
        assert_eq!(
            status_and_note(&ran(Some(42), "", None)),
            (
                catalog::CHECK_UNKNOWN_VALUE,
                "UNKNOWN: exit code 42 is not a plugin state".into()
            )
        );
        assert_eq!(
            status_and_note(&ran(Some(127), "oops | a=1", None)).1,
            "UNKNOWN: exit code 127 is not a plugin state: oops"
        );
        let (ms, _) = readings(ResourceType::Check, "web", &ran(Some(42), "x | a=1", None));
        assert_eq!(
            ms.len(),
            2,
            "no perfdata from a plugin that is not speaking the API"
        );
    }

    #[test]
    fn failures_are_unknown_with_their_reason() {
        assert_eq!(
            status_and_note(&ran(
                None,
                "",
                Some("timed out after 10 s, process group killed")
            )),
            (
                catalog::CHECK_UNKNOWN_VALUE,
                "UNKNOWN: timed out after 10 s, process group killed".into()
            )
        );
        let mut run = ran(None, "", Some("killed by signal 15 (SIGTERM)"));
        run.stderr = "\n  dying now  \nmore\n".into();
        assert_eq!(
            status_and_note(&run).1,
            "UNKNOWN: killed by signal 15 (SIGTERM); stderr: dying now"
        );
    }

    #[test]
    fn empty_output_says_so() {
        assert_eq!(
            status_and_note(&ran(Some(2), "", None)),
            (2.0, "CRITICAL: plugin printed nothing".into())
        );
        let mut run = ran(Some(3), "\n", None);
        run.stderr = "usage: check_x -H host".into();
        assert_eq!(
            status_and_note(&run).1,
            "UNKNOWN: plugin printed nothing; stderr: usage: check_x -H host"
        );
        assert_eq!(
            status_and_note(&ran(Some(0), "| a=1", None)).1,
            "OK: plugin printed no status text"
        );
    }

    #[test]
    fn perfdata_become_measurements() {
        let run = ran(
            Some(1),
            "DISK WARNING | /=80%;70;90;0;100 procs=5;;10 u=U\nlong\n",
            None,
        );
        let (ms, problems) = readings(ResourceType::Filesystem, "host1", &run);
        let root = find(&ms, "root");
        assert_eq!((root.value, root.unit.as_ref()), (80.0, "%"));
        assert_eq!(root.thresholds, Some(Thresholds::new(70.0, 90.0)));
        assert_eq!(
            (root.resource_type, root.resource_id.as_str()),
            (ResourceType::Filesystem, "host1")
        );
        assert!(matches!(root.metric_name, Cow::Owned(_)));
        let procs = find(&ms, "procs");
        assert_eq!(
            procs.unit,
            catalog::UNIT_COUNT,
            "no unit is a count of things"
        );
        assert_eq!(procs.thresholds, Some(Thresholds::new(10.0, 10.0)));
        assert_eq!(ms.len(), 4);
        assert!(ms.iter().all(|m| m.timestamp == ms[0].timestamp));
        assert_eq!(problems, ["perfdata 'u': value U (undetermined), skipped"]);
    }

    #[test]
    fn truncated_output_drops_its_partial_datum_and_is_a_problem() {
        let mut run = ran(Some(0), "OK | a=1 b=2 c=12", None);
        run.truncated_bytes = 100;
        let (ms, problems) = readings(ResourceType::Check, "web", &run);
        assert!(
            ms.iter().all(|m| m.metric_name != "c"),
            "c=12 may have been c=123"
        );
        assert_eq!(find(&ms, "b").value, 2.0);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("output longer than 65536 bytes"),
            "{problems:?}"
        );
    }

    #[test]
    fn problems_are_logged_once_each() {
        let mut probe = probe(vec![], Duration::from_secs(1));
        probe.warn_once("a".into());
        probe.warn_once("a".into());
        probe.warn_once("b".into());
        assert_eq!(probe.logged.len(), 2);
        for i in 0..200 {
            probe.warn_once(format!("p{i}"));
        }
        assert_eq!(probe.logged.len(), MAX_LOGGED_PROBLEMS + 1, "bounded");
    }

    #[test]
    fn measure_runs_a_real_plugin_script_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("check_slow");
        std::fs::write(&path, "#!/bin/sh\necho 'never'\nsleep 30\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut slow = probe(
            vec![path.to_string_lossy().into_owned()],
            Duration::from_millis(500),
        );
        let ms = slow.measure();
        let status = find(&ms, catalog::CHECK_STATUS);
        assert_eq!(status.value, catalog::CHECK_UNKNOWN_VALUE);
        assert_eq!(
            status.note.as_deref(),
            Some("UNKNOWN: timed out after 0.5 s, process group killed")
        );
        let took = find(&ms, catalog::CHECK_DURATION_MS).value;
        assert!((450.0..1500.0).contains(&took), "{took}");

        let ms = probe(vec!["/x".into()], Duration::from_secs(1)).measure();
        assert_eq!(
            find(&ms, catalog::CHECK_STATUS).note.as_deref(),
            Some("UNKNOWN: cannot run /x: No such file or directory")
        );
    }
}
