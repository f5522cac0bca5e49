//! The webhook sink: POSTs the notice JSON to a URL; any 2xx answer is success.

use std::io::Read;
use std::time::Duration;

use super::Notice;
use super::dispatch::Sink;
use crate::config::outputs::WebhookSink;

/// Bytes of an error answer's body kept for the log.
const ERROR_BODY_LIMIT: u64 = 512;

/// The HTTP client every webhook and Alertmanager sink uses: statuses come back as answers
/// (we judge them), redirects are not followed (a POST must not turn into a GET elsewhere),
/// and proxies come from the usual environment variables.
pub(crate) fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("health-monitor/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// POSTs `body` as JSON with extra `headers`, all within `timeout`. `Ok` for any 2xx status;
/// otherwise an error with the status and the start of the answer.
pub(crate) fn post_json(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = agent
        .post(url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    // A configured Content-Type wins over ours rather than being sent twice.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("Content-Type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = req.send(body).map_err(|e| match e {
        ureq::Error::Timeout(_) => format!("timed out after {timeout:?}"),
        // ureq's messages may quote the URL, whose path can be the secret.
        e => e.to_string().replace(url, &super::display_url(url)),
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let mut answer = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(ERROR_BODY_LIMIT)
        .read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let answer = answer.trim();
    if answer.is_empty() {
        Err(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}: {answer}"))
    }
}

/// The webhook sink as the dispatcher drives it.
pub(crate) struct Webhook {
    sink: WebhookSink,
    agent: ureq::Agent,
}

impl Webhook {
    /// A sink for one configured URL.
    pub(crate) fn new(sink: WebhookSink) -> Self {
        Webhook {
            sink,
            agent: http_agent(),
        }
    }
}

impl Sink for Webhook {
    fn name(&self) -> String {
        format!("webhook:{}", super::display_url(&self.sink.url))
    }

    fn timeout(&self) -> Duration {
        self.sink.timeout
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        let body = serde_json::to_string(notice).map_err(|e| e.to_string())?;
        post_json(
            &self.agent,
            &self.sink.url,
            &self.sink.headers,
            &body,
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::testutil::{Reply, TestServer, notice, wait_until};
    use super::*;
    use crate::config::outputs::NotifySettings;
    use crate::notify::{NoticeState, Notifier, Timings};

    fn quick() -> Timings {
        Timings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Timings::default()
        }
    }

    fn hook(url: &str, timeout: Duration) -> WebhookSink {
        WebhookSink {
            url: url.to_string(),
            headers: vec![("Authorization".into(), "Bearer s3cret".into())],
            timeout,
        }
    }

    #[test]
    fn the_notice_and_the_headers_arrive() {
        let server = TestServer::start(vec![Reply::Status(204)]);
        let url = format!("{}/hook", server.url);
        let n = notice(NoticeState::Resolved, "all good again");
        post_json(
            &http_agent(),
            &url,
            &hook(&url, Duration::from_secs(5)).headers,
            &serde_json::to_string(&n).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        let req = server.next_request(Duration::from_secs(5)).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/hook");
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("authorization"), Some("Bearer s3cret"));
        let back: Notice = serde_json::from_str(&req.body).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn a_server_error_is_retried_and_then_counted_as_sent() {
        let server = TestServer::start(vec![Reply::Status(500), Reply::Status(200)]);
        let settings = NotifySettings {
            webhooks: vec![hook(&server.url, Duration::from_secs(5))],
            retries: 3,
            ..Default::default()
        };
        let notifier = Notifier::with_timings(&settings, quick());
        notifier.notify(&notice(NoticeState::Firing, "m"));
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .sent
            == 1));
        let r = &notifier.report()[0];
        assert_eq!(
            r.sink,
            format!("webhook:{}", super::super::display_url(&server.url))
        );
        assert_eq!((r.sent, r.failed, r.retries), (1, 0, 1));
        assert!(
            r.last_error.as_deref().unwrap().contains("HTTP 500"),
            "{r:?}"
        );
        assert_eq!(server.requests().len(), 2);
        notifier.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let server = TestServer::start(vec![Reply::Hang, Reply::Hang]);
        let settings = NotifySettings {
            webhooks: vec![hook(&server.url, Duration::from_millis(300))],
            retries: 1,
            ..Default::default()
        };
        let started = Instant::now();
        let notifier = Notifier::with_timings(&settings, quick());
        notifier.notify(&notice(NoticeState::Firing, "m"));
        assert!(wait_until(Duration::from_secs(10), || notifier.report()[0]
            .failed
            == 1));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (0, 1, 1));
        assert!(
            r.last_error.as_deref().unwrap().contains("timed out"),
            "{r:?}"
        );
        notifier.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_hung_sink_does_not_delay_another() {
        let slow = TestServer::start(vec![Reply::Hang]);
        let fast = TestServer::start(vec![Reply::Status(200)]);
        let settings = NotifySettings {
            webhooks: vec![
                hook(&slow.url, Duration::from_secs(60)),
                hook(&fast.url, Duration::from_secs(60)),
            ],
            retries: 0,
            ..Default::default()
        };
        let notifier = Notifier::with_timings(&settings, quick());
        let started = Instant::now();
        notifier.notify(&notice(NoticeState::Firing, "m"));
        assert!(started.elapsed() < Duration::from_secs(1), "notify blocked");
        // The slow one has the notice and sits on it...
        assert!(slow.next_request(Duration::from_secs(5)).is_some());
        // ...while the fast one got it all the same, long before the slow one's timeout.
        assert!(fast.next_request(Duration::from_secs(5)).is_some());
        assert!(wait_until(Duration::from_secs(5), || notifier.report()[1]
            .sent
            == 1));
        assert_eq!(notifier.report()[0].sent, 0);
        // Shutdown gives up on the hung one at its deadline instead of waiting a minute.
        let stopping = Instant::now();
        notifier.shutdown(Duration::from_millis(300));
        assert!(
            stopping.elapsed() < Duration::from_secs(3),
            "{:?}",
            stopping.elapsed()
        );
    }
}
