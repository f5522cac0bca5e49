//! The JSON API under `/api/v1`: the summary, alerts and monitors, answered by the same
//! [`Service`] as the control socket. Reading is open; adding and removing monitors needs the
//! configured bearer token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use crate::control::protocol::prepare_monitor;
use crate::control::service::Service;
use crate::model::{AddOutcome, MonitorKind, MonitorSpec, validate_id};

use super::conns::is_body_timeout;
use super::lockout::Lockout;
use super::tally::{Client, client_of};

/// What every handler shares.
pub struct State {
    /// The daemon's answers, shared with the control socket.
    pub service: Service,
    /// The write token; `None` disables POST and DELETE.
    pub token: Option<String>,
    /// Failed authentications by client.
    pub lockout: Arc<Lockout>,
}

/// An answer other than success: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status sent.
    pub status: StatusCode,
    /// What went wrong, for the operator: the `error` of the JSON body.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A client locked out for `wait` after failing to authenticate too often (429).
    pub(crate) fn locked_out(client: std::net::IpAddr, wait: Duration) -> Self {
        // Whole seconds, rounded up: retrying at once would be refused again.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed authentications from {}: writes are refused for {} s",
                    Client(client),
                    secs.max(1)
                ),
            )
        }
    }

    /// A request whose body, query or path is not what the endpoint takes.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// An error the service returned. It validates ids and paths, but those are checked here
    /// first (400); what remains is a monitor that is not there (404, the supervisor says
    /// "... is not monitored") or a daemon that cannot answer now: supervisor gone, shutting down,
    /// writer overloaded, database unreadable (503).
    pub(crate) fn from_service(message: String) -> Self {
        let status = if message.ends_with("is not monitored") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ApiError::new(status, message)
    }

    /// An extractor's failure (bad JSON, body over the limit, bad query), keeping its status; a
    /// body that did not arrive in time is a 408.
    pub(crate) fn from_extractor(what: &str, e: &actix_web::Error) -> Self {
        if let Some(JsonPayloadError::Payload(p)) = e.as_error::<JsonPayloadError>()
            && is_body_timeout(p)
        {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("bad {what}: {p}"));
        }
        let status = e.as_response_error().status_code();
        // Extractor errors are all client errors; anything else would be a bug, still a 400.
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, format!("bad {what}: {e}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(secs) = self.retry_after {
            response.insert_header((RETRY_AFTER, secs));
        }
        response.json(json!({ "error": self.message }))
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right. Lengths may differ in time: a token's length is not the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lets a write through when `authorization` (the header's value) carries the configured token:
/// 403 when no token is configured (writing is off), 401 when it is missing or wrong.
pub(crate) fn authorize(token: Option<&str>, authorization: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "writing through HTTP is disabled: set [http] token",
        ));
    };
    let presented = authorization
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send Authorization: Bearer <token>",
        )),
    }
}

/// Checks the request's `Authorization` header against the state's token: a client locked out
/// for failing too often gets a 429 without its token being looked at, and a 401 counts against
/// its client.
pub(crate) fn check_write(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let client = req.peer_addr().map(|a| client_of(a.ip()));
    let now = Instant::now();
    if let Some(client) = client
        && state.token.is_some()
        && let Err(wait) = state.lockout.check(client, now)
    {
        return Err(ApiError::locked_out(client, wait));
    }
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let verdict = authorize(state.token.as_deref(), header);
    if let Some(client) = client {
        match &verdict {
            Ok(()) => state.lockout.succeeded(client),
            Err(e) if e.status == StatusCode::UNAUTHORIZED => state.lockout.failed(client, now),
            Err(_) => {}
        }
    }
    verdict
}

/// `GET /api/v1/summary`: the `status --json` document.
pub async fn summary(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let summary = state
        .service
        .summary()
        .await
        .map_err(ApiError::from_service)?;
    Ok(HttpResponse::Ok().json(summary))
}

/// The query of `GET /api/v1/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// Include resolved alerts.
    #[serde(default)]
    pub all: bool,
}

/// `GET /api/v1/alerts[?all=true]`: active alerts, or all of them, newest first.
pub async fn alerts(
    state: web::Data<State>,
    query: Result<web::Query<AlertsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let query = query.map_err(|e| ApiError::from_extractor("query", &e))?;
    let alerts = state
        .service
        .alerts(query.all)
        .await
        .map_err(ApiError::from_service)?;
    Ok(HttpResponse::Ok().json(alerts))
}

/// `GET /api/v1/monitors`: what `list --json` prints.
pub async fn monitors(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let monitors = state
        .service
        .monitors()
        .await
        .map_err(ApiError::from_service)?;
    Ok(HttpResponse::Ok().json(monitors))
}

/// `POST /api/v1/monitors` with a monitor (`{"kind": ..., "id": ..., "options": {...}}`, as the
/// control socket's `add` takes): adds or replaces it. 201 when new, 200 otherwise.
pub(crate) async fn add_monitor(
    state: web::Data<State>,
    req: HttpRequest,
    body: Result<web::Json<MonitorSpec>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    // The token first: a stranger learns nothing about what a good body looks like.
    check_write(&state, &req)?;
    let spec = body
        .map_err(|e| ApiError::from_extractor("body", &e))?
        .into_inner();
    // Normalized, checked and its pid's start recorded, exactly as the socket and the CLI do.
    let spec = crate::control::service::off_the_loop(move || prepare_monitor(spec))
        .await
        .map_err(ApiError::bad_request)?;
    let (kind, id) = (spec.kind(), spec.id().to_string());
    let outcome = state
        .service
        .add(spec)
        .await
        .map_err(ApiError::from_service)?;
    let status = if outcome == AddOutcome::Added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(json!({"kind": kind, "id": id, "outcome": outcome})))
}

/// The body of `POST /api/v1/metrics`: the socket's `report` request.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportBody {
    /// The metrics pushed.
    metrics: Vec<crate::pushed::ReportItem>,
}

/// `POST /api/v1/metrics` with `{"metrics": [{resource_type, resource_id, metric, value,
/// warning?, critical?, unit?, ttl_secs?}, ...]}`: pushes custom metrics. 200 with the count
/// accepted and each refusal (and its index); 400 when every one was refused.
pub(crate) async fn report(
    state: web::Data<State>,
    req: HttpRequest,
    body: Result<web::Json<ReportBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let body = body
        .map_err(|e| ApiError::from_extractor("body", &e))?
        .into_inner();
    let outcome = state
        .service
        .report(&body.metrics)
        .map_err(ApiError::bad_request)?;
    let status = if outcome.accepted == 0 && !outcome.refused.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(outcome))
}

/// `DELETE /api/v1/metrics/{type}/{id}/{metric}`: retires a pushed series; 404 when there is
/// none.
pub(crate) async fn report_remove(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let (resource_type, id, metric) = path.into_inner();
    let resource_type: crate::model::ResourceType =
        resource_type.parse().map_err(ApiError::bad_request)?;
    validate_id(&id).map_err(ApiError::bad_request)?;
    match state.service.report_remove(resource_type, id, metric) {
        Ok(outcome) => Ok(HttpResponse::Ok().json(json!({ "outcome": outcome }))),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, e)),
    }
}

/// `DELETE /api/v1/monitors/{kind}/{id}`: removes a monitor; its collector stops and its alerts
/// resolve.
pub(crate) async fn remove_monitor(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let (kind, id) = path.into_inner();
    let kind: MonitorKind = kind.parse().map_err(ApiError::bad_request)?;
    validate_id(&id).map_err(ApiError::bad_request)?;
    state
        .service
        .remove(kind, id.clone())
        .await
        .map_err(ApiError::from_service)?;
    Ok(HttpResponse::Ok().json(json!({"kind": kind, "id": id, "removed": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn writes_need_the_configured_token() {
        let ok = format!("Bearer {TOKEN}");
        assert_eq!(authorize(Some(TOKEN), Some(&ok)), Ok(()));
        assert_eq!(
            authorize(Some(TOKEN), Some(&format!("bearer  {TOKEN} "))),
            Ok(())
        );
        let wrong = authorize(Some(TOKEN), Some("Bearer 0123456789abcdef0124")).unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(wrong.message, "wrong bearer token");
        for header in [
            None,
            Some(""),
            Some(TOKEN),
            Some("Basic abc"),
            Some("Bearer"),
        ] {
            let err = authorize(Some(TOKEN), header).unwrap_err();
            assert_eq!(err.status, StatusCode::UNAUTHORIZED, "{header:?}");
        }
        let prefix = authorize(Some(TOKEN), Some("Bearer 0123456789")).unwrap_err();
        assert_eq!(prefix.status, StatusCode::UNAUTHORIZED);
        let off = authorize(None, Some(&ok)).unwrap_err();
        assert_eq!(off.status, StatusCode::FORBIDDEN);
        assert!(off.message.contains("set [http] token"), "{}", off.message);
    }

    #[test]
    fn equal_means_equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn service_errors_map_to_statuses() {
        let missing = ApiError::from_service("agent a9 is not monitored".into());
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let down = ApiError::from_service("supervisor unavailable: mailbox closed".into());
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
        let stopping = ApiError::from_service("the daemon is shutting down".into());
        assert_eq!(stopping.status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[actix_rt::test]
    async fn errors_are_json_with_their_status() {
        let err = ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token");
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), "Bearer");
        let body = actix_web::body::to_bytes(response.into_body())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"error": "wrong bearer token"}));
    }
}
