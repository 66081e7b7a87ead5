//! Setting a tensor's `.grad` to a given tensor (`csrc/tensors.cpp`), which tch 0.24 does not wrap: a
//! view into a flat buffer that c10d adds up in place.
use tch::Tensor;

use super::Part;

/// Whether this build can alias gradients ([`set_grad`] fails otherwise).
pub const AVAILABLE: bool = cfg!(ftexp_native);

/// Makes `grad` the `.grad` of `tensor`: backward passes then add into it in place.
pub fn set_grad(tensor: &Tensor, grad: &Tensor) -> Result<(), String> {
    super::require(AVAILABLE, Part::FusedAdamW)?;
    // SAFETY: two live tensors; `err` is a buffer of `len` bytes.
    super::call(|err, len| unsafe { ffi::ftexp_set_grad(super::ptr(tensor), super::ptr(grad), err, len) })
}

#[cfg(ftexp_native)]
mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        pub fn ftexp_set_grad(tensor: *mut c_void, grad: *mut c_void, err: *mut c_char, err_len: usize) -> i32;
    }
}

/// Without the native tensor operations no gradient is aliased ([`set_grad`] says why first).
#[cfg(not(ftexp_native))]
#[allow(clippy::missing_safety_doc)]
mod ffi {
    use std::ffi::{c_char, c_void};
    pub unsafe fn ftexp_set_grad(_: *mut c_void, _: *mut c_void, _: *mut c_char, _: usize) -> i32 {
        -1
    }
}
