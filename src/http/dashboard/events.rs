//! `GET /api/v1/events`: the Server-Sent Events stream. A page that connects gets the whole
//! state first (`state`), then once per cycle what changed (`cycle`), preceded by the alert
//! events since the last send (`alert`); a comment line when the stream has been quiet for
//! 15 s keeps idle connections open. A page that falls more than the hub's capacity behind gets
//! `resync` and reloads its state.
//!
//! One publisher per daemon builds a cycle's state once, for all pages, and only while a page
//! listens; the hub formats each send once, and every page's stream passes the same bytes on.
//! The hub's sends reach the pages of an HTTP worker thread through one relay on that thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use futures_util::stream;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

use super::ValuesCache;
use crate::control::service::{LiveInputs, Service};
use crate::http::api::State;
use crate::live::{LiveEvent, LiveFrame, LiveHub, sse_frame};

/// The publisher's beat: a cycle's update every interval, and in between the alert events held
/// since the last send (so that none waits more than this) or the keep-alive.
const BEAT: Duration = Duration::from_secs(1);

/// What a page that fell too far behind gets: it should connect again.
const RESYNC: &[u8] = b"event: resync\ndata: {}\n\n";

/// Frames a page's stream may fall behind this thread's relay by (as behind the hub).
const PAGE_CAPACITY: usize = 256;

/// The relay of the hub's frames to the pages of one HTTP worker thread. The hub wakes it once
/// per send, and it wakes the pages on its own thread: a task woken from another thread costs
/// the waker a system call (an `eventfd` write) each, 50 pages 50 of them per send on the
/// daemon's event loop, where this costs one.
struct Relay {
    /// Subscribes the pages; the relay's task holds the only strong sender, so that the pages'
    /// streams end with it.
    tx: broadcast::WeakSender<LiveFrame>,
    /// Pages on it now.
    pages: Cell<usize>,
    /// Told when the last page goes: the relay ends, and the hub knows that nobody listens.
    idle: Notify,
}

thread_local! {
    /// This thread's relay, while it runs.
    static RELAY: RefCell<Option<Rc<Relay>>> = const { RefCell::new(None) };
}

/// A page's frames, from its thread's relay.
struct Feed {
    rx: broadcast::Receiver<LiveFrame>,
    relay: Rc<Relay>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        let pages = self.relay.pages.get().saturating_sub(1);
        self.relay.pages.set(pages);
        if pages == 0 {
            self.relay.idle.notify_one();
        }
    }
}

/// A new page's feed, from this thread's relay (started if none runs).
fn feed(hub: &LiveHub) -> Feed {
    RELAY.with(|slot| {
        let mut slot = slot.borrow_mut();
        let running = slot
            .as_ref()
            .and_then(|relay| Some((Rc::clone(relay), relay.tx.upgrade()?.subscribe())));
        let (relay, rx) = running.unwrap_or_else(|| {
            let (tx, rx) = broadcast::channel(PAGE_CAPACITY);
            let relay = Rc::new(Relay {
                tx: tx.downgrade(),
                pages: Cell::new(0),
                idle: Notify::new(),
            });
            actix_web::rt::spawn(relay_frames(hub.subscribe(), tx, Rc::clone(&relay)));
            *slot = Some(Rc::clone(&relay));
            (relay, rx)
        });
        relay.pages.set(relay.pages.get() + 1);
        Feed { rx, relay }
    })
}

/// The relay's task: passes each of the hub's frames on to this thread's pages, until none is
/// left (or the hub closes).
async fn relay_frames(
    mut from_hub: broadcast::Receiver<LiveFrame>,
    tx: broadcast::Sender<LiveFrame>,
    relay: Rc<Relay>,
) {
    loop {
        tokio::select! {
            got = from_hub.recv() => {
                let frame = match got {
                    Ok(frame) => frame,
                    // The whole thread fell behind: every page starts over.
                    Err(RecvError::Lagged(_)) => Bytes::from_static(RESYNC),
                    Err(RecvError::Closed) => return,
                };
                if tx.send(frame).is_err() {
                    return;
                }
            }
            () = relay.idle.notified() => {
                if relay.pages.get() == 0 {
                    return;
                }
            }
        }
    }
}

/// `GET /api/v1/events`.
pub(crate) async fn events(state: web::Data<State>) -> HttpResponse {
    let hub = state.service.deps.analyzer.clone();
    let feed = feed(hub.live());
    // The state first, built now when no publisher cycle has run yet.
    let first = match hub.live().latest() {
        Some(event) => Some(event),
        None => publish_once(&state.service).await,
    };
    let start = first.map(|e| sse_frame(&e)).unwrap_or_default();
    let start = Bytes::from(format!("retry: 2000\n\n{start}"));
    // No timer per page: the hub sends the keep-alive to every page at once.
    let body = stream::unfold((feed, Some(start)), |(mut feed, pending)| async move {
        if let Some(start) = pending {
            return Some((Ok::<_, actix_web::Error>(start), (feed, None)));
        }
        let frame = match feed.rx.recv().await {
            Ok(frame) => frame,
            Err(RecvError::Lagged(_)) => Bytes::from_static(RESYNC),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(frame), (feed, None)))
    });
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/event-stream"))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Builds the state now and hands it to the hub; returns it as a `state` event.
async fn publish_once(service: &Service) -> Option<LiveEvent> {
    let inputs = service.live_inputs().await.ok()?;
    publish(service, &inputs, &mut ValuesCache::default());
    service.deps.analyzer.live().latest()
}

/// Brings the hub's state up to date with `inputs`; the hub sends what changed.
fn publish(service: &Service, inputs: &LiveInputs, cache: &mut ValuesCache) {
    let now = Utc::now();
    let silences = service.deps.analyzer.memory().silences(now);
    service
        .deps
        .analyzer
        .live()
        .cycle_with(|state| super::update_state(state, inputs, &silences, now, cache));
}

/// True when a cycle is due on a beat, `since` the last one began: the beats come every
/// [`BEAT`], give or take the event loop's delays, and a cycle every `every`.
fn cycle_due(since: Option<Duration>, every: Duration) -> bool {
    since.is_none_or(|since| since + BEAT / 2 >= every)
}

/// Publishes a cycle's state every interval (at least 1 s) while a page listens, on the
/// daemon's shared beat: the event loop wakes once for it and the collectors' ticks together.
pub(crate) struct Publisher {
    service: Service,
    every: Duration,
    /// A publication still running (its inputs come from the supervisor and the analyzer).
    busy: bool,
    /// When the last cycle began.
    last_cycle: Option<Instant>,
    /// The resources' values texts, kept from cycle to cycle.
    cache: ValuesCache,
    /// The 1 s beat between cycles (held alert events, the keep-alive), while pages listen and
    /// cycles are further apart: nobody listening, the publisher wakes the event loop only on
    /// the collectors' own beat.
    between: Option<actix::SpawnHandle>,
}

impl Publisher {
    /// A publisher for the daemon behind `service`, every `interval` (at least 1 s).
    pub(crate) fn new(service: Service, interval: Duration) -> Self {
        Publisher {
            service,
            every: interval.max(BEAT),
            busy: false,
            last_cycle: None,
            cache: ValuesCache::default(),
            between: None,
        }
    }
}

impl actix::Actor for Publisher {
    type Context = actix::Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::{ActorFutureExt, AsyncContext, WrapFuture};
        crate::actors::cadence::run_on_beat(ctx, self.every, Duration::ZERO, |act, ctx| {
            let hub = act.service.deps.analyzer.live();
            let listening = hub.listeners() > 0;
            if !listening {
                act.last_cycle = None;
            }
            if listening && act.every > BEAT && act.between.is_none() {
                let between =
                    crate::actors::cadence::run_on_beat(ctx, BEAT, BEAT / 2, |act, ctx| {
                        let hub = act.service.deps.analyzer.live();
                        if hub.listeners() == 0 {
                            if let Some(handle) = act.between.take() {
                                ctx.cancel_future(handle);
                            }
                            return;
                        }
                        // A beat that is also the cycle's: the cycle's frame carries what is held.
                        if !cycle_due(act.last_cycle.map(|t| t.elapsed()), act.every) {
                            hub.flush();
                        }
                    });
                act.between = Some(between);
            }
            let due = cycle_due(act.last_cycle.map(|t| t.elapsed()), act.every);
            if !listening || act.busy || !due {
                // The alert events held since the last send, or the keep-alive.
                hub.flush();
                return;
            }
            act.busy = true;
            act.last_cycle = Some(Instant::now());
            let service = act.service.clone();
            let gather = async move { service.live_inputs().await.ok() };
            ctx.spawn(gather.into_actor(act).map(|inputs, act, _| {
                act.busy = false;
                match inputs {
                    Some(inputs) => publish(&act.service, &inputs, &mut act.cache),
                    None => act.service.deps.analyzer.live().flush(),
                }
            }));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{LiveResource, LiveState};

    fn state(status: &str) -> LiveState {
        let r = LiveResource {
            resource_type: "agent".into(),
            id: "a1".into(),
            status: status.into(),
            values: String::new(),
        };
        LiveState {
            resources: [("agent/a1".to_string(), r)].into(),
            ..LiveState::default()
        }
    }

    /// Lets the relay's task run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn the_pages_of_a_thread_share_one_relay_which_ends_with_the_last_of_them() {
        actix_rt::System::new().block_on(async {
            let hub = LiveHub::default();
            hub.cycle(state("healthy"));
            let (mut a, mut b) = (feed(&hub), feed(&hub));
            assert_eq!(hub.listeners(), 1, "one relay for both pages");
            hub.cycle(state("critical"));
            let (fa, fb) = (a.rx.recv().await.unwrap(), b.rx.recv().await.unwrap());
            assert!(fa.starts_with(b"event: cycle\ndata: {"));
            assert_eq!(fa.as_ptr(), fb.as_ptr(), "the same bytes, not a copy each");
            drop(a);
            settle().await;
            assert_eq!(hub.listeners(), 1, "b still listens");
            drop(b);
            settle().await;
            assert_eq!(hub.listeners(), 0, "the relay went with the last page");
            let mut c = feed(&hub);
            assert_eq!(hub.listeners(), 1, "a new relay for a new page");
            hub.cycle(state("healthy"));
            assert!(c.rx.recv().await.is_ok());
            drop(hub);
            assert!(
                matches!(c.rx.recv().await, Err(RecvError::Closed)),
                "the page's stream ends with the hub"
            );
        });
    }

    #[test]
    fn a_cycle_is_due_every_interval_on_the_beat_that_ends_it() {
        let secs = Duration::from_secs;
        let ms = Duration::from_millis;
        assert!(cycle_due(None, secs(1)), "the first beat with a page");
        // A beat late or early by a few milliseconds still makes the interval.
        assert!(cycle_due(Some(ms(995)), secs(1)));
        assert!(cycle_due(Some(ms(1010)), secs(1)));
        assert!(
            !cycle_due(Some(secs(1)), secs(5)),
            "the beats between cycles"
        );
        assert!(!cycle_due(Some(ms(3990)), secs(5)));
        assert!(cycle_due(Some(ms(4995)), secs(5)));
    }
}
