//! The daemon's shared parts, wired once at start and handed to each child's factory and to the
//! control service: settings, the analyzer's and writer's handles, the notifier, the Gas Town
//! state, the cycle times and the control socket.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::analyzer::AnalyzerHandle;
use super::collector::CycleTimes;
use super::supervisor::SupervisorParts;
use super::writer::WriterHandle;
use crate::config::Settings;

/// Everything the daemon's children and its control service share, wired once by `daemon::run`.
#[derive(Clone)]
pub struct DaemonDeps {
    /// The daemon's settings, as loaded at start: what a reload cannot change (the database,
    /// the socket) is read here. What it can change is read from [`DaemonDeps::current`].
    pub settings: Arc<Settings>,
    /// The settings as last (re)loaded, and when.
    pub live: Arc<LiveSettings>,
    /// Where collectors send readings; outlives any one analyzer.
    pub analyzer: AnalyzerHandle,
    /// The database writer thread, for monitor changes and the analyzer's rows.
    pub writer: WriterHandle,
    /// Where alert notices go besides the log.
    pub notifier: crate::notify::Notifier,
    /// Where the Gas Town follower is, when a town is followed.
    pub town: Option<super::town::SharedTownState>,
    /// Each collector's latest cycle time, for the status document and `/metrics`.
    pub cycles: CycleTimes,
    /// The bound control socket; `None` runs without a control server (tests).
    pub listener: Option<Arc<tokio::net::UnixListener>>,
}

/// When and from what the config was last loaded, for `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigLoad {
    /// The config file; `None` when the daemon runs without one.
    pub path: Option<PathBuf>,
    /// When it was loaded (at start or by the last reload that took).
    pub loaded_at: DateTime<Utc>,
    /// The SHA-256 of the file's bytes as loaded.
    pub sha256: Option<String>,
    /// Reloads taken since start.
    pub reloads: u64,
}

/// The settings a reload replaces, shared by every part that reads them afresh.
#[derive(Debug)]
pub struct LiveSettings {
    current: RwLock<(Arc<Settings>, ConfigLoad)>,
}

impl LiveSettings {
    /// The settings loaded at start.
    pub fn new(settings: Arc<Settings>, load: ConfigLoad) -> Self {
        LiveSettings {
            current: RwLock::new((settings, load)),
        }
    }

    /// The settings in force.
    pub fn get(&self) -> Arc<Settings> {
        match self.current.read() {
            Ok(c) => c.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// When and from what they were loaded.
    pub fn load(&self) -> ConfigLoad {
        match self.current.read() {
            Ok(c) => c.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Puts reloaded settings in force.
    pub fn set(&self, settings: Arc<Settings>, load: ConfigLoad) {
        let mut c = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        *c = (settings, load);
    }
}

impl DaemonDeps {
    /// The settings in force: as loaded at start, or by the last reload.
    pub fn current(&self) -> Arc<Settings> {
        self.live.get()
    }

    /// The parts the supervisor itself uses.
    pub fn supervisor_parts(&self) -> SupervisorParts {
        SupervisorParts {
            settings: self.settings.clone(),
            analyzer: self.analyzer.clone(),
            writer: self.writer.clone(),
            cycles: self.cycles.clone(),
        }
    }
}
