//! The control server actor: accepts clients on the Unix socket and answers their requests,
//! with a line cap, an idle timeout and a cap on concurrent clients.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::protocol::{MAX_LINE_BYTES, Request, Response, monitor_infos, validate_monitor};
use crate::actors::supervisor::{
    AddMonitor, GetLive, RemoveMonitor, Shutdown, Supervisor, SupervisorDeps,
};
use crate::actors::{ExitGuard, StopChild};
use crate::model::validate_id;
use crate::summary::{self, SummaryInputs};

/// Clients served at once; more wait for a free slot.
const MAX_CLIENTS: usize = 128;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control server actor.
pub struct ControlServer {
    listener: Arc<UnixListener>,
    ctx: Arc<RequestContext>,
    _guard: ExitGuard,
}

/// What answering a request needs.
struct RequestContext {
    supervisor: Addr<Supervisor>,
    deps: SupervisorDeps,
    slots: Arc<Semaphore>,
}

impl ControlServer {
    /// A server for an already bound listener (it survives restarts of this actor).
    pub fn new(
        listener: Arc<UnixListener>,
        supervisor: Addr<Supervisor>,
        deps: SupervisorDeps,
        guard: ExitGuard,
    ) -> Self {
        ControlServer {
            listener,
            ctx: Arc::new(RequestContext {
                supervisor,
                deps,
                slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
            }),
            _guard: guard,
        }
    }
}

impl Actor for ControlServer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let listener = self.listener.clone();
        let rctx = self.ctx.clone();
        let accept = async move {
            let mut accepted = 0u64;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        accepted += 1;
                        // Panics inside this actor's own future, so the actor dies with it.
                        crate::faults::check("control", accepted);
                        let Ok(slot) = rctx.slots.clone().acquire_owned().await else {
                            return;
                        };
                        let rctx = rctx.clone();
                        actix_rt::spawn(async move {
                            serve(stream, &rctx).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait a little, keep serving.
                        tracing::warn!("control socket accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        ctx.spawn(accept.into_actor(self));
    }
}

impl Handler<StopChild> for ControlServer {
    type Result = ();
    fn handle(&mut self, _: StopChild, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Serves one client: one response line per request line until it hangs up or misbehaves.
async fn serve(stream: UnixStream, ctx: &RequestContext) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limited = (&mut reader).take(MAX_LINE_BYTES as u64 + 1);
        let mut limited = limited;
        let read = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
        match read {
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        if line.len() > MAX_LINE_BYTES {
            let reply = Response::error(format!("request longer than {MAX_LINE_BYTES} bytes"));
            let _ = write_response(&mut write, &reply).await;
            return;
        }
        let (response, stop) = answer(&line, ctx).await;
        if write_response(&mut write, &response).await.is_err() {
            return;
        }
        if stop {
            ctx.supervisor.do_send(Shutdown);
            return;
        }
    }
}

async fn write_response(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    text.push(b'\n');
    write.write_all(&text).await
}

/// Answers one request line; the flag asks the caller to shut down after replying.
async fn answer(line: &[u8], ctx: &RequestContext) -> (Response, bool) {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return (Response::error(format!("bad request: {e}")), false),
    };
    let response = match request {
        Request::Ping {} => Response::ok(serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
        Request::Status {} => match status(ctx).await {
            Ok(summary) => Response::ok(summary),
            Err(e) => Response::error(e),
        },
        Request::List {} => match ctx.supervisor.send(GetLive).await {
            Ok(live) => Response::ok(monitor_infos(
                &live.monitors,
                &ctx.deps.settings,
                &live.actors,
            )),
            Err(e) => Response::error(format!("supervisor unavailable: {e}")),
        },
        Request::Add { monitor } => {
            if let Err(e) = validate_monitor(&monitor) {
                return (Response::error(e), false);
            }
            match ctx.supervisor.send(AddMonitor(monitor)).await {
                Ok(Ok(outcome)) => Response::ok(outcome),
                Ok(Err(e)) => Response::error(e),
                Err(e) => Response::error(format!("supervisor unavailable: {e}")),
            }
        }
        Request::Remove { kind, id } => {
            if let Err(e) = validate_id(&id) {
                return (Response::error(e), false);
            }
            match ctx.supervisor.send(RemoveMonitor { kind, id }).await {
                Ok(Ok(())) => Response::ok("removed"),
                Ok(Err(e)) => Response::error(e),
                Err(e) => Response::error(format!("supervisor unavailable: {e}")),
            }
        }
        Request::Stop {} => return (Response::ok("stopping"), true),
    };
    (response, false)
}

/// The live summary: the supervisor's and analyzer's views plus the database's counts.
async fn status(ctx: &RequestContext) -> Result<summary::Summary, String> {
    let now = Utc::now();
    let live = ctx
        .supervisor
        .send(GetLive)
        .await
        .map_err(|e| format!("supervisor unavailable: {e}"))?;
    let snapshot = ctx.deps.analyzer.snapshot().await.unwrap_or_default();
    let db = ctx.deps.settings.db_path.clone();
    let stored = actix_rt::task::spawn_blocking(move || summary::read_stored(&db, now)).await;
    let mut warnings = Vec::new();
    let (recent, active_alerts) = match stored {
        Ok(Ok(stored)) => {
            // Alerts the writer has not landed yet (e.g. while the database is full) still show.
            let mut alerts = stored.active_alerts;
            let stored_keys: std::collections::HashSet<_> =
                alerts.iter().map(|a| a.key()).collect();
            alerts.extend(
                snapshot
                    .active_alerts
                    .into_iter()
                    .filter(|a| !stored_keys.contains(&a.key())),
            );
            (stored.recent, alerts)
        }
        Ok(Err(e)) => {
            warnings.push(format!("cannot read the database: {e:#}"));
            (Default::default(), snapshot.active_alerts)
        }
        Err(e) => {
            warnings.push(format!("cannot read the database: {e}"));
            (Default::default(), snapshot.active_alerts)
        }
    };
    Ok(summary::build(
        SummaryInputs {
            running: true,
            monitors: live.monitors,
            latest: snapshot.latest,
            active_alerts,
            recent,
            actors: live.actors,
            writer: Some(ctx.deps.writer.report()),
            measurements_accepted: ctx.deps.analyzer.accepted(),
            measurements_refused: ctx.deps.analyzer.refused(),
            analyzer_queue_depth: ctx.deps.analyzer.queue_depth() as u64,
            db_path: ctx.deps.settings.db_path.clone(),
            pid: Some(std::process::id()),
            warnings,
        },
        now,
    ))
}
