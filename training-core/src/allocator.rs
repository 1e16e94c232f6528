//! The heap policy of a process that trains.
//!
//! A training step allocates and frees the same large buffers every step: activations, their
//! gradients, the GrokFast vectors, each from a few hundred KiB to tens of MiB, allocated by
//! LibTorch through the C allocator. glibc's defaults give such blocks back to the kernel when
//! they are freed (blocks above the mmap threshold are unmapped; a free heap top above the trim
//! threshold is trimmed), so the next step faults the same amount of fresh, zeroed pages in again.
//! On the `grokfast-paper` model at batch 256 that is several per cent of a step spent in the
//! kernel's page-fault path (`perf`, BENCHMARKS.md), and more with GrokFast, whose filtered
//! vector is a fresh buffer per step.
//!
//! [`keep_freed_memory`] raises both thresholds, so freed blocks stay in the heap for the next
//! step. The cost is resident memory: a process keeps up to [`TRIM_THRESHOLD`] of freed heap per
//! malloc arena instead of returning it. Only the binary decides this (the CLI and the node call
//! it first thing in `main`); the library never changes process-wide settings by itself.
//!
//! A server has many arenas (glibc makes up to eight per core as threads contend), so what the
//! policy keeps adds up between jobs. [`release_freed_memory`] hands it all back; the node calls
//! it whenever its last running job ends, so the policy costs memory only while training runs.

/// Blocks up to this size come from the heap instead of their own mapping (glibc's dynamic
/// threshold stops growing at the same 32 MiB on 64-bit targets).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Freed memory at the top of a heap is returned to the kernel only beyond this.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeapPolicy {
    /// The thresholds were raised.
    Applied,
    /// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` is set in the environment: the
    /// person running the process chose, and their choice stands.
    LeftToEnvironment,
    /// Not glibc (nothing of ours to set), or glibc refused a value and kept its defaults.
    Unsupported,
}

/// Keeps freed memory in the heap for reuse instead of returning it to the kernel (see the module
/// documentation). Call once, at the start of `main`, before other threads exist.
pub fn keep_freed_memory() -> HeapPolicy {
    let chosen = |name: &str| std::env::var_os(name).is_some();
    if chosen("MALLOC_MMAP_THRESHOLD_") || chosen("MALLOC_TRIM_THRESHOLD_") {
        return HeapPolicy::LeftToEnvironment;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> HeapPolicy {
    let set = |param, value: usize| {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only adjusts the allocator's tunables; both parameters are documented
        // for glibc, and it returns 0 (leaving the setting unchanged) on a value it refuses.
        unsafe { libc::mallopt(param, value) == 1 }
    };
    if set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) && set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) {
        HeapPolicy::Applied
    } else {
        HeapPolicy::Unsupported
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> HeapPolicy {
    HeapPolicy::Unsupported
}

/// Returns the freed memory of every malloc arena to the kernel (glibc's `malloc_trim`), which
/// [`keep_freed_memory`] otherwise keeps for the next step. Returns whether any was released;
/// `false` off glibc, where there is nothing to do.
pub fn release_freed_memory() -> bool {
    release()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() -> bool {
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn minor_faults() -> i64 {
        // SAFETY: getrusage writes into the zeroed struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        usage.ru_minflt
    }

    /// Faults taken while filling a fresh `size`-byte buffer, which is then freed.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn faults_to_fill(size: usize, byte: u8) -> i64 {
        let before = minor_faults();
        let buffer = vec![byte; size];
        let after = minor_faults();
        std::hint::black_box(buffer);
        after - before
    }

    /// The second buffer of a step-sized allocation reuses the pages the first one faulted in,
    /// instead of faulting fresh ones (which it does under glibc's defaults: the freed block is
    /// unmapped, or trimmed off the heap top).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_step_buffers_are_reused_without_page_faults() {
        match keep_freed_memory() {
            // The environment chose its own thresholds: nothing of ours to check.
            HeapPolicy::LeftToEnvironment => return,
            policy => assert_eq!(policy, HeapPolicy::Applied, "glibc took both thresholds"),
        }
        let size = 8 << 20;
        let first = faults_to_fill(size, 1);
        let second = faults_to_fill(size, 2);
        assert!(first > 0, "filling a fresh buffer faults pages in");
        assert!(
            second * 4 <= first,
            "the freed buffer's pages were reused: {second} faults the second time, {first} the first"
        );
    }

    /// What the policy kept is given back: a freed step buffer (held in the heap's free lists:
    /// a later allocation sits above it) faults its pages in afresh after a release.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn released_memory_is_faulted_in_afresh() {
        if keep_freed_memory() == HeapPolicy::LeftToEnvironment {
            return;
        }
        let size = 8 << 20;
        let refill = |release: bool| {
            let buffer = vec![1u8; size];
            let guard = vec![0u8; 64 << 10];
            drop(std::hint::black_box(buffer));
            if release {
                assert!(release_freed_memory(), "glibc released the freed buffer");
            }
            let faults = faults_to_fill(size, 2);
            drop(std::hint::black_box(guard));
            faults
        };
        let kept = refill(false);
        let released = refill(true);
        assert!(
            kept * 4 <= released && released > 0,
            "the pages went back to the kernel: {released} faults after a release, {kept} without"
        );
    }
}
