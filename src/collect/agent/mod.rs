//! Agents: finding the root process (pid, pid file, command-line match, tmux pane), measuring
//! its tree, remembering its members to catch orphans, and reading its heartbeat.
//!
//! `root` says which process is the agent and whether it still is (pid files, recorded start
//! times); `tmux` asks tmux about sessions and panes; `heartbeat` reads heartbeat files;
//! `tree` remembers the tree across cycles (orphans, stalls); `probe` ties them together
//! into one measurement a cycle; `small_file` reads pid files and heartbeats safely.

mod heartbeat;
mod probe;
mod root;
mod small_file;
mod tmux;
mod tree;

pub use heartbeat::{BeatFallback, HEARTBEAT_SKEW, Heartbeat, read_heartbeat};
pub use probe::AgentProbe;
pub use root::{
    RecordedStart, Resolution, Root, RootSource, parse_lstart, parse_pid_file, pid_file_is_live,
};
pub use small_file::read_small_file;
pub use tmux::{TmuxTarget, tmux_pane_pids, tmux_sessions};
pub use tree::{OrphanTracker, STALL_CPU_CORES, StallWatch};
