//! The control protocol: requests and responses, one JSON object per line.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::Settings;
use crate::model::{
    MonitorKind, MonitorSpec, ResourceType, Silence, monitor_child_name, validate_id,
};
use crate::report::{ActorReport, ChildState};

/// Longest resource id a silence may name (database ids are `<workspace>/<path>`).
pub(crate) const MAX_RESOURCE_ID_BYTES: usize = 4096;

/// Checks a resource id named by an operator: agents and workspaces follow the id rule, other
/// resources (databases, filesystems) only need to be printable.
pub(crate) fn validate_resource_id(resource_type: ResourceType, id: &str) -> Result<(), String> {
    match resource_type {
        ResourceType::Agent | ResourceType::Workspace => validate_id(id),
        _ if id.is_empty() || id.len() > MAX_RESOURCE_ID_BYTES => Err(format!(
            "a resource id is 1 to {MAX_RESOURCE_ID_BYTES} bytes"
        )),
        _ if id.chars().any(char::is_control) => {
            Err("a resource id cannot hold control characters".into())
        }
        _ => Ok(()),
    }
}

/// Checks a silence before it is accepted.
pub(crate) fn validate_silence(s: &Silence) -> Result<(), String> {
    validate_resource_id(s.resource_type, &s.resource_id)?;
    if let Some(m) = &s.metric
        && (m.is_empty() || m.len() > 128 || m.chars().any(char::is_control))
    {
        return Err(format!("invalid metric name {m:?}"));
    }
    if s.expires_at <= s.created_at {
        return Err("a silence must end after it starts".into());
    }
    if let Some(c) = &s.comment {
        if c.len() > 1024 {
            return Err("a silence comment is at most 1024 bytes".into());
        }
        if c.chars().any(char::is_control) {
            return Err("a silence comment cannot hold control characters".into());
        }
    }
    Ok(())
}

/// Longest request line accepted; longer ones close the connection.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is anybody there?
    Ping {},
    /// The status document.
    Status {},
    /// The monitors.
    List {},
    /// Adds or replaces a monitor. Its paths are normalized and a `pid`'s start time recorded
    /// as the request is read (see [`prepare_monitor`]); [`validate_monitor`] comes after.
    Add {
        /// The agent or workspace to watch, with its options.
        #[serde(deserialize_with = "deserialize_added")]
        monitor: MonitorSpec,
    },
    /// Removes a monitor.
    Remove {
        /// `agent` or `workspace`.
        kind: MonitorKind,
        /// The monitor's id.
        id: String,
    },
    /// Graceful shutdown.
    Stop {},
    /// Acknowledges an active alert: its reminders stop until it escalates.
    Ack {
        /// The active alert's id, as `alerts` lists it.
        id: i64,
        /// Who acknowledged, as recorded.
        #[serde(default)]
        by: Option<String>,
    },
    /// Adds (or replaces) a silence.
    SilenceAdd {
        /// What to silence, and until when.
        silence: Silence,
    },
    /// Removes a resource's silences (all, or the one on `metric`).
    SilenceRemove {
        /// Kind of the silenced resource, e.g. `agent`.
        resource_type: ResourceType,
        /// Id of the silenced resource.
        resource_id: String,
        /// Only the silence on this metric; `None` removes all of the resource's silences.
        #[serde(default)]
        metric: Option<String>,
    },
    /// The silences in force.
    SilenceList {},
    /// Deletes rows past retention now; `retention_days` overrides the metrics' retention.
    Prune {
        /// Days metric rows are kept this time; `None` uses the configured retention.
        #[serde(default)]
        retention_days: Option<f64>,
    },
    /// Rebuilds the database file to give free space back.
    Vacuum {},
    /// Pushed metrics, any number in one request (up to [`MAX_REPORT_METRICS`]).
    Report {
        /// The metrics, each with its resource and options.
        metrics: Vec<crate::pushed::ReportItem>,
    },
    /// Reloads the config file, as SIGHUP does.
    Reload {},
    /// Retires a pushed series, with its alerts.
    ReportRemove {
        /// The series' resource type.
        resource_type: ResourceType,
        /// The series' resource id.
        resource_id: String,
        /// The series' metric.
        metric: String,
    },
}

/// Most metrics one report may carry; a bigger batch is sent as several.
pub(crate) const MAX_REPORT_METRICS: usize = 10_000;

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Response {
    /// True when the request succeeded.
    pub ok: bool,
    /// The answer's payload on success; left out when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// What went wrong, for the operator, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `data`.
    pub fn ok(data: impl Serialize) -> Self {
        match serde_json::to_value(data) {
            Ok(data) => Response {
                ok: true,
                data: Some(data),
                error: None,
            },
            Err(e) => Response::error(format!("cannot encode the answer: {e}")),
        }
    }

    /// A failure with a message for the operator.
    pub fn error(message: impl Into<String>) -> Self {
        Response {
            ok: false,
            data: None,
            error: Some(message.into()),
        }
    }
}

/// A path made lexically normal, nothing looked up on disk: `.` components dropped and `a/..`
/// folded away (`/..` is `/`), so `/srv/x/../y` is `/srv/y`.
pub(crate) fn normalize_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // A relative path climbing out of where it starts keeps its `..`.
                _ => out.push(".."),
            },
            Component::Normal(n) => out.push(n),
        }
    }
    if out.as_os_str().is_empty() && !path.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Normalizes every path of a monitor (see [`normalize_path`]).
fn normalize_monitor_paths(spec: &mut MonitorSpec) {
    let norm = |p: &mut Option<PathBuf>| {
        if let Some(p) = p {
            *p = normalize_path(p);
        }
    };
    match spec {
        MonitorSpec::Agent { options, .. } => {
            norm(&mut options.workspace);
            norm(&mut options.pid_file);
            norm(&mut options.heartbeat);
        }
        MonitorSpec::Workspace { options, .. } => {
            norm(&mut options.path);
            for db in &mut options.dbs {
                *db = normalize_path(db);
            }
        }
        // A check's arguments are the plugin's to read, and its program must already be
        // absolute: nothing is rewritten.
        MonitorSpec::Check { .. } => {}
    }
}

/// Records when the process named by an agent's `pid` started, unless the request says: a
/// later process that gets the same pid is then told from the agent, across restarts. `Err`
/// when no such process runs (the agent would be whatever process gets its pid next).
fn record_pid_start(spec: &mut MonitorSpec) -> Result<(), String> {
    if let MonitorSpec::Agent { id, options } = spec
        && let Some(pid) = options.pid
        && options.pid_start.is_none()
        && pid != 0
    {
        let start = crate::collect::process::process_start(pid).ok_or_else(|| {
            format!(
                "agent {id}: no process with pid {pid} is running (add it while it runs, or \
                 name it by --pid-file, --match or --tmux-session)"
            )
        })?;
        options.pid_start = Some(start);
    }
    Ok(())
}

/// Makes a monitor ready to be accepted, the same way for the CLI (with or without a daemon),
/// the control socket and HTTP: paths normalized, the checks of [`validate_monitor`], and the
/// start time of a `pid` recorded.
pub(crate) fn prepare_monitor(mut spec: MonitorSpec) -> Result<MonitorSpec, String> {
    normalize_monitor_paths(&mut spec);
    validate_monitor(&spec)?;
    record_pid_start(&mut spec)?;
    Ok(spec)
}

/// `Request::Add`'s monitor as read off the socket: normalized, with its pid's start recorded
/// (validation follows in the service, as for HTTP).
fn deserialize_added<'de, D: Deserializer<'de>>(d: D) -> Result<MonitorSpec, D::Error> {
    let mut spec = MonitorSpec::deserialize(d)?;
    normalize_monitor_paths(&mut spec);
    record_pid_start(&mut spec).map_err(serde::de::Error::custom)?;
    Ok(spec)
}

/// Checks a path a monitor names: text without control characters (it is stored as JSON and
/// shown in `list`'s table), absolute (the daemon's working directory is not the client's).
fn check_path(what: &str, p: &Path) -> Result<(), String> {
    let Some(text) = p.to_str() else {
        return Err(format!(
            "{what} {} is not valid UTF-8 (paths are stored as text)",
            p.display()
        ));
    };
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{what} {text:?} holds a control character (a newline, a tab...)"
        ));
    }
    if !p.is_absolute() {
        return Err(format!("{what} {text} must be absolute"));
    }
    Ok(())
}

/// Refuses a directory to watch that exists and is something else (a regular file, a device).
/// One that does not exist yet is fine: it is reported missing until it appears.
fn check_dir(what: &str, p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(meta) if !meta.is_dir() => Err(format!(
            "{what} {} exists and is not a directory",
            p.display()
        )),
        _ => Ok(()),
    }
}

/// Checks a monitor before it is accepted: a valid id, options that agree, and paths that are
/// absolute text without control characters, the directories to watch not being files.
pub fn validate_monitor(spec: &MonitorSpec) -> Result<(), String> {
    validate_id(spec.id())?;
    match spec {
        MonitorSpec::Agent { options, .. } => {
            options.validate()?;
            for (what, p) in [
                ("workspace", &options.workspace),
                ("pid file", &options.pid_file),
                ("heartbeat", &options.heartbeat),
            ] {
                if let Some(p) = p {
                    check_path(what, p)?;
                }
            }
            if let Some(p) = &options.workspace {
                check_dir("workspace", p)?;
            }
        }
        MonitorSpec::Workspace { options, .. } => {
            if let Some(p) = &options.path {
                check_path("workspace path", p)?;
                check_dir("workspace path", p)?;
            }
            for db in &options.dbs {
                let escapes = db.is_absolute()
                    || db
                        .components()
                        .any(|c| matches!(c, Component::ParentDir | Component::CurDir));
                if escapes || db.as_os_str().is_empty() {
                    return Err(format!(
                        "--db {} must be a path inside the workspace, relative to it",
                        db.display()
                    ));
                }
                match db.to_str() {
                    None => return Err(format!("--db {} is not valid UTF-8", db.display())),
                    Some(text) if text.chars().any(char::is_control) => {
                        return Err(format!("--db {text:?} holds a control character"));
                    }
                    Some(_) => {}
                }
            }
        }
        MonitorSpec::Check { id, options } => {
            options.validate(id)?;
            check_path("check program", Path::new(&options.command[0]))?;
        }
    }
    Ok(())
}

/// One monitor as `list` shows it, with the path it resolves to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// `agent` or `workspace`.
    pub kind: MonitorKind,
    /// The monitor's id.
    pub id: String,
    /// The agent's process id, when it was given one; `None` for workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The directory watched: the agent's workspace or the workspace itself.
    pub path: PathBuf,
    /// True when the path comes from the configured template rather than the monitor.
    pub default_path: bool,
    /// The collector's state when a daemon runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ChildState>,
    /// Everything the monitor was given (`pid_file`, `tmux_socket`, `role`, `managed_by`...).
    #[serde(default)]
    pub options: serde_json::Value,
}

/// Describes monitors for `list`, resolving default paths with `settings`.
pub(crate) fn monitor_infos(
    monitors: &[MonitorSpec],
    settings: &Settings,
    actors: &[ActorReport],
) -> Vec<MonitorInfo> {
    monitors
        .iter()
        .map(|spec| {
            let (pid, explicit, default) = match spec {
                MonitorSpec::Agent { id, options } => (
                    options.pid,
                    options.workspace.clone(),
                    settings.default_agent_workspace(id),
                ),
                MonitorSpec::Workspace { id, options } => (
                    None,
                    options.path.clone(),
                    settings.default_workspace_path(id),
                ),
                MonitorSpec::Check { options, .. } => {
                    let program = options.command.first().map(PathBuf::from);
                    (None, program.clone(), program.unwrap_or_default())
                }
            };
            let name = monitor_child_name(spec.kind(), spec.id());
            MonitorInfo {
                kind: spec.kind(),
                id: spec.id().to_string(),
                pid,
                default_path: explicit.is_none(),
                path: explicit.unwrap_or(default),
                state: actors.iter().find(|a| a.name == name).map(|a| a.state),
                options: serde_json::from_str(&spec.options_json()).unwrap_or_default(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentOptions, PidStart, WorkspaceOptions};

    fn workspace(path: &str) -> MonitorSpec {
        MonitorSpec::Workspace {
            id: "w".into(),
            options: WorkspaceOptions {
                path: Some(path.into()),
                ..Default::default()
            },
        }
    }

    fn agent(options: AgentOptions) -> MonitorSpec {
        MonitorSpec::Agent {
            id: "a".into(),
            options,
        }
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let add = Request::Add {
            monitor: MonitorSpec::Agent {
                id: "a1".into(),
                options: AgentOptions {
                    pid: Some(42),
                    pid_start: Some(PidStart {
                        ticks: 7,
                        boot_id: None,
                    }),
                    ..AgentOptions::default()
                },
            },
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add","monitor":{"kind":"agent","id":"a1","options":{"pid":42,"pid_start":{"ticks":7}}}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status {}
        );
    }

    #[test]
    fn malformed_requests_are_errors_that_say_why() {
        let err = serde_json::from_str::<Request>(r#"{"op":"explode"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        assert!(serde_json::from_str::<Request>("{not json").is_err());
        let err = serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = serde_json::from_str::<Request>(
            r#"{"op":"add","monitor":{"kind":"agent","id":"a","options":{"pidd":3}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("pidd"), "{err}");
        let err = serde_json::from_str::<Request>(
            r#"{"op":"add","monitor":{"kind":"agent","id":"a","pid":3}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn monitors_need_valid_ids_and_absolute_paths() {
        assert!(validate_monitor(&MonitorSpec::agent("../etc")).is_err());
        let relative = MonitorSpec::Workspace {
            id: "w".into(),
            options: crate::model::WorkspaceOptions {
                path: Some("rel/dir".into()),
                ..Default::default()
            },
        };
        assert!(
            validate_monitor(&relative)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(validate_monitor(&MonitorSpec::workspace("w")).is_ok());
    }

    #[test]
    fn paths_are_normalized_lexically() {
        let n = |p: &str| normalize_path(Path::new(p));
        assert_eq!(n("/x/../y"), PathBuf::from("/y"));
        assert_eq!(n("/a/./b//c/"), PathBuf::from("/a/b/c"));
        assert_eq!(n("/a/b/../../.."), PathBuf::from("/"));
        assert_eq!(n("/.."), PathBuf::from("/"));
        assert_eq!(n("a/../b"), PathBuf::from("b"));
        assert_eq!(n("a/.."), PathBuf::from("."));
        assert_eq!(n("../x"), PathBuf::from("../x"));
        assert_eq!(n("/srv/x"), PathBuf::from("/srv/x"));
    }

    #[test]
    fn preparing_a_monitor_normalizes_its_paths() {
        let spec = prepare_monitor(workspace("/x/../y")).unwrap();
        assert_eq!(spec, workspace("/y"));
        let spec = prepare_monitor(agent(AgentOptions {
            workspace: Some("/a/./b/../c".into()),
            heartbeat: Some("/hb/../hb.json".into()),
            pid_file: Some("/run//p.pid".into()),
            ..Default::default()
        }))
        .unwrap();
        let MonitorSpec::Agent { options, .. } = spec else {
            unreachable!()
        };
        assert_eq!(options.workspace, Some("/a/c".into()));
        assert_eq!(options.heartbeat, Some("/hb.json".into()));
        assert_eq!(options.pid_file, Some("/run/p.pid".into()));
    }

    #[test]
    fn a_directory_to_watch_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let file = file.to_str().unwrap();
        let err = validate_monitor(&workspace(file)).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        let err = validate_monitor(&agent(AgentOptions {
            workspace: Some(file.into()),
            ..Default::default()
        }))
        .unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
        // Missing (reported as missing until it appears) and real directories are fine.
        let missing = dir.path().join("later");
        assert!(validate_monitor(&workspace(missing.to_str().unwrap())).is_ok());
        assert!(validate_monitor(&workspace(dir.path().to_str().unwrap())).is_ok());
        // `x/..` of a file is not looked up: normalized first, it is the directory.
        let up = format!("{file}/..");
        assert_eq!(
            prepare_monitor(workspace(&up)).unwrap(),
            workspace(dir.path().to_str().unwrap())
        );
    }

    #[test]
    fn control_characters_and_bad_utf8_are_refused_in_every_path() {
        use std::os::unix::ffi::OsStrExt;
        for bad in ["/a\nb", "/a\tb", "/a\u{7f}", "/a\u{85}b", "/\u{1b}[31m"] {
            let err = validate_monitor(&workspace(bad)).unwrap_err();
            assert!(err.contains("control character"), "{bad:?}: {err}");
            for options in [
                AgentOptions {
                    workspace: Some(bad.into()),
                    ..Default::default()
                },
                AgentOptions {
                    heartbeat: Some(bad.into()),
                    ..Default::default()
                },
                AgentOptions {
                    pid_file: Some(bad.into()),
                    ..Default::default()
                },
            ] {
                assert!(validate_monitor(&agent(options)).is_err(), "{bad:?}");
            }
            let db = MonitorSpec::Workspace {
                id: "w".into(),
                options: WorkspaceOptions {
                    dbs: vec![bad.trim_start_matches('/').into()],
                    ..Default::default()
                },
            };
            assert!(validate_monitor(&db).is_err(), "--db {bad:?}");
        }
        let raw = std::ffi::OsStr::from_bytes(b"/tmp/\xff");
        let spec = MonitorSpec::Workspace {
            id: "w".into(),
            options: WorkspaceOptions {
                path: Some(raw.into()),
                ..Default::default()
            },
        };
        assert!(validate_monitor(&spec).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn an_added_pid_gets_its_start_time_recorded() {
        let me = std::process::id();
        let spec = prepare_monitor(agent(AgentOptions {
            pid: Some(me),
            ..Default::default()
        }))
        .unwrap();
        let MonitorSpec::Agent { options, .. } = &spec else {
            unreachable!()
        };
        let start = options.pid_start.clone().expect("recorded");
        let stat = crate::collect::process::read_stat(me).unwrap();
        assert_eq!(start.ticks, stat.start_ticks);
        assert_eq!(start.boot_id.as_deref(), crate::collect::process::boot_id());
        // One given is kept as it is.
        let given = AgentOptions {
            pid: Some(me),
            pid_start: Some(PidStart {
                ticks: 1,
                boot_id: None,
            }),
            ..Default::default()
        };
        assert_eq!(prepare_monitor(agent(given.clone())).unwrap(), agent(given));
        // A pid nobody has cannot be added: whatever process got it next would be the agent.
        let err = prepare_monitor(agent(AgentOptions {
            pid: Some(4_194_999),
            ..Default::default()
        }))
        .unwrap_err();
        assert!(err.contains("no process with pid 4194999"), "{err}");
        // Over the socket, as the request is read.
        let line = format!(
            r#"{{"op":"add","monitor":{{"kind":"agent","id":"a","options":{{"pid":{me},"workspace":"/x/../y"}}}}}}"#
        );
        let Request::Add { monitor } = serde_json::from_str::<Request>(&line).unwrap() else {
            unreachable!()
        };
        assert_eq!(monitor, {
            let mut expected = spec.clone();
            if let MonitorSpec::Agent { options, .. } = &mut expected {
                options.workspace = Some("/y".into());
            }
            expected
        });
    }
}
