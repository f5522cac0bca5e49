//! The Alertmanager sink against a real Alertmanager (Debian's `prometheus-alertmanager`):
//! a firing notice shows up with our labels, annotations and start, is kept alive by re-sends,
//! and a resolved notice ends it. Skips with a note when the binary is missing.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use health_monitor::alerts::AlertEvent;
use health_monitor::config::outputs::{AlertmanagerSink, NotifySettings};
use health_monitor::model::{HealthAlert, HealthStatus, ResourceType};
use health_monitor::notify::{Notice, NoticeState, Notifier, Timings};
use serde_json::Value;

/// The minimal configuration the test runs Alertmanager with: the README's example.
const CONFIG: &str = include_str!("../contrib/alertmanager.yml");

/// The binary to run: `$ALERTMANAGER_BIN`, else Debian's.
fn binary() -> PathBuf {
    std::env::var_os("ALERTMANAGER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus-alertmanager"))
}

/// A running Alertmanager, killed and reaped when dropped (also when the test fails).
struct Running {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn start(bin: &Path, dir: &Path) -> Running {
        let config = dir.join("alertmanager.yml");
        std::fs::write(&config, CONFIG).unwrap();
        // A free port: bind to 0, read it, let go. Alertmanager takes it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("alertmanager.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no cluster listener, no gossip with anything.
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut am = Running {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        am.wait_ready();
        am
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("alertmanager exited ({status}):\n{}", self.log_text());
            }
            let ready = ureq::get(format!("{}/-/ready", self.url))
                .config()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .call();
            if ready.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager not ready in 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds as not yet ended.
    fn alerts(&self) -> Vec<Value> {
        let body = ureq::get(format!("{}/api/v2/alerts", self.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Our alert for `resource_id`, if Alertmanager shows it.
    fn alert_for(&self, resource_id: &str) -> Option<Value> {
        self.alerts()
            .into_iter()
            .find(|a| a["labels"]["resource_id"] == resource_id)
    }

    /// Polls `check` until it gives a value or `limit` passes.
    fn eventually<T>(&self, limit: Duration, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within {limit:?}; alerts: {:?}\nlog:\n{}",
                self.alerts(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn alert(resource_id: &str, opened: DateTime<Utc>) -> HealthAlert {
    HealthAlert {
        id: Some(7),
        resource_type: ResourceType::Agent,
        resource_id: resource_id.into(),
        alert_type: "agent_memory_mb".into(),
        severity: HealthStatus::Critical,
        message: format!(
            "agent {resource_id}: agent_memory_mb is 9000 MB (>= critical threshold 8000)"
        ),
        timestamp: opened,
        metadata: serde_json::json!({
            "metric_name": "agent_memory_mb",
            "value": 9000.0,
            "threshold_warning": 4000.0,
            "threshold_critical": 8000.0,
            "unit": "MB",
        }),
        resolved: false,
        resolved_at: None,
        last_notified_at: opened,
        acknowledged_at: None,
    }
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn notifier(url: &str, resend: Duration) -> Notifier {
    let settings = NotifySettings {
        alertmanagers: vec![AlertmanagerSink {
            url: url.to_string(),
            timeout: Duration::from_secs(5),
        }],
        retries: 2,
        ..Default::default()
    };
    let timings = Timings {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(200),
        resend_interval: resend,
        ..Timings::default()
    };
    Notifier::with_timings(&settings, timings)
}

#[test]
fn a_real_alertmanager_shows_our_alert_keeps_it_alive_and_ends_it() {
    let bin = binary();
    if !bin.exists() {
        eprintln!(
            "NOTE: skipping the Alertmanager test: {} is missing \
             (apt-get install prometheus-alertmanager; CI installs it)",
            bin.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let am = Running::start(&bin, dir.path());

    // Firing, with a long resend interval: whatever ends it below is our resolution, not expiry.
    let slow = notifier(&am.url, Duration::from_secs(60));
    let opened = Utc::now() - chrono::Duration::seconds(5);
    let firing = alert("it-agent-1", opened);
    let notice = Notice::from_event(&AlertEvent::Fired(firing.clone()), Utc::now()).unwrap();
    slow.notify(&notice);
    let shown = am.eventually(Duration::from_secs(10), |am| am.alert_for("it-agent-1"));
    assert_eq!(
        shown["labels"],
        serde_json::json!({
            "alertname": "agent_memory_mb",
            "severity": "critical",
            "resource_type": "agent",
            "resource_id": "it-agent-1",
            "metric": "agent_memory_mb",
        })
    );
    assert_eq!(shown["annotations"]["summary"], notice.message);
    let description = shown["annotations"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("agent it-agent-1: agent_memory_mb = 9000 MB"),
        "{description}"
    );
    assert_eq!(shown["status"]["state"], "active");
    let starts = time(&shown["startsAt"]);
    assert!(
        (starts - opened).num_milliseconds().abs() < 1,
        "{starts} vs {opened}"
    );
    let ends = time(&shown["endsAt"]);
    assert!(
        ends > Utc::now() + chrono::Duration::seconds(200),
        "endsAt {ends}: four resend intervals ahead"
    );

    // Resolved: Alertmanager no longer lists it. Its API lists only alerts whose endsAt is
    // still ahead, whatever the filters; an ended alert has no state of its own to check.
    let mut done = firing.clone();
    done.resolved = true;
    done.resolved_at = Some(Utc::now());
    slow.notify(&Notice::from_event(&AlertEvent::Resolved(done), Utc::now()).unwrap());
    am.eventually(Duration::from_secs(10), |am| {
        am.alert_for("it-agent-1").is_none().then_some(())
    });
    // Alertmanager may act on the POST before the sink has read its answer and counted it.
    let report = am.eventually(Duration::from_secs(10), |_| {
        let r = slow.report().remove(0);
        (r.sent == 2).then_some(r)
    });
    assert_eq!((report.sent, report.failed), (2, 0), "{report:?}");
    assert_eq!(report.sink, format!("alertmanager:{}", am.url));
    slow.shutdown(Duration::from_secs(5));

    // Re-sends: with a 1 s interval the alert's endsAt moves forward without new notices.
    let fast = notifier(&am.url, Duration::from_secs(1));
    let kept = alert("it-agent-2", Utc::now());
    let reminder = Notice::from_event(&AlertEvent::Reminder(kept), Utc::now()).unwrap();
    assert_eq!(reminder.state, NoticeState::Reminder);
    fast.notify(&reminder);
    let first = am.eventually(Duration::from_secs(10), |am| {
        am.alert_for("it-agent-2").map(|a| time(&a["endsAt"]))
    });
    am.eventually(Duration::from_secs(10), |am| {
        am.alert_for("it-agent-2")
            .filter(|a| time(&a["endsAt"]) > first)
            .map(|_| ())
    });
    assert_eq!(fast.report()[0].sent, 1, "re-sends are not notices");
    fast.shutdown(Duration::from_secs(5));
}

#[test]
fn the_daemon_sends_its_alerts_and_their_resolution_to_alertmanager() {
    let bin = binary();
    if !bin.exists() {
        eprintln!(
            "NOTE: skipping: {} is missing (install prometheus-alertmanager)",
            bin.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let am = Running::start(&bin, dir.path());
    let env = common::Env::new("");
    let workspace = env.path("ws");
    let _daemon = env.start(&["--interval", "0.1", "--alertmanager", &am.url]);
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        workspace.to_str().unwrap(),
    ]);
    // The workspace does not exist: workspace_exists goes critical and reaches Alertmanager.
    let alert = am.eventually(Duration::from_secs(30), |am| am.alert_for("w1"));
    assert_eq!(alert["labels"]["alertname"], "workspace_exists");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["resource_type"], "workspace");
    assert_eq!(alert["labels"]["metric"], "workspace_exists");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("workspace w1"),
        "{alert}"
    );
    let stored_start = env
        .db()
        .query_row(
            "SELECT timestamp FROM health_alerts WHERE resource_id = 'w1' AND resolved = 0",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap();
    let stored_start = DateTime::parse_from_rfc3339(&stored_start).unwrap();
    assert!(
        (time(&alert["startsAt"]) - stored_start.with_timezone(&Utc))
            .num_milliseconds()
            .abs()
            <= 1
    );
    // It comes back: the resolution ends it there.
    std::fs::create_dir(&workspace).unwrap();
    am.eventually(Duration::from_secs(30), |am| {
        am.alert_for("w1").is_none().then_some(())
    });
    let status = env.status();
    let sink = &status["notifications"][0];
    assert!(
        sink["sink"].as_str().unwrap().starts_with("alertmanager:"),
        "{status}"
    );
    assert!(sink["sent"].as_u64().unwrap() >= 2, "{sink}");
}
