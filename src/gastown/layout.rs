//! A town's layout: its rigs (`mayor/rigs.json`), their polecats and crew, the town's own
//! machinery (witness, refinery, mayor, deacon, boot, dogs), its tmux socket, and the monitors
//! that watch each of them (docs/ARCHITECTURE.md, "Gas Town layout").

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::collect::agent::pid_file_is_live;
use crate::model::{AgentOptions, MonitorSpec, WorkspaceOptions, validate_id};

/// The `managed_by` mark of monitors that follow a town.
pub(crate) const MANAGED_BY: &str = "gastown";
/// The beads prefix of a rig that does not name one (Gas Town's own default).
pub(crate) const DEFAULT_PREFIX: &str = "gt";
/// The `rig` of the town-level agents (mayor, deacon, boot, dogs), as Gas Town's boot event
/// names them.
pub(crate) const TOWN_RIG: &str = "town";
/// Gas Town's idle-polecat timeout: a polecat `working` this long with an unmoved heartbeat and
/// an idle tree is probably waiting at a prompt (`agent_stalled`).
pub(crate) const DEFAULT_STALL_AFTER_SECS: u64 = 15 * 60;

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
    /// Its key in `mayor/rigs.json`, also its directory under the town root.
    pub name: String,
    /// Its `beads.prefix` without the trailing dash (`ac`), or [`DEFAULT_PREFIX`] when unset.
    pub prefix: String,
}

/// What an agent does in the town.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A worker with a worktree under `<rig>/polecats/<name>/`.
    Polecat,
    /// A long-lived member with a clone under `<rig>/crew/<name>/`.
    Crew,
    /// A rig's watcher of its polecats (`<prefix>-witness`).
    Witness,
    /// A rig's merge queue (`<prefix>-refinery`).
    Refinery,
    /// The town's coordinator (`hq-mayor`).
    Mayor,
    /// The town's patrol (`hq-deacon`), with a heartbeat of its own.
    Deacon,
    /// The deacon's watchdog (`hq-boot`).
    Boot,
    /// A deacon helper (`hq-dog-<name>`).
    Dog,
}

impl Role {
    /// The lowercase name, as shown and stored in a monitor's `role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Polecat => "polecat",
            Role::Crew => "crew",
            Role::Witness => "witness",
            Role::Refinery => "refinery",
            Role::Mayor => "mayor",
            Role::Deacon => "deacon",
            Role::Boot => "boot",
            Role::Dog => "dog",
        }
    }

    /// True for roles with a worktree that outlives its sessions and is watched on its own.
    pub(crate) fn has_worktree(self) -> bool {
        matches!(self, Role::Polecat | Role::Crew)
    }
}

/// One agent of the town and where its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TownAgent {
    /// Its rig, or [`TOWN_RIG`] for the town-level agents.
    pub rig: String,
    /// Its own name: a polecat's, crew member's or dog's directory name, else the role's name
    /// (`witness`, `mayor`...).
    pub name: String,
    /// What it does in the town, which decides its session name and worktree.
    pub role: Role,
    /// The tmux session, which also names its pid and heartbeat files and its monitors.
    pub session: String,
    /// Where it works: a polecat's worktree, a crew clone, the witness's directory...
    pub worktree: PathBuf,
}

/// A town root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Town {
    /// The town's directory (e.g. `~/gt`), holding `mayor/rigs.json` and `.events.jsonl`.
    pub root: PathBuf,
    /// Seconds of `working` with an unmoved heartbeat and an idle tree before a polecat is
    /// reported stalled.
    pub stall_after: u64,
    /// Its tmux server's socket name, worked out once (it reads the filesystem).
    socket: String,
}

/// The tmux socket Gas Town derives for a town (internal/session/registry.go): the town
/// directory's name lowercased, every run of characters outside `[a-z0-9-]` made one `-`,
/// dashes trimmed (`default` when nothing is left), then `-` and the first 6 hex digits of the
/// SHA-256 of the canonical path.
pub(crate) fn derived_socket_name(root: &Path) -> String {
    let base = root
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut name = String::new();
    let mut in_run = false;
    for c in base.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            name.push(c);
            in_run = false;
        } else if !in_run {
            name.push('-');
            in_run = true;
        }
    }
    let name = name.trim_matches('-');
    let name = if name.is_empty() { "default" } else { name };
    // filepath.EvalSymlinks, else filepath.Abs: a clean absolute path either way.
    let canonical = std::fs::canonicalize(root)
        .or_else(|_| std::path::absolute(root))
        .unwrap_or_else(|_| root.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hex: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}-{hex}")
}

/// The socket the town's sessions run on: `GT_TMUX_SOCKET` when set to a name (unset, empty,
/// `default` and `auto` mean the derived one, as in Gas Town), else [`derived_socket_name`].
pub(crate) fn socket_name(root: &Path, env: Option<&str>) -> String {
    match env {
        None | Some("" | "default" | "auto") => derived_socket_name(root),
        Some(name) => name.to_string(),
    }
}

impl Town {
    /// The town at `root` (not read yet).
    pub fn new(root: &Path) -> Self {
        Town {
            root: root.to_path_buf(),
            stall_after: DEFAULT_STALL_AFTER_SECS,
            socket: socket_name(root, std::env::var("GT_TMUX_SOCKET").ok().as_deref()),
        }
    }

    /// The town a `[gastown]` table follows.
    pub fn of(settings: &crate::config::GastownSettings) -> Self {
        Town::new(&settings.root).with_stall_after(settings.stall_after)
    }

    /// The same town, with polecats stalled after `secs`.
    pub(crate) fn with_stall_after(mut self, secs: u64) -> Self {
        self.stall_after = secs;
        self
    }

    /// `<town>/.events.jsonl`.
    pub(crate) fn events_file(&self) -> PathBuf {
        self.root.join(".events.jsonl")
    }

    /// `<town>/.runtime/pids/<session>.pid`.
    pub fn pid_file(&self, session: &str) -> PathBuf {
        self.root
            .join(".runtime/pids")
            .join(format!("{session}.pid"))
    }

    /// `<town>/.runtime/heartbeats/<session>.json`.
    pub(crate) fn heartbeat_file(&self, session: &str) -> PathBuf {
        self.root
            .join(".runtime/heartbeats")
            .join(format!("{session}.json"))
    }

    /// `<town>/deacon/heartbeat.json`, written by every deacon patrol cycle.
    pub(crate) fn deacon_heartbeat_file(&self) -> PathBuf {
        self.root.join("deacon/heartbeat.json")
    }

    /// `<town>/daemon/daemon.pid`: `<pid>\n<nonce>`, removed when Gas Town's daemon stops cleanly.
    pub(crate) fn daemon_pid_file(&self) -> PathBuf {
        self.root.join("daemon/daemon.pid")
    }

    /// True while `gt down` runs: it writes `daemon/shutting-down` first and removes it last.
    pub(crate) fn shutting_down(&self) -> bool {
        self.root.join("daemon/shutting-down").exists()
    }

    /// True when the town kills a polecat's session right after `gt done`
    /// (`operational.daemon.polecat_self_terminate` in `settings/config.json`).
    pub(crate) fn polecats_self_terminate(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.root.join("settings/config.json")) else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.pointer("/operational/daemon/polecat_self_terminate")?
                    .as_bool()
            })
            .unwrap_or(false)
    }

    /// The tmux socket of this town's sessions (with `GT_TMUX_SOCKET` from our environment).
    pub fn tmux_socket(&self) -> &str {
        &self.socket
    }

    /// The sessions running on the town's tmux server; `None` when tmux does not answer.
    pub fn tmux_sessions(&self) -> Option<HashSet<String>> {
        crate::collect::agent::tmux_sessions(Some(&self.socket))
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

    /// Every agent of the town: each rig's polecats, crew, witness and refinery, then the
    /// mayor, deacon, boot and dogs.
    pub fn agents(&self) -> anyhow::Result<Vec<TownAgent>> {
        let mut agents = Vec::new();
        for rig in self.rigs()? {
            for role in [Role::Polecat, Role::Crew] {
                for name in self.members(&rig, role) {
                    agents.extend(self.agent(&rig, role, &name));
                }
            }
            for role in [Role::Witness, Role::Refinery] {
                agents.extend(self.agent(&rig, role, role.as_str()));
            }
        }
        agents.extend(self.town_agents());
        Ok(agents)
    }

    /// The mayor, deacon, boot and the dogs of `deacon/dogs/` (directories with a `.dog.json`).
    fn town_agents(&self) -> Vec<TownAgent> {
        let town = |role: Role, name: &str, session: String, worktree: PathBuf| TownAgent {
            rig: TOWN_RIG.into(),
            name: name.into(),
            role,
            session,
            worktree,
        };
        let mut agents = vec![
            town(
                Role::Mayor,
                "mayor",
                "hq-mayor".into(),
                self.root.join("mayor"),
            ),
            town(
                Role::Deacon,
                "deacon",
                "hq-deacon".into(),
                self.root.join("deacon"),
            ),
            town(
                Role::Boot,
                "boot",
                "hq-boot".into(),
                self.root.join("deacon/dogs/boot"),
            ),
        ];
        let dogs = self.root.join("deacon/dogs");
        let mut names: Vec<String> = std::fs::read_dir(&dogs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join(".dog.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != "boot" && validate_id(n).is_ok())
            .collect();
        names.sort();
        for name in names {
            let session = format!("hq-dog-{name}");
            if validate_id(&session).is_ok() {
                agents.push(town(Role::Dog, &name, session, dogs.join(&name)));
            }
        }
        agents
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

    /// The agent `name` of `rig` in `role` (`name` is the role itself for the witness and the
    /// refinery), or `None` when its session name would not be a valid id.
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

    /// `<prefix>-<name>` (crew: `<prefix>-crew-<name>`; `<prefix>-witness`,
    /// `<prefix>-refinery`), or the older `gt-<rig>-<name>` when only that one has runtime files.
    fn session_name(&self, rig: &Rig, role: Role, name: &str) -> String {
        let (current, legacy) = match role {
            Role::Crew => (
                format!("{}-crew-{name}", rig.prefix),
                format!("gt-{}-crew-{name}", rig.name),
            ),
            _ => (
                format!("{}-{name}", rig.prefix),
                format!("gt-{}-{name}", rig.name),
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
    /// is a checkout and the new one is not there; a crew member's clone: `crew/<name>/`; the
    /// witness's `witness/rig` (else `witness/`, else the rig), the refinery's `refinery/rig`
    /// (else `mayor/rig`), as Gas Town's managers look for them.
    fn worktree(&self, rig: &Rig, role: Role, name: &str) -> PathBuf {
        let rig_dir = self.root.join(&rig.name);
        let first_dir = |candidates: &[PathBuf], fallback: &Path| {
            candidates
                .iter()
                .find(|c| c.is_dir())
                .cloned()
                .unwrap_or_else(|| fallback.to_path_buf())
        };
        match role {
            Role::Polecat => {
                let home = rig_dir.join("polecats").join(name);
                let nested = home.join(&rig.name);
                if !nested.is_dir() && home.join(".git").exists() {
                    home
                } else {
                    nested
                }
            }
            Role::Witness => first_dir(
                &[rig_dir.join("witness/rig"), rig_dir.join("witness")],
                &rig_dir,
            ),
            Role::Refinery => first_dir(
                &[rig_dir.join("refinery/rig"), rig_dir.join("mayor/rig")],
                &rig_dir.join("refinery/rig"),
            ),
            _ => rig_dir.join(role_dir(role)).join(name),
        }
    }

    /// The monitors the town wants now: every polecat worktree and crew clone, and an agent for
    /// every session that runs: up in `sessions` (the town's tmux server), or with a pid file
    /// naming a live process that started when the file says. Gas Town never removes a pid file
    /// when a session ends, so a file alone proves nothing.
    pub(crate) fn wanted_monitors(
        &self,
        sessions: &HashSet<String>,
    ) -> anyhow::Result<Vec<MonitorSpec>> {
        Ok(self
            .agents()?
            .iter()
            .flat_map(|a| a.monitors(self, self.session_runs(a, sessions)))
            .collect())
    }

    /// True when the agent's session runs: in `sessions`, or behind a live pid file.
    pub(crate) fn session_runs(&self, agent: &TownAgent, sessions: &HashSet<String>) -> bool {
        sessions.contains(&agent.session) || pid_file_is_live(&self.pid_file(&agent.session))
    }

    /// Finds an agent by the address events use: `rig/polecats/name`, `rig/crew/name`,
    /// `rig/witness`, `rig/refinery`, `mayor`, `deacon`, or the older `rig/name` for a polecat.
    pub(crate) fn agent_by_address(&self, address: &str) -> Option<TownAgent> {
        let parts: Vec<&str> = address.split('/').collect();
        let (rig, role, name) = match parts.as_slice() {
            [rig, "polecats", name] => (*rig, Role::Polecat, *name),
            [rig, "crew", name] => (*rig, Role::Crew, *name),
            [rig, "witness"] => (*rig, Role::Witness, "witness"),
            [rig, "refinery"] => (*rig, Role::Refinery, "refinery"),
            ["mayor" | "deacon" | "boot"] => {
                return self.town_agents().into_iter().find(|a| a.name == parts[0]);
            }
            // The older `rig/name` names a polecat only when it has one.
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

    /// The agent whose tmux session is `session`, if the town has one.
    pub fn agent_by_session(&self, session: &str) -> Option<TownAgent> {
        self.agents()
            .ok()?
            .into_iter()
            .find(|a| a.session == session)
    }

    /// The agent `name` of the rig called `rig`, if the town has that rig.
    pub(crate) fn agent_in(&self, rig: &str, role: Role, name: &str) -> Option<TownAgent> {
        let rig = self.rigs().ok()?.into_iter().find(|r| r.name == rig)?;
        self.agent(&rig, role, name)
    }
}

fn role_dir(role: Role) -> &'static str {
    match role {
        Role::Polecat => "polecats",
        Role::Crew => "crew",
        Role::Witness => "witness",
        Role::Refinery => "refinery",
        Role::Mayor => "mayor",
        Role::Deacon => "deacon",
        Role::Boot | Role::Dog => "deacon/dogs",
    }
}

impl TownAgent {
    /// The monitors that watch it: the agent (process from the pid file, else the tmux session
    /// on the town's socket; heartbeat; worktree), and for a polecat or crew member its worktree
    /// as a workspace (with its beads database). Worktrees outlive sessions (an idle polecat, a
    /// crew clone), so the agent is watched only while its session runs (`running`).
    pub fn monitors(&self, town: &Town, running: bool) -> Vec<MonitorSpec> {
        let mut monitors = Vec::with_capacity(2);
        if running {
            monitors.push(self.agent_monitor(town));
        }
        if self.role.has_worktree() {
            monitors.push(self.workspace_monitor());
        }
        monitors
    }

    fn agent_monitor(&self, town: &Town) -> MonitorSpec {
        // Session heartbeats are written by polecats, crew and dogs (every gt command they run);
        // the deacon keeps its own.
        let heartbeat = match self.role {
            Role::Polecat | Role::Crew | Role::Dog => Some(town.heartbeat_file(&self.session)),
            Role::Deacon => Some(town.deacon_heartbeat_file()),
            _ => None,
        };
        MonitorSpec::Agent {
            id: self.session.clone(),
            options: AgentOptions {
                pid_file: Some(town.pid_file(&self.session)),
                tmux_session: Some(self.session.clone()),
                tmux_socket: Some(town.tmux_socket().to_string()),
                workspace: Some(self.worktree.clone()),
                heartbeat,
                stall_after: (self.role == Role::Polecat).then_some(town.stall_after),
                role: Some(self.role.as_str().into()),
                managed_by: Some(MANAGED_BY.into()),
                ..AgentOptions::default()
            },
        }
    }

    fn workspace_monitor(&self) -> MonitorSpec {
        MonitorSpec::Workspace {
            id: self.session.clone(),
            options: WorkspaceOptions {
                path: Some(self.worktree.clone()),
                managed_by: Some(MANAGED_BY.into()),
                ..WorkspaceOptions::default()
            },
        }
    }
}

/// What to change so the monitors follow the town: monitors to add (or update) and the
/// town-managed monitors no longer in it. Monitors an operator added are never touched.
pub(crate) fn reconcile(
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
            "ac/witness/rig",
            "ac/refinery/rig",
            "deacon/dogs/boot",
            "deacon/dogs/alpha",
            "deacon/dogs/notadog",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("deacon/dogs/alpha/.dog.json"), "{}").unwrap();
        // An old-layout polecat: a checkout directly under polecats/<name>/.
        std::fs::create_dir_all(root.join("ac/polecats/old/.git")).unwrap();
        std::fs::write(root.join("ac/polecats/pending.pending"), "").unwrap();
        let town = Town::new(root);
        (dir, town)
    }

    #[test]
    fn sockets_are_derived_as_gas_town_derives_them() {
        // ../shared/gastown/README.txt: /home/me/gt runs on `tmux -L gt-78b699`.
        assert_eq!(derived_socket_name(Path::new("/home/me/gt")), "gt-78b699");
        // registry.go's sanitizeTownName: lowercased, runs of other characters one dash, trimmed.
        let name = derived_socket_name(Path::new("/srv/My Town!!/"));
        assert!(name.starts_with("my-town-"), "{name}");
        assert_eq!(name.len(), "my-town-".len() + 6);
        assert!(derived_socket_name(Path::new("/srv/__")).starts_with("default-"));
        let root = Path::new("/home/me/gt");
        for unset in [None, Some(""), Some("default"), Some("auto")] {
            assert_eq!(socket_name(root, unset), "gt-78b699", "{unset:?}");
        }
        assert_eq!(socket_name(root, Some("mine")), "mine");
        // A symlink to the town hashes as the town itself (filepath.EvalSymlinks).
        let (_dir, town) = self::town();
        let link = town.root.parent().unwrap().join("link-to-town");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&town.root, &link).unwrap();
        let suffix = |p: &Path| {
            derived_socket_name(p)
                .rsplit('-')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(suffix(&link), suffix(&town.root));
        std::fs::remove_file(&link).unwrap();
    }

    #[test]
    fn rigs_members_and_the_towns_machinery_are_found() {
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
        let sessions: Vec<(&str, Role)> = agents
            .iter()
            .map(|a| (a.session.as_str(), a.role))
            .collect();
        assert_eq!(
            sessions,
            [
                ("ac-old", Role::Polecat),
                ("ac-onyx", Role::Polecat),
                ("ac-crew-max", Role::Crew),
                ("ac-witness", Role::Witness),
                ("ac-refinery", Role::Refinery),
                ("gt-quartz", Role::Polecat),
                ("gt-witness", Role::Witness),
                ("gt-refinery", Role::Refinery),
                ("hq-mayor", Role::Mayor),
                ("hq-deacon", Role::Deacon),
                ("hq-boot", Role::Boot),
                ("hq-dog-alpha", Role::Dog),
            ]
        );
        let find = |s: &str| agents.iter().find(|a| a.session == s).unwrap();
        assert_eq!(
            find("gt-quartz").worktree,
            town.root.join("gastown/polecats/quartz/gastown")
        );
        assert_eq!(find("ac-old").worktree, town.root.join("ac/polecats/old"));
        assert_eq!(find("ac-crew-max").worktree, town.root.join("ac/crew/max"));
        assert_eq!(
            find("ac-witness").worktree,
            town.root.join("ac/witness/rig")
        );
        assert_eq!(
            find("ac-refinery").worktree,
            town.root.join("ac/refinery/rig")
        );
        assert_eq!(
            find("gt-witness").worktree,
            town.root.join("gastown"),
            "no witness directory: the rig"
        );
        assert_eq!(
            find("hq-dog-alpha").worktree,
            town.root.join("deacon/dogs/alpha")
        );
        assert_eq!(find("hq-deacon").rig, TOWN_RIG);
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
    fn event_addresses_and_sessions_name_agents() {
        let (_dir, town) = town();
        let session = |a: &str| town.agent_by_address(a).map(|a| a.session);
        assert_eq!(
            session("gastown/polecats/quartz").as_deref(),
            Some("gt-quartz")
        );
        assert_eq!(session("ac/crew/max").as_deref(), Some("ac-crew-max"));
        assert_eq!(session("ac/onyx").as_deref(), Some("ac-onyx"));
        assert_eq!(session("ac/witness").as_deref(), Some("ac-witness"));
        assert_eq!(session("gastown/refinery").as_deref(), Some("gt-refinery"));
        assert_eq!(session("mayor").as_deref(), Some("hq-mayor"));
        assert_eq!(session("deacon").as_deref(), Some("hq-deacon"));
        assert_eq!(session("nope/polecats/x"), None);
        assert_eq!(session("ac/polecats/../../etc"), None);
        assert_eq!(session("overseer"), None);
        assert_eq!(
            town.agent_by_session("hq-dog-alpha").map(|a| a.role),
            Some(Role::Dog)
        );
        assert_eq!(town.agent_by_session("ac-nobody"), None);
    }

    #[test]
    fn a_session_runs_in_tmux_or_behind_a_live_pid_file_only() {
        let (_dir, town) = town();
        let onyx = town.agent_in("ac", Role::Polecat, "onyx").unwrap();
        let none = HashSet::new();
        assert!(!town.session_runs(&onyx, &none));
        assert!(town.session_runs(&onyx, &HashSet::from(["ac-onyx".to_string()])));
        std::fs::create_dir_all(town.root.join(".runtime/pids")).unwrap();
        // Gas Town never removes a pid file when its session ends: one naming a dead process
        // (this fixture's pid, from April) is a stale runtime file.
        std::fs::write(town.pid_file("ac-onyx"), "48213|Thu Apr 30 09:00:18 2026\n").unwrap();
        assert!(!town.session_runs(&onyx, &none));
        // Our own pid, with a start time that is not ours: reused, so not the session either.
        let me = std::process::id();
        std::fs::write(
            town.pid_file("ac-onyx"),
            format!("{me}|Thu Apr 30 09:00:18 2026\n"),
        )
        .unwrap();
        assert!(!town.session_runs(&onyx, &none));
        std::fs::write(town.pid_file("ac-onyx"), format!("{me}\n")).unwrap();
        assert!(town.session_runs(&onyx, &none), "a bare live pid");
        let wanted = town.wanted_monitors(&none).unwrap();
        assert!(
            wanted
                .iter()
                .any(|m| m.kind() == crate::model::MonitorKind::Agent && m.id() == "ac-onyx")
        );
    }

    #[test]
    fn monitors_follow_the_town_and_leave_operators_alone() {
        let (_dir, town) = town();
        let town = town.with_stall_after(600);
        let quartz = town.agent_in("gastown", Role::Polecat, "quartz").unwrap();
        assert_eq!(
            quartz.monitors(&town, false).len(),
            1,
            "no session: a worktree only"
        );
        let [agent, workspace] =
            <[MonitorSpec; 2]>::try_from(quartz.monitors(&town, true)).unwrap();
        let MonitorSpec::Agent { options, .. } = &agent else {
            panic!()
        };
        assert_eq!(
            options.pid_file,
            Some(town.root.join(".runtime/pids/gt-quartz.pid"))
        );
        assert_eq!(options.tmux_session.as_deref(), Some("gt-quartz"));
        assert_eq!(options.tmux_socket.as_deref(), Some(town.tmux_socket()));
        assert_eq!(
            options.heartbeat,
            Some(town.root.join(".runtime/heartbeats/gt-quartz.json"))
        );
        assert_eq!(options.stall_after, Some(600));
        assert_eq!(options.role.as_deref(), Some("polecat"));
        options.validate().unwrap();
        assert_eq!(workspace.id(), "gt-quartz");
        // The witness: an agent only, no stall watch, no heartbeat of its own.
        let witness = town.agent_in("ac", Role::Witness, "witness").unwrap();
        let monitors = witness.monitors(&town, true);
        let [MonitorSpec::Agent { options, .. }] = &monitors[..] else {
            panic!("{monitors:?}")
        };
        assert_eq!(
            (options.stall_after, options.heartbeat.as_ref()),
            (None, None)
        );
        // The deacon's heartbeat is deacon/heartbeat.json.
        let deacon = town.agent_by_session("hq-deacon").unwrap();
        let [MonitorSpec::Agent { options, .. }] = &deacon.monitors(&town, true)[..] else {
            panic!()
        };
        assert_eq!(
            options.heartbeat,
            Some(town.root.join("deacon/heartbeat.json"))
        );

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

    #[test]
    fn the_shutdown_sentinel_and_self_termination_are_read() {
        let (_dir, town) = town();
        assert!(!town.shutting_down() && !town.polecats_self_terminate());
        std::fs::create_dir_all(town.root.join("daemon")).unwrap();
        std::fs::write(town.root.join("daemon/shutting-down"), "4242").unwrap();
        assert!(town.shutting_down());
        std::fs::create_dir_all(town.root.join("settings")).unwrap();
        std::fs::write(
            town.root.join("settings/config.json"),
            r#"{"type":"town-settings","operational":{"daemon":{"polecat_self_terminate":true}}}"#,
        )
        .unwrap();
        assert!(town.polecats_self_terminate());
    }
}
