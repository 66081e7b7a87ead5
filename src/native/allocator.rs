//! The counting CPU allocator (`csrc/memory.cpp`): libtorch's own CPU allocation with the bytes in use
//! and their peak counted, and an optional limit past which an allocation fails with libtorch's
//! out-of-memory error.

/// Counts the bytes of CPU tensors from now on (libtorch's CPU allocator, wrapped), and makes any
/// allocation past `limit` bytes fail with libtorch's out-of-memory error. `false` on a build without
/// the counting allocator (see `ftexp env`).
pub fn count_cpu_memory(limit: Option<u64>) -> bool {
    // SAFETY: plain values; the allocator is installed once and lives for the process.
    unsafe { ffi::ftexp_cpu_memory_count(limit.map_or(0, |b| b.min(i64::MAX as u64) as i64)) };
    cfg!(ftexp_native)
}

/// Bytes of CPU tensors in use and their peak, since [`count_cpu_memory`] (or [`reset_cpu_peak`]).
pub fn cpu_memory() -> Option<(u64, u64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: pointers to locals.
    unsafe { ffi::ftexp_cpu_memory(&mut current, &mut peak) };
    cfg!(ftexp_native).then_some((current.max(0) as u64, peak.max(0) as u64))
}

/// Starts the peak of [`cpu_memory`] again from the bytes in use now.
pub fn reset_cpu_peak() {
    // SAFETY: no arguments.
    unsafe { ffi::ftexp_cpu_memory_reset_peak() };
}

#[cfg(ftexp_native)]
mod ffi {
    extern "C" {
        pub fn ftexp_cpu_memory_count(limit: i64);
        pub fn ftexp_cpu_memory(current: *mut i64, peak: *mut i64);
        pub fn ftexp_cpu_memory_reset_peak();
    }
}

/// Without the counting allocator nothing is counted.
#[cfg(not(ftexp_native))]
#[allow(clippy::missing_safety_doc)]
mod ffi {
    pub unsafe fn ftexp_cpu_memory_count(_: i64) {}
    pub unsafe fn ftexp_cpu_memory(_: *mut i64, _: *mut i64) {}
    pub unsafe fn ftexp_cpu_memory_reset_peak() {}
}
