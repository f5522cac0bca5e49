//! The `gt escalate` and `gt escalate close` command lines, and what gt's answers tell.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::alerts::format_number;
use crate::model::format_timestamp;
use crate::notify::Notice;
use crate::notify::exec::HookOutput;

/// The longest summary, in characters: it is the escalation's title, read at a glance. Close
/// reasons are cut to it too.
pub const SUMMARY_CHARS: usize = 300;

/// The longest value on one `key: value` line of the details, in characters.
const VALUE_CHARS: usize = 300;

/// The longest escalation id taken from gt's answer; bead ids are a few characters.
const ID_CHARS: usize = 200;

/// Where `execvp` looks for a program when `PATH` is unset.
const DEFAULT_PATH: &str = "/bin:/usr/bin";

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
pub(super) fn one_line(text: &str, max: usize) -> String {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{about, fake_gt};
    use super::*;
    use crate::model::HealthStatus::Critical;
    use crate::notify::NoticeState::{Firing, Resolved};

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
