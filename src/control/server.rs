//! The control server actor: accepts clients on the Unix socket and answers their requests,
//! with a line cap, an idle timeout and a cap on concurrent clients.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::protocol::{MAX_LINE_BYTES, Request, Response};
use super::service::Service;
use crate::actors::deps::DaemonDeps;
use crate::actors::supervisor::SupervisorHandle;
use crate::actors::{ExitGuard, StopChild};

/// Clients served at once; more wait for a free slot.
const MAX_CLIENTS: usize = 128;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control server actor.
pub(crate) struct ControlServer {
    listener: Arc<UnixListener>,
    ctx: Arc<RequestContext>,
    _guard: ExitGuard,
}

/// What answering a request needs.
struct RequestContext {
    service: Service,
    slots: Arc<Semaphore>,
}

impl ControlServer {
    /// A server for an already bound listener (it survives restarts of this actor).
    pub fn new(
        listener: Arc<UnixListener>,
        supervisor: SupervisorHandle,
        deps: DaemonDeps,
        guard: ExitGuard,
    ) -> Self {
        ControlServer {
            listener,
            ctx: Arc::new(RequestContext {
                service: Service::new(supervisor, deps),
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
            ctx.service.shutdown();
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
    let service = &ctx.service;
    let response = match request {
        Request::Ping {} => Response::ok(serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        })),
        Request::Status {} => reply(service.summary().await),
        Request::List {} => reply(service.monitors().await),
        Request::Add { monitor } => reply(service.add(monitor).await),
        // Idempotent: a repeated remove answers `already removed`, so a retry is always safe.
        Request::Remove { kind, id } => reply(service.remove_idempotent(kind, id).await),
        Request::Stop {} => return (Response::ok("stopping"), true),
        Request::Ack { id, by } => {
            // Recorded and logged: no control characters, and a sane length.
            let by: String = by
                .unwrap_or_else(|| "unknown".into())
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect();
            reply(service.ack(id, by).await)
        }
        Request::SilenceAdd { silence } => reply(service.silence_add(silence).await),
        Request::SilenceRemove {
            resource_type,
            resource_id,
            metric,
        } => reply(
            service
                .silence_remove(resource_type, resource_id, metric)
                .await,
        ),
        Request::SilenceList {} => reply(service.silences().await),
        Request::Prune { retention_days } => reply(service.prune(retention_days).await),
        Request::Vacuum {} => reply(service.vacuum().await),
        Request::Report { metrics } => reply(service.report(&metrics)),
        Request::Reload {} => reply(service.reload().await),
        Request::ReportRemove {
            resource_type,
            resource_id,
            metric,
        } => reply(service.report_remove(resource_type, resource_id, metric)),
    };
    (response, false)
}

/// A service result as a response.
fn reply<T: serde::Serialize>(result: Result<T, String>) -> Response {
    match result {
        Ok(data) => Response::ok(data),
        Err(e) => Response::error(e),
    }
}
