//! Pushed metrics end to end: the real binary's `report` (one metric, or many on stdin) and the
//! socket's `report` op, read back from the database and from `status --json`: thresholds from
//! the report and from the config, alerts, refusals, the TTL's `metric_stale`, `--remove`, the
//! cap, and what survives a restart.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Output;

use common::{Env, FakeAgent, wait_until};
use serde_json::Value;

const FAST: &str = "interval = 0.3\nalert_cooldown = 300\n";

/// Runs `report --stdin` with `input`.
fn report_stdin(env: &Env, input: &str) -> Output {
    env.hm_with_stdin(&["report", "--stdin"], input)
}

/// The status' view of one metric of one resource: its value and status.
fn shown(status: &Value, resource_type: &str, id: &str, metric: &str) -> Option<(f64, String)> {
    let resource = status["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resource_type"] == resource_type && r["resource_id"] == id)?;
    let m = resource["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["metric_name"] == metric)?;
    Some((m["value"].as_f64()?, m["status"].as_str()?.to_string()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_readme_example_is_stored_judged_by_its_thresholds_and_alerted() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let out = env.hm_ok(&[
        "report",
        "agent",
        "a1",
        "response_time",
        "150",
        "--warning",
        "100",
        "--critical",
        "200",
        "--unit",
        "ms",
    ]);
    assert!(out.contains("reported 1 metric"), "{out}");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'a1' AND metric_name = \
         'response_time' AND value = 150 AND threshold_warning = 100 AND threshold_critical = 200 \
         AND unit = 'ms' AND status = 'unhealthy'",
        1,
    );
    wait_until("an unhealthy response_time alert", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE resource_type = 'agent' AND resource_id = \
             'a1' AND alert_type = 'response_time' AND severity = 'unhealthy' AND resolved = 0",
        ) == 1
    });
    // The agent is not monitored: the pushed metric shows all the same.
    assert_eq!(
        shown(&env.status(), "agent", "a1", "response_time"),
        Some((150.0, "unhealthy".into()))
    );
    // Critical past 200, then healthy again: the alert follows and resolves.
    env.hm_ok(&["report", "agent", "a1", "response_time", "250"]);
    wait_until("the alert to escalate to critical", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type = 'response_time' \
             AND severity = 'critical' AND resolved = 0",
        ) == 1
    });
    env.hm_ok(&["report", "agent", "a1", "response_time", "50"]);
    wait_until("the alert to resolve", || {
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type = 'response_time' AND resolved = 0",
        ) == 0
    });
    // The later reports kept the first one's thresholds and unit.
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_metrics WHERE metric_name = 'response_time' \
             AND threshold_critical = 200 AND unit = 'ms'"
        ),
        3
    );
}

#[test]
fn a_thousand_lines_on_stdin_land_and_bad_lines_are_refused_by_number() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    let mut input = String::new();
    for i in 0..1000 {
        input.push_str(&format!(
            "workspace w{} depth_{} {i} warning=900 critical=990\n",
            i / 10,
            i % 10
        ));
    }
    let out = report_stdin(&env, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reported 1000 metrics"));
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name LIKE 'depth_%'",
        1000,
    );
    // Values 900 to 999 breach: 90 unhealthy, 10 critical.
    env.wait_count(
        "SELECT count(*) FROM health_alerts WHERE alert_type LIKE 'depth_%' AND resolved = 0",
        100,
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM health_alerts WHERE alert_type LIKE 'depth_%' \
             AND severity = 'critical'"
        ),
        10
    );

    // Bad lines, among good ones: each refused with its line number, the rest kept.
    let mixed = "agent a2 good_one 1\n\
                 agent a2 agent_memory_mb 5\n\
                 agent a2 nan_value NaN\n\
                 agent a2 inf_value inf\n\
                 agent ../a2 escape 1\n\
                 agent a2 half 1 warning=3\n\
                 agent a2 good_two 2\n";
    let out = report_stdin(&env, mixed);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for (line, why) in [
        (2, "built-in metric"),
        (3, "not a finite number"),
        (4, "not a finite number"),
        (5, "a2"),
        (6, "give both"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("line {line}:")) && l.contains(why)),
            "line {line} ({why}) in:\n{err}"
        );
    }
    assert!(err.contains("5 of 7 metrics refused"), "{err}");
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE resource_id = 'a2' AND metric_name IN \
         ('good_one', 'good_two')",
        2,
    );
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id = 'a2'"),
        2
    );
}

#[test]
fn a_series_nobody_reports_goes_stale_and_comes_back_when_reported() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    env.hm_ok(&["report", "check", "backup", "age_hours", "3", "--ttl", "2s"]);
    env.hm_ok(&["report", "check", "backup", "size_gb", "9", "--ttl", "1h"]);
    wait_until("the value in the status", || {
        shown(&env.status(), "check", "backup", "age_hours").is_some()
    });
    wait_until("a metric_stale alert", || {
        env.alert_active("backup", "metric_stale")
    });
    let message: String = env
        .db()
        .query_row(
            "SELECT message FROM health_alerts WHERE alert_type = 'metric_stale' AND resolved = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        message.contains("age_hours") && !message.contains("size_gb"),
        "{message}"
    );
    let status = env.status();
    assert_eq!(shown(&status, "check", "backup", "age_hours"), None);
    assert!(shown(&status, "check", "backup", "size_gb").is_some());
    env.hm_ok(&["report", "check", "backup", "age_hours", "4"]);
    wait_until("metric_stale to resolve", || {
        !env.alert_active("backup", "metric_stale")
    });
    assert_eq!(
        shown(&env.status(), "check", "backup", "age_hours").map(|(v, _)| v),
        Some(4.0)
    );
}

#[test]
fn remove_retires_a_series_with_its_alerts() {
    let env = Env::new(FAST);
    let _daemon = env.start(&[]);
    env.hm_ok(&[
        "report",
        "agent",
        "a1",
        "errors",
        "9",
        "--warning",
        "1",
        "--critical",
        "5",
    ]);
    wait_until("a critical errors alert", || {
        env.alert_active("a1", "errors")
    });
    let out = env.hm_ok(&["report", "--remove", "agent", "a1", "errors"]);
    assert!(out.contains("removed agent/a1 errors"), "{out}");
    wait_until("the alert to resolve", || !env.alert_active("a1", "errors"));
    assert_eq!(shown(&env.status(), "agent", "a1", "errors"), None);
    assert_eq!(env.count("SELECT count(*) FROM pushed_series"), 0);
    // Removed on purpose: it never goes stale, though its default TTL (3 intervals, 0.9 s)
    // passes several times over while the system collector cycles ten times.
    let cycles = |env: &Env| {
        env.count("SELECT count(*) FROM health_metrics WHERE metric_name = 'cpu_usage_percent'")
    };
    let seen = cycles(&env);
    wait_until("ten more cycles", || cycles(&env) >= seen + 10);
    assert!(!env.alert_active("a1", "metric_stale"));
    // Removing it again says there is nothing to remove.
    let again = env.hm(&["report", "--remove", "agent", "a1", "errors"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("is not a pushed series"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn pushed_metrics_and_an_agent_collector_share_a_resource_without_erasing_each_other() {
    let env = Env::new(FAST);
    let mut agent = FakeAgent::spawn();
    let _daemon = env.start(&[]);
    let pid = agent.pid().to_string();
    env.hm_ok(&["add", "agent", "a1", "--pid", &pid]);
    env.hm_ok(&["report", "agent", "a1", "queue_depth", "7", "--ttl", "1h"]);
    let cycles = |env: &Env| {
        env.count(
            "SELECT count(*) FROM health_metrics WHERE resource_id = 'a1' AND metric_name = \
             'agent_active'",
        )
    };
    let before = cycles(&env);
    wait_until("three more agent cycles", || cycles(&env) >= before + 3);
    let status = env.status();
    assert_eq!(
        shown(&status, "agent", "a1", "queue_depth").map(|(v, _)| v),
        Some(7.0),
        "the agent's cycles left the pushed metric: {status:#}"
    );
    assert!(shown(&status, "agent", "a1", "agent_active").is_some());
    agent.kill();
}

#[test]
fn config_thresholds_apply_to_pushed_metrics_and_thresholds_survive_a_restart() {
    let config = format!(
        "{FAST}[thresholds.latency_ms]\nwarning = 10\ncritical = 20\nfor_cycles = 2\n\
         [pushed]\nmax_series = 3\n"
    );
    let env = Env::new(&config);
    let mut daemon = env.start(&[]);
    // Thresholds from the config, with its for_cycles: the first breach opens nothing.
    env.hm_ok(&["report", "agent", "a1", "latency_ms", "15"]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name = 'latency_ms' AND status = \
         'unhealthy' AND threshold_warning = 10",
        1,
    );
    assert!(!env.alert_active("a1", "latency_ms"));
    env.hm_ok(&["report", "agent", "a1", "latency_ms", "16"]);
    wait_until("the alert after two breaches", || {
        env.alert_active("a1", "latency_ms")
    });
    // Own thresholds for another series; then the cap of three.
    env.hm_ok(&[
        "report",
        "agent",
        "a1",
        "lag",
        "1",
        "--warning",
        "5",
        "--critical",
        "2",
    ]);
    env.hm_ok(&["report", "agent", "a1", "third", "1"]);
    let over = env.hm(&["report", "agent", "a1", "fourth", "1"]);
    assert!(!over.status.success());
    assert!(stderr(&over).contains("cap"), "{}", stderr(&over));
    assert_eq!(env.count("SELECT count(*) FROM pushed_series"), 3);
    assert_eq!(env.status()["pushed_series"], 3);

    // After a restart, a report without thresholds still gets the stored ones.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(), 0);
    let _daemon = env.start(&[]);
    env.hm_ok(&["report", "agent", "a1", "lag", "1.5"]);
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name = 'lag' AND value = 1.5 AND \
         threshold_warning = 5 AND threshold_critical = 2 AND status = 'critical'",
        1,
    );
    // The cap still counts the restored series.
    assert!(
        !env.hm(&["report", "agent", "a1", "fourth", "1"])
            .status
            .success()
    );
}

#[test]
fn without_a_daemon_report_says_so_and_a_bad_name_in_the_config_is_refused() {
    let env = Env::new(FAST);
    let out = env.hm(&["report", "agent", "a1", "x", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no daemon answers"),
        "{}",
        stderr(&out)
    );
    let typo = Env::new("[thresholds.agent_memory]\nwarning = 1\ncritical = 2\n");
    let out = typo.hm(&["start", "--once"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did you mean \"agent_memory_mb\""),
        "{}",
        stderr(&out)
    );
}

/// Sends one HTTP/1.1 request with `Connection: close` and returns the status and body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

#[test]
fn http_takes_a_report_with_the_token_and_refuses_one_without() {
    let token = "pushed-e2e-token-0123456789";
    let env = Env::new(&format!("{FAST}[http]\ntoken = \"{token}\"\n"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = env.start(&["--listen", &addr]);
    let body = r#"{"metrics":[
        {"resource_type":"agent","resource_id":"a1","metric":"response_time","value":150,
         "warning":100,"critical":200,"unit":"ms"},
        {"resource_type":"agent","resource_id":"a1","metric":"cpu_usage_percent","value":1}]}"#;
    let (status, _) = http(&addr, "POST", "/api/v1/metrics", None, body);
    assert_eq!(status, 401);
    let (status, answer) = http(&addr, "POST", "/api/v1/metrics", Some(token), body);
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["refused"][0]["index"], 1);
    assert!(
        answer["refused"][0]["error"]
            .as_str()
            .unwrap()
            .contains("built-in metric")
    );
    env.wait_count(
        "SELECT count(*) FROM health_metrics WHERE metric_name = 'response_time' AND status = \
         'unhealthy'",
        1,
    );
    assert_eq!(
        env.count("SELECT count(*) FROM health_metrics WHERE resource_id = 'a1' AND metric_name = 'cpu_usage_percent'"),
        0
    );
    let (status, _) = http(
        &addr,
        "DELETE",
        "/api/v1/metrics/agent/a1/response_time",
        Some(token),
        "",
    );
    assert_eq!(status, 200);
    let (status, _) = http(
        &addr,
        "DELETE",
        "/api/v1/metrics/agent/a1/response_time",
        Some(token),
        "",
    );
    assert_eq!(status, 404);
}
