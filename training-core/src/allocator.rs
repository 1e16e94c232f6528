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
//! policy keeps adds up between jobs. A thread that trains holds a [`TrainingHeap`]; when the
//! last one is dropped the process goes back to glibc's defaults, gives back the free top of the
//! dropping thread's own arena (which `malloc_trim` does not reach: glibc trims a thread arena's
//! top only from a free into it) and then [`release_freed_memory`]; the first one of the next run
//! raises the thresholds again. So the policy costs memory only while training runs.

/// Blocks up to this size come from the heap instead of their own mapping (glibc's dynamic
/// threshold stops growing at the same 32 MiB on 64-bit targets).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Freed memory at the top of a heap is returned to the kernel only beyond this.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// glibc's own thresholds (`M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` both start at 128 KiB).
const GLIBC_DEFAULT_THRESHOLD: usize = 128 << 10;

/// Trainers alive, and whether the policy is ours to switch ([`keep_freed_memory`] applied it).
static TRAINERS: std::sync::Mutex<Trainers> = std::sync::Mutex::new(Trainers {
    alive: 0,
    policy_ours: false,
    lowered: false,
});

struct Trainers {
    alive: usize,
    policy_ours: bool,
    /// The thresholds are glibc's defaults for now (no trainer alive).
    lowered: bool,
}

fn trainers() -> std::sync::MutexGuard<'static, Trainers> {
    TRAINERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held by a thread for as long as it trains (see the module documentation): the heap policy
/// holds while any is alive, and the last one dropped gives the memory back. Drop it on the
/// thread that trained, after what it trained with is dropped.
#[must_use = "the policy holds only while the guard lives"]
pub struct TrainingHeap(());

impl TrainingHeap {
    pub fn enter() -> TrainingHeap {
        let mut trainers = trainers();
        trainers.alive += 1;
        if trainers.alive == 1 && trainers.policy_ours && trainers.lowered {
            trainers.lowered = apply() != HeapPolicy::Applied;
        }
        TrainingHeap(())
    }
}

impl Drop for TrainingHeap {
    fn drop(&mut self) {
        let mut trainers = trainers();
        trainers.alive -= 1;
        if trainers.alive == 0 && trainers.policy_ours {
            trainers.lowered = lower();
            trim_own_arena();
            release();
        }
    }
}

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
    let policy = apply();
    trainers().policy_ours = policy == HeapPolicy::Applied;
    policy
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

/// Back to glibc's defaults; whether both took.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn lower() -> bool {
    // SAFETY: as in `apply`.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            GLIBC_DEFAULT_THRESHOLD as libc::c_int,
        ) == 1
            && libc::mallopt(
                libc::M_TRIM_THRESHOLD,
                GLIBC_DEFAULT_THRESHOLD as libc::c_int,
            ) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn lower() -> bool {
    false
}

/// Trims the free top of the calling thread's arena. glibc trims a thread arena's top (down to
/// the trim threshold, deleting heaps it empties) only when a free of at least 64 KiB lands in
/// that arena, and `malloc_trim` leaves it alone; so this thread frees such a block, under
/// the lowered threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_own_arena() {
    // Above glibc's 64 KiB consolidation threshold, below the default mmap threshold, so the
    // block comes from this thread's arena and goes back into it.
    const BLOCK: usize = 96 << 10;
    // SAFETY: a block of our own, freed at once and never read.
    unsafe {
        let block = libc::malloc(BLOCK);
        if !block.is_null() {
            libc::free(std::hint::black_box(block));
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_own_arena() {}

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

    /// Resident pages of this process, in bytes.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: sysconf only reads a system constant.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    }

    /// The free top of a trainer thread's arena, which the policy keeps and `malloc_trim` does
    /// not reach, goes back to the kernel when the last trainer ends.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_last_trainer_gives_back_its_threads_arena() {
        if keep_freed_memory() != HeapPolicy::Applied {
            return;
        }
        std::thread::spawn(|| {
            let guard = TrainingHeap::enter();
            let blocks: Vec<Vec<u8>> = (0..48).map(|i| vec![i as u8 + 1; 1 << 20]).collect();
            drop(std::hint::black_box(blocks));
            let kept = resident_bytes();
            drop(guard);
            let after = resident_bytes();
            assert!(
                kept.saturating_sub(after) >= 32 << 20,
                "{} MiB resident while training, {} MiB after the last trainer",
                kept >> 20,
                after >> 20
            );
            // The next trainer has the policy again: a freed step buffer is reused in place.
            let _again = TrainingHeap::enter();
            let first = faults_to_fill(8 << 20, 1);
            let second = faults_to_fill(8 << 20, 2);
            assert!(
                second * 4 <= first,
                "{second} faults the second time, {first} the first"
            );
        })
        .join()
        .unwrap();
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
