//! The measuring itself, free of actors: each probe turns one resource into measurements.

pub mod dirwalk;
pub mod git;
pub mod process;
pub mod system;

use std::path::PathBuf;
use std::time::Duration;

use crate::catalog::{
    AGENT_ACTIVE, AGENT_CPU_PERCENT, AGENT_MEMORY_MB, GIT_REPOSITORY_VALID, UNIT_BOOL, UNIT_COUNT,
    UNIT_MB, UNIT_PERCENT, WORKSPACE_EXISTS, WORKSPACE_FILE_COUNT, WORKSPACE_READABLE,
    WORKSPACE_SCAN_COMPLETE, WORKSPACE_SIZE_MB,
};
use crate::config::Settings;
use crate::model::{Measurement, MonitorSpec, ResourceType};
use dirwalk::{DirSizer, SizeReading};
use process::{Machine, TreeSampler};

/// Something that can be measured once per cycle. `measure` may block (it runs on a blocking
/// thread), and keeps whatever history it needs between calls.
pub trait Probe: Send + 'static {
    /// One cycle's readings.
    fn measure(&mut self) -> Vec<Measurement>;
}

/// How long directory walks may take.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// How long one cycle waits for a walk before reporting the last good size.
    pub wait: Duration,
    /// When a walk gives up altogether.
    pub cap: Duration,
}

impl WalkLimits {
    /// Limits from the settings: a cycle waits up to half an interval (at most 5 s, at most the
    /// cap) for a walk; walks give up at `walk_time_cap`.
    pub fn from_settings(settings: &Settings) -> Self {
        let cap = settings.walk_time_cap;
        WalkLimits {
            wait: (settings.interval / 2).min(Duration::from_secs(5)).min(cap),
            cap,
        }
    }
}

fn flag(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

/// Machine-wide CPU, memory and `/` usage.
pub struct SystemProbe {
    sampler: system::SystemSampler,
}

impl SystemProbe {
    /// Primes the CPU counters.
    pub fn new() -> Result<Self, String> {
        Ok(SystemProbe {
            sampler: system::SystemSampler::new()?,
        })
    }
}

impl Probe for SystemProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        self.sampler.sample()
    }
}

/// One agent: its process tree (when it has a pid) and its workspace.
pub struct AgentProbe {
    id: String,
    pid: Option<u32>,
    workspace: PathBuf,
    tree: TreeSampler,
    sizer: DirSizer,
    limits: WalkLimits,
}

impl AgentProbe {
    /// A probe for agent `id`, watching `pid` if given and its `workspace`.
    pub fn new(id: &str, pid: Option<u32>, workspace: PathBuf, limits: WalkLimits) -> Self {
        AgentProbe {
            id: id.to_string(),
            pid,
            workspace,
            tree: TreeSampler::new(Machine::current()),
            sizer: DirSizer::new(limits.cap),
            limits,
        }
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        Measurement::now(ResourceType::Agent, &self.id, metric, value, unit)
    }
}

impl Probe for AgentProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let mut out = Vec::with_capacity(4);
        let workspace_exists = self.workspace.is_dir();
        match self.pid {
            Some(pid) => {
                let sample = self.tree.sample(pid);
                out.push(self.reading(AGENT_ACTIVE, flag(sample.alive), UNIT_BOOL));
                if let Some(cpu) = sample.cpu_percent {
                    out.push(self.reading(AGENT_CPU_PERCENT, cpu, UNIT_PERCENT));
                    out.push(self.reading(AGENT_MEMORY_MB, sample.memory_mb, UNIT_MB));
                }
            }
            // The original's rule: without a process to watch, an agent is alive while its
            // workspace exists.
            None => out.push(self.reading(AGENT_ACTIVE, flag(workspace_exists), UNIT_BOOL)),
        }
        if workspace_exists
            && let SizeReading::Known(stats) = self.sizer.poll(&self.workspace, self.limits.wait)
        {
            out.push(self.reading(WORKSPACE_SIZE_MB, stats.megabytes(), UNIT_MB));
        }
        out
    }
}

/// One workspace directory: existence, size and git health.
pub struct WorkspaceProbe {
    id: String,
    path: PathBuf,
    sizer: DirSizer,
    limits: WalkLimits,
}

impl WorkspaceProbe {
    /// A probe for workspace `id` at `path`.
    pub fn new(id: &str, path: PathBuf, limits: WalkLimits) -> Self {
        WorkspaceProbe {
            id: id.to_string(),
            path,
            sizer: DirSizer::new(limits.cap),
            limits,
        }
    }

    fn reading(&self, metric: &'static str, value: f64, unit: &'static str) -> Measurement {
        Measurement::now(ResourceType::Workspace, &self.id, metric, value, unit)
    }
}

impl Probe for WorkspaceProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        let exists = self.path.is_dir();
        let mut out = vec![self.reading(WORKSPACE_EXISTS, flag(exists), UNIT_BOOL)];
        if !exists {
            return out;
        }
        match self.sizer.poll(&self.path, self.limits.wait) {
            SizeReading::Known(stats) => {
                out.push(self.reading(WORKSPACE_READABLE, 1.0, UNIT_BOOL));
                out.push(self.reading(WORKSPACE_SIZE_MB, stats.megabytes(), UNIT_MB));
                out.push(self.reading(WORKSPACE_FILE_COUNT, stats.files as f64, UNIT_COUNT));
            }
            SizeReading::Pending => {}
            SizeReading::Failed(e) => {
                tracing::warn!(workspace = %self.id, path = %self.path.display(), "cannot read workspace: {e}");
                out.push(self.reading(WORKSPACE_READABLE, 0.0, UNIT_BOOL));
            }
        }
        let complete = !self.sizer.timed_out();
        out.push(self.reading(WORKSPACE_SCAN_COMPLETE, flag(complete), UNIT_BOOL));
        if let Some(valid) = git::repository_valid(&self.path) {
            out.push(self.reading(GIT_REPOSITORY_VALID, flag(valid), UNIT_BOOL));
        }
        out
    }
}

/// The probe for a monitor, with default paths resolved from `settings`.
pub fn probe_for(spec: &MonitorSpec, settings: &Settings, limits: WalkLimits) -> Box<dyn Probe> {
    match spec {
        MonitorSpec::Agent { id, options } => {
            let workspace = options
                .workspace
                .clone()
                .unwrap_or_else(|| settings.default_agent_workspace(id));
            Box::new(AgentProbe::new(id, options.pid, workspace, limits))
        }
        MonitorSpec::Workspace { id, options } => {
            let path = options
                .path
                .clone()
                .unwrap_or_else(|| settings.default_workspace_path(id));
            Box::new(WorkspaceProbe::new(id, path, limits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> WalkLimits {
        WalkLimits {
            wait: Duration::from_secs(10),
            cap: Duration::from_secs(10),
        }
    }

    fn value(ms: &[Measurement], name: &str) -> Option<f64> {
        ms.iter().find(|m| m.metric_name == name).map(|m| m.value)
    }

    #[test]
    fn workspace_probe_reports_existence_size_and_git() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("w1");
        let mut probe = WorkspaceProbe::new("w1", ws.clone(), limits());
        let missing = probe.measure();
        assert_eq!(value(&missing, WORKSPACE_EXISTS), Some(0.0));
        assert_eq!(missing.len(), 1);

        std::fs::create_dir_all(ws.join(".git")).unwrap();
        std::fs::write(ws.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(ws.join("data"), vec![0u8; 2 * 1024 * 1024]).unwrap();
        let present = probe.measure();
        assert_eq!(value(&present, WORKSPACE_EXISTS), Some(1.0));
        let size = value(&present, WORKSPACE_SIZE_MB).unwrap();
        assert!((2.0..2.01).contains(&size), "{size}");
        assert_eq!(value(&present, GIT_REPOSITORY_VALID), Some(1.0));
        assert!(
            present
                .iter()
                .all(|m| m.resource_type == ResourceType::Workspace)
        );
    }

    #[test]
    fn agent_without_pid_is_active_while_its_workspace_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = AgentProbe::new("a1", None, dir.path().join("ws"), limits());
        assert_eq!(value(&probe.measure(), AGENT_ACTIVE), Some(0.0));
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        let ms = probe.measure();
        assert_eq!(value(&ms, AGENT_ACTIVE), Some(1.0));
        assert_eq!(value(&ms, WORKSPACE_SIZE_MB), Some(0.0));
        assert_eq!(value(&ms, AGENT_CPU_PERCENT), None);
    }

    #[test]
    fn agent_with_pid_follows_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = process::tests::spawn_sleep();
        let mut probe = AgentProbe::new("a1", Some(child.id()), dir.path().into(), limits());
        let ms = probe.measure();
        assert_eq!(value(&ms, AGENT_ACTIVE), Some(1.0));
        assert!(value(&ms, AGENT_MEMORY_MB).unwrap() > 0.0);
        assert!(value(&ms, AGENT_CPU_PERCENT).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        let ms = probe.measure();
        assert_eq!(value(&ms, AGENT_ACTIVE), Some(0.0));
        assert_eq!(value(&ms, AGENT_MEMORY_MB), None);
    }
}
