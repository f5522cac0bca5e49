//! One beat for every periodic timer of the daemon, so that a cycle's work happens in one burst.
//!
//! Every wake-up from idle costs CPU, and on a virtual machine a lot of it: measured on this
//! project's 2-vCPU VM, a thread waking after 0.5 s asleep was charged about 0.8 ms, after
//! 50 ms about 0.2 ms. Timers at scattered phases (each collector's own start time, the
//! analyzer's and the supervisor's housekeeping) each pay that; timers on one beat share a
//! single wake-up of the event loop.

use std::sync::LazyLock;
use std::time::Duration;

use actix::prelude::*;
use actix::utils::IntervalFunc;
use tokio::time::Instant;

/// The instant every beat counts from: the first time anything asks.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The first beat of period `every` (counted from `epoch`) at least `min_gap` after `now`.
pub fn next_beat(epoch: Instant, now: Instant, every: Duration, min_gap: Duration) -> Instant {
    let every_ns = every.as_nanos().max(1);
    let earliest = now + min_gap;
    let since = earliest.saturating_duration_since(epoch).as_nanos();
    let beats = since.div_ceil(every_ns);
    // Saturates rather than overflows for absurd periods; the timer then simply never fires.
    let offset = u64::try_from(beats * every_ns).unwrap_or(u64::MAX);
    epoch + Duration::from_nanos(offset)
}

/// Runs `f` every `every`, on the daemon's beat: first at the next beat at least `min_gap`
/// from now, then every period after it (deadline to deadline, so it never drifts off).
pub fn run_on_beat<A, F>(
    ctx: &mut Context<A>,
    every: Duration,
    min_gap: Duration,
    f: F,
) -> SpawnHandle
where
    A: Actor<Context = Context<A>>,
    F: FnMut(&mut A, &mut Context<A>) + 'static,
{
    let start = next_beat(*EPOCH, Instant::now(), every, min_gap);
    ctx.spawn(IntervalFunc::new_at(start, every, f).finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_multiples_of_the_period_from_the_epoch() {
        let epoch = Instant::now();
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // At the epoch itself, with no gap: the epoch is a beat.
        assert_eq!(next_beat(epoch, epoch, s, Duration::ZERO), epoch);
        // Between beats: the next one.
        assert_eq!(
            next_beat(epoch, epoch + ms(300), s, Duration::ZERO),
            epoch + s
        );
        assert_eq!(
            next_beat(epoch, epoch + ms(2300), s, Duration::ZERO),
            epoch + 3 * s
        );
        // A gap pushes past a beat that is too close.
        assert_eq!(next_beat(epoch, epoch + ms(900), s, ms(500)), epoch + 2 * s);
        assert_eq!(next_beat(epoch, epoch + ms(400), s, ms(500)), epoch + s);
        // Two periods where one divides the other meet on the longer one's beats.
        let now = epoch + ms(7_250);
        let five = next_beat(epoch, now, 5 * s, Duration::ZERO);
        assert_eq!(five, epoch + 10 * s);
        assert_eq!(next_beat(epoch, five, s, Duration::ZERO), five);
        // Sub-second periods too.
        assert_eq!(
            next_beat(epoch, epoch + ms(130), ms(250), Duration::ZERO),
            epoch + ms(250)
        );
    }

    #[actix_rt::test]
    async fn timers_on_the_beat_fire_together() {
        struct Ticker(Vec<Instant>);
        impl Actor for Ticker {
            type Context = Context<Self>;
        }
        let every = Duration::from_millis(40);
        let a = Ticker::create(|ctx| {
            run_on_beat(ctx, every, Duration::ZERO, |act: &mut Ticker, _| {
                act.0.push(Instant::now())
            });
            Ticker(Vec::new())
        });
        // Started later, at another phase: it still fires on the same beats.
        actix_rt::time::sleep(Duration::from_millis(13)).await;
        let b = Ticker::create(|ctx| {
            run_on_beat(ctx, every, Duration::ZERO, |act: &mut Ticker, _| {
                act.0.push(Instant::now())
            });
            Ticker(Vec::new())
        });
        actix_rt::time::sleep(Duration::from_millis(300)).await;
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
        let ta = a.send(Take).await.unwrap();
        let tb = b.send(Take).await.unwrap();
        assert!(ta.len() >= 3 && tb.len() >= 3, "{} {}", ta.len(), tb.len());
        // Every firing of b is within a timer tick of one of a's: the same beat.
        for t in &tb {
            let nearest = ta
                .iter()
                .map(|x| if x > t { *x - *t } else { *t - *x })
                .min()
                .unwrap();
            assert!(
                nearest < Duration::from_millis(5),
                "{nearest:?} off the beat"
            );
        }
    }
}
