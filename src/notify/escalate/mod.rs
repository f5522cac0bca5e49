//! The Gas Town sink: escalates alerts to the orchestrator's overseer with `gt escalate`, and
//! closes every escalation it opened once the alert behind it is over.
//!
//! # An escalation's life
//!
//! **Opening.** An escalation pages a person, so unlike the other sinks this one does not pass
//! on every notice: only the first `firing` notice of an alert at or above `min_severity` runs
//! `gt escalate -s LEVEL SUMMARY -r DETAILS --source health-monitor:TYPE:ID --json`. Reminders
//! never do. An alert that fired below `min_severity` escalates when it rises to it (which comes
//! as a new `firing` notice), and only then. gt answers with one indented JSON object, possibly
//! after warning lines when part of its delivery failed; the object's `id` (e.g. `hq-e5tq`) is
//! kept with the alert. A gt that exits 0 without an id we can use has escalated all the same:
//! that counts as sent, with a warning, but nothing can close that escalation for us.
//!
//! **Closing.** `gt escalate stale` makes an open, unacknowledged escalation louder every 4 h,
//! so none we opened may outlive its cause. The alert's `resolved` notice runs
//! `gt escalate close ID --reason "resolved: MESSAGE (health-monitor alert N)"`. A failed close
//! is retried with the worker's backoff like any delivery. One that fails because gt no longer
//! knows the escalation (`closing escalation: ... not found`: someone closed or deleted it in
//! Gas Town) counts as closed. Once every retry has failed, the close is kept and tried again
//! every [`CLOSE_RETRY_SLOW`] while the process runs. A resolved notice of an alert that was
//! never escalated (or escalated without an id) needs nothing and is skipped.
//!
//! **Recording.** Every escalation opened or closed for a stored alert (one with a row id) is
//! handed, as an [`EscalationRecord`], to the [`Recorder`] of the sink's [`EscalationLedger`]:
//! the daemon writes it to the `gastown_escalations` table through its database writer.
//!
//! **Restarting.** At start the daemon reads back the escalations not closed yet and gives them
//! to the sink as [`Inherited`] ones. Those whose alert is still active are remembered with
//! their id, so the alert's later resolution closes them (the restored alert the analyzer hands
//! over later, through `restore`, finds that id in place). Those whose alert is over (it
//! resolved while no daemon ran, e.g. an offline `remove`) are closed by the worker's first
//! [`Sink::tick`], right after start, with the reason
//! `resolved while health-monitor was down (alert N)`.
//!
//! Counting: escalations and closes are both deliveries, so both count as `sent` in the sink's
//! report; a close kept for later that succeeds on a tick counts as `sent` then, and one whose
//! retries run out on ticks counts once as `failed` (it is still tried every
//! [`CLOSE_RETRY_SLOW`]).
//!
//! `gt` runs like an exec hook, through [`run_hook`] and [`run_program`]: directly, never through
//! a shell, in its own process group that a timeout kills. Like a hook it also gets the notice on
//! stdin and as `HEALTH_MONITOR_*` variables, which `gt escalate` has no use for.
//!
//! The parts: `plan` decides what a notice needs, `escalated` remembers the alerts escalated
//! so far, `command` builds `gt`'s command lines and reads its answers, `ledger` holds the
//! records that outlive the process, and `sink` is the sink the worker drives.
//!
//! [`Sink::tick`]: super::dispatch::Sink::tick
//! [`run_hook`]: super::exec::run_hook
//! [`run_program`]: super::exec::run_program

mod command;
mod escalated;
mod ledger;
mod plan;
mod sink;
#[cfg(test)]
mod tests;

pub use command::{
    SUMMARY_CHARS, close_args, close_reason, details, down_reason, escalate_args, find_program,
    hostname, parse_escalation_id, source, summary, unknown_to_gt,
};
pub use escalated::ESCALATED_LIMIT;
pub use ledger::{EscalationLedger, EscalationRecord, Inherited, Recorder};
pub use plan::{gt_severity, worth_queueing};
pub use sink::CLOSE_RETRY_SLOW;
pub(crate) use sink::Escalation;
