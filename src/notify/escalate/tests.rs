//! The sink driven like the worker does, against a stand-in `gt`; and the fixtures shared by tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::testutil::{notice, script, wait_until};
use super::escalated::AlertKey;
use super::*;
use crate::config::outputs::{EscalateSink, NotifySettings};
use crate::model::HealthStatus::{Critical, Degraded, Unhealthy};
use crate::model::{HealthStatus, ResourceType};
use crate::notify::NoticeState::{Firing, Reminder, Resolved};
use crate::notify::dispatch::{Sink, TickCounts};
use crate::notify::{Notice, NoticeState, Notifier, Timings};

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
pub(super) fn fake_gt(dir: &Path, then: &str) -> PathBuf {
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
pub(super) fn about(id: i64, severity: HealthStatus, state: NoticeState, message: &str) -> Notice {
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
                "escalate", "-s", "critical", &message, "-r", &d42, "--source", source, "--json"
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
