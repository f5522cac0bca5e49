//! The sink the worker drives: runs `gt`, remembers what it opened, retries owed closes on ticks.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::command::{
    close_args, close_reason, down_reason, escalate_args, find_program, hostname, one_line,
    parse_escalation_id, unknown_to_gt,
};
use super::escalated::{AlertKey, ESCALATED_LIMIT, Escalated};
use super::ledger::{EscalationLedger, EscalationRecord, Recorder};
use super::plan::{Plan, escalates_at, plan, worth_queueing};
use crate::config::outputs::{EscalateSink, ExecSink};
use crate::notify::dispatch::{Filter, Sink, TickCounts, Timings};
use crate::notify::exec::{failure, run_hook, run_program};
use crate::notify::{Notice, NoticeState};

/// How often a close whose retries all failed is tried again while the process runs: Gas Town
/// bumps an open escalation every 4 h, so giving up for good is not an option, but a broken
/// `gt` must not be run every few seconds either.
pub const CLOSE_RETRY_SLOW: Duration = Duration::from_secs(5 * 60);

/// How much of gt's stdout a warning about an answer without an id shows.
const STDOUT_HEAD_CHARS: usize = 200;

/// A close owed to Gas Town that could not be done on the spot: the alert resolved while the
/// daemon was down, or every retry of its close failed. Ticks try it until it works.
#[derive(Debug, Clone)]
pub(super) struct PendingClose {
    /// The alert's row id, for the record; `None` for an alert never stored.
    alert_id: Option<i64>,
    /// How logs name the alert.
    alert: String,
    escalation_id: String,
    reason: String,
    /// Failed attempts so far.
    failures: u32,
    /// Its failure was counted already (by the worker, or here once its retries ran out).
    counted: bool,
    /// When to try next.
    pub(super) due: Instant,
}

/// The escalation sink as the dispatcher drives it.
pub(crate) struct Escalation {
    sink: EscalateSink,
    /// Named in every escalation's details; looked up once, it does not change under us.
    host: String,
    pub(super) escalated: Escalated,
    recorder: Option<Recorder>,
    /// Closes owed, tried by [`Sink::tick`].
    pub(super) pending: Vec<PendingClose>,
    /// Backoff between tries of a pending close, like the worker's between retries.
    timings: Timings,
    /// Tries of a pending close after a failed one before it counts as failed.
    retries: u32,
    /// What ticks delivered since the worker last asked.
    counts: TickCounts,
}

impl Escalation {
    /// A sink escalating through `sink.program`, keeping its escalations in memory only.
    #[cfg(test)]
    pub(crate) fn new(sink: EscalateSink) -> Self {
        Escalation::with_ledger(
            sink,
            EscalationLedger::default(),
            Timings::default(),
            crate::config::outputs::DEFAULT_SINK_RETRIES,
        )
    }

    /// A sink escalating through `sink.program` that records through `ledger` and takes over
    /// its inherited escalations: those of active alerts are known by id, the others are due
    /// to be closed at once. `timings` and `retries` pace the closes it owes.
    pub(crate) fn with_ledger(
        sink: EscalateSink,
        ledger: EscalationLedger,
        timings: Timings,
        retries: u32,
    ) -> Self {
        let mut this = Escalation {
            sink,
            host: hostname(),
            escalated: Escalated::new(ESCALATED_LIMIT),
            recorder: ledger.recorder,
            pending: Vec::new(),
            timings,
            retries,
            counts: TickCounts::default(),
        };
        let now = Instant::now();
        for inherited in ledger.inherited {
            if inherited.alert_active {
                this.escalated.insert(
                    AlertKey::Id(inherited.alert_id),
                    Some(inherited.escalation_id),
                );
            } else {
                this.pending.push(PendingClose {
                    alert_id: Some(inherited.alert_id),
                    alert: format!("alert {}", inherited.alert_id),
                    reason: down_reason(inherited.alert_id),
                    escalation_id: inherited.escalation_id,
                    failures: 0,
                    counted: false,
                    due: now,
                });
            }
        }
        if !this.pending.is_empty() {
            tracing::info!(
                escalations = this.pending.len(),
                "closing the Gas Town escalations of alerts that ended while health-monitor was down"
            );
        }
        this
    }

    fn record(&self, record: EscalationRecord) {
        if let Some(recorder) = &self.recorder {
            recorder(record);
        }
    }

    /// `self.sink` run with `args`, the program looked up on `PATH` now (it may be installed
    /// after the daemon started).
    fn command(&self, args: Vec<String>, timeout: Duration) -> Result<ExecSink, String> {
        Ok(ExecSink {
            program: find_program(&self.sink.program, std::env::var_os("PATH").as_deref())?,
            args,
            timeout,
            cwd: self.sink.cwd.clone(),
        })
    }

    fn escalate(&mut self, notice: &Notice, level: &str, timeout: Duration) -> Result<(), String> {
        let run = self.command(escalate_args(notice, level, &self.host), timeout)?;
        let out = run_hook(&run, notice, timeout)?;
        let id = parse_escalation_id(&out.stdout);
        // Remembered only once gt has taken it: after a failure the alert's next firing notice
        // (a rise in severity) tries again.
        self.escalated.insert(AlertKey::of(notice), id.clone());
        let Some(id) = id else {
            tracing::warn!(
                program = %self.sink.program.display(),
                alert = %notice.key(),
                level,
                stdout_head = %one_line(&out.stdout, STDOUT_HEAD_CHARS),
                stderr = %out.stderr.trim(),
                "escalated to Gas Town, but gt's answer holds no escalation id: this escalation \
                 cannot be closed when the alert resolves"
            );
            return Ok(());
        };
        tracing::info!(
            program = %self.sink.program.display(),
            alert = %notice.key(),
            level,
            escalation = %id,
            stderr = %out.stderr.trim(),
            "escalated to Gas Town"
        );
        match notice.id {
            Some(alert_id) => self.record(EscalationRecord::Opened {
                alert_id,
                escalation_id: id,
                resource_type: notice.resource_type,
                resource_id: notice.resource_id.clone(),
                alert_type: notice.alert_type.clone(),
                level: level.to_string(),
                at: Utc::now(),
            }),
            // Recorded escalations are keyed by the alert's row; this alert has none, so only
            // this process can close its escalation.
            None => tracing::debug!(
                alert = %notice.key(),
                escalation = %id,
                "escalation not recorded: the alert is not stored"
            ),
        }
        Ok(())
    }

    /// Runs `gt escalate close`: `Ok(true)` when gt closed it, `Ok(false)` when gt did not know
    /// it (closed or deleted there), `Err` for a failure worth retrying.
    fn run_close(
        &self,
        escalation_id: &str,
        reason: &str,
        notice: Option<&Notice>,
        timeout: Duration,
    ) -> Result<bool, String> {
        let run = self.command(close_args(escalation_id, reason), timeout)?;
        let out = run_program(&run, notice, timeout)?;
        if out.status.success() {
            Ok(true)
        } else if unknown_to_gt(&out) {
            Ok(false)
        } else {
            Err(failure(&out))
        }
    }

    /// Logs and records a close that is done.
    fn closed(
        &self,
        alert_id: Option<i64>,
        alert: &str,
        escalation_id: &str,
        reason: String,
        known: bool,
    ) {
        let reason = if known {
            tracing::info!(
                alert,
                escalation = escalation_id,
                reason = %reason,
                "closed the Gas Town escalation"
            );
            reason
        } else {
            tracing::info!(
                alert,
                escalation = escalation_id,
                "Gas Town no longer knows the escalation (closed or deleted there): counted as closed"
            );
            format!("{reason}; gt did not know it (closed or deleted there)")
        };
        if let Some(alert_id) = alert_id {
            self.record(EscalationRecord::Closed {
                alert_id,
                escalation_id: escalation_id.to_string(),
                reason,
                at: Utc::now(),
            });
        }
    }

    fn close_resolved(
        &mut self,
        notice: &Notice,
        escalation_id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let reason = close_reason(notice);
        let known = self.run_close(escalation_id, &reason, Some(notice), timeout)?;
        self.escalated.forget(&AlertKey::of(notice));
        self.closed(notice.id, &notice.key(), escalation_id, reason, known);
        Ok(())
    }

    /// The wait after a pending close's `failures`-th failure: the worker's doubling backoff
    /// while its retries last, then [`CLOSE_RETRY_SLOW`].
    fn backoff(&self, failures: u32) -> Duration {
        if failures > self.retries {
            return CLOSE_RETRY_SLOW;
        }
        let doublings = failures.saturating_sub(1).min(20);
        self.timings
            .backoff_initial
            .saturating_mul(1 << doublings)
            .min(self.timings.backoff_max)
    }
}

impl Sink for Escalation {
    fn name(&self) -> String {
        format!("escalate:{}", self.sink.program.display())
    }

    fn timeout(&self) -> Duration {
        self.sink.timeout
    }

    fn filter(&self) -> Option<Filter> {
        let min_severity = self.sink.min_severity;
        Some(Box::new(move |notice: &Notice| {
            worth_queueing(min_severity, notice)
        }))
    }

    fn skip(&mut self, notice: &Notice) -> bool {
        match plan(&self.escalated, self.sink.min_severity, notice) {
            Plan::Escalate(_) | Plan::Close(_) => false,
            Plan::Forget => {
                self.escalated.forget(&AlertKey::of(notice));
                true
            }
            Plan::Skip => true,
        }
    }

    fn send(&mut self, notice: &Notice, timeout: Duration) -> Result<(), String> {
        // The worker asks `skip` first, so only escalations and closes get here. A retry plans
        // again: the alert is marked escalated, or forgotten, only once gt has done it.
        match plan(&self.escalated, self.sink.min_severity, notice) {
            Plan::Escalate(level) => self.escalate(notice, level, timeout),
            Plan::Close(id) => self.close_resolved(notice, &id, timeout),
            Plan::Forget | Plan::Skip => Ok(()),
        }
    }

    fn keeps_state(&self) -> bool {
        true
    }

    /// An alert still open at start was escalated by the run that saw it fire (if it was at the
    /// minimum then): remember it, so a restart never escalates it a second time. Its
    /// escalation id, when one was recorded, came with the ledger and is kept.
    fn restore(&mut self, notice: &Notice) {
        if notice.state != NoticeState::Resolved
            && escalates_at(self.sink.min_severity, notice.severity).is_some()
        {
            self.escalated.insert(AlertKey::of(notice), None);
        }
    }

    /// The close is still owed: keep it for [`Sink::tick`], which tries again later.
    fn gave_up(&mut self, notice: &Notice) {
        if let Plan::Close(escalation_id) = plan(&self.escalated, self.sink.min_severity, notice) {
            self.escalated.forget(&AlertKey::of(notice));
            tracing::warn!(
                alert = %notice.key(),
                escalation = %escalation_id,
                "closing the Gas Town escalation failed after every retry; trying again every {}s",
                CLOSE_RETRY_SLOW.as_secs()
            );
            self.pending.push(PendingClose {
                alert_id: notice.id,
                alert: notice.key(),
                reason: close_reason(notice),
                escalation_id,
                failures: self.retries.saturating_add(1),
                counted: true,
                due: Instant::now() + CLOSE_RETRY_SLOW,
            });
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }

    /// Tries every pending close that is due, within `timeout` for all of them.
    fn tick(&mut self, timeout: Duration) -> Result<(), String> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        for mut p in std::mem::take(&mut self.pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.due > now || left.is_zero() {
                kept.push(p);
                continue;
            }
            if p.failures > 0 {
                self.counts.retries += 1;
            }
            match self.run_close(&p.escalation_id, &p.reason, None, left) {
                Ok(known) => {
                    self.counts.sent += 1;
                    self.closed(p.alert_id, &p.alert, &p.escalation_id, p.reason, known);
                }
                Err(e) => {
                    p.failures += 1;
                    if !p.counted && p.failures > self.retries {
                        p.counted = true;
                        self.counts.failed += 1;
                        tracing::error!(
                            alert = %p.alert,
                            escalation = %p.escalation_id,
                            error = %e,
                            "closing the Gas Town escalation failed after every retry; trying \
                             again every {}s",
                            CLOSE_RETRY_SLOW.as_secs()
                        );
                    }
                    p.due = Instant::now() + self.backoff(p.failures);
                    errors.push(format!("closing escalation {}: {e}", p.escalation_id));
                    kept.push(p);
                }
            }
        }
        self.pending = kept;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn take_tick_counts(&mut self) -> TickCounts {
        std::mem::take(&mut self.counts)
    }
}
