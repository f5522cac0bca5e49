//! The conditions the daemon raises about itself rather than from a metric's thresholds (the
//! catalogue lists them in [`crate::catalog::CONDITIONS`]): a parked collector, a measurement
//! that does not return, a database that refuses writes, a lost database file. Each is decided
//! by a plain function here; the actors only call them and hand the result to the analyzer.

use std::time::Duration;

use serde_json::json;

use crate::alerts::Condition;
use crate::catalog::{
    COLLECTOR_FAILED, COLLECTOR_STALLED, DATABASE_FILE_LOST, DATABASE_WRITE_FAILED,
};
use crate::config::RestartPolicy;
use crate::model::{AlertKey, HealthStatus, ResourceType};
use crate::report::WriterReport;

/// The key of condition `alert_type` on a resource.
pub fn key(resource: (ResourceType, String), alert_type: &str) -> AlertKey {
    AlertKey {
        resource_type: resource.0,
        resource_id: resource.1,
        alert_type: alert_type.into(),
    }
}

/// The key of a collector's `collector_failed` alert.
pub(crate) fn collector_failed_key(resource: (ResourceType, String)) -> AlertKey {
    key(resource, COLLECTOR_FAILED)
}

/// The key of a collector's `collector_stalled` alert.
pub(crate) fn collector_stalled_key(resource: (ResourceType, String)) -> AlertKey {
    key(resource, COLLECTOR_STALLED)
}

/// `collector_failed` for collector `name`, parked after `restarts` restarts under `policy`,
/// with its next try in `next_try`.
pub fn collector_failed(
    name: &str,
    policy: &RestartPolicy,
    restarts: u32,
    next_try: Duration,
    panicked: bool,
) -> Condition {
    Condition {
        severity: HealthStatus::Critical,
        message: format!(
            "collector {name} failed {} times within {} s; its data is stale, next try in {} s",
            policy.max_restarts + 1,
            policy.window.as_secs_f64(),
            next_try.as_secs_f64()
        ),
        metadata: json!({"actor": name, "restarts": restarts, "panicked": panicked}),
    }
}

/// `collector_stalled` for collector `name`, whose measurement has run for `secs`.
pub(crate) fn collector_stalled(name: &str, secs: f64) -> Condition {
    Condition {
        severity: HealthStatus::Critical,
        message: format!(
            "collector {name}: a measurement has not returned for {secs:.0} s (a hung mount or file?)"
        ),
        metadata: json!({"collector": name, "seconds": secs}),
    }
}

/// True when a measurement that started `busy_for` ago has stalled.
pub(crate) fn is_stalled(busy_for: Option<Duration>, stall_after: Duration) -> bool {
    busy_for.is_some_and(|t| t > stall_after)
}

/// What the analyzer last saw of the writer, to tell a new episode from one it already knows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct WriterSeen {
    episodes: u64,
    file_incidents: u64,
}

impl WriterSeen {
    /// Everything in `report` counts as seen: a new analyzer does not raise its predecessor's
    /// episodes again.
    pub fn from(report: &WriterReport) -> Self {
        WriterSeen {
            episodes: report.alerted_episodes,
            file_incidents: report.file_incidents,
        }
    }

    /// The writer's conditions on resource `database/<db_path>`, each raised (`Some`) or cleared
    /// (`None`), in the order to apply them. An episode that began and ended between two polls
    /// is raised then cleared, so a short full-disk spell or a deleted file recreated at once
    /// still reaches the sinks.
    pub fn changes(
        &mut self,
        db_path: &str,
        report: &WriterReport,
    ) -> Vec<(AlertKey, Option<Condition>)> {
        let resource = (ResourceType::Database, db_path.to_string());
        let mut out = Vec::new();
        let new_episode = report.alerted_episodes > self.episodes;
        self.episodes = report.alerted_episodes;
        let write_key = key(resource.clone(), DATABASE_WRITE_FAILED);
        if new_episode || report.failing_alertable {
            out.push((write_key.clone(), Some(database_write_failed(report))));
        }
        if !report.failing {
            out.push((write_key, None));
        }
        let new_incident = report.file_incidents > self.file_incidents;
        self.file_incidents = report.file_incidents;
        if let Some(incident) = &report.database_file {
            let file_key = key(resource, DATABASE_FILE_LOST);
            if new_incident || incident.ongoing {
                out.push((
                    file_key.clone(),
                    Some(Condition {
                        severity: HealthStatus::Critical,
                        message: incident.message.clone(),
                        metadata: json!({
                            "kind": incident.kind,
                            "at": incident.at,
                            "copy": incident.copy,
                            "saved_copy": incident.saved_copy,
                            "buffered_rows": report.buffered_rows,
                        }),
                    }),
                ));
            }
            if !incident.ongoing {
                out.push((file_key, None));
            }
        }
        out
    }
}

/// `database_write_failed` as `report` describes it.
fn database_write_failed(report: &WriterReport) -> Condition {
    Condition {
        severity: HealthStatus::Critical,
        message: format!(
            "cannot write to the database ({}); {} rows held in memory, {} dropped",
            report.last_error.as_deref().unwrap_or("unknown error"),
            report.buffered_rows,
            report.rows_dropped
        ),
        metadata: json!({
            "buffered_rows": report.buffered_rows,
            "rows_dropped": report.rows_dropped,
            "error": report.last_error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FileIncident, IncidentKind};

    fn names(changes: &[(AlertKey, Option<Condition>)]) -> Vec<(String, bool)> {
        changes
            .iter()
            .map(|(k, c)| (k.alert_type.clone(), c.is_some()))
            .collect()
    }

    #[test]
    fn a_failing_writer_raises_until_it_recovers() {
        let mut seen = WriterSeen::default();
        let failing = WriterReport {
            failing: true,
            failing_alertable: true,
            alerted_episodes: 1,
            last_error: Some("database or disk is full".into()),
            buffered_rows: 7,
            ..WriterReport::default()
        };
        let changes = seen.changes("/x.db", &failing);
        assert_eq!(names(&changes), vec![(DATABASE_WRITE_FAILED.into(), true)]);
        let condition = changes[0].1.as_ref().unwrap();
        assert!(condition.message.contains("full"), "{}", condition.message);
        assert!(
            condition.message.contains("7 rows held"),
            "{}",
            condition.message
        );
        assert_eq!(changes[0].0.resource_id, "/x.db");
        // Still failing: raised again (the engine keeps one alert); recovered: cleared.
        assert_eq!(seen.changes("/x.db", &failing).len(), 1);
        let recovered = WriterReport {
            alerted_episodes: 1,
            ..WriterReport::default()
        };
        assert_eq!(
            names(&seen.changes("/x.db", &recovered)),
            vec![(DATABASE_WRITE_FAILED.into(), false)]
        );
    }

    #[test]
    fn a_lock_wait_not_yet_alertable_raises_nothing() {
        let mut seen = WriterSeen::default();
        let waiting = WriterReport {
            failing: true,
            ..WriterReport::default()
        };
        assert!(seen.changes("/x.db", &waiting).is_empty());
    }

    #[test]
    fn an_episode_between_two_polls_is_raised_then_cleared() {
        let mut seen = WriterSeen::from(&WriterReport::default());
        let after = WriterReport {
            alerted_episodes: 1,
            ..WriterReport::default()
        };
        assert_eq!(
            names(&seen.changes("/x.db", &after)),
            vec![
                (DATABASE_WRITE_FAILED.into(), true),
                (DATABASE_WRITE_FAILED.into(), false)
            ]
        );
        // Seen now: the next poll only clears.
        assert_eq!(
            names(&seen.changes("/x.db", &after)),
            vec![(DATABASE_WRITE_FAILED.into(), false)]
        );
    }

    #[test]
    fn a_lost_file_raises_while_ongoing_and_a_recovered_one_once() {
        let incident = |ongoing| FileIncident {
            kind: IncidentKind::Deleted,
            at: chrono::Utc::now(),
            ongoing,
            message: "the database file was deleted".into(),
            copy: None,
            saved_copy: None,
        };
        let mut seen = WriterSeen::default();
        let recovered_at_once = WriterReport {
            file_incidents: 1,
            database_file: Some(incident(false)),
            ..WriterReport::default()
        };
        let file = |raised| (DATABASE_FILE_LOST.to_string(), raised);
        let write = (DATABASE_WRITE_FAILED.to_string(), false);
        assert_eq!(
            names(&seen.changes("/x.db", &recovered_at_once)),
            vec![write.clone(), file(true), file(false)]
        );
        assert_eq!(
            names(&seen.changes("/x.db", &recovered_at_once)),
            vec![write.clone(), file(false)]
        );
        let ongoing = WriterReport {
            file_incidents: 2,
            database_file: Some(incident(true)),
            ..WriterReport::default()
        };
        assert_eq!(
            names(&seen.changes("/x.db", &ongoing)),
            vec![write.clone(), file(true)]
        );
        assert_eq!(
            names(&seen.changes("/x.db", &ongoing)),
            vec![write, file(true)]
        );
    }

    #[test]
    fn collector_conditions_say_what_and_when() {
        let policy = RestartPolicy::default();
        let c = collector_failed("workspace:w1", &policy, 6, Duration::from_secs(300), true);
        assert_eq!(c.severity, HealthStatus::Critical);
        assert!(c.message.contains("workspace:w1"), "{}", c.message);
        assert!(
            c.message
                .contains(&format!("failed {} times", policy.max_restarts + 1))
        );
        assert!(c.message.contains("next try in 300 s"), "{}", c.message);
        assert_eq!(c.metadata["panicked"], true);
        let s = collector_stalled("system", 12.4);
        assert!(s.message.contains("12 s"), "{}", s.message);
        assert!(is_stalled(
            Some(Duration::from_secs(3)),
            Duration::from_secs(2)
        ));
        assert!(!is_stalled(
            Some(Duration::from_secs(1)),
            Duration::from_secs(2)
        ));
        assert!(!is_stalled(None, Duration::from_secs(2)));
        let k = collector_failed_key((ResourceType::Workspace, "w1".into()));
        assert_eq!(
            (k.alert_type.as_str(), k.resource_id.as_str()),
            (COLLECTOR_FAILED, "w1")
        );
    }
}
