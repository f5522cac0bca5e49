//! The `health-monitor` binary: parse the command line, set up logging, dispatch, exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use health_monitor::cli::{self, Cli, Command};
use health_monitor::config::LogFormat;

/// Exit code for bad usage or configuration (clap uses it too).
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = Cli::parse();
    if matches!(args.command, Command::Start(_)) && std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // Each of the daemon's threads (event loop, writer, probe runners, kernel events) would
        // take a malloc arena of its own; two shared ones keep its resident memory smaller
        // (measured: 0.25 to 0.33 MB of its 2.2 MB of heap), and its threads rarely allocate
        // at the same moment. An operator's MALLOC_ARENA_MAX still decides.
        // SAFETY: at the start of main, before any thread exists; a plain glibc tunable.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
        }
    }
    if !matches!(args.command, Command::Start(_)) {
        // A command's output piped into `head` ends quietly when the reader goes, as other
        // tools do; the daemon keeps Rust's default (ignored, an error on the write) for its
        // sockets.
        // SAFETY: at the start of main, before any thread exists; SIG_DFL is always valid.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    // Generated from the definitions alone: no config, no database.
    match &args.command {
        Command::Completions(a) => {
            cli::shell::write_completions(a.shell, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match cli::shell::write_man(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // Checking a config must not need that config to be valid.
    if let Command::Config(a) = &args.command {
        return match cli::config_check::run(a, &args.global) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(USAGE)
            }
        };
    }
    let start = match &args.command {
        Command::Start(start) => Some(start),
        _ => None,
    };
    let settings = match cli::settings(&args.global, start) {
        Ok(s) => s,
        // The daemon judges the file it reloads and says what is wrong with it: `reload`
        // reaches it by the flags alone when the file no longer parses here.
        Err(e) if matches!(args.command, Command::Reload) => {
            let flags_only = cli::GlobalArgs {
                config: None,
                ..args.global.clone()
            };
            match cli::settings(&flags_only, None) {
                Ok(s) => match cli::daemon::reload(&s) {
                    Ok(()) => return ExitCode::SUCCESS,
                    Err(reload) => {
                        eprintln!("error: {reload:#}");
                        eprintln!("(the config file as this command reads it: {e:#})");
                        return ExitCode::FAILURE;
                    }
                },
                Err(_) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(USAGE);
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(USAGE);
        }
    };
    if let Err(e) = health_monitor::faults::install_from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(USAGE);
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&settings.log_level))
        .with_writer(std::io::stderr);
    match settings.log_format {
        // Structured fields (alert_state, severity, resource_id...) become JSON keys.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    // Panics (real or injected) are logged like everything else, with where they happened.
    std::panic::set_hook(Box::new(|info| {
        let what = health_monitor::util::panic_text(info.payload()).unwrap_or("panic");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("?"), %location, "panic: {what}");
    }));
    let result = match &args.command {
        Command::Start(a) => cli::daemon::start(a, settings),
        Command::Status(a) => cli::status::status(a, &settings),
        Command::List(a) => cli::status::list(a, &settings),
        Command::Add(a) => cli::monitors::add(a, &settings),
        Command::Remove(a) => cli::monitors::remove(a, &settings),
        Command::Stop => cli::daemon::stop(&settings),
        Command::Reload => cli::daemon::reload(&settings),
        Command::Alerts(a) => cli::alerts::alerts(a, &settings),
        Command::Ack(a) => cli::alerts::ack(a, &settings),
        Command::Silence(a) => cli::alerts::silence(a, &settings),
        Command::Db(a) => cli::db::run(a, &args.global, &settings),
        Command::History(a) => cli::history::history(a, &settings),
        Command::Gastown(a) => cli::gastown::run(a, &settings),
        Command::Report(a) => cli::report::report(a, &settings),
        Command::Config(_) | Command::Completions(_) | Command::Man => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<cli::monitors::UsageError>() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
