//! The daemon's shared parts, wired once at start and handed to each child's factory and to the
//! control service: settings, the analyzer's and writer's handles, the notifier, the Gas Town
//! state, the cycle times and the control socket.

use std::sync::Arc;

use super::analyzer::AnalyzerHandle;
use super::collector::CycleTimes;
use super::supervisor::SupervisorParts;
use super::writer::WriterHandle;
use crate::config::Settings;

/// Everything the daemon's children and its control service share, wired once by `daemon::run`.
#[derive(Clone)]
pub struct DaemonDeps {
    /// The daemon's settings, as loaded at start.
    pub settings: Arc<Settings>,
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

impl DaemonDeps {
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
