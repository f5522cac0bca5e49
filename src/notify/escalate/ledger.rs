//! The ledger: records of escalations opened and closed, and the open ones a previous run left.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::ResourceType;

/// One step in the life of an escalation of a stored alert, for the [`Recorder`].
#[derive(Debug, Clone, PartialEq)]
pub enum EscalationRecord {
    /// `gt escalate` created escalation `escalation_id` for alert `alert_id`.
    Opened {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation, e.g. `hq-e5tq`.
        escalation_id: String,
        /// The alert's resource type.
        resource_type: ResourceType,
        /// The alert's resource id (an agent, a workspace...).
        resource_id: String,
        /// The alert's type (its metric or condition).
        alert_type: String,
        /// The `gt escalate -s` level it was opened at: `critical`, `high` or `medium`.
        level: String,
        /// When gt answered.
        at: DateTime<Utc>,
    },
    /// The escalation was closed, or gt no longer knew it (closed or deleted there).
    Closed {
        /// The `health_alerts` row id of the alert.
        alert_id: i64,
        /// Gas Town's id of the escalation.
        escalation_id: String,
        /// Why, as given to `gt escalate close --reason` (plus a note when gt did not know it).
        reason: String,
        /// When gt answered.
        at: DateTime<Utc>,
    },
}

impl EscalationRecord {
    /// The `health_alerts` row id of the alert the record is about.
    pub fn alert_id(&self) -> i64 {
        match self {
            EscalationRecord::Opened { alert_id, .. }
            | EscalationRecord::Closed { alert_id, .. } => *alert_id,
        }
    }

    /// Gas Town's id of the escalation the record is about.
    pub fn escalation_id(&self) -> &str {
        match self {
            EscalationRecord::Opened { escalation_id, .. }
            | EscalationRecord::Closed { escalation_id, .. } => escalation_id,
        }
    }
}

/// Takes the sink's [`EscalationRecord`]s somewhere lasting. It is called on the sink's worker
/// thread, between two runs of `gt`: it must not block for long (queue, do not wait).
pub type Recorder = Arc<dyn Fn(EscalationRecord) + Send + Sync>;

/// An escalation an earlier run opened and did not close, read back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// The `health_alerts` row id of its alert.
    pub alert_id: i64,
    /// Gas Town's id of the escalation.
    pub escalation_id: String,
    /// True when the alert is still active: its resolution will close the escalation. False
    /// when it is over: the escalation is closed right after start.
    pub alert_active: bool,
}

/// What makes escalations outlive the process: where the sink records them, and the ones an
/// earlier run left open. The default records nothing and inherits nothing (tests, tools).
#[derive(Clone, Default)]
pub struct EscalationLedger {
    /// Told of every escalation opened or closed for a stored alert; `None` keeps them in
    /// memory only.
    pub recorder: Option<Recorder>,
    /// Escalations still open at start.
    pub inherited: Vec<Inherited>,
}

impl std::fmt::Debug for EscalationLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EscalationLedger")
            .field("recorder", &self.recorder.as_ref().map(|_| "Fn"))
            .field("inherited", &self.inherited)
            .finish()
    }
}
