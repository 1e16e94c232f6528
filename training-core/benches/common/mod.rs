//! What the training-core bench binaries share: reading their knobs from the environment (once,
//! in `main`), describing the machine, and the small statistics they print.
//!
//! Every bench prints machine-readable JSON lines (one object per line, starting `{"bench":`)
//! next to its human-readable table; `throughput_table.py` merges the lines of the tch and flex
//! throughput runs into the tables of `BENCHMARKS.md`.

#![allow(dead_code)] // each bench binary uses its own part of this module

pub mod paper;

use std::str::FromStr;

/// Which backend this build of the bench measures.
pub fn backend_impl() -> &'static str {
    if cfg!(feature = "tch") {
        "tch"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    }
}

/// The value of environment variable `name`, parsed; `default` when unset or empty.
pub fn env_value<T: FromStr>(name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map_err(|e| format!("{name}={text:?}: {e}")),
        _ => Ok(default),
    }
}

/// A comma-separated list from environment variable `name`, each item parsed; `default` (also
/// comma-separated) when unset or empty.
pub fn env_list<T: FromStr>(name: &str, default: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    let text = std::env::var(name)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let items = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().map_err(|e| format!("{name}: {item:?}: {e}")))
        .collect::<Result<Vec<T>, String>>()?;
    if items.is_empty() {
        return Err(format!("{name} lists nothing"));
    }
    Ok(items)
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model, logical CPU count and kernel, as far as `/proc` tells.
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!(", Linux {}", k.trim()))
        .unwrap_or_default();
    format!("{model}, {} logical CPUs{kernel}", logical_cpus())
}

/// The 1-minute load average, where `/proc/loadavg` exists.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Prints the machine (human line and JSON line) and warns when something else is running: a
/// timing taken next to another job measures the sharing, not the code.
pub fn announce_machine(bench: &str) {
    let machine = machine_description();
    let load = load_average();
    println!("# {bench}: {machine}; load average {load:?} at start");
    println!(
        "{}",
        serde_json::json!({
            "bench": "machine",
            "for": bench,
            "impl": backend_impl(),
            "machine": machine,
            "logical_cpus": logical_cpus(),
            "load_average_1m": load,
        })
    );
    if let Some(load) = load
        && load > 0.5
    {
        eprintln!(
            "warning: load average {load:.2} at start: the machine is not idle, these timings \
             will not be fit to publish"
        );
    }
}

/// The median (the mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}
