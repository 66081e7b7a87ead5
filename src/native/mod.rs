//! Every call into ftexp's own C++ (`csrc/`, compiled by build.rs): the `extern "C"` declarations and
//! the thin safe wrappers around them, in one place. Three parts are built separately, each only when
//! its headers were found, and a build names what it lacks (see [`Part`] and `ftexp env`):
//! - `csrc/memory.cpp` and `csrc/tensors.cpp` (libtorch's headers, cfg `ftexp_native`): the counting
//!   CPU allocator ([`allocator`]), libtorch's fused AdamW ([`adamw`]) and setting a tensor's `.grad`
//!   ([`grad`]);
//! - `csrc/dist.cpp`, the bridge to c10d ([`collectives`]): with Gloo (cfg `ftexp_gloo`) and with NCCL
//!   (cfg `ftexp_nccl`).
//!
//! No C++ exception crosses into Rust: a call that can fail writes its message into a buffer and
//! returns non-zero, and [`call`] turns that into `Err(message)`.
use std::ffi::{c_char, c_int};

pub mod adamw;
pub mod allocator;
pub mod collectives;
pub mod grad;
pub mod rng;

/// A part of the native layer that a build may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    FusedAdamW,
    CountingAllocator,
    Gloo,
    Nccl,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::FusedAdamW, Part::CountingAllocator, Part::Gloo, Part::Nccl];

    /// How `ftexp env` names it.
    pub fn name(self) -> &'static str {
        match self {
            Part::FusedAdamW => "fused AdamW",
            Part::CountingAllocator => "counting allocator",
            Part::Gloo => "Gloo",
            Part::Nccl => "NCCL",
        }
    }

    /// `None` when this build has the part, else what to install (build.rs found it missing).
    pub fn missing(self) -> Option<&'static str> {
        let why = match self {
            Part::FusedAdamW | Part::CountingAllocator => env!("BUILT_NATIVE_MISSING"),
            Part::Gloo => env!("BUILT_GLOO_MISSING"),
            Part::Nccl => env!("BUILT_NCCL_MISSING"),
        };
        (!why.is_empty()).then_some(why)
    }

    pub fn present(self) -> bool {
        self.missing().is_none()
    }
}

const ERR_LEN: usize = 1024;

fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Calls a native function that returns 0, or writes its error into the buffer it is given (pointer
/// and length) and returns another value.
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut err = [0u8; ERR_LEN];
    if f(err.as_mut_ptr() as *mut c_char, ERR_LEN) == 0 {
        return Ok(());
    }
    Err(message(&err))
}

/// Like [`call`] for a function that returns a pointer: null means failure.
pub(crate) fn call_ptr<T>(f: impl FnOnce(*mut c_char, usize) -> *mut T) -> Result<*mut T, String> {
    let mut err = [0u8; ERR_LEN];
    let out = f(err.as_mut_ptr() as *mut c_char, ERR_LEN);
    if out.is_null() {
        return Err(message(&err));
    }
    Ok(out)
}

/// The `at::Tensor*` behind a tch tensor (torch-sys's `tensor` is a `torch::Tensor*`).
fn ptr(t: &tch::Tensor) -> *mut std::ffi::c_void {
    t.as_ptr() as *mut std::ffi::c_void
}

/// `Err` naming what this build lacks, for a call into a part it was built without.
fn require(available: bool, part: Part) -> Result<(), String> {
    match (available, part.missing()) {
        (true, _) => Ok(()),
        (false, why) => Err(format!("this ftexp was built without {}: {}", part.name(), why.unwrap_or("not compiled"))),
    }
}
