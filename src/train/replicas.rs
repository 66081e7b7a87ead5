//! Data-parallel training over a c10d process group: every rank holds a replica of the model, starts
//! from rank 0's tensors, and after its share of a step's micro-batches adds its gradients to the
//! others' — in flat buckets, in the trainable tensors' fixed order on every rank — so each replica
//! makes the same update a single process would.
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::optimizer::AdamW;
use crate::dist::{Backend, Group, Rank};
use crate::error::Problems;
use crate::experiment::checkpoint::TrainerState;
use crate::methods::Trainable;

/// Elements per gradient bucket (32 MiB of fp32): big enough to amortise each collective's latency,
/// small enough not to double a large model's gradient memory.
const BUCKET_ELEMENTS: i64 = 1 << 23;

pub struct Replicas {
    group: Group,
    pub rank: Rank,
    /// Ranges of the trainable tensors, each summed as one flat buffer.
    buckets: Vec<std::ops::Range<usize>>,
    /// Time spent in the gradient exchange so far.
    pub sync_time: Duration,
}

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
            self.buckets = Replicas::plan_buckets(trainable);
        }
        let device = self.device(trainable);
        let mut out = None;
        tch::no_grad(|| -> Result<(), Problems> {
            for (b, range) in self.buckets.iter().enumerate() {
                let members = &trainable[range.clone()];
                let mut parts: Vec<Tensor> = members
                    .iter()
                    .map(|t| {
                        let g = t.tensor.grad();
                        if g.defined() {
                            g.to_kind(Kind::Float).reshape([-1])
                        } else {
                            Tensor::zeros([t.tensor.numel() as i64], (Kind::Float, device))
                        }
                    })
                    .collect();
                if b == 0 {
                    let flag = Tensor::from(if stop { 1.0f32 } else { 0.0 }).to_device(device);
                    parts.push(loss.to_kind(Kind::Float).reshape([1]));
                    parts.push(flag.reshape([1]));
                }
                let flat = Tensor::cat(&parts, 0);
                self.group.allreduce_sum(&flat)?;
                let mut offset = 0;
                for t in members {
                    let n = t.tensor.numel() as i64;
                    let mut g = t.tensor.grad();
                    if g.defined() {
                        g.copy_(&flat.narrow(0, offset, n).view_as(&g));
                    }
                    offset += n;
                }
                if b == 0 {
                    let stop = flat.double_value(&[offset + 1]) > 0.0;
                    out = Some(Exchanged { loss: flat.narrow(0, offset, 1).reshape([]), stop });
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
