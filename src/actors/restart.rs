//! Restart bookkeeping shared by the supervisor and the writer thread: exponential backoff and an
//! OTP-style intensity limit (N restarts in T seconds) past which a child is parked.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::RestartPolicy;

pub use crate::report::ChildState;

/// One child's restart history.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    policy: RestartPolicy,
    backoff: Duration,
    recent: VecDeque<Instant>,
    started_at: Instant,
    /// Restarts since the daemon started.
    pub restarts: u32,
    /// Whether the child runs, waits to restart, or is parked.
    pub state: ChildState,
}

impl RestartTracker {
    /// A tracker for a child that starts now.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartTracker {
            policy,
            backoff: policy.initial_backoff,
            recent: VecDeque::new(),
            started_at: Instant::now(),
            restarts: 0,
            state: ChildState::Running,
        }
    }

    /// The child died at `now`: decides whether it restarts after a backoff or is parked, and
    /// returns the delay before the next start.
    pub fn exited(&mut self, now: Instant) -> Duration {
        let p = self.policy;
        if now.duration_since(self.started_at) >= p.window {
            // It held for a whole window: the next failure starts the backoff over.
            self.backoff = p.initial_backoff;
        }
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > p.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= p.max_restarts {
            self.state = ChildState::Parked;
            self.recent.clear();
            p.park_pause
        } else {
            self.state = ChildState::Restarting;
            let delay = self.backoff;
            self.backoff = (self.backoff * 2).min(p.max_backoff);
            delay
        }
    }

    /// The child starts again at `now`.
    pub fn restarted(&mut self, now: Instant) {
        self.restarts += 1;
        self.recent.push_back(now);
        self.started_at = now;
        self.state = ChildState::Running;
    }

    /// When the current run started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default: 100 ms doubling to 30 s, 5 restarts in 60 s, then a 300 s pause.
    fn policy() -> RestartPolicy {
        RestartPolicy::default()
    }

    #[test]
    fn backoff_doubles_then_the_child_is_parked_past_the_intensity_limit() {
        let mut t = RestartTracker::new(policy());
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..5 {
            now += Duration::from_millis(10);
            delays.push(t.exited(now));
            assert_eq!(t.state, ChildState::Restarting);
            t.restarted(now);
        }
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600].map(Duration::from_millis)
        );
        now += Duration::from_millis(10);
        assert_eq!(t.exited(now), Duration::from_secs(300));
        assert_eq!(t.state, ChildState::Parked);
        assert_eq!(t.restarts, 5);
    }

    #[test]
    fn backoff_is_capped_and_resets_after_a_long_run() {
        let mut p = policy();
        p.max_restarts = 100;
        let mut t = RestartTracker::new(p);
        let mut now = Instant::now();
        for _ in 0..12 {
            now += Duration::from_millis(1);
            t.exited(now);
            t.restarted(now);
        }
        now += Duration::from_millis(1);
        assert_eq!(t.exited(now), Duration::from_secs(30));
        t.restarted(now);
        now += Duration::from_secs(61);
        assert_eq!(t.exited(now), Duration::from_millis(100));
    }

    #[test]
    fn restarts_spread_beyond_the_window_never_park() {
        let mut t = RestartTracker::new(policy());
        let mut now = Instant::now();
        for _ in 0..20 {
            now += Duration::from_secs(20);
            t.exited(now);
            assert_ne!(t.state, ChildState::Parked);
            t.restarted(now);
        }
    }
}
