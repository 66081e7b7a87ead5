//! libtorch's fused AdamW (`csrc/tensors.cpp`), which tch 0.24 does not wrap: one pass over each tensor,
//! vectorised and multi-threaded, instead of a dozen full-size temporaries.
use std::ffi::c_void;

use tch::Tensor;

use super::Part;

/// Whether this build has the fused AdamW ([`fused_adamw`] fails otherwise; see `ftexp env`).
pub const AVAILABLE: bool = cfg!(ftexp_native);

/// The tensors of one fused update, each list as long as `params`.
pub struct Tensors<'a> {
    pub params: &'a [&'a Tensor],
    pub grads: &'a [&'a Tensor],
    pub exp_avgs: &'a [&'a Tensor],
    pub exp_avg_sqs: &'a [&'a Tensor],
}

/// The hyper-parameters of one update; `step` is the optimizer step (1 for the first update), which
/// sets the bias corrections.
pub struct Hyper {
    pub step: f64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
}

/// One AdamW update of every tensor in `t.params`, in place (decoupled weight decay).
pub fn fused_adamw(t: &Tensors, h: &Hyper) -> Result<(), String> {
    super::require(AVAILABLE, Part::FusedAdamW)?;
    let n = t.params.len();
    if [t.grads.len(), t.exp_avgs.len(), t.exp_avg_sqs.len()].iter().any(|&l| l != n) {
        return Err(format!("fused AdamW: {n} parameters but other numbers of gradients or moments"));
    }
    let ptrs = |ts: &[&Tensor]| ts.iter().map(|t| super::ptr(t)).collect::<Vec<*mut c_void>>();
    let (p, g, m, v) = (ptrs(t.params), ptrs(t.grads), ptrs(t.exp_avgs), ptrs(t.exp_avg_sqs));
    // SAFETY: arrays of `n` live tensors; `err` is a buffer of `len` bytes.
    super::call(|err, len| unsafe {
        ffi::ftexp_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            n,
            h.step,
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            err,
            len,
        )
    })
}

#[cfg(ftexp_native)]
mod ffi {
    use std::ffi::{c_char, c_void};
    extern "C" {
        #[allow(clippy::too_many_arguments)]
        pub fn ftexp_fused_adamw(
            params: *const *mut c_void,
            grads: *const *mut c_void,
            exp_avgs: *const *mut c_void,
            exp_avg_sqs: *const *mut c_void,
            n: usize,
            step: f64,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;
    }
}

/// Without the native tensor operations ([`fused_adamw`] says why first).
#[cfg(not(ftexp_native))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod ffi {
    use std::ffi::{c_char, c_void};
    pub unsafe fn ftexp_fused_adamw(
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: *const *mut c_void,
        _: usize,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        _: f64,
        _: *mut c_char,
        _: usize,
    ) -> i32 {
        -1
    }
}
