//! The HTTP listener (`start --listen ADDR`): Prometheus `/metrics`, `/healthz`, and the JSON API
//! under `/api/v1`. Handlers only wire requests to the [`Service`] and to the plain functions
//! [`render_metrics`] and [`health`].

pub mod api;
pub mod conns;
pub(crate) mod dashboard;
pub mod health;
pub mod lockout;
pub mod metrics;
pub mod tally;

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context;
use serde_json::json;

use crate::config::HttpSettings;
use crate::control::service::Service;
pub use health::health;
pub use metrics::render_metrics;

/// Largest request body accepted (a monitor is a few hundred bytes).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body `POST /api/v1/metrics` takes (4 MiB): 10,000 pushed metrics fit.
pub(crate) const MAX_REPORT_BODY_BYTES: usize = 4 * 1024 * 1024;
/// A client must send its first request head within this time of connecting (the server answers
/// 408 and closes), and its body within [`conns::BODY_TIMEOUT`] of the head.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A kept-alive connection closes when no next request has arrived within this long of the last
/// response, including one still arriving a byte at a time. Reconnecting costs a scraper
/// nothing; keeping idle connections short keeps room for everyone.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Connections the server holds at once; past it, it stops accepting. [`conns`] keeps clients
/// under [`ALL_CLIENTS`], so a new connection never waits for one of these.
const MAX_CONNECTIONS: usize = 256;
/// Connections one client address (an IPv6 client: its /64) may hold; its next one closes its
/// connection idle the longest. A scraper or an operator needs one or two.
const PER_CLIENT: usize = 32;
/// Connections all clients together may hold before the one idle the longest is closed.
const ALL_CLIENTS: usize = MAX_CONNECTIONS - PER_CLIENT;
/// In-flight requests get this long to finish at shutdown.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// A bound HTTP socket that does not serve yet. Binding comes first, before the daemon starts
/// anything, so a taken port refuses the start cleanly; serving needs the running supervisor.
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
    token: Option<String>,
}

/// Binds the configured address; `None` when no HTTP is configured.
pub fn bind(settings: &HttpSettings) -> anyhow::Result<Option<Listener>> {
    let Some(addr) = settings.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("cannot listen for HTTP on {addr} (start --listen or [http] listen)")
    })?;
    Ok(Some(Listener {
        addr: listener.local_addr().unwrap_or(addr),
        listener,
        token: settings.token.clone(),
    }))
}

impl Listener {
    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts serving on the current actix System (one worker thread); stop it with
    /// `handle.stop(true)`.
    pub fn start(self, service: Service) -> anyhow::Result<ServerHandle> {
        // The dashboard's per-cycle updates, built once for every page listening.
        let interval = service.deps.settings.interval;
        let publisher =
            actix::Actor::start(dashboard::events::Publisher::new(service.clone(), interval));
        let lockout = Arc::new(lockout::Lockout::default());
        let state = web::Data::new(api::State {
            service,
            token: self.token,
            lockout: Arc::clone(&lockout),
        });
        let connections = Arc::new(conns::Connections::new(conns::Limits {
            per_client: PER_CLIENT,
            total: ALL_CLIENTS,
            first_request: CLIENT_REQUEST_TIMEOUT,
            between_requests: KEEP_ALIVE,
        }));
        let on_connect = Arc::clone(&connections);
        let writes = if state.token.is_some() {
            "enabled"
        } else {
            "disabled (no [http] token)"
        };
        let server = HttpServer::new(move || {
            // Held for as long as the server: the publisher lives while someone holds it.
            let _publisher = &publisher;
            App::new()
                .wrap(from_fn(conns::guard_requests))
                .app_data(state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(MAX_BODY_BYTES)
                        // The endpoint only speaks JSON: `curl -d` without a Content-Type works.
                        .content_type_required(false),
                )
                .wrap(security_headers())
                .service(resource("/").route(web::get().to(dashboard::overview_page)))
                .service(
                    resource("/resource/{type}/{id:.*}")
                        .route(web::get().to(dashboard::resource_page)),
                )
                .service(resource("/static/{file}").route(web::get().to(dashboard::static_file)))
                .service(resource("/metrics").route(web::get().to(metrics_handler)))
                .service(resource("/healthz").route(web::get().to(healthz_handler)))
                .service(
                    web::scope("/api/v1")
                        .service(resource("/summary").route(web::get().to(api::summary)))
                        .service(resource("/alerts").route(web::get().to(api::alerts)))
                        .service(
                            resource("/monitors")
                                .route(web::get().to(api::monitors))
                                .route(web::post().to(api::add_monitor)),
                        )
                        .service(
                            resource("/monitors/{kind}/{id}")
                                .route(web::delete().to(api::remove_monitor)),
                        )
                        .service(
                            resource("/metrics")
                                // A batch of pushed metrics is bigger than any other body.
                                .app_data(
                                    web::JsonConfig::default()
                                        .limit(MAX_REPORT_BODY_BYTES)
                                        .content_type_required(false),
                                )
                                .route(web::post().to(api::report)),
                        )
                        .service(
                            resource("/metrics/{type}/{id}/{metric}")
                                .route(web::delete().to(api::report_remove)),
                        )
                        .service(
                            resource("/events").route(web::get().to(dashboard::events::events)),
                        )
                        .service(
                            resource("/series/{type}/{id}/{metric}")
                                .route(web::get().to(dashboard::actions::series)),
                        )
                        .service(
                            resource("/alerts/{id}/ack")
                                .route(web::post().to(dashboard::actions::ack)),
                        )
                        .service(
                            resource("/silences")
                                .route(web::get().to(dashboard::actions::silences))
                                .route(web::post().to(dashboard::actions::silence_add)),
                        )
                        .service(
                            resource("/silences/{type}/{id:.*}")
                                .route(web::delete().to(dashboard::actions::silence_remove)),
                        ),
                )
                .default_service(web::to(not_found))
        })
        .workers(1)
        .on_connect(move |io, data| on_connect.on_connect(io, data))
        // SIGINT and SIGTERM belong to the daemon, which stops this server in its own order.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .client_disconnect_timeout(Duration::from_secs(1))
        .keep_alive(KEEP_ALIVE)
        .max_connections(MAX_CONNECTIONS)
        .listen(self.listener)
        .with_context(|| format!("cannot serve HTTP on {}", self.addr))?
        .run();
        let handle = server.handle();
        actix_rt::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!("HTTP server failed: {e}");
            }
        });
        actix_rt::spawn(sweep(
            Arc::downgrade(&connections),
            Arc::downgrade(&lockout),
        ));
        tracing::info!(listen = %self.addr, writes, "serving HTTP: the dashboard at /, /metrics, /healthz, /api/v1");
        Ok(handle)
    }
}

/// Every [`conns::SWEEP_EVERY`]: closes connections idle past their limits and writes the guards'
/// pending log lines, until the server is gone.
async fn sweep(connections: Weak<conns::Connections>, lockout: Weak<lockout::Lockout>) {
    let mut tick = actix_rt::time::interval(conns::SWEEP_EVERY);
    loop {
        tick.tick().await;
        let (Some(connections), Some(lockout)) = (connections.upgrade(), lockout.upgrade()) else {
            return;
        };
        let now = Instant::now();
        connections.sweep(now);
        lockout.flush(now);
    }
}

/// `GET /metrics`.
async fn metrics_handler(state: web::Data<api::State>) -> HttpResponse {
    match state.service.summary().await {
        Ok(summary) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .body(render_metrics(&summary)),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body(format!("cannot build the summary: {e}\n")),
    }
}

/// `GET /healthz`: 200 `{"status":"ok"}`, or 503 with the reasons.
async fn healthz_handler(state: web::Data<api::State>) -> HttpResponse {
    let (verdict, warnings) = match state.service.summary().await {
        Ok(summary) => (
            health(&summary),
            health::warnings(&summary, chrono::Utc::now()),
        ),
        Err(e) => (
            Err(vec![format!("cannot build the summary: {e}")]),
            Vec::new(),
        ),
    };
    let mut body = match verdict {
        Ok(()) => json!({"status": "ok"}),
        Err(reasons) => json!({"status": "unhealthy", "reasons": reasons}),
    };
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    if body["status"] == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// A resource whose answer to a method it does not serve is a JSON 405, like every other error.
/// Headers on every answer: no script but our own file (so no inline script, no `eval`), no
/// framing, no MIME sniffing, no referrer.
/// The headers every answer carries: a Content-Security-Policy with no inline script, and no
/// sniffing, framing or referrer. The event stream, which writes its own head, writes them too.
pub(crate) const SECURITY_HEADERS: [(&str, &str); 4] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
];

fn security_headers() -> actix_web::middleware::DefaultHeaders {
    SECURITY_HEADERS.into_iter().fold(
        actix_web::middleware::DefaultHeaders::new(),
        |headers, h| headers.add(h),
    )
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// A known path with a method it does not serve.
async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    HttpResponse::build(StatusCode::METHOD_NOT_ALLOWED)
        .json(json!({"error": format!("{} does not take {}", req.path(), req.method())}))
}

/// Anything else.
async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::build(StatusCode::NOT_FOUND)
        .json(json!({"error": format!("no such endpoint: {} {}", req.method(), req.path())}))
}
