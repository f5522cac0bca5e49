//! `GET /api/v1/events`: the Server-Sent Events stream. A page that connects gets the whole
//! state first (`state`), then each alert event as it happens (`alert`) and once per cycle what
//! changed (`cycle`); a comment line every 15 s keeps idle connections open. A page that falls
//! more than the hub's capacity behind gets `resync` and reloads its state.
//!
//! One publisher per daemon builds a cycle's state once, for all pages, and only while a page
//! listens.

use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use futures_util::stream;
use tokio::sync::broadcast::error::RecvError;

use crate::control::service::Service;
use crate::http::api::State;
use crate::live::{LiveEvent, sse_frame};

/// How often an idle stream gets a comment line.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /api/v1/events`.
pub(crate) async fn events(state: web::Data<State>) -> HttpResponse {
    let hub = state.service.deps.analyzer.clone();
    let rx = hub.live().subscribe();
    // The state first, built now when no publisher cycle has run yet.
    let first = match hub.live().latest() {
        Some(event) => Some(event),
        None => publish_once(&state.service).await,
    };
    let start = first.map(|e| sse_frame(&e)).unwrap_or_default();
    let body = stream::unfold(
        (rx, Some(format!("retry: 2000\n\n{start}"))),
        |(mut rx, pending)| async move {
            if let Some(text) = pending {
                return Some((Ok::<_, actix_web::Error>(Bytes::from(text)), (rx, None)));
            }
            let text = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                Ok(Ok(event)) => sse_frame(&event),
                Ok(Err(RecvError::Lagged(_))) => "event: resync\ndata: {}\n\n".to_string(),
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) => ": keep-alive\n\n".to_string(),
            };
            Some((Ok(Bytes::from(text)), (rx, None)))
        },
    );
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Builds the state now and hands it to the hub; returns it as a `state` event.
async fn publish_once(service: &Service) -> Option<LiveEvent> {
    let summary = service.live_summary().await.ok()?;
    let snapshot = service.deps.analyzer.snapshot().await.unwrap_or_default();
    let now = Utc::now();
    let silences = service.deps.analyzer.memory().silences(now);
    let state = super::live_state(&summary, &snapshot.active_alerts, &silences, now);
    let hub = service.deps.analyzer.live();
    hub.cycle(state);
    hub.latest()
}

/// Publishes a cycle's state every interval (at least 1 s) while a page listens, on the
/// daemon's shared beat: the event loop wakes once for it and the collectors' ticks together.
pub(crate) struct Publisher {
    service: Service,
    every: Duration,
    /// A publication still running (its summary waits on the supervisor and the analyzer).
    busy: bool,
}

impl Publisher {
    /// A publisher for the daemon behind `service`, every `interval` (at least 1 s).
    pub(crate) fn new(service: Service, interval: Duration) -> Self {
        Publisher {
            service,
            every: interval.max(Duration::from_secs(1)),
            busy: false,
        }
    }
}

impl actix::Actor for Publisher {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::{ActorFutureExt, AsyncContext, WrapFuture};
        crate::actors::cadence::run_on_beat(ctx, self.every, Duration::ZERO, |act, ctx| {
            if act.busy || act.service.deps.analyzer.live().listeners() == 0 {
                return;
            }
            act.busy = true;
            let service = act.service.clone();
            let publish = async move {
                let _ = publish_once(&service).await;
            };
            ctx.spawn(publish.into_actor(act).map(|(), act, _| act.busy = false));
        });
    }
}
