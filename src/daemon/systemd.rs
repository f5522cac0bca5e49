//! systemd integration (`Type=notify`): READY=1 once the actors run, WATCHDOG=1 while the
//! supervisor answers and the parts nothing else can replace are not parked, STOPPING=1 at
//! shutdown. Every call is a no-op when systemd did not ask for it.

use std::time::Duration;

use futures_util::StreamExt;
use sd_notify::NotifyState;

use crate::actors::supervisor::{LiveInfo, SupervisorHandle};
use crate::report::ChildState;

/// Children whose parking leaves the daemon unable to do its job: a restart by systemd is
/// then better than a daemon that looks alive.
const ESSENTIAL: [&str; 2] = ["analyzer", "writer"];

/// Why the daemon should not tell the watchdog it is fine, if it should not.
pub(crate) fn watchdog_verdict(live: &LiveInfo) -> Result<(), String> {
    let parked: Vec<&str> = live
        .actors
        .iter()
        .filter(|a| ESSENTIAL.contains(&a.name.as_str()) && a.state == ChildState::Parked)
        .map(|a| a.name.as_str())
        .collect();
    if parked.is_empty() {
        Ok(())
    } else {
        Err(format!("parked: {}", parked.join(", ")))
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Tells systemd the daemon is stopping.
pub(crate) fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// Sends READY=1 once the supervisor has started its children, then, if systemd set a
/// watchdog, WATCHDOG=1 at half its period for as long as the daemon is healthy.
pub fn spawn(supervisor: SupervisorHandle) {
    let watchdog = sd_notify::watchdog_enabled();
    actix_rt::spawn(async move {
        // The supervisor answers only after `started`, which starts every child.
        let Ok(live) = supervisor.live().await else {
            return;
        };
        let status = format!("watching {} monitors", live.monitors.len());
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        let Some(period) = watchdog else {
            return;
        };
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let every = (period / 2).max(Duration::from_millis(10));
        // On the daemon's beat, so the ping shares the event loop's wake-up with a cycle.
        let mut beats = std::pin::pin!(crate::actors::cadence::beats(every, Duration::ZERO));
        let mut was_healthy = true;
        loop {
            beats.next().await;
            // A supervisor that cannot answer within the period is as good as hung.
            let verdict = match tokio::time::timeout(every, supervisor.live()).await {
                Ok(Ok(live)) => watchdog_verdict(&live),
                Ok(Err(_)) => return, // The supervisor is gone: shutting down.
                Err(_) => Err("the supervisor did not answer".into()),
            };
            match verdict {
                Ok(()) => {
                    send(&[NotifyState::Watchdog]);
                    was_healthy = true;
                }
                Err(reason) if was_healthy => {
                    tracing::error!("withholding the systemd watchdog ping: {reason}");
                    was_healthy = false;
                }
                Err(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ActorReport;

    fn live(states: &[(&str, ChildState)]) -> LiveInfo {
        LiveInfo {
            monitors: Vec::new().into(),
            actors: states
                .iter()
                .map(|(name, state)| ActorReport {
                    name: name.to_string(),
                    state: *state,
                    restarts: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn the_watchdog_is_fed_unless_an_essential_part_is_parked() {
        assert!(
            watchdog_verdict(&live(&[
                ("analyzer", ChildState::Running),
                ("writer", ChildState::Restarting),
                ("agent:a1", ChildState::Parked),
            ]))
            .is_ok(),
            "a parked collector is an alert, not a reason to restart everything"
        );
        let err = watchdog_verdict(&live(&[
            ("analyzer", ChildState::Parked),
            ("writer", ChildState::Running),
        ]))
        .unwrap_err();
        assert!(err.contains("analyzer"), "{err}");
    }
}
