//! What a town's events and its sessions' liveness mean for monitoring: which agents to start
//! watching, which to retire quietly, and which deaths are incidents. Pure: the Gas Town actor
//! carries the actions out.
//!
//! Gas Town logs `session_death` for crashes *and* for deliberate ends (its idle reaper, `gt
//! down`, doctor cleanups), and many deliberate ends log nothing at all (`gt crew stop`, `gt
//! polecat nuke`, dog and boot runs, the daemon's restarts, docked rigs). So the incident is
//! Gas Town's own crash report; a session health-monitor sees die without a word is retired
//! quietly once its death is confirmed (`death_confirm` apart, by the readings' own times), after
//! the usual last check for orphans. What watches for crashes is watched in turn: a dead Gas Town
//! daemon is critical.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::events::TownEvent;
use super::layout::{Role, Town, TownAgent};
use crate::alerts::Condition;
use crate::model::{AlertKey, HealthStatus, ResourceType, validate_id};

/// Alert type of a session that died without a deliberate end.
pub(crate) const SESSION_DEATH: &str = "session_death";
/// Alert type of a mass death Gas Town reports.
pub(crate) const MASS_DEATH: &str = "mass_death";
/// The resource town-wide alerts and metrics are raised on.
pub(crate) const TOWN_RESOURCE: &str = "gastown";
/// A death this soon after a deliberate end (reap, shutdown, cleanup) is that end, not news.
const ENDED_MEMORY: Duration = Duration::minutes(10);
/// How long after `gt done` a death can be the town's self-termination (it kills 3 s later).
const DONE_MEMORY: Duration = Duration::minutes(2);
/// Death alerts about sessions nobody watches resolve on their own after this long: they report
/// an event, not a state. A watched session's death alert lasts while it stays dead.
pub(crate) const EVENT_ALERT_HOLD: Duration = Duration::minutes(30);

/// True for the alert types raised from town events.
pub(crate) fn is_event_alert(alert_type: &str) -> bool {
    alert_type == SESSION_DEATH || alert_type == MASS_DEATH
}

/// Why Gas Town says a session died: `caller` and `reason` of its `session_death` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeathCause {
    /// The daemon's health check found it dead with work on its hook: the incident.
    Crash,
    /// The daemon's idle reaper killed it, 15 minutes or more after its last activity.
    IdleReap,
    /// `gt down` stopped it.
    Shutdown,
    /// `gt doctor` cleaned up a zombie or orphan session.
    Cleanup,
    /// An older gt's `self-clean: done means idle`.
    SelfClean,
    /// Anything else: treated as a crash, which is the safe side.
    Unknown,
}

impl DeathCause {
    /// Reads a `session_death` payload's caller and reason (Gas Town 1.0.1: daemon.go:2577 and
    /// :2838, session/town.go:68, doctor/zombie_check.go:135 and orphan_check.go:150).
    pub(crate) fn classify(caller: Option<&str>, reason: Option<&str>) -> DeathCause {
        let reason = reason.unwrap_or("");
        match caller.unwrap_or("") {
            "daemon" if reason.starts_with("idle-reap:") => DeathCause::IdleReap,
            "daemon" if reason.starts_with("crash") => DeathCause::Crash,
            "gt down" => DeathCause::Shutdown,
            "gt doctor" if reason.ends_with("cleanup") => DeathCause::Cleanup,
            _ if reason.starts_with("self-clean:") => DeathCause::SelfClean,
            _ => DeathCause::Unknown,
        }
    }

    /// The ending a deliberate death is, or `None` for a crash (known or presumed).
    pub fn ending(self) -> Option<Ending> {
        match self {
            DeathCause::IdleReap => Some(Ending::IdleReap),
            DeathCause::Shutdown => Some(Ending::Shutdown),
            DeathCause::Cleanup => Some(Ending::Cleanup),
            DeathCause::SelfClean => Some(Ending::SelfTerminate),
            DeathCause::Crash | DeathCause::Unknown => None,
        }
    }
}

/// A deliberate end of a session: it is retired quietly, after a last check for orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Reaped when idle.
    IdleReap,
    /// `gt down` (its `session_death`, its `halt`, or a death while it runs).
    Shutdown,
    /// A doctor cleanup.
    Cleanup,
    /// Killed right after `gt done` (`polecat_self_terminate`).
    SelfTerminate,
    /// A `kill` event (only `gt activity emit kill` writes one).
    Kill,
    /// A `session_end` event (declared by Gas Town, never written).
    SessionEnd,
    /// Its process is gone and Gas Town said nothing: many deliberate ends log nothing, and a
    /// crash is reported by Gas Town's own health check, which still raises it if it comes.
    Unannounced,
}

impl Ending {
    /// How logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::IdleReap => "idle reap",
            Ending::Shutdown => "gt down",
            Ending::Cleanup => "doctor cleanup",
            Ending::SelfTerminate => "self-termination after gt done",
            Ending::Kill => "kill",
            Ending::SessionEnd => "session end",
            Ending::Unannounced => "ended without a word from Gas Town",
        }
    }

    /// True when Gas Town (or its operator) meant it: a crash report after it is that end.
    pub fn deliberate(self) -> bool {
        self != Ending::Unannounced
    }
}

/// The polecats that ran `gt done` and have not been given work since: idle. Gas Town resets a
/// session's heartbeat to `working` on every gt sub-command, so an idle polecat reads `working`,
/// unmoved and quiet, exactly like a stalled one. Shared with the agent probes.
pub(crate) type IdleSessions = Arc<RwLock<HashSet<String>>>;

/// True when `session` is in `idle`.
pub(crate) fn is_idle(idle: &IdleSessions, session: &str) -> bool {
    idle.read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(session)
}

/// One thing to do about the town.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Watch this agent (and its worktree); a new session gets a grace period.
    Watch(TownAgent),
    /// The session ended deliberately: stop watching it once a last check finds no orphans.
    Retire(String, Ending),
    /// Raise a condition alert.
    Raise(AlertKey, Condition),
    /// Resolve a condition alert.
    Clear(AlertKey),
}

/// The key of a session's death alert.
pub(crate) fn death_key(session: &str) -> AlertKey {
    AlertKey {
        resource_type: ResourceType::Agent,
        resource_id: session.to_string(),
        alert_type: SESSION_DEATH.into(),
    }
}

/// The key of the town's mass-death alert.
pub(crate) fn mass_death_key() -> AlertKey {
    AlertKey {
        resource_type: ResourceType::Agent,
        resource_id: TOWN_RESOURCE.into(),
        alert_type: MASS_DEATH.into(),
    }
}

/// What is known of one watched session's liveness.
#[derive(Debug, Default, Clone)]
struct Liveness {
    /// Seen alive since this daemon started: only then is its death news.
    seen_alive: bool,
    /// The time of the first reading that found it dead, while it stays dead.
    dead_since: Option<DateTime<Utc>>,
    /// Gas Town reported it crashed, and it has not run since.
    incident: bool,
}

/// Memory across events and observations.
#[derive(Debug)]
pub struct Lifecycle {
    town: Town,
    death_confirm: Duration,
    spawn_grace: Duration,
    /// Ends, recent, and how.
    ended: HashMap<String, (DateTime<Utc>, Ending)>,
    /// `gt done`, recent: a death then may be the town's self-termination.
    done: HashMap<String, DateTime<Utc>>,
    /// Done and not given work since.
    idle: IdleSessions,
    /// Sessions an event started, and when.
    starting: HashMap<String, DateTime<Utc>>,
    sessions: HashMap<String, Liveness>,
    /// When `gt down`'s sentinel was last seen.
    shutdown_seen: Option<DateTime<Utc>>,
    /// The town kills a polecat's session right after `gt done`.
    self_terminate: bool,
}

fn text<'a>(payload: &'a Value, key: &str) -> Option<&'a str> {
    payload
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Lifecycle {
    /// Lifecycle tracking for `town`: a watched session is dead once two readings
    /// `death_confirm` apart say so; one an event started is given `spawn_grace` to show its
    /// process.
    pub fn new(
        town: Town,
        death_confirm: std::time::Duration,
        spawn_grace: std::time::Duration,
    ) -> Self {
        let duration = |d, default| Duration::from_std(d).unwrap_or(Duration::seconds(default));
        Lifecycle {
            town,
            death_confirm: duration(death_confirm, 10),
            spawn_grace: duration(spawn_grace, 120),
            ended: HashMap::new(),
            done: HashMap::new(),
            idle: IdleSessions::default(),
            starting: HashMap::new(),
            sessions: HashMap::new(),
            shutdown_seen: None,
            self_terminate: false,
        }
    }

    /// The idle polecats, shared with the probes that judge stalls.
    pub fn idle_sessions(&self) -> IdleSessions {
        self.idle.clone()
    }

    fn set_idle(&self, session: &str, idle: bool) {
        let mut set = self.idle.write().unwrap_or_else(PoisonError::into_inner);
        if idle {
            set.insert(session.to_string());
        } else {
            set.remove(session);
        }
    }

    /// The town this follows.
    pub fn town(&self) -> &Town {
        &self.town
    }

    /// The actions one event calls for ([`read_event`] then [`Lifecycle::apply`]).
    pub fn on_event(&mut self, event: &TownEvent, now: DateTime<Utc>) -> Vec<Action> {
        let fact = read_event(&self.town, event);
        self.apply(fact, now)
    }

    /// The actions one fact calls for.
    pub fn apply(&mut self, fact: TownFact, now: DateTime<Utc>) -> Vec<Action> {
        match fact {
            TownFact::Started(agent) => self.started(agent, now),
            // The polecat goes idle and keeps its session and worktree for its next task.
            TownFact::Done(session) => {
                self.set_idle(&session, true);
                self.done.insert(session, now);
                Vec::new()
            }
            TownFact::Ended(session, ending) => self.end(Some(session), ending, now),
            TownFact::Died { session, payload } => self.death(&session, &payload, now),
            TownFact::MassDeath(condition) => vec![Action::Raise(mass_death_key(), condition)],
            TownFact::Halted(sessions) => sessions
                .into_iter()
                .flat_map(|s| self.end(Some(s), Ending::Shutdown, now))
                .collect(),
            TownFact::Nothing => Vec::new(),
        }
    }

    /// Periodic upkeep: old endings are forgotten; `shutting_down` says whether `gt down`'s
    /// sentinel is there now; `self_terminate` is the town's current setting.
    pub(crate) fn on_tick(
        &mut self,
        now: DateTime<Utc>,
        shutting_down: bool,
        self_terminate: bool,
    ) {
        self.ended.retain(|_, (at, _)| now - *at < ENDED_MEMORY);
        self.done.retain(|_, at| now - *at < DONE_MEMORY);
        let grace = self.spawn_grace;
        self.starting.retain(|_, at| now - *at < grace);
        if shutting_down {
            self.shutdown_seen = Some(now);
        }
        self.self_terminate = self_terminate;
    }

    /// True when the session ended (in any way) within the last ten minutes.
    pub(crate) fn recently_ended(&self, session: &str, now: DateTime<Utc>) -> bool {
        self.ended
            .get(session)
            .is_some_and(|(at, _)| now - *at < ENDED_MEMORY)
    }

    /// True when the session ended deliberately within the last ten minutes.
    fn recently_ended_deliberately(&self, session: &str, now: DateTime<Utc>) -> bool {
        self.ended
            .get(session)
            .is_some_and(|(at, ending)| now - *at < ENDED_MEMORY && ending.deliberate())
    }

    /// True while a rescan must keep the session's agent although no session runs: Gas Town
    /// reported it crashed, an event just started it, or a death is being confirmed.
    pub(crate) fn keep_watching(&self, session: &str) -> bool {
        self.starting.contains_key(session)
            || self
                .sessions
                .get(session)
                .is_some_and(|l| l.incident || l.dead_since.is_some())
    }

    /// The session is no longer watched: what was observed of it goes.
    pub(crate) fn forget(&mut self, session: &str) {
        self.sessions.remove(session);
    }

    /// What a reading of a watched session's process says: `alive` or not, read at `at`. A
    /// death after it was seen alive is confirmed by a reading `death_confirm` after the first
    /// dead one, then retired quietly; during `gt down`, or just after `gt done` in a
    /// self-terminating town, it is that end. A session an event just started is not dead yet.
    pub(crate) fn observe(
        &mut self,
        session: &str,
        alive: bool,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let live = self.sessions.entry(session.to_string()).or_default();
        if alive {
            live.seen_alive = true;
            live.dead_since = None;
            if std::mem::take(&mut live.incident) {
                tracing::info!(session, "town session running again");
                return vec![Action::Clear(death_key(session))];
            }
            return Vec::new();
        }
        if !live.seen_alive
            || live.incident
            || self.ended.contains_key(session)
            || self.starting.contains_key(session)
        {
            // Never seen alive in this run (a stale pid file, or it ended while we were down),
            // kept as Gas Town's incident, retiring, or not started yet.
            return Vec::new();
        }
        let dead_since = *live.dead_since.get_or_insert(at);
        let in_shutdown = self
            .shutdown_seen
            .is_some_and(|seen| now - seen <= self.death_confirm);
        if in_shutdown {
            return self.end(Some(session.to_string()), Ending::Shutdown, now);
        }
        if self.self_terminate && self.done.contains_key(session) {
            return self.end(Some(session.to_string()), Ending::SelfTerminate, now);
        }
        if at - dead_since < self.death_confirm {
            // One reading may fall in a restart's gap; Gas Town logs a reap just after its kill.
            return Vec::new();
        }
        tracing::info!(
            session,
            "town session gone and Gas Town said nothing: retiring it quietly (its own health \
             check reports crashes)"
        );
        self.end(Some(session.to_string()), Ending::Unannounced, now)
    }

    fn started(&mut self, agent: TownAgent, now: DateTime<Utc>) -> Vec<Action> {
        self.ended.remove(&agent.session);
        self.done.remove(&agent.session);
        self.set_idle(&agent.session, false);
        self.starting.insert(agent.session.clone(), now);
        if let Some(live) = self.sessions.get_mut(&agent.session) {
            live.incident = false;
            live.dead_since = None;
        }
        vec![
            Action::Clear(death_key(&agent.session)),
            Action::Watch(agent),
        ]
    }

    /// An end: retired quietly. A deliberate one also resolves a crash Gas Town reported
    /// before it named the end.
    fn end(&mut self, session: Option<String>, ending: Ending, now: DateTime<Utc>) -> Vec<Action> {
        let Some(session) = session else {
            return Vec::new();
        };
        self.ended.insert(session.clone(), (now, ending));
        self.starting.remove(&session);
        let mut actions = Vec::new();
        if let Some(live) = self.sessions.get_mut(&session) {
            live.dead_since = None;
            if ending.deliberate() && std::mem::take(&mut live.incident) {
                actions.push(Action::Clear(death_key(&session)));
            }
        }
        actions.push(Action::Retire(session, ending));
        actions
    }

    fn death(&mut self, session: &str, p: &Value, now: DateTime<Utc>) -> Vec<Action> {
        let (caller, reason) = (text(p, "caller"), text(p, "reason"));
        let cause = DeathCause::classify(caller, reason);
        if let Some(ending) = cause.ending() {
            tracing::info!(
                session,
                reason = reason.unwrap_or(""),
                caller = caller.unwrap_or(""),
                "town session ended deliberately ({}); retiring it quietly",
                ending.as_str()
            );
            return self.end(Some(session.to_string()), ending, now);
        }
        if self.recently_ended_deliberately(session, now) {
            tracing::info!(
                session,
                "a death after a deliberate end is that end; not news"
            );
            return Vec::new();
        }
        let live = self.sessions.entry(session.to_string()).or_default();
        live.incident = true;
        let mut message = format!(
            "session {session} died: {}",
            reason.unwrap_or("no reason given")
        );
        if let Some(agent) = text(p, "agent") {
            message = format!("{agent} ({message})");
        }
        if let Some(caller) = caller {
            message.push_str(&format!(" [reported by {caller}]"));
        }
        if cause == DeathCause::Unknown {
            message.push_str(" (a reason Gas Town 1.0.1 does not write: treated as a crash)");
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

/// What one event says, with the town's layout already consulted (file reads, done off any
/// lock): which agent it is about.
#[derive(Debug, Clone, PartialEq)]
pub enum TownFact {
    /// `spawn` or `session_start`: this agent's session starts.
    Started(TownAgent),
    /// `done`: the polecat is idle.
    Done(String),
    /// `kill` or `session_end` (written by nothing in Gas Town 1.0.1, but meant if they come).
    Ended(String, Ending),
    /// `session_death`, with its payload (caller and reason say which end it is).
    Died {
        /// The tmux session that died (the payload's `session`, e.g. `ac-onyx`).
        session: String,
        /// The event's whole payload: `session`, `agent`, `reason`, and `caller` (`daemon`,
        /// `gt down`...).
        payload: Value,
    },
    /// `mass_death`.
    MassDeath(Condition),
    /// `halt`: `gt down` stopped these sessions.
    Halted(Vec<String>),
    /// Nothing to do (another type, an unknown agent, a hostile name).
    Nothing,
}

/// Reads one event against the town's layout.
pub(crate) fn read_event(town: &Town, event: &TownEvent) -> TownFact {
    let p = &event.payload;
    let by_actor = || {
        event
            .actor
            .as_deref()
            .and_then(|a| town.agent_by_address(a))
    };
    let polecat = |name_key: &str| {
        text(p, "rig")
            .zip(text(p, name_key))
            .and_then(|(rig, name)| town.agent_in(rig, Role::Polecat, name))
    };
    let fact = match event.kind.as_str() {
        "spawn" => polecat("polecat").map(TownFact::Started),
        "session_start" => by_actor().map(TownFact::Started),
        "done" => by_actor().map(|a| TownFact::Done(a.session)),
        "kill" => polecat("target").map(|a| TownFact::Ended(a.session, Ending::Kill)),
        "session_end" => text(p, "session")
            .filter(|s| validate_id(s).is_ok())
            .map(String::from)
            .or_else(|| by_actor().map(|a| a.session))
            .map(|s| TownFact::Ended(s, Ending::SessionEnd)),
        "session_death" => text(p, "session")
            .filter(|s| validate_id(s).is_ok())
            .map(|session| TownFact::Died {
                session: session.to_string(),
                payload: p.clone(),
            }),
        "mass_death" => Some(TownFact::MassDeath(mass_death(event))),
        "halt" => Some(TownFact::Halted(halted_sessions(town, p))),
        _ => None,
    };
    fact.unwrap_or(TownFact::Nothing)
}

/// The sessions a `halt` names: every service `gt down` stopped (`crew` and `polecats` stand
/// for all of them).
fn halted_sessions(town: &Town, p: &Value) -> Vec<String> {
    let services: Vec<&str> = p
        .get("services")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let agents = town.agents().unwrap_or_default();
    let mut sessions: Vec<String> = Vec::new();
    for service in services {
        let role = match service {
            "crew" => Some(Role::Crew),
            "polecats" => Some(Role::Polecat),
            _ => None,
        };
        match role {
            Some(role) => sessions.extend(
                agents
                    .iter()
                    .filter(|a| a.role == role)
                    .map(|a| a.session.clone()),
            ),
            None => sessions.extend(town.agent_by_address(service).map(|a| a.session)),
        }
    }
    sessions
}

/// The alert of a `mass_death` event: 3 crash deaths within 30 s (Gas Town counts only the
/// deaths its crash detection records).
fn mass_death(event: &TownEvent) -> Condition {
    let p = &event.payload;
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
        "Gas Town reports {count} sessions crashed within {}",
        text(p, "window").unwrap_or("a short window")
    );
    if !sessions.is_empty() {
        message.push_str(&format!(": {}", sessions.join(", ")));
    }
    if let Some(cause) = text(p, "possible_cause") {
        message.push_str(&format!(" (possible cause: {cause})"));
    }
    Condition {
        severity: HealthStatus::Critical,
        message,
        metadata: json!({"event": p, "ts": event.ts}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The town of `../shared/gastown/`: rigs `acme` (prefix `ac`) and `gastown` (prefix `gt`).
    fn town() -> (tempfile::TempDir, Town) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("mayor")).unwrap();
        std::fs::write(
            dir.path().join("mayor/rigs.json"),
            r#"{"version":1,"rigs":{"acme":{"git_url":"https://github.com/me/acme.git","added_at":"2026-04-12T09:14:03.418223017-04:00","beads":{"repo":"","prefix":"ac"}},"gastown":{"git_url":"x","beads":{"repo":"","prefix":"gt"}}}}"#,
        )
        .unwrap();
        for d in ["acme/polecats/quartz/acme", "acme/crew/max", "acme/witness"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let town = Town::new(dir.path());
        (dir, town)
    }

    /// A lifecycle whose deaths are confirmed 10 s apart, with no spawn grace.
    fn lifecycle(town: Town) -> Lifecycle {
        Lifecycle::new(
            town,
            std::time::Duration::from_secs(10),
            std::time::Duration::ZERO,
        )
    }

    /// A line exactly as Gas Town writes it (`../shared/gastown/events.jsonl`).
    fn event(line: &str) -> TownEvent {
        serde_json::from_str(line).unwrap()
    }

    const SPAWN: &str = r#"{"ts":"2026-04-30T13:00:02Z","source":"gt","type":"spawn","actor":"gt","payload":{"polecat":"quartz","rig":"acme"},"visibility":"feed"}"#;
    const START_QUARTZ: &str = r#"{"ts":"2026-04-30T13:00:19Z","source":"gt","type":"session_start","actor":"acme/polecats/quartz","payload":{"actor_pid":"acme/polecats/quartz-48377","cwd":"/home/me/gt/acme/polecats/quartz/acme","role":"acme/polecats/quartz","session_id":"6f1c2a9e-4b7d-4e0a-9a51-2f3c8d7e1b40"},"visibility":"feed"}"#;
    const START_WITNESS: &str = r#"{"ts":"2026-04-30T13:00:41Z","source":"gt","type":"session_start","actor":"acme/witness","payload":{"actor_pid":"acme/witness-48512","cwd":"/home/me/gt/acme/witness","role":"acme/witness","session_id":"0b9e7f52-1c3a-4d8e-b6f2-7a4e9c1d2f36","topic":"patrol"},"visibility":"feed"}"#;
    const DONE: &str = r#"{"ts":"2026-04-30T13:41:57Z","source":"gt","type":"done","actor":"acme/polecats/quartz","payload":{"bead":"ac-x7k2","branch":"polecat/quartz/ac-x7k2@mol4w2ra"},"visibility":"feed"}"#;
    const CRASH: &str = r#"{"ts":"2026-04-30T13:45:00Z","source":"gt","type":"session_death","actor":"ac-onyx","payload":{"agent":"acme/polecats/onyx","caller":"daemon","reason":"crash detected by daemon health check","session":"ac-onyx"},"visibility":"feed"}"#;
    const REAP: &str = r#"{"ts":"2026-04-30T13:57:00Z","source":"gt","type":"session_death","actor":"acme/quartz","payload":{"agent":"acme/polecats/quartz","caller":"daemon","reason":"idle-reap: working, idle 15m3s (threshold 15m0s)","session":"ac-quartz"},"visibility":"feed"}"#;
    const ZOMBIE: &str = r#"{"ts":"2026-04-30T14:02:11Z","source":"gt","type":"session_death","actor":"ac-jasper","payload":{"agent":"unknown","caller":"gt doctor","reason":"zombie cleanup","session":"ac-jasper"},"visibility":"feed"}"#;
    const MASS: &str = r#"{"ts":"2026-04-30T14:10:33Z","source":"gt","type":"mass_death","actor":"daemon","payload":{"count":3,"sessions":["ac-onyx","ac-opal","gt-nux"],"window":"30s"},"visibility":"feed"}"#;
    const DOWN_MAYOR: &str = r#"{"ts":"2026-04-30T18:00:04Z","source":"gt","type":"session_death","actor":"hq-mayor","payload":{"agent":"Mayor","caller":"gt down","reason":"user shutdown","session":"hq-mayor"},"visibility":"feed"}"#;
    const HALT: &str = r#"{"ts":"2026-04-30T18:00:09Z","source":"gt","type":"halt","actor":"gt","payload":{"services":["dolt","daemon","deacon","boot","mayor","acme/refinery","acme/witness","gastown/refinery","gastown/witness","crew"]},"visibility":"feed"}"#;
    const KILL: &str = r#"{"ts":"2026-04-30T13:50:00Z","source":"gt","type":"kill","actor":"acme/witness","payload":{"reason":"unresponsive 30m","rig":"acme","target":"onyx"},"visibility":"feed"}"#;
    const SESSION_END: &str = r#"{"ts":"2026-04-30T13:58:00Z","source":"gt","type":"session_end","actor":"acme/polecats/quartz","payload":{"actor_pid":"acme/polecats/quartz-48377","cwd":"/home/me/gt/acme/polecats/quartz/acme","role":"acme/polecats/quartz","session_id":"6f1c2a9e-4b7d-4e0a-9a51-2f3c8d7e1b40"},"visibility":"feed"}"#;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-04-30T13:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::seconds(secs)
    }

    fn raised(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Raise(k, _) => Some((k.resource_id.clone(), k.alert_type.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn deaths_are_classified_by_caller_and_reason() {
        use DeathCause::*;
        let cases = [
            (
                Some("daemon"),
                Some("crash detected by daemon health check"),
                Crash,
            ),
            (
                Some("daemon"),
                Some("idle-reap: idle, idle 20m0s (threshold 15m0s)"),
                IdleReap,
            ),
            (Some("gt down"), Some("user shutdown"), Shutdown),
            (Some("gt down"), Some("forced shutdown"), Shutdown),
            (Some("gt doctor"), Some("zombie cleanup"), Cleanup),
            (Some("gt doctor"), Some("orphan cleanup"), Cleanup),
            (None, Some("self-clean: done means idle"), SelfClean),
            (Some("daemon"), Some("tmux server died"), Unknown),
            (None, None, Unknown),
            // A reap reason from someone else is not the daemon's reaper.
            (Some("witness"), Some("idle-reap: x"), Unknown),
        ];
        for (caller, reason, cause) in cases {
            assert_eq!(DeathCause::classify(caller, reason), cause, "{reason:?}");
        }
        assert!(Crash.ending().is_none() && Unknown.ending().is_none());
        assert_eq!(IdleReap.ending(), Some(Ending::IdleReap));
    }

    #[test]
    fn spawns_and_session_starts_watch_the_agent_and_the_witness() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        let actions = l.on_event(&event(SPAWN), t(0));
        assert!(matches!(&actions[..], [Action::Clear(k), Action::Watch(a)]
            if a.session == "ac-quartz" && k.alert_type == SESSION_DEATH));
        let actions = l.on_event(&event(START_QUARTZ), t(1));
        assert!(matches!(&actions[..], [_, Action::Watch(a)] if a.session == "ac-quartz"));
        let actions = l.on_event(&event(START_WITNESS), t(2));
        assert!(
            matches!(&actions[..], [_, Action::Watch(a)] if a.session == "ac-witness" && a.role == Role::Witness)
        );
        // Unknown rigs, hostile names and other types do nothing.
        let bad = r#"{"type":"spawn","payload":{"rig":"acme","polecat":"../x"}}"#;
        assert!(l.on_event(&event(bad), t(0)).is_empty());
        let other = r#"{"type":"spawn","payload":{"rig":"zz","polecat":"q"}}"#;
        assert!(l.on_event(&event(other), t(0)).is_empty());
        let nudge = r#"{"type":"nudge","actor":"acme/witness","payload":{"reason":"Idle 10m","rig":"acme","target":"acme/quartz"}}"#;
        assert!(l.on_event(&event(nudge), t(0)).is_empty());
    }

    /// A lifecycle whose deaths are confirmed 10 s apart and whose spawns have 60 s of grace.
    fn lifecycle_with_grace(town: Town) -> Lifecycle {
        Lifecycle::new(
            town,
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(60),
        )
    }

    #[test]
    fn done_makes_a_polecat_idle_and_a_reap_retires_it_quietly() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        l.on_event(&event(SPAWN), t(0));
        l.on_tick(t(200), false, false); // past the spawn's grace
        assert!(l.observe("ac-quartz", true, t(200), t(200)).is_empty());
        assert!(
            l.on_event(&event(DONE), t(260)).is_empty(),
            "done: idle, not ended"
        );
        assert!(is_idle(&l.idle_sessions(), "ac-quartz"));
        assert!(l.observe("ac-quartz", true, t(270), t(270)).is_empty());
        // The reaper kills first and logs after: a death seen in between waits for the reason.
        assert!(l.observe("ac-quartz", false, t(1000), t(1000)).is_empty());
        assert!(l.keep_watching("ac-quartz"), "a death being confirmed");
        assert!(l.observe("ac-quartz", false, t(1000), t(1005)).is_empty());
        assert_eq!(
            l.on_event(&event(REAP), t(1006)),
            vec![Action::Retire("ac-quartz".into(), Ending::IdleReap)]
        );
        assert!(
            l.observe("ac-quartz", false, t(1100), t(1100)).is_empty(),
            "retiring"
        );
        assert!(l.recently_ended("ac-quartz", t(1100)));
        // New work: no longer idle.
        l.on_event(&event(SPAWN), t(2000));
        assert!(!is_idle(&l.idle_sessions(), "ac-quartz"));
    }

    #[test]
    fn a_death_gas_town_says_nothing_about_is_retired_quietly_once_confirmed() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        // Dead from the first look (a stale pid file): nothing to say.
        assert!(l.observe("ac-onyx", false, t(0), t(0)).is_empty());
        assert!(l.observe("ac-onyx", false, t(60), t(60)).is_empty());
        l.observe("ac-quartz", true, t(0), t(0));
        // One dead reading in a restart's gap, then alive: nothing.
        assert!(l.observe("ac-quartz", false, t(1), t(1)).is_empty());
        assert!(l.observe("ac-quartz", true, t(2), t(2)).is_empty());
        // The same stale reading looked at again later is not a confirmation...
        assert!(l.observe("ac-quartz", false, t(30), t(30)).is_empty());
        assert!(l.observe("ac-quartz", false, t(30), t(45)).is_empty());
        // ...a reading 10 s after the first dead one is, and no alert comes of it.
        assert_eq!(
            l.observe("ac-quartz", false, t(40), t(46)),
            vec![Action::Retire("ac-quartz".into(), Ending::Unannounced)]
        );
        // Gas Town's own crash detection still makes it the incident.
        let crash = CRASH.replace("ac-onyx", "ac-quartz");
        assert_eq!(raised(&l.on_event(&event(&crash), t(180))).len(), 1);
        // A session an event just started is not dead while it gets going.
        let (_d2, town) = self::town();
        let mut l = lifecycle_with_grace(town);
        l.observe("ac-quartz", true, t(0), t(0));
        l.on_event(&event(SPAWN), t(100));
        assert!(l.observe("ac-quartz", false, t(101), t(101)).is_empty());
        assert!(l.observe("ac-quartz", false, t(150), t(150)).is_empty());
        assert!(l.keep_watching("ac-quartz"));
    }

    #[test]
    fn a_crash_gas_town_reports_stays_until_the_session_runs_again() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        l.observe("ac-onyx", true, t(0), t(0));
        let actions = l.on_event(&event(CRASH), t(180));
        assert_eq!(raised(&actions).len(), 1);
        assert!(l.keep_watching("ac-onyx"), "the incident stays watched");
        assert!(l.observe("ac-onyx", false, t(200), t(200)).is_empty());
        assert!(l.observe("ac-onyx", false, t(400), t(400)).is_empty());
        assert_eq!(
            l.observe("ac-onyx", true, t(500), t(500)),
            vec![Action::Clear(death_key("ac-onyx"))]
        );
        // A crash reported after a deliberate end is that end; after a silent one, news.
        l.on_event(
            &event(REAP.replace("ac-quartz", "ac-jade").as_str()),
            t(600),
        );
        assert!(
            l.on_event(&event(&CRASH.replace("ac-onyx", "ac-jade")), t(601))
                .is_empty()
        );
        // A deliberate end named after the crash report resolves it.
        l.observe("ac-opal", true, t(0), t(0));
        l.on_event(&event(&CRASH.replace("ac-onyx", "ac-opal")), t(700));
        let reap = REAP.replace("ac-quartz", "ac-opal");
        assert_eq!(
            l.on_event(&event(&reap), t(701)),
            vec![
                Action::Clear(death_key("ac-opal")),
                Action::Retire("ac-opal".into(), Ending::IdleReap)
            ]
        );
    }

    #[test]
    fn gastown_crash_reports_are_critical_even_for_sessions_nobody_watched() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        let actions = l.on_event(&event(CRASH), t(0));
        let [Action::Raise(key, condition)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(key, &death_key("ac-onyx"));
        assert_eq!(
            condition.message,
            "acme/polecats/onyx (session ac-onyx died: crash detected by daemon health check) [reported by daemon]"
        );
        let odd = r#"{"type":"session_death","payload":{"session":"ac-opal","reason":"tmux server died","caller":"daemon"}}"#;
        let actions = l.on_event(&event(odd), t(1));
        let [Action::Raise(_, c)] = &actions[..] else {
            panic!()
        };
        assert!(c.message.ends_with("treated as a crash)"), "{}", c.message);
        let bad = r#"{"type":"session_death","payload":{"session":"bad id!"}}"#;
        assert!(l.on_event(&event(bad), t(0)).is_empty());
    }

    #[test]
    fn cleanups_and_shutdowns_retire_quietly() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        assert_eq!(
            l.on_event(&event(ZOMBIE), t(0)),
            vec![Action::Retire("ac-jasper".into(), Ending::Cleanup)]
        );
        assert_eq!(
            l.on_event(&event(DOWN_MAYOR), t(0)),
            vec![Action::Retire("hq-mayor".into(), Ending::Shutdown)]
        );
        // The halt names the rest: crew, witnesses, refineries, the deacon and boot.
        let retired: Vec<String> = l
            .on_event(&event(HALT), t(5))
            .into_iter()
            .filter_map(|a| match a {
                Action::Retire(s, Ending::Shutdown) => Some(s),
                _ => None,
            })
            .collect();
        for s in [
            "hq-deacon",
            "hq-boot",
            "hq-mayor",
            "ac-refinery",
            "ac-witness",
            "gt-refinery",
            "gt-witness",
            "ac-crew-max",
        ] {
            assert!(retired.iter().any(|r| r == s), "{s} not in {retired:?}");
        }
        // Deaths seen while gt down's sentinel is there are part of it (`gt down -p` stops
        // polecats without a word), and so are those seen just after it went.
        l.observe("ac-quartz", true, t(10), t(10));
        l.observe("ac-onyx", true, t(10), t(10));
        l.on_tick(t(20), true, false);
        assert_eq!(
            l.observe("ac-quartz", false, t(21), t(21)),
            vec![Action::Retire("ac-quartz".into(), Ending::Shutdown)]
        );
        l.on_tick(t(22), false, false);
        assert_eq!(
            l.observe("ac-onyx", false, t(25), t(25)),
            vec![Action::Retire("ac-onyx".into(), Ending::Shutdown)]
        );
        assert!(l.observe("ac-jade", true, t(40), t(40)).is_empty());
        assert!(
            l.observe("ac-jade", false, t(41), t(41)).is_empty(),
            "long after gt down: a death to confirm"
        );
        // kill and session_end have no writer in Gas Town 1.0.1, but mean an end if they come.
        assert_eq!(
            l.on_event(&event(KILL), t(0)),
            vec![Action::Retire("ac-onyx".into(), Ending::Kill)]
        );
        assert_eq!(
            l.on_event(&event(SESSION_END), t(0)),
            vec![Action::Retire("ac-quartz".into(), Ending::SessionEnd)]
        );
    }

    #[test]
    fn a_self_terminating_town_kills_after_done_and_that_is_no_crash() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        l.on_tick(t(0), false, true);
        l.observe("ac-quartz", true, t(0), t(0));
        l.on_event(&event(DONE), t(1));
        assert_eq!(
            l.observe("ac-quartz", false, t(4), t(4)),
            vec![Action::Retire("ac-quartz".into(), Ending::SelfTerminate)]
        );
        // Without the setting the same death waits to be confirmed, and is no alert either.
        let (_d2, town) = self::town();
        let mut l = lifecycle(town);
        l.observe("ac-quartz", true, t(0), t(0));
        l.on_event(&event(DONE), t(1));
        assert!(l.observe("ac-quartz", false, t(4), t(4)).is_empty());
        assert_eq!(
            l.observe("ac-quartz", false, t(15), t(15)),
            vec![Action::Retire("ac-quartz".into(), Ending::Unannounced)]
        );
    }

    #[test]
    fn a_mass_death_is_raised() {
        let (_d, town) = town();
        let mut l = lifecycle(town);
        let actions = l.on_event(&event(MASS), t(0));
        let [Action::Raise(key, c)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(key, &mass_death_key());
        assert_eq!(
            c.message,
            "Gas Town reports 3 sessions crashed within 30s: ac-onyx, ac-opal, gt-nux"
        );
        assert!(is_event_alert(&key.alert_type) && is_event_alert(SESSION_DEATH));
        assert!(!is_event_alert("agent_active"));
    }
}
