//! Running the daemon: lock, database, socket, actors, signals, and an orderly shutdown.
//! Also `start --once`, the same cycle run once without actors.

pub mod children;
pub mod lock;
pub mod systemd;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix::Actor;
use anyhow::Context;
use chrono::Utc;
use rusqlite::Connection;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

use crate::actors::alert_memory::AlertMemory;
use crate::actors::analyzer::AnalyzerHandle;
use crate::actors::deps::DaemonDeps;
use crate::actors::supervisor::{Supervisor, SupervisorHandle};
use crate::actors::town::TownState;
use crate::actors::writer::{self, Retention, WriterConfig};
use crate::analysis::AnalyzerCore;
use crate::collect::{Probe, SystemProbe, WalkLimits};
use crate::config::Settings;
use crate::control::service::Service;
use crate::control::socket;
use crate::gastown::{self, layout::Town};
use crate::model::{MonitorSet, MonitorSpec};
use crate::notify::Notifier;
use crate::store::write::{WriteOp, apply};
use crate::store::{self, query};
use crate::summary::{self, Summary};
use children::probe_for;
use lock::InstanceLock;

/// How long shutdown lets queued notices go out.
const NOTIFIER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the writer to land what it holds.
const WRITER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the control socket when the daemon ends, however it ends short of `kill -9`.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Loads the persisted monitors, adds (and persists) the ones given on the command line, and
/// brings a followed town's monitors in line with its layout.
fn prepare_monitors(
    conn: &mut Connection,
    extra: Vec<MonitorSpec>,
    settings: &Settings,
) -> anyhow::Result<MonitorSet> {
    let stored = query::load_monitors(conn).context("cannot read the monitors table")?;
    let (monitors, ops) = plan_monitors(stored, extra, settings)?;
    apply(conn, &ops).context("cannot save the monitors")?;
    Ok(monitors)
}

/// The monitors to run, from the stored ones, the command line's and a followed town's
/// layout, with the writes that persist the difference.
fn plan_monitors(
    stored: Vec<MonitorSpec>,
    extra: Vec<MonitorSpec>,
    settings: &Settings,
) -> anyhow::Result<(MonitorSet, Vec<WriteOp>)> {
    let mut monitors: MonitorSet = stored.into_iter().collect();
    let mut ops = Vec::new();
    if let Some(town) = &settings.gastown {
        let town = Town::of(town);
        // A tmux that does not answer leaves the pid files to say which sessions run.
        let sessions = town.tmux_sessions().unwrap_or_default();
        let wanted = town
            .wanted_monitors(&sessions)
            .context("cannot follow the Gas Town town")?;
        let current: Vec<MonitorSpec> = monitors.iter().cloned().collect();
        let (add, remove) = gastown::layout::reconcile(&current, &wanted);
        tracing::info!(
            town = %town.root.display(),
            monitors = wanted.len(),
            added = add.len(),
            removed = remove.len(),
            "following the Gas Town town"
        );
        for spec in remove {
            monitors.remove(spec.kind(), spec.id());
            ops.push(WriteOp::MonitorDeleted(spec.kind(), spec.id().to_string()));
            ops.push(WriteOp::ResourceAlertsResolved(
                spec.kind().resource_type(),
                spec.id().to_string(),
                Utc::now(),
            ));
        }
        for spec in add {
            ops.push(WriteOp::MonitorSaved(spec.clone()));
            monitors.add(spec);
        }
    }
    for spec in &settings.checks {
        // The config file's checks run as given there, over a stored one of the same name.
        if monitors.contains(spec.kind(), spec.id()) {
            tracing::warn!(
                check = spec.id(),
                "a check added with `add check` has the name of a [[check]] of the config \
                 file: the config file's runs"
            );
        }
        // A stored check on the same resource gives way (it would make the alert flap).
        let clashing: Vec<MonitorSpec> = monitors
            .iter()
            .filter(|m| crate::model::conflicting_check([*m], spec).is_some())
            .cloned()
            .collect();
        for other in clashing {
            tracing::error!(
                "{}; not running the stored check {} while the config file has {}",
                crate::model::conflict_message(&other, spec),
                other.id(),
                spec.id()
            );
            monitors.remove(other.kind(), other.id());
        }
        monitors.add(spec.clone());
    }
    for spec in extra {
        // `--agents a1` adds a1 with default options but keeps options an earlier `add` set.
        if !monitors.contains(spec.kind(), spec.id()) {
            ops.push(WriteOp::MonitorSaved(spec.clone()));
            monitors.add(spec);
        }
    }
    Ok((monitors, ops))
}

/// Checks, locks and opens the database for a daemon or a `--once` run: clear errors for an
/// unwritable place, a second daemon, a foreign or corrupt file, before anything is written.
fn open_database(settings: &Settings) -> anyhow::Result<(InstanceLock, Connection)> {
    let db = &settings.db_path;
    store::check_writable(db)?;
    let lock = InstanceLock::acquire(db)?;
    store::verify_integrity(db)?;
    let conn = open_write_connection(settings)?;
    crate::collect::sqlite_probe::set_own_database(db);
    Ok((lock, conn))
}

/// Like [`open_database`], but a database that cannot be opened for writing for lack of space
/// (a full disk: SQLite cannot size its shared memory or WAL) is no reason not to start:
/// monitoring matters most then. The writer opens it once there is room, holding rows meanwhile.
fn open_database_for_daemon(
    settings: &Settings,
) -> anyhow::Result<(InstanceLock, Option<Connection>)> {
    let db = &settings.db_path;
    store::check_writable(db)?;
    let lock = InstanceLock::acquire(db)?;
    store::verify_integrity(db)?;
    crate::collect::sqlite_probe::set_own_database(db);
    match open_write_connection(settings) {
        Ok(conn) => Ok((lock, Some(conn))),
        Err(e) if is_lack_of_space(&e) => {
            tracing::error!(
                db = %db.display(),
                "cannot open the database for writing ({e:#}): starting anyway; rows are held in \
                 memory until there is room"
            );
            Ok((lock, None))
        }
        Err(e) => Err(e),
    }
}

/// True for an error that more disk space would cure: SQLite's "database or disk is full", or
/// the "disk I/O error" it gives when it cannot size a file (its shared memory, its WAL).
fn is_lack_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(nix::libc::ENOSPC);
        }
        cause
            .downcast_ref::<rusqlite::Error>()
            .and_then(rusqlite::Error::sqlite_error_code)
            .is_some_and(|code| {
                matches!(
                    code,
                    rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure
                )
            })
    })
}

/// The monitors and silences, read without a write connection (the disk is full). Nothing
/// readable gives none, loudly.
fn read_state_without_writer(settings: &Settings) -> StoredState {
    let read = |conn: &Connection| -> rusqlite::Result<_> {
        Ok((
            query::load_monitors(conn)?,
            query::active_silences(conn, Utc::now())?,
            // A database older than pushed metrics has none.
            query::load_pushed(conn).unwrap_or_default(),
        ))
    };
    match store::read_even_when_full(&settings.db_path, read) {
        Ok(state) => state.unwrap_or_default(),
        Err(e) => {
            tracing::error!(
                "cannot read the monitors from the database ({e:#}): starting with those of the \
                 command line and the town only"
            );
            Default::default()
        }
    }
}

/// What a daemon starts from when the writer cannot open the database yet: the monitors, the
/// silences and the pushed series.
type StoredState = (
    Vec<MonitorSpec>,
    Vec<crate::model::Silence>,
    Vec<crate::pushed::SeriesDef>,
);

/// A write connection with the configured size cap.
fn open_write_connection(settings: &Settings) -> anyhow::Result<Connection> {
    let conn = store::open_for_writing(&settings.db_path)?;
    if let Some(max) = settings.max_db_bytes {
        store::apply_size_cap(&conn, max)?;
    }
    Ok(conn)
}

/// Runs the daemon in the foreground until SIGINT, SIGTERM or `stop`.
pub fn run(settings: Settings, extra: Vec<MonitorSpec>) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let (lock, conn) = open_database_for_daemon(&settings)?;
    // The writer keeps the database file's lock as long as its connection, and watches it.
    let (_path_lock, db_file) = lock.into_database_file();
    // Bound before anything is saved or started: a taken port refuses the start cleanly.
    let http = crate::http::bind(&settings.http)?;
    if http.is_none() && settings.http.token.is_some() {
        tracing::warn!("[http] token is set but no listen address: the HTTP API is off");
    }
    let (conn, monitors, silences, pushed, unsaved) = match conn {
        Some(mut conn) => {
            let monitors = prepare_monitors(&mut conn, extra, &settings)?;
            let silences = query::active_silences(&conn, Utc::now())
                .context("cannot read the silences table")?;
            let pushed =
                query::load_pushed(&conn).context("cannot read the pushed_series table")?;
            (Some(conn), monitors, silences, pushed, Vec::new())
        }
        None => {
            let (stored, silences, pushed) = read_state_without_writer(&settings);
            let (monitors, ops) = plan_monitors(stored, extra, &settings)?;
            (None, monitors, silences, pushed, ops)
        }
    };
    let listener = socket::bind(&settings.socket_path)?;
    let _socket_file = SocketFile(settings.socket_path.clone());
    listener.set_nonblocking(true)?;
    let reopen = {
        let settings = settings.clone();
        Box::new(move || open_write_connection(&settings))
    };
    let writer_config = WriterConfig {
        buffer_cap_bytes: settings.writer_buffer_bytes,
        retention: Some(Retention {
            metrics: settings.metric_retention,
            resolved_alerts: settings.alert_retention,
        }),
        ..WriterConfig::default()
    };
    let (writer, writer_thread) =
        writer::spawn(reopen, conn, Some(db_file), writer_config, settings.restart)
            .context("cannot start the writer thread")?;
    // Saved first thing once the database opens.
    if writer.submit(unsaved).is_err() {
        tracing::error!(
            "the writer refused the monitors' changes; they are saved by the next start"
        );
    }

    tracing::info!(
        db = %settings.db_path.display(),
        socket = %settings.socket_path.display(),
        interval_secs = settings.interval.as_secs_f64(),
        agents = monitors.count(crate::model::MonitorKind::Agent),
        workspaces = monitors.count(crate::model::MonitorKind::Workspace),
        checks = monitors.count(crate::model::MonitorKind::Check),
        pushed_series = pushed.len(),
        pid = std::process::id(),
        "health-monitor starting"
    );
    let deps_writer = writer.clone();
    let analyzer = AnalyzerHandle::default();
    analyzer.memory().set_silences(silences);
    {
        let mut registry = analyzer.pushed();
        registry.set_limits(settings.pushed.max_series, settings.pushed.default_ttl);
        registry.restore(pushed, Utc::now());
    }
    let deps_analyzer = analyzer.clone();
    // Before the analyzer starts, so the Gas Town sink knows every open escalation before
    // any resolution of its alert can arrive.
    let notifier = Notifier::spawn_with(
        &settings.notify,
        daemon_escalation_ledger(&settings, &analyzer, &writer),
    );
    let deps_notifier = notifier.clone();
    // Set when the CPU time soft limit stopped the daemon: it then exits with an error, so a
    // supervisor that restarts on failure (the systemd unit's `Restart=on-failure`) restarts it.
    let cpu_limit_hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cpu_limit = cpu_limit_hit.clone();
    let system = actix_rt::System::new();
    let outcome: anyhow::Result<()> = system.block_on(async move {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let deps = DaemonDeps {
            settings: settings.clone(),
            live: Arc::new(crate::actors::deps::LiveSettings::new(
                settings.clone(),
                crate::control::reload::initial_load(&settings),
            )),
            analyzer: deps_analyzer,
            writer: deps_writer,
            notifier: deps_notifier,
            town: settings
                .gastown
                .as_ref()
                .map(|t| Arc::new(TownState::new(&Town::of(t), t))),
            cycles: Default::default(),
            listener: Some(Arc::new(listener)),
        };
        let (stopped_tx, stopped_rx) = oneshot::channel();
        let service_deps = deps.clone();
        let reload_deps = deps.clone();
        let supervisor = SupervisorHandle::new(
            Supervisor::new(
                deps.supervisor_parts(),
                children::initial(&deps, &monitors),
                children::monitor_child(&deps),
                monitors,
                stopped_tx,
            )
            .start(),
        );
        let http = match http {
            Some(listener) => Some(listener.start(Service::new(supervisor.clone(), service_deps))?),
            None => None,
        };
        systemd::spawn(supervisor.clone());
        // Every signal whose default action ends the process either shuts the daemon down
        // cleanly, as SIGTERM does, or is caught and ignored: none may end it without a flush,
        // leaving its socket behind. SIGPIPE the Rust runtime ignores already (a write to a gone
        // peer fails instead); SIGKILL and the faults (SIGSEGV, SIGBUS...) cannot be handled.
        use nix::sys::signal::Signal as Sig;
        let raw = |s: Sig| SignalKind::from_raw(s as i32);
        let shutdown_on = [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::quit(), "SIGQUIT"),
            // The CPU time soft limit: the SIGKILL of the hard one would allow no flush.
            (raw(Sig::SIGXCPU), "SIGXCPU"),
        ];
        // SIGHUP reloads the config, as systemd's `ExecReload=` and Prometheus expect.
        {
            let mut hangups = signal(SignalKind::hangup())?;
            let service = Service::new(supervisor.clone(), reload_deps);
            actix_rt::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received; reloading the config");
                    // A refusal is logged by the reload itself.
                    let _ = service.reload().await;
                }
            });
        }
        let ignored = [
            (SignalKind::user_defined1(), "SIGUSR1", ""),
            (SignalKind::user_defined2(), "SIGUSR2", ""),
            // A write past the file size limit fails (EFBIG) instead: the writer keeps its rows.
            (
                raw(Sig::SIGXFSZ),
                "SIGXFSZ",
                "the write past the file size limit fails",
            ),
            (SignalKind::alarm(), "SIGALRM", ""),
            (raw(Sig::SIGVTALRM), "SIGVTALRM", ""),
            (raw(Sig::SIGPROF), "SIGPROF", ""),
            (SignalKind::io(), "SIGIO", ""),
            (raw(Sig::SIGPWR), "SIGPWR", ""),
        ];
        let (signalled, mut shutdown_signals) = tokio::sync::mpsc::unbounded_channel();
        for (kind, name) in shutdown_on {
            let mut stream = signal(kind)?;
            let signalled = signalled.clone();
            actix_rt::spawn(async move {
                while stream.recv().await.is_some() {
                    if signalled.send(name).is_err() {
                        return;
                    }
                }
            });
        }
        for (kind, name, why) in ignored {
            let mut stream = signal(kind)?;
            actix_rt::spawn(async move {
                let mut seen = 0u64;
                while stream.recv().await.is_some() {
                    seen += 1;
                    // A signal sent in a loop (SIGXFSZ at every failed write) logs once.
                    if seen == 1 {
                        let why = if why.is_empty() {
                            "it has no use here"
                        } else {
                            why
                        };
                        tracing::info!("{name} received; ignored ({why})");
                    } else {
                        tracing::debug!(count = seen, "{name} received again; ignored");
                    }
                }
            });
        }
        actix_rt::spawn(async move {
            let mut signals = 0;
            while let Some(name) = shutdown_signals.recv().await {
                if name == "SIGXCPU" {
                    // The kernel sends it again every CPU second past the soft limit: one is
                    // enough, and the repeats must not count as an operator's second signal.
                    if cpu_limit.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        continue;
                    }
                }
                signals += 1;
                if signals == 1 {
                    tracing::info!(
                        "{name} received; shutting down (send it again to exit at once)"
                    );
                    supervisor.shutdown();
                } else {
                    tracing::warn!("{name} received again; exiting without a clean shutdown");
                    std::process::exit(130);
                }
            }
        });
        let _ = stopped_rx.await;
        // A check's plugin still running has no collector to report to: its group goes now,
        // or it would outlive the daemon.
        let killed = crate::checks::plugin::kill_running_plugins();
        if killed > 0 {
            tracing::info!(plugins = killed, "killed the check plugins still running");
        }
        systemd::notify_stopping();
        if let Some(http) = http {
            http.stop(true).await;
        }
        Ok(())
    });
    drop(system);
    // The analyzer has drained: the last resolved notices are queued; give them a moment.
    // Before the writer goes: what the sinks record on their way out (an escalation opened or
    // closed) still lands.
    notifier.shutdown(NOTIFIER_SHUTDOWN_TIMEOUT);
    let flushed = writer.shutdown_blocking(WRITER_SHUTDOWN_TIMEOUT);
    // A writer that cannot finish (its database gone for good) must not hold the exit hostage.
    let joined_by = std::time::Instant::now() + Duration::from_secs(5);
    while !writer_thread.is_finished() && std::time::Instant::now() < joined_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    if writer_thread.is_finished() {
        let _ = writer_thread.join();
    }
    outcome?;
    let report = writer.report();
    tracing::info!(
        measurements_accepted = analyzer.accepted(),
        measurements_refused = analyzer.refused(),
        rows_written = report.rows_written,
        rows_dropped = report.rows_dropped,
        writer_restarts = writer.supervision().1,
        "health-monitor stopped"
    );
    flushed.map_err(|e| anyhow::anyhow!("database writer: {e}"))?;
    if cpu_limit_hit.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!(
            "stopped cleanly by SIGXCPU (the CPU time soft limit): exiting with an error so a \
             supervisor restarts the daemon"
        );
    }
    Ok(())
}

/// One cycle without a daemon: measure everything, analyze, write, and return the summary.
pub(crate) fn run_once(settings: &Settings, extra: Vec<MonitorSpec>) -> anyhow::Result<Summary> {
    let (_lock, mut conn) = open_database(settings)?;
    let monitors = prepare_monitors(&mut conn, extra, settings)?;
    // One cycle has no next tick to catch up on: let walks run to their cap.
    let limits = WalkLimits::from_settings(settings);
    let limits = WalkLimits {
        wait: limits.cap,
        ..limits
    };
    let system = SystemProbe::new(settings.filesystems.clone()).map_err(anyhow::Error::msg)?;
    let mut probes: Vec<Box<dyn Probe>> = vec![Box::new(system)];
    for spec in monitors.iter() {
        match probe_for(spec, settings, limits, None) {
            Ok(probe) => probes.push(probe),
            Err(e) => tracing::error!("{} {}: {e}", spec.kind(), spec.id()),
        }
    }
    let readings = measure_all(probes);

    let mut core = AnalyzerCore::new(settings.rules.clone(), settings.alert_cooldown);
    core.restore(query::active_alerts(&conn)?);
    core.engine_mut().set_next_id(query::next_alert_id(&conn)?);
    let now = Utc::now();
    let memory = AlertMemory::default();
    memory.set_silences(query::active_silences(&conn, now)?);
    let analysis = core.analyze(&readings, now);
    let notifier = Notifier::spawn_with(&settings.notify, once_escalation_ledger(settings, &conn));
    memory.announce(&analysis.events, &notifier);
    apply(&mut conn, &analysis.into_write_ops()).context("cannot write the cycle")?;
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    drop(conn);
    notifier.shutdown(NOTIFIER_SHUTDOWN_TIMEOUT);
    summary::offline(settings, Utc::now())
}

/// Runs probes on a few threads at once and gathers their readings.
fn measure_all(probes: Vec<Box<dyn Probe>>) -> Vec<crate::model::Measurement> {
    let probes: Vec<std::sync::Mutex<Box<dyn Probe>>> =
        probes.into_iter().map(std::sync::Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let threads = probes.len().clamp(1, 16);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(probe) = probes.get(i) else {
                            return out;
                        };
                        if let Ok(mut p) = probe.lock() {
                            out.extend(p.measure());
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// The escalations an earlier run left open, each marked with whether its alert is still
/// active, for the Gas Town sink to take over. A failed read is logged, not fatal: the rows
/// stay open in the database for a later start to close.
fn inherited_escalations(conn: &Connection) -> Vec<crate::notify::escalate::Inherited> {
    let read =
        query::open_escalations(conn).and_then(|open| Ok((open, query::active_alert_ids(conn)?)));
    match read {
        Ok((open, active)) => open
            .into_iter()
            .map(|e| crate::notify::escalate::Inherited {
                alert_active: active.contains(&e.alert_id),
                alert_id: e.alert_id,
                escalation_id: e.escalation_id,
            })
            .collect(),
        Err(e) => {
            tracing::error!(
                "cannot read the open Gas Town escalations; a later start will close them: {e}"
            );
            Vec::new()
        }
    }
}

/// The write a record of the Gas Town sink becomes.
fn escalation_op(record: crate::notify::escalate::EscalationRecord) -> WriteOp {
    use crate::notify::escalate::EscalationRecord;
    match record {
        EscalationRecord::Opened {
            alert_id,
            escalation_id,
            resource_type,
            resource_id,
            alert_type,
            level,
            at,
        } => WriteOp::EscalationOpened {
            alert_id,
            escalation_id,
            resource_type,
            resource_id,
            alert_type,
            severity: level,
            at,
        },
        EscalationRecord::Closed {
            alert_id,
            escalation_id,
            reason,
            at,
        } => WriteOp::EscalationClosed {
            alert_id,
            escalation_id,
            at,
            reason,
        },
    }
}

/// The daemon's escalation ledger: the escalations still open in the database, and a recorder
/// that hands every record to the writer thread (the only writer of SQLite). A record the
/// writer refuses goes to the analyzer's queue of refused changes, which it sends again every
/// second; it is logged, since a daemon stopping then loses it (an opening lost that way leaves
/// an escalation only `gt escalate close` by hand can end; a close lost is redone by the next
/// start, harmlessly).
pub(crate) fn daemon_escalation_ledger(
    settings: &Settings,
    analyzer: &AnalyzerHandle,
    writer: &crate::actors::writer::WriterHandle,
) -> crate::notify::escalate::EscalationLedger {
    use crate::notify::escalate::{EscalationLedger, EscalationRecord, Recorder};
    if settings.notify.escalate.is_none() {
        return EscalationLedger::default();
    }
    // The write connection belongs to the writer thread by now; a reader sees everything
    // committed before it started (the monitors' reconciliation included).
    let inherited = match store::open_read_only(&settings.db_path) {
        Ok(Some(conn)) => inherited_escalations(&conn),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!(
                "cannot read the open Gas Town escalations; a later start will close them: {e:#}"
            );
            Vec::new()
        }
    };
    let (analyzer, writer) = (analyzer.clone(), writer.clone());
    let recorder: Recorder = Arc::new(move |record: EscalationRecord| {
        let alert_id = record.alert_id();
        let escalation = record.escalation_id().to_string();
        if let Err(refused) = writer.submit(vec![escalation_op(record)]) {
            tracing::error!(
                alert_id,
                escalation = %escalation,
                "the database writer refused a Gas Town escalation record (queue full or \
                 stopped); it is sent again while the daemon runs, and lost if it stops first"
            );
            analyzer.submit_in_order(&writer, refused);
        }
    });
    EscalationLedger {
        recorder: Some(recorder),
        inherited,
    }
}

/// The escalation ledger of `start --once`, which has no writer thread: the escalations still
/// open in `conn`, and a recorder writing each record at once on a connection of its own (the
/// cycle's connection is in use on the main thread; records come from the sink's worker).
fn once_escalation_ledger(
    settings: &Settings,
    conn: &Connection,
) -> crate::notify::escalate::EscalationLedger {
    use crate::notify::escalate::{EscalationLedger, EscalationRecord, Recorder};
    if settings.notify.escalate.is_none() {
        return EscalationLedger::default();
    }
    let db = settings.db_path.clone();
    let max_db_bytes = settings.max_db_bytes;
    let recorder: Recorder = Arc::new(move |record: EscalationRecord| {
        let alert_id = record.alert_id();
        let escalation = record.escalation_id().to_string();
        let op = escalation_op(record);
        let written = store::open_for_writing(&db).and_then(|mut c| {
            if let Some(max) = max_db_bytes {
                store::apply_size_cap(&c, max)?;
            }
            // The cycle's own write may hold the lock for a moment.
            c.busy_timeout(store::READER_BUSY_TIMEOUT)?;
            apply(&mut c, &[op])?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::error!(
                alert_id,
                escalation = %escalation,
                "cannot record a Gas Town escalation: {e:#}"
            );
        }
    });
    EscalationLedger {
        recorder: Some(recorder),
        inherited: inherited_escalations(conn),
    }
}
