//! The control protocol: requests and responses, one JSON object per line.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::actors::supervisor::{ActorReport, ChildState, monitor_child_name};
use crate::config::Settings;
use crate::model::{MonitorKind, MonitorSpec, ResourceType, Silence, validate_id};

/// Longest resource id a silence may name (database ids are `<workspace>/<path>`).
pub const MAX_RESOURCE_ID_BYTES: usize = 4096;

/// Checks a resource id named by an operator: agents and workspaces follow the id rule, other
/// resources (databases, filesystems) only need to be printable.
pub fn validate_resource_id(resource_type: ResourceType, id: &str) -> Result<(), String> {
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
pub fn validate_silence(s: &Silence) -> Result<(), String> {
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
pub const MAX_LINE_BYTES: usize = 64 * 1024;

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
    /// Adds or replaces a monitor.
    Add { monitor: MonitorSpec },
    /// Removes a monitor.
    Remove { kind: MonitorKind, id: String },
    /// Graceful shutdown.
    Stop {},
    /// Acknowledges an active alert: its reminders stop until it escalates.
    Ack {
        id: i64,
        /// Who acknowledged, as recorded.
        #[serde(default)]
        by: Option<String>,
    },
    /// Adds (or replaces) a silence.
    SilenceAdd { silence: Silence },
    /// Removes a resource's silences (all, or the one on `metric`).
    SilenceRemove {
        resource_type: ResourceType,
        resource_id: String,
        #[serde(default)]
        metric: Option<String>,
    },
    /// The silences in force.
    SilenceList {},
    /// Deletes rows past retention now; `retention_days` overrides the metrics' retention.
    Prune {
        #[serde(default)]
        retention_days: Option<f64>,
    },
    /// Rebuilds the database file to give free space back.
    Vacuum {},
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
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

/// Checks a monitor before it is accepted: a valid id and absolute paths (the daemon's working
/// directory is not the client's).
pub fn validate_monitor(spec: &MonitorSpec) -> Result<(), String> {
    validate_id(spec.id())?;
    let absolute = |p: &std::path::Path| {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(format!("path {} must be absolute", p.display()))
        }
    };
    match spec {
        MonitorSpec::Agent { options, .. } => {
            options.validate()?;
            for p in [&options.workspace, &options.pid_file, &options.heartbeat]
                .into_iter()
                .flatten()
            {
                absolute(p)?;
            }
        }
        MonitorSpec::Workspace { options, .. } => {
            if let Some(p) = &options.path {
                absolute(p)?;
            }
            for db in &options.dbs {
                let escapes = db.is_absolute()
                    || db
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir));
                if escapes {
                    return Err(format!(
                        "--db {} must be a path inside the workspace, relative to it",
                        db.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// One monitor as `list` shows it, with the path it resolves to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorInfo {
    pub kind: MonitorKind,
    pub id: String,
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
pub fn monitor_infos(
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
    use crate::model::AgentOptions;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let add = Request::Add {
            monitor: MonitorSpec::Agent {
                id: "a1".into(),
                options: AgentOptions {
                    pid: Some(42),
                    ..AgentOptions::default()
                },
            },
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add","monitor":{"kind":"agent","id":"a1","options":{"pid":42}}}"#
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
}
