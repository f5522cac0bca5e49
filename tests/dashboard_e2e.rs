//! The web dashboard in a real browser: headless Chromium, driven through chromedriver
//! (WebDriver), against the real daemon's `start --listen`: the overview and its live updates,
//! acknowledging and silencing with, without and against the token, the read-only mode, the
//! resource page's charts and ranges, escaping, the security headers, and the README's screenshot.
//!
//! Chromium and chromedriver come with Debian's `chromium` and `chromium-driver` packages
//! (`.ci/run` installs them); where chromedriver is missing these tests fail, saying so.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use browser::{Browser, DOM_DEADLINE, Snap, free_port};
use common::{Daemon, Env, wait_until, write_file};
use serde_json::{Value, json};

const TOKEN: &str = "dashboard-e2e-token-0123456789";
const MB: usize = 1024 * 1024;

/// Small size thresholds, so a 2 MB file is over the warning and a few cycles take seconds.
const THRESHOLDS: &str = "[thresholds.workspace_size_mb]\nwarning = 1\ncritical = 3\n";

/// A config with the thresholds and, when `token`, the HTTP token that enables writes.
fn config(token: bool) -> String {
    if token {
        format!("{THRESHOLDS}[http]\ntoken = \"{TOKEN}\"\n")
    } else {
        THRESHOLDS.to_string()
    }
}

/// Starts the daemon on a free loopback port with this interval (seconds); returns it and the
/// base URL once `/healthz` answers.
fn start(env: &Env, interval: &str) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = env.start(&["--listen", &addr, "--interval", interval]);
    let base = format!("http://{addr}");
    wait_until("the HTTP listener to answer", || {
        ureq::get(format!("{base}/healthz")).call().is_ok()
    });
    (daemon, base)
}

/// One plain HTTP GET (no browser): status, headers (names lowercased) and body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn get(url: &str) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let mut body = String::new();
    resp.body_mut()
        .as_reader()
        .read_to_string(&mut body)
        .unwrap();
    Reply {
        status: resp.status().as_u16(),
        headers,
        body,
    }
}

/// `/api/v1/summary`, parsed.
fn summary(base: &str) -> Value {
    serde_json::from_str(&get(&format!("{base}/api/v1/summary")).body).unwrap_or(Value::Null)
}

/// The status the summary gives a resource, `None` before its first cycle.
fn resource_status(summary: &Value, kind: &str, id: &str) -> Option<String> {
    summary["resources"]
        .as_array()?
        .iter()
        .find(|r| r["resource_type"] == kind && r["resource_id"] == id)
        .and_then(|r| r["status"].as_str().map(str::to_string))
}

/// The id and message of the active alert on this key, once there is one.
fn active_alert(env: &Env, kind: &str, id: &str, metric: &str) -> Option<(i64, String)> {
    env.db()
        .query_row(
            "SELECT id, message FROM health_alerts WHERE resource_type = ?1 AND resource_id = ?2
             AND alert_type = ?3 AND resolved = 0",
            [kind, id, metric],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

/// Rows of `health_metrics` for one series.
fn rows(env: &Env, kind: &str, id: &str, metric: &str) -> i64 {
    env.db()
        .query_row(
            "SELECT count(*) FROM health_metrics WHERE resource_type = ?1 AND resource_id = ?2
             AND metric_name = ?3",
            [kind, id, metric],
            |r| r.get(0),
        )
        .unwrap()
}

/// The element matching `css`, which must be there (the overview is rendered by the server, so
/// this only waits for the page).
async fn must(b: &Browser, what: &str, css: &str) -> Snap {
    b.wait_snap(what, DOM_DEADLINE, css, |_| true).await
}

fn lower(s: &Snap) -> String {
    s.text.to_lowercase()
}

/// The src of every `<script>` of the page (`null` for an inline one).
async fn scripts(b: &Browser) -> Vec<Value> {
    b.js(
        "return Array.from(document.querySelectorAll('script')).map(s => s.getAttribute('src'))",
        vec![],
    )
    .await
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// Only the app's own script runs: no inline `<script>`, none but `/static/` ones.
async fn assert_only_app_scripts(b: &Browser, page: &str) {
    let srcs = scripts(b).await;
    assert!(
        !srcs.is_empty()
            && srcs
                .iter()
                .all(|s| s.as_str().is_some_and(|s| s.starts_with("/static/"))),
        "{page}: scripts other than the app's: {srcs:?}"
    );
    assert!(
        srcs.iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("/static/app.js"))),
        "{page}: no /static/app.js: {srcs:?}"
    );
}

/// The environment of the overview tests: the token set, a workspace `w1` with a small file and a
/// workspace `gone` whose directory does not exist; the daemon is running and has seen both.
fn overview_daemon(interval: &str) -> (Env, Daemon, String) {
    let env = Env::new(&config(true));
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    write_file(&ws.join("notes.txt"), 64 * 1024);
    let ws = ws.display().to_string();
    env.hm_ok(&["add", "workspace", "w1", "--path", &ws]);
    env.hm_ok(&["add", "workspace", "gone", "--path", "/nonexistent/x"]);
    let (daemon, base) = start(&env, interval);
    wait_until("w1 healthy and gone critical in the summary", || {
        let s = summary(&base);
        resource_status(&s, "workspace", "w1").as_deref() == Some("healthy")
            && resource_status(&s, "workspace", "gone").as_deref() == Some("critical")
    });
    wait_until("gone's alert", || {
        active_alert(&env, "workspace", "gone", "workspace_exists").is_some()
    });
    (env, daemon, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_resources_their_status_and_alerts() {
    let (env, _daemon, base) = overview_daemon("1");
    let (alert_id, message) = active_alert(&env, "workspace", "gone", "workspace_exists").unwrap();
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;

    let body = must(&b, "the body", "body").await;
    assert_eq!(body.attr("data-writes"), Some("enabled"), "{}", body.html);

    let overall = must(&b, "the overall status", "#overall").await;
    assert_eq!(
        overall.attr("data-status"),
        Some("critical"),
        "{}",
        overall.html
    );
    assert!(lower(&overall).contains("critical"), "{}", overall.html);

    // The host's own resources, in the system group.
    for kind in ["cpu", "memory", "filesystem"] {
        let css = format!(
            "section.group[data-kind=\"system\"] tr.resource[data-type=\"{kind}\"][data-id=\"system\"]"
        );
        let row = must(&b, &format!("the {kind} row"), &css).await;
        let status = row.attr("data-status").unwrap_or_default();
        assert!(
            ["healthy", "unhealthy", "critical", "degraded", "unknown"].contains(&status),
            "{}",
            row.html
        );
    }

    // The workspace: its status as an icon and a word, its link, its values and a sparkline.
    let w1 = "section.group[data-kind=\"workspace\"] tr.resource[data-type=\"workspace\"][data-id=\"w1\"]";
    let row = must(&b, "w1's row", w1).await;
    assert_eq!(row.attr("data-status"), Some("healthy"), "{}", row.html);
    let status = must(&b, "w1's status cell", &format!("{w1} td.status")).await;
    assert!(lower(&status).contains("healthy"), "{}", status.html);
    let has_icon = b
        .js(
            "const el = document.querySelector(arguments[0]);
             const before = getComputedStyle(el, '::before').content;
             return el.children.length > 0
                 || (before !== 'none' && before !== 'normal' && before !== '')
                 || /[^\\p{L}\\s]/u.test(el.innerText);",
            vec![json!(format!("{w1} td.status"))],
        )
        .await;
    assert_eq!(
        has_icon,
        json!(true),
        "no icon beside the word: {}",
        status.html
    );
    must(
        &b,
        "w1's link",
        &format!("{w1} td.name a[href=\"/resource/workspace/w1\"]"),
    )
    .await;
    let values = must(&b, "w1's values", &format!("{w1} td.values")).await;
    assert!(values.text.contains("workspace_size_mb"), "{}", values.html);
    must(
        &b,
        "w1's sparkline",
        &format!("{w1} td.spark svg.sparkline"),
    )
    .await;

    // The missing workspace: critical, the word visible, and its alert listed.
    let gone = "tr.resource[data-type=\"workspace\"][data-id=\"gone\"]";
    let row = must(&b, "gone's row", gone).await;
    assert_eq!(row.attr("data-status"), Some("critical"), "{}", row.html);
    let status = b
        .find("gone's status cell", &format!("{gone} td.status"))
        .await;
    let visible = status.text().await.unwrap();
    assert!(
        visible.to_lowercase().contains("critical"),
        "the word critical is not visible: {visible:?}"
    );
    let css = format!("#alerts tr.alert[data-id=\"{alert_id}\"]");
    let alert = must(&b, "gone's alert row", &css).await;
    for (attr, value) in [
        ("data-severity", "critical"),
        ("data-acked", "false"),
        ("data-silenced", "false"),
        ("data-type", "workspace"),
        ("data-resource", "gone"),
        ("data-metric", "workspace_exists"),
    ] {
        assert_eq!(alert.attr(attr), Some(value), "{attr}: {}", alert.html);
    }
    let text = lower(&alert);
    assert!(
        text.contains("critical") && text.contains("gone"),
        "{}",
        alert.html
    );
    assert!(
        alert.text.contains(&message),
        "no {message:?} in {}",
        alert.html
    );
    let age = must(&b, "the alert's age", &format!("{css} time[datetime]")).await;
    assert!(!age.attr("datetime").unwrap().is_empty(), "{}", age.html);
    must(&b, "the ack button", &format!("{css} button.ack")).await;
    must(&b, "the silence button", &format!("{css} button.silence")).await;
    must(&b, "the silences table", "table#silences").await;
    b.assert_no_console_errors("the overview").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_arrives_live_without_a_reload() {
    let interval = 1.0;
    let env = Env::new(&config(false));
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);
    let (_daemon, base) = start(&env, "1");
    wait_until("w1 in the summary", || {
        resource_status(&summary(&base), "workspace", "w1").is_some()
    });
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    let w1 = "tr.resource[data-type=\"workspace\"][data-id=\"w1\"]";
    let w1_alert = "#alerts tr.alert[data-type=\"workspace\"][data-resource=\"w1\"]\
                    [data-metric=\"workspace_size_mb\"]";
    b.wait_snap("w1 healthy", DOM_DEADLINE, w1, |s| {
        s.attr("data-status") == Some("healthy")
    })
    .await;
    b.wait_snap("the live stream connected", DOM_DEADLINE, "#live", |s| {
        s.text.trim().eq_ignore_ascii_case("live")
    })
    .await;
    assert!(b.snap(w1_alert).await.is_none(), "an alert before the file");
    b.js("window.__marker = 1; return true", vec![]).await;

    // Over the warning threshold: the next cycle measures it, the alert is pushed to the page.
    let wrote = Instant::now();
    write_file(&ws.join("big"), 2 * MB);
    let within = Duration::from_secs_f64(2.0 * interval + 3.0);
    let alert = b
        .wait_snap("w1's alert row, live", within, w1_alert, |_| true)
        .await;
    let arrived = wrote.elapsed();
    assert_eq!(
        alert.attr("data-severity"),
        Some("unhealthy"),
        "{}",
        alert.html
    );
    assert!(lower(&alert).contains("unhealthy"), "{}", alert.html);
    let left = within.saturating_sub(wrote.elapsed());
    b.wait_snap("w1's row unhealthy, live", left, w1, |s| {
        s.attr("data-status") == Some("unhealthy")
    })
    .await;
    let changed = wrote.elapsed();
    assert_eq!(
        b.js(
            "return window.__marker === undefined ? null : window.__marker",
            vec![]
        )
        .await,
        json!(1),
        "the page was reloaded"
    );

    // And back: the alert resolves and its row goes, still without a reload.
    let removed = Instant::now();
    fs::remove_file(ws.join("big")).unwrap();
    b.wait_gone("w1's alert row to go, live", within, w1_alert)
        .await;
    b.wait_snap("w1's row healthy again, live", within, w1, |s| {
        s.attr("data-status") == Some("healthy")
    })
    .await;
    let resolved = removed.elapsed();
    assert_eq!(
        b.js(
            "return window.__marker === undefined ? null : window.__marker",
            vec![]
        )
        .await,
        json!(1),
        "the page was reloaded"
    );
    eprintln!(
        "live: alert row after {arrived:?}, status after {changed:?}, resolved after {resolved:?} \
         (deadline {within:?})"
    );
    b.assert_no_console_errors("the overview").await;
}

/// `acknowledged_at` of an alert.
fn acked_at(env: &Env, id: i64) -> Option<String> {
    env.db()
        .query_row(
            "SELECT acknowledged_at FROM health_alerts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

fn silences(env: &Env) -> i64 {
    env.count("SELECT count(*) FROM silences")
}

/// Empties `#flash`, so that the next message is the next action's.
async fn clear_flash(b: &Browser) {
    b.js(
        "const f = document.querySelector('#flash'); if (f) f.textContent = ''; return true",
        vec![],
    )
    .await;
}

/// Waits until the page has seen `n` more `cycle` events, on a stream of its own beside the
/// app's: whatever a cycle's update does to the page has been done for at least `n - 1` of them.
/// (A cycle is sent only when something changed; the host's CPU figures change every cycle.)
async fn wait_cycles(b: &Browser, n: u64) {
    b.js(
        "if (!window.__cycles) {
             window.__cycles = { seen: 0 };
             const es = new EventSource('/api/v1/events');
             es.addEventListener('cycle', () => { window.__cycles.seen += 1; });
         }
         window.__cycles.from = window.__cycles.seen;
         return true",
        vec![],
    )
    .await;
    let what = format!("{n} cycle events");
    browser::poll(&what, DOM_DEADLINE, || async {
        let v = b
            .js("return window.__cycles.seen - window.__cycles.from", vec![])
            .await;
        (v.as_u64()? >= n).then_some(())
    })
    .await;
}

async fn flash(b: &Browser, what: &str, ok: impl Fn(&str) -> bool) -> String {
    b.wait_snap(what, DOM_DEADLINE, "#flash", |s| ok(&s.text.to_lowercase()))
        .await
        .text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_silence_need_the_token() {
    let env = Env::new(&config(true));
    env.hm_ok(&["add", "workspace", "gone", "--path", "/nonexistent/x"]);
    let (_daemon, base) = start(&env, "1");
    wait_until("gone's alert", || {
        active_alert(&env, "workspace", "gone", "workspace_exists").is_some()
    });
    let (id, _) = active_alert(&env, "workspace", "gone", "workspace_exists").unwrap();
    let row = format!("#alerts tr.alert[data-id=\"{id}\"]");
    let silence_row = "#silences tr.silence[data-type=\"workspace\"][data-id=\"gone\"]";

    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    must(&b, "the alert row", &row).await;

    // A fresh session has no token: refused, said so, nothing written.
    clear_flash(&b).await;
    b.click("ack", &format!("{row} button.ack")).await;
    let said = flash(&b, "the refusal without a token", |t| {
        t.contains("401") || t.contains("token")
    })
    .await;
    eprintln!("without a token: {said:?}");

    // A wrong token: 401 for both actions, nothing written.
    b.type_into("the token field", "#token", "wrong-token-0000000000000000")
        .await;
    b.click(
        "the token form's button",
        "#token-form button[type=\"submit\"]",
    )
    .await;
    clear_flash(&b).await;
    b.click("ack", &format!("{row} button.ack")).await;
    let said = flash(&b, "401 for ack with a wrong token", |t| t.contains("401")).await;
    eprintln!("ack with a wrong token: {said:?}");
    clear_flash(&b).await;
    b.click("silence", &format!("{row} button.silence")).await;
    let said = flash(&b, "401 for silence with a wrong token", |t| {
        t.contains("401")
    })
    .await;
    eprintln!("silence with a wrong token: {said:?}");
    let snap = must(&b, "the alert row", &row).await;
    assert_eq!(snap.attr("data-acked"), Some("false"), "{}", snap.html);
    assert_eq!(snap.attr("data-silenced"), Some("false"), "{}", snap.html);
    assert!(b.snap(silence_row).await.is_none());
    assert_eq!(acked_at(&env, id), None, "acknowledged without the token");
    assert_eq!(silences(&env), 0, "silenced without the token");

    // The right token: kept for the session only, never in the URL.
    b.type_into("the token field", "#token", TOKEN).await;
    b.click(
        "the token form's button",
        "#token-form button[type=\"submit\"]",
    )
    .await;
    let kept = b
        .js(
            "return [Object.values(sessionStorage).includes(arguments[0]),
                     Object.values(localStorage).includes(arguments[0]),
                     location.href.includes(arguments[0]),
                     document.querySelector('#token').type]",
            vec![json!(TOKEN)],
        )
        .await;
    assert_eq!(
        kept,
        json!([true, false, false, "password"]),
        "the token's keeping"
    );

    clear_flash(&b).await;
    b.click("ack", &format!("{row} button.ack")).await;
    b.wait_snap("the row acknowledged", DOM_DEADLINE, &row, |s| {
        s.attr("data-acked") == Some("true")
    })
    .await;
    flash(&b, "acknowledged", |t| t.contains("acknowledged")).await;
    wait_until("acknowledged_at in the database", || {
        acked_at(&env, id).is_some()
    });
    let by: Option<String> = env
        .db()
        .query_row(
            "SELECT acknowledged_by FROM health_alerts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by.as_deref(), Some("dashboard"));

    clear_flash(&b).await;
    b.click("silence", &format!("{row} button.silence")).await;
    b.wait_snap("the row silenced", DOM_DEADLINE, &row, |s| {
        s.attr("data-silenced") == Some("true")
    })
    .await;
    let silence = must(&b, "the silence's row", silence_row).await;
    flash(&b, "silenced", |t| t.contains("silenced")).await;
    wait_until("the silence in the database", || silences(&env) == 1);
    let metric = silence.attr("data-metric").unwrap_or_default();
    assert!(
        metric.is_empty() || metric == "workspace_exists",
        "{}",
        silence.html
    );

    // The daemon agrees: the next cycles' updates keep both, and so does a fresh page.
    wait_cycles(&b, 2).await;
    let snap = must(&b, "the alert row after two cycles", &row).await;
    assert_eq!(snap.attr("data-acked"), Some("true"), "{}", snap.html);
    assert_eq!(snap.attr("data-silenced"), Some("true"), "{}", snap.html);
    b.client.refresh().await.unwrap();
    let snap = must(&b, "the alert row, reloaded", &row).await;
    assert_eq!(snap.attr("data-acked"), Some("true"), "{}", snap.html);
    assert_eq!(snap.attr("data-silenced"), Some("true"), "{}", snap.html);
    must(&b, "the silence's row, reloaded", silence_row).await;

    clear_flash(&b).await;
    b.click("unsilence", &format!("{silence_row} button.unsilence"))
        .await;
    b.wait_gone("the silence's row to go", DOM_DEADLINE, silence_row)
        .await;
    flash(&b, "unsilenced", |t| t.contains("unsilenced")).await;
    wait_until("no silence in the database", || silences(&env) == 0);
    b.wait_snap("the row no longer silenced", DOM_DEADLINE, &row, |s| {
        s.attr("data-silenced") == Some("false")
    })
    .await;
    wait_cycles(&b, 2).await;
    let snap = must(&b, "the alert row after two cycles", &row).await;
    assert_eq!(snap.attr("data-silenced"), Some("false"), "{}", snap.html);
    assert_eq!(snap.attr("data-acked"), Some("true"), "{}", snap.html);
    b.client.refresh().await.unwrap();
    let snap = must(&b, "the alert row, reloaded", &row).await;
    assert_eq!(snap.attr("data-silenced"), Some("false"), "{}", snap.html);
    assert_eq!(snap.attr("data-acked"), Some("true"), "{}", snap.html);
    assert!(b.snap(silence_row).await.is_none(), "the silence is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_dashboard_is_read_only() {
    let env = Env::new(&config(false));
    let (_daemon, base) = start(&env, "1");
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    let body = must(&b, "the body", "body").await;
    assert_eq!(body.attr("data-writes"), Some("disabled"), "{}", body.html);
    let mode = must(&b, "the mode", "#mode").await;
    assert!(lower(&mode).contains("read-only"), "{}", mode.html);
    b.assert_no_console_errors("the read-only overview").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resource_page_charts_metrics_with_their_thresholds() {
    let env = Env::new(&config(false));
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    write_file(&ws.join("big"), 2 * MB);
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);
    let (_daemon, base) = start(&env, "0.5");
    wait_until("a few cycles of w1 and its alert", || {
        rows(&env, "workspace", "w1", "workspace_size_mb") >= 4
            && active_alert(&env, "workspace", "w1", "workspace_size_mb").is_some()
    });
    let b = Browser::start().await;
    b.goto(&format!("{base}/resource/workspace/w1")).await;

    let ranges = b.snap_all("nav#ranges a[data-range]").await;
    let names: Vec<&str> = ranges.iter().filter_map(|a| a.attr("data-range")).collect();
    assert_eq!(names, ["1h", "6h", "24h", "7d"], "{ranges:#?}");
    let current: Vec<&str> = ranges
        .iter()
        .filter(|a| a.attr("aria-current") == Some("page"))
        .filter_map(|a| a.attr("data-range"))
        .collect();
    assert_eq!(
        current,
        ["1h"],
        "1h by default, the one current range: {ranges:#?}"
    );

    let chart = "section.chart[data-metric=\"workspace_size_mb\"] svg.chart";
    let series = must(&b, "the size's series", &format!("{chart} path.series")).await;
    let d = series.attr("d").unwrap_or_default();
    assert!(d.trim().len() > 1, "an empty series: {}", series.html);
    for (level, value) in [("warning", 1.0), ("critical", 3.0)] {
        let line = must(
            &b,
            &format!("the {level} line"),
            &format!("{chart} line.threshold.{level}"),
        )
        .await;
        let at = line.attr("data-value").unwrap_or_default();
        assert_eq!(at.parse::<f64>().ok(), Some(value), "{}", line.html);
        assert_eq!(
            at,
            format!("{value}"),
            "data-value as written: {}",
            line.html
        );
    }
    let history = b.snap_all("table#history tr.alert-history").await;
    assert!(
        history
            .iter()
            .any(|r| r.text.contains("workspace_size_mb") || lower(r).contains("unhealthy")),
        "no history row for the size alert: {history:#?}"
    );
    assert_only_app_scripts(&b, "the resource page").await;

    // Switching the range is a link: 6h becomes the current one.
    b.click("the 6h range", "nav#ranges a[data-range=\"6h\"]")
        .await;
    b.wait_snap(
        "6h marked current",
        DOM_DEADLINE,
        "nav#ranges a[aria-current=\"page\"]",
        |a| a.attr("data-range") == Some("6h"),
    )
    .await;
    let url = b.client.current_url().await.unwrap();
    assert!(url.as_str().contains("range=6h"), "{url}");
    let current = b.snap_all("nav#ranges a[aria-current=\"page\"]").await;
    assert_eq!(current.len(), 1, "{current:#?}");
    must(
        &b,
        "the size's series at 6h",
        &format!("{chart} path.series"),
    )
    .await;
    b.assert_no_console_errors("the resource page").await;
}

/// The literal units pushed below: markup if they were not escaped.
const UNIT_SCRIPT: &str = "<script>";
const UNIT_IMG: &str = "\"'><img/src=x>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_and_messages_are_shown_as_text_not_markup() {
    let env = Env::new(&config(false));
    let (_daemon, base) = start(&env, "1");
    let report = |metric: &str, unit: &str| {
        env.hm_ok(&[
            "report",
            "agent",
            "a1",
            metric,
            "5",
            "--warning",
            "1",
            "--critical",
            "2",
            "--unit",
            unit,
            "--ttl",
            "1h",
        ]);
    };
    report("evil", UNIT_SCRIPT);
    wait_until("evil's alert", || {
        active_alert(&env, "agent", "a1", "evil").is_some()
    });
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    let row = "#alerts tr.alert[data-resource=\"a1\"][data-metric=\"evil\"]";
    let alert = must(&b, "evil's alert row", row).await;
    assert!(alert.text.contains(UNIT_SCRIPT), "{}", alert.html);
    let values = must(&b, "a1's values", "tr.resource[data-id=\"a1\"] td.values").await;
    assert!(values.text.contains(UNIT_SCRIPT), "{}", values.html);
    assert_only_app_scripts(&b, "the overview").await;

    // One more while the page is open: the live update must escape it too.
    report("evil2", UNIT_IMG);
    let row2 = "#alerts tr.alert[data-resource=\"a1\"][data-metric=\"evil2\"]";
    let alert = b
        .wait_snap("evil2's alert row, live", DOM_DEADLINE, row2, |_| true)
        .await;
    assert!(alert.text.contains(UNIT_IMG), "{}", alert.html);
    let injected = b
        .js(
            "return [document.querySelectorAll('img[src=\"x\"]').length,
                     window.__pwned === undefined]",
            vec![],
        )
        .await;
    assert_eq!(
        injected,
        json!([0, true]),
        "markup from a unit got into the page"
    );
    assert_only_app_scripts(&b, "the overview after a live update").await;

    // The server's own HTML escapes them.
    let page = get(&format!("{base}/"));
    assert_eq!(page.status, 200);
    assert!(
        ["&lt;script&gt;", "&#60;script&#62;", "&#x3c;script&#x3e;"]
            .iter()
            .any(|escaped| page.body.to_lowercase().contains(escaped)),
        "{}",
        page.body
    );
    assert!(!page.body.contains(UNIT_SCRIPT), "{}", page.body);
    assert!(!page.body.contains("<img/src=x>"), "{}", page.body);

    // And so does the resource page.
    b.goto(&format!("{base}/resource/agent/a1")).await;
    must(&b, "evil's chart", "section.chart[data-metric=\"evil\"]").await;
    let text = must(&b, "the body", "body").await.text;
    assert!(text.contains(UNIT_SCRIPT), "{}", b.diagnostics().await);
    assert!(text.contains(UNIT_IMG), "{}", b.diagnostics().await);
    let injected = b
        .js(
            "return document.querySelectorAll('img[src=\"x\"]').length",
            vec![],
        )
        .await;
    assert_eq!(
        injected,
        json!(0),
        "markup from a unit got into the resource page"
    );
    assert_only_app_scripts(&b, "the resource page").await;
    let page = get(&format!("{base}/resource/agent/a1"));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(UNIT_SCRIPT), "{}", page.body);
    assert!(!page.body.contains("<img/src=x>"), "{}", page.body);
    b.assert_no_console_errors("the pages").await;
}

/// The directives of a Content-Security-Policy, by name.
fn directive<'a>(csp: &'a str, name: &str) -> Option<&'a str> {
    csp.split(';').map(str::trim).find_map(|d| {
        let (k, v) = d.split_once(' ').unwrap_or((d, ""));
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

#[test]
fn pages_carry_a_strict_csp_and_nosniff() {
    let env = Env::new(&config(false));
    let ws = env.path("w1");
    fs::create_dir(&ws).unwrap();
    env.hm_ok(&[
        "add",
        "workspace",
        "w1",
        "--path",
        &ws.display().to_string(),
    ]);
    let (_daemon, base) = start(&env, "1");
    wait_until("w1 in the summary", || {
        resource_status(&summary(&base), "workspace", "w1").is_some()
    });
    for path in [
        "/",
        "/resource/workspace/w1",
        "/resource/workspace/w1?range=7d",
    ] {
        let page = get(&format!("{base}{path}"));
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            page.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{path}: {:?}",
            page.headers
        );
        assert_eq!(
            page.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let csp = page
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no CSP: {:?}", page.headers));
        let scripts = directive(csp, "script-src")
            .or_else(|| directive(csp, "default-src"))
            .unwrap_or_else(|| panic!("{path}: no script-src nor default-src: {csp}"));
        assert!(!scripts.contains("'unsafe-inline'"), "{path}: {csp}");
        assert!(!scripts.contains('*'), "{path}: {csp}");
    }
    let app = get(&format!("{base}/static/app.js"));
    assert_eq!(app.status, 200);
    assert!(
        app.header("content-type")
            .is_some_and(|t| t.contains("javascript")),
        "{:?}",
        app.headers
    );
    assert_eq!(app.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screenshot_of_the_overview() {
    let (env, _daemon, base) = overview_daemon("0.5");
    // A few points in every sparkline.
    wait_until("a few cycles", || {
        rows(&env, "workspace", "w1", "workspace_size_mb") >= 6
    });
    let b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    must(
        &b,
        "gone's alert row",
        "#alerts tr.alert[data-resource=\"gone\"]",
    )
    .await;
    b.wait_snap("the live stream connected", DOM_DEADLINE, "#live", |s| {
        s.text.trim().eq_ignore_ascii_case("live")
    })
    .await;
    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10 * 1024,
        "a trivial screenshot: {} bytes",
        png.len()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::create_dir_all(root.join("target")).unwrap();
    fs::write(root.join("target/dashboard-overview.png"), &png).unwrap();
    if std::env::var("HM_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        fs::write(root.join("docs/dashboard-overview.png"), &png).unwrap();
        eprintln!("wrote docs/dashboard-overview.png ({} bytes)", png.len());
    }
    b.assert_no_console_errors("the overview").await;
}

/// The event stream stays open past the connection guard's idle limits (5 s between requests,
/// plus its sweep's grace): a streamed answer is a request in flight for as long as it lasts.
#[test]
fn the_event_stream_stays_open_and_keeps_coming() {
    use std::io::Write;
    let env = Env::new(&config(false));
    let (_daemon, base) = start(&env, "0.5");
    let addr = base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut seen = String::new();
    let mut buf = [0u8; 65536];
    while started.elapsed() < Duration::from_secs(12) {
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "the stream closed after {:?}; so far:\n{seen}",
                started.elapsed()
            ),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e} after {:?}", started.elapsed()),
        }
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    // Written by the daemon to the socket itself: delimited by the connection's end, no chunks.
    let head = &seen[..seen.find("\r\n\r\n").expect("a head")];
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(
        head.contains("\r\nx-content-type-options: nosniff"),
        "{head}"
    );
    assert!(
        head.contains("\r\ncontent-security-policy: default-src 'none'; script-src 'self';"),
        "{head}"
    );
    assert!(
        seen.contains("\r\n\r\nretry: 2000\n\nevent: state\ndata: {"),
        "{seen}"
    );
    // The machine's CPU reading changes every cycle: cycles keep coming, over 12 s.
    assert!(seen.matches("event: cycle").count() >= 5, "{seen}");
}

/// Reads `stream` onto `got` until `done` holds of it, slowly (4 kB, then a 2 ms rest, as a
/// reader on a slow link); panics after 15 s.
fn read_until(stream: &mut std::net::TcpStream, got: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while !done(got) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "after {} bytes: {}",
            got.len(),
            String::from_utf8_lossy(&got[got.len().saturating_sub(600)..])
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("closed after {} bytes", got.len()),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

/// The answers at the start of `raw` that are whole, each a head and a body of its
/// `content-length`; and where the rest begins.
fn whole_answers(raw: &[u8]) -> (Vec<(String, Vec<u8>)>, usize) {
    let mut answers = Vec::new();
    let mut at = 0;
    while let Some(end) = raw[at..].windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[at..at + end]).to_string();
        let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            break;
        };
        let body = at + end + 4;
        if raw.len() < body + len {
            break;
        }
        answers.push((head, raw[body..body + len].to_vec()));
        at = body + len;
    }
    (answers, at)
}

/// A client that pipelines the event stream behind answers it has not read gets them whole and
/// in order, then the stream. The daemon writes to a page's socket itself only once the server
/// has written out everything it held for the connection; when that takes too long (the client
/// stops reading), it leaves the stream to the server, which keeps its own order.
#[test]
fn an_event_stream_pipelined_behind_unread_answers_comes_after_them_intact() {
    use std::io::Write;
    let env = Env::new(&config(false));
    let (_daemon, base) = start(&env, "0.5");
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let script = get(&format!("{base}/static/app.js")).body.into_bytes();
    let answers = 12;
    // Read on, or paused past the daemon's wait for the earlier answers (5 s). Read on, the
    // stream's request is answered while the server still holds the end of the last answer:
    // writing its head at once would put it inside that answer.
    for (pause, direct) in [(Duration::ZERO, true), (Duration::from_secs(7), false)] {
        // A small window and small segments: the server's own buffers hold what the kernel's
        // cannot, as on a slow link.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.set_tcp_mss(536).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        let mut requests =
            format!("GET /static/app.js HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(answers);
        requests.push_str(&format!(
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        ));
        stream.write_all(requests.as_bytes()).unwrap();
        // All but the last answer, which stays unread in the daemon's buffers for the pause,
        // while the stream's request is in its handler.
        let mut got = Vec::new();
        read_until(&mut stream, &mut got, |raw| {
            whole_answers(raw).0.len() >= answers - 1
        });
        std::thread::sleep(pause);
        read_until(&mut stream, &mut got, |raw| {
            let (whole, at) = whole_answers(raw);
            whole.len() == answers
                && String::from_utf8_lossy(&raw[at..]).contains("event: state\ndata: {")
        });
        let (whole, at) = whole_answers(&got);
        for (i, (head, body)) in whole.iter().enumerate() {
            assert!(head.starts_with("HTTP/1.1 200 OK"), "answer {i}: {head}");
            assert!(*body == script, "answer {i} is not the script whole");
        }
        let rest = String::from_utf8_lossy(&got[at..]).to_string();
        assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
        let head = &rest[..rest.find("\r\n\r\n").expect("a head")];
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        if direct {
            assert!(
                head.contains("connection: close"),
                "written by the daemon: {head}"
            );
            assert!(
                rest.contains("\r\n\r\nretry: 2000\n\nevent: state\ndata: {"),
                "{rest}"
            );
        } else {
            assert!(
                head.contains("transfer-encoding: chunked"),
                "streamed by the server: {head}"
            );
        }
    }
}
