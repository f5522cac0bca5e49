//! health-monitor: a daemon that keeps a fleet of coding agents and their machine healthy.
//!
//! See `docs/ARCHITECTURE.md` for the picture; each module below is one concern.

pub mod actors; // supervisor, collectors, analyzer, and the SQLite writer thread
pub mod alerts; // the per-key alert state machine
pub mod analysis; // thresholds applied and alerts decided, without actors
pub mod catalog; // every metric: unit, default thresholds, meaning
pub mod chart; // charts from rollups: ranges, downsampling, SVG geometry
pub mod checks; // Nagios-compatible plugins run on a schedule, their results as measurements
pub mod cli; // clap types and command implementations
pub mod collect; // the measuring itself: system, process trees, directory walks, git
pub mod conditions; // the daemon's own conditions (collector_failed...), decided without actors
pub mod config; // defaults, TOML file, flags, validated into Settings
pub mod control; // the Unix control socket: protocol, server, client
pub mod daemon; // running the daemon: lock, socket, actors, signals, shutdown
pub mod faults; // HEALTH_MONITOR_FAULTS: injected panics to check supervision
pub mod gastown; // Gas Town: town layout, events file, escalation
pub mod http; // the HTTP listener: Prometheus /metrics, /healthz, the JSON API
pub mod live; // the dashboard's event stream: alert events and per-cycle diffs
pub mod model; // ResourceType, HealthStatus, HealthMetric, HealthAlert, MonitorSpec
pub mod notify; // telling the operator about alert events
pub mod pushed; // custom metrics pushed by agents and scripts: validated, held, expired
pub mod report; // what the daemon's parts report about themselves, as plain data: no actors
pub mod rollup; // per-minute and per-ten-minute rollups of every series, for charts
pub mod rules; // alert rules: thresholds, debounce, hysteresis, per-resource overrides
pub mod store; // SQLite schema, write batches, read-side queries
pub mod summary; // the status document, as JSON or for people
pub mod util;
pub mod watch; // kernel notifications (pidfd, inotify) that bring a measurement forward // small helpers shared by every layer: panic messages, poison-free locking
