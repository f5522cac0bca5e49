//! The metric catalogue: every metric's resource types, unit, default thresholds and meaning.

use crate::model::{ResourceType, Thresholds};

/// Percent.
pub(crate) const UNIT_PERCENT: &str = "%";
/// Megabytes of 1024 × 1024 bytes, as the original computed them.
pub(crate) const UNIT_MB: &str = "MB";
/// A 0/1 flag.
pub(crate) const UNIT_BOOL: &str = "bool";

/// The static description of one metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The metric's name, as stored in `health_metrics.metric_name` and used as alert type.
    pub name: &'static str,
    /// The kinds of resource it is reported for.
    pub resource_types: &'static [ResourceType],
    /// The unit of its values, one of the `UNIT_*` constants.
    pub unit: &'static str,
    /// Default thresholds; `warning > critical` means lower is worse.
    pub thresholds: Option<Thresholds>,
    /// What it measures, for people: the README's metric table shows it.
    pub description: &'static str,
}

/// The system CPU, busy share of all cores between two ticks.
pub(crate) const CPU_USAGE_PERCENT: &str = "cpu_usage_percent";
/// Memory in use (total minus available) as a share of total.
pub(crate) const MEMORY_USAGE_PERCENT: &str = "memory_usage_percent";
/// Used share of a filesystem, as `df` reports it.
pub(crate) const DISK_USAGE_PERCENT: &str = "disk_usage_percent";
/// 1 when the agent is alive.
pub(crate) const AGENT_ACTIVE: &str = "agent_active";
/// CPU of the agent's process tree.
pub(crate) const AGENT_CPU_PERCENT: &str = "agent_cpu_percent";
/// Resident memory of the agent's process tree.
pub(crate) const AGENT_MEMORY_MB: &str = "agent_memory_mb";
/// Apparent size of a workspace directory.
pub(crate) const WORKSPACE_SIZE_MB: &str = "workspace_size_mb";
/// 1 when the workspace directory exists.
pub(crate) const WORKSPACE_EXISTS: &str = "workspace_exists";
/// Files (non-directories) in a workspace.
pub(crate) const WORKSPACE_FILE_COUNT: &str = "workspace_file_count";
/// 1 when the workspace directory can be listed.
pub(crate) const WORKSPACE_READABLE: &str = "workspace_readable";
/// 1 when the latest walk of the workspace finished within its time cap.
pub(crate) const WORKSPACE_SCAN_COMPLETE: &str = "workspace_scan_complete";
/// A count.
pub(crate) const UNIT_COUNT: &str = "count";
/// Seconds.
pub(crate) const UNIT_SECONDS: &str = "s";
/// Milliseconds.
pub(crate) const UNIT_MS: &str = "ms";
/// A ratio (load per core).
pub(crate) const UNIT_RATIO: &str = "ratio";
/// Processes in an agent's tree.
pub(crate) const AGENT_PROCESS_COUNT: &str = "agent_process_count";
/// Open file descriptors of an agent's tree.
pub(crate) const AGENT_OPEN_FILES: &str = "agent_open_files";
/// Processes that belonged to an agent's tree and outlived its root.
pub(crate) const AGENT_ORPHAN_COUNT: &str = "agent_orphan_count";
/// Resident memory of those orphans.
pub(crate) const AGENT_ORPHAN_MEMORY_MB: &str = "agent_orphan_memory_mb";
/// Age of an agent's heartbeat.
pub(crate) const HEARTBEAT_AGE_SECONDS: &str = "heartbeat_age_seconds";
/// 1 when the heartbeat says the agent is stuck.
pub(crate) const HEARTBEAT_STUCK: &str = "heartbeat_stuck";
/// 1 when an agent looks stalled: heartbeat says working but has not moved, tree idle.
pub(crate) const AGENT_STALLED: &str = "agent_stalled";
/// 1 while the Gas Town daemon named by `<town>/daemon/daemon.pid` runs.
pub(crate) const TOWN_DAEMON_ALIVE: &str = "town_daemon_alive";
/// Agent-program processes in the town that no watched tree owns.
pub(crate) const TOWN_ORPHAN_COUNT: &str = "town_orphan_count";
/// Resident memory of those processes.
pub(crate) const TOWN_ORPHAN_MEMORY_MB: &str = "town_orphan_memory_mb";
/// 1 when a probe file can be created and removed in the workspace.
pub(crate) const WORKSPACE_WRITABLE: &str = "workspace_writable";
/// 1 when a database opens read-only and passes `PRAGMA quick_check`.
pub(crate) const DATABASE_CONNECTIVITY: &str = "database_connectivity";
/// How long that check took.
pub(crate) const DATABASE_LATENCY_MS: &str = "database_latency_ms";
/// Used share of a filesystem's inodes.
pub(crate) const INODE_USAGE_PERCENT: &str = "inode_usage_percent";
/// 1 when a filesystem is mounted read-only.
pub(crate) const FILESYSTEM_READONLY: &str = "filesystem_readonly";
/// Used share of swap.
pub(crate) const SWAP_USAGE_PERCENT: &str = "swap_usage_percent";
/// One-minute load average divided by the number of cores.
pub(crate) const LOAD_PER_CORE: &str = "load_per_core";
/// 1 when the workspace's `.git` is a usable repository.
pub(crate) const GIT_REPOSITORY_VALID: &str = "git_repository_valid";

/// Booleans alert when they drop: 1 is healthy, 0 is critical.
const FLAG: Option<Thresholds> = Some(Thresholds::new(0.5, 0.1));

/// A check's result: its plugin's exit code, UNKNOWN (3) stored as 1.5 so that, under the
/// direction rule, OK is healthy, WARNING and UNKNOWN unhealthy and CRITICAL critical.
pub(crate) const CHECK_STATUS: &str = "check_status";
/// How long a check's plugin ran, to its exit or its timeout.
pub(crate) const CHECK_DURATION_MS: &str = "check_duration_ms";
/// The value `check_status` stores for a plugin's UNKNOWN (exit 3), a timeout or a plugin
/// that cannot be started.
pub(crate) const CHECK_UNKNOWN_VALUE: f64 = 1.5;
/// The unit of `check_status`.
pub(crate) const UNIT_STATE: &str = "state";

/// Every metric health-monitor writes.
pub(crate) const METRICS: &[MetricDef] = &[
    MetricDef {
        name: CPU_USAGE_PERCENT,
        resource_types: &[ResourceType::Cpu],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(80.0, 95.0)),
        description: "busy share of all cores since the previous tick",
    },
    MetricDef {
        name: MEMORY_USAGE_PERCENT,
        resource_types: &[ResourceType::Memory],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(80.0, 95.0)),
        description: "memory in use (total minus available) as a share of total",
    },
    MetricDef {
        name: DISK_USAGE_PERCENT,
        resource_types: &[ResourceType::Filesystem],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(85.0, 95.0)),
        description: "used share of the filesystem, as df computes it (resource id `system` is `/`)",
    },
    MetricDef {
        name: INODE_USAGE_PERCENT,
        resource_types: &[ResourceType::Filesystem],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(85.0, 95.0)),
        description: "used share of the filesystem's inodes (not reported where the filesystem has no inode limit)",
    },
    MetricDef {
        name: FILESYSTEM_READONLY,
        resource_types: &[ResourceType::Filesystem],
        unit: UNIT_BOOL,
        thresholds: Some(Thresholds::new(0.5, 1.0)),
        description: "1 when the filesystem is mounted read-only (statvfs or /proc/self/mountinfo)",
    },
    MetricDef {
        name: SWAP_USAGE_PERCENT,
        resource_types: &[ResourceType::Memory],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(50.0, 90.0)),
        description: "used share of swap (not reported without swap)",
    },
    MetricDef {
        name: LOAD_PER_CORE,
        resource_types: &[ResourceType::Cpu],
        unit: UNIT_RATIO,
        thresholds: Some(Thresholds::new(2.0, 4.0)),
        description: "one-minute load average divided by the number of cores",
    },
    MetricDef {
        name: AGENT_ACTIVE,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 while the agent's process is alive (without a pid: while its workspace exists)",
    },
    MetricDef {
        name: AGENT_CPU_PERCENT,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_PERCENT,
        thresholds: Some(Thresholds::new(80.0, 95.0)),
        description: "CPU of the agent's process and all its descendants, as a share of the whole machine",
    },
    MetricDef {
        name: AGENT_MEMORY_MB,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_MB,
        thresholds: Some(Thresholds::new(8192.0, 16384.0)),
        description: "resident memory (RSS) of the agent's process and all its descendants",
    },
    MetricDef {
        name: AGENT_PROCESS_COUNT,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_COUNT,
        thresholds: Some(Thresholds::new(200.0, 1000.0)),
        description: "processes in the agent's tree (root and all descendants)",
    },
    MetricDef {
        name: AGENT_OPEN_FILES,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_COUNT,
        thresholds: Some(Thresholds::new(10_000.0, 50_000.0)),
        description: "open file descriptors of the agent's tree",
    },
    MetricDef {
        name: AGENT_ORPHAN_COUNT,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_COUNT,
        thresholds: Some(Thresholds::new(1.0, 20.0)),
        description: "processes that belonged to the agent's tree and outlive its root process (any is an alert)",
    },
    MetricDef {
        name: AGENT_ORPHAN_MEMORY_MB,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_MB,
        thresholds: Some(Thresholds::new(1024.0, 4096.0)),
        description: "resident memory of those orphans",
    },
    MetricDef {
        name: HEARTBEAT_AGE_SECONDS,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_SECONDS,
        thresholds: Some(Thresholds::new(180.0, 600.0)),
        description: "age of the agent's heartbeat: its JSON `timestamp`, else the file's mtime. Never alerts for a Gas Town session (every gt command rewrites it, so an old one means idle) except the deacon's (5 and 20 min, as Gas Town)",
    },
    MetricDef {
        name: HEARTBEAT_STUCK,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_BOOL,
        thresholds: Some(Thresholds::new(0.5, 1.0)),
        description: "1 when the heartbeat's `state` is `stuck` (for a Gas Town session: only while the heartbeat is fresh, as Gas Town counts it)",
    },
    MetricDef {
        name: AGENT_STALLED,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_BOOL,
        // Unhealthy, never critical: probably waiting at a prompt, not dead.
        thresholds: Some(Thresholds::new(0.5, 2.0)),
        description: "1 when the heartbeat says `working`, has not moved for `stall_after` and the whole tree used under 1% of a core meanwhile: probably waiting at a prompt (with `stall_after`; Gas Town polecats: 15 min)",
    },
    MetricDef {
        name: TOWN_DAEMON_ALIVE,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "resource `agent/gastown`: 1 while the process in `<town>/daemon/daemon.pid` runs; reported only while the file exists (Gas Town removes it on a clean stop, so a dead pid in it means its daemon died)",
    },
    MetricDef {
        name: TOWN_ORPHAN_COUNT,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_COUNT,
        thresholds: Some(Thresholds::new(1.0, 20.0)),
        description: "resource `agent/gastown`: claude, codex, opencode and other agent-program processes working in the town, older than a minute, with no terminal and in no tmux pane or watched tree (read at most once a minute)",
    },
    MetricDef {
        name: TOWN_ORPHAN_MEMORY_MB,
        resource_types: &[ResourceType::Agent],
        unit: UNIT_MB,
        thresholds: Some(Thresholds::new(1024.0, 4096.0)),
        description: "resource `agent/gastown`: resident memory of those orphans",
    },
    MetricDef {
        name: WORKSPACE_SIZE_MB,
        resource_types: &[ResourceType::Agent, ResourceType::Workspace],
        unit: UNIT_MB,
        thresholds: Some(Thresholds::new(1000.0, 5000.0)),
        description: "apparent size of the files under the workspace, hidden ones included",
    },
    MetricDef {
        name: WORKSPACE_EXISTS,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 while the workspace directory exists",
    },
    MetricDef {
        name: WORKSPACE_WRITABLE,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 when the workspace passes the permission check and a probe file (at most once a minute while writable) can be created and removed (only reported when it exists)",
    },
    MetricDef {
        name: WORKSPACE_READABLE,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 while the workspace directory can be listed (only reported when it exists)",
    },
    MetricDef {
        name: WORKSPACE_FILE_COUNT,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_COUNT,
        thresholds: Some(Thresholds::new(500_000.0, 2_000_000.0)),
        description: "files and other non-directories under the workspace, hidden ones included",
    },
    MetricDef {
        name: WORKSPACE_SCAN_COMPLETE,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_BOOL,
        // Never critical: a slow walk means the size is stale, not that the workspace is broken.
        thresholds: Some(Thresholds::new(0.5, -0.5)),
        description: "1 when the latest walk finished within `walk_time_cap` and could read the whole tree; 0 means size and count are the last complete values (a part that cannot be read is named once in the log)",
    },
    MetricDef {
        name: GIT_REPOSITORY_VALID,
        resource_types: &[ResourceType::Workspace],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 when the workspace's `.git` is a repository whose HEAD can be read (only reported when `.git` exists)",
    },
    MetricDef {
        name: DATABASE_CONNECTIVITY,
        resource_types: &[ResourceType::Database],
        unit: UNIT_BOOL,
        thresholds: FLAG,
        description: "1 when the database opens read-only (with a busy timeout) and `PRAGMA quick_check` says ok",
    },
    MetricDef {
        name: DATABASE_LATENCY_MS,
        resource_types: &[ResourceType::Database],
        unit: UNIT_MS,
        thresholds: Some(Thresholds::new(1000.0, 5000.0)),
        description: "how long that open and check took",
    },
    MetricDef {
        name: CHECK_STATUS,
        resource_types: &[
            ResourceType::Check,
            ResourceType::Agent,
            ResourceType::Workspace,
        ],
        unit: UNIT_STATE,
        thresholds: Some(Thresholds::new(1.0, 2.0)),
        description: "a `[[check]]` plugin's exit code: 0 OK, 1 WARNING, 2 CRITICAL; UNKNOWN (3), a timeout or a plugin that cannot start is 1.5 (unhealthy). The alert's message is the plugin's first line of output",
    },
    MetricDef {
        name: CHECK_DURATION_MS,
        resource_types: &[
            ResourceType::Check,
            ResourceType::Agent,
            ResourceType::Workspace,
        ],
        unit: UNIT_MS,
        thresholds: None,
        description: "how long the check's plugin ran, to its exit or its timeout",
    },
];

/// The alert raised for a collector parked after failing too often.
pub(crate) const COLLECTOR_FAILED: &str = "collector_failed";
/// The alert raised while a collector's measurement has not returned for `stall_after`.
pub(crate) const COLLECTOR_STALLED: &str = "collector_stalled";
/// The alert raised while the database refuses writes.
pub(crate) const DATABASE_WRITE_FAILED: &str = "database_write_failed";
/// The alert raised when the database path loses the daemon's file: deleted, or replaced.
pub(crate) const DATABASE_FILE_LOST: &str = "database_file_lost";

/// The alert raised on a resource while pushed metrics of it are not reported within their TTL.
pub(crate) const METRIC_STALE: &str = "metric_stale";

/// A condition the daemon raises about itself, not from a metric's thresholds; decided in
/// [`crate::conditions`].
#[derive(Debug, Clone, Copy)]
pub struct ConditionDef {
    /// The alert type it is raised as, e.g. `collector_failed`.
    pub name: &'static str,
    /// The resource it is raised on.
    pub resource: &'static str,
    /// When it is raised, for people.
    pub description: &'static str,
}

/// Every condition of the daemon itself (Gas Town's own are in `gastown::lifecycle`).
pub const CONDITIONS: &[ConditionDef] = &[
    ConditionDef {
        name: COLLECTOR_FAILED,
        resource: "the collector's resource",
        description: "the collector failed more than `max_restarts` times within `window` and is parked",
    },
    ConditionDef {
        name: COLLECTOR_STALLED,
        resource: "the collector's resource",
        description: "a measurement has not returned for `stall_after`",
    },
    ConditionDef {
        name: DATABASE_WRITE_FAILED,
        resource: "database/<db path>",
        description: "the database refuses writes (full, locked past 2 s, an I/O error)",
    },
    ConditionDef {
        name: DATABASE_FILE_LOST,
        resource: "database/<db path>",
        description: "the database path no longer leads to the daemon's file (deleted or replaced)",
    },
    ConditionDef {
        name: METRIC_STALE,
        resource: "the pushed metric's resource",
        description: "a pushed metric was not reported again within its TTL (default 3 intervals)",
    },
];

/// The catalogue entry for a metric name.
pub(crate) fn lookup(name: &str) -> Option<&'static MetricDef> {
    METRICS.iter().find(|m| m.name == name)
}

/// The README's table of metrics and their defaults, generated from [`METRICS`].
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| metric | resource types | unit | warning | critical | worse when | meaning |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for m in METRICS {
        let types: Vec<&str> = m.resource_types.iter().map(|t| t.as_str()).collect();
        let (warning, critical, direction) = match m.thresholds {
            Some(t) => (
                t.warning.to_string(),
                t.critical.to_string(),
                if t.lower_is_worse() {
                    "lower"
                } else {
                    "higher"
                },
            ),
            None => ("-".into(), "-".into(), "-"),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            m.name,
            types.join(", "),
            m.unit,
            warning,
            critical,
            direction,
            m.description
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_defaults_are_the_originals() {
        let t = |name| lookup(name).unwrap().thresholds.unwrap();
        assert_eq!(t(MEMORY_USAGE_PERCENT), Thresholds::new(80.0, 95.0));
        assert_eq!(t(CPU_USAGE_PERCENT), Thresholds::new(80.0, 95.0));
        assert_eq!(t(DISK_USAGE_PERCENT), Thresholds::new(85.0, 95.0));
        assert_eq!(t(WORKSPACE_SIZE_MB), Thresholds::new(1000.0, 5000.0));
        assert!(t(AGENT_ACTIVE).lower_is_worse());
    }

    #[test]
    fn metric_names_are_unique() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
    }

    #[test]
    fn readme_table_matches_the_code() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's metric table is out of date; replace it with:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn the_readme_explains_every_condition() {
        let readme = include_str!("../README.md");
        for c in CONDITIONS {
            assert!(
                readme.contains(&format!("- `{}` (critical", c.name))
                    || readme.contains(&format!("- `{}` (unhealthy", c.name)),
                "README.md's alert list does not explain {}",
                c.name
            );
        }
    }
}
