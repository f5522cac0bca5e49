//! A town's layout: its rigs (`mayor/rigs.json`), their polecats and crew, and the monitors
//! that watch each of them (DESIGN.md §4).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::model::{AgentOptions, MonitorSpec, WorkspaceOptions, validate_id};

/// The `managed_by` mark of monitors that follow a town.
pub const MANAGED_BY: &str = "gastown";
/// The beads prefix of a rig that does not name one (Gas Town's own default).
pub const DEFAULT_PREFIX: &str = "gt";

#[derive(Debug, Deserialize)]
struct RigsFile {
    #[serde(default)]
    rigs: BTreeMap<String, RigEntry>,
}

#[derive(Debug, Deserialize)]
struct RigEntry {
    #[serde(default)]
    beads: Option<BeadsEntry>,
}

#[derive(Debug, Deserialize)]
struct BeadsEntry {
    #[serde(default)]
    prefix: Option<String>,
}

/// A rig and the prefix its session names start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rig {
    pub name: String,
    pub prefix: String,
}

/// What an agent does in its rig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A worker with a worktree under `<rig>/polecats/<name>/`.
    Polecat,
    /// A long-lived member with a clone under `<rig>/crew/<name>/`.
    Crew,
}

/// One agent of the town and where its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TownAgent {
    pub rig: String,
    pub name: String,
    pub role: Role,
    /// The tmux session, which also names its pid and heartbeat files and its monitors.
    pub session: String,
    pub worktree: PathBuf,
}

/// A town root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Town {
    pub root: PathBuf,
}

impl Town {
    /// The town at `root` (not read yet).
    pub fn new(root: &Path) -> Self {
        Town {
            root: root.to_path_buf(),
        }
    }

    /// `<town>/.events.jsonl`.
    pub fn events_file(&self) -> PathBuf {
        self.root.join(".events.jsonl")
    }

    /// `<town>/.runtime/pids/<session>.pid`.
    pub fn pid_file(&self, session: &str) -> PathBuf {
        self.root
            .join(".runtime/pids")
            .join(format!("{session}.pid"))
    }

    /// `<town>/.runtime/heartbeats/<session>.json`.
    pub fn heartbeat_file(&self, session: &str) -> PathBuf {
        self.root
            .join(".runtime/heartbeats")
            .join(format!("{session}.json"))
    }

    /// The rigs of `mayor/rigs.json`; names that are not valid ids are skipped with a warning
    /// (they become path components).
    pub fn rigs(&self) -> anyhow::Result<Vec<Rig>> {
        let path = self.root.join("mayor/rigs.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the town's rigs at {}", path.display()))?;
        let file: RigsFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a rigs file", path.display()))?;
        let mut rigs = Vec::new();
        for (name, entry) in file.rigs {
            if let Err(e) = validate_id(&name) {
                tracing::warn!("skipping rig {name:?} of {}: {e}", path.display());
                continue;
            }
            let prefix = entry
                .beads
                .and_then(|b| b.prefix)
                .map(|p| p.trim_end_matches('-').to_string())
                .filter(|p| validate_id(p).is_ok())
                .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
            rigs.push(Rig { name, prefix });
        }
        Ok(rigs)
    }

    /// Every polecat and crew member of every rig, as the layout shows them now.
    pub fn agents(&self) -> anyhow::Result<Vec<TownAgent>> {
        let mut agents = Vec::new();
        for rig in self.rigs()? {
            for role in [Role::Polecat, Role::Crew] {
                for name in self.members(&rig, role) {
                    agents.extend(self.agent(&rig, role, &name));
                }
            }
        }
        Ok(agents)
    }

    /// The names under `<rig>/polecats/` or `<rig>/crew/`: directories with valid ids, not
    /// dot-entries or `<name>.pending` reservations.
    fn members(&self, rig: &Rig, role: Role) -> Vec<String> {
        let dir = self.root.join(&rig.name).join(role_dir(role));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && validate_id(n).is_ok())
            .collect();
        names.sort();
        names
    }

    /// The agent `name` of `rig`, or `None` when its session name would not be a valid id.
    pub fn agent(&self, rig: &Rig, role: Role, name: &str) -> Option<TownAgent> {
        validate_id(name).ok()?;
        let session = self.session_name(rig, role, name);
        validate_id(&session).ok()?;
        Some(TownAgent {
            rig: rig.name.clone(),
            name: name.to_string(),
            role,
            session,
            worktree: self.worktree(rig, role, name),
        })
    }

    /// `<prefix>-<name>` (crew: `<prefix>-crew-<name>`), or the older `gt-<rig>-<name>` when
    /// only that one has runtime files.
    fn session_name(&self, rig: &Rig, role: Role, name: &str) -> String {
        let (current, legacy) = match role {
            Role::Polecat => (
                format!("{}-{name}", rig.prefix),
                format!("gt-{}-{name}", rig.name),
            ),
            Role::Crew => (
                format!("{}-crew-{name}", rig.prefix),
                format!("gt-{}-crew-{name}", rig.name),
            ),
        };
        let has_files = |s: &str| self.pid_file(s).exists() || self.heartbeat_file(s).exists();
        if !has_files(&current) && has_files(&legacy) {
            legacy
        } else {
            current
        }
    }

    /// A polecat's worktree: `polecats/<name>/<rig>/`, or the older `polecats/<name>/` when that
    /// is a checkout and the new one is not there; a crew member's clone: `crew/<name>/`.
    fn worktree(&self, rig: &Rig, role: Role, name: &str) -> PathBuf {
        let home = self.root.join(&rig.name).join(role_dir(role)).join(name);
        match role {
            Role::Crew => home,
            Role::Polecat => {
                let nested = home.join(&rig.name);
                if !nested.is_dir() && home.join(".git").exists() {
                    home
                } else {
                    nested
                }
            }
        }
    }

    /// The monitors the town wants now: every worktree, and an agent for every running session
    /// (in `sessions`, tmux's list, or with a pid file).
    pub fn wanted_monitors(
        &self,
        sessions: &std::collections::HashSet<String>,
    ) -> anyhow::Result<Vec<MonitorSpec>> {
        Ok(self
            .agents()?
            .iter()
            .flat_map(|a| a.monitors(self, sessions.contains(&a.session)))
            .collect())
    }

    /// Finds an agent by the address events use: `rig/polecats/name`, `rig/crew/name` or the
    /// older `rig/name`.
    pub fn agent_by_address(&self, address: &str) -> Option<TownAgent> {
        let parts: Vec<&str> = address.split('/').collect();
        let (rig, role, name) = match parts.as_slice() {
            [rig, "polecats", name] => (*rig, Role::Polecat, *name),
            [rig, "crew", name] => (*rig, Role::Crew, *name),
            // The older `rig/name` names a polecat only when it has one (not `rig/witness`).
            [rig, name]
                if validate_id(rig).is_ok()
                    && validate_id(name).is_ok()
                    && self.root.join(rig).join("polecats").join(name).is_dir() =>
            {
                (*rig, Role::Polecat, *name)
            }
            _ => return None,
        };
        self.agent_in(rig, role, name)
    }

    /// The agent `name` of the rig called `rig`, if the town has that rig.
    pub fn agent_in(&self, rig: &str, role: Role, name: &str) -> Option<TownAgent> {
        let rig = self.rigs().ok()?.into_iter().find(|r| r.name == rig)?;
        self.agent(&rig, role, name)
    }
}

fn role_dir(role: Role) -> &'static str {
    match role {
        Role::Polecat => "polecats",
        Role::Crew => "crew",
    }
}

impl TownAgent {
    /// The monitors that watch it: the agent (process from the pid file, else the tmux
    /// session; heartbeat; worktree) and its worktree as a workspace (with its beads database).
    /// Worktrees outlive sessions (an idle polecat, a crew clone), so it is watched as an agent
    /// only while a session runs: `running` (its tmux session is up, or an event said so), or
    /// its pid file exists (Gas Town removes it when the session ends).
    pub fn monitors(&self, town: &Town, running: bool) -> Vec<MonitorSpec> {
        let [agent, workspace] = self.both_monitors(town);
        if running || town.pid_file(&self.session).exists() {
            vec![agent, workspace]
        } else {
            vec![workspace]
        }
    }

    fn both_monitors(&self, town: &Town) -> [MonitorSpec; 2] {
        let agent = MonitorSpec::Agent {
            id: self.session.clone(),
            options: AgentOptions {
                pid_file: Some(town.pid_file(&self.session)),
                tmux_session: Some(self.session.clone()),
                workspace: Some(self.worktree.clone()),
                heartbeat: Some(town.heartbeat_file(&self.session)),
                managed_by: Some(MANAGED_BY.into()),
                ..AgentOptions::default()
            },
        };
        let workspace = MonitorSpec::Workspace {
            id: self.session.clone(),
            options: WorkspaceOptions {
                path: Some(self.worktree.clone()),
                managed_by: Some(MANAGED_BY.into()),
                ..WorkspaceOptions::default()
            },
        };
        [agent, workspace]
    }
}

/// What to change so the monitors follow the town: monitors to add (or update) and the
/// town-managed monitors no longer in it. Monitors an operator added are never touched.
pub fn reconcile(
    current: &[MonitorSpec],
    wanted: &[MonitorSpec],
) -> (Vec<MonitorSpec>, Vec<MonitorSpec>) {
    let add = wanted
        .iter()
        .filter(|w| !current.contains(w))
        .filter(|w| {
            // An operator's own monitor with the same id wins over the town's.
            !current.iter().any(|c| {
                c.kind() == w.kind() && c.id() == w.id() && c.managed_by() != Some(MANAGED_BY)
            })
        })
        .cloned()
        .collect();
    let remove = current
        .iter()
        .filter(|c| c.managed_by() == Some(MANAGED_BY))
        .filter(|c| {
            !wanted
                .iter()
                .any(|w| w.kind() == c.kind() && w.id() == c.id())
        })
        .cloned()
        .collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A town with rig `gastown` (prefix `gt-`) and rig `ac` (prefix `ac`).
    fn town() -> (tempfile::TempDir, Town) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("mayor")).unwrap();
        std::fs::write(
            root.join("mayor/rigs.json"),
            r#"{"version": 1, "rigs": {
                "gastown": {"git_url": "x", "beads": {"repo": "r", "prefix": "gt-"}},
                "ac": {"git_url": "y", "beads": {"prefix": "ac"}},
                "../evil": {"git_url": "z"}
            }}"#,
        )
        .unwrap();
        for d in [
            "gastown/polecats/quartz/gastown",
            "gastown/polecats/.hidden",
            "ac/polecats/onyx/ac",
            "ac/crew/max",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // An old-layout polecat: a checkout directly under polecats/<name>/.
        std::fs::create_dir_all(root.join("ac/polecats/old/.git")).unwrap();
        std::fs::write(root.join("ac/polecats/pending.pending"), "").unwrap();
        let town = Town::new(root);
        (dir, town)
    }

    #[test]
    fn rigs_polecats_and_crew_are_found_with_their_sessions_and_worktrees() {
        let (_dir, town) = town();
        let rigs = town.rigs().unwrap();
        assert_eq!(
            rigs,
            vec![
                Rig {
                    name: "ac".into(),
                    prefix: "ac".into()
                },
                Rig {
                    name: "gastown".into(),
                    prefix: "gt".into()
                },
            ],
            "the prefix loses its trailing dash; a rig escaping the town is skipped"
        );
        let agents = town.agents().unwrap();
        let sessions: Vec<&str> = agents.iter().map(|a| a.session.as_str()).collect();
        assert_eq!(sessions, ["ac-old", "ac-onyx", "ac-crew-max", "gt-quartz"]);
        let quartz = agents.iter().find(|a| a.name == "quartz").unwrap();
        assert_eq!(
            quartz.worktree,
            town.root.join("gastown/polecats/quartz/gastown")
        );
        let old = agents.iter().find(|a| a.name == "old").unwrap();
        assert_eq!(old.worktree, town.root.join("ac/polecats/old"));
        let max = agents.iter().find(|a| a.name == "max").unwrap();
        assert_eq!(
            (max.role, max.worktree.clone()),
            (Role::Crew, town.root.join("ac/crew/max"))
        );
    }

    #[test]
    fn legacy_session_names_are_used_when_only_they_have_runtime_files() {
        let (_dir, town) = town();
        std::fs::create_dir_all(town.root.join(".runtime/pids")).unwrap();
        std::fs::write(town.pid_file("gt-ac-onyx"), "123\n").unwrap();
        let onyx = town.agent_in("ac", Role::Polecat, "onyx").unwrap();
        assert_eq!(onyx.session, "gt-ac-onyx");
        std::fs::write(town.pid_file("ac-onyx"), "123\n").unwrap();
        assert_eq!(
            town.agent_in("ac", Role::Polecat, "onyx").unwrap().session,
            "ac-onyx"
        );
    }

    #[test]
    fn event_addresses_name_agents() {
        let (_dir, town) = town();
        assert_eq!(
            town.agent_by_address("gastown/polecats/quartz")
                .unwrap()
                .session,
            "gt-quartz"
        );
        assert_eq!(
            town.agent_by_address("ac/crew/max").unwrap().session,
            "ac-crew-max"
        );
        assert_eq!(town.agent_by_address("ac/onyx").unwrap().session, "ac-onyx");
        assert_eq!(town.agent_by_address("ac/witness"), None, "not a polecat");
        assert_eq!(town.agent_by_address("nope/polecats/x"), None);
        assert_eq!(town.agent_by_address("ac/polecats/../../etc"), None);
        assert_eq!(town.agent_by_address("mayor"), None);
    }

    #[test]
    fn monitors_follow_the_town_and_leave_operators_alone() {
        let (_dir, town) = town();
        let quartz = town.agent_in("gastown", Role::Polecat, "quartz").unwrap();
        let [agent, workspace] = quartz.both_monitors(&town);
        assert_eq!(
            quartz.monitors(&town, false).len(),
            1,
            "no session: a worktree only"
        );
        assert_eq!(quartz.monitors(&town, true).len(), 2);
        std::fs::create_dir_all(town.root.join(".runtime/pids")).unwrap();
        std::fs::write(town.pid_file("gt-quartz"), "1\n").unwrap();
        assert_eq!(
            quartz.monitors(&town, false).len(),
            2,
            "a pid file means a session"
        );
        let max = town.agent_in("ac", Role::Crew, "max").unwrap();
        assert_eq!(
            max.monitors(&town, false).len(),
            1,
            "an idle crew clone is a workspace"
        );
        let MonitorSpec::Agent { options, .. } = &agent else {
            panic!()
        };
        assert_eq!(
            options.pid_file,
            Some(town.root.join(".runtime/pids/gt-quartz.pid"))
        );
        assert_eq!(options.tmux_session.as_deref(), Some("gt-quartz"));
        assert_eq!(
            options.heartbeat,
            Some(town.root.join(".runtime/heartbeats/gt-quartz.json"))
        );
        options.validate().unwrap();
        assert_eq!(workspace.id(), "gt-quartz");

        let gone = MonitorSpec::Agent {
            id: "gt-gone".into(),
            options: AgentOptions {
                managed_by: Some(MANAGED_BY.into()),
                ..Default::default()
            },
        };
        let operators = MonitorSpec::workspace("gt-quartz");
        let current = vec![gone.clone(), operators.clone(), MonitorSpec::agent("mine")];
        let (add, remove) = reconcile(&current, &[agent.clone(), workspace]);
        assert_eq!(
            add,
            vec![agent],
            "the operator's workspace of the same id stays theirs"
        );
        assert_eq!(remove, vec![gone]);
    }
}
