//! Operating the daemon: alerts, ack and silences; database upkeep while it writes; history;
//! JSON logs; retention from the command line.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, wait_until};

/// A config whose memory threshold every machine breaches, with a short cooldown.
const ALWAYS_ALERTING: &str = "alert_cooldown = 0.2\n\
    [thresholds.memory_usage_percent]\nwarning = 0.001\ncritical = 99.99\n";

fn alerts_json(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["alerts", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.hm_ok(&all)).unwrap()
}

fn memory_alert(env: &Env) -> Option<serde_json::Value> {
    alerts_json(env, &[])
        .into_iter()
        .find(|a| a["alert_type"] == "memory_usage_percent")
}

#[test]
fn ack_stops_reminders_and_silences_persist_across_restarts() {
    let env = Env::new(ALWAYS_ALERTING);
    let daemon = env.start(&["--interval", "0.1"]);
    wait_until("the memory alert", || memory_alert(&env).is_some());
    let alert = memory_alert(&env).unwrap();
    let id = alert["id"].as_i64().expect("alerts carry their id");
    // Reminders come every cooldown while nobody acknowledges.
    let notified = |env: &Env| {
        env.db()
            .query_row(
                "SELECT last_notified_at FROM health_alerts WHERE id = ?1",
                [id],
                |r| r.get::<_, String>(0),
            )
            .unwrap()
    };
    let first = notified(&env);
    wait_until("a reminder", || notified(&env) != first);

    let out = env.hm_ok(&["ack", &id.to_string()]);
    assert!(out.contains(&format!("acknowledged alert {id}")), "{out}");
    wait_until("the acknowledgement recorded", || {
        env.count(&format!(
            "SELECT count(*) FROM health_alerts WHERE id = {id} AND acknowledged_at IS NOT NULL
             AND acknowledged_by IS NOT NULL"
        )) == 1
    });
    let after_ack = notified(&env);
    // Many cooldowns' worth of cycles later, no reminder has been stamped.
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 60);
    assert_eq!(notified(&env), after_ack, "a reminder after the ack");
    assert!(daemon.log().contains("alert acknowledged"));
    // Unknown ids are refused with a reason.
    let out = env.hm(&["ack", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no active alert has id 999999"));

    env.hm_ok(&[
        "silence",
        "add",
        "--resource",
        "memory:system",
        "--for",
        "2h",
        "--comment",
        "resize",
    ]);
    let listed = env.hm_ok(&["silence", "list"]);
    assert!(
        listed.contains("memory:system") && listed.contains("resize"),
        "{listed}"
    );
    let table = env.hm_ok(&["alerts"]);
    assert!(table.contains("silenced"), "{table}");
    env.hm_ok(&["stop"]);

    // Silences and acknowledgements come back with the daemon.
    let _daemon = env.start(&["--interval", "0.1"]);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&env.hm_ok(&["silence", "list", "--json"])).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["resource_id"], "system");
    let alert = memory_alert(&env).unwrap();
    assert_eq!(alert["id"], id, "the same alert, not a new row");
    assert!(
        alert["acknowledged_at"].is_string(),
        "the ack survived: {alert}"
    );
    let after_restart = notified(&env);
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    env.wait_count(
        &format!("SELECT count(*) FROM health_metrics WHERE timestamp > '{later}'"),
        1,
    );
    assert_eq!(
        notified(&env),
        after_restart,
        "reminders resumed after a restart"
    );
    let again = env.hm(&["ack", &id.to_string()]);
    assert!(again.status.success(), "acknowledging twice is harmless");
    env.hm_ok(&["silence", "remove", "--resource", "memory:system"]);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&env.hm_ok(&["silence", "list", "--json"])).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[test]
fn alert_commands_work_without_a_daemon_and_refuse_bad_input() {
    let env = Env::new(ALWAYS_ALERTING);
    env.hm_ok(&["start", "--once"]);
    let alert = memory_alert(&env).expect("--once raised the alert");
    let id = alert["id"].as_i64().unwrap();
    env.hm_ok(&["ack", &id.to_string()]);
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM health_alerts WHERE id = {id} AND acknowledged_at IS NOT NULL"
        )),
        1
    );
    env.hm_ok(&[
        "silence",
        "add",
        "--resource",
        "agent:a1",
        "--metric",
        "agent_memory_mb",
        "--for",
        "30m",
    ]);
    assert!(env.hm_ok(&["silence", "list"]).contains("agent_memory_mb"));

    for (args, needle) in [
        (
            vec!["silence", "add", "--resource", "robot:x", "--for", "1h"],
            "robot",
        ),
        (
            vec!["silence", "add", "--resource", "agent:../x", "--for", "1h"],
            "id",
        ),
        (
            vec!["silence", "add", "--resource", "agent:a1", "--for", "soon"],
            "duration",
        ),
        (
            vec!["silence", "add", "--resource", "agent:a1", "--for", "0s"],
            "more than 0",
        ),
        (vec!["ack", "seven"], "invalid"),
    ] {
        let out = env.hm(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Resolved history is listed with --all.
    env.db_write()
        .execute(
            "UPDATE health_alerts SET resolved = 1, resolved_at = timestamp",
            [],
        )
        .unwrap();
    assert!(alerts_json(&env, &[]).is_empty());
    let all = alerts_json(&env, &["--all"]);
    assert!(all.iter().any(|a| a["id"] == id && a["resolved"] == true));
    let out = env.hm(&["ack", &id.to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already resolved"));
}

#[test]
fn upkeep_runs_while_the_daemon_writes() {
    let env = Env::new("");
    let _daemon = env.start(&["--interval", "0.05"]);
    env.wait_count("SELECT count(*) FROM health_metrics", 50);
    assert!(env.hm_ok(&["db", "check"]).contains("integrity ok"));

    let copy = env.path("backup.db");
    let out = env.hm_ok(&["db", "backup", copy.to_str().unwrap()]);
    assert!(out.contains("integrity ok"), "{out}");
    let backup = rusqlite::Connection::open(&copy).unwrap();
    let rows: i64 = backup
        .query_row("SELECT count(*) FROM health_metrics", [], |r| r.get(0))
        .unwrap();
    assert!(rows >= 50, "{rows}");
    let again = env.hm(&["db", "backup", copy.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));

    // Everything older than a few milliseconds goes; the daemon keeps writing.
    let out = env.hm_ok(&["db", "prune", "--retention-days", "0.00000001"]);
    let pruned: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(pruned >= 50, "{out}");
    let left = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", left + 20);
    assert!(env.hm_ok(&["db", "vacuum"]).contains("vacuumed"));
    env.wait_count("SELECT count(*) FROM health_metrics", left + 40);
    assert!(env.hm_ok(&["db", "check"]).contains("integrity ok"));
    env.hm_ok(&["stop"]);
    // And without a daemon, under its lock.
    assert!(env.hm_ok(&["db", "prune"]).contains("pruned 0 rows"));
    assert!(env.hm_ok(&["db", "vacuum"]).contains("vacuumed"));
}

#[test]
fn history_shows_a_series_with_its_statistics() {
    let env = Env::new("");
    let _daemon = env.start(&["--interval", "0.1"]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name = 'memory_usage_percent'",
        5,
    );
    let json: serde_json::Value = serde_json::from_str(&env.hm_ok(&[
        "history",
        "memory",
        "system",
        "memory_usage_percent",
        "--since",
        "10m",
        "--json",
    ]))
    .unwrap();
    let count = json["count"].as_u64().unwrap();
    assert!(count >= 5, "{json}");
    assert_eq!(json["points"].as_array().unwrap().len() as u64, count);
    let (min, avg, max) = (
        json["min"].as_f64().unwrap(),
        json["avg"].as_f64().unwrap(),
        json["max"].as_f64().unwrap(),
    );
    assert!(min <= avg && avg <= max && min > 0.0, "{json}");
    assert_eq!(json["unit"], "%");
    let text = env.hm_ok(&["history", "memory", "system", "memory_usage_percent"]);
    assert!(
        text.contains("min ") && text.contains(" avg ") && text.contains(" max "),
        "{text}"
    );
    assert!(
        text.chars().any(|c| ('▁'..='█').contains(&c)),
        "no sparkline: {text}"
    );
    let bad = env.hm(&[
        "history",
        "memory",
        "system",
        "memory_usage_percent",
        "--since",
        "later",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn json_logs_carry_alert_fields() {
    let env = Env::new(ALWAYS_ALERTING);
    let daemon = env.start(&["--interval", "0.1", "--log-format", "json"]);
    wait_until("the memory alert", || memory_alert(&env).is_some());
    env.hm_ok(&["stop"]);
    let log = daemon.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let fired = events
        .iter()
        .find(|e| {
            e["alert_state"] == "firing"
                && e["resource_type"] == "memory"
                && e["alert_type"] == "memory_usage_percent"
        })
        .unwrap_or_else(|| panic!("no alert event in {log}"));
    assert_eq!(fired["severity"], "unhealthy");
    assert_eq!(fired["resource_type"], "memory");
    assert_eq!(fired["level"], "WARN");
    assert!(fired["alert_id"].as_i64().is_some(), "{fired}");
}

#[test]
fn retention_days_from_the_command_line_prunes_old_rows() {
    let env = Env::new("");
    env.hm_ok(&["start", "--once"]);
    let old = "2020-01-01T00:00:00.000000Z";
    env.db_write()
        .execute(
            "INSERT INTO health_metrics (resource_type, resource_id, metric_name, value, timestamp, status)
             VALUES ('cpu', 'system', 'cpu_usage_percent', 1, ?1, 'healthy')",
            [old],
        )
        .unwrap();
    let old_rows = format!("SELECT count(*) FROM health_metrics WHERE timestamp = '{old}'");
    // Kept for 10000 days...
    let daemon = env.start(&["--interval", "0.1", "--retention-days", "10000"]);
    env.wait_count("SELECT count(*) FROM health_metrics", 20);
    env.hm_ok(&["stop"]);
    drop(daemon);
    assert_eq!(env.count(&old_rows), 1);
    // ...pruned at once under the default 7.
    let _daemon = env.start(&["--interval", "0.1"]);
    wait_until("the old row pruned", || env.count(&old_rows) == 0);
    let bad = env.hm(&["start", "--retention-days=-1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("retention_days"));
}

#[test]
fn config_check_validates_without_starting_anything_and_exits_2_on_a_bad_file() {
    let env =
        Env::new("interval = 5\n[thresholds.cpu_usage_percent]\nwarning = 70\ncritical = 90\n");
    let out = env.hm(&["config", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("is valid"), "{text}");
    assert!(
        text.contains("cpu_usage_percent          70 / 90  file"),
        "{text}"
    );
    assert!(
        text.contains("memory_usage_percent       80 / 95  default"),
        "{text}"
    );
    assert!(!env.db.exists(), "nothing was started or created");
    assert!(!env.socket.exists());
    let bad = env.path("bad.toml");
    std::fs::write(
        &bad,
        "[thresholds.cpu_usage_percent]\nwarning = 90\ncritical = 90\n",
    )
    .unwrap();
    let out = env.hm(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not valid") && err.contains("must differ"),
        "{err}"
    );
}

#[test]
fn bash_loads_the_completions_and_completes_commands() {
    let script = format!(
        "source <('{bin}' completions bash) && complete -p health-monitor && \
         COMP_WORDS=(health-monitor rep) COMP_CWORD=1 COMP_LINE='health-monitor rep' COMP_POINT=18 \
         && _health__monitor health-monitor rep health-monitor && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bin = common::bin()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("-F _health__monitor health-monitor"),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "report"), "{text}");
    let man = std::process::Command::new(common::bin())
        .arg("man")
        .output()
        .unwrap();
    assert!(man.status.success());
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH health-monitor 1"));
}
