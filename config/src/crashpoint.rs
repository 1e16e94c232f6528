//! Fault injection: named points in the code where the process can be made to kill itself,
//! for the crash-at-any-point checks (`tests/crash.rs`, `scripts/crash-anywhere.sh`).
//!
//! A point is reached by calling [`reached`] with its name. Nothing happens unless the binary
//! armed one point with [`arm`] (`grokforge` does so when `GROKFORGE_CRASH_AT=<point>:<n>` is
//! set): then the `n`-th time that point is reached the process sends itself SIGKILL — no
//! destructors, no flushing, no signal handler, the way a power cut or the OOM killer ends it.
//! With `<point>:<n>:term` it sends itself SIGTERM instead and carries on, so the shutdown an
//! operator asks for begins exactly there. Unarmed, a point costs one relaxed atomic load.
//!
//! The points: [`STEP`] (before each training step), [`CHECKPOINT_WRITE`] (half of a checkpoint
//! written to its temporary file), [`CHECKPOINT_RENAME`] (the checkpoint renamed into place, its
//! directory not yet synced), [`MODEL_FILES`] (a model's files written, its registry row not),
//! [`HANDOFF`] (a run finished, its variants not yet handed to the model registry).
//!
//! This crate is the one every other depends on, which is why the points live here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub const STEP: &str = "step";
pub const CHECKPOINT_WRITE: &str = "checkpoint.write";
pub const CHECKPOINT_RENAME: &str = "checkpoint.rename";
pub const MODEL_FILES: &str = "model.files";
pub const HANDOFF: &str = "handoff";

/// Every point, for parsing and for the scripts.
pub const POINTS: &[&str] = &[
    STEP,
    CHECKPOINT_WRITE,
    CHECKPOINT_RENAME,
    MODEL_FILES,
    HANDOFF,
];

static ARMED: AtomicBool = AtomicBool::new(false);
static PLAN: OnceLock<Plan> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

/// What to do where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub point: &'static str,
    /// The how-manyth time the point is reached (from 1).
    pub n: u64,
    /// SIGTERM instead of SIGKILL.
    pub term: bool,
}

/// Parses `<point>:<n>` or `<point>:<n>:term` (n ≥ 1).
pub fn parse(spec: &str) -> Result<Plan, String> {
    let (rest, term) = match spec.strip_suffix(":term") {
        Some(rest) => (rest, true),
        None => (spec, false),
    };
    let (name, n) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("`{spec}`: expected <point>:<n>[:term]"))?;
    let point = POINTS.iter().copied().find(|p| *p == name).ok_or_else(|| {
        format!(
            "`{name}` is no crash point; the points are {}",
            POINTS.join(", ")
        )
    })?;
    let n: u64 = n
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("`{n}`: expected a count of 1 or more"))?;
    Ok(Plan { point, n, term })
}

/// Arms `plan`. Only the first call counts.
pub fn arm(plan: Plan) {
    if PLAN.set(plan).is_ok() {
        ARMED.store(true, Ordering::Release);
    }
}

/// Marks `point` reached; signals the process if this is the armed point's `n`-th time.
#[inline]
pub fn reached(point: &'static str) {
    if ARMED.load(Ordering::Relaxed) {
        reached_armed(point);
    }
}

#[cold]
fn reached_armed(point: &'static str) {
    let Some(plan) = PLAN.get() else {
        return;
    };
    if plan.point == point && COUNT.fetch_add(1, Ordering::AcqRel) + 1 == plan.n {
        let signal = if plan.term {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        eprintln!(
            "crash point {point} reached for the {}. time: {}",
            plan.n,
            if plan.term { "SIGTERM" } else { "SIGKILL" }
        );
        // SAFETY: kill(2) on our own pid.
        unsafe {
            libc::kill(libc::getpid(), signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse("checkpoint.write:3"),
            Ok(Plan {
                point: CHECKPOINT_WRITE,
                n: 3,
                term: false
            })
        );
        assert!(parse("step:7:term").unwrap().term);
        assert!(parse("step").unwrap_err().contains("<point>:<n>"));
        assert!(parse("nowhere:1").unwrap_err().contains("step"));
        assert!(parse("step:0").is_err());
    }

    #[test]
    fn unarmed_points_do_nothing() {
        for _ in 0..3 {
            reached(STEP);
        }
    }
}
