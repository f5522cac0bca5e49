//! The dispatcher: one worker thread and one bounded queue per sink, retries with backoff, counters.
//!
//! The caller only ever `try_send`s, so a sink that hangs costs its own queue and nothing else.
//! Besides notices, a worker runs its sink's periodic work ([`Sink::tick`]): Alertmanager's
//! re-sends, and the escalation closes the Gas Town sink owes but could not do on the spot.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use super::Notice;
use super::alertmanager::Alertmanager;
use super::escalate::{Escalation, EscalationLedger};
use super::exec::ExecHook;
use super::webhook::Webhook;
use crate::config::outputs::NotifySettings;
use crate::util::{lock, panic_message};

pub use crate::report::SinkReport;

/// The longest `last_error` kept in a report: enough for a status line and a little output.
const LAST_ERROR_CHARS: usize = 1024;

/// A test of a notice, run by the caller before the notice takes a slot in a sink's queue.
pub(crate) type Filter = Box<dyn Fn(&Notice) -> bool + Send + Sync>;

/// A place notices go. Implementations do one attempt at a time; the worker retries.
pub(crate) trait Sink: Send + 'static {
    /// How reports and logs name it: `exec:/path/prog`, `webhook:URL`, `alertmanager:URL`,
    /// `escalate:prog`.
    fn name(&self) -> String;
    /// The longest one attempt may take.
    fn timeout(&self) -> Duration;
    /// One delivery attempt. A retry calls it again with the same notice, so it must be
    /// safe to repeat.
    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String>;
    /// Which notices are worth queueing, for sinks that ignore most (escalation): a notice it
    /// refuses is never queued nor counted. It runs on the caller's thread, so it can only look
    /// at the notice, never at the sink's state; `None` queues everything.
    fn filter(&self) -> Option<Filter> {
        None
    }
    /// Asked on the worker before delivering: true when the notice needs no attempt (it only
    /// updates the sink's state, or was dealt with before). A skipped notice counts as neither
    /// sent nor failed.
    fn skip(&mut self, _notice: &Notice) -> bool {
        false
    }
    /// True for sinks that keep per-alert state and want restored alerts: Alertmanager keeps
    /// them alive, escalation remembers them as escalated already.
    fn keeps_state(&self) -> bool {
        false
    }
    /// Takes in an alert that is already firing (read back at start) without telling anyone.
    fn restore(&mut self, _notice: &Notice) {}
    /// When [`Sink::tick`] is next wanted, if ever.
    fn next_due(&self) -> Option<Instant> {
        None
    }
    /// Periodic work, e.g. re-sending firing alerts. Must move `next_due` on even when it fails.
    /// `timeout` is all the time it may take, however many attempts it makes.
    fn tick(&mut self, _timeout: Duration) -> Result<(), String> {
        Ok(())
    }
    /// What [`Sink::tick`] delivered since last asked, for sinks whose ticks deliver things
    /// people count (the escalation sink's deferred closes); asked after every tick.
    fn take_tick_counts(&mut self) -> TickCounts {
        TickCounts::default()
    }
    /// Told once the worker has given up on a notice after every retry, so a sink that still
    /// owes something for it (a close) can try again later on its own.
    fn gave_up(&mut self, _notice: &Notice) {}
}

/// Deliveries made by a [`Sink::tick`], added to the sink's report like notices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TickCounts {
    /// Delivered.
    pub sent: u64,
    /// Given up on after every retry (they may still be tried later).
    pub failed: u64,
    /// Attempts after a failed one.
    pub retries: u64,
}

/// Queue size, retry backoff and Alertmanager resend timing; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Notices one sink may have waiting before new ones are dropped.
    pub queue_capacity: usize,
    /// Wait before the first retry; it doubles per retry.
    pub backoff_initial: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// How often firing alerts are re-sent to Alertmanager (they expire after four of these).
    pub resend_interval: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            queue_capacity: 1024,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            resend_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    fn set_error(&self, error: &str) {
        let text: String = error.chars().take(LAST_ERROR_CHARS).collect();
        *lock(&self.last_error) = Some(text);
    }
}

enum Job {
    Notice(Arc<Notice>),
    Restore(Arc<Notice>),
    Stop,
}

/// Shutdown state every worker sees.
struct Control {
    /// Set once by `shutdown`: no attempt runs past it.
    deadline: OnceLock<Instant>,
    /// Never sends; dropping it wakes every worker waiting out a backoff.
    wake_tx: Mutex<Option<Sender<()>>>,
    wake_rx: Receiver<()>,
}

impl Control {
    fn new() -> Self {
        let (tx, rx) = bounded(0);
        Control {
            deadline: OnceLock::new(),
            wake_tx: Mutex::new(Some(tx)),
            wake_rx: rx,
        }
    }

    /// How long the next attempt may take: the sink's timeout, cut to the shutdown deadline;
    /// `None` once that deadline has passed.
    fn budget(&self, timeout: Duration) -> Option<Duration> {
        match self.deadline.get() {
            None => Some(timeout),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| timeout.min(left))
            }
        }
    }

    /// Waits out a backoff. False when shutdown's deadline would pass first (give up now).
    fn wait(&self, backoff: Duration) -> bool {
        let until = Instant::now() + backoff;
        let fits = |until: Instant| self.deadline.get().is_none_or(|d| until <= *d);
        if !fits(until) {
            return false;
        }
        if let Err(RecvTimeoutError::Timeout) = self.wake_rx.recv_deadline(until) {
            return true;
        }
        // Woken by shutdown: finish the wait only if the retry still fits before its deadline.
        if !fits(until) {
            return false;
        }
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        true
    }
}

struct Handle {
    name: String,
    keeps_state: bool,
    /// The sink's [`Sink::filter`]: notices it refuses never reach the queue.
    filter: Option<Filter>,
    tx: Sender<Job>,
    stats: Arc<Stats>,
}

impl Handle {
    fn offer(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and then every power of two: a stuck sink must not flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(sink = %self.name, dropped = n, "notice queue full: notice dropped");
                }
            }
        }
    }
}

struct Inner {
    sinks: Vec<Handle>,
    control: Arc<Control>,
    /// Disconnects once every worker has exited (each holds a sender).
    done: Mutex<Option<Receiver<()>>>,
}

/// Hands notices to every configured sink without ever blocking the caller.
///
/// Cheap to clone; all clones share the same workers. A notifier with no sinks holds nothing
/// and does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    /// The workers, shared by every clone, so a config reload that replaces them
    /// ([`Notifier::replace`]) reaches every holder.
    slot: Arc<std::sync::RwLock<Option<Arc<Inner>>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner();
        let names: Vec<&str> = inner
            .iter()
            .flat_map(|i| i.sinks.iter().map(|h| h.name.as_str()))
            .collect();
        f.debug_struct("Notifier").field("sinks", &names).finish()
    }
}

impl Notifier {
    /// Starts one worker per configured sink, with the default timings. Escalations are kept in
    /// memory only: for callers without a database writer (tests, tools).
    pub fn spawn(settings: &NotifySettings) -> Notifier {
        Notifier::spawn_with(settings, EscalationLedger::default())
    }

    /// Starts one worker per configured sink, with the default timings; the Gas Town sink
    /// records its escalations through `ledger` and takes over the ones still open.
    pub(crate) fn spawn_with(settings: &NotifySettings, ledger: EscalationLedger) -> Notifier {
        Notifier::with_ledger(settings, Timings::default(), ledger)
    }

    /// Starts one worker per configured sink, with the given queue, backoff and resend timings.
    pub fn with_timings(settings: &NotifySettings, timings: Timings) -> Notifier {
        Notifier::with_ledger(settings, timings, EscalationLedger::default())
    }

    /// [`Notifier::with_timings`] with an escalation ledger (see [`Notifier::spawn_with`]).
    pub(crate) fn with_ledger(
        settings: &NotifySettings,
        timings: Timings,
        ledger: EscalationLedger,
    ) -> Notifier {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        for e in &settings.exec {
            sinks.push(Box::new(ExecHook::new(e.clone())));
        }
        for w in &settings.webhooks {
            sinks.push(Box::new(Webhook::new(w.clone())));
        }
        for a in &settings.alertmanagers {
            sinks.push(Box::new(Alertmanager::new(
                a.clone(),
                timings.resend_interval,
            )));
        }
        if let Some(e) = &settings.escalate {
            sinks.push(Box::new(Escalation::with_ledger(
                e.clone(),
                ledger,
                timings,
                settings.retries,
            )));
        }
        Notifier::from_sinks(sinks, settings.retries, timings)
    }

    /// Starts a worker for each sink given; `retries` attempts follow a failed one.
    pub(crate) fn from_sinks(
        sinks: Vec<Box<dyn Sink>>,
        retries: u32,
        timings: Timings,
    ) -> Notifier {
        if sinks.is_empty() {
            return Notifier::default();
        }
        let control = Arc::new(Control::new());
        let (done_tx, done_rx) = bounded::<()>(0);
        let mut handles = Vec::with_capacity(sinks.len());
        for (i, sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = bounded(timings.queue_capacity.max(1));
            let stats = Arc::new(Stats::default());
            let name = sink.name();
            let keeps_state = sink.keeps_state();
            let filter = sink.filter();
            let worker = Worker {
                sink,
                name: name.clone(),
                stats: stats.clone(),
                control: control.clone(),
                timings,
                retries,
                _done: done_tx.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("notify-{i}"))
                .spawn(move || worker.run(rx));
            if let Err(e) = spawned {
                // Its receiver is gone with the closure: every notice for it counts as dropped.
                tracing::error!(sink = %name, error = %e, "cannot start the notification worker");
            }
            handles.push(Handle {
                keeps_state,
                filter,
                name,
                tx,
                stats,
            });
        }
        Notifier {
            slot: Arc::new(std::sync::RwLock::new(Some(Arc::new(Inner {
                sinks: handles,
                control,
                done: Mutex::new(Some(done_rx)),
            })))),
        }
    }

    /// The workers now.
    fn inner(&self) -> Option<Arc<Inner>> {
        match self.slot.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts the sinks of `other` in place of these, for every clone (a config reload); the old
    /// workers get `deadline` for their queued notices, on a thread of their own.
    pub fn replace(&self, other: Notifier, deadline: Duration) {
        let new = other.inner();
        let old = {
            let mut slot = match self.slot.write() {
                Ok(slot) => slot,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *slot, new)
        };
        if let Some(old) = old {
            let retired = Notifier {
                slot: Arc::new(std::sync::RwLock::new(Some(old))),
            };
            let _ = std::thread::Builder::new()
                .name("notify-retire".into())
                .spawn(move || retired.shutdown(deadline));
        }
    }

    /// True when no sink is configured: callers may skip building notices.
    pub fn is_empty(&self) -> bool {
        self.inner().is_none()
    }

    /// Queues a notice for every sink. Never blocks: a full queue drops the notice for that
    /// sink and counts it.
    pub fn notify(&self, notice: &Notice) {
        let Some(inner) = self.inner() else {
            return;
        };
        let shared = Arc::new(notice.clone());
        for h in &inner.sinks {
            if h.filter.as_ref().is_none_or(|wanted| wanted(notice)) {
                h.offer(Job::Notice(shared.clone()));
            }
        }
    }

    /// Tells the sinks that keep state (Alertmanager) about an alert that is already firing,
    /// e.g. one read back from the database at start, so they keep it alive without a new
    /// notice reaching exec hooks or webhooks. Never blocks.
    pub(crate) fn restore(&self, notice: &Notice) {
        let Some(inner) = self.inner() else {
            return;
        };
        let shared = Arc::new(notice.clone());
        for h in inner.sinks.iter().filter(|h| h.keeps_state) {
            h.offer(Job::Restore(shared.clone()));
        }
    }

    /// Counters for every sink, in configuration order (exec, webhook, alertmanager, escalate).
    pub fn report(&self) -> Vec<SinkReport> {
        let Some(inner) = self.inner() else {
            return Vec::new();
        };
        inner
            .sinks
            .iter()
            .map(|h| SinkReport {
                sink: h.name.clone(),
                sent: h.stats.sent.load(Ordering::Relaxed),
                failed: h.stats.failed.load(Ordering::Relaxed),
                retries: h.stats.retries.load(Ordering::Relaxed),
                dropped: h.stats.dropped.load(Ordering::Relaxed),
                queued: h.tx.len(),
                last_error: lock(&h.stats.last_error).clone(),
            })
            .collect()
    }

    /// Lets queued notices go out for at most `deadline`, then returns. Attempts are cut short
    /// at the deadline and no retry starts that would end past it. Later notices are dropped.
    pub fn shutdown(&self, deadline: Duration) {
        let Some(inner) = self.inner() else {
            return;
        };
        let until = Instant::now() + deadline;
        let _ = inner.control.deadline.set(until);
        lock(&inner.control.wake_tx).take();
        for h in &inner.sinks {
            // Behind the queued notices, so they go first.
            let _ = h.tx.send_deadline(Job::Stop, until);
        }
        let done = lock(&inner.done).take();
        let Some(done) = done else {
            return; // Another shutdown is (or was) waiting.
        };
        if let Err(RecvTimeoutError::Timeout) = done.recv_deadline(until) {
            let busy: Vec<&str> = inner
                .sinks
                .iter()
                .filter(|h| !h.tx.is_empty())
                .map(|h| h.name.as_str())
                .collect();
            tracing::warn!(
                ?busy,
                "notification sinks still busy at the shutdown deadline; leaving them"
            );
        }
    }
}

struct Worker {
    sink: Box<dyn Sink>,
    name: String,
    stats: Arc<Stats>,
    control: Arc<Control>,
    timings: Timings,
    retries: u32,
    /// Dropped when the worker ends, however it ends: `shutdown` waits for all of these.
    _done: Sender<()>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        loop {
            let job = match self.sink.next_due() {
                Some(due) => match rx.recv_deadline(due) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.control.budget(self.sink.timeout()).is_none() {
                            // Past the shutdown deadline: nothing may be sent any more, and a
                            // due tick that cannot run would spin.
                            break;
                        }
                        self.tick();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            match job {
                Job::Notice(notice) => {
                    if !self.skips(&notice) {
                        self.deliver(&notice);
                    }
                }
                Job::Restore(notice) => {
                    let sink = &mut self.sink;
                    if let Err(e) = guarded(|| {
                        sink.restore(&notice);
                        Ok(())
                    }) {
                        self.stats.set_error(&e);
                        tracing::warn!(sink = %self.name, error = %e, "restoring an alert failed");
                    }
                }
                Job::Stop => {
                    self.final_tick();
                    break;
                }
            }
        }
    }

    /// Runs a tick that is due before the worker stops: queued notices go out at shutdown, and
    /// so does due periodic work (closes owed to Gas Town), if the deadline allows.
    fn final_tick(&mut self) {
        let due = self
            .sink
            .next_due()
            .is_some_and(|due| due <= Instant::now());
        if due && self.control.budget(self.sink.timeout()).is_some() {
            self.tick();
        }
    }

    /// The sink's [`Sink::skip`]; a panic there means "deliver", where it is counted.
    fn skips(&mut self, notice: &Notice) -> bool {
        let sink = &mut self.sink;
        let skipped = catch_unwind(AssertUnwindSafe(|| sink.skip(notice))).unwrap_or(false);
        if skipped {
            tracing::debug!(
                sink = %self.name,
                alert = %notice.key(),
                state = notice.state.as_str(),
                "notice needs no delivery"
            );
        }
        skipped
    }

    fn tick(&mut self) {
        let budget = self
            .control
            .budget(self.sink.timeout())
            .unwrap_or(Duration::ZERO);
        let sink = &mut self.sink;
        let result = guarded(|| sink.tick(budget));
        let counts = catch_unwind(AssertUnwindSafe(|| sink.take_tick_counts())).unwrap_or_default();
        self.stats.sent.fetch_add(counts.sent, Ordering::Relaxed);
        self.stats
            .failed
            .fetch_add(counts.failed, Ordering::Relaxed);
        self.stats
            .retries
            .fetch_add(counts.retries, Ordering::Relaxed);
        if let Err(e) = result {
            self.stats.set_error(&e);
            tracing::warn!(sink = %self.name, error = %e, "periodic delivery failed");
        }
    }

    /// Delivers one notice: an attempt, then up to `retries` more with doubling backoff.
    fn deliver(&mut self, notice: &Notice) {
        let mut backoff = self.timings.backoff_initial;
        let mut attempt: u32 = 1;
        loop {
            let result = match self.control.budget(self.sink.timeout()) {
                None => Err("not sent: the shutdown deadline passed".to_string()),
                Some(budget) => {
                    let sink = &mut self.sink;
                    guarded(|| sink.send(notice, budget))
                }
            };
            let error = match result {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        sink = %self.name,
                        alert = %notice.key(),
                        state = notice.state.as_str(),
                        attempt,
                        "notice sent"
                    );
                    return;
                }
                Err(e) => e,
            };
            self.stats.set_error(&error);
            let give_up =
                attempt > self.retries || !self.wait_to_retry(notice, attempt, &error, backoff);
            if give_up {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    sink = %self.name,
                    alert = %notice.key(),
                    state = notice.state.as_str(),
                    attempts = attempt,
                    error = %error,
                    "giving up on a notice"
                );
                let sink = &mut self.sink;
                let _ = catch_unwind(AssertUnwindSafe(|| sink.gave_up(notice)));
                return;
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            backoff = (backoff * 2).min(self.timings.backoff_max);
        }
    }

    /// Logs a failed attempt and waits before the next; false when shutdown forbids the wait.
    fn wait_to_retry(&self, notice: &Notice, attempt: u32, error: &str, backoff: Duration) -> bool {
        tracing::warn!(
            sink = %self.name,
            alert = %notice.key(),
            state = notice.state.as_str(),
            attempt,
            error = %error,
            "notification attempt failed; retrying in {backoff:?}"
        );
        self.control.wait(backoff)
    }
}

/// Runs one attempt, turning a panic into an error so the worker lives on.
fn guarded(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(format!("panicked: {}", panic_message(&*payload))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::NoticeState;
    use super::super::testutil::{notice, wait_until};
    use super::*;

    fn quick() -> Timings {
        Timings {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Timings::default()
        }
    }

    /// Blocks in `send` until the gate is opened (its sender dropped).
    struct Gated {
        started: Sender<()>,
        gate: Receiver<()>,
    }

    impl Sink for Gated {
        fn name(&self) -> String {
            "gated".into()
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(60)
        }
        fn send(&mut self, _: &Notice, _: Duration) -> Result<(), String> {
            let _ = self.started.send(());
            let _ = self.gate.recv();
            Ok(())
        }
    }

    /// Panics on its first attempt, then records what it is sent.
    struct PanicsOnce {
        calls: u32,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for PanicsOnce {
        fn name(&self) -> String {
            "panicky".into()
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn send(&mut self, notice: &Notice, _: Duration) -> Result<(), String> {
            self.calls += 1;
            if self.calls == 1 {
                panic!("boom");
            }
            self.seen.lock().unwrap().push(notice.message.clone());
            Ok(())
        }
    }

    /// Takes a while per notice, like a slow hook, and records what it finished.
    struct Slow {
        done: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Slow {
        fn name(&self) -> String {
            "slow".into()
        }
        fn timeout(&self) -> Duration {
            Duration::from_secs(5)
        }
        fn send(&mut self, notice: &Notice, _: Duration) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(100));
            self.done.lock().unwrap().push(notice.message.clone());
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (started_tx, started) = bounded(8);
        let (open, gate) = bounded::<()>(0);
        let timings = Timings {
            queue_capacity: 2,
            ..quick()
        };
        let sink = Gated {
            started: started_tx,
            gate,
        };
        let notifier = Notifier::from_sinks(vec![Box::new(sink)], 0, timings);
        let n = notice(NoticeState::Firing, "m");
        notifier.notify(&n);
        started.recv_timeout(Duration::from_secs(5)).unwrap(); // the worker holds #1
        let begun = Instant::now();
        for _ in 0..3 {
            notifier.notify(&n); // #2 and #3 wait in the queue, #4 finds it full
        }
        assert!(
            begun.elapsed() < Duration::from_millis(500),
            "{:?}",
            begun.elapsed()
        );
        let r = &notifier.report()[0];
        assert_eq!((r.dropped, r.queued, r.sent), (1, 2, 0));
        drop(open);
        assert!(wait_until(Duration::from_secs(5), || notifier.report()[0]
            .sent
            == 3));
        notifier.shutdown(Duration::from_secs(1));
        // After shutdown the worker is gone: later notices are counted, not lost silently.
        notifier.notify(&n);
        assert_eq!(notifier.report()[0].dropped, 2);
    }

    #[test]
    fn a_panicking_delivery_counts_as_a_failed_attempt_and_the_worker_lives_on() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = PanicsOnce {
            calls: 0,
            seen: seen.clone(),
        };
        let notifier = Notifier::from_sinks(vec![Box::new(sink)], 1, quick());
        notifier.notify(&notice(NoticeState::Firing, "first"));
        notifier.notify(&notice(NoticeState::Resolved, "second"));
        assert!(wait_until(Duration::from_secs(5), || notifier.report()[0]
            .sent
            == 2));
        let r = &notifier.report()[0];
        assert_eq!((r.sent, r.failed, r.retries), (2, 0, 1));
        assert_eq!(r.last_error.as_deref(), Some("panicked: boom"));
        assert_eq!(*seen.lock().unwrap(), ["first", "second"]);
        notifier.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn shutdown_lets_queued_notices_finish() {
        let done = Arc::new(Mutex::new(Vec::new()));
        let notifier =
            Notifier::from_sinks(vec![Box::new(Slow { done: done.clone() })], 0, quick());
        for m in ["a", "b", "resolved just before exit"] {
            notifier.notify(&notice(NoticeState::Resolved, m));
        }
        notifier.shutdown(Duration::from_secs(10));
        assert_eq!(
            *done.lock().unwrap(),
            ["a", "b", "resolved just before exit"]
        );
        assert_eq!(notifier.report()[0].sent, 3);
    }

    #[test]
    fn a_retry_that_would_end_past_the_shutdown_deadline_is_given_up() {
        /// Always fails.
        struct Broken;
        impl Sink for Broken {
            fn name(&self) -> String {
                "broken".into()
            }
            fn timeout(&self) -> Duration {
                Duration::from_secs(1)
            }
            fn send(&mut self, _: &Notice, _: Duration) -> Result<(), String> {
                Err("no".into())
            }
        }
        let timings = Timings {
            backoff_initial: Duration::from_secs(30),
            ..Timings::default()
        };
        let notifier = Notifier::from_sinks(vec![Box::new(Broken)], 5, timings);
        notifier.notify(&notice(NoticeState::Firing, "m"));
        // The worker is now waiting 30 s to retry; shutdown must not wait for that.
        assert!(wait_until(Duration::from_secs(5), || notifier.report()[0]
            .last_error
            .is_some()));
        let begun = Instant::now();
        notifier.shutdown(Duration::from_secs(2));
        assert!(
            begun.elapsed() < Duration::from_secs(1),
            "{:?}",
            begun.elapsed()
        );
        let r = &notifier.report()[0];
        assert_eq!((r.failed, r.retries), (1, 0));
    }

    #[test]
    fn a_notifier_without_sinks_is_inert() {
        let notifier = Notifier::spawn(&NotifySettings::default());
        assert!(notifier.is_empty());
        notifier.notify(&notice(NoticeState::Firing, "m"));
        notifier.restore(&notice(NoticeState::Firing, "m"));
        assert!(notifier.report().is_empty());
        notifier.shutdown(Duration::from_secs(1));
    }
}
