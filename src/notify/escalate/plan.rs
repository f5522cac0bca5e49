//! What a notice needs: which severities escalate at which `gt` level, and which get queued.

use super::escalated::{AlertKey, Escalated};
use crate::model::HealthStatus;
use crate::notify::{Notice, NoticeState};

/// The `gt escalate -s` level for an alert's severity: critical → `critical`, unhealthy →
/// `high`, degraded → `medium`. `None` for healthy and unknown, which are nothing to escalate.
pub fn gt_severity(severity: HealthStatus) -> Option<&'static str> {
    match severity {
        HealthStatus::Critical => Some("critical"),
        HealthStatus::Unhealthy => Some("high"),
        HealthStatus::Degraded => Some("medium"),
        HealthStatus::Healthy | HealthStatus::Unknown => None,
    }
}

/// The level an alert of `severity` escalates with, when it is at or above `min_severity`.
pub(super) fn escalates_at(
    min_severity: HealthStatus,
    severity: HealthStatus,
) -> Option<&'static str> {
    gt_severity(severity).filter(|_| severity >= min_severity)
}

/// True when `notice` is worth a slot in the sink's queue: a firing notice that may escalate
/// at `min_severity`, or a resolution (which closes the alert's escalation, if any). Reminders
/// and firing notices below the minimum never do anything, so they are not queued at all.
pub fn worth_queueing(min_severity: HealthStatus, notice: &Notice) -> bool {
    match notice.state {
        NoticeState::Firing => escalates_at(min_severity, notice.severity).is_some(),
        NoticeState::Resolved => true,
        NoticeState::Reminder => false,
    }
}

/// What the sink does with one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Plan {
    /// Run `gt escalate -s LEVEL ...`.
    Escalate(&'static str),
    /// The alert is over: run `gt escalate close ID`.
    Close(String),
    /// The alert is over and its escalation has no id (or it never escalated): forget it.
    Forget,
    /// Nothing to do: a reminder, below the minimum, or escalated already.
    Skip,
}

pub(super) fn plan(escalated: &Escalated, min_severity: HealthStatus, notice: &Notice) -> Plan {
    let key = AlertKey::of(notice);
    match notice.state {
        NoticeState::Firing => match escalates_at(min_severity, notice.severity) {
            Some(level) if !escalated.contains(&key) => Plan::Escalate(level),
            _ => Plan::Skip,
        },
        NoticeState::Resolved => match escalated.escalation_id(&key) {
            Some(id) => Plan::Close(id.to_string()),
            None => Plan::Forget,
        },
        NoticeState::Reminder => Plan::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::about;
    use super::*;
    use crate::model::HealthStatus::{Critical, Degraded, Healthy, Unhealthy, Unknown};
    use crate::notify::NoticeState::{Firing, Reminder, Resolved};

    #[test]
    fn only_firing_notices_at_the_minimum_and_resolutions_take_a_queue_slot() {
        let cases = [
            (Unhealthy, Critical, Firing, true),
            (Unhealthy, Unhealthy, Firing, true),
            (Unhealthy, Degraded, Firing, false),
            (Critical, Unhealthy, Firing, false),
            (Degraded, Degraded, Firing, true),
            (Unknown, Healthy, Firing, false),
            (Unhealthy, Critical, Reminder, false),
            (Critical, Unhealthy, Resolved, true),
        ];
        for (min, severity, state, queued) in cases {
            let n = about(1, severity, state, "m");
            assert_eq!(
                worth_queueing(min, &n),
                queued,
                "{min} {severity} {state:?}"
            );
        }
    }
}
