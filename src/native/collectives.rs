//! The bridge to c10d (`csrc/dist.cpp`): a process group over a TCPStore with Gloo (CPU, cfg
//! `ftexp_gloo`) or NCCL (CUDA, cfg `ftexp_nccl`), the collectives data-parallel training needs, and the
//! CUDA caching allocator's byte counts. Errors are c10d's own first line; `dist` says them in terms of
//! what to change.
use std::ffi::{c_int, c_void, CString};

use tch::Tensor;

/// Whether this build has `backend` ("gloo" or "nccl").
pub fn has(backend: &str) -> bool {
    let Ok(name) = CString::new(backend) else { return false };
    // SAFETY: a plain C call on a valid C string.
    unsafe { ffi::ftexp_dist_has(name.as_ptr()) == 1 }
}

/// Where and how to join a group.
pub struct Join<'a> {
    pub backend: &'a str,
    pub addr: &'a str,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    pub timeout_ms: u64,
    /// The network interface Gloo binds to; empty: loopback for a loopback `addr`, else the default.
    pub iface: &'a str,
    /// This process's GPU for NCCL (one GPU per process); -1 for none.
    pub gpu: i32,
}

/// A c10d process group this process has joined (freed on drop).
pub struct ProcessGroup {
    handle: *mut c_void,
}

// SAFETY: the handle is a heap-allocated c10d group with no thread affinity; it is used from one
// thread at a time (moved, never shared), as c10d allows.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group of `j.world` processes whose TCPStore rank 0 serves at `j.addr:j.port`.
    pub fn join(j: &Join) -> Result<ProcessGroup, String> {
        let c = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
        let (name, addr, iface) = (c(j.backend)?, c(j.addr)?, c(j.iface)?);
        // SAFETY: valid C strings and a buffer of `len` bytes; the call catches every C++ exception.
        let handle = super::call_ptr(|err, len| unsafe {
            ffi::ftexp_dist_new(
                name.as_ptr(),
                addr.as_ptr(),
                j.port as c_int,
                j.rank as c_int,
                j.world as c_int,
                j.timeout_ms.min(i64::MAX as u64) as i64,
                iface.as_ptr(),
                j.gpu,
                err,
                len,
            )
        })?;
        Ok(ProcessGroup { handle })
    }

    /// Adds up `t` over all ranks, in place on every rank.
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<(), String> {
        // SAFETY: a live group and tensor; the storage is shared, so the sum lands in `t`.
        super::call(|err, len| unsafe { ffi::ftexp_dist_allreduce_sum(self.handle, super::ptr(t), err, len) })
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), String> {
        // SAFETY: as in `allreduce_sum`.
        super::call(|err, len| unsafe {
            ffi::ftexp_dist_broadcast(self.handle, super::ptr(t), root as c_int, err, len)
        })
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) -> Result<(), String> {
        // SAFETY: a call on a live group.
        super::call(|err, len| unsafe { ffi::ftexp_dist_barrier(self.handle, err, len) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from ftexp_dist_new and is freed once.
        unsafe { ffi::ftexp_dist_free(self.handle) }
    }
}

/// Bytes the CUDA caching allocator holds for tensors on GPU `index`: (now, peak). `None` on a build
/// without the CUDA headers (NCCL's).
pub fn cuda_memory(index: usize) -> Option<(u64, u64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: pointers to locals and a buffer of `len` bytes.
    let got =
        super::call(|err, len| unsafe { ffi::ftexp_cuda_memory(index as c_int, &mut current, &mut peak, err, len) });
    got.ok().map(|()| (current.max(0) as u64, peak.max(0) as u64))
}

#[cfg(any(ftexp_gloo, ftexp_nccl))]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn ftexp_dist_has(backend: *const c_char) -> c_int;
        #[allow(clippy::too_many_arguments)]
        pub fn ftexp_dist_new(
            backend: *const c_char,
            addr: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            iface: *const c_char,
            gpu: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn ftexp_dist_free(group: *mut c_void);
        pub fn ftexp_dist_allreduce_sum(group: *mut c_void, t: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        pub fn ftexp_dist_broadcast(
            group: *mut c_void,
            t: *mut c_void,
            root: c_int,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
        pub fn ftexp_dist_barrier(group: *mut c_void, err: *mut c_char, len: usize) -> c_int;
        pub fn ftexp_cuda_memory(
            device: c_int,
            current: *mut i64,
            peak: *mut i64,
            err: *mut c_char,
            len: usize,
        ) -> c_int;
    }
}

/// Without the bridge: no backend, and every call fails (`dist::available` says why before a join).
#[cfg(not(any(ftexp_gloo, ftexp_nccl)))]
#[allow(clippy::missing_safety_doc)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    pub unsafe fn ftexp_dist_has(_: *const c_char) -> c_int {
        0
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn ftexp_dist_new(
        _: *const c_char,
        _: *const c_char,
        _: c_int,
        _: c_int,
        _: c_int,
        _: i64,
        _: *const c_char,
        _: c_int,
        _: *mut c_char,
        _: usize,
    ) -> *mut c_void {
        std::ptr::null_mut()
    }
    pub unsafe fn ftexp_dist_free(_: *mut c_void) {}
    pub unsafe fn ftexp_dist_allreduce_sum(_: *mut c_void, _: *mut c_void, _: *mut c_char, _: usize) -> c_int {
        -1
    }
    pub unsafe fn ftexp_dist_broadcast(_: *mut c_void, _: *mut c_void, _: c_int, _: *mut c_char, _: usize) -> c_int {
        -1
    }
    pub unsafe fn ftexp_dist_barrier(_: *mut c_void, _: *mut c_char, _: usize) -> c_int {
        -1
    }
    pub unsafe fn ftexp_cuda_memory(_: c_int, _: *mut i64, _: *mut i64, _: *mut c_char, _: usize) -> c_int {
        -1
    }
}
