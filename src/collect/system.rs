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
pub(crate) const SYSTEM_ID: &str = "system";

/// Holds one `sysinfo::System` across ticks, so CPU usage covers the time between two ticks.
pub(crate) struct SystemSampler {
    sys: System,
    last_cpu_refresh: Instant,
    sampled: bool,
    /// Mount points to watch; empty means every real filesystem, found anew each cycle.
    filesystems: Vec<PathBuf>,
    statvfs: StatvfsGuard,
    /// The last `/proc/self/mountinfo` read and what it parsed to: parsed again only when it
    /// changes.
    mountinfo: (Vec<u8>, Vec<filesystems::Mount>),
}

/// Runs `statvfs` with a time limit: a dead network mount blocks it for ever, and must not take
/// the CPU and memory readings down with it. At most one call per mount point is outstanding.
#[derive(Default)]
struct StatvfsGuard {
    hung: std::collections::HashMap<
        PathBuf,
        std::sync::mpsc::Receiver<nix::Result<filesystems::FsUsage>>,
    >,
}

/// How long one `statvfs` may take.
const STATVFS_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Local disk (and memory) filesystems, whose `statvfs` answers from counters in memory and
/// cannot hang: called directly, without a thread to time it (a thread hand-off costs more
/// than the call). Network, FUSE and anything else go through the guard.
const NEVER_HANG: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "exfat", "ntfs3", "tmpfs",
];

impl StatvfsGuard {
    /// The usage of `point` (a filesystem of type `fstype`), or `None` while a call for it
    /// hangs.
    fn usage(&mut self, point: &Path, fstype: &str) -> Option<nix::Result<filesystems::FsUsage>> {
        if NEVER_HANG.contains(&fstype) && !self.hung.contains_key(point) {
            return Some(filesystems::usage(point));
        }
        if let Some(rx) = self.hung.get(point) {
            return match rx.try_recv() {
                Ok(result) => {
                    self.hung.remove(point);
                    tracing::info!(filesystem = %point.display(), "filesystem answers again");
                    Some(result)
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.hung.remove(point);
                    None
                }
            };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let path = point.to_path_buf();
        std::thread::Builder::new()
            .name("statvfs".into())
            .spawn(move || {
                let _ = tx.send(filesystems::usage(&path));
            })
            .ok()?;
        match rx.recv_timeout(STATVFS_LIMIT) {
            Ok(result) => Some(result),
            Err(_) => {
                tracing::warn!(filesystem = %point.display(), "statvfs hangs; skipping this filesystem until it answers");
                self.hung.insert(point.to_path_buf(), rx);
                None
            }
        }
    }
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
            statvfs: StatvfsGuard::default(),
            mountinfo: Default::default(),
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
        // A refresh sooner than 200 ms silently does nothing (docs/ARCHITECTURE.md, "sysinfo
        // 200 ms minimum refresh"): at shorter intervals the reading stands until a tick 200 ms on.
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
    fn filesystems(&mut self, out: &mut Vec<Measurement>) {
        let raw = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        if raw != self.mountinfo.0 {
            self.mountinfo.1 = filesystems::parse_mountinfo(&raw);
            self.mountinfo.0 = raw;
        }
        let mounts = &self.mountinfo.1;
        let points: Vec<PathBuf> = if self.filesystems.is_empty() {
            let mut real: Vec<PathBuf> = filesystems::real_filesystems(mounts)
                .into_iter()
                .map(|m| m.mount_point)
                .collect();
            if !real.iter().any(|p| p == Path::new("/")) {
                real.insert(0, PathBuf::from("/"));
            }
            real
        } else {
            // A configured mount point that is not mounted would report its parent's numbers.
            let (mounted, missing): (Vec<PathBuf>, Vec<PathBuf>) = self
                .filesystems
                .iter()
                .cloned()
                .partition(|p| mounts.iter().any(|m| &m.mount_point == p));
            for p in missing {
                tracing::warn!(filesystem = %p.display(), "configured filesystem is not mounted");
            }
            mounted
        };
        for point in points {
            let id = if point == Path::new("/") {
                SYSTEM_ID.to_string()
            } else {
                point.display().to_string()
            };
            let mount = mounts.iter().rev().find(|m| m.mount_point == point);
            let fstype = mount.map_or("", |m| m.fstype.as_str());
            let usage = match self.statvfs.usage(&point, fstype) {
                Some(Ok(u)) => u,
                Some(Err(e)) => {
                    tracing::warn!(filesystem = %point.display(), "cannot statvfs: {e}");
                    continue;
                }
                None => continue, // Hung (a dead network mount): logged once by the guard.
            };
            let mounted_ro = mount.is_some_and(|m| m.read_only);
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
