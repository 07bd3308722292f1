//! A phase's peak memory is its own: after a phase that touched 200 MiB and freed it, a phase that touches
//! 10 MiB reports a peak near its own size, not the earlier phase's. A test binary of its own with a single
//! test, so no other test allocates while it measures the process's resident memory.

use distill_core::train::{rss_mb, PhaseMemory};

/// `n` blocks of 1 MiB, every byte written (so every page is resident). 1 MiB is below the allocator's mmap
/// threshold, so the blocks live on glibc's heap, which keeps them after they are freed.
fn touch(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| vec![(i % 255 + 1) as u8; 1 << 20]).collect()
}

#[test]
fn a_small_phase_after_a_large_one_reports_its_own_peak() {
    if !cfg!(target_os = "linux") {
        return; // the figures come from /proc
    }
    // as in the `distill` binary: 32 MiB mmap threshold, the heap never trimmed on its own
    distill_core::runtime::tune_allocator();

    let large = PhaseMemory::start();
    let blocks = touch(200);
    let large_peak = large.peak_mb();
    drop(std::hint::black_box(blocks));
    assert!(
        large_peak - large.start_mb > 190.0,
        "a phase touching 200 MiB peaks at {large_peak:.0} MiB from {:.0} MiB",
        large.start_mb
    );
    let kept = rss_mb();

    let small = PhaseMemory::start();
    assert!(
        small.start_mb < large_peak - 150.0,
        "freed heap went back to the OS: {:.0} MiB resident at the small phase's start, {kept:.0} MiB before \
         it, {large_peak:.0} MiB peak of the large phase",
        small.start_mb
    );
    let blocks = touch(10);
    let small_peak = small.peak_mb();
    drop(std::hint::black_box(blocks));
    assert!(
        small_peak < large_peak - 150.0 && small_peak - small.start_mb < 50.0,
        "the small phase (10 MiB) peaks at {small_peak:.0} MiB from {:.0} MiB; the large one at {large_peak:.0} MiB",
        small.start_mb
    );
    assert!(
        small_peak - small.start_mb >= 9.0,
        "the small phase's own 10 MiB show: {small_peak:.0} MiB from {:.0} MiB",
        small.start_mb
    );
    // the latest phase's start is what `finish_phase` records
    assert_eq!(PhaseMemory::latest(), Some(small));
}
