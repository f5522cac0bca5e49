//! One beat for every periodic timer of the daemon, so that a cycle's work happens in one burst
//! and costs one wake-up of the event loop.
//!
//! Every wake-up from idle costs CPU, and on a virtual machine a lot of it: measured on this
//! project's 2-vCPU VM, a thread waking after 0.5 s asleep was charged 0.5 to 0.8 ms, after
//! 50 ms 0.08 to 0.2 ms. Timers at scattered phases (each collector's own start time, the
//! analyzer's and the supervisor's housekeeping) each pay that; timers on one beat share one.
//!
//! The beat of each period comes from one `timerfd` per event loop, armed at absolute times on
//! `CLOCK_MONOTONIC`: the loop's `epoll` wakes once, at the beat. tokio's own timers would wake
//! it twice: its hierarchical wheel keeps a deadline more than 64 ms away in a coarser slot, and
//! wakes the loop at that slot's start to move the timer down, tens of ms before the beat.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use futures_util::stream::{self, Stream};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Now on `CLOCK_MONOTONIC` (the clock of `std::time::Instant`), in nanoseconds.
fn monotonic_ns() -> u128 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there on Linux");
    now.tv_sec() as u128 * 1_000_000_000 + now.tv_nsec() as u128
}

/// The instant every beat counts from: the first time anything asks.
static EPOCH_NS: LazyLock<u128> = LazyLock::new(monotonic_ns);

/// The index of the first beat of period `every` (counted from `epoch`) at least `min_gap`
/// after `now`; all in nanoseconds on one clock.
pub(crate) fn first_beat(epoch: u128, now: u128, every: u128, min_gap: u128) -> u64 {
    let since = (now + min_gap).saturating_sub(epoch);
    // Saturates for absurd periods; such a beat simply never comes.
    u64::try_from(since.div_ceil(every.max(1))).unwrap_or(u64::MAX)
}

/// When beat `index` of period `every` falls, in nanoseconds on `CLOCK_MONOTONIC`.
fn beat_ns(index: u64, every: Duration) -> u128 {
    *EPOCH_NS + index as u128 * every.as_nanos()
}

thread_local! {
    /// This event loop's beat of each period: the latest beat's index, as it passes.
    static HUBS: RefCell<HashMap<Duration, Rc<watch::Sender<u64>>>> = RefCell::new(HashMap::new());
}

/// Forgets a hub when its task ends (no subscriber left), or when its loop drops it unrun (a
/// test's system ending), so a later loop on the thread starts its own.
struct HubGuard(Duration);

impl Drop for HubGuard {
    fn drop(&mut self) {
        let _ = HUBS.try_with(|h| h.borrow_mut().remove(&self.0));
    }
}

/// A `timerfd` firing at every beat of period `every` from beat `first` on.
fn beat_timer(every: Duration, first: u64) -> std::io::Result<AsyncFd<OwnedFd>> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    // Periods are at most a year (config), so this only fails on a clock centuries old.
    let start = u64::try_from(beat_ns(first, every)).map_err(std::io::Error::other)?;
    let start = TimeSpec::from_duration(Duration::from_nanos(start));
    timer.set(
        Expiration::IntervalDelayed(start, TimeSpec::from_duration(every)),
        TimerSetTimeFlags::TFD_TIMER_ABSTIME,
    )?;
    // SAFETY: the `OwnedFd` is the timer's own open descriptor and goes with the `AsyncFd`.
    unsafe { AsyncFd::register_with_interest(OwnedFd::from(timer), Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Subscribes to this event loop's beat of period `every`, starting its hub if none runs.
/// `None` when no timer can be had (out of file descriptors, say): the caller falls back.
/// Must run on an event loop (a tokio runtime with I/O enabled), as every actor does.
fn subscribe(every: Duration) -> Option<watch::Receiver<u64>> {
    if let Some(tx) = HUBS.with(|h| h.borrow().get(&every).cloned()) {
        return Some(tx.subscribe());
    }
    let first = first_beat(*EPOCH_NS, monotonic_ns(), every.as_nanos(), 0);
    let timer = match beat_timer(every, first) {
        Ok(timer) => timer,
        Err(e) => {
            tracing::warn!("no timerfd for the beat ({e}); using tokio's timers");
            return None;
        }
    };
    let tx = Rc::new(watch::Sender::new(first.saturating_sub(1)));
    let rx = tx.subscribe();
    HUBS.with(|h| h.borrow_mut().insert(every, Rc::clone(&tx)));
    let guard = HubGuard(every);
    actix_rt::spawn(async move {
        let _guard = guard;
        let mut passed: u64 = 0;
        loop {
            let Ok(mut ready) = timer.readable().await else {
                return;
            };
            let read = ready.try_io(|fd| {
                let mut expirations = [0u8; 8];
                nix::unistd::read(fd.get_ref(), &mut expirations)?;
                Ok(u64::from_ne_bytes(expirations))
            });
            match read {
                Ok(Ok(n)) => {
                    // All expirations are read at once: the timer is not readable again until
                    // the next beat, so the next wait goes straight to epoll (no read that
                    // only finds EAGAIN). Cleared only if nothing new came since the wake-up.
                    ready.clear_ready();
                    passed += n;
                    tx.send_replace(first + passed - 1);
                    if tx.receiver_count() == 0 {
                        return; // Nobody listens any more: the timer goes with this task.
                    }
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => {
                    // Subscribers notice the closed channel and go on with tokio's timers.
                    tracing::warn!("the beat's timerfd failed ({e}); using tokio's timers");
                    return;
                }
                Err(_would_block) => continue,
            }
        }
    });
    Some(rx)
}

/// Where a subscriber's beats come from.
enum Source {
    Hub(watch::Receiver<u64>),
    /// The fallback: tokio's timers, one per subscriber, on the same beats.
    Timer,
}

/// The beats of period `every` on this event loop, from the first one at least `min_gap` from
/// now. A beat that passes while the loop is busy is not made up: the next one comes on time.
pub(crate) fn beats(every: Duration, min_gap: Duration) -> impl Stream<Item = ()> {
    let every = every.max(Duration::from_millis(1));
    let next = first_beat(
        *EPOCH_NS,
        monotonic_ns(),
        every.as_nanos(),
        min_gap.as_nanos(),
    );
    let source = subscribe(every).map_or(Source::Timer, Source::Hub);
    beats_from(source, every, next)
}

/// The beats of period `every` from beat `next` on, as `source` tells them.
fn beats_from(source: Source, every: Duration, next: u64) -> impl Stream<Item = ()> {
    stream::unfold((source, next), move |(mut source, mut next)| async move {
        loop {
            match &mut source {
                Source::Hub(rx) => {
                    if rx.changed().await.is_err() {
                        source = Source::Timer;
                        continue;
                    }
                    let latest = *rx.borrow_and_update();
                    if latest >= next {
                        next = latest + 1;
                        return Some(((), (source, next)));
                    }
                }
                Source::Timer => {
                    let wait = beat_ns(next, every).saturating_sub(monotonic_ns());
                    let wait = u64::try_from(wait).unwrap_or(u64::MAX);
                    tokio::time::sleep(Duration::from_nanos(wait)).await;
                    // The beat after this one, or after the last that passed while the loop
                    // was busy (tokio wakes a little late: `now` is already past beat `next`).
                    let now = monotonic_ns();
                    next = first_beat(*EPOCH_NS, now, every.as_nanos(), 0).max(next + 1);
                    return Some(((), (source, next)));
                }
            }
        }
    })
}

/// Runs `f` on every beat of period `every`, the first at least `min_gap` from now.
pub(crate) fn run_on_beat<A, F>(
    ctx: &mut Context<A>,
    every: Duration,
    min_gap: Duration,
    mut f: F,
) -> SpawnHandle
where
    A: Actor<Context = Context<A>>,
    F: FnMut(&mut A, &mut Context<A>) + 'static,
{
    let ticks = actix::fut::wrap_stream::<_, A>(Box::pin(beats(every, min_gap)));
    ctx.spawn(ticks.map(move |(), act, ctx| f(act, ctx)).finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Instant;

    #[test]
    fn beats_are_multiples_of_the_period_from_the_epoch() {
        let ms = |n: u128| n * 1_000_000;
        let s = ms(1000);
        let epoch = ms(5_000);
        // At the epoch itself, with no gap: the epoch is a beat.
        assert_eq!(first_beat(epoch, epoch, s, 0), 0);
        // Between beats: the next one.
        assert_eq!(first_beat(epoch, epoch + ms(300), s, 0), 1);
        assert_eq!(first_beat(epoch, epoch + ms(2300), s, 0), 3);
        // A gap pushes past a beat that is too close.
        assert_eq!(first_beat(epoch, epoch + ms(900), s, ms(500)), 2);
        assert_eq!(first_beat(epoch, epoch + ms(400), s, ms(500)), 1);
        // Two periods where one divides the other meet on the longer one's beats.
        let now = epoch + ms(7_250);
        let five = first_beat(epoch, now, 5 * s, 0);
        assert_eq!(five, 2);
        assert_eq!(
            first_beat(epoch, epoch + five as u128 * 5 * s, s, 0) as u128 * s,
            five as u128 * 5 * s
        );
        // Sub-second periods too.
        assert_eq!(first_beat(epoch, epoch + ms(130), ms(250), 0), 1);
    }

    struct Ticker(Vec<Instant>);
    impl Actor for Ticker {
        type Context = Context<Self>;
    }
    struct Take;
    impl Message for Take {
        type Result = Vec<Instant>;
    }
    impl Handler<Take> for Ticker {
        type Result = MessageResult<Take>;
        fn handle(&mut self, _: Take, _: &mut Context<Self>) -> Self::Result {
            MessageResult(std::mem::take(&mut self.0))
        }
    }

    struct Quit;
    impl Message for Quit {
        type Result = ();
    }
    impl Handler<Quit> for Ticker {
        type Result = ();
        fn handle(&mut self, _: Quit, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }

    fn ticker(every: Duration) -> Addr<Ticker> {
        Ticker::create(move |ctx| {
            run_on_beat(ctx, every, Duration::ZERO, |act: &mut Ticker, _| {
                act.0.push(Instant::now())
            });
            Ticker(Vec::new())
        })
    }

    /// The distance from `t` to the nearest of `beats`.
    fn off_beat(t: Instant, beats: &[Instant]) -> Duration {
        beats
            .iter()
            .map(|x| if *x > t { *x - t } else { t - *x })
            .min()
            .unwrap()
    }

    #[actix_rt::test]
    async fn timers_on_the_beat_fire_together_from_one_timer() {
        let every = Duration::from_millis(40);
        let a = ticker(every);
        // Started later, at another phase: it still fires on the same beats.
        actix_rt::time::sleep(Duration::from_millis(13)).await;
        let b = ticker(every);
        // A period twice as long lands on every other beat of the first.
        let c = ticker(2 * every);
        // One timer per period on this loop, however many listen.
        assert_eq!(HUBS.with(|h| h.borrow().len()), 2);
        actix_rt::time::sleep(Duration::from_millis(400)).await;
        let ta = a.send(Take).await.unwrap();
        let tb = b.send(Take).await.unwrap();
        let tc = c.send(Take).await.unwrap();
        assert!(
            ta.len() >= 5 && tb.len() >= 5 && tc.len() >= 2,
            "{} {} {}",
            ta.len(),
            tb.len(),
            tc.len()
        );
        // Taken one after the other: a beat may pass between two takes.
        let last = *ta.last().unwrap();
        for t in tb.iter().chain(&tc).filter(|t| **t <= last) {
            let off = off_beat(*t, &ta);
            assert!(off < Duration::from_millis(5), "{off:?} off the beat");
        }
        // Firings of the longer period are every other beat, not every one.
        let gaps: Vec<Duration> = tc.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().all(|g| *g > every + every / 2),
            "the 80 ms ticker fired {gaps:?} apart"
        );
    }

    #[actix_rt::test]
    async fn a_timer_nobody_listens_to_stops() {
        let every = Duration::from_millis(20);
        let a = ticker(every);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        assert!(HUBS.with(|h| h.borrow().contains_key(&every)));
        assert!(!a.send(Take).await.unwrap().is_empty());
        a.send(Quit).await.unwrap(); // Its beat stream goes with it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while HUBS.with(|h| h.borrow().contains_key(&every)) {
            assert!(Instant::now() < deadline, "the hub outlived its listeners");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[actix_rt::test]
    async fn the_fallback_keeps_the_beat() {
        // tokio's timers, as used when no timerfd can be had, fire on the same beats.
        let every = Duration::from_millis(30);
        let next = first_beat(*EPOCH_NS, monotonic_ns(), every.as_nanos(), 0);
        let mut stream = Box::pin(beats_from(Source::Timer, every, next));
        let mut times = Vec::new();
        for _ in 0..3 {
            stream.next().await;
            times.push(monotonic_ns());
        }
        // One beat each, not every other one.
        for gap in times.windows(2).map(|w| w[1] - w[0]) {
            let every = every.as_nanos();
            assert!(gap > every / 2 && gap < every * 3 / 2, "{gap} ns apart");
        }
        for t in &times {
            let phase = (t - *EPOCH_NS) % every.as_nanos();
            let off = phase.min(every.as_nanos() - phase);
            assert!(off < 5_000_000, "{off} ns off the beat");
        }
    }
}
