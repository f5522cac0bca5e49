//! Telling the operator: every alert event is logged through tracing at a level matching its severity.

use crate::alerts::AlertEvent;
use crate::model::{HealthStatus, format_timestamp};

/// Logs an alert event with structured fields: critical as error, unhealthy as warn, resolved as
/// info. `silenced` marks events an operator's silence keeps from the sinks.
pub fn log_event(event: &AlertEvent, silenced: bool) {
    if !event.notifies() {
        return;
    }
    let a = event.alert();
    let state = event.state();
    let since = format_timestamp(a.timestamp);
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                alert_state = state,
                alert_id = a.id,
                silenced,
                severity = a.severity.as_str(),
                resource_type = a.resource_type.as_str(),
                resource_id = %a.resource_id,
                alert_type = %a.alert_type,
                since = %since,
                "{}{}",
                match event {
                    AlertEvent::Resolved(_) => "resolved: ",
                    AlertEvent::Reminder(_) => "still: ",
                    AlertEvent::Escalated(_) => "escalated: ",
                    _ => "",
                },
                a.message
            )
        };
    }
    match (event, a.severity) {
        (AlertEvent::Resolved(_), _) => emit!(info),
        (_, HealthStatus::Critical) => emit!(error),
        _ => emit!(warn),
    }
}
