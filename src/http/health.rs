//! `/healthz`: is the daemon itself working? Not the fleet's health (that is `/metrics` and the
//! summary's `overall_status`), but whether its actors run and its database takes writes.

use crate::report::ChildState;
use crate::summary::Summary;

/// `Ok` while every supervised actor runs and the writer commits; otherwise why not, one reason
/// per problem, in words an operator can act on.
pub fn health(summary: &Summary) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if !summary.running {
        reasons.push("the daemon is not running".to_string());
    }
    for a in &summary.actors {
        match a.state {
            ChildState::Running => {}
            ChildState::Restarting => reasons.push(format!(
                "actor {} is restarting ({} restarts so far)",
                a.name, a.restarts
            )),
            ChildState::Parked => reasons.push(format!(
                "actor {} is parked after failing too often ({} restarts); see the log",
                a.name, a.restarts
            )),
        }
    }
    if let Some(w) = &summary.writer
        && w.failing
    {
        let why = w.last_error.as_deref().unwrap_or("no error recorded");
        reasons.push(format!("the database writer is failing: {why}"));
    }
    if let Some(incident) = summary
        .writer
        .as_ref()
        .and_then(|w| w.database_file.as_ref())
        && incident.ongoing
    {
        reasons.push(format!(
            "the database file is not the daemon's: {}",
            incident.message
        ));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// How long a database file incident that is over is still named in `/healthz`.
pub(crate) const INCIDENT_NOTICE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Things an operator should know that do not make the daemon unhealthy: a database file
/// incident that is over, for an hour after it.
pub fn warnings(summary: &Summary, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(incident) = summary
        .writer
        .as_ref()
        .and_then(|w| w.database_file.as_ref())
        && !incident.ongoing
        && now - incident.at < INCIDENT_NOTICE
    {
        out.push(format!(
            "at {}: {}",
            incident.at.format("%Y-%m-%dT%H:%M:%SZ"),
            incident.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ActorReport, WriterReport};
    use crate::summary::{SummaryInputs, build};

    fn live(actors: Vec<ActorReport>, writer: WriterReport) -> Summary {
        let inputs = SummaryInputs {
            running: true,
            actors,
            writer: Some(writer),
            ..Default::default()
        };
        build(inputs, chrono::Utc::now())
    }

    fn actor(name: &str, state: ChildState, restarts: u32) -> ActorReport {
        ActorReport {
            name: name.into(),
            state,
            restarts,
        }
    }

    #[test]
    fn running_actors_and_a_committing_writer_are_healthy() {
        let s = live(
            vec![
                actor("system", ChildState::Running, 3),
                actor("writer", ChildState::Running, 0),
            ],
            WriterReport::default(),
        );
        assert_eq!(health(&s), Ok(()));
    }

    #[test]
    fn each_problem_is_named() {
        let s = live(
            vec![
                actor("system", ChildState::Running, 0),
                actor("workspace:w1", ChildState::Parked, 3),
                actor("analyzer", ChildState::Restarting, 1),
            ],
            WriterReport {
                failing: true,
                last_error: Some("database or disk is full".into()),
                ..Default::default()
            },
        );
        let reasons = health(&s).unwrap_err();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("workspace:w1 is parked"), "{reasons:?}");
        assert!(reasons[1].contains("analyzer is restarting"), "{reasons:?}");
        assert!(
            reasons[2].contains("database or disk is full"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_summary_from_the_database_alone_is_not_a_healthy_daemon() {
        let s = build(SummaryInputs::default(), chrono::Utc::now());
        let reasons = health(&s).unwrap_err();
        assert_eq!(reasons, vec!["the daemon is not running".to_string()]);
    }
}
