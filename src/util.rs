//! Small helpers shared by every layer: idioms that would otherwise be written out many times.

use std::any::Any;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`), or `None` for
/// any other payload (`std::panic::panic_any`).
///
/// Pass the payload itself, `&*boxed`, not `&boxed`: a `&Box<dyn Any + Send>` coerces to
/// `&dyn Any` too, and the box is neither a `&str` nor a `String`.
pub fn panic_text(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// The text of a panic payload, or "unknown panic" when it carries none (see [`panic_text`]).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    panic_text(payload).unwrap_or("unknown panic")
}

/// Locks `m`, ignoring poisoning.
///
/// A poisoned mutex only says that some thread panicked while holding it. Here that thread is
/// an actor or worker that supervision restarts, and the data behind our mutexes is plain
/// (maps, queues, counters, slots) that stays usable after a panic part-way through an update.
/// Refusing it would turn one panic into a panic in every later holder, which supervision
/// could not recover from. Places where a panic does leave the data unusable handle
/// [`PoisonError`] themselves instead.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{AssertUnwindSafe, catch_unwind, panic_any};

    fn payload_of(f: impl FnOnce()) -> Box<dyn Any + Send> {
        catch_unwind(AssertUnwindSafe(f)).expect_err("it panics")
    }

    #[test]
    fn panic_messages_come_from_str_and_string_payloads() {
        let literal = payload_of(|| panic!("plain text"));
        assert_eq!(panic_message(&*literal), "plain text");
        let formatted = payload_of(|| panic!("formatted {}", 42));
        assert_eq!(panic_message(&*formatted), "formatted 42");
        let other = payload_of(|| panic_any(7_u32));
        assert_eq!(panic_text(&*other), None);
        assert_eq!(panic_message(&*other), "unknown panic");
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = Mutex::new(vec![1]);
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let mut held = m.lock().unwrap();
            held.push(2);
            panic!("poisoning on purpose");
        }));
        assert!(m.is_poisoned());
        lock(&m).push(3);
        assert_eq!(*lock(&m), [1, 2, 3]);
    }
}
