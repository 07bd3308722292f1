//! Process-wide CPU settings for training: flush-to-zero for subnormal floats on every compute thread.
//!
//! As training converges, gradients, momentum buffers and soft-target differences shrink into the subnormal
//! range, where x86 arithmetic is many times slower; epochs then grow slower for no gain in accuracy.
//! [`init`] sets FTZ/DAZ on the calling thread and builds rayon's global pool (which candle and gemm use) with
//! the same flags on each worker.

/// Sets flush-to-zero and denormals-are-zero on the current thread (x86-64 only; a no-op elsewhere).
pub fn set_flush_to_zero() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reading and writing MXCSR only changes how this thread rounds subnormal results.
    #[allow(deprecated)]
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        _mm_setcsr(_mm_getcsr() | 0x8040);
    }
}

/// Sets flush-to-zero on this thread and builds rayon's global pool with it on every worker. Call once,
/// early in `main`; a second call (or a pool that already exists) leaves the existing pool as it is.
pub fn init() {
    set_flush_to_zero();
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| set_flush_to_zero())
        .build_global();
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnormals_flush_to_zero_after_init() {
        std::thread::spawn(|| {
            super::set_flush_to_zero();
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            let half = std::hint::black_box(tiny) / std::hint::black_box(4.0f32);
            if cfg!(target_arch = "x86_64") {
                assert_eq!(half, 0.0);
            }
        })
        .join()
        .unwrap();
    }
}
