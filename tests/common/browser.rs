//! A real browser for end-to-end tests: Debian's headless Chromium driven through its
//! chromedriver (WebDriver) with fantoccini. Each [`Browser`] runs its own chromedriver on a free
//! port with a fresh profile, and kills it (its whole process group, so Chromium too) on drop.
//!
//! chromedriver is required, not optional: where it is missing the test fails and says to
//! install `chromium` and `chromium-driver` (`.ci/run` does).

#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The browser chromedriver starts (Debian's `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the browser and chromedriver may take to come up, and a page to load.
pub const STARTUP: Duration = Duration::from_secs(30);

/// How long a DOM condition may take unless a test says otherwise.
pub const DOM_DEADLINE: Duration = Duration::from_secs(15);

/// One browser at a time in a test binary: a second Chromium on a small CI machine slows every
/// page and cycle, and the tests have deadlines measured in daemon intervals.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on the PATH, else Debian's `/usr/bin/chromedriver`; a failure saying what to
/// install when neither is there.
fn chromedriver() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromedriver"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let debian = PathBuf::from("/usr/bin/chromedriver");
        debian.is_file().then_some(debian)
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromedriver not found: the dashboard tests need a real browser; install Debian's \
             chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run \
             does this)"
        )
    })
}

/// A snapshot of one element, taken in one script so a live re-render cannot tear it.
#[derive(Debug, Clone)]
pub struct Snap {
    /// Every attribute, as written.
    pub attrs: serde_json::Map<String, Value>,
    /// `innerText`: what a reader sees (hidden elements excluded).
    pub text: String,
    /// `outerHTML`, for failure messages.
    pub html: String,
}

impl Snap {
    /// An attribute's value, `None` when absent.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }

    fn from_json(v: &Value) -> Option<Snap> {
        Some(Snap {
            attrs: v["attrs"].as_object()?.clone(),
            text: v["text"].as_str().unwrap_or_default().to_string(),
            html: v["html"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// The script behind [`Browser::snap_all`]: `arguments[0]` a CSS selector.
const SNAP_ALL: &str = "return Array.from(document.querySelectorAll(arguments[0])).map(el => {
    const attrs = {};
    for (const a of el.attributes) attrs[a.name] = a.value;
    return { attrs, text: el.innerText === undefined ? el.textContent : el.innerText,
             html: el.outerHTML };
});";

/// A chromedriver process in its own process group (so Chromium, its child, is in it too).
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
    session: Option<String>,
}

impl Driver {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the session (chromedriver quits Chromium and removes its files), then kills the
        // process group by chromedriver's pid, which takes whatever of Chromium is left along.
        if let Some(id) = &self.session {
            let _ = raw_request(self.port, "DELETE", &format!("/session/{id}"), "");
        }
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Headless Chromium behind its own chromedriver; both are killed when this is dropped.
pub struct Browser {
    pub client: Client,
    driver: Driver,
    _profile: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it answers and opens a session of
    /// headless Chromium (1280x900, fresh profile). Fails, saying what to install, where
    /// chromedriver or Chromium is missing.
    pub async fn start() -> Browser {
        let driver_bin = chromedriver();
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} not found: install Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver; .ci/run does this)"
        );
        let turn = ONE_AT_A_TIME.lock().await;
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromedriver.log");
        let port = free_port();
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", driver_bin.display()));
        let mut driver = Driver {
            child,
            port,
            log,
            session: None,
        };
        let deadline = Instant::now() + STARTUP;
        loop {
            if raw_request(port, "GET", "/status", "").is_some_and(|s| s.contains("\"ready\":true"))
            {
                break;
            }
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited at start ({status}):\n{}", driver.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver never answered on port {port}:\n{}",
                driver.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({
            // The console, for `console_errors`.
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let client = tokio::time::timeout(
            STARTUP,
            builder.connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap_or_else(|_| panic!("no browser session within {STARTUP:?}:\n{}", driver.log()))
        .unwrap_or_else(|e| {
            panic!(
                "chromedriver could not start {CHROMIUM}: {e}\n{}",
                driver.log()
            )
        });
        driver.session = client.session_id().await.ok().flatten();
        // Page loads and scripts time out instead of hanging; finding never waits implicitly
        // (the waits below poll with their own deadlines).
        client
            .update_timeouts(fantoccini::wd::TimeoutConfiguration::new(
                Some(Duration::from_secs(10)),
                Some(STARTUP),
                Some(Duration::ZERO),
            ))
            .await
            .unwrap();
        Browser {
            client,
            driver,
            _profile: profile,
            _turn: turn,
        }
    }

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Every element matching `css`, snapshot.
    pub async fn snap_all(&self, css: &str) -> Vec<Snap> {
        match self.client.execute(SNAP_ALL, vec![json!(css)]).await {
            Ok(Value::Array(v)) => v.iter().filter_map(Snap::from_json).collect(),
            _ => Vec::new(),
        }
    }

    /// The first element matching `css`, snapshot.
    pub async fn snap(&self, css: &str) -> Option<Snap> {
        self.snap_all(css).await.into_iter().next()
    }

    /// Waits until an element matches `css` and passes `ok`; returns its snapshot.
    pub async fn wait_snap(
        &self,
        what: &str,
        within: Duration,
        css: &str,
        ok: impl Fn(&Snap) -> bool,
    ) -> Snap {
        let deadline = Instant::now() + within;
        loop {
            let all = self.snap_all(css).await;
            if let Some(s) = all.iter().find(|s| ok(s)) {
                return s.clone();
            }
            if Instant::now() >= deadline {
                let seen: Vec<&str> = all.iter().map(|s| s.html.as_str()).collect();
                panic!(
                    "timed out after {within:?} waiting for: {what}\n`{css}` matched {} \
                     element(s): {seen:#?}\n{}",
                    all.len(),
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until nothing matches `css`.
    pub async fn wait_gone(&self, what: &str, within: Duration, css: &str) {
        let deadline = Instant::now() + within;
        loop {
            let all = self.snap_all(css).await;
            if all.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let seen: Vec<&str> = all.iter().map(|s| s.html.as_str()).collect();
                panic!(
                    "timed out after {within:?} waiting for: {what}\nstill there: {seen:#?}\n{}",
                    self.diagnostics().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The element matching `css`, waiting for it to be there.
    pub async fn find(&self, what: &str, css: &str) -> Element {
        let deadline = Instant::now() + DOM_DEADLINE;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(el) => return el,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "no {what} (`{css}`) within {DOM_DEADLINE:?}: {e}\n{}",
                        self.diagnostics().await
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Clicks the element matching `css` as a user would (WebDriver's click: scrolled into view,
    /// at its centre), retrying while it is missing, re-rendered or covered.
    pub async fn click(&self, what: &str, css: &str) {
        let deadline = Instant::now() + DOM_DEADLINE;
        loop {
            let tried = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.click().await,
                Err(e) => Err(e),
            };
            match tried {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!(
                    "could not click {what} (`{css}`) within {DOM_DEADLINE:?}: {e}\n{}",
                    self.diagnostics().await
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Types `text` into the field matching `css`, after clearing it.
    pub async fn type_into(&self, what: &str, css: &str, text: &str) {
        let el = self.find(what, css).await;
        el.clear().await.unwrap();
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("could not type into {what} (`{css}`): {e}"));
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.unwrap()
    }

    /// Where the browser is and what it shows, for failure messages.
    pub async fn diagnostics(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default();
        let text = self
            .client
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let text: String = text.chars().take(3000).collect();
        format!("page {url} reads:\n{text}")
    }

    /// What the page logged as errors since the last call: script exceptions, resources that
    /// failed to load, Content-Security-Policy refusals (chromedriver's browser log).
    pub async fn console_errors(&self) -> Vec<String> {
        let id = self.driver.session.as_deref().unwrap_or_default();
        let log = raw_request(
            self.driver.port,
            "POST",
            &format!("/session/{id}/se/log"),
            r#"{"type":"browser"}"#,
        )
        .unwrap_or_else(|| panic!("no browser log from chromedriver:\n{}", self.driver.log()));
        let log: Value = serde_json::from_str(&log).unwrap();
        log["value"]
            .as_array()
            .unwrap_or_else(|| panic!("not a log: {log}"))
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Fails when the page logged errors (see [`Browser::console_errors`]), but for the
    /// browser's own request of `/favicon.ico`, which no page asks for.
    pub async fn assert_no_console_errors(&self, page: &str) {
        let mut errors = self.console_errors().await;
        errors.retain(|e| !e.contains("/favicon.ico "));
        assert!(errors.is_empty(), "{page} logged errors: {errors:#?}");
    }

    /// chromedriver's log so far.
    pub fn driver_log(&self) -> String {
        self.driver.log()
    }
}

/// One plain HTTP/1.1 request to chromedriver; its body, `None` on any failure. chromedriver
/// keeps the connection open whatever the request says, so the body is read by its length.
fn raw_request(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let raw = String::from_utf8_lossy(&raw).to_string();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    raw.starts_with("HTTP/1.1 200").then_some(body)
}

/// Polls `probe` until it gives `Some`, for at most `within`; panics naming `what` otherwise.
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
