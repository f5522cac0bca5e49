//! What a town's events mean for monitoring: which agents to start watching, which to retire,
//! and which deaths to alert on. Pure: the Gas Town actor carries the actions out.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::events::TownEvent;
use super::layout::{Role, Town, TownAgent};
use crate::alerts::Condition;
use crate::model::{AlertKey, HealthStatus, ResourceType, validate_id};

/// Alert type of a session Gas Town reports dead.
pub const SESSION_DEATH: &str = "session_death";
/// Alert type of a mass death Gas Town reports.
pub const MASS_DEATH: &str = "mass_death";
/// The resource town-wide alerts are raised on.
pub const TOWN_RESOURCE: &str = "gastown";
/// A death this soon after the agent ended (done, kill, session_end) is that ending, not news.
const ENDED_MEMORY: Duration = Duration::minutes(10);
/// Death alerts resolve on their own after this long: they report an event, not a state (an
/// agent that stays dead keeps its `agent_active` alert).
pub const EVENT_ALERT_HOLD: Duration = Duration::minutes(30);

/// True for the alert types raised from town events, which resolve after [`EVENT_ALERT_HOLD`].
pub fn is_event_alert(alert_type: &str) -> bool {
    alert_type == SESSION_DEATH || alert_type == MASS_DEATH
}

/// One thing to do about the town.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Watch this agent (and its worktree); a new session gets a grace period.
    Watch(TownAgent),
    /// The agent ended: stop watching it once a last check finds no orphans.
    Retire(String),
    /// Raise a condition alert.
    Raise(AlertKey, Condition),
    /// Resolve a condition alert.
    Clear(AlertKey),
}

/// The key of a session's death alert.
pub fn death_key(session: &str) -> AlertKey {
    AlertKey {
        resource_type: ResourceType::Agent,
        resource_id: session.to_string(),
        alert_type: SESSION_DEATH.into(),
    }
}

/// The key of the town's mass-death alert.
pub fn mass_death_key() -> AlertKey {
    AlertKey {
        resource_type: ResourceType::Agent,
        resource_id: TOWN_RESOURCE.into(),
        alert_type: MASS_DEATH.into(),
    }
}

/// Memory across events: which agents ended recently.
#[derive(Debug)]
pub struct Lifecycle {
    town: Town,
    ended: HashMap<String, DateTime<Utc>>,
}

fn text<'a>(payload: &'a Value, key: &str) -> Option<&'a str> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Lifecycle {
    /// Lifecycle tracking for `town`.
    pub fn new(town: Town) -> Self {
        Lifecycle {
            town,
            ended: HashMap::new(),
        }
    }

    /// The actions one event calls for; events of other types call for none.
    pub fn on_event(&mut self, event: &TownEvent, now: DateTime<Utc>) -> Vec<Action> {
        let p = &event.payload;
        match event.kind.as_str() {
            "spawn" => {
                let agent = text(p, "rig")
                    .zip(text(p, "polecat"))
                    .and_then(|(rig, name)| self.town.agent_in(rig, Role::Polecat, name));
                self.started(agent)
            }
            "session_start" => {
                let agent = event
                    .actor
                    .as_deref()
                    .and_then(|a| self.town.agent_by_address(a));
                self.started(agent)
            }
            "done" => {
                let agent = event
                    .actor
                    .as_deref()
                    .and_then(|a| self.town.agent_by_address(a));
                self.ended(agent.map(|a| a.session), now)
            }
            "kill" => {
                let agent = text(p, "rig")
                    .zip(text(p, "target"))
                    .and_then(|(rig, name)| self.town.agent_in(rig, Role::Polecat, name));
                self.ended(agent.map(|a| a.session), now)
            }
            "session_end" => {
                let session = text(p, "session").filter(|s| validate_id(s).is_ok());
                self.ended(session.map(String::from), now)
            }
            "session_death" => self.death(p, now),
            "mass_death" => {
                let sessions: Vec<&str> = p
                    .get("sessions")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let count = p
                    .get("count")
                    .and_then(Value::as_u64)
                    .unwrap_or(sessions.len() as u64);
                let mut message = format!(
                    "Gas Town reports {count} sessions dead within {}",
                    text(p, "window").unwrap_or("a short window")
                );
                if !sessions.is_empty() {
                    message.push_str(&format!(": {}", sessions.join(", ")));
                }
                if let Some(cause) = text(p, "possible_cause") {
                    message.push_str(&format!(" (possible cause: {cause})"));
                }
                vec![Action::Raise(
                    mass_death_key(),
                    Condition {
                        severity: HealthStatus::Critical,
                        message,
                        metadata: json!({"event": p, "ts": event.ts}),
                    },
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Periodic upkeep: old endings are forgotten.
    pub fn on_tick(&mut self, now: DateTime<Utc>) {
        self.ended.retain(|_, at| now - *at < ENDED_MEMORY);
    }

    /// True when the session ended (done, kill, session_end) within the last ten minutes.
    pub fn recently_ended(&self, session: &str, now: DateTime<Utc>) -> bool {
        self.ended
            .get(session)
            .is_some_and(|at| now - *at < ENDED_MEMORY)
    }

    /// The town this follows.
    pub fn town(&self) -> &Town {
        &self.town
    }

    fn started(&mut self, agent: Option<TownAgent>) -> Vec<Action> {
        let Some(agent) = agent else {
            return Vec::new();
        };
        self.ended.remove(&agent.session);
        vec![
            Action::Clear(death_key(&agent.session)),
            Action::Watch(agent),
        ]
    }

    fn ended(&mut self, session: Option<String>, now: DateTime<Utc>) -> Vec<Action> {
        let Some(session) = session else {
            return Vec::new();
        };
        self.ended.insert(session.clone(), now);
        vec![Action::Retire(session)]
    }

    fn death(&mut self, p: &Value, now: DateTime<Utc>) -> Vec<Action> {
        let Some(session) = text(p, "session").filter(|s| validate_id(s).is_ok()) else {
            return Vec::new();
        };
        if self
            .ended
            .get(session)
            .is_some_and(|at| now - *at < ENDED_MEMORY)
        {
            tracing::info!(
                session,
                "session ended after its work was done; not an incident"
            );
            return Vec::new();
        }
        let reason = text(p, "reason").unwrap_or("no reason given");
        let mut message = format!("session {session} died: {reason}");
        if let Some(agent) = text(p, "agent") {
            message = format!("{agent} ({message})");
        }
        if let Some(caller) = text(p, "caller") {
            message.push_str(&format!(" [reported by {caller}]"));
        }
        vec![Action::Raise(
            death_key(session),
            Condition {
                severity: HealthStatus::Critical,
                message,
                metadata: json!({"event": p}),
            },
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn town() -> (tempfile::TempDir, Town) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mayor")).unwrap();
        std::fs::write(
            dir.path().join("mayor/rigs.json"),
            r#"{"version":1,"rigs":{"ac":{"beads":{"prefix":"ac"}}}}"#,
        )
        .unwrap();
        let town = Town::new(dir.path());
        (dir, town)
    }

    fn event(kind: &str, actor: Option<&str>, payload: Value) -> TownEvent {
        TownEvent {
            ts: None,
            source: Some("gt".into()),
            kind: kind.into(),
            actor: actor.map(String::from),
            payload,
            visibility: None,
        }
    }

    fn t(mins: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::minutes(mins)
    }

    #[test]
    fn spawns_and_session_starts_watch_the_agent() {
        let (_d, town) = town();
        let mut l = Lifecycle::new(town);
        let actions = l.on_event(
            &event("spawn", Some("gt"), json!({"rig":"ac","polecat":"quartz"})),
            t(0),
        );
        assert!(matches!(&actions[..], [Action::Clear(k), Action::Watch(a)]
            if a.session == "ac-quartz" && k.alert_type == SESSION_DEATH));
        let actions = l.on_event(
            &event(
                "session_start",
                Some("ac/crew/max"),
                json!({"session_id":"uuid"}),
            ),
            t(0),
        );
        assert!(matches!(&actions[..], [_, Action::Watch(a)] if a.session == "ac-crew-max"));
        // Unknown rigs, hostile names and unknown types do nothing.
        assert!(
            l.on_event(
                &event("spawn", None, json!({"rig":"zz","polecat":"q"})),
                t(0)
            )
            .is_empty()
        );
        assert!(
            l.on_event(
                &event("spawn", None, json!({"rig":"ac","polecat":"../x"})),
                t(0)
            )
            .is_empty()
        );
        assert!(
            l.on_event(&event("merged", None, json!({})), t(0))
                .is_empty()
        );
    }

    #[test]
    fn endings_retire_and_a_death_after_them_is_not_an_incident() {
        let (_d, town) = town();
        let mut l = Lifecycle::new(town);
        assert_eq!(
            l.on_event(
                &event("done", Some("ac/polecats/quartz"), json!({"bead":"b-1"})),
                t(0)
            ),
            vec![Action::Retire("ac-quartz".into())]
        );
        assert!(
            l.on_event(
                &event(
                    "session_death",
                    None,
                    json!({"session":"ac-quartz","reason":"exit"})
                ),
                t(1)
            )
            .is_empty()
        );
        assert_eq!(
            l.on_event(
                &event(
                    "kill",
                    Some("gt"),
                    json!({"rig":"ac","target":"onyx","reason":"gt stop"})
                ),
                t(0)
            ),
            vec![Action::Retire("ac-onyx".into())]
        );
        assert_eq!(
            l.on_event(
                &event("session_end", None, json!({"session":"ac-crew-max"})),
                t(0)
            ),
            vec![Action::Retire("ac-crew-max".into())]
        );
        assert!(l.recently_ended("ac-quartz", t(5)));
        // Long after the done, a death is news again.
        l.on_tick(t(20));
        assert!(!l.recently_ended("ac-quartz", t(20)));
        let actions = l.on_event(
            &event("session_death", None, json!({"session":"ac-quartz"})),
            t(20),
        );
        assert!(matches!(&actions[..], [Action::Raise(k, _)] if k.resource_id == "ac-quartz"));
    }

    #[test]
    fn an_unexplained_death_raises_a_critical_alert_that_a_respawn_clears() {
        let (_d, town) = town();
        let mut l = Lifecycle::new(town);
        let actions = l.on_event(
            &event(
                "session_death",
                Some("ac/quartz"),
                json!({"session":"ac-quartz","agent":"ac/polecats/quartz","reason":"tmux server died","caller":"daemon"}),
            ),
            t(0),
        );
        let [Action::Raise(key, condition)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(key, &death_key("ac-quartz"));
        assert_eq!(condition.severity, HealthStatus::Critical);
        assert_eq!(
            condition.message,
            "ac/polecats/quartz (session ac-quartz died: tmux server died) [reported by daemon]"
        );
        let actions = l.on_event(
            &event("spawn", None, json!({"rig":"ac","polecat":"quartz"})),
            t(1),
        );
        assert_eq!(actions[0], Action::Clear(death_key("ac-quartz")));
        assert!(
            l.on_event(
                &event("session_death", None, json!({"session":"bad id!"})),
                t(0)
            )
            .is_empty()
        );
    }

    #[test]
    fn a_mass_death_is_raised() {
        let (_d, town) = town();
        let mut l = Lifecycle::new(town);
        let actions = l.on_event(
            &event(
                "mass_death",
                Some("daemon"),
                json!({"count":3,"window":"30s","sessions":["ac-a","ac-b","ac-c"],"possible_cause":"OOM"}),
            ),
            t(0),
        );
        let [Action::Raise(key, c)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(key, &mass_death_key());
        assert_eq!(
            c.message,
            "Gas Town reports 3 sessions dead within 30s: ac-a, ac-b, ac-c (possible cause: OOM)"
        );
        assert!(is_event_alert(&key.alert_type) && is_event_alert(SESSION_DEATH));
        assert!(!is_event_alert("agent_active"));
    }
}
