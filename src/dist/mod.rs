//! Several processes training one model, on PyTorch's own distributed engine (c10d): where this process
//! stands (torchrun's variables), and a process group — Gloo on CPUs, NCCL on GPUs — with the few
//! collectives data-parallel training needs. The C++ side is `csrc/dist.cpp`, compiled by build.rs.
use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::Problems;

/// This process's place in a run of several, as torchrun (or `ftexp run` itself, or any launcher that
/// follows torchrun's conventions) describes it in the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub local_world: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Rank {
    /// `None` when `RANK` and `WORLD_SIZE` are not set: a process on its own.
    pub fn from_env() -> Result<Option<Rank>, Problems> {
        Rank::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Rank>, Problems> {
        let (Some(_), Some(_)) = (var("RANK"), var("WORLD_SIZE")) else {
            return Ok(None);
        };
        let number = |key: &str, default: Option<usize>| -> Result<usize, Problems> {
            match var(key) {
                Some(v) => v.trim().parse().map_err(|_| {
                    Problems::one(format!(
                        "environment variable {key} = {v:?} is not a whole number; the launcher must set it"
                    ))
                }),
                None => default.ok_or_else(|| {
                    Problems::one(format!(
                        "environment variable {key} is not set; the launcher must set it (as torchrun does)"
                    ))
                }),
            }
        };
        let (rank, world) = (number("RANK", None)?, number("WORLD_SIZE", None)?);
        let local_rank = number("LOCAL_RANK", Some(rank))?;
        let local_world = number("LOCAL_WORLD_SIZE", Some(world))?;
        let master_port = number("MASTER_PORT", Some(29500))?;
        if rank >= world || local_rank >= local_world || world == 0 {
            return Err(Problems::one(format!(
                "RANK = {rank}, WORLD_SIZE = {world}, LOCAL_RANK = {local_rank}, LOCAL_WORLD_SIZE = {local_world}: a rank must be below its world size; fix the launcher's settings"
            )));
        }
        let master_port = u16::try_from(master_port)
            .map_err(|_| Problems::one(format!("MASTER_PORT = {master_port} is not a port (1–65535)")))?;
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        Ok(Some(Rank { rank, world, local_rank, local_world, master_addr, master_port }))
    }

    /// The device of this rank: GPU `LOCAL_RANK` when the run is on CUDA, else the CPU.
    pub fn device(&self, requested: Device) -> Device {
        if requested.is_cuda() {
            Device::Cuda(self.local_rank)
        } else {
            requested
        }
    }
}

/// What this binary can use: each backend, or why not.
pub fn available(backend: Backend) -> Result<(), Problems> {
    #[cfg(ftexp_dist)]
    {
        let name = CString::new(backend.name()).expect("no NUL");
        // SAFETY: a plain C call on a valid C string.
        if unsafe { ffi::ftexp_dist_has(name.as_ptr()) } == 1 {
            return Ok(());
        }
    }
    Err(Problems::one(format!(
        "training on several {} needs {}, which this ftexp was built without: {}",
        if backend == Backend::Nccl { "GPUs" } else { "CPU processes" },
        backend.name(),
        env!("DIST_BRIDGE_MISSING")
    )))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    pub fn for_device(device: Device) -> Backend {
        if device.is_cuda() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// A c10d process group this process has joined.
pub struct Group {
    handle: *mut c_void,
    pub rank: usize,
    pub world: usize,
}

const ERR_LEN: usize = 1024;

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Calls a function of the native bridge that returns 0, or writes its error into the buffer it is
/// given (pointer and length) and returns another value.
pub fn bridge_call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut err = [0u8; ERR_LEN];
    if f(err.as_mut_ptr() as *mut c_char, ERR_LEN) == 0 {
        return Ok(());
    }
    Err(message(&err))
}

impl Group {
    /// Joins the group of `r.world` processes that rank 0 hosts at `MASTER_ADDR:MASTER_PORT`; gives up
    /// after `timeout` (also the limit on each collective).
    pub fn join(r: &Rank, backend: Backend, timeout: Duration) -> Result<Group, Problems> {
        // NCCL: one GPU per process, GPU LOCAL_RANK of this machine.
        let gpu = if backend == Backend::Nccl { r.local_rank as c_int } else { -1 };
        available(backend)?;
        let c = |s: &str| CString::new(s).map_err(|_| Problems::one(format!("{s:?} holds a NUL byte")));
        let (name, addr) = (c(backend.name())?, c(&r.master_addr)?);
        let iface = c(&std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default())?;
        let mut err = [0u8; ERR_LEN];
        // SAFETY: valid C strings and a buffer of ERR_LEN bytes; the call catches every C++ exception.
        let handle = unsafe {
            ffi::ftexp_dist_new(
                name.as_ptr(),
                addr.as_ptr(),
                r.master_port as c_int,
                r.rank as c_int,
                r.world as c_int,
                timeout.as_millis() as i64,
                iface.as_ptr(),
                gpu,
                err.as_mut_ptr() as *mut c_char,
                ERR_LEN,
            )
        };
        if handle.is_null() {
            return Err(Problems::one(join_error(r, &message(&err), timeout)));
        }
        Ok(Group { handle, rank: r.rank, world: r.world })
    }

    fn call(&self, what: &str, f: impl FnOnce(*mut c_char) -> c_int) -> Result<(), Problems> {
        bridge_call(|err, _| f(err)).map_err(|m| {
            Problems::one(format!(
                "rank {} of {}: {what} failed: {m} (another process stopped or did not answer in time)",
                self.rank, self.world
            ))
        })
    }

    /// Adds up `t` over all ranks, in place on every rank.
    pub fn allreduce_sum(&self, t: &Tensor) -> Result<(), Problems> {
        // SAFETY: tch's tensor pointer is an `at::Tensor*`; the storage is shared, so the sum lands in `t`.
        self.call("allreduce", |err| unsafe {
            ffi::ftexp_dist_allreduce_sum(self.handle, t.as_ptr() as *mut c_void, err, ERR_LEN)
        })
    }

    /// Copies rank `root`'s `t` into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), Problems> {
        // SAFETY: as in `allreduce_sum`.
        self.call("broadcast", |err| unsafe {
            ffi::ftexp_dist_broadcast(self.handle, t.as_ptr() as *mut c_void, root as c_int, err, ERR_LEN)
        })
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&self) -> Result<(), Problems> {
        // SAFETY: a call on a live group.
        self.call("barrier", |err| unsafe { ffi::ftexp_dist_barrier(self.handle, err, ERR_LEN) })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle came from ftexp_dist_new and is freed once.
        unsafe { ffi::ftexp_dist_free(self.handle) }
    }
}

/// c10d's message, said in terms of what to change.
fn join_error(r: &Rank, cause: &str, timeout: Duration) -> String {
    let at = format!("{}:{}", r.master_addr, r.master_port);
    let lower = cause.to_lowercase();
    if lower.contains("address already in use") {
        return format!("rank 0 cannot listen on {at}: the port is in use; set MASTER_PORT to a free port");
    }
    if lower.contains("timed out") || lower.contains("timeout") {
        return format!(
            "rank {} of {}: not every process joined at {at} within {} s ({cause}); start all {} processes with the same MASTER_ADDR and MASTER_PORT, or raise train.sync_timeout_s",
            r.rank,
            r.world,
            timeout.as_secs(),
            r.world
        );
    }
    format!("rank {} of {}: cannot join the process group at {at}: {cause}", r.rank, r.world)
}

/// Bytes the CUDA caching allocator holds for tensors on GPU `index`: (now, peak). `None` on a build
/// without the CUDA headers.
pub fn cuda_memory(index: usize) -> Option<(u64, u64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    let mut err = [0u8; ERR_LEN];
    // SAFETY: pointers to locals and a buffer of ERR_LEN bytes.
    let rc = unsafe {
        ffi::ftexp_cuda_memory(index as c_int, &mut current, &mut peak, err.as_mut_ptr() as *mut c_char, ERR_LEN)
    };
    (rc == 0).then_some((current.max(0) as u64, peak.max(0) as u64))
}

#[cfg(ftexp_dist)]
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

/// Without the bridge: every call fails (`Group::join` never gets this far, `available` says why).
#[cfg(not(ftexp_dist))]
#[allow(clippy::missing_safety_doc)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
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
