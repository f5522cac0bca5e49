//! Config sections for where alerts and data go: `[notify]` sinks, `[http]`, and the log format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::model::HealthStatus;

/// Seconds one notification attempt may take unless a sink says otherwise.
pub(crate) const DEFAULT_SINK_TIMEOUT_SECS: f64 = 10.0;
/// Attempts after the first failed one.
pub(crate) const DEFAULT_SINK_RETRIES: u32 = 3;
/// Shortest bearer token accepted for the HTTP API's write endpoints.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log aggregation.
    Json,
}

/// The `[notify]` table: where alert notices go besides the log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `[[notify.exec]]`: programs run with the notice on stdin.
    #[serde(default)]
    pub exec: Vec<ExecConfig>,
    /// `[[notify.webhook]]`: URLs the notice is POSTed to.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// `[[notify.alertmanager]]`: Alertmanagers, spoken to with the v2 API.
    #[serde(default)]
    pub alertmanager: Vec<AlertmanagerConfig>,
    /// Seconds one attempt may take (default 10).
    pub timeout: Option<f64>,
    /// Attempts after a failed one (default 3).
    pub retries: Option<u32>,
}

/// One `[[notify.exec]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Program and arguments, run directly (never through a shell).
    pub command: Vec<String>,
    /// Seconds one run may take (default: `[notify] timeout`).
    pub timeout: Option<f64>,
}

/// One `[[notify.webhook]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the notice is POSTed to as JSON.
    pub url: String,
    /// Seconds one POST may take (default: `[notify] timeout`).
    pub timeout: Option<f64>,
    /// Extra request headers, e.g. `Authorization`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One `[[notify.alertmanager]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    /// Seconds one request may take (default: `[notify] timeout`).
    pub timeout: Option<f64>,
}

/// A program to run for each notice.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSink {
    /// The program, run directly (never through a shell): a path, or a name looked up on `PATH`.
    pub program: PathBuf,
    /// Arguments after the program (none for an `--on-alert` program).
    pub args: Vec<String>,
    /// Longest one run may take before its process group is killed.
    pub timeout: Duration,
    /// Where it runs (default: the daemon's working directory).
    pub cwd: Option<PathBuf>,
}

/// A URL to POST each notice to.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSink {
    /// The http(s) URL, without a trailing slash.
    pub url: String,
    /// Extra request headers as (name, value), e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Longest one POST may take.
    pub timeout: Duration,
}

/// An Alertmanager to keep informed.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertmanagerSink {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Longest one request may take.
    pub timeout: Duration,
}

/// Escalation to Gas Town with `gt escalate`: opened once per alert, closed with
/// `gt escalate close` when it resolves (see `notify::escalate`).
#[derive(Debug, Clone, PartialEq)]
pub struct EscalateSink {
    /// The `gt` program: a path, or a name looked up on `PATH` (default `gt`).
    pub program: PathBuf,
    /// The least severe alert that is escalated (default unhealthy).
    pub min_severity: HealthStatus,
    /// The longest one `gt escalate` run may take before its process group is killed.
    pub timeout: Duration,
    /// Where `gt` runs: the town root, which is how `gt` finds its town.
    pub cwd: Option<PathBuf>,
}

impl Default for EscalateSink {
    fn default() -> Self {
        EscalateSink {
            program: PathBuf::from("gt"),
            min_severity: HealthStatus::Unhealthy,
            timeout: Duration::from_secs_f64(DEFAULT_SINK_TIMEOUT_SECS),
            cwd: None,
        }
    }
}

/// Every notification sink, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NotifySettings {
    /// Programs run for each notice: `[[notify.exec]]`, then `--on-alert`.
    pub exec: Vec<ExecSink>,
    /// URLs each notice is POSTed to (`[[notify.webhook]]`).
    pub webhooks: Vec<WebhookSink>,
    /// Alertmanagers kept informed: `[[notify.alertmanager]]`, then `--alertmanager`.
    pub alertmanagers: Vec<AlertmanagerSink>,
    /// Gas Town escalation; `None` escalates nothing.
    pub escalate: Option<EscalateSink>,
    /// Attempts after a failed one, per notice and sink.
    pub retries: u32,
}

impl NotifySettings {
    /// True when no sink is configured (notices only reach the log).
    pub fn is_empty(&self) -> bool {
        self.exec.is_empty()
            && self.webhooks.is_empty()
            && self.alertmanagers.is_empty()
            && self.escalate.is_none()
    }
}

/// Checks an http(s) URL well enough to catch typos before the first alert.
fn check_url(key: &str, url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => bail!("{key}: {url:?} is not an http:// or https:// URL"),
    }
}

fn timeout(key: &str, v: Option<f64>, default: f64) -> anyhow::Result<Duration> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || !(0.01..=3600.0).contains(&v) {
        bail!("{key}: timeout must be between 0.01 and 3600 seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

impl NotifyConfig {
    /// Validates the file's sinks and adds `--on-alert` programs and `--alertmanager` URLs.
    pub fn resolve(
        &self,
        on_alert: &[PathBuf],
        alertmanager_urls: &[String],
    ) -> anyhow::Result<NotifySettings> {
        let default_timeout = timeout("[notify]", self.timeout, DEFAULT_SINK_TIMEOUT_SECS)?;
        let secs = default_timeout.as_secs_f64();
        let mut out = NotifySettings {
            retries: self.retries.unwrap_or(DEFAULT_SINK_RETRIES),
            ..Default::default()
        };
        if out.retries > 20 {
            bail!("[notify] retries must be at most 20, got {}", out.retries);
        }
        for (i, e) in self.exec.iter().enumerate() {
            let key = format!("[[notify.exec]] #{}", i + 1);
            let Some((program, args)) = e.command.split_first() else {
                bail!("{key}: command must name a program");
            };
            if program.is_empty() {
                bail!("{key}: command must name a program");
            }
            out.exec.push(ExecSink {
                program: PathBuf::from(program),
                args: args.to_vec(),
                timeout: timeout(&key, e.timeout, secs)?,
                cwd: None,
            });
        }
        for program in on_alert {
            if program.as_os_str().is_empty() {
                bail!("--on-alert needs a program");
            }
            out.exec.push(ExecSink {
                program: program.clone(),
                args: Vec::new(),
                timeout: default_timeout,
                cwd: None,
            });
        }
        for (i, w) in self.webhook.iter().enumerate() {
            let key = format!("[[notify.webhook]] #{}", i + 1);
            for (name, value) in &w.headers {
                let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
                if name.is_empty() || !name.chars().all(token) {
                    bail!("{key}: {name:?} is not a valid header name");
                }
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    bail!("{key}: header {name} holds control characters");
                }
            }
            out.webhooks.push(WebhookSink {
                url: check_url(&key, &w.url)?,
                headers: w.headers.clone().into_iter().collect(),
                timeout: timeout(&key, w.timeout, secs)?,
            });
        }
        for (i, a) in self.alertmanager.iter().enumerate() {
            let key = format!("[[notify.alertmanager]] #{}", i + 1);
            out.alertmanagers.push(AlertmanagerSink {
                url: check_url(&key, &a.url)?,
                timeout: timeout(&key, a.timeout, secs)?,
            });
        }
        for url in alertmanager_urls {
            out.alertmanagers.push(AlertmanagerSink {
                url: check_url("--alertmanager", url)?,
                timeout: default_timeout,
            });
        }
        Ok(out)
    }
}

/// The `[http]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve on, e.g. `127.0.0.1:9464` (default: no HTTP).
    pub listen: Option<String>,
    /// Allow a non-loopback `listen` address.
    pub public: Option<bool>,
    /// Bearer token that enables POST and DELETE on `/api/v1/monitors`.
    pub token: Option<String>,
    /// File holding the token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
}

/// The HTTP listener, validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpSettings {
    /// Where to listen; `None` serves no HTTP.
    pub listen: Option<SocketAddr>,
    /// The write token; `None` disables writing through HTTP.
    pub token: Option<String>,
}

impl HttpConfig {
    /// Validates the table with `--listen` and `--listen-public` layered over it.
    pub fn resolve(&self, listen: Option<&str>, public_flag: bool) -> anyhow::Result<HttpSettings> {
        let public = public_flag || self.public.unwrap_or(false);
        let listen = match listen.or(self.listen.as_deref()) {
            None => None,
            Some(text) => {
                let addr: SocketAddr = text.parse().with_context(|| {
                    format!("listen address {text:?} must be IP:PORT, e.g. 127.0.0.1:9464")
                })?;
                if !addr.ip().is_loopback() && !public {
                    bail!(
                        "listen address {addr} is not a loopback address; pass --listen-public \
                         (or [http] public = true) to serve beyond this machine"
                    );
                }
                Some(addr)
            }
        };
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!("[http] give token or token_file, not both"),
            (Some(t), None) => Some(t.trim().to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("[http] cannot read token_file {}", path.display()))?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            (None, None) => None,
        };
        if let Some(t) = &token
            && (t.chars().count() < MIN_TOKEN_CHARS || t.contains(char::is_whitespace))
        {
            bail!("[http] token must be at least {MIN_TOKEN_CHARS} characters without spaces");
        }
        Ok(HttpSettings { listen, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_from_file_and_flags_are_validated() {
        let cfg: NotifyConfig = toml::from_str(
            r#"
            retries = 1
            [[exec]]
            command = ["/usr/bin/logger", "-t", "hm"]
            [[webhook]]
            url = "http://127.0.0.1:8080/hook/"
            headers = { Authorization = "Bearer x" }
            [[alertmanager]]
            url = "http://127.0.0.1:9093"
            timeout = 2
            "#,
        )
        .unwrap();
        let s = cfg
            .resolve(&["/bin/true".into()], &["https://am.example:9093".into()])
            .unwrap();
        assert_eq!(s.retries, 1);
        assert_eq!(s.exec.len(), 2);
        assert_eq!(s.exec[0].args, vec!["-t", "hm"]);
        assert_eq!(s.webhooks[0].url, "http://127.0.0.1:8080/hook");
        assert_eq!(s.alertmanagers.len(), 2);
        assert_eq!(s.alertmanagers[0].timeout, Duration::from_secs(2));

        let bad: NotifyConfig =
            toml::from_str("[[webhook]]\nurl = \"http://x\"\nheaders = { \"Bad Name\" = \"v\" }")
                .unwrap();
        assert!(
            bad.resolve(&[], &[])
                .unwrap_err()
                .to_string()
                .contains("header name")
        );
        let bad: NotifyConfig =
            toml::from_str("[[webhook]]\nurl = \"http://x\"\nheaders = { A = \"v\\r\\nX: y\" }")
                .unwrap();
        assert!(
            bad.resolve(&[], &[])
                .unwrap_err()
                .to_string()
                .contains("control")
        );
        let bad: NotifyConfig = toml::from_str("[[webhook]]\nurl = \"ftp://x\"").unwrap();
        assert!(
            bad.resolve(&[], &[])
                .unwrap_err()
                .to_string()
                .contains("not an http")
        );
        let empty: NotifyConfig = toml::from_str("[[exec]]\ncommand = []").unwrap();
        assert!(empty.resolve(&[], &[]).is_err());
        assert!(toml::from_str::<NotifyConfig>("[[exec]]\ncmd = [\"x\"]").is_err());
        let none = NotifyConfig::default().resolve(&[], &["not a url".into()]);
        assert!(none.unwrap_err().to_string().contains("--alertmanager"));
    }

    #[test]
    fn escalation_defaults_to_gt_for_unhealthy_alerts_and_counts_as_a_sink() {
        let e = EscalateSink::default();
        assert_eq!(e.program, PathBuf::from("gt"));
        assert_eq!(e.min_severity, HealthStatus::Unhealthy);
        assert_eq!(e.timeout, Duration::from_secs(10));
        let mut s = NotifySettings::default();
        assert!(s.is_empty());
        s.escalate = Some(e);
        assert!(!s.is_empty());
    }

    #[test]
    fn http_binds_loopback_unless_told_otherwise() {
        let cfg = HttpConfig::default();
        assert_eq!(cfg.resolve(None, false).unwrap(), HttpSettings::default());
        let s = cfg.resolve(Some("127.0.0.1:9464"), false).unwrap();
        assert_eq!(s.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(cfg.resolve(Some("[::1]:9464"), false).is_ok());
        let err = cfg.resolve(Some("0.0.0.0:9464"), false).unwrap_err();
        assert!(err.to_string().contains("--listen-public"), "{err}");
        assert!(cfg.resolve(Some("0.0.0.0:9464"), true).is_ok());
        assert!(cfg.resolve(Some("localhost"), false).is_err());

        let short: HttpConfig = toml::from_str("token = \"abc\"").unwrap();
        assert!(short.resolve(None, false).is_err());
        let good: HttpConfig = toml::from_str("token = \"0123456789abcdef0123\"").unwrap();
        assert_eq!(
            good.resolve(None, false).unwrap().token.as_deref(),
            Some("0123456789abcdef0123")
        );
    }
}
