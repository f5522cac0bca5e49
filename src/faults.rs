//! Fault injection for checking supervision: `HEALTH_MONITOR_FAULTS` names actors that panic once.
//!
//! Entries, comma-separated: `panic:<agent|workspace>:<id>:<nth>`, `panic:system:<nth>`,
//! `panic:analyzer:<nth>`, `panic:writer:<nth>`, `panic:control:<nth>`. The named actor panics on
//! its nth tick (collectors), batch (analyzer, writer) or accepted connection (control), counted
//! from its latest start. Each entry fires once; repeat an entry to make a restarted actor fail
//! again. Compiled into release builds, inert unless the variable is set.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::validate_id;

/// The environment variable read at start.
pub(crate) const ENV_VAR: &str = "HEALTH_MONITOR_FAULTS";

#[derive(Debug)]
struct Entry {
    /// Actor name as the supervisor knows it: `workspace:w1`, `analyzer`, `writer`...
    target: String,
    nth: u64,
    fired: AtomicBool,
}

/// A parsed fault plan.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    entries: Vec<Entry>,
}

impl FaultPlan {
    /// Parses the variable's value; errors say which entry is wrong and what is expected.
    pub fn parse(spec: &str) -> Result<FaultPlan, String> {
        let mut entries = Vec::new();
        for raw in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| {
                format!(
                    "{ENV_VAR}: bad entry {raw:?}: {why} (expected panic:<agent|workspace>:<id>:<nth>, \
                     panic:<system|analyzer|writer|control>:<nth>)"
                )
            };
            let parts: Vec<&str> = raw.split(':').collect();
            let (target, nth) = match parts.as_slice() {
                ["panic", kind @ ("agent" | "workspace"), id, nth] => {
                    validate_id(id).map_err(|e| bad(&e))?;
                    (format!("{kind}:{id}"), *nth)
                }
                [
                    "panic",
                    kind @ ("system" | "analyzer" | "writer" | "control"),
                    nth,
                ] => (kind.to_string(), *nth),
                _ => return Err(bad("unknown form")),
            };
            let nth: u64 = nth
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("nth must be a whole number >= 1"))?;
            entries.push(Entry {
                target,
                nth,
                fired: AtomicBool::new(false),
            });
        }
        Ok(FaultPlan { entries })
    }

    /// True (once per entry) when `target` should fail at its `count`th step.
    pub(crate) fn fires(&self, target: &str, count: u64) -> bool {
        self.entries.iter().any(|e| {
            e.target == target
                && e.nth == count
                && e.fired
                    .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// True when no fault is planned.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

static PLAN: OnceLock<FaultPlan> = OnceLock::new();

/// Reads [`ENV_VAR`] once; the daemon refuses to start when it is malformed.
pub fn install_from_env() -> Result<(), String> {
    let plan = match std::env::var(ENV_VAR) {
        Ok(spec) => FaultPlan::parse(&spec)?,
        Err(_) => FaultPlan::default(),
    };
    if !plan.is_empty() {
        tracing::warn!("{ENV_VAR} is set: injected faults are armed");
    }
    let _ = PLAN.set(plan);
    Ok(())
}

/// Panics when the plan says `target` fails at its `count`th step.
pub fn check(target: &str, count: u64) {
    if let Some(plan) = PLAN.get()
        && plan.fires(target, count)
    {
        panic!("injected fault ({ENV_VAR}): {target} at step {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_fire_once_each() {
        let plan = FaultPlan::parse(
            "panic:workspace:w1:3, panic:analyzer:2,panic:writer:1,panic:workspace:w1:3",
        )
        .unwrap();
        assert!(!plan.fires("workspace:w1", 2));
        assert!(plan.fires("workspace:w1", 3));
        assert!(
            plan.fires("workspace:w1", 3),
            "the repeated entry fires for the restarted actor"
        );
        assert!(!plan.fires("workspace:w1", 3));
        assert!(plan.fires("analyzer", 2));
        assert!(!plan.fires("analyzer", 2));
        assert!(plan.fires("writer", 1));
        assert!(!plan.fires("workspace:w2", 3));
    }

    #[test]
    fn malformed_entries_are_refused_with_the_expected_form() {
        for bad in [
            "boom",
            "panic:workspace:w1",
            "panic:analyzer:0",
            "panic:workspace:../x:1",
            "panic:nobody:1",
            "panic:writer:x",
        ] {
            let err = FaultPlan::parse(bad).unwrap_err();
            assert!(
                err.contains(ENV_VAR) && err.contains("expected"),
                "{bad}: {err}"
            );
        }
        assert!(FaultPlan::parse("").unwrap().is_empty());
    }
}
