//! The HTTP listener end to end: the real binary with `start --listen`, its `/metrics` checked by
//! promtool and scraped by a real Prometheus, `/healthz` before and after a fault, and the JSON
//! API driven with, without and against the token.
//!
//! promtool and Prometheus come with Debian's `prometheus` package (`.ci/run` installs it); where
//! they are missing, those parts print a note and are skipped.

// A test harness: a failed unwrap is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Daemon, Env, wait_until};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-token-0123456789abcdef";

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP answer.
#[derive(Debug)]
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

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol]).unwrap_or("0");
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 || raw.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[(eol + 4 + size).min(raw.len())..];
    }
    out
}

/// Sends one request and reads the whole answer; `None` when the connection fails.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Reply> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    if let Some(body) = body {
        stream.write_all(body).ok()?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// `request` that must get an answer.
fn call(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let body = (!body.is_empty()).then_some(body.as_bytes());
    request(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

fn get(addr: &str, path: &str) -> Reply {
    call(addr, "GET", path, &[], "")
}

/// Starts the daemon listening on a free loopback port; returns it and the address.
fn start_listening(env: &Env, args: &[&str], envs: &[(&str, &str)]) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--listen", &addr, "--interval", "0.2"];
    all.extend_from_slice(args);
    let daemon = env.start_with_env(&all, envs);
    wait_until("the HTTP listener to answer", || {
        request(&addr, "GET", "/healthz", &[], None).is_some()
    });
    (daemon, addr)
}

/// True when `tool --version` runs.
fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Prometheus server run by a test; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free port with `contrib/prometheus.yml`, pointed at `target` and
    /// scraping every second.
    fn start(target: &str) -> Prometheus {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus.yml");
        let example = std::fs::read_to_string(example).unwrap();
        // The example must keep the address and interval the README documents, or the rewrite
        // below would silently test something else.
        assert!(example.contains("\"127.0.0.1:9464\""), "{example}");
        assert!(example.contains("scrape_interval: 15s"), "{example}");
        let config = example
            .replace("\"127.0.0.1:9464\"", &format!("\"{target}\""))
            .replace("scrape_interval: 15s", "scrape_interval: 1s");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// The samples of an instant query (empty until Prometheus has them).
    fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", encode(promql));
        match request(&self.addr, "GET", &path, &[], None) {
            Some(r) if r.status == 200 => r.json()["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them() {
    let env = Env::new("");
    let (_daemon, addr) = start_listening(&env, &[], &[]);
    let memory = r#"health_monitor_metric_value{resource_type="memory",resource_id="system",metric="memory_usage_percent"} "#;
    let cycle = r#"health_monitor_cycle_duration_seconds{collector="system"} "#;
    let mut metrics = get(&addr, "/metrics");
    wait_until("memory and cycle series after the first cycle", || {
        metrics = get(&addr, "/metrics");
        metrics.status == 200 && metrics.body.contains(memory) && metrics.body.contains(cycle)
    });
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &metrics.body;
    for line in [
        r#"health_monitor_metric_status{resource_type="memory",resource_id="system",metric="memory_usage_percent"} "#,
        r#"health_monitor_resource_status{resource_type="cpu",resource_id="system"} "#,
        r#"health_monitor_active_alerts{severity="critical"} "#,
        r#"health_monitor_active_alerts{severity="unhealthy"} "#,
        r#"health_monitor_actor_restarts_total{actor="system"} 0"#,
        r#"health_monitor_actor_restarts_total{actor="writer"} 0"#,
        "health_monitor_writer_rows_written_total ",
        "health_monitor_writer_failing 0",
        "health_monitor_measurements_accepted_total ",
        "health_monitor_analyzer_queue_depth ",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    let seconds: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(cycle))
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..5.0).contains(&seconds), "{seconds}");

    let healthz = get(&addr, "/healthz");
    assert_eq!(healthz.status, 200, "{}", healthz.body);
    assert_eq!(healthz.json(), json!({"status": "ok"}));

    if have("promtool") {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics refused:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("note: promtool not found (Debian package prometheus); promtool check skipped");
    }

    if have("prometheus") {
        let prometheus = Prometheus::start(&addr);
        let query =
            r#"health_monitor_metric_value{resource_id="system",metric="memory_usage_percent"}"#;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let sample = loop {
            if let Some(s) = prometheus.query(query).into_iter().next() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never had {query}:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(sample["metric"]["job"], "health-monitor", "{sample}");
        assert_eq!(sample["metric"]["resource_type"], "memory", "{sample}");
        let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
        assert!((0.0..=100.0).contains(&value), "{sample}");
    } else {
        eprintln!("note: prometheus not found (Debian package prometheus); scrape check skipped");
    }
}

#[test]
fn healthz_names_a_parked_actor() {
    let env = Env::new(
        "[supervisor]\ninitial_backoff = 0.05\nmax_restarts = 1\nwindow = 60\npark_pause = 600\n",
    );
    std::fs::create_dir(env.path("w1")).unwrap();
    let path = env.path("w1").display().to_string();
    env.hm_ok(&["add", "workspace", "w1", "--path", &path]);
    let faults = "panic:workspace:w1:1,panic:workspace:w1:1";
    let (_daemon, addr) = start_listening(&env, &[], &[("HEALTH_MONITOR_FAULTS", faults)]);

    let mut healthz = get(&addr, "/healthz");
    wait_until("/healthz to name the parked collector", || {
        healthz = get(&addr, "/healthz");
        healthz.status == 503 && healthz.body.contains("workspace:w1 is parked")
    });
    let body = healthz.json();
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["reasons"].as_array().unwrap().len(), 1, "{body}");
    // /metrics still answers and shows the impaired resource as degraded (1).
    let metrics = get(&addr, "/metrics");
    assert_eq!(metrics.status, 200);
    let degraded =
        r#"health_monitor_resource_status{resource_type="workspace",resource_id="w1"} 1"#;
    assert!(metrics.body.contains(degraded), "{}", metrics.body);
}

/// The keys of a JSON object and the kind of value each holds.
fn shape(v: &Value) -> Vec<(String, &'static str)> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut keys: Vec<_> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), kind(v)))
        .collect();
    keys.sort();
    keys
}

fn names(v: &Value, list: &str, key: &str) -> Vec<String> {
    let mut names: Vec<String> = v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[key].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn the_api_reads_and_with_the_token_adds_and_removes_monitors() {
    let env = Env::new(&format!("[http]\ntoken = \"{TOKEN}\"\n"));
    let (_daemon, addr) = start_listening(&env, &[], &[]);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // The summary is the `status --json` document.
    wait_until("the first cycle in the summary", || {
        get(&addr, "/api/v1/summary").json()["resources"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let summary = get(&addr, "/api/v1/summary");
    assert_eq!(summary.status, 200);
    assert_eq!(summary.header("content-type"), Some("application/json"));
    let (api, cli) = (summary.json(), env.status());
    assert_eq!(shape(&api), shape(&cli), "{api}\n{cli}");
    assert_eq!(api["running"], true);
    assert_eq!(names(&api, "actors", "name"), names(&cli, "actors", "name"));
    assert_eq!(
        names(&api, "resources", "resource_id"),
        names(&cli, "resources", "resource_id")
    );

    // Adding a workspace whose directory does not exist: it is listed, and alerts.
    let missing = env.path("w9").display().to_string();
    let spec = json!({"kind": "workspace", "id": "w9", "options": {"path": missing}}).to_string();
    let added = call(&addr, "POST", "/api/v1/monitors", &auth, &spec);
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(
        added.json(),
        json!({"kind": "workspace", "id": "w9", "outcome": "added"})
    );
    let again = call(&addr, "POST", "/api/v1/monitors", &auth, &spec);
    assert_eq!(
        (again.status, again.json()["outcome"].clone()),
        (200, json!("unchanged"))
    );
    let listed: Value = serde_json::from_str(&env.hm_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed[0]["id"], "w9", "{listed}");
    assert_eq!(get(&addr, "/api/v1/monitors").json(), listed);
    let alert_for_w9 = |path: &str| {
        get(&addr, path)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["resource_id"] == "w9" && a["alert_type"] == "workspace_exists")
    };
    wait_until("the workspace_exists alert in /api/v1/alerts", || {
        alert_for_w9("/api/v1/alerts")
    });

    // Refused writes leave the daemon as it was.
    let wrong = call(
        &addr,
        "POST",
        "/api/v1/monitors",
        &[("Authorization", "Bearer not-the-token-at-all-0000")],
        &spec,
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    assert_eq!(wrong.json()["error"], "wrong bearer token");
    let anonymous = call(&addr, "POST", "/api/v1/monitors", &[], &spec);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    for (body, why) in [
        ("{not json", "bad body"),
        (r#"{"kind":"agent","id":"a1","options":{"pidd":3}}"#, "pidd"),
        (r#"{"kind":"workspace","id":"../etc"}"#, "invalid id"),
        (
            r#"{"kind":"workspace","id":"w2","options":{"path":"rel/dir"}}"#,
            "must be absolute",
        ),
    ] {
        let bad = call(&addr, "POST", "/api/v1/monitors", &auth, body);
        assert_eq!(bad.status, 400, "{body}: {}", bad.body);
        let error = bad.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(why), "{body}: {error}");
    }
    let huge = format!(r#"{{"kind":"workspace","id":"{}"}}"#, "x".repeat(70_000));
    let too_big = call(&addr, "POST", "/api/v1/monitors", &auth, &huge);
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert!(too_big.json()["error"].is_string());
    let gone = call(&addr, "DELETE", "/api/v1/monitors/workspace/w9", &[], "");
    assert_eq!(gone.status, 401);
    assert_eq!(get(&addr, "/healthz").status, 200);
    assert_eq!(env.status()["monitored_workspaces"], 1);

    // Removing it: gone from the list, its alert resolved (still listed with ?all=true).
    let removed = call(&addr, "DELETE", "/api/v1/monitors/workspace/w9", &auth, "");
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(
        removed.json(),
        json!({"kind": "workspace", "id": "w9", "removed": true})
    );
    assert_eq!(env.hm_ok(&["list", "--json"]).trim(), "[]");
    wait_until("the alert to resolve", || !alert_for_w9("/api/v1/alerts"));
    assert!(alert_for_w9("/api/v1/alerts?all=true"));
    let twice = call(&addr, "DELETE", "/api/v1/monitors/workspace/w9", &auth, "");
    assert_eq!(twice.status, 404, "{}", twice.body);
    assert!(
        twice.json()["error"]
            .as_str()
            .unwrap()
            .contains("not monitored")
    );
    let kind = call(&addr, "DELETE", "/api/v1/monitors/gizmo/w9", &auth, "");
    assert_eq!(kind.status, 400, "{}", kind.body);

    // Anything else is a JSON error too.
    assert_eq!(get(&addr, "/api/v1/alerts?all=maybe").status, 400);
    let unknown = get(&addr, "/api/v2/everything");
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());
    let method = call(&addr, "PUT", "/metrics", &[], "x");
    assert_eq!(method.status, 405);
    assert!(method.json()["error"].is_string());
    assert_eq!(get(&addr, "/healthz").status, 200);
}

#[test]
fn writing_without_a_configured_token_is_forbidden() {
    let env = Env::new("");
    let (mut daemon, addr) = start_listening(&env, &[], &[]);
    let spec = r#"{"kind":"workspace","id":"w1"}"#;
    let auth = [("Authorization", "Bearer e2e-token-0123456789abcdef")];
    for (method, path, body) in [
        ("POST", "/api/v1/monitors", spec),
        ("DELETE", "/api/v1/monitors/workspace/w1", ""),
    ] {
        let r = call(&addr, method, path, &auth, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert_eq!(
            r.json()["error"],
            "writing through HTTP is disabled: set [http] token"
        );
    }
    assert_eq!(env.hm_ok(&["list", "--json"]).trim(), "[]");
    // Reading needs no token.
    assert_eq!(get(&addr, "/api/v1/monitors").json(), json!([]));
    // The listener does not hold up an orderly stop, and goes with the daemon.
    env.hm_ok(&["stop"]);
    assert_eq!(daemon.wait_exit(), 0, "{}", daemon.log());
    assert!(TcpStream::connect(&addr).is_err());
}

#[test]
fn a_public_address_needs_listen_public() {
    let env = Env::new("");
    let public = format!("0.0.0.0:{}", free_port());
    // Run as a daemon would be, so a regression that starts it cannot hang the test.
    let (mut cmd, log) = env.start_command(&["--listen", &public]);
    let mut daemon = Daemon {
        child: cmd.spawn().unwrap(),
        log,
    };
    assert_eq!(daemon.wait_exit(), 2, "{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("not a loopback address"), "{log}");
    assert!(log.contains("--listen-public"), "{log}");
    assert!(!env.socket.exists());
}

#[test]
fn a_port_in_use_refuses_the_start_before_anything_happens() {
    let env = Env::new("");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (mut cmd, log) = env.start_command(&["--listen", &addr, "--workspaces", "w1"]);
    let mut daemon = Daemon {
        child: cmd.spawn().unwrap(),
        log,
    };
    assert_eq!(daemon.wait_exit(), 1, "{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains(&format!("error: cannot listen for HTTP on {addr}")),
        "{log}"
    );
    assert!(log.contains("Address already in use"), "{log}");
    assert!(!env.socket.exists());
    // Refused before `--workspaces w1` was saved.
    assert_eq!(env.hm_ok(&["list", "--json"]).trim(), "[]");
    drop(taken);
}
