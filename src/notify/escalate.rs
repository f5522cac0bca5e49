//! The Gas Town sink: escalates alerts to the orchestrator's overseer with `gt escalate`.
//!
//! An escalation pages a person, so unlike the other sinks this one does not pass on every
//! notice: only the first `firing` notice of an alert at or above `min_severity` runs
//! `gt escalate -s LEVEL SUMMARY -r DETAILS --source health-monitor:TYPE:ID`. Reminders and
//! resolutions never do. An alert that fired below `min_severity` escalates when it rises to it
//! (which comes as a new `firing` notice), and only then.
//!
//! `gt` runs like an exec hook, through [`run_hook`]: directly, never through a shell, in its
//! own process group that a timeout kills. Like a hook it also gets the notice on stdin and as
//! `HEALTH_MONITOR_*` variables, which `gt escalate` has no use for.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::dispatch::{Filter, Sink};
use super::exec::run_hook;
use super::{Notice, NoticeState};
use crate::alerts::format_number;
use crate::config::outputs::{EscalateSink, ExecSink};
use crate::model::{HealthStatus, format_timestamp};

/// How many escalated alerts the sink remembers. An alert is forgotten when its resolved notice
/// arrives, so the cap only matters when those go missing (a resolution under a silence is
/// never sent); then the alert escalated longest ago is forgotten first.
pub const ESCALATED_LIMIT: usize = 10_000;

/// The longest summary, in characters: it is the escalation's title, read at a glance.
pub const SUMMARY_CHARS: usize = 300;

/// The longest value on one `key: value` line of the details, in characters.
const VALUE_CHARS: usize = 300;

/// Where `execvp` looks for a program when `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The `gt escalate -s` level for an alert's severity: critical → `critical`, unhealthy →
/// `high`, degraded → `medium`. `None` for healthy and unknown, which are nothing to escalate.
pub fn gt_severity(severity: HealthStatus) -> Option<&'static str> {
    match severity {
        HealthStatus::Critical => Some("critical"),
        HealthStatus::Unhealthy => Some("high"),
        HealthStatus::Degraded => Some("medium"),
        HealthStatus::Healthy | HealthStatus::Unknown => None,
    }
}

/// The level an alert of `severity` escalates with, when it is at or above `min_severity`.
fn escalates_at(min_severity: HealthStatus, severity: HealthStatus) -> Option<&'static str> {
    gt_severity(severity).filter(|_| severity >= min_severity)
}

/// True when `notice` is worth a slot in the sink's queue: a firing notice that may escalate
/// at `min_severity`, or a resolution (which lets the sink forget the alert). Reminders and
/// firing notices below the minimum never do anything, so they are not queued at all.
pub fn worth_queueing(min_severity: HealthStatus, notice: &Notice) -> bool {
    match notice.state {
        NoticeState::Firing => escalates_at(min_severity, notice.severity).is_some(),
        NoticeState::Resolved => true,
        NoticeState::Reminder => false,
    }
}

/// Which alert a notice is about: its row id, or its stream key for an alert never stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum AlertKey {
    Id(i64),
    Stream(String),
}

impl AlertKey {
    fn of(notice: &Notice) -> AlertKey {
        match notice.id {
            Some(id) => AlertKey::Id(id),
            None => AlertKey::Stream(notice.key()),
        }
    }
}

/// The alerts escalated so far, bounded: past `cap` the one escalated longest ago goes.
#[derive(Debug)]
struct Escalated {
    cap: usize,
    /// Counts insertions; an alert's number orders it by age.
    next: u64,
    by_key: HashMap<AlertKey, u64>,
    by_age: BTreeMap<u64, AlertKey>,
}

impl Escalated {
    fn new(cap: usize) -> Self {
        Escalated {
            cap: cap.max(1),
            next: 0,
            by_key: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    fn contains(&self, key: &AlertKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Remembers `key` (keeping its age if it is known already), forgetting the oldest past the cap.
    fn insert(&mut self, key: AlertKey) {
        if self.contains(&key) {
            return;
        }
        self.next += 1;
        self.by_key.insert(key.clone(), self.next);
        self.by_age.insert(self.next, key);
        while self.by_key.len() > self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_key.remove(&oldest);
        }
    }

    fn forget(&mut self, key: &AlertKey) {
        if let Some(age) = self.by_key.remove(key) {
            self.by_age.remove(&age);
        }
    }
}

/// What the sink does with one notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Run `gt escalate -s LEVEL ...`.
    Escalate(&'static str),
    /// The alert is over: forget it was escalated.
    Forget,
    /// Nothing to do: a reminder, below the minimum, or escalated already.
    Skip,
}

fn plan(escalated: &Escalated, min_severity: HealthStatus, notice: &Notice) -> Plan {
    match notice.state {
        NoticeState::Firing => match escalates_at(min_severity, notice.severity) {
            Some(level) if !escalated.contains(&AlertKey::of(notice)) => Plan::Escalate(level),
            _ => Plan::Skip,
        },
        NoticeState::Resolved => Plan::Forget,
        NoticeState::Reminder => Plan::Skip,
    }
}

/// The arguments after the program for one escalation at `level`, one element each:
/// `escalate -s LEVEL SUMMARY -r DETAILS --source health-monitor:TYPE:ID`.
pub fn escalate_args(notice: &Notice, level: &str, host: &str) -> Vec<String> {
    vec![
        "escalate".into(),
        "-s".into(),
        level.into(),
        summary(notice),
        "-r".into(),
        details(notice, host),
        "--source".into(),
        source(notice),
    ]
}

/// The escalation's title: the alert's message on one line, cut to [`SUMMARY_CHARS`].
pub fn summary(notice: &Notice) -> String {
    let mut text = one_line(&notice.message, SUMMARY_CHARS);
    if text.is_empty() {
        text = one_line(&notice.key(), SUMMARY_CHARS);
    }
    // gt reads the summary as a positional argument: one starting with `-` would be parsed as
    // a flag (or as `--`), so it is made to start with a word.
    if text.starts_with('-') {
        text.insert_str(0, "alert ");
    }
    text
}

/// `key: value` lines telling whoever reads the escalation what is wrong, where and since when.
pub fn details(notice: &Notice, host: &str) -> String {
    let clean = |text: &str| one_line(text, VALUE_CHARS);
    let unit = notice.unit.as_deref().map(clean).filter(|u| !u.is_empty());
    let with_unit = |v: f64| match &unit {
        Some(u) => format!("{} {u}", format_number(v)),
        None => format_number(v),
    };
    let mut lines = vec![
        match notice.id {
            Some(id) => format!("alert id: {id}"),
            None => format!("alert id: none ({}, not stored)", clean(&notice.key())),
        },
        format!(
            "resource: {}:{}",
            notice.resource_type,
            clean(&notice.resource_id)
        ),
        format!("metric: {}", clean(&notice.metric_name)),
    ];
    if let Some(v) = notice.value {
        lines.push(format!("value: {}", with_unit(v)));
    }
    let thresholds: Vec<String> = [
        ("warning", notice.threshold_warning),
        ("critical", notice.threshold_critical),
    ]
    .into_iter()
    .filter_map(|(name, t)| t.map(|t| format!("{name} {}", with_unit(t))))
    .collect();
    if !thresholds.is_empty() {
        lines.push(format!("thresholds: {}", thresholds.join(", ")));
    }
    lines.push(format!("since: {}", format_timestamp(notice.started_at)));
    lines.push(format!("health-monitor on {}", clean(host)));
    lines.join("\n")
}

/// `health-monitor:TYPE:ID`, so Gas Town can tell which resource an escalation is about.
pub fn source(notice: &Notice) -> String {
    format!(
        "health-monitor:{}:{}",
        notice.resource_type,
        one_line(&notice.resource_id, VALUE_CHARS)
    )
}

/// `text` on one line: line breaks and tabs become spaces, other control characters go; then
/// trimmed and cut to `max` characters, marked with `…` when cut.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}' => {
                Some(' ')
            }
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= max {
        return flat.to_string();
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// This machine's name, for the details; `unknown host` when it has none.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| one_line(&h.to_string_lossy(), VALUE_CHARS))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into())
}

/// Where `program` is run from: as given when it is a path, else the first executable file of
/// that name in the directories of `path` (a `PATH` value; unset means `/bin:/usr/bin`, like
/// `execvp`). Looked up here so that a missing `gt` says so plainly. Relative directories are
/// skipped: what the daemon runs must not depend on its working directory.
pub fn find_program(program: &Path, path: Option<&OsStr>) -> Result<PathBuf, String> {
    if program.components().count() != 1 || program.is_absolute() {
        return Ok(program.to_path_buf());
    }
    let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
    let found = std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found.ok_or_else(|| {
        format!(
            "cannot run {}: not found on PATH ({}); install Gas Town there, or give the full \
             path of gt as the program",
            program.display(),
            path.to_string_lossy()
        )
    })
}

/// The escalation sink as the dispatcher drives it.
pub(crate) struct Escalation {
    sink: EscalateSink,
    /// Named in every escalation's details; looked up once, it does not change under us.
    host: String,
    escalated: Escalated,
}

impl Escalation {
    /// A sink escalating through `sink.program`.
    pub(crate) fn new(sink: EscalateSink) -> Self {
        Escalation {
            sink,
            host: hostname(),
            escalated: Escalated::new(ESCALATED_LIMIT),
        }
    }
}

impl Sink for Escalation {
    fn name(&self) -> String {
        format!("escalate:{}", self.sink.program.display())
    }

    fn timeout(&self) -> Duration {
        self.sink.timeout
    }

    fn filter(&self) -> Option<Filter> {
        let min_severity = self.sink.min_severity;
        Some(Box::new(move |notice: &Notice| {
            worth_queueing(min_severity, notice)
        }))
    }

    fn skip(&mut self, notice: &Notice) -> bool {
        match plan(&self.escalated, self.sink.min_severity, notice) {
            Plan::Escalate(_) => false,
            Plan::Forget => {
                self.escalated.forget(&AlertKey::of(notice));
                true
            }
            Plan::Skip => true,
        }
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        // The worker asks `skip` first, so only escalations get here; anything else needs nothing.
        let Plan::Escalate(level) = plan(&self.escalated, self.sink.min_severity, notice) else {
            return Ok(());
        };
        let program = find_program(&self.sink.program, std::env::var_os("PATH").as_deref())?;
        let run = ExecSink {
            program,
            args: escalate_args(notice, level, &self.host),
            timeout,
            cwd: self.sink.cwd.clone(),
        };
        let out = run_hook(&run, notice, timeout)?;
        // Remembered only once gt has taken it: after a failure the alert's next firing notice
        // (a rise in severity) tries again.
        self.escalated.insert(AlertKey::of(notice));
        tracing::info!(
            program = %self.sink.program.display(),
            alert = %notice.key(),
            level,
            stdout = %out.stdout.trim(),
            stderr = %out.stderr.trim(),
            "escalated to Gas Town"
        );
        Ok(())
    }

    fn keeps_state(&self) -> bool {
        true
    }

    /// An alert still open at start was escalated by the run that saw it fire (if it was at the
    /// minimum then): remember it, so a restart never escalates it a second time.
    fn restore(&mut self, notice: &Notice) {
        if notice.state != NoticeState::Resolved
            && escalates_at(self.sink.min_severity, notice.severity).is_some()
        {
            self.escalated.insert(AlertKey::of(notice));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::testutil::{notice, script, wait_until};
    use super::*;
    use crate::config::outputs::NotifySettings;
    use crate::model::HealthStatus::{Critical, Degraded, Healthy, Unhealthy, Unknown};
    use crate::notify::NoticeState::{Firing, Reminder, Resolved};
    use crate::notify::{Notifier, Timings};

    /// The line the stand-in `gt` writes after each call's arguments.
    const END: &str = "--- end of call ---";

    /// Writes a stand-in `gt` into `dir`: it appends its arguments to `dir/calls`, one a line
    /// (a line break inside an argument written as U+001E), then [`END`]; then runs `then`.
    fn fake_gt(dir: &Path, then: &str) -> PathBuf {
        let body = format!(
            "log=\"$(dirname \"$0\")/calls\"\n\
             for a in \"$@\"; do printf '%s' \"$a\" | tr '\\n' '\\036'; echo; done >> \"$log\"\n\
             echo '{END}' >> \"$log\"\n\
             {then}"
        );
        script(dir, "gt", &body)
    }

    /// Every call the stand-in recorded: its arguments, line breaks restored.
    fn calls(dir: &Path) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
        text.split_terminator(&format!("{END}\n"))
            .map(|call| call.lines().map(|l| l.replace('\u{1e}', "\n")).collect())
            .collect()
    }

    /// A notice about alert `id`, otherwise the test alert (workspace w1 is 1500 MB).
    fn about(id: i64, severity: HealthStatus, state: NoticeState, message: &str) -> Notice {
        let mut n = notice(state, message);
        n.id = Some(id);
        n.severity = severity;
        n
    }

    fn config(program: &Path, min_severity: HealthStatus) -> EscalateSink {
        EscalateSink {
            program: program.to_path_buf(),
            min_severity,
            timeout: Duration::from_secs(10),
            cwd: None,
        }
    }

    /// Hands `n` to the sink the way the worker does; true when gt ran.
    fn drive(sink: &mut Escalation, n: &Notice) -> Result<bool, String> {
        if sink.skip(n) {
            return Ok(false);
        }
        sink.send(n, sink.timeout()).map(|()| true)
    }

    fn notifier(sink: EscalateSink, retries: u32) -> Notifier {
        let settings = NotifySettings {
            escalate: Some(sink),
            retries,
            ..Default::default()
        };
        let timings = Timings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Timings::default()
        };
        Notifier::with_timings(&settings, timings)
    }

    /// Each call's level and first details line (`alert id: ID`).
    fn levels_and_alerts(dir: &Path) -> Vec<(String, String)> {
        calls(dir)
            .iter()
            .map(|c| (c[2].clone(), c[5].lines().next().unwrap().to_string()))
            .collect()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn critical_and_unhealthy_alerts_run_gt_with_exact_arguments_and_no_shell() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let marker = dir.path().join("pwned");
        let m = marker.display();
        let message =
            format!(r#"disk "full" 'really' $(touch {m}) `touch {m}`; touch {m} && echo $HOME"#);
        let mut sink = Escalation::new(config(&gt, Unhealthy));
        assert!(drive(&mut sink, &about(42, Critical, Firing, &message)).unwrap());
        let plain = "workspace w1: workspace_size_mb is 1500 MB";
        assert!(drive(&mut sink, &about(43, Unhealthy, Firing, plain)).unwrap());

        let host = hostname();
        assert!(!host.is_empty());
        let details = |id: i64| {
            format!(
                "alert id: {id}\n\
                 resource: workspace:w1\n\
                 metric: workspace_size_mb\n\
                 value: 1500 MB\n\
                 thresholds: warning 1000 MB, critical 5000 MB\n\
                 since: 2026-11-27T12:00:00.000000Z\n\
                 health-monitor on {host}"
            )
        };
        let (d42, d43) = (details(42), details(43));
        let source = "health-monitor:workspace:w1";
        assert_eq!(
            calls(dir.path()),
            vec![
                vec![
                    "escalate", "-s", "critical", &message, "-r", &d42, "--source", source
                ],
                vec![
                    "escalate", "-s", "high", plain, "-r", &d43, "--source", source
                ],
            ]
        );
        assert!(!marker.exists(), "something ran the message as a command");
    }

    #[test]
    fn one_escalation_per_alert_and_none_for_reminders_or_resolutions() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let notifier = notifier(config(&gt, Unhealthy), 0);
        let m = "workspace w1 is too big";
        notifier.notify(&about(42, Unhealthy, Firing, m));
        notifier.notify(&about(42, Unhealthy, Reminder, m));
        notifier.notify(&about(42, Unhealthy, Firing, m)); // the same alert firing again
        notifier.notify(&about(42, Unhealthy, Resolved, m));
        notifier.notify(&about(7, Critical, Firing, m));
        // Shutdown lets every queued notice through first, so the counts below are final.
        notifier.shutdown(Duration::from_secs(10));
        assert_eq!(
            levels_and_alerts(dir.path()),
            pairs(&[("high", "alert id: 42"), ("critical", "alert id: 7")])
        );
        let r = &notifier.report()[0];
        assert_eq!(r.sink, format!("escalate:{}", gt.display()));
        assert_eq!((r.sent, r.failed, r.retries, r.dropped), (2, 0, 0, 0));
        assert_eq!(r.last_error, None);
    }

    #[test]
    fn below_the_minimum_an_alert_escalates_once_when_it_rises_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let notifier = notifier(config(&gt, Critical), 0);
        let m = "agent a1 is stuck";
        notifier.notify(&about(42, Unhealthy, Firing, m)); // below critical
        notifier.notify(&about(42, Unhealthy, Reminder, m));
        notifier.notify(&about(42, Critical, Firing, m)); // risen
        notifier.notify(&about(42, Critical, Reminder, m));
        notifier.notify(&about(42, Critical, Firing, m));
        notifier.notify(&about(7, Critical, Firing, m));
        notifier.shutdown(Duration::from_secs(10));
        assert_eq!(
            levels_and_alerts(dir.path()),
            pairs(&[("critical", "alert id: 42"), ("critical", "alert id: 7")])
        );
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.dropped), (2, 0, 0));
    }

    #[test]
    fn only_firing_notices_at_the_minimum_and_resolutions_take_a_queue_slot() {
        let cases = [
            (Unhealthy, Critical, Firing, true),
            (Unhealthy, Unhealthy, Firing, true),
            (Unhealthy, Degraded, Firing, false),
            (Critical, Unhealthy, Firing, false),
            (Degraded, Degraded, Firing, true),
            (Unknown, Healthy, Firing, false),
            (Unhealthy, Critical, Reminder, false),
            (Critical, Unhealthy, Resolved, true),
        ];
        for (min, severity, state, queued) in cases {
            let n = about(1, severity, state, "m");
            assert_eq!(
                worth_queueing(min, &n),
                queued,
                "{min} {severity} {state:?}"
            );
        }
    }

    #[test]
    fn notices_that_cannot_escalate_never_take_a_queue_slot() {
        let dir = tempfile::tempdir().unwrap();
        // Holds the first escalation until the test says go (at most 10 s), so the one queue
        // slot is either still taken by it or free only for what the filter lets through.
        let gt = fake_gt(
            dir.path(),
            r#"i=0; while [ ! -e "$(dirname "$0")/go" ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done"#,
        );
        let settings = NotifySettings {
            escalate: Some(config(&gt, Critical)),
            ..Default::default()
        };
        let timings = Timings {
            queue_capacity: 1,
            ..Timings::default()
        };
        let notifier = Notifier::with_timings(&settings, timings);
        let m = "workspace w1 is too big";
        notifier.notify(&about(42, Critical, Firing, m));
        notifier.notify(&about(42, Critical, Reminder, m));
        notifier.notify(&about(43, Unhealthy, Firing, m)); // below critical
        notifier.notify(&about(43, Unhealthy, Reminder, m));
        assert_eq!(notifier.report()[0].dropped, 0);
        std::fs::write(dir.path().join("go"), "").unwrap();
        notifier.shutdown(Duration::from_secs(10));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.dropped), (1, 0, 0));
        assert_eq!(calls(dir.path()).len(), 1);
    }

    #[test]
    fn a_resolution_forgets_the_alert_and_an_unstored_alert_is_known_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let mut sink = Escalation::new(config(&gt, Unhealthy));
        let fired = about(42, Critical, Firing, "m");
        assert!(drive(&mut sink, &fired).unwrap());
        assert_eq!(sink.escalated.by_key.len(), 1);
        assert!(!drive(&mut sink, &about(42, Critical, Resolved, "m")).unwrap());
        assert_eq!(sink.escalated.by_key.len(), 0);

        let mut unstored = fired.clone();
        unstored.id = None;
        assert!(drive(&mut sink, &unstored).unwrap());
        assert!(!drive(&mut sink, &unstored).unwrap());
        let mut other = unstored.clone();
        other.resource_id = "w2".into();
        assert!(drive(&mut sink, &other).unwrap());
        let details: Vec<String> = calls(dir.path()).iter().map(|c| c[5].clone()).collect();
        assert!(
            details[1].starts_with("alert id: none (workspace/w1/workspace_size_mb, not stored)\n"),
            "{}",
            details[1]
        );
        assert_eq!(calls(dir.path()).len(), 3);
    }

    #[test]
    fn the_escalated_set_forgets_the_oldest_past_its_cap() {
        let mut e = Escalated::new(3);
        for id in 1..=3 {
            e.insert(AlertKey::Id(id));
        }
        e.insert(AlertKey::Id(1)); // known already: still the oldest
        e.insert(AlertKey::Id(4));
        assert_eq!(e.by_key.len(), 3);
        assert!(!e.contains(&AlertKey::Id(1)));
        e.forget(&AlertKey::Id(3));
        e.insert(AlertKey::Id(5));
        e.insert(AlertKey::Id(6));
        let kept: Vec<bool> = (1..=6).map(|id| e.contains(&AlertKey::Id(id))).collect();
        assert_eq!(kept, [false, false, false, true, true, true]);
        assert_eq!((e.by_key.len(), e.by_age.len()), (3, 3));
    }

    #[test]
    fn restored_alerts_at_the_minimum_count_as_escalated() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let mut sink = Escalation::new(config(&gt, Critical));
        sink.restore(&about(42, Critical, Reminder, "m"));
        sink.restore(&about(43, Unhealthy, Reminder, "m"));
        assert!(!drive(&mut sink, &about(42, Critical, Firing, "m")).unwrap());
        // Below the minimum before the restart, so never escalated: its rise still is.
        assert!(drive(&mut sink, &about(43, Critical, Firing, "m")).unwrap());
        assert_eq!(
            levels_and_alerts(dir.path()),
            pairs(&[("critical", "alert id: 43")])
        );
    }

    #[test]
    fn a_failing_gt_is_retried_then_counted_failed_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "echo 'not in a Gas Town workspace' >&2; exit 1");
        let notifier = notifier(config(&gt, Unhealthy), 2);
        notifier.notify(&about(42, Critical, Firing, "m"));
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .failed
            == 1));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (0, 1, 2));
        let last = r.last_error.as_deref().unwrap();
        assert!(
            last.contains("exit status: 1") && last.contains("stderr: not in a Gas Town workspace"),
            "{last}"
        );
        assert_eq!(calls(dir.path()).len(), 3, "one attempt and two retries");
        notifier.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn a_failed_escalation_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), r#"[ -e "$(dirname "$0")/up" ] || exit 1"#);
        let mut sink = Escalation::new(config(&gt, Unhealthy));
        let n = about(42, Critical, Firing, "m");
        assert!(drive(&mut sink, &n).is_err());
        std::fs::write(dir.path().join("up"), "").unwrap();
        assert!(drive(&mut sink, &n).unwrap());
        assert!(!drive(&mut sink, &n).unwrap());
        assert_eq!(calls(dir.path()).len(), 2);
    }

    #[test]
    fn a_missing_gt_is_a_clear_error_counted_as_failed() {
        let program = Path::new("gt-not-installed-health-monitor-test");
        let notifier = notifier(config(program, Unhealthy), 1);
        notifier.notify(&about(42, Critical, Firing, "m"));
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .failed
            == 1));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (0, 1, 1));
        let last = r.last_error.as_deref().unwrap();
        assert!(
            last.starts_with("cannot run gt-not-installed-health-monitor-test: not found on PATH"),
            "{last}"
        );
        notifier.shutdown(Duration::from_secs(5));

        let mut sink = Escalation::new(config(Path::new("/nonexistent/gt"), Unhealthy));
        let err = drive(&mut sink, &about(42, Critical, Firing, "m")).unwrap_err();
        assert!(
            err.starts_with("cannot run /nonexistent/gt: program not found"),
            "{err}"
        );
    }

    #[test]
    fn gt_is_looked_up_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        std::fs::write(first.join("gt"), "#!/bin/sh\n").unwrap(); // not executable
        let gt = fake_gt(&second, "");
        let path = std::env::join_paths([
            "relative",
            first.to_str().unwrap(),
            second.to_str().unwrap(),
        ])
        .unwrap();
        let gt_name = Path::new("gt");
        assert_eq!(find_program(gt_name, Some(&path)).unwrap(), gt);

        let err = find_program(gt_name, Some(first.as_os_str())).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "cannot run gt: not found on PATH ({})",
                first.display()
            )),
            "{err}"
        );
        let given = Path::new("/opt/gastown/bin/gt");
        assert_eq!(find_program(given, Some(&path)).unwrap(), given);
        assert_eq!(
            find_program(Path::new("sh"), None).unwrap(),
            Path::new("/bin/sh")
        );
    }

    #[test]
    fn severities_map_to_gt_levels_and_degraded_is_medium() {
        let levels: Vec<Option<&str>> = HealthStatus::ALL.into_iter().map(gt_severity).collect();
        assert_eq!(
            levels,
            [None, None, Some("medium"), Some("high"), Some("critical")]
        );

        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let degraded = about(42, Degraded, Firing, "m");
        // Below the default minimum (unhealthy): nothing.
        let mut default_sink = Escalation::new(config(&gt, EscalateSink::default().min_severity));
        assert!(!drive(&mut default_sink, &degraded).unwrap());
        let mut sink = Escalation::new(config(&gt, Degraded));
        assert!(drive(&mut sink, &degraded).unwrap());
        assert_eq!(
            levels_and_alerts(dir.path()),
            pairs(&[("medium", "alert id: 42")])
        );
    }

    #[test]
    fn the_summary_and_details_are_safe_lines() {
        let mut n = about(42, Critical, Firing, "disk\nfull\tnow\u{7}!\r\n");
        assert_eq!(summary(&n), "disk full now!");
        n.message = "--source evil -s low".into();
        assert_eq!(summary(&n), "alert --source evil -s low");
        n.message = " \n".into();
        assert_eq!(summary(&n), "workspace/w1/workspace_size_mb");
        n.message = "é".repeat(1000);
        let long = summary(&n);
        assert_eq!(long.chars().count(), SUMMARY_CHARS);
        assert!(long.ends_with('…'));

        // A condition: no value, thresholds or unit; odd characters in the resource id.
        n.id = None;
        n.resource_id = "a1\nalert: 666".into();
        n.metric_name = "collector_failed".into();
        n.alert_type = "collector_failed".into();
        (n.value, n.threshold_warning, n.threshold_critical, n.unit) = (None, None, None, None);
        assert_eq!(
            details(&n, "box\n1"),
            "alert id: none (workspace/a1 alert: 666/collector_failed, not stored)\n\
             resource: workspace:a1 alert: 666\n\
             metric: collector_failed\n\
             since: 2026-11-27T12:00:00.000000Z\n\
             health-monitor on box 1"
        );
        assert_eq!(source(&n), "health-monitor:workspace:a1 alert: 666");
    }
}
