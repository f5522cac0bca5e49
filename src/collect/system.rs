//! Machine-wide readings: CPU between two ticks, memory, and filesystem usage via statvfs.

use std::path::Path;
use std::time::Instant;

use sysinfo::{MINIMUM_CPU_UPDATE_INTERVAL, System};

use crate::catalog::{CPU_USAGE_PERCENT, DISK_USAGE_PERCENT, MEMORY_USAGE_PERCENT, UNIT_PERCENT};
use crate::model::{Measurement, ResourceType};

/// The resource id of machine-wide metrics (and of `/`).
pub const SYSTEM_ID: &str = "system";

/// Used share of the filesystem holding `path`, computed as `df` does:
/// used / (used + available to unprivileged users).
pub fn disk_usage_percent(path: &Path) -> nix::Result<f64> {
    let st = nix::sys::statvfs::statvfs(path)?;
    let frsize = st.fragment_size() as f64;
    let used = (st.blocks() as f64 - st.blocks_free() as f64) * frsize;
    let avail = st.blocks_available() as f64 * frsize;
    if used + avail <= 0.0 {
        return Ok(0.0);
    }
    Ok(used / (used + avail) * 100.0)
}

/// Holds one `sysinfo::System` across ticks, so CPU usage covers the time between two ticks.
pub struct SystemSampler {
    sys: System,
    last_cpu_refresh: Instant,
    sampled: bool,
}

impl SystemSampler {
    /// Takes the first CPU reading now; the first sample reports usage since this moment.
    pub fn new() -> Result<Self, String> {
        let mut sys = System::new().map_err(|e| format!("cannot read system information: {e}"))?;
        sys.refresh_cpu_usage();
        Ok(SystemSampler {
            sys,
            last_cpu_refresh: Instant::now(),
            sampled: false,
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
        match disk_usage_percent(Path::new("/")) {
            Ok(pct) => out.push(Measurement::now(
                ResourceType::Filesystem,
                SYSTEM_ID,
                DISK_USAGE_PERCENT,
                pct,
                UNIT_PERCENT,
            )),
            Err(e) => tracing::warn!("cannot statvfs /: {e}"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_cpu_memory_and_root_disk_in_range() {
        let mut s = SystemSampler::new().unwrap();
        let sample = s.sample();
        let names: Vec<_> = sample.iter().map(|m| m.metric_name.as_ref()).collect();
        assert_eq!(
            names,
            [CPU_USAGE_PERCENT, MEMORY_USAGE_PERCENT, DISK_USAGE_PERCENT]
        );
        for m in &sample {
            assert_eq!(m.resource_id, "system");
            assert!((0.0..=100.0).contains(&m.value), "{m:?}");
        }
        assert_eq!(sample[0].resource_type, ResourceType::Cpu);
        assert_eq!(sample[1].resource_type, ResourceType::Memory);
        assert_eq!(sample[2].resource_type, ResourceType::Filesystem);
    }
}
