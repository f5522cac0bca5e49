//! Notices leave the daemon: an exec hook (`--on-alert`) and a webhook (`[[notify.webhook]]`)
//! get the same JSON with the stored alert's id; reminders follow the cooldown, an ack stops
//! them, a silence keeps a resource's notices home while its alert is still recorded, and a
//! resolution is announced.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{Env, wait_until};
use serde_json::Value;

/// A hook that appends its stdin line and two of its environment variables to `out`.
fn write_hook(path: &Path, out: &Path) {
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nline=$(cat)\nprintf '%s\\t%s\\t%s\\n' \"$HEALTH_MONITOR_ALERT_ID\" \"$HEALTH_MONITOR_STATE\" \"$line\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What the hook recorded: (env alert id, env state, the JSON notice).
fn hook_lines(out: &Path) -> Vec<(String, String, Value)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut parts = l.splitn(3, '\t');
            let id = parts.next().unwrap().to_string();
            let state = parts.next().unwrap().to_string();
            let json = serde_json::from_str(parts.next().unwrap()).unwrap();
            (id, state, json)
        })
        .collect()
}

/// A webhook receiver on loopback that records every POSTed body and answers 200.
fn webhook_server() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hook/secret-token",
        listener.local_addr().unwrap()
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                sink.lock().unwrap().push(v);
            }
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn stored_alert_id(env: &Env, resource_id: &str) -> Option<i64> {
    env.db()
        .query_row(
            "SELECT id FROM health_alerts WHERE resource_id = ?1 AND resolved = 0",
            [resource_id],
            |r| r.get(0),
        )
        .ok()
}

#[test]
fn hooks_and_webhooks_hear_firing_reminders_and_resolution_but_not_silenced_or_acked_ones() {
    let (url, webhook) = webhook_server();
    let env = Env::new(&format!(
        "alert_cooldown = 0.3\n[notify]\nretries = 0\n[[notify.webhook]]\nurl = \"{url}\"\n"
    ));
    let hook = env.path("hook.sh");
    let out = env.path("hook.out");
    write_hook(&hook, &out);
    let ws = env.path("ws");
    let quiet = env.path("quiet");
    let _daemon = env.start(&["--interval", "0.1", "--on-alert", hook.to_str().unwrap()]);
    // A silence set before the breach: `quiet` alerts but nobody is told.
    env.hm_ok(&[
        "silence",
        "add",
        "--resource",
        "workspace:quiet",
        "--for",
        "1h",
    ]);
    env.hm_ok(&["add", "workspace", "loud", "--path", ws.to_str().unwrap()]);
    env.hm_ok(&[
        "add",
        "workspace",
        "quiet",
        "--path",
        quiet.to_str().unwrap(),
    ]);

    wait_until("the firing notice and a reminder reach the hook", || {
        let lines = hook_lines(&out);
        lines.iter().any(|(_, s, _)| s == "firing") && lines.iter().any(|(_, s, _)| s == "reminder")
    });
    let id = stored_alert_id(&env, "loud").expect("the alert row");
    let lines = hook_lines(&out);
    let (env_id, _, fired) = lines.iter().find(|(_, s, _)| s == "firing").unwrap();
    assert_eq!(env_id, &id.to_string());
    assert_eq!(fired["id"], id, "the notice carries the stored row's id");
    assert_eq!(fired["resource_id"], "loud");
    assert_eq!(fired["metric_name"], "workspace_exists");
    assert_eq!(fired["severity"], "critical");
    assert_eq!(fired["value"], 0.0);
    wait_until("the webhook got the same notice", || {
        webhook
            .lock()
            .unwrap()
            .iter()
            .any(|n| n["id"] == id && n["state"] == "firing")
    });
    // The silenced workspace's alert is recorded, never sent.
    wait_until("quiet's alert recorded", || {
        stored_alert_id(&env, "quiet").is_some()
    });
    assert!(
        !hook_lines(&out)
            .iter()
            .any(|(_, _, n)| n["resource_id"] == "quiet")
    );
    assert!(
        !webhook
            .lock()
            .unwrap()
            .iter()
            .any(|n| n["resource_id"] == "quiet")
    );

    // Acknowledged: reminders stop. Notices go out asynchronously, so what counts is when each
    // reminder happened (its timestamp), not when the hook ran.
    env.hm_ok(&["ack", &id.to_string()]);
    let acked = chrono::Utc::now();
    let reminded_after = |out: &Path| {
        hook_lines(out)
            .iter()
            .filter(|(_, s, n)| {
                s == "reminder"
                    && n["id"] == id
                    && chrono::DateTime::parse_from_rfc3339(n["timestamp"].as_str().unwrap())
                        .unwrap()
                        > acked
            })
            .count()
    };
    // Wait until measurements taken five cooldowns after the ack have landed, and the hook's
    // queue has caught up with them (the webhook is fast; the hook trails it).
    let later = (acked + chrono::Duration::milliseconds(1500))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    env.wait_count(
        &format!("SELECT count(*) FROM health_metrics WHERE timestamp > '{later}'"),
        1,
    );
    wait_until("the hook's queue drained", || {
        env.status()["notifications"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["queued"] == 0))
    });
    assert_eq!(
        reminded_after(&out),
        0,
        "reminders kept coming after the ack"
    );

    // Recovery is announced to both.
    std::fs::create_dir(&ws).unwrap();
    wait_until("the resolved notice", || {
        hook_lines(&out)
            .iter()
            .any(|(_, s, n)| s == "resolved" && n["id"] == id)
            && webhook
                .lock()
                .unwrap()
                .iter()
                .any(|n| n["state"] == "resolved" && n["id"] == id)
    });
    // Long after it fired, the silenced workspace's alert has still not been sent.
    assert!(
        !hook_lines(&out)
            .iter()
            .any(|(_, _, n)| n["resource_id"] == "quiet")
    );
    assert!(
        !webhook
            .lock()
            .unwrap()
            .iter()
            .any(|n| n["resource_id"] == "quiet")
    );
    let status = env.status();
    let sinks = status["notifications"].as_array().unwrap();
    assert_eq!(sinks.len(), 2, "{status}");
    let web = sinks
        .iter()
        .find(|s| s["sink"].as_str().unwrap().starts_with("webhook:"))
        .unwrap();
    assert!(
        !web["sink"].as_str().unwrap().contains("secret-token"),
        "the webhook's path is a secret: {web}"
    );
    assert_eq!(web["failed"], 0);
}

#[test]
fn a_failing_hook_never_delays_monitoring() {
    let env = Env::new("alert_cooldown = 0.05\n[notify]\nretries = 1\ntimeout = 5\n");
    let hook = env.path("slow.sh");
    std::fs::write(&hook, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _daemon = env.start(&["--interval", "0.05", "--on-alert", hook.to_str().unwrap()]);
    env.hm_ok(&[
        "add",
        "workspace",
        "gone",
        "--path",
        env.path("nowhere").to_str().unwrap(),
    ]);
    wait_until("the alert", || stored_alert_id(&env, "gone").is_some());
    // While the hook hangs on its first notice, cycles keep landing at their pace.
    let rows = env.count("SELECT count(*) FROM health_metrics");
    env.wait_count("SELECT count(*) FROM health_metrics", rows + 200);
    let status = env.status();
    let sink = &status["notifications"][0];
    assert_eq!(sink["sent"], 0, "{sink}");
    assert!(sink["queued"].as_u64().unwrap() >= 1, "{sink}");
}
