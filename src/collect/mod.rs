//! The measuring itself, free of actors: each probe turns one resource into measurements.

pub mod agent;
pub mod dirwalk;
pub mod filesystems;
pub mod git;
pub mod process;
pub mod shared_size;
pub mod sqlite_probe;
pub mod system;
pub mod workspace;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Settings;
use crate::model::Measurement;
pub use agent::{AgentProbe, RootSource};
pub use workspace::WorkspaceProbe;

/// Something that can be measured once per cycle. `measure` may block (it runs on a blocking
/// thread), and keeps whatever history it needs between calls.
pub(crate) trait Probe: Send + 'static {
    /// One cycle's readings.
    fn measure(&mut self) -> Vec<Measurement>;

    /// Whom to poke when the kernel tells of a change to what this probe measures (see
    /// [`crate::watch`]); a probe that watches nothing ignores it.
    fn attach(&mut self, _poke: crate::watch::Poke) {}
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
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        let cap = settings.walk_time_cap;
        WalkLimits {
            wait: (settings.interval / 2).min(Duration::from_secs(5)).min(cap),
            cap,
        }
    }
}

/// 1.0 or 0.0.
pub(crate) fn flag(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

/// Machine-wide CPU, memory, swap, load and filesystems.
pub(crate) struct SystemProbe {
    sampler: system::SystemSampler,
}

impl SystemProbe {
    /// Primes the CPU counters. `filesystems` lists the mount points to watch; empty means every
    /// real filesystem.
    pub fn new(filesystems: Vec<PathBuf>) -> Result<Self, String> {
        Ok(SystemProbe {
            sampler: system::SystemSampler::new(filesystems)?,
        })
    }
}

impl Probe for SystemProbe {
    fn measure(&mut self) -> Vec<Measurement> {
        self.sampler.sample()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::*;
    use crate::model::ResourceType;

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
        let mut probe = WorkspaceProbe::new("w1", ws.clone(), Vec::new(), limits());
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
        assert_eq!(value(&present, WORKSPACE_WRITABLE), Some(1.0));
        assert!(
            std::fs::read_dir(&ws).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("probe")),
            "the writability probe leaves nothing behind"
        );
        assert!(
            present
                .iter()
                .all(|m| m.resource_type == ResourceType::Workspace)
        );
    }

    #[test]
    fn agent_without_pid_is_active_while_its_workspace_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut probe = AgentProbe::new(
            "a1",
            RootSource::None,
            dir.path().join("ws"),
            None,
            limits(),
            Duration::ZERO,
        );
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
        let mut probe = AgentProbe::new(
            "a1",
            RootSource::Pid(child.id()),
            dir.path().into(),
            None,
            limits(),
            Duration::ZERO,
        );
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
