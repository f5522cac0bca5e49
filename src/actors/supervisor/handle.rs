//! How the rest of the daemon reaches the supervisor: its requests as methods on a small
//! cloneable handle, like [`AnalyzerHandle`](crate::actors::analyzer::AnalyzerHandle) and
//! [`WriterHandle`](crate::actors::writer::WriterHandle), so no client names the actor or its
//! messages.

use actix::Addr;

use super::{
    AddMonitor, AddOwnedMonitor, GetImpaired, GetLive, LiveInfo, RemoveMonitor, RemoveOwnedMonitor,
    Shutdown, Supervisor,
};
use crate::model::{AddOutcome, MonitorKind, MonitorSpec};

/// A cloneable way to ask the supervisor for something.
#[derive(Clone)]
pub struct SupervisorHandle(Addr<Supervisor>);

/// The error for a supervisor that no longer answers (it is shutting down).
fn unavailable(e: actix::MailboxError) -> String {
    format!("supervisor unavailable: {e}")
}

impl SupervisorHandle {
    /// The handle of a started supervisor.
    pub fn new(addr: Addr<Supervisor>) -> Self {
        SupervisorHandle(addr)
    }

    /// Adds (or replaces) a monitor: persisted, then its collector started.
    pub(crate) async fn add_monitor(&self, spec: MonitorSpec) -> Result<AddOutcome, String> {
        self.0.send(AddMonitor(spec)).await.map_err(unavailable)?
    }

    /// Removes a monitor: its collector stops, it is forgotten, its alerts resolve.
    pub(crate) async fn remove_monitor(&self, kind: MonitorKind, id: String) -> Result<(), String> {
        self.0
            .send(RemoveMonitor { kind, id })
            .await
            .map_err(unavailable)?
    }

    /// Adds or updates a monitor for its `managed_by` owner, without waiting; one someone else
    /// added is left as it is.
    pub(crate) fn add_owned_monitor(&self, spec: MonitorSpec) {
        self.0.do_send(AddOwnedMonitor(spec));
    }

    /// Applies a config reload: children rebuilt on the new settings, the config's checks.
    pub(crate) async fn reconfigured(&self, msg: super::Reconfigured) -> Result<(), String> {
        self.0.send(msg).await.map_err(unavailable)
    }

    /// Removes a monitor only if `owner` manages it, without waiting.
    pub(crate) fn remove_owned_monitor(&self, kind: MonitorKind, id: String, owner: String) {
        self.0.do_send(RemoveOwnedMonitor { kind, id, owner });
    }

    /// The monitors and every child's state. It answers only once the supervisor has started
    /// its children.
    pub async fn live(&self) -> Result<LiveInfo, String> {
        self.0.send(GetLive).await.map_err(unavailable)
    }

    /// [`SupervisorHandle::live`] with only the children that do not run now in `actors`:
    /// what the dashboard's cycle needs, without a report for every child.
    pub(crate) async fn live_impaired(&self) -> Result<LiveInfo, String> {
        self.0.send(GetImpaired).await.map_err(unavailable)
    }

    /// Asks for an orderly shutdown: collectors stop, the analyzer drains, then the daemon.
    pub fn shutdown(&self) {
        self.0.do_send(Shutdown);
    }
}
