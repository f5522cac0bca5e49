//! The threads probes run on, off the event loop, and the way their results get back to it:
//! a cycle's burst of measurements costs a few thread wake-ups, not a few per probe.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// What a finished job leaves to do: hand its result over (a oneshot send, say).
pub(crate) type Delivery = Box<dyn FnOnce() + Send>;

/// A measurement: it runs on a runner thread and returns the delivery of its result.
pub(crate) type Job = Box<dyn FnOnce() -> Delivery + Send>;

/// A job running this long no longer counts against [`ProbeRunner`]'s parallelism: probes that
/// wait by design (a slow directory walk, a database check) or hang (a dead mount) get more
/// threads started beside them, so they never hold up the others.
pub(crate) const RUNNER_STUCK_AFTER: Duration = Duration::from_millis(50);
/// A job whose last run took less than this is expected to be quick (see [`ProbeRunner::submit`]):
/// holding a burst's results for it delays them by about as much.
pub(crate) const QUICK_JOB: Duration = Duration::from_millis(10);
/// The longest wait between two checks that a job still out is not stuck behind another.
pub(crate) const MAX_PROGRESS_CHECK: Duration = Duration::from_secs(5);
/// Queued jobs one thread on its way takes before another is woken for them.
const JOBS_PER_THREAD: usize = 16;
/// An idle runner thread exits after this long without work.
const RUNNER_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// Where a job's delivery runs.
#[derive(Clone)]
pub(crate) enum Destination {
    /// On the runner thread itself.
    InPlace,
    /// On an event loop, handed over in batches: one wake-up of the loop per batch.
    EventLoop(EventLoopInbox),
}

/// An event loop's inbox for deliveries, and the thread that loop runs on.
#[derive(Clone)]
pub(crate) struct EventLoopInbox {
    tx: UnboundedSender<Vec<Delivery>>,
    thread: ThreadId,
}

thread_local! {
    /// This thread's event-loop inbox, once a collector on it has asked for one.
    static INBOX: RefCell<Option<EventLoopInbox>> = const { RefCell::new(None) };
    /// Runners (by address) a kick is already scheduled for at the end of this loop's turn.
    static KICKS: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// A scheduled kick: forgotten when it has run, or when its loop drops it unrun (a test's
/// system ending), so a later loop on the thread schedules its own.
struct KickPending(usize);

impl Drop for KickPending {
    fn drop(&mut self) {
        let _ = KICKS.try_with(|k| k.borrow_mut().retain(|r| *r != self.0));
    }
}

impl Destination {
    /// The event loop of the calling thread (which must run one, as an actor's does): a task
    /// on it runs each batch of deliveries as it arrives.
    pub(crate) fn this_event_loop() -> Destination {
        INBOX.with(|inbox| {
            let mut inbox = inbox.borrow_mut();
            // A loop that has ended (a test's system, say) closed its inbox: start another.
            if inbox.as_ref().is_none_or(|i| i.tx.is_closed()) {
                let (tx, mut rx) = unbounded_channel::<Vec<Delivery>>();
                actix_rt::spawn(async move {
                    while let Some(batch) = rx.recv().await {
                        for delivery in batch {
                            delivery();
                        }
                    }
                });
                *inbox = Some(EventLoopInbox {
                    tx,
                    thread: std::thread::current().id(),
                });
            }
            Destination::EventLoop(inbox.clone().expect("just set"))
        })
    }

    /// True when this is the event loop the calling code runs on.
    fn is_this_event_loop(&self) -> bool {
        matches!(self, Destination::EventLoop(i) if i.thread == std::thread::current().id())
    }

    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::InPlace, Destination::InPlace) => true,
            (Destination::EventLoop(a), Destination::EventLoop(b)) => a.tx.same_channel(&b.tx),
            _ => false,
        }
    }
}

/// Hands deliveries over, one batch per destination.
fn deliver(finished: Vec<(Destination, Delivery)>) {
    let mut batches: Vec<(Destination, Vec<Delivery>)> = Vec::new();
    for (to, delivery) in finished {
        match batches.iter_mut().find(|(d, _)| d.same(&to)) {
            Some((_, batch)) => batch.push(delivery),
            None => batches.push((to, vec![delivery])),
        }
    }
    for (to, batch) in batches {
        match to {
            Destination::InPlace => batch.into_iter().for_each(|d| d()),
            Destination::EventLoop(inbox) => {
                if let Err(returned) = inbox.tx.send(batch) {
                    // The loop is gone; so is whoever waited. Dropping would do as well, but
                    // running them keeps "every delivery runs once" true.
                    returned.0.into_iter().for_each(|d| d());
                }
            }
        }
    }
}

/// Runs probes off the event loop, on few threads. Every collector ticks on the same beat, so
/// a cycle hands the runner a burst of short probes: the loop queues them all before a thread
/// is woken, its threads take them one after the other from one queue, as many at once as the
/// machine has CPUs, and hold their results back until the burst is done, so a cycle wakes one
/// runner thread and the event loop once (a hand-off between threads costs about as much as a
/// small probe on a 2-CPU VM, and a wake-up from idle far more: see `cadence`). Probes that
/// block are covered by [`RUNNER_STUCK_AFTER`]: parallelism is bounded only among probes that
/// are quick, and results are held only behind a job expected to be quick.
pub(crate) struct ProbeRunner {
    state: Mutex<RunnerState>,
    work: Condvar,
    /// Threads running quick probes at once.
    parallelism: usize,
}

/// A job waiting for a thread.
struct Queued {
    job: Job,
    to: Destination,
    /// Expected to be short: results held for the end of the burst may wait for it.
    quick: bool,
}

#[derive(Default)]
struct RunnerState {
    queue: VecDeque<Queued>,
    /// Deliveries held back while the queue has work; only ever non-empty while it has (the
    /// thread that takes the last job hands them over first), so a job that hangs holds up
    /// no result but its own.
    finished: Vec<(Destination, Delivery)>,
    /// When each thread's current job began; `None` while it waits for work.
    busy: HashMap<u64, Option<Instant>>,
    /// Waiting threads signalled to take work that have not woken yet.
    signalled: usize,
    next_id: u64,
}

impl RunnerState {
    fn idle(&self) -> usize {
        self.busy.values().filter(|b| b.is_none()).count()
    }

    /// Threads busy with a job that is not (yet) taking long.
    fn quick(&self) -> usize {
        self.busy
            .values()
            .filter(|b| b.is_some_and(|t| t.elapsed() < RUNNER_STUCK_AFTER))
            .count()
    }
}

/// Which waiting runner threads a change to the queue should wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    None,
    One,
}

impl Wake {
    fn notify(self, work: &Condvar) {
        match self {
            Wake::None => {}
            Wake::One => work.notify_one(),
        }
    }
}

/// The daemon's runner.
static RUNNER: LazyLock<Arc<ProbeRunner>> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Arc::new(ProbeRunner::new(cpus.max(2)))
});

impl ProbeRunner {
    /// A runner keeping at most `parallelism` quick jobs running at once.
    pub fn new(parallelism: usize) -> Self {
        ProbeRunner {
            state: Mutex::new(RunnerState::default()),
            work: Condvar::new(),
            parallelism: parallelism.max(1),
        }
    }

    /// The process's runner, shared by every collector.
    pub fn shared() -> Arc<ProbeRunner> {
        RUNNER.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RunnerState> {
        // Jobs run outside the lock and catch their panics: a poisoned lock is still consistent.
        crate::util::lock(&self.state)
    }

    /// Queues `job`, whose delivery runs at `to`; `quick` says the caller expects it to be
    /// short (its last run was), so the burst's other results may wait for it. The caller
    /// waits for the result with [`wait_for`](Self::wait_for), which keeps the queue moving
    /// when a job hangs.
    ///
    /// Submitted from the event loop its results go to, a small burst is only queued: a thread
    /// is woken once, when the loop's turn ends (every collector on the beat ticks in the same
    /// turn), so the whole burst costs one wake-up of one runner thread and one of the loop.
    pub fn submit(self: &Arc<Self>, job: Job, to: Destination, quick: bool) {
        let defer = to.is_this_event_loop();
        let mut state = self.lock();
        state.queue.push_back(Queued { job, to, quick });
        let wake = if defer && state.queue.len() < JOBS_PER_THREAD {
            Wake::None
        } else {
            self.make_progress(&mut state)
        };
        drop(state);
        // Woken after the lock is released, so the thread does not wake only to wait for it.
        wake.notify(&self.work);
        if defer {
            self.kick_at_end_of_turn();
        }
    }

    /// Waits for the result of a submitted job, and while it has not come makes sure the
    /// queue moves ([`ensure_progress`](Self::ensure_progress)) after [`RUNNER_STUCK_AFTER`],
    /// then at doubling intervals up to [`MAX_PROGRESS_CHECK`]: a job that hangs (its own or
    /// one it is queued or held behind) costs a few wake-ups, never a result stuck for good.
    /// A result that comes in time drops the timer unfired: a cycle costs no extra wake-up.
    pub(crate) async fn wait_for<T>(
        self: &Arc<Self>,
        result: tokio::sync::oneshot::Receiver<T>,
    ) -> Result<T, tokio::sync::oneshot::error::RecvError> {
        tokio::pin!(result);
        let mut check_after = RUNNER_STUCK_AFTER;
        loop {
            match tokio::time::timeout(check_after, &mut result).await {
                Ok(outcome) => return outcome,
                Err(_elapsed) => {
                    self.ensure_progress();
                    check_after = (check_after * 2).min(MAX_PROGRESS_CHECK);
                }
            }
        }
    }

    /// Schedules [`ensure_progress`](Self::ensure_progress) behind the tasks already woken on
    /// this event loop (once per turn): they are the rest of the beat's collectors.
    fn kick_at_end_of_turn(self: &Arc<Self>) {
        let key = Arc::as_ptr(self) as usize;
        let scheduled = KICKS.with(|k| {
            let mut k = k.borrow_mut();
            if k.contains(&key) {
                return true;
            }
            k.push(key);
            false
        });
        if scheduled {
            return;
        }
        let pending = KickPending(key);
        let runner = Arc::clone(self);
        actix_rt::spawn(async move {
            // Forgotten first: a job submitted from here on schedules the next kick.
            drop(pending);
            runner.ensure_progress();
        });
    }

    /// Makes sure queued jobs get a thread: an idle one, or a new one while fewer than
    /// `parallelism` run quick jobs. Called at the end of a submitting turn and again by
    /// [`wait_for`](Self::wait_for) while a result has not come.
    pub(crate) fn ensure_progress(self: &Arc<Self>) {
        let mut state = self.lock();
        let wake = self.make_progress(&mut state);
        // Results held for a last job that was expected to be quick and is now stuck: they go
        // now instead of waiting for it (or for the next burst).
        let held = if state.queue.is_empty() && state.busy.len() > state.idle() + state.quick() {
            std::mem::take(&mut state.finished)
        } else {
            Vec::new()
        };
        drop(state);
        wake.notify(&self.work);
        deliver(held);
    }

    /// Wakes or starts a thread if the queue needs one more; returns which to wake. A thread
    /// that is on its way (running a quick job, or signalled) takes up to [`JOBS_PER_THREAD`]
    /// queued jobs before another is woken: a small burst costs one wake-up, not one per CPU
    /// (each wake-up from idle is charged dearly on a VM, see `cadence`).
    fn make_progress(self: &Arc<Self>, state: &mut RunnerState) -> Wake {
        if state.queue.is_empty() {
            return Wake::None;
        }
        // Only idle threads can be signalled; this keeps any drift from stranding the queue.
        state.signalled = state.signalled.min(state.idle());
        let coming = state.quick() + state.signalled;
        if coming * JOBS_PER_THREAD >= state.queue.len() {
            return Wake::None;
        }
        if state.idle() > state.signalled {
            state.signalled += 1;
            return Wake::One;
        }
        if coming >= self.parallelism {
            return Wake::None; // Enough threads are on it; the queue drains as they finish.
        }
        let id = state.next_id;
        let runner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("probe-runner".into())
            .spawn(move || runner.run(id));
        match spawned {
            Ok(_) => {
                state.next_id += 1;
                // On its way to the queue, like a thread running a quick job.
                state.busy.insert(id, Some(Instant::now()));
            }
            // Queued jobs wait for a thread that exists; the next submit tries again.
            Err(e) => tracing::error!("cannot start a probe runner thread: {e}"),
        }
        Wake::None
    }

    /// A runner thread: takes jobs until none has come for [`RUNNER_KEEP_ALIVE`].
    fn run(&self, id: u64) {
        let mut state = self.lock();
        loop {
            if let Some(Queued { job, to, quick }) = state.queue.pop_front() {
                // The last job of a burst: what the others finished goes now, not after it,
                // unless it is expected to be quick (then one hand-over carries them all).
                let held = if state.queue.is_empty() && !quick {
                    std::mem::take(&mut state.finished)
                } else {
                    Vec::new()
                };
                state.busy.insert(id, Some(Instant::now()));
                drop(state);
                deliver(held);
                let delivery = job();
                state = self.lock();
                // Still marked busy: only a thread waiting on the condition variable is idle,
                // or a signal meant for an idle thread could be lost while this one delivers.
                state.finished.push((to, delivery));
                if state.queue.is_empty() {
                    let held = std::mem::take(&mut state.finished);
                    drop(state);
                    deliver(held);
                    state = self.lock();
                }
                continue;
            }
            state.busy.insert(id, None);
            let (guard, timeout) = self
                .work
                .wait_timeout(state, RUNNER_KEEP_ALIVE)
                .unwrap_or_else(|e| e.into_inner());
            state = guard;
            // Woken, spuriously, or timed out as a signal came: counted off in every case.
            // Counting too few only costs a wake-up; counting too many would leave a short
            // queue waiting for a thread nobody wakes.
            state.signalled = state.signalled.saturating_sub(1);
            state.busy.insert(id, Some(Instant::now()));
            if timeout.timed_out() && state.queue.is_empty() {
                state.busy.remove(&id);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A job that sends `i` to `done` when its result is delivered.
    fn job(i: u32, done: &mpsc::Sender<u32>) -> Job {
        let done = done.clone();
        Box::new(move || -> Delivery {
            Box::new(move || {
                let _ = done.send(i);
            })
        })
    }

    #[test]
    fn a_stuck_job_does_not_hold_up_the_queue_and_threads_stay_few() {
        let runner = Arc::new(ProbeRunner::new(1));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        let stuck: Job = Box::new(move || -> Delivery {
            let _ = release_rx.recv(); // Stuck until released.
            Box::new(|| {})
        });
        runner.submit(stuck, Destination::InPlace, false);
        for i in 0..20 {
            runner.submit(job(i, &done_tx), Destination::InPlace, false);
        }
        // Behind the stuck job with a parallelism of 1: nothing runs until the stuck one has
        // run for RUNNER_STUCK_AFTER and someone checks.
        std::thread::sleep(RUNNER_STUCK_AFTER + Duration::from_millis(20));
        runner.ensure_progress();
        let got: Vec<u32> = (0..20)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>(), "in order, all of them");
        assert_eq!(runner.lock().busy.len(), 2, "the stuck thread and one more");
        release_tx.send(()).unwrap();
        // Quick jobs reuse the idle threads.
        for i in 0..20 {
            runner.submit(job(i, &done_tx), Destination::InPlace, false);
        }
        for _ in 0..20 {
            done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(runner.lock().busy.len(), 2);
    }

    #[test]
    fn results_wait_for_the_end_of_the_burst_but_never_behind_a_job_that_hangs() {
        let runner = Arc::new(ProbeRunner::new(1));
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        // A burst: a job that waits for a gate, then three quick ones, then one that hangs
        // until released. While the gate is shut everything queues behind the first job.
        let gated: Job = Box::new(move || -> Delivery {
            let _ = gate_rx.recv();
            Box::new(|| {})
        });
        runner.submit(gated, Destination::InPlace, false);
        for i in 0..3 {
            runner.submit(job(i, &done_tx), Destination::InPlace, false);
        }
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let hangs: Job = Box::new(move || -> Delivery {
            let _ = release_rx.recv();
            Box::new(|| {})
        });
        runner.submit(hangs, Destination::InPlace, false);
        gate_tx.send(()).unwrap();
        // The three results are held while jobs are queued, and handed over by the thread
        // that takes the last job (the hanging one) before it starts it.
        let got: Vec<u32> = (0..3)
            .map(|_| done_rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(runner.lock().finished.is_empty());
        release_tx.send(()).unwrap();
    }

    #[test]
    fn single_jobs_submitted_one_after_another_all_run() {
        // One collector's worth of work, cycle after cycle: each job is alone in the queue,
        // submitted while the runner thread may be delivering, waking or waiting. None may be
        // left waiting for a thread nobody wakes.
        let runner = Arc::new(ProbeRunner::new(2));
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        for i in 0..2000 {
            runner.submit(job(i, &done_tx), Destination::InPlace, false);
            if i % 3 == 0 {
                assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(i));
            } else if i % 3 == 2 {
                for expect in i - 1..=i {
                    let got = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
                    assert!(got <= expect, "{got} {expect}");
                }
            }
        }
        let state = runner.lock();
        assert!(state.signalled <= state.idle());
    }

    #[actix_rt::test]
    async fn deliveries_reach_the_event_loop_in_batches() {
        let runner = Arc::new(ProbeRunner::new(2));
        let to = Destination::this_event_loop();
        let (tx, mut rx) = unbounded_channel::<(u32, std::thread::ThreadId)>();
        for i in 0..50 {
            let tx = tx.clone();
            let job: Job = Box::new(move || -> Delivery {
                Box::new(move || {
                    let _ = tx.send((i, std::thread::current().id()));
                })
            });
            runner.submit(job, to.clone(), true);
        }
        let mut got = Vec::new();
        while got.len() < 50 {
            let (i, thread) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every delivery arrives")
                .unwrap();
            // Run by the event loop's task, on this thread.
            assert_eq!(thread, std::thread::current().id());
            got.push(i);
        }
        got.sort_unstable();
        assert_eq!(got, (0..50).collect::<Vec<_>>());
        // The same inbox serves every collector of this loop.
        assert!(to.same(&Destination::this_event_loop()));
    }

    #[actix_rt::test]
    async fn a_burst_from_the_event_loop_waits_for_the_end_of_its_turn() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runner = Arc::new(ProbeRunner::new(2));
        let to = Destination::this_event_loop();
        let started = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = unbounded_channel::<u32>();
        for i in 0..3 {
            let (started, tx) = (started.clone(), tx.clone());
            let job: Job = Box::new(move || -> Delivery {
                started.fetch_add(1, Ordering::SeqCst);
                Box::new(move || {
                    let _ = tx.send(i);
                })
            });
            runner.submit(job, to.clone(), true);
        }
        // Still this turn: the jobs are only queued (a thread woken at the first submit would
        // have started it by now).
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(started.load(Ordering::SeqCst), 0);
        assert_eq!(runner.lock().queue.len(), 3);
        // The turn ends: one kick starts them all.
        let mut got = Vec::new();
        while got.len() < 3 {
            let i = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("every job runs once the turn ends")
                .unwrap();
            got.push(i);
        }
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2]);
        assert!(
            KICKS.with(|k| k.borrow().is_empty()),
            "the kick is forgotten"
        );
    }

    #[test]
    fn a_quick_last_job_keeps_the_burst_together_until_it_is_stuck() {
        let runner = Arc::new(ProbeRunner::new(1));
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gated: Job = Box::new(move || -> Delivery {
            let _ = gate_rx.recv();
            Box::new(|| {})
        });
        runner.submit(gated, Destination::InPlace, true);
        runner.submit(job(0, &done_tx), Destination::InPlace, true);
        // The last job was quick last time; this time it hangs until released.
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let hangs: Job = Box::new(move || -> Delivery {
            let _ = release_rx.recv();
            Box::new(|| {})
        });
        runner.submit(hangs, Destination::InPlace, true);
        gate_tx.send(()).unwrap();
        // Held for the quick job...
        assert!(done_rx.recv_timeout(Duration::from_millis(20)).is_err());
        // ...until it has run long enough to count as stuck and someone looks.
        std::thread::sleep(RUNNER_STUCK_AFTER + Duration::from_millis(10));
        runner.ensure_progress();
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(0));
        release_tx.send(()).unwrap();
    }

    #[actix_rt::test]
    async fn a_result_held_behind_a_quick_job_that_hangs_still_comes() {
        // Two collectors' jobs in one burst, both quick last time; this time the last one
        // hangs. Nobody submits again (every collector of the loop is waiting): the waiting
        // itself must release the first result.
        let runner = Arc::new(ProbeRunner::new(1));
        let to = Destination::this_event_loop();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<u32>();
        let first: Job = Box::new(move || -> Delivery {
            Box::new(move || {
                let _ = first_tx.send(1);
            })
        });
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let hangs: Job = Box::new(move || -> Delivery {
            let _ = release_rx.recv();
            Box::new(|| {})
        });
        runner.submit(first, to.clone(), true);
        runner.submit(hangs, to, true);
        let got = tokio::time::timeout(Duration::from_secs(10), runner.wait_for(first_rx))
            .await
            .expect("the held result is released while the other job hangs");
        assert_eq!(got, Ok(1));
        release_tx.send(()).unwrap();
    }
}
