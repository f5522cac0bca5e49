//! Machine-wide readings: CPU between two ticks, memory, and filesystem usage via statvfs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use sysinfo::{MINIMUM_CPU_UPDATE_INTERVAL, System};

use super::filesystems;
use crate::catalog::{
    CPU_USAGE_PERCENT, DISK_USAGE_PERCENT, FILESYSTEM_READONLY, INODE_USAGE_PERCENT, LOAD_PER_CORE,
    MEMORY_USAGE_PERCENT, SWAP_USAGE_PERCENT, UNIT_BOOL, UNIT_PERCENT, UNIT_RATIO,
};
use crate::model::{Measurement, ResourceType};

/// The resource id of machine-wide metrics (and of `/`).
pub const SYSTEM_ID: &str = "system";

/// Holds one `sysinfo::System` across ticks, so CPU usage covers the time between two ticks.
pub struct SystemSampler {
    sys: System,
    last_cpu_refresh: Instant,
    sampled: bool,
    /// Mount points to watch; empty means every real filesystem, found anew each cycle.
    filesystems: Vec<PathBuf>,
}

impl SystemSampler {
    /// Takes the first CPU reading now; the first sample reports usage since this moment.
    pub fn new(filesystems: Vec<PathBuf>) -> Result<Self, String> {
        let mut sys = System::new().map_err(|e| format!("cannot read system information: {e}"))?;
        sys.refresh_cpu_usage();
        Ok(SystemSampler {
            sys,
            last_cpu_refresh: Instant::now(),
            sampled: false,
            filesystems,
        })
    }

    /// CPU, memory and `/` usage. Only the first call right after `new` may block, for at most
    /// `MINIMUM_CPU_UPDATE_INTERVAL` (200 ms); run it off the event loop all the same.
    pub fn sample(&mut self) -> Vec<Measurement> {
        let since = self.last_cpu_refresh.elapsed();
        if !self.sampled && since < MINIMUM_CPU_UPDATE_INTERVAL {
            // The very first reading needs a span to measure over.
            std::thread::sleep(MINIMUM_CPU_UPDATE_INTERVAL - since);
        }
        // A refresh sooner than 200 ms silently does nothing (DESIGN.md §6): at shorter
        // intervals the reading stands until a tick 200 ms on.
        if self.last_cpu_refresh.elapsed() >= MINIMUM_CPU_UPDATE_INTERVAL {
            self.sys.refresh_cpu_usage();
            self.last_cpu_refresh = Instant::now();
        }
        self.sampled = true;
        self.sys.refresh_memory();
        let mut out = vec![Measurement::now(
            ResourceType::Cpu,
            SYSTEM_ID,
            CPU_USAGE_PERCENT,
            f64::from(self.sys.global_cpu_usage()),
            UNIT_PERCENT,
        )];
        let total = self.sys.total_memory();
        if total > 0 {
            let used = total.saturating_sub(self.sys.available_memory());
            out.push(Measurement::now(
                ResourceType::Memory,
                SYSTEM_ID,
                MEMORY_USAGE_PERCENT,
                used as f64 / total as f64 * 100.0,
                UNIT_PERCENT,
            ));
        }
        let swap = self.sys.total_swap();
        if swap > 0 {
            out.push(Measurement::now(
                ResourceType::Memory,
                SYSTEM_ID,
                SWAP_USAGE_PERCENT,
                self.sys.used_swap() as f64 / swap as f64 * 100.0,
                UNIT_PERCENT,
            ));
        }
        if let Ok(load) = System::load_average() {
            let cores = self.sys.cpus().len().max(1) as f64;
            out.push(Measurement::now(
                ResourceType::Cpu,
                SYSTEM_ID,
                LOAD_PER_CORE,
                load.one / cores,
                UNIT_RATIO,
            ));
        }
        self.filesystems(&mut out);
        out
    }
}

impl SystemSampler {
    /// Usage, inodes and read-only state of each watched filesystem. `/` is `system`; the
    /// others are named by their mount point.
    fn filesystems(&self, out: &mut Vec<Measurement>) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| filesystems::parse_mountinfo(&t))
            .unwrap_or_default();
        let points: Vec<PathBuf> = if self.filesystems.is_empty() {
            let mut real: Vec<PathBuf> = filesystems::real_filesystems(&mounts)
                .into_iter()
                .map(|m| m.mount_point)
                .collect();
            if !real.iter().any(|p| p == Path::new("/")) {
                real.insert(0, PathBuf::from("/"));
            }
            real
        } else {
            self.filesystems.clone()
        };
        for point in points {
            let id = if point == Path::new("/") {
                SYSTEM_ID.to_string()
            } else {
                point.display().to_string()
            };
            let usage = match filesystems::usage(&point) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(filesystem = %point.display(), "cannot statvfs: {e}");
                    continue;
                }
            };
            let mounted_ro = mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == point)
                .is_some_and(|m| m.read_only);
            let reading = |metric, value, unit| {
                Measurement::now(ResourceType::Filesystem, &id, metric, value, unit)
            };
            out.push(reading(
                DISK_USAGE_PERCENT,
                usage.disk_percent,
                UNIT_PERCENT,
            ));
            if let Some(inodes) = usage.inode_percent {
                out.push(reading(INODE_USAGE_PERCENT, inodes, UNIT_PERCENT));
            }
            let ro = if usage.read_only || mounted_ro {
                1.0
            } else {
                0.0
            };
            out.push(reading(FILESYSTEM_READONLY, ro, UNIT_BOOL));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_cpu_memory_and_root_disk_in_range() {
        let mut s = SystemSampler::new(Vec::new()).unwrap();
        let sample = s.sample();
        let find = |t: ResourceType, name: &str| {
            sample
                .iter()
                .find(|m| {
                    m.resource_type == t && m.resource_id == "system" && m.metric_name == name
                })
                .map(|m| m.value)
        };
        for (t, name) in [
            (ResourceType::Cpu, CPU_USAGE_PERCENT),
            (ResourceType::Memory, MEMORY_USAGE_PERCENT),
            (ResourceType::Filesystem, DISK_USAGE_PERCENT),
        ] {
            let v = find(t, name).unwrap_or_else(|| panic!("{name} missing: {sample:?}"));
            assert!((0.0..=100.0).contains(&v), "{name} {v}");
        }
        assert!(find(ResourceType::Cpu, LOAD_PER_CORE).is_some());
        assert_eq!(
            find(ResourceType::Filesystem, FILESYSTEM_READONLY),
            Some(0.0)
        );
    }
}
