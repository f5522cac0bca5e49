//! The actors: collectors, the analyzer and the supervisor, plus the writer thread they feed.
//!
//! Actors only wire and schedule; the logic they run lives in `collect`, `analysis` and `store`.

pub mod alert_memory;
pub mod analyzer;
pub mod cadence;
pub mod collector;
pub mod deps;
pub mod probe_runner;
pub mod restart;
pub mod supervisor;
pub mod town;
pub mod writer;

use actix::{Actor, Addr, Handler, Message, Recipient};

/// Asks a child to stop on purpose (removal or shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub(crate) struct StopChild;

/// Sent by a child's [`ExitGuard`] when the child is gone, however it went.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ChildExited {
    /// The child's name, as the supervisor knows it (`analyzer`, `agent:<id>`...).
    pub name: String,
    /// Which start of the child this was; stale notices are ignored.
    pub generation: u64,
    /// True when it went down in a panic.
    pub panicked: bool,
}

/// Held inside every supervised actor: its `Drop` still runs while a panic unwinds the actor
/// (docs/ARCHITECTURE.md, "Why not the actix Supervisor"), which is how the supervisor learns
/// about deaths actix would hide.
#[derive(Debug)]
pub struct ExitGuard {
    name: String,
    generation: u64,
    supervisor: Option<Recipient<ChildExited>>,
}

impl ExitGuard {
    /// A guard reporting to `supervisor`.
    pub fn new(name: &str, generation: u64, supervisor: Recipient<ChildExited>) -> Self {
        ExitGuard {
            name: name.to_string(),
            generation,
            supervisor: Some(supervisor),
        }
    }

    /// A guard that reports to nobody, for actors run outside a supervisor (tests).
    pub fn detached(name: &str) -> Self {
        ExitGuard {
            name: name.to_string(),
            generation: 0,
            supervisor: None,
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Must not panic: this may run during unwinding, where a second panic aborts.
        if let Some(sup) = &self.supervisor {
            sup.do_send(ChildExited {
                name: std::mem::take(&mut self.name),
                generation: self.generation,
                panicked: std::thread::panicking(),
            });
        }
    }
}

/// A running child as the supervisor sees it, whatever its actor type.
pub trait ChildRef {
    /// Asks the child to stop.
    fn stop(&self);
    /// False once the actor is gone (stopped or panicked).
    fn alive(&self) -> bool;
}

impl<A> ChildRef for Addr<A>
where
    A: Actor<Context = actix::Context<A>> + Handler<StopChild>,
{
    fn stop(&self) {
        self.do_send(StopChild);
    }

    fn alive(&self) -> bool {
        self.connected()
    }
}

impl<C: ChildRef + ?Sized> ChildRef for Box<C> {
    fn stop(&self) {
        (**self).stop()
    }

    fn alive(&self) -> bool {
        (**self).alive()
    }
}
