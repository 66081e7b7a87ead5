//! AdamW over plain tensors, so its moments can be saved and restored with a checkpoint
//! (betas 0.9 and 0.95 as litgpt uses, eps 1e-8, decoupled weight decay).
use tch::{Kind, Tensor};

use crate::config::TrainConfig;
use crate::methods::Trainable;
use crate::native::adamw;

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.95;
pub const EPS: f64 = 1e-8;

pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    pub step: u64,
}

impl AdamW {
    /// Moments for each of `params`, zero.
    pub fn new(params: &[Trainable]) -> AdamW {
        let zeros = |t: &Tensor| Tensor::zeros(t.size(), (Kind::Float, t.device()));
        AdamW {
            m: params.iter().map(|p| zeros(&p.tensor)).collect(),
            v: params.iter().map(|p| zeros(&p.tensor)).collect(),
            decay: params.iter().map(|p| p.decays).collect(),
            params: params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect(),
            step: 0,
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (no host round trip); returns that
    /// norm before clipping, left on the device (`None` with clipping off, or no gradient).
    pub fn clip_grad_norm(&self, max_norm: f64) -> Option<Tensor> {
        if max_norm <= 0.0 {
            return None;
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Float).norm())
                .collect();
            if norms.is_empty() {
                return None;
            }
            let total = Tensor::stack(&norms, 0).norm();
            let factor = (&total + 1e-6).reciprocal().g_mul_scalar(max_norm).clamp_max(1.0);
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_(&factor.to_kind(g.kind()));
                }
            }
            Some(total)
        })
    }

    /// Clips the gradients to `train.max_grad_norm`, then one update with `lr` and `train.weight_decay`;
    /// returns the gradients' norm before clipping (see [`AdamW::clip_grad_norm`]).
    pub fn update(&mut self, lr: f64, t: &TrainConfig) -> Option<Tensor> {
        let norm = self.clip_grad_norm(t.max_grad_norm);
        self.step(lr, t.weight_decay);
        norm
    }

    /// One update with learning rate `lr`, then zeroes the gradients. fp32 tensors go through libtorch's
    /// fused AdamW (one pass each, decaying and not decaying in two calls); others, and every tensor on a
    /// build without the fused AdamW (`ftexp env` says so), through the same formula in separate operations.
    pub fn step(&mut self, lr: f64, weight_decay: f64) {
        self.step += 1;
        let step = self.step;
        tch::no_grad(|| {
            let mut fused: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
            for (i, (_, p)) in self.params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let decays = self.decay[i] && weight_decay > 0.0;
                if adamw::AVAILABLE && p.kind() == Kind::Float && g.kind() == Kind::Float {
                    fused[decays as usize].push(i);
                } else {
                    self.step_one(i, step, lr, if decays { weight_decay } else { 0.0 });
                }
            }
            for (decays, members) in fused.iter().enumerate() {
                let wd = if decays == 1 { weight_decay } else { 0.0 };
                if let Err(e) = self.fused_step(members, step, lr, wd) {
                    // Not expected (the tensors were checked above); the separate operations do the same.
                    eprintln!("warning: fused AdamW failed ({e}); updating tensor by tensor");
                    members.iter().for_each(|&i| self.step_one(i, step, lr, wd));
                }
            }
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
        });
    }

    /// libtorch's fused AdamW over the tensors `members`.
    fn fused_step(&self, members: &[usize], step: u64, lr: f64, weight_decay: f64) -> Result<(), String> {
        let grads: Vec<Tensor> = members.iter().map(|&i| self.params[i].1.grad()).collect();
        let params: Vec<&Tensor> = members.iter().map(|&i| &self.params[i].1).collect();
        let m: Vec<&Tensor> = members.iter().map(|&i| &self.m[i]).collect();
        let v: Vec<&Tensor> = members.iter().map(|&i| &self.v[i]).collect();
        let tensors =
            adamw::Tensors { params: &params, grads: &grads.iter().collect::<Vec<_>>(), exp_avgs: &m, exp_avg_sqs: &v };
        let hyper = adamw::Hyper { step: step as f64, lr, beta1: BETA1, beta2: BETA2, weight_decay, eps: EPS };
        adamw::fused_adamw(&tensors, &hyper)
    }

    /// The update of tensor `i` in separate operations.
    fn step_one(&self, i: usize, step: u64, lr: f64, weight_decay: f64) {
        let t = step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let p = &self.params[i].1;
        let gf = p.grad().to_kind(Kind::Float);
        let _ = self.m[i].shallow_clone().g_mul_scalar_(BETA1).g_add_(&(&gf * (1.0 - BETA1)));
        let _ = self.v[i].shallow_clone().g_mul_scalar_(BETA2).g_add_(&(gf.square() * (1.0 - BETA2)));
        let update = (&self.m[i] / c1) / ((&self.v[i] / c2).sqrt() + EPS) * lr;
        let mut p = p.shallow_clone();
        if weight_decay > 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
        }
        let _ = p.g_sub_(&update.to_kind(p.kind()));
    }

    /// The moment tensors, in a fixed order.
    pub fn moments(&self) -> impl Iterator<Item = &Tensor> {
        self.m.iter().chain(self.v.iter())
    }

    /// The moments by name, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step as i64))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("m.{n}"), self.m[i].shallow_clone()));
            out.push((format!("v.{n}"), self.v[i].shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must be present, in its shape.
    pub fn load_state(&mut self, saved: Vec<(String, Tensor)>) -> Result<(), String> {
        let mut map: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        let step = map.remove("step").filter(|t| t.numel() == 1).ok_or("no step in the optimizer state")?;
        self.step = u64::try_from(step.f_int64_value(&[]).map_err(|e| e.to_string())?)
            .map_err(|_| "a negative step in the optimizer state")?;
        let swiglu = crate::methods::is_swiglu(self.params.iter().map(|(n, _)| n.as_str()));
        for (i, (n, p)) in self.params.iter().enumerate() {
            let old = crate::methods::legacy_name(n, swiglu);
            let mut take = |which: &str| -> Result<Tensor, String> {
                let t = map
                    .remove(&format!("{which}.{n}"))
                    .or_else(|| map.remove(&format!("{which}.{}", old.as_ref()?)))
                    .ok_or(format!("no moment for {n}"))?;
                if t.size() != p.size() || t.kind() != Kind::Float {
                    return Err(format!(
                        "the moment {which}.{n} is {:?} {:?}, the tensor it belongs to {:?} (fp32 expected)",
                        t.kind(),
                        t.size(),
                        p.size()
                    ));
                }
                t.f_to_device(p.device()).map_err(|e| e.to_string())
            };
            self.m[i] = take("m")?;
            self.v[i] = take("v")?;
        }
        Ok(())
    }
}
