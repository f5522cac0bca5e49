//! `GET /api/v1/events`: the Server-Sent Events stream. A page that connects gets the whole
//! state first (`state`), then once per cycle what changed (`cycle`), preceded by the alert
//! events since the last send (`alert`); a comment line when the stream has been quiet for
//! 15 s keeps idle connections open. A page that falls more than the hub's capacity behind gets
//! `resync` and reloads its state.
//!
//! One publisher per daemon builds a cycle's state once, for all pages, and only while a page
//! listens; the hub formats each send once, and every page gets the same bytes. The hub's sends
//! reach the pages of an HTTP worker thread through one relay on that thread, which writes them
//! to each page's socket itself ([`super::direct`]); a page whose connection has no socket to
//! write to (none left to duplicate), or whose earlier answers never get written out, is
//! streamed by actix instead.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use futures_util::stream;
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};

use super::direct::{self, DirectPage};
use super::{LiveView, ValuesCache, update_changed, update_state};
use crate::actors::supervisor::LiveInfo;
use crate::analysis::AnalyzerCore;
use crate::control::service::Service;
use crate::http::api::State;
use crate::http::conns::Ticket;
use crate::live::{LiveEvent, LiveFrame, LiveHub, sse_frame};
use crate::model::{HealthAlert, HealthMetric, HealthStatus, MonitorSpec, ResourceType, Silence};
use crate::report::ChildState;
use crate::summary::Watched;

/// The publisher's beat: a cycle's update every interval, and in between the alert events held
/// since the last send (so that none waits more than this) or the keep-alive.
const BEAT: Duration = Duration::from_secs(1);

/// What a page that fell too far behind gets: it should connect again.
const RESYNC: &[u8] = b"event: resync\ndata: {}\n\n";

/// Frames a page's stream may fall behind this thread's relay by (as behind the hub).
const PAGE_CAPACITY: usize = 256;

/// The relay of the hub's frames to the pages of one HTTP worker thread. The hub wakes it once
/// per send, and it writes to the pages' sockets on its own thread, or wakes the pages actix
/// streams: a task woken from another thread costs the waker a system call (an `eventfd`
/// write) each, 50 pages 50 of them per send on the daemon's event loop, where this costs one.
struct Relay {
    /// Subscribes the pages actix streams; the relay's task holds the only strong sender, so
    /// that their streams end with it.
    tx: broadcast::WeakSender<LiveFrame>,
    /// The pages it writes to itself.
    direct: RefCell<Vec<Rc<DirectPage>>>,
    /// Pages on it now, of both kinds.
    pages: Cell<usize>,
    /// Told when the last page goes: the relay ends, and the hub knows that nobody listens.
    idle: Notify,
}

impl Relay {
    /// Counts one page less; the last one tells the relay to end.
    fn leave(&self) {
        let pages = self.pages.get().saturating_sub(1);
        self.pages.set(pages);
        if pages == 0 {
            self.idle.notify_one();
        }
    }
}

thread_local! {
    /// This thread's relay, while it runs.
    static RELAY: RefCell<Option<Rc<Relay>>> = const { RefCell::new(None) };
}

/// This thread's relay (started if none runs), counting one page more; with a receiver for a
/// page that actix streams.
fn join(hub: &LiveHub) -> (Rc<Relay>, broadcast::Receiver<LiveFrame>) {
    RELAY.with(|slot| {
        let mut slot = slot.borrow_mut();
        let running = slot
            .as_ref()
            .and_then(|relay| Some((Rc::clone(relay), relay.tx.upgrade()?.subscribe())));
        let (relay, rx) = running.unwrap_or_else(|| {
            let (tx, rx) = broadcast::channel(PAGE_CAPACITY);
            let relay = Rc::new(Relay {
                tx: tx.downgrade(),
                direct: RefCell::new(Vec::new()),
                pages: Cell::new(0),
                idle: Notify::new(),
            });
            actix_web::rt::spawn(relay_frames(hub.subscribe(), tx, Rc::clone(&relay)));
            *slot = Some(Rc::clone(&relay));
            (relay, rx)
        });
        relay.pages.set(relay.pages.get() + 1);
        (relay, rx)
    })
}

/// A page's frames, from its thread's relay, for actix to stream.
struct Feed {
    rx: broadcast::Receiver<LiveFrame>,
    relay: Rc<Relay>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.relay.leave();
    }
}

/// A new page's feed, for actix to stream.
fn feed(hub: &LiveHub) -> Feed {
    let (relay, rx) = join(hub);
    Feed { rx, relay }
}

/// A page the relay writes to, on the relay, for as long as its handler holds this: dropped
/// (the page ended, or actix dropped the handler), it ends the page and leaves the relay.
struct OnRelay {
    page: Rc<DirectPage>,
    relay: Rc<Relay>,
}

impl OnRelay {
    fn new(hub: &LiveHub, page: Rc<DirectPage>) -> OnRelay {
        // The receiver is for pages actix streams: this one needs none.
        let (relay, _) = join(hub);
        relay.direct.borrow_mut().push(Rc::clone(&page));
        OnRelay { page, relay }
    }
}

impl Drop for OnRelay {
    fn drop(&mut self) {
        self.page.finish();
        self.relay
            .direct
            .borrow_mut()
            .retain(|p| !Rc::ptr_eq(p, &self.page));
        self.relay.leave();
    }
}

/// The relay's task: passes each of the hub's frames on to this thread's pages, until none is
/// left (or the hub closes, which ends them all).
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
                    Err(RecvError::Closed) => break,
                };
                // Written out before anything else runs here: a page that ends meanwhile
                // leaves the list only when its handler runs again.
                for page in relay.direct.borrow().iter() {
                    page.send(&frame);
                }
                if tx.receiver_count() > 0 {
                    let _ = tx.send(frame);
                }
            }
            () = relay.idle.notified() => {
                if relay.pages.get() == 0 {
                    break;
                }
            }
        }
    }
    for page in relay.direct.borrow().iter() {
        page.finish();
    }
}

/// `GET /api/v1/events`: written to the page's socket by this thread's relay, once actix holds
/// nothing unwritten on the connection; streamed by actix otherwise.
pub(crate) async fn events(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    if let Some(socket) = req.conn_data::<Ticket>().and_then(Ticket::socket) {
        match direct::handed_over(&socket).await {
            Ok(true) => match DirectPage::new(socket) {
                Ok(page) => return stream_direct(&state.service, page).await,
                Err(e) => tracing::debug!("the event stream goes through actix: {e}"),
            },
            Ok(false) => tracing::debug!(
                "the event stream goes through actix: the connection's earlier answers are not written out"
            ),
            Err(e) => tracing::debug!("the event stream goes through actix: {e}"),
        }
    }
    let hub = state.service.deps.analyzer.clone();
    let feed = feed(hub.live());
    let start = Bytes::from(start_of_stream(&state.service).await);
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

/// What a page gets first: the reconnection delay, and the whole state (built now when no
/// publisher cycle has run yet).
async fn start_of_stream(service: &Service) -> String {
    let first = match service.deps.analyzer.live().latest() {
        Some(event) => Some(event),
        None => publish_once(service).await,
    };
    let start = first.map(|e| sse_frame(&e)).unwrap_or_default();
    format!("retry: 2000\n\n{start}")
}

/// Streams to `page` until it ends: on the relay first, so that no frame sent while the state is
/// made is missed, then the head and the state, then what came meanwhile.
async fn stream_direct(service: &Service, page: Rc<DirectPage>) -> HttpResponse {
    let on_relay = OnRelay::new(service.deps.analyzer.live(), Rc::clone(&page));
    let mut first = direct::head();
    first.extend_from_slice(start_of_stream(service).await.as_bytes());
    page.begin(&first);
    page.ended_wait().await;
    drop(on_relay);
    // Written to a connection closed both ways: actix only finds it closed, and lets it go.
    HttpResponse::Ok().finish()
}

/// Builds the state now and hands it to the hub; returns it as a `state` event.
async fn publish_once(service: &Service) -> Option<LiveEvent> {
    publish(service, Builder::default()).await?;
    service.deps.analyzer.live().latest()
}

/// Brings the hub's state up to date with what the daemon holds now; the hub sends what
/// changed. The monitors come shared from the supervisor; the latest values and alerts are
/// read where the analyzer keeps them (the update runs on it), so a cycle copies none of them,
/// and only the resources the analyzer says changed are looked at. Gives `builder` back for the
/// next cycle; `None` when the supervisor or the analyzer does not answer (the daemon is
/// stopping, the analyzer restarting).
async fn publish(service: &Service, mut builder: Builder) -> Option<Builder> {
    // Only the children not running: the others leave the resources' statuses alone.
    let live = service.supervisor.live_impaired().await.ok()?;
    let analyzer = service.deps.analyzer.clone();
    service
        .deps
        .analyzer
        .inspect(move |core| {
            let now = Utc::now();
            let silences = analyzer.memory().silences(now);
            builder.cycle(core, &live, analyzer.live(), &silences, now);
            builder
        })
        .await
}

/// A full look at every resource at least this often, whatever the analyzer says changed: what
/// a missed change could leave wrong on a page lasts at most this many cycles.
const FULL_EVERY: u32 = 60;

/// What the publisher keeps from one cycle to the next, to look at only what changed.
#[derive(Default)]
pub(crate) struct Builder {
    /// The resources' values texts.
    cache: ValuesCache,
    /// The monitors the last cycle saw (the supervisor shares one list until they change), and
    /// the lookup made of them.
    monitors: Option<Arc<[MonitorSpec]>>,
    watched: Watched,
    /// The children not running, and the conditions on resources (their type, id, alert and
    /// severity), as the last cycle saw them: they set resources' statuses. When the children
    /// change, every resource is looked at again; when the conditions do, their resources.
    impaired: Vec<(String, ChildState)>,
    conditions: Vec<(ResourceType, String, String, HealthStatus)>,
    /// The analyzer core the last cycle read: another one (a restarted analyzer) knows nothing
    /// of what changed since.
    epoch: u64,
    /// Cycles since the last full one.
    partial: u32,
    /// Full cycles and cycles of changes only, for the tests.
    counts: (u64, u64),
}

impl Builder {
    /// One cycle: brings `hub`'s state up to date with the analyzer's `core` (`None` while it
    /// loads) and the supervisor's `live` view.
    pub(crate) fn cycle(
        &mut self,
        core: Option<&mut AnalyzerCore>,
        live: &LiveInfo,
        hub: &LiveHub,
        silences: &[Silence],
        now: DateTime<Utc>,
    ) {
        if !self
            .monitors
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, &live.monitors))
        {
            self.watched = Watched::new(&live.monitors);
            self.monitors = Some(Arc::clone(&live.monitors));
            // Nothing to compare the next cycle's changes against.
            self.epoch = 0;
        }
        let Some(core) = core else {
            self.epoch = 0;
            let view = LiveView {
                watched: &self.watched,
                actors: &live.actors,
                latest: &[],
                active_alerts: &[],
            };
            hub.cycle_with(|state| update_state(state, &view, silences, now, &mut self.cache));
            return;
        };
        let changes = core.take_changes();
        let active_alerts: Vec<HealthAlert> = core.active_alerts().cloned().collect();
        let impaired: Vec<(String, ChildState)> = live
            .actors
            .iter()
            .filter(|a| a.state != ChildState::Running)
            .map(|a| (a.name.clone(), a.state))
            .collect();
        let mut conditions: Vec<_> = active_alerts
            .iter()
            .filter_map(|a| {
                let floor = crate::summary::resource_floor(a)?;
                Some((
                    a.resource_type,
                    a.resource_id.clone(),
                    a.alert_type.clone(),
                    floor,
                ))
            })
            .collect();
        conditions.sort();
        let mut changes = changes.filter(|_| {
            core.epoch() == self.epoch && impaired == self.impaired && self.partial < FULL_EVERY
        });
        if let Some(changed) = &mut changes {
            // A condition sets the status of its own resource only (the overall status is
            // made from every alert anyway): the resources of those that came or went changed.
            let came = conditions.iter().filter(|c| !self.conditions.contains(c));
            let went = self.conditions.iter().filter(|c| !conditions.contains(c));
            for (t, id, ..) in came.chain(went) {
                changed.entry(*t).or_default().insert(id.clone());
            }
        }
        self.epoch = core.epoch();
        self.impaired = impaired;
        self.conditions = conditions;
        let core = &*core;
        match changes {
            Some(changed) => {
                self.partial += 1;
                self.counts.1 += 1;
                let view = LiveView {
                    watched: &self.watched,
                    actors: &live.actors,
                    latest: &[],
                    active_alerts: &active_alerts,
                };
                let resources = changed.iter().flat_map(|(&t, ids)| {
                    ids.iter()
                        .map(move |id| (t, id.as_str(), core.latest_of(t, id).collect()))
                });
                hub.cycle_with(|state| update_changed(state, &view, resources, silences, now));
            }
            None => {
                self.partial = 0;
                self.counts.0 += 1;
                let latest: Vec<&HealthMetric> = core.latest().collect();
                let view = LiveView {
                    watched: &self.watched,
                    actors: &live.actors,
                    latest: &latest,
                    active_alerts: &active_alerts,
                };
                let cache = &mut self.cache;
                hub.cycle_with(|state| update_state(state, &view, silences, now, cache));
            }
        }
    }
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
    /// What one cycle keeps for the next.
    builder: Builder,
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
            builder: Builder::default(),
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
            let builder = std::mem::take(&mut act.builder);
            let cycle = async move { publish(&service, builder).await };
            ctx.spawn(cycle.into_actor(act).map(|builder, act, _| {
                act.busy = false;
                match builder {
                    Some(builder) => act.builder = builder,
                    // Lost with the ask: the next cycle starts over, with a full look.
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

    /// What a full look at `core` makes of it, as the `state` event's data.
    fn full_look(core: &AnalyzerCore, live: &LiveInfo, now: DateTime<Utc>) -> std::sync::Arc<str> {
        let latest: Vec<&HealthMetric> = core.latest().collect();
        let alerts: Vec<HealthAlert> = core.active_alerts().cloned().collect();
        let watched = Watched::new(&live.monitors);
        let view = LiveView {
            watched: &watched,
            actors: &live.actors,
            latest: &latest,
            active_alerts: &alerts,
        };
        let mut state = LiveState::default();
        update_state(&mut state, &view, &[], now, &mut ValuesCache::default());
        let hub = LiveHub::default();
        hub.cycle(state);
        hub.latest().unwrap().data
    }

    #[test]
    fn a_cycle_of_the_changes_only_leaves_the_state_a_full_look_would() {
        use crate::alerts::Condition;
        use crate::model::{AlertKey, Measurement, MonitorKind, MonitorSet, Thresholds};
        use crate::report::ActorReport;
        let now = Utc::now();
        let mut core =
            AnalyzerCore::new(crate::rules::RuleTable::default(), Duration::from_secs(300));
        let mut monitors: MonitorSet = [
            MonitorSpec::agent("a1"),
            MonitorSpec::agent("a2"),
            MonitorSpec::workspace("w1"),
        ]
        .into_iter()
        .collect();
        let mut actors: Vec<ActorReport> = Vec::new();
        let agent = |id: &str, name: &str, v| Measurement {
            metric_name: name.to_string().into(),
            ..Measurement::now(ResourceType::Agent, id, "", v, "MB")
        };
        let pushed = |v| Measurement {
            thresholds: Some(Thresholds::new(5.0, 9.0)),
            ..agent("feed", "load", v)
        };
        let (hub, mut builder) = (LiveHub::default(), Builder::default());
        // Each step changes the core or the supervisor's view, then a cycle runs.
        type Step<'a> = Box<dyn Fn(&mut AnalyzerCore, &mut MonitorSet, &mut Vec<ActorReport>) + 'a>;
        let steps: Vec<(&str, Step)> = vec![
            (
                "first",
                Box::new(|c, _, _| {
                    c.analyze_from(
                        "agent:a1",
                        &[agent("a1", "x", 1.0), agent("a1", "y", 2.0)],
                        now,
                    );
                    c.analyze_from("agent:a2", &[agent("a2", "x", 1.0)], now);
                    c.analyze_from(crate::analysis::PUSHED_SOURCE, &[pushed(1.0)], now);
                }),
            ),
            (
                "the same again",
                Box::new(|c, _, _| {
                    c.analyze_from(
                        "agent:a1",
                        &[agent("a1", "x", 1.0), agent("a1", "y", 2.0)],
                        now,
                    );
                }),
            ),
            (
                "a value",
                Box::new(|c, _, _| {
                    c.analyze_from(
                        "agent:a1",
                        &[agent("a1", "x", 3.0), agent("a1", "y", 2.0)],
                        now,
                    );
                }),
            ),
            (
                "over the threshold",
                Box::new(|c, _, _| {
                    c.analyze_from(crate::analysis::PUSHED_SOURCE, &[pushed(9.5)], now);
                }),
            ),
            (
                "a series gone",
                Box::new(|c, _, _| {
                    c.analyze_from("agent:a1", &[agent("a1", "x", 3.0)], now);
                }),
            ),
            (
                "a pushed series retired",
                Box::new(|c, _, _| {
                    c.retire_series(ResourceType::Agent, "feed", "load", now);
                }),
            ),
            (
                "a monitor added",
                Box::new(|_, m, _| {
                    m.add(MonitorSpec::agent("a3"));
                }),
            ),
            (
                "a monitor removed",
                Box::new(|c, m, _| {
                    m.remove(MonitorKind::Agent, "a2");
                    c.forget_resource(ResourceType::Agent, "a2", now);
                }),
            ),
            (
                "a collector restarting",
                Box::new(|_, _, a| {
                    a.push(ActorReport {
                        name: "workspace:w1".into(),
                        state: ChildState::Restarting,
                        restarts: 1,
                    });
                }),
            ),
            (
                "a condition",
                Box::new(|c, _, _| {
                    let key = AlertKey {
                        resource_type: ResourceType::Agent,
                        resource_id: "a3".into(),
                        alert_type: "session_death".into(),
                    };
                    let condition = Condition {
                        severity: HealthStatus::Critical,
                        message: "gone".into(),
                        metadata: serde_json::Value::Null,
                    };
                    c.engine_mut().raise(key, condition, now);
                }),
            ),
            (
                "after them, a value",
                Box::new(|c, _, _| {
                    c.analyze_from("agent:a1", &[agent("a1", "x", 4.0)], now);
                }),
            ),
        ];
        let mut partial = Vec::new();
        for (name, step) in &steps {
            step(&mut core, &mut monitors, &mut actors);
            let live = LiveInfo {
                monitors: monitors.shared(),
                actors: actors.clone(),
            };
            let before = builder.counts;
            builder.cycle(Some(&mut core), &live, &hub, &[], now);
            if builder.counts.1 > before.1 {
                partial.push(*name);
            }
            assert_eq!(
                hub.latest().unwrap().data,
                full_look(&core, &live, now),
                "after {name}"
            );
        }
        assert_eq!(
            partial,
            [
                "the same again",
                "a value",
                "over the threshold",
                "a series gone",
                "a pushed series retired",
                "a condition",
                "after them, a value"
            ],
            "the rest are full looks: the first, the monitors, the children"
        );
        let state = hub.latest().unwrap().data;
        assert!(state.contains(r#""overall":"critical""#), "{state}");
        // A restarted analyzer's core: a full look, whatever it says changed.
        let mut fresh =
            AnalyzerCore::new(crate::rules::RuleTable::default(), Duration::from_secs(300));
        fresh.take_changes();
        let live = LiveInfo {
            monitors: monitors.shared(),
            actors: actors.clone(),
        };
        builder.cycle(Some(&mut fresh), &live, &hub, &[], now);
        assert_eq!(hub.latest().unwrap().data, full_look(&fresh, &live, now));
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
