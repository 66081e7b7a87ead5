//! Data-parallel training over a c10d process group: every rank holds a replica of the model, starts
//! from rank 0's tensors, and after its share of a step's micro-batches adds its gradients to the
//! others' — in flat buckets, in the trainable tensors' fixed order on every rank — so each replica
//! makes the same update a single process would. An fp32 gradient is a view into its bucket (as
//! PyTorch DDP's `gradient_as_bucket_view`): backward passes add into the bucket and c10d sums it in
//! place, with no copy either way.
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::optimizer::AdamW;
use crate::dist::{Backend, Group, Rank};
use crate::error::Problems;
use crate::experiment::checkpoint::TrainerState;
use crate::methods::Trainable;
use crate::native::grad;

/// Elements per gradient bucket (32 MiB of fp32): big enough to amortise each collective's latency,
/// small enough not to double a large model's gradient memory.
const BUCKET_ELEMENTS: i64 = 1 << 23;

pub struct Replicas {
    group: Group,
    pub rank: Rank,
    /// The trainable tensors in flat buffers, each summed as one.
    buckets: Vec<Bucket>,
    /// Time spent in the gradient exchange so far.
    pub sync_time: Duration,
}

/// Consecutive trainable tensors whose gradients are summed as one flat fp32 buffer.
struct Bucket {
    flat: Tensor,
    /// The trainable tensors whose gradients are copied into `flat` and back (not fp32), by index and
    /// offset; the others' gradients are views into it.
    copied: Vec<(usize, i64)>,
}

/// Room at the end of the first bucket for the step's loss share and the stop request.
const EXTRA: i64 = 2;

/// What every rank learns from a step's exchange besides the gradients.
pub struct Exchanged {
    /// The step's loss over all ranks (sum of the ranks' shares).
    pub loss: Tensor,
    /// Some rank was asked to stop (Ctrl-C, SIGTERM).
    pub stop: bool,
}

impl Replicas {
    /// Joins the group described by `rank`, with Gloo on the CPU and NCCL on GPUs.
    pub fn join(rank: Rank, device: tch::Device, timeout: Duration) -> Result<Self, Problems> {
        let group = Group::join(&rank, Backend::for_device(device), timeout)?;
        Ok(Replicas { group, rank, buckets: Vec::new(), sync_time: Duration::ZERO })
    }

    /// Consecutive trainable tensors of at most `BUCKET_ELEMENTS` together (or one bigger tensor).
    fn plan_buckets(trainable: &[Trainable]) -> Vec<std::ops::Range<usize>> {
        let mut buckets = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, t) in trainable.iter().enumerate() {
            if size > 0 && size + t.tensor.numel() as i64 > BUCKET_ELEMENTS {
                buckets.push(start..i);
                (start, size) = (i, 0);
            }
            size += t.tensor.numel() as i64;
        }
        buckets.push(start..trainable.len());
        buckets
    }

    /// Allocates the buckets and makes each fp32 trainable tensor's gradient a view into its bucket,
    /// holding the gradient it had.
    pub fn attach(&mut self, trainable: &[Trainable]) -> Result<(), Problems> {
        let device = self.device(trainable);
        self.buckets.clear();
        for (b, members) in Replicas::plan_buckets(trainable).into_iter().enumerate() {
            let size: i64 = trainable[members.clone()].iter().map(|t| t.tensor.numel() as i64).sum();
            let flat = Tensor::zeros([size + if b == 0 { EXTRA } else { 0 }], (Kind::Float, device));
            let (mut copied, mut offset) = (Vec::new(), 0);
            for i in members {
                let (t, n) = (&trainable[i], trainable[i].tensor.numel() as i64);
                if t.tensor.kind() == Kind::Float && grad::AVAILABLE {
                    let view = flat.narrow(0, offset, n).view(t.tensor.size().as_slice());
                    let had = t.tensor.grad();
                    if had.defined() {
                        tch::no_grad(|| view.shallow_clone().copy_(&had));
                    }
                    grad::set_grad(&t.tensor, &view)
                        .map_err(|e| Problems::one(format!("preparing the gradient of {}: {e}", t.name)))?;
                } else {
                    copied.push((i, offset));
                }
                offset += n;
            }
            self.buckets.push(Bucket { flat, copied });
        }
        Ok(())
    }

    pub fn is_first(&self) -> bool {
        self.rank.rank == 0
    }

    pub fn barrier(&self) -> Result<(), Problems> {
        self.group.barrier()
    }

    /// Makes every rank's trainable tensors, optimizer moments and position equal rank 0's (a new run's
    /// initial values, or the checkpoint rank 0 resumed from).
    pub fn copy_from_first(
        &self,
        trainable: &[Trainable],
        opt: &mut AdamW,
        state: &mut TrainerState,
    ) -> Result<(), Problems> {
        tch::no_grad(|| -> Result<(), Problems> {
            for t in trainable.iter().map(|t| &t.tensor).chain(opt.moments()) {
                // `detach` shares the storage, so the broadcast lands in the tensor itself.
                self.group.broadcast(&t.detach(), 0)?;
            }
            Ok(())
        })?;
        // One broadcast of the position and the early-stopping record (f64 holds these counts exactly;
        // NaN and -1 stand for no best yet).
        let numbers =
            [state.step, state.iter, state.samples_seen, state.tokens, opt.step, state.evals_without_improvement];
        let extra =
            [state.elapsed_s, state.best_val_loss.unwrap_or(f64::NAN), state.best_step.map_or(-1.0, |s| s as f64)];
        let packed =
            Tensor::from_slice(&[&numbers.map(|n| n as f64)[..], &extra].concat()).to_device(self.device(trainable));
        self.group.broadcast(&packed, 0)?;
        let got: Vec<f64> = Vec::try_from(packed.to_device(tch::Device::Cpu))
            .map_err(|e| Problems::one(format!("reading the broadcast position: {e}")))?;
        (state.step, state.iter, state.samples_seen, state.tokens, opt.step, state.evals_without_improvement) =
            (got[0] as u64, got[1] as u64, got[2] as u64, got[3] as u64, got[4] as u64, got[5] as u64);
        state.elapsed_s = got[6];
        state.best_val_loss = Some(got[7]).filter(|v| !v.is_nan());
        state.best_step = Some(got[8]).filter(|s| *s >= 0.0).map(|s| s as u64);
        Ok(())
    }

    fn device(&self, trainable: &[Trainable]) -> tch::Device {
        trainable.first().map_or(tch::Device::Cpu, |t| t.tensor.device())
    }

    /// Adds up the gradients of all ranks in place, with the step's loss share and stop request riding
    /// in the first bucket.
    pub fn exchange(&mut self, trainable: &[Trainable], loss: &Tensor, stop: bool) -> Result<Exchanged, Problems> {
        let clock = Instant::now();
        if self.buckets.is_empty() {
            self.attach(trainable)?;
        }
        let mut out = None;
        tch::no_grad(|| -> Result<(), Problems> {
            for (b, bucket) in self.buckets.iter().enumerate() {
                for &(i, offset) in &bucket.copied {
                    let (t, g) = (&trainable[i].tensor, trainable[i].tensor.grad());
                    let mut slot = bucket.flat.narrow(0, offset, t.numel() as i64);
                    if g.defined() {
                        slot.copy_(&g.reshape([-1]));
                    } else {
                        let _ = slot.zero_();
                    }
                }
                let end = bucket.flat.numel() as i64 - EXTRA;
                if b == 0 {
                    bucket.flat.narrow(0, end, 1).copy_(&loss.reshape([1]));
                    let _ = bucket.flat.narrow(0, end + 1, 1).fill_(if stop { 1.0 } else { 0.0 });
                }
                self.group.allreduce_sum(&bucket.flat)?;
                for &(i, offset) in &bucket.copied {
                    let mut g = trainable[i].tensor.grad();
                    if g.defined() {
                        g.copy_(&bucket.flat.narrow(0, offset, g.numel() as i64).view_as(&g));
                    }
                }
                if b == 0 {
                    let stop = bucket.flat.double_value(&[end + 1]) > 0.0;
                    out = Some(Exchanged { loss: bucket.flat.narrow(0, end, 1).reshape([]).copy(), stop });
                }
            }
            Ok(())
        })?;
        self.sync_time += clock.elapsed();
        Ok(out.expect("at least one bucket"))
    }

    /// Adds up `values` over all ranks (in f64 on the CPU, or f32 on GPUs, which NCCL needs).
    pub fn sum(&self, values: &[f64], device: tch::Device) -> Result<Vec<f64>, Problems> {
        let kind = if device.is_cuda() { Kind::Float } else { Kind::Double };
        let t = Tensor::from_slice(values).to_kind(kind).to_device(device);
        self.group.allreduce_sum(&t)?;
        Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(tch::Device::Cpu))
            .map_err(|e| Problems::one(format!("reading a sum over ranks: {e}")))
    }

    /// Every rank's text (its device, say), gathered on every rank: each writes its bytes into its own
    /// row of a zero matrix and the rows are added up.
    pub fn gather_text(&self, text: &str, device: tch::Device) -> Result<Vec<String>, Problems> {
        const WIDTH: usize = 96;
        let world = self.rank.world;
        let mut rows = vec![0f32; world * WIDTH];
        for (i, b) in text.bytes().take(WIDTH).enumerate() {
            rows[self.rank.rank * WIDTH + i] = b as f32;
        }
        let sums = self.sum(&rows.iter().map(|&v| v as f64).collect::<Vec<_>>(), device)?;
        Ok(sums
            .chunks(WIDTH)
            .map(|row| {
                let bytes: Vec<u8> = row.iter().take_while(|&&v| v > 0.0).map(|&v| v as u8).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .collect())
    }
}
