//! Flushing subnormal floats to zero while a run computes.
//!
//! Arithmetic on subnormal (denormal) floats — magnitudes below 1.2e-38 in `f32` — takes a slow
//! microcode path on x86 CPUs, tens of times slower than on normal numbers. Training produces them:
//! on the Grokfast task the amplified gradients of GrokFast-EMA drive the model into a regime where
//! they appear, and the very same step ran 8–11 % slower than without the filter, although the
//! filter's own arithmetic costs about 1 % (BENCHMARKS.md). Values that small carry nothing a
//! training run needs, so the trainer treats them as zero, as TensorFlow does by default and
//! PyTorch's `torch.set_flush_denormal(True)` does on request.
//!
//! The mode is a per-thread CPU register (x86-64: MXCSR's flush-to-zero and denormals-are-zero
//! bits; AArch64: FPCR.FZ). [`FlushDenormals`] sets it on the current thread and restores the
//! previous mode when dropped. Threads inherit the mode of the thread that creates them, and keep
//! it: LibTorch's OpenMP workers are started by a thread's first parallel operation and flush only
//! if that thread flushed then. In a trainer that operation is the weight initialisation, so
//! [`Trainer::new`](crate::train::Trainer::new) and `resume` hold the guard as well as `run` and
//! `evaluate`. (Holding it only in `run` left the second of two threads computing on subnormals,
//! and the GrokFast-EMA overhead at 2 threads at 5–8 %; BENCHMARKS.md, "GrokFast-EMA overhead".) On other
//! architectures the guard does nothing.

/// While alive, the current thread (and threads it starts) flush subnormal floats to zero.
#[derive(Debug)]
#[must_use = "the mode is restored when the guard is dropped"]
pub struct FlushDenormals {
    previous: Option<arch::Mode>,
}

impl FlushDenormals {
    /// Sets flush-to-zero on the current thread.
    pub fn new() -> Self {
        let previous = arch::read();
        if let Some(mode) = previous {
            arch::write(arch::flushing(mode));
        }
        Self { previous }
    }

    /// Whether the current thread flushes subnormal results to zero now.
    pub fn active() -> bool {
        arch::read().is_some_and(|mode| arch::flushing(mode) == mode)
    }
}

impl Default for FlushDenormals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        if let Some(mode) = self.previous {
            arch::write(mode);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod arch {
    use std::arch::asm;

    pub type Mode = u32;

    /// MXCSR bit 15, flush-to-zero (subnormal results become 0), and bit 6, denormals-are-zero
    /// (subnormal inputs read as 0).
    const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

    pub fn flushing(mode: Mode) -> Mode {
        mode | FTZ_DAZ
    }

    pub fn read() -> Option<Mode> {
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores the 4-byte MXCSR at the given address, a live local.
        unsafe {
            asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        }
        Some(csr)
    }

    pub fn write(mode: Mode) {
        // SAFETY: `ldmxcsr` loads MXCSR from a live local. Only the two subnormal-handling bits
        // ever differ from the value read before; rounding and exception masks stay as they
        // were, so Rust code sees the same arithmetic except on subnormal values.
        unsafe {
            asm!("ldmxcsr [{}]", in(reg) &mode, options(nostack, readonly, preserves_flags));
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use std::arch::asm;

    pub type Mode = u64;

    /// FPCR bit 24, FZ: subnormal inputs and results are flushed to zero.
    const FZ: u64 = 1 << 24;

    pub fn flushing(mode: Mode) -> Mode {
        mode | FZ
    }

    pub fn read() -> Option<Mode> {
        let fpcr: u64;
        // SAFETY: reading FPCR has no side effect.
        unsafe {
            asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack, preserves_flags));
        }
        Some(fpcr)
    }

    pub fn write(mode: Mode) {
        // SAFETY: only FZ ever differs from the value read before (see the x86-64 version).
        unsafe {
            asm!("msr fpcr, {}", in(reg) mode, options(nomem, nostack, preserves_flags));
        }
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod arch {
    pub type Mode = ();

    pub fn flushing(mode: Mode) -> Mode {
        mode
    }

    pub fn read() -> Option<Mode> {
        None
    }

    pub fn write(_mode: Mode) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subnormal computed at run time, so the compiler cannot fold it.
    fn tiny_product() -> f32 {
        std::hint::black_box(1e-30f32) * std::hint::black_box(1e-10f32)
    }

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn subnormal_results_are_zero_inside_the_guard_and_come_back_after() {
        // A fresh test thread starts with the default mode.
        std::thread::spawn(|| {
            assert!(!FlushDenormals::active());
            assert!(tiny_product() > 0.0, "1e-40 is a subnormal, not zero");
            {
                let _outer = FlushDenormals::new();
                assert!(FlushDenormals::active());
                assert_eq!(tiny_product(), 0.0);
                {
                    let _inner = FlushDenormals::new();
                    assert_eq!(tiny_product(), 0.0);
                }
                // The inner guard restores the outer one's mode, not the default.
                assert!(FlushDenormals::active());
                // Threads started inside the guard inherit the mode.
                let child = std::thread::spawn(|| (FlushDenormals::active(), tiny_product()));
                assert_eq!(child.join().unwrap(), (true, 0.0));
                // Normal numbers are untouched.
                assert_eq!(std::hint::black_box(1.5f32) * 2.0, 3.0);
            }
            assert!(!FlushDenormals::active());
            assert!(tiny_product() > 0.0);
        })
        .join()
        .unwrap();
    }
}
