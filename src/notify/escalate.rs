//! The Gas Town sink: escalates alerts to the orchestrator's overseer with `gt escalate`, and
//! closes every escalation it opened once the alert behind it is over.
//!
//! # An escalation's life
//!
//! **Opening.** An escalation pages a person, so unlike the other sinks this one does not pass
//! on every notice: only the first `firing` notice of an alert at or above `min_severity` runs
//! `gt escalate -s LEVEL SUMMARY -r DETAILS --source health-monitor:TYPE:ID --json`. Reminders
//! never do. An alert that fired below `min_severity` escalates when it rises to it (which comes
//! as a new `firing` notice), and only then. gt answers with one indented JSON object, possibly
//! after warning lines when part of its delivery failed; the object's `id` (e.g. `hq-e5tq`) is
//! kept with the alert. A gt that exits 0 without an id we can use has escalated all the same:
//! that counts as sent, with a warning, but nothing can close that escalation for us.
//!
//! **Closing.** `gt escalate stale` makes an open, unacknowledged escalation louder every 4 h,
//! so none we opened may outlive its cause. The alert's `resolved` notice runs
//! `gt escalate close ID --reason "resolved: MESSAGE (health-monitor alert N)"`. A failed close
//! is retried with the worker's backoff like any delivery. One that fails because gt no longer
//! knows the escalation (`closing escalation: ... not found`: someone closed or deleted it in
//! Gas Town) counts as closed. Once every retry has failed, the close is kept and tried again
//! every [`CLOSE_RETRY_SLOW`] while the process runs. A resolved notice of an alert that was
//! never escalated (or escalated without an id) needs nothing and is skipped.
//!
//! **Recording.** Every escalation opened or closed for a stored alert (one with a row id) is
//! handed, as an [`EscalationRecord`], to the [`Recorder`] of the sink's [`EscalationLedger`]:
//! the daemon writes it to the `gastown_escalations` table through its database writer.
//!
//! **Restarting.** At start the daemon reads back the escalations not closed yet and gives them
//! to the sink as [`Inherited`] ones. Those whose alert is still active are remembered with
//! their id, so the alert's later resolution closes them (the restored alert the analyzer hands
//! over later, through `restore`, finds that id in place). Those whose alert is over (it
//! resolved while no daemon ran, e.g. an offline `remove`) are closed by the worker's first
//! [`Sink::tick`], right after start, with the reason
//! `resolved while health-monitor was down (alert N)`.
//!
//! Counting: escalations and closes are both deliveries, so both count as `sent` in the sink's
//! report; a close kept for later that succeeds on a tick counts as `sent` then, and one whose
//! retries run out on ticks counts once as `failed` (it is still tried every
//! [`CLOSE_RETRY_SLOW`]).
//!
//! `gt` runs like an exec hook, through [`run_hook`] and [`run_program`]: directly, never through
//! a shell, in its own process group that a timeout kills. Like a hook it also gets the notice on
//! stdin and as `HEALTH_MONITOR_*` variables, which `gt escalate` has no use for.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::dispatch::{Filter, Sink, TickCounts, Timings};
use super::exec::{HookOutput, failure, run_hook, run_program};
use super::{Notice, NoticeState};
use crate::alerts::format_number;
use crate::config::outputs::{EscalateSink, ExecSink};
use crate::model::{HealthStatus, ResourceType, format_timestamp};

/// How many escalated alerts the sink remembers. An alert is forgotten when its resolved notice
/// arrives, so the cap only matters when those go missing (an alert restored at start under a
/// silence never announces its resolution); then the alert escalated longest ago is forgotten
/// first (and its escalation, if it had an id, is left to the next start to close).
pub const ESCALATED_LIMIT: usize = 10_000;

/// The longest summary, in characters: it is the escalation's title, read at a glance. Close
/// reasons are cut to it too.
pub const SUMMARY_CHARS: usize = 300;

/// How often a close whose retries all failed is tried again while the process runs: Gas Town
/// bumps an open escalation every 4 h, so giving up for good is not an option, but a broken
/// `gt` must not be run every few seconds either.
pub const CLOSE_RETRY_SLOW: Duration = Duration::from_secs(5 * 60);

/// The longest value on one `key: value` line of the details, in characters.
const VALUE_CHARS: usize = 300;

/// The longest escalation id taken from gt's answer; bead ids are a few characters.
const ID_CHARS: usize = 200;

/// How much of gt's stdout a warning about an answer without an id shows.
const STDOUT_HEAD_CHARS: usize = 200;

/// Where `execvp` looks for a program when `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// One step in the life of an escalation of a stored alert, for the [`Recorder`].
#[derive(Debug, Clone, PartialEq)]
pub enum EscalationRecord {
    /// `gt escalate` created escalation `escalation_id` for alert `alert_id`.
    Opened {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation, e.g. `hq-e5tq`.
        escalation_id: String,
        /// The alert's resource type.
        resource_type: ResourceType,
        /// The alert's resource id (an agent, a workspace...).
        resource_id: String,
        /// The alert's type (its metric or condition).
        alert_type: String,
        /// The `gt escalate -s` level it was opened at: `critical`, `high` or `medium`.
        level: String,
        /// When gt answered.
        at: DateTime<Utc>,
    },
    /// The escalation was closed, or gt no longer knew it (closed or deleted there).
    Closed {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation.
        escalation_id: String,
        /// Why, as given to `gt escalate close --reason` (plus a note when gt did not know it).
        reason: String,
        /// When gt answered.
        at: DateTime<Utc>,
    },
}

impl EscalationRecord {
    /// The `health_alerts` row id of the alert the record is about.
    pub fn alert_id(&self) -> i64 {
        match self {
            EscalationRecord::Opened { alert_id, .. }
            | EscalationRecord::Closed { alert_id, .. } => *alert_id,
        }
    }

    /// Gas Town's id of the escalation the record is about.
    pub fn escalation_id(&self) -> &str {
        match self {
            EscalationRecord::Opened { escalation_id, .. }
            | EscalationRecord::Closed { escalation_id, .. } => escalation_id,
        }
    }
}

/// Takes the sink's [`EscalationRecord`]s somewhere lasting. It is called on the sink's worker
/// thread, between two runs of `gt`: it must not block for long (queue, do not wait).
pub type Recorder = Arc<dyn Fn(EscalationRecord) + Send + Sync>;

/// An escalation an earlier run opened and did not close, read back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The `health_alerts` row id of its alert.
    pub alert_id: i64,
    /// Gas Town's id of the escalation.
    pub escalation_id: String,
    /// True when the alert is still active: its resolution will close the escalation. False
    /// when it is over: the escalation is closed right after start.
    pub alert_active: bool,
}

/// What makes escalations outlive the process: where the sink records them, and the ones an
/// earlier run left open. The default records nothing and inherits nothing (tests, tools).
#[derive(Clone, Default)]
pub struct EscalationLedger {
    /// Told of every escalation opened or closed for a stored alert; `None` keeps them in
    /// memory only.
    pub recorder: Option<Recorder>,
    /// Escalations still open at start.
    pub inherited: Vec<Inherited>,
}

impl std::fmt::Debug for EscalationLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscalationLedger")
            .field("recorder", &self.recorder.as_ref().map(|_| "Fn"))
            .field("inherited", &self.inherited)
            .finish()
    }
}

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
/// at `min_severity`, or a resolution (which closes the alert's escalation, if any). Reminders
/// and firing notices below the minimum never do anything, so they are not queued at all.
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

/// One escalated alert.
#[derive(Debug)]
struct Entry {
    /// Its place in the age order.
    age: u64,
    /// Gas Town's id of its escalation; `None` when gt gave none, or for an alert restored at
    /// start without a recorded escalation: those cannot be closed.
    escalation_id: Option<String>,
}

/// The alerts escalated so far, bounded: past `cap` the one escalated longest ago goes.
#[derive(Debug)]
struct Escalated {
    cap: usize,
    /// Counts insertions; an alert's number orders it by age.
    next: u64,
    by_key: HashMap<AlertKey, Entry>,
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

    /// The id of the alert's escalation, when it was escalated with one.
    fn escalation_id(&self, key: &AlertKey) -> Option<&str> {
        self.by_key.get(key)?.escalation_id.as_deref()
    }

    /// Remembers `key` (keeping its age if it is known already, and its id unless a new one is
    /// given), forgetting the oldest past the cap.
    fn insert(&mut self, key: AlertKey, escalation_id: Option<String>) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            if escalation_id.is_some() {
                entry.escalation_id = escalation_id;
            }
            return;
        }
        self.next += 1;
        let age = self.next;
        self.by_key
            .insert(key.clone(), Entry { age, escalation_id });
        self.by_age.insert(age, key);
        while self.by_key.len() > self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(Entry {
                escalation_id: Some(id),
                ..
            }) = self.by_key.remove(&oldest)
            {
                tracing::warn!(
                    alert = ?oldest,
                    escalation = %id,
                    "too many escalated alerts remembered: forgetting the oldest; its escalation \
                     will be closed by the next start once the alert is over, not by its resolution"
                );
            }
        }
    }

    fn forget(&mut self, key: &AlertKey) {
        if let Some(entry) = self.by_key.remove(key) {
            self.by_age.remove(&entry.age);
        }
    }
}

/// What the sink does with one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Run `gt escalate -s LEVEL ...`.
    Escalate(&'static str),
    /// The alert is over: run `gt escalate close ID`.
    Close(String),
    /// The alert is over and its escalation has no id (or it never escalated): forget it.
    Forget,
    /// Nothing to do: a reminder, below the minimum, or escalated already.
    Skip,
}

fn plan(escalated: &Escalated, min_severity: HealthStatus, notice: &Notice) -> Plan {
    let key = AlertKey::of(notice);
    match notice.state {
        NoticeState::Firing => match escalates_at(min_severity, notice.severity) {
            Some(level) if !escalated.contains(&key) => Plan::Escalate(level),
            _ => Plan::Skip,
        },
        NoticeState::Resolved => match escalated.escalation_id(&key) {
            Some(id) => Plan::Close(id.to_string()),
            None => Plan::Forget,
        },
        NoticeState::Reminder => Plan::Skip,
    }
}

/// The arguments after the program for one escalation at `level`, one element each:
/// `escalate -s LEVEL SUMMARY -r DETAILS --source health-monitor:TYPE:ID --json`.
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
        // The answer then carries the escalation's id, which closing it needs.
        "--json".into(),
    ]
}

/// The arguments after the program that close an escalation:
/// `escalate close ID --reason REASON`.
pub fn close_args(escalation_id: &str, reason: &str) -> Vec<String> {
    vec![
        "escalate".into(),
        "close".into(),
        escalation_id.into(),
        "--reason".into(),
        reason.into(),
    ]
}

/// Why an alert's escalation is closed: `resolved: MESSAGE (health-monitor alert N)`, on one
/// line of at most [`SUMMARY_CHARS`] characters, the message cut so the alert id survives.
pub fn close_reason(notice: &Notice) -> String {
    let alert = match notice.id {
        Some(id) => id.to_string(),
        None => format!("{}, not stored", one_line(&notice.key(), 100)),
    };
    let head = "resolved: ";
    let tail = format!(" (health-monitor alert {alert})");
    let room = SUMMARY_CHARS
        .saturating_sub(head.len() + tail.chars().count())
        .max(20);
    let mut message = one_line(&notice.message, room);
    if message.is_empty() {
        message = one_line(&notice.key(), room);
    }
    format!("{head}{message}{tail}")
}

/// Why an escalation inherited at start is closed: its alert ended while no daemon watched.
pub fn down_reason(alert_id: i64) -> String {
    format!("resolved while health-monitor was down (alert {alert_id})")
}

/// The escalation id in what `gt escalate --json` printed: the string `id` of the first JSON
/// object that starts at the beginning of a line. gt prints warnings (a failed mail delivery)
/// on stdout before its JSON, so the object is looked for rather than expected first; and only
/// its start is found by line, the rest is left to the JSON parser. `None` when there is no
/// such object, or its id is missing or unusable as one argument (empty, spaces or control
/// characters, a leading `-` that gt would read as a flag).
pub fn parse_escalation_id(stdout: &str) -> Option<String> {
    let mut start = 0;
    for line in stdout.split_inclusive('\n') {
        let at = start;
        start += line.len();
        if !line.starts_with('{') {
            continue;
        }
        let mut objects = serde_json::Deserializer::from_str(&stdout[at..])
            .into_iter::<serde_json::Map<String, serde_json::Value>>();
        if let Some(Ok(object)) = objects.next() {
            return object
                .get("id")
                .and_then(serde_json::Value::as_str)
                .filter(|id| usable_id(id))
                .map(str::to_string);
        }
    }
    None
}

fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= ID_CHARS
        && !id.starts_with('-')
        && !id.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// True when a failed `gt escalate close` says Gas Town does not know the escalation: someone
/// closed or deleted it there, so it is closed as far as we are concerned. gt wraps the bead
/// store's error as `closing escalation: ...: issue not found`; the `closing escalation` part
/// is required because other failures also say "not found" (a town not found from the working
/// directory), and those must be retried.
pub fn unknown_to_gt(output: &HookOutput) -> bool {
    let stderr = output.stderr.to_lowercase();
    stderr.contains("closing escalation") && stderr.contains("not found")
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

/// A close owed to Gas Town that could not be done on the spot: the alert resolved while the
/// daemon was down, or every retry of its close failed. Ticks try it until it works.
#[derive(Debug, Clone)]
struct PendingClose {
    /// The alert's row id, for the record; `None` for an alert never stored.
    alert_id: Option<i64>,
    /// How logs name the alert.
    alert: String,
    escalation_id: String,
    reason: String,
    /// Failed attempts so far.
    failures: u32,
    /// Its failure was counted already (by the worker, or here once its retries ran out).
    counted: bool,
    /// When to try next.
    due: Instant,
}

/// The escalation sink as the dispatcher drives it.
pub(crate) struct Escalation {
    sink: EscalateSink,
    /// Named in every escalation's details; looked up once, it does not change under us.
    host: String,
    escalated: Escalated,
    recorder: Option<Recorder>,
    /// Closes owed, tried by [`Sink::tick`].
    pending: Vec<PendingClose>,
    /// Backoff between tries of a pending close, like the worker's between retries.
    timings: Timings,
    /// Tries of a pending close after a failed one before it counts as failed.
    retries: u32,
    /// What ticks delivered since the worker last asked.
    counts: TickCounts,
}

impl Escalation {
    /// A sink escalating through `sink.program`, keeping its escalations in memory only.
    #[cfg(test)]
    pub(crate) fn new(sink: EscalateSink) -> Self {
        Escalation::with_ledger(
            sink,
            EscalationLedger::default(),
            Timings::default(),
            crate::config::outputs::DEFAULT_SINK_RETRIES,
        )
    }

    /// A sink escalating through `sink.program` that records through `ledger` and takes over
    /// its inherited escalations: those of active alerts are known by id, the others are due
    /// to be closed at once. `timings` and `retries` pace the closes it owes.
    pub(crate) fn with_ledger(
        sink: EscalateSink,
        ledger: EscalationLedger,
        timings: Timings,
        retries: u32,
    ) -> Self {
        let mut this = Escalation {
            sink,
            host: hostname(),
            escalated: Escalated::new(ESCALATED_LIMIT),
            recorder: ledger.recorder,
            pending: Vec::new(),
            timings,
            retries,
            counts: TickCounts::default(),
        };
        let now = Instant::now();
        for inherited in ledger.inherited {
            if inherited.alert_active {
                this.escalated.insert(
                    AlertKey::Id(inherited.alert_id),
                    Some(inherited.escalation_id),
                );
            } else {
                this.pending.push(PendingClose {
                    alert_id: Some(inherited.alert_id),
                    alert: format!("alert {}", inherited.alert_id),
                    reason: down_reason(inherited.alert_id),
                    escalation_id: inherited.escalation_id,
                    failures: 0,
                    counted: false,
                    due: now,
                });
            }
        }
        if !this.pending.is_empty() {
            tracing::info!(
                escalations = this.pending.len(),
                "closing the Gas Town escalations of alerts that ended while health-monitor was down"
            );
        }
        this
    }

    fn record(&self, record: EscalationRecord) {
        if let Some(recorder) = &self.recorder {
            recorder(record);
        }
    }

    /// `self.sink` run with `args`, the program looked up on `PATH` now (it may be installed
    /// after the daemon started).
    fn command(&self, args: Vec<String>, timeout: Duration) -> Result<ExecSink, String> {
        Ok(ExecSink {
            program: find_program(&self.sink.program, std::env::var_os("PATH").as_deref())?,
            args,
            timeout,
            cwd: self.sink.cwd.clone(),
        })
    }

    fn escalate(&mut self, notice: &Notice, level: &str, timeout: Duration) -> Result<(), String> {
        let run = self.command(escalate_args(notice, level, &self.host), timeout)?;
        let out = run_hook(&run, notice, timeout)?;
        let id = parse_escalation_id(&out.stdout);
        // Remembered only once gt has taken it: after a failure the alert's next firing notice
        // (a rise in severity) tries again.
        self.escalated.insert(AlertKey::of(notice), id.clone());
        let Some(id) = id else {
            tracing::warn!(
                program = %self.sink.program.display(),
                alert = %notice.key(),
                level,
                stdout_head = %one_line(&out.stdout, STDOUT_HEAD_CHARS),
                stderr = %out.stderr.trim(),
                "escalated to Gas Town, but gt's answer holds no escalation id: this escalation \
                 cannot be closed when the alert resolves"
            );
            return Ok(());
        };
        tracing::info!(
            program = %self.sink.program.display(),
            alert = %notice.key(),
            level,
            escalation = %id,
            stderr = %out.stderr.trim(),
            "escalated to Gas Town"
        );
        match notice.id {
            Some(alert_id) => self.record(EscalationRecord::Opened {
                alert_id,
                escalation_id: id,
                resource_type: notice.resource_type,
                resource_id: notice.resource_id.clone(),
                alert_type: notice.alert_type.clone(),
                level: level.to_string(),
                at: Utc::now(),
            }),
            // Recorded escalations are keyed by the alert's row; this alert has none, so only
            // this process can close its escalation.
            None => tracing::debug!(
                alert = %notice.key(),
                escalation = %id,
                "escalation not recorded: the alert is not stored"
            ),
        }
        Ok(())
    }

    /// Runs `gt escalate close`: `Ok(true)` when gt closed it, `Ok(false)` when gt did not know
    /// it (closed or deleted there), `Err` for a failure worth retrying.
    fn run_close(
        &self,
        escalation_id: &str,
        reason: &str,
        notice: Option<&Notice>,
        timeout: Duration,
    ) -> Result<bool, String> {
        let run = self.command(close_args(escalation_id, reason), timeout)?;
        let out = run_program(&run, notice, timeout)?;
        if out.status.success() {
            Ok(true)
        } else if unknown_to_gt(&out) {
            Ok(false)
        } else {
            Err(failure(&out))
        }
    }

    /// Logs and records a close that is done.
    fn closed(
        &self,
        alert_id: Option<i64>,
        alert: &str,
        escalation_id: &str,
        reason: String,
        known: bool,
    ) {
        let reason = if known {
            tracing::info!(
                alert,
                escalation = escalation_id,
                reason = %reason,
                "closed the Gas Town escalation"
            );
            reason
        } else {
            tracing::info!(
                alert,
                escalation = escalation_id,
                "Gas Town no longer knows the escalation (closed or deleted there): counted as closed"
            );
            format!("{reason}; gt did not know it (closed or deleted there)")
        };
        if let Some(alert_id) = alert_id {
            self.record(EscalationRecord::Closed {
                alert_id,
                escalation_id: escalation_id.to_string(),
                reason,
                at: Utc::now(),
            });
        }
    }

    fn close_resolved(
        &mut self,
        notice: &Notice,
        escalation_id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let reason = close_reason(notice);
        let known = self.run_close(escalation_id, &reason, Some(notice), timeout)?;
        self.escalated.forget(&AlertKey::of(notice));
        self.closed(notice.id, &notice.key(), escalation_id, reason, known);
        Ok(())
    }

    /// The wait after a pending close's `failures`-th failure: the worker's doubling backoff
    /// while its retries last, then [`CLOSE_RETRY_SLOW`].
    fn backoff(&self, failures: u32) -> Duration {
        if failures > self.retries {
            return CLOSE_RETRY_SLOW;
        }
        let doublings = failures.saturating_sub(1).min(20);
        self.timings
            .backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.timings.backoff_max)
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
            Plan::Escalate(_) | Plan::Close(_) => false,
            Plan::Forget => {
                self.escalated.forget(&AlertKey::of(notice));
                true
            }
            Plan::Skip => true,
        }
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        // The worker asks `skip` first, so only escalations and closes get here. A retry plans
        // again: the alert is marked escalated, or forgotten, only once gt has done it.
        match plan(&self.escalated, self.sink.min_severity, notice) {
            Plan::Escalate(level) => self.escalate(notice, level, timeout),
            Plan::Close(id) => self.close_resolved(notice, &id, timeout),
            Plan::Forget | Plan::Skip => Ok(()),
        }
    }

    fn keeps_state(&self) -> bool {
        true
    }

    /// An alert still open at start was escalated by the run that saw it fire (if it was at the
    /// minimum then): remember it, so a restart never escalates it a second time. Its
    /// escalation id, when one was recorded, came with the ledger and is kept.
    fn restore(&mut self, notice: &Notice) {
        if notice.state != NoticeState::Resolved
            && escalates_at(self.sink.min_severity, notice.severity).is_some()
        {
            self.escalated.insert(AlertKey::of(notice), None);
        }
    }

    /// The close is still owed: keep it for [`Sink::tick`], which tries again later.
    fn gave_up(&mut self, notice: &Notice) {
        if let Plan::Close(escalation_id) = plan(&self.escalated, self.sink.min_severity, notice) {
            self.escalated.forget(&AlertKey::of(notice));
            tracing::warn!(
                alert = %notice.key(),
                escalation = %escalation_id,
                "closing the Gas Town escalation failed after every retry; trying again every {}s",
                CLOSE_RETRY_SLOW.as_secs()
            );
            self.pending.push(PendingClose {
                alert_id: notice.id,
                alert: notice.key(),
                reason: close_reason(notice),
                escalation_id,
                failures: self.retries.saturating_add(1),
                counted: true,
                due: Instant::now() + CLOSE_RETRY_SLOW,
            });
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }

    /// Tries every pending close that is due, within `timeout` for all of them.
    fn tick(&mut self, timeout: Duration) -> Result<(), String> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        for mut p in std::mem::take(&mut self.pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.due > now || left.is_zero() {
                kept.push(p);
                continue;
            }
            if p.failures > 0 {
                self.counts.retries += 1;
            }
            match self.run_close(&p.escalation_id, &p.reason, None, left) {
                Ok(known) => {
                    self.counts.sent += 1;
                    self.closed(p.alert_id, &p.alert, &p.escalation_id, p.reason, known);
                }
                Err(e) => {
                    p.failures += 1;
                    if !p.counted && p.failures > self.retries {
                        p.counted = true;
                        self.counts.failed += 1;
                        tracing::error!(
                            alert = %p.alert,
                            escalation = %p.escalation_id,
                            error = %e,
                            "closing the Gas Town escalation failed after every retry; trying \
                             again every {}s",
                            CLOSE_RETRY_SLOW.as_secs()
                        );
                    }
                    p.due = Instant::now() + self.backoff(p.failures);
                    errors.push(format!("closing escalation {}: {e}", p.escalation_id));
                    kept.push(p);
                }
            }
        }
        self.pending = kept;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn take_tick_counts(&mut self) -> TickCounts {
        std::mem::take(&mut self.counts)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::testutil::{notice, script, wait_until};
    use super::*;
    use crate::config::outputs::NotifySettings;
    use crate::model::HealthStatus::{Critical, Degraded, Healthy, Unhealthy, Unknown};
    use crate::notify::NoticeState::{Firing, Reminder, Resolved};
    use crate::notify::{Notifier, Timings};

    /// The line the stand-in `gt` writes after each call's arguments.
    const END: &str = "--- end of call ---";

    /// What the stand-in does after `then`, like gt 1.0.1: `escalate close ID --reason R`
    /// prints its two lines; an escalation with `--json` prints `json.MarshalIndent` of its
    /// result (keys sorted, two-space indent) with ids `hq-e1`, `hq-e2`... in call order, and
    /// `status` from the shell variable of that name (`ok` unless `then` sets it).
    const ANSWER: &str = r#"
if [ "$2" = close ]; then
    printf '✓ Escalation closed: %s\n  Reason: %s\n' "$3" "$5"
    exit 0
fi
n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/count"
level="$3"; json=0; src=""
while [ $# -gt 0 ]; do
    [ "$1" = --json ] && json=1
    [ "$1" = --source ] && src="$2"
    shift
done
if [ $json = 0 ]; then
    printf '🔥 Escalation created: hq-e%s\n  Severity: %s\n' "$n" "$level"
    exit 0
fi
src=$(printf '%s' "$src" | sed 's/\\/\\\\/g; s/"/\\"/g')
cat <<JSON
{
  "actions": [
    "bead",
    "mail:mayor"
  ],
  "delivery": [
    {
      "action": "mail:mayor",
      "status": "${status:-ok}"
    }
  ],
  "id": "hq-e$n",
  "severity": "$level",
  "source": "$src",
  "status": "${status:-ok}",
  "targets": [
    "mayor"
  ]
}
JSON
"#;

    /// Writes a stand-in `gt` into `dir`: it appends its arguments to `dir/calls`, one a line
    /// (a line break inside an argument written as U+001E), then [`END`]; then runs `then`
    /// (which may answer and exit itself), then answers like gt ([`ANSWER`]).
    fn fake_gt(dir: &Path, then: &str) -> PathBuf {
        let body = format!(
            "dir=\"$(dirname \"$0\")\"\n\
             log=\"$dir/calls\"\n\
             for a in \"$@\"; do printf '%s' \"$a\" | tr '\\n' '\\036'; echo; done >> \"$log\"\n\
             echo '{END}' >> \"$log\"\n\
             {then}\n"
        );
        script(dir, "gt", &(body + ANSWER))
    }

    /// Every call the stand-in recorded: its arguments, line breaks restored. A call still
    /// being written (no [`END`] yet) is not one.
    fn calls(dir: &Path) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
        let mut calls: Vec<&str> = text.split(&format!("{END}\n")).collect();
        calls.pop(); // after the last END: empty, or a call in progress
        calls
            .into_iter()
            .map(|call| call.lines().map(|l| l.replace('\u{1e}', "\n")).collect())
            .collect()
    }

    /// The escalations among the calls (`escalate -s ...`).
    fn escalations(dir: &Path) -> Vec<Vec<String>> {
        calls(dir).into_iter().filter(|c| c[1] == "-s").collect()
    }

    /// The closes among the calls, as (escalation id, reason), each checked for its exact form.
    fn closes(dir: &Path) -> Vec<(String, String)> {
        calls(dir)
            .into_iter()
            .filter(|c| c[1] == "close")
            .map(|c| {
                assert_eq!(
                    (c.len(), c[0].as_str(), c[3].as_str()),
                    (5, "escalate", "--reason")
                );
                (c[2].clone(), c[4].clone())
            })
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

    fn quick() -> Timings {
        Timings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Timings::default()
        }
    }

    fn notifier(sink: EscalateSink, retries: u32) -> Notifier {
        notifier_with(sink, retries, EscalationLedger::default())
    }

    fn notifier_with(sink: EscalateSink, retries: u32, ledger: EscalationLedger) -> Notifier {
        let settings = NotifySettings {
            escalate: Some(sink),
            retries,
            ..Default::default()
        };
        Notifier::with_ledger(&settings, quick(), ledger)
    }

    /// A sink with `ledger`, the quick timings and `retries`.
    fn sink_with(sink: EscalateSink, retries: u32, ledger: EscalationLedger) -> Escalation {
        Escalation::with_ledger(sink, ledger, quick(), retries)
    }

    /// A recorder keeping what it is told, and where it keeps it.
    fn recording() -> (Recorder, Arc<Mutex<Vec<EscalationRecord>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        let recorder: Recorder = Arc::new(move |r| keep.lock().unwrap().push(r));
        (recorder, seen)
    }

    fn inherited(alert_id: i64, escalation_id: &str, alert_active: bool) -> Inherited {
        Inherited {
            alert_id,
            escalation_id: escalation_id.into(),
            alert_active,
        }
    }

    /// Each escalation's level and first details line (`alert id: ID`).
    fn levels_and_alerts(dir: &Path) -> Vec<(String, String)> {
        escalations(dir)
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
                    "escalate", "-s", "critical", &message, "-r", &d42, "--source", source,
                    "--json"
                ],
                vec![
                    "escalate", "-s", "high", plain, "-r", &d43, "--source", source, "--json"
                ],
            ]
        );
        assert!(!marker.exists(), "something ran the message as a command");
    }

    #[test]
    fn one_escalation_per_alert_none_for_reminders_and_a_close_for_its_resolution() {
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
        assert_eq!(
            closes(dir.path()),
            pairs(&[(
                "hq-e1",
                "resolved: workspace w1 is too big (health-monitor alert 42)"
            )])
        );
        let r = &notifier.report()[0];
        assert_eq!(r.sink, format!("escalate:{}", gt.display()));
        // Two escalations and one close.
        assert_eq!((r.sent, r.failed, r.retries, r.dropped), (3, 0, 0, 0));
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
    fn a_resolution_closes_and_forgets_the_alert_and_an_unstored_alert_is_known_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: Vec::new(),
        };
        let mut sink = sink_with(config(&gt, Unhealthy), 0, ledger);
        let fired = about(42, Critical, Firing, "m");
        assert!(drive(&mut sink, &fired).unwrap());
        assert_eq!(sink.escalated.by_key.len(), 1);
        assert!(drive(&mut sink, &about(42, Critical, Resolved, "m")).unwrap());
        assert_eq!(sink.escalated.by_key.len(), 0);
        // Resolved again (a duplicate notice): nothing left to close.
        assert!(!drive(&mut sink, &about(42, Critical, Resolved, "m")).unwrap());

        let mut unstored = fired.clone();
        unstored.id = None;
        assert!(drive(&mut sink, &unstored).unwrap());
        assert!(!drive(&mut sink, &unstored).unwrap());
        let mut other = unstored.clone();
        other.resource_id = "w2".into();
        assert!(drive(&mut sink, &other).unwrap());
        let details: Vec<String> = escalations(dir.path())
            .iter()
            .map(|c| c[5].clone())
            .collect();
        assert!(
            details[1].starts_with("alert id: none (workspace/w1/workspace_size_mb, not stored)\n"),
            "{}",
            details[1]
        );
        assert_eq!(escalations(dir.path()).len(), 3);
        // An unstored alert's escalation closes too, but is never recorded (no row to key it).
        let mut over = unstored.clone();
        over.state = Resolved;
        assert!(drive(&mut sink, &over).unwrap());
        assert_eq!(
            closes(dir.path()),
            pairs(&[
                ("hq-e1", "resolved: m (health-monitor alert 42)"),
                (
                    "hq-e2",
                    "resolved: m (health-monitor alert workspace/w1/workspace_size_mb, not stored)"
                ),
            ])
        );
        let recorded: Vec<(i64, String)> = records
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.alert_id(), r.escalation_id().to_string()))
            .collect();
        assert_eq!(recorded, [(42, "hq-e1".into()), (42, "hq-e1".into())]);
    }

    #[test]
    fn the_escalated_set_forgets_the_oldest_past_its_cap() {
        let mut e = Escalated::new(3);
        for id in 1..=3 {
            e.insert(AlertKey::Id(id), Some(format!("hq-{id}")));
        }
        // Known already: still the oldest, and a restore without an id keeps the one it has.
        e.insert(AlertKey::Id(2), None);
        assert_eq!(e.escalation_id(&AlertKey::Id(2)), Some("hq-2"));
        e.insert(AlertKey::Id(1), None);
        e.insert(AlertKey::Id(4), None);
        assert_eq!(e.by_key.len(), 3);
        assert!(!e.contains(&AlertKey::Id(1)));
        assert_eq!(e.escalation_id(&AlertKey::Id(4)), None);
        e.forget(&AlertKey::Id(3));
        e.insert(AlertKey::Id(5), None);
        e.insert(AlertKey::Id(6), None);
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

    /// What gt 1.0.1 prints for `gt escalate ... --json` (escalate_impl.go: MarshalIndent of a
    /// map, so keys sorted and two-space indent), after a warning of a failed mail delivery.
    const GT_ANSWER: &str = "\u{26a0} Warning: failed to send to mayor: mailbox locked\n\
        {\n  \"actions\": [\n    \"bead\",\n    \"mail:mayor\"\n  ],\n  \"delivery\": [\n    {\n      \
        \"action\": \"mail:mayor\",\n      \"error\": \"mailbox locked\",\n      \"status\": \
        \"failed\"\n    }\n  ],\n  \"id\": \"hq-e5tq\",\n  \"severity\": \"critical\",\n  \
        \"source\": \"health-monitor:agent:ac-onyx\",\n  \"status\": \"partial_failure\",\n  \
        \"targets\": [\n    \"mayor\"\n  ]\n}\n";

    #[test]
    fn the_escalation_id_is_the_first_json_object_starting_a_line() {
        assert_eq!(parse_escalation_id(GT_ANSWER).as_deref(), Some("hq-e5tq"));
        assert_eq!(
            parse_escalation_id(&GT_ANSWER[GT_ANSWER.find('{').unwrap()..]).as_deref(),
            Some("hq-e5tq")
        );
        // A brace inside a warning, or a line that only looks like JSON, is not the answer.
        let noisy = format!("warning: {{mail}} failed\n{{not json\n{GT_ANSWER}");
        assert_eq!(parse_escalation_id(&noisy).as_deref(), Some("hq-e5tq"));
        // Whatever follows the object (a second one, trailing text) is not read.
        let two = "{\"id\": \"hq-1\"}\n{\"id\": \"hq-2\"}\ntrailing";
        assert_eq!(parse_escalation_id(two).as_deref(), Some("hq-1"));
        for answer in [
            "🔥 Escalation created: hq-e5tq\n  Severity: critical\n",
            "{\n  \"status\": \"ok\"\n}\n",
            "{\"id\": 42}",
            "{\"id\": \"\"}",
            "{\"id\": \"--reason x\"}",
            "{\"id\": \"-x\"}",
            "{\"id\": \"hq 1\"}",
            "",
            "  {\"id\": \"hq-indented\"}",
            "[{\"id\": \"hq-array\"}]",
        ] {
            assert_eq!(parse_escalation_id(answer), None, "{answer:?}");
        }
    }

    #[test]
    fn gts_indented_answer_after_a_warning_gives_the_id_its_resolution_closes() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(
            dir.path(),
            "echo '\u{26a0} Warning: failed to send to mayor: mailbox locked'; \
             status=partial_failure",
        );
        let mut sink = Escalation::new(config(&gt, Unhealthy));
        let message = "agent ac-onyx: agent_memory_mb is 9000 MB";
        assert!(drive(&mut sink, &about(42, Critical, Firing, message)).unwrap());
        assert_eq!(
            sink.escalated.escalation_id(&AlertKey::Id(42)),
            Some("hq-e1")
        );
        assert!(drive(&mut sink, &about(42, Critical, Resolved, message)).unwrap());
        assert_eq!(
            calls(dir.path())[1],
            [
                "escalate",
                "close",
                "hq-e1",
                "--reason",
                "resolved: agent ac-onyx: agent_memory_mb is 9000 MB (health-monitor alert 42)"
            ]
        );
        assert!(sink.escalated.by_key.is_empty());
    }

    #[test]
    fn an_answer_without_an_id_counts_as_sent_and_its_resolution_closes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // An older gt, or one whose answer we cannot read: it escalated all the same.
        let gt = fake_gt(
            dir.path(),
            r#"[ "$2" = close ] || { echo '{"status": "ok"}'; exit 0; }"#,
        );
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: Vec::new(),
        };
        let notifier = notifier_with(config(&gt, Unhealthy), 0, ledger);
        notifier.notify(&about(42, Critical, Firing, "m"));
        notifier.notify(&about(42, Critical, Firing, "m"));
        notifier.notify(&about(42, Critical, Resolved, "m"));
        notifier.shutdown(Duration::from_secs(10));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (1, 0, 0));
        assert_eq!(calls(dir.path()).len(), 1, "{:?}", calls(dir.path()));
        assert!(records.lock().unwrap().is_empty());
    }

    #[test]
    fn the_recorder_hears_of_the_opening_then_of_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: Vec::new(),
        };
        let notifier = notifier_with(config(&gt, Unhealthy), 0, ledger);
        notifier.notify(&about(42, Critical, Firing, "disk full"));
        notifier.notify(&about(42, Critical, Resolved, "disk full"));
        notifier.shutdown(Duration::from_secs(10));
        let records = records.lock().unwrap().clone();
        assert_eq!(records.len(), 2, "{records:?}");
        let EscalationRecord::Opened { at: opened_at, .. } = &records[0] else {
            panic!("{records:?}");
        };
        assert_eq!(
            records[0],
            EscalationRecord::Opened {
                alert_id: 42,
                escalation_id: "hq-e1".into(),
                resource_type: ResourceType::Workspace,
                resource_id: "w1".into(),
                alert_type: "workspace_size_mb".into(),
                level: "critical".into(),
                at: *opened_at,
            }
        );
        let EscalationRecord::Closed { at: closed_at, .. } = &records[1] else {
            panic!("{records:?}");
        };
        assert!(closed_at >= opened_at);
        assert_eq!(
            records[1],
            EscalationRecord::Closed {
                alert_id: 42,
                escalation_id: "hq-e1".into(),
                reason: "resolved: disk full (health-monitor alert 42)".into(),
                at: *closed_at,
            }
        );
    }

    #[test]
    fn a_close_gt_no_longer_knows_counts_as_closed() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(
            dir.path(),
            r#"if [ "$2" = close ]; then echo 'Error: closing escalation: issue not found' >&2; exit 1; fi"#,
        );
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: Vec::new(),
        };
        let notifier = notifier_with(config(&gt, Unhealthy), 2, ledger);
        notifier.notify(&about(42, Critical, Firing, "m"));
        notifier.notify(&about(42, Critical, Resolved, "m"));
        notifier.shutdown(Duration::from_secs(10));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (2, 0, 0));
        assert_eq!(r.last_error, None);
        assert_eq!(closes(dir.path()).len(), 1, "not retried");
        let records = records.lock().unwrap();
        let EscalationRecord::Closed { reason, .. } = &records[1] else {
            panic!("{records:?}");
        };
        assert_eq!(
            reason,
            "resolved: m (health-monitor alert 42); gt did not know it (closed or deleted there)"
        );
    }

    #[test]
    fn a_close_that_fails_otherwise_is_retried_then_kept_for_a_later_tick() {
        let dir = tempfile::tempdir().unwrap();
        // "not found" alone is no proof: here it is the town gt cannot find from its directory.
        let gt = fake_gt(
            dir.path(),
            r#"if [ "$2" = close ] && [ ! -e "$dir/up" ]; then echo 'Error: not in a Gas Town workspace: workspace not found' >&2; exit 1; fi"#,
        );
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: Vec::new(),
        };
        let notifier = notifier_with(config(&gt, Unhealthy), 2, ledger.clone());
        notifier.notify(&about(42, Critical, Firing, "m"));
        notifier.notify(&about(42, Critical, Resolved, "m"));
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .failed
            == 1));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (1, 1, 2));
        let last = r.last_error.as_deref().unwrap();
        assert!(last.contains("workspace not found"), "{last}");
        assert_eq!(closes(dir.path()).len(), 3, "one attempt and two retries");
        notifier.shutdown(Duration::from_secs(5));
        assert_eq!(records.lock().unwrap().len(), 1, "opened, not closed");

        // The same in the sink itself: once the worker gives up, the close waits for a tick.
        let mut sink = sink_with(config(&gt, Unhealthy), 2, ledger);
        let resolved = about(7, Critical, Resolved, "m");
        assert!(drive(&mut sink, &about(7, Critical, Firing, "m")).unwrap());
        assert!(drive(&mut sink, &resolved).is_err());
        sink.gave_up(&resolved);
        assert!(sink.escalated.by_key.is_empty());
        let due = sink.next_due().unwrap();
        assert!(due > Instant::now() + CLOSE_RETRY_SLOW - Duration::from_secs(5));
        sink.tick(Duration::from_secs(10)).unwrap(); // not due: nothing runs
        assert_eq!(closes(dir.path()).len(), 4);
        std::fs::write(dir.path().join("up"), "").unwrap();
        sink.pending[0].due = Instant::now();
        sink.tick(Duration::from_secs(10)).unwrap();
        assert_eq!(
            closes(dir.path())[4],
            (
                "hq-e2".into(),
                "resolved: m (health-monitor alert 7)".into()
            )
        );
        assert_eq!(sink.next_due(), None);
        // Its failure was counted by the worker already: now it is one retry, and sent.
        assert_eq!(
            sink.take_tick_counts(),
            TickCounts {
                sent: 1,
                failed: 0,
                retries: 1
            }
        );
        let last = records.lock().unwrap().last().cloned().unwrap();
        assert!(
            matches!(&last, EscalationRecord::Closed { alert_id: 7, escalation_id, .. } if escalation_id == "hq-e2"),
            "{last:?}"
        );
    }

    #[test]
    fn inherited_escalations_close_on_resolution_or_right_after_start() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let (recorder, records) = recording();
        let ledger = EscalationLedger {
            recorder: Some(recorder),
            inherited: vec![
                inherited(42, "hq-old42", true),
                inherited(43, "hq-old43", false),
            ],
        };
        let notifier = notifier_with(config(&gt, Critical), 0, ledger);
        // The alert the analyzer reads back: below the minimum now, escalated all the same.
        notifier.restore(&about(42, Unhealthy, Reminder, "m"));
        notifier.notify(&about(42, Critical, Firing, "m")); // escalated already
        assert!(wait_until(Duration::from_secs(10), || closes(dir.path())
            .len()
            == 1));
        assert_eq!(
            closes(dir.path()),
            pairs(&[(
                "hq-old43",
                "resolved while health-monitor was down (alert 43)"
            )])
        );
        notifier.notify(&about(42, Critical, Resolved, "m"));
        notifier.shutdown(Duration::from_secs(10));
        assert_eq!(
            closes(dir.path())[1],
            (
                "hq-old42".into(),
                "resolved: m (health-monitor alert 42)".into()
            )
        );
        assert!(escalations(dir.path()).is_empty());
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (2, 0, 0));
        let closed: Vec<(i64, String)> = records
            .lock()
            .unwrap()
            .iter()
            .map(|r| match r {
                EscalationRecord::Closed {
                    alert_id, reason, ..
                } => (*alert_id, reason.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            closed,
            [
                (
                    43,
                    "resolved while health-monitor was down (alert 43)".into()
                ),
                (42, "resolved: m (health-monitor alert 42)".into()),
            ]
        );
    }

    #[test]
    fn owed_closes_are_done_before_the_worker_stops() {
        // `start --once`: the notifier shuts down right after it started.
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(dir.path(), "");
        let ledger = EscalationLedger {
            recorder: None,
            inherited: vec![inherited(43, "hq-old43", false)],
        };
        let notifier = notifier_with(config(&gt, Unhealthy), 0, ledger);
        notifier.shutdown(Duration::from_secs(10));
        assert_eq!(closes(dir.path()).len(), 1);
        assert_eq!(notifier.report()[0].sent, 1);
    }

    #[test]
    fn an_inherited_close_that_fails_backs_off_then_counts_as_failed_once() {
        let dir = tempfile::tempdir().unwrap();
        let gt = fake_gt(
            dir.path(),
            r#"if [ "$2" = close ] && [ ! -e "$dir/up" ]; then echo 'Error: bead store locked' >&2; exit 1; fi"#,
        );
        let ledger = EscalationLedger {
            recorder: None,
            inherited: vec![inherited(43, "hq-old43", false)],
        };
        let mut sink = sink_with(config(&gt, Unhealthy), 1, ledger);
        assert!(sink.next_due().unwrap() <= Instant::now());
        let err = sink.tick(Duration::from_secs(10)).unwrap_err();
        assert!(
            err.starts_with("closing escalation hq-old43: exited with exit status: 1")
                && err.contains("bead store locked"),
            "{err}"
        );
        // The worker's backoff first (10 ms here), while the retries last.
        assert!(sink.next_due().unwrap() <= Instant::now() + Duration::from_millis(10));
        assert_eq!(sink.take_tick_counts(), TickCounts::default());
        std::thread::sleep(Duration::from_millis(15));
        assert!(sink.tick(Duration::from_secs(10)).is_err());
        // Its one retry spent: counted as failed, and tried again only every CLOSE_RETRY_SLOW.
        assert_eq!(
            sink.take_tick_counts(),
            TickCounts {
                sent: 0,
                failed: 1,
                retries: 1
            }
        );
        assert!(sink.next_due().unwrap() > Instant::now() + CLOSE_RETRY_SLOW / 2);
        std::fs::write(dir.path().join("up"), "").unwrap();
        sink.pending[0].due = Instant::now();
        sink.tick(Duration::from_secs(10)).unwrap();
        assert_eq!(
            sink.take_tick_counts(),
            TickCounts {
                sent: 1,
                failed: 0,
                retries: 1
            }
        );
        assert_eq!(closes(dir.path()).len(), 3);
        assert_eq!(sink.next_due(), None);
    }

    #[test]
    fn close_reasons_are_one_line_and_keep_the_alert_id() {
        let mut n = about(42, Critical, Resolved, "disk\nfull");
        assert_eq!(
            close_reason(&n),
            "resolved: disk full (health-monitor alert 42)"
        );
        n.message = "é".repeat(1000);
        let long = close_reason(&n);
        assert_eq!(long.chars().count(), SUMMARY_CHARS);
        assert!(long.ends_with("… (health-monitor alert 42)"), "{long}");
        n.message = "\n".into();
        assert_eq!(
            close_reason(&n),
            "resolved: workspace/w1/workspace_size_mb (health-monitor alert 42)"
        );
        assert_eq!(
            close_args("hq-e5tq", "why"),
            ["escalate", "close", "hq-e5tq", "--reason", "why"]
        );
        assert_eq!(
            down_reason(7),
            "resolved while health-monitor was down (alert 7)"
        );
    }
}
