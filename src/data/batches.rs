//! Micro-batches: samples in a seeded order, right-padded, with the indices of the supervised
//! positions computed on the host so the LM head and loss run only where labels count.
use rand::{RngExt, SeedableRng};
use tch::{Device, Kind, Tensor};

use super::samples::{Sample, IGNORE};
use crate::config::TrainConfig;

pub struct Batch {
    /// `(batch, time - 1)`: the inputs; the last token of the longest sample never predicts anything.
    pub inputs: Tensor,
    /// Flat indices into `(batch × (time - 1))` of positions whose next token is supervised.
    pub positions: Tensor,
    /// The supervised next tokens, one per position.
    pub targets: Tensor,
    pub supervised: i64,
    /// Non-padding tokens.
    pub real_tokens: i64,
    /// A packed micro-batch's layout; `None`: one sample per row.
    pub packed: Option<Packed>,
    /// In training, the run-wide number of each row's sample (a packed row's first): what its dropout
    /// masks are drawn from. Empty elsewhere.
    pub numbers: Vec<u64>,
}

/// Where the samples of a packed micro-batch lie: per position `(batch, time)`, its index within its
/// own sample (positions restart with each sample) and which sample of its row it belongs to (−1 for
/// padding), so that attention stays inside each sample.
pub struct Packed {
    pub positions: Tensor,
    pub segments: Tensor,
}

pub fn make(samples: &[&Sample], device: Device) -> Batch {
    let t = samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(2).max(2);
    let width = t - 1;
    let mut inputs = vec![0i64; samples.len() * width];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    let mut real_tokens = 0;
    for (b, s) in samples.iter().enumerate() {
        real_tokens += s.input_ids.len() as i64;
        for (i, &id) in s.input_ids.iter().take(width).enumerate() {
            inputs[b * width + i] = id as i64;
        }
        for i in 0..s.input_ids.len().saturating_sub(1) {
            let label = s.labels[i + 1];
            if label != IGNORE {
                positions.push((b * width + i) as i64);
                targets.push(label);
            }
        }
    }
    let supervised = targets.len() as i64;
    Batch {
        inputs: Tensor::from_slice(&inputs).view([samples.len() as i64, width as i64]).to_device(device),
        positions: Tensor::from_slice(&positions).to_device(device),
        targets: Tensor::from_slice(&targets).to_kind(Kind::Int64).to_device(device),
        supervised,
        real_tokens,
        packed: None,
        numbers: Vec::new(),
    }
}

/// Rows of at most `row` tokens: the samples longest first (equal lengths in the order given), each
/// put into the first row with room for it (first fit). The same samples in the same order always
/// give the same rows.
pub fn pack<'a>(samples: &[&'a Sample], row: usize) -> Vec<Vec<&'a Sample>> {
    pack_by(samples, |s| s.input_ids.len(), row)
}

/// [`pack`] of any items of length `len`.
fn pack_by<T: Copy>(items: &[T], len: impl Fn(&T) -> usize, row: usize) -> Vec<Vec<T>> {
    let mut longest_first = items.to_vec();
    longest_first.sort_by_key(|s| std::cmp::Reverse(len(s)));
    let mut rows: Vec<(usize, Vec<T>)> = Vec::new();
    for s in longest_first {
        let len = len(&s);
        match rows.iter_mut().find(|(used, _)| used + len <= row) {
            Some((used, r)) => {
                *used += len;
                r.push(s);
            }
            None => rows.push((len, vec![s])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}

/// The share of the rows' tokens that are real when `samples` are packed into rows of `row` tokens.
pub fn fill_ratio(samples: &[Sample], row: usize) -> f64 {
    let refs: Vec<&Sample> = samples.iter().collect();
    let rows = pack(&refs, row).len();
    let tokens: usize = samples.iter().map(|s| s.input_ids.len()).sum();
    if rows == 0 {
        0.0
    } else {
        tokens as f64 / (rows * row) as f64
    }
}

/// A packed micro-batch: each row the samples of one [`pack`] row, one after another, right-padded.
/// Each sample's last token predicts nothing (the next token belongs to another sample), so the
/// supervised positions and targets are exactly those of the samples unpacked.
pub fn make_packed(rows: &[Vec<&Sample>], device: Device) -> Batch {
    let lens = |r: &Vec<&Sample>| r.iter().map(|s| s.input_ids.len()).sum::<usize>();
    let width = rows.iter().map(lens).max().unwrap_or(1).max(1);
    let size = rows.len() * width;
    let (mut inputs, mut offsets, mut segments) = (vec![0i64; size], vec![0i64; size], vec![-1i64; size]);
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    let mut real_tokens = 0;
    for (b, row) in rows.iter().enumerate() {
        let mut at = b * width;
        for (k, s) in row.iter().enumerate() {
            let len = s.input_ids.len();
            real_tokens += len as i64;
            for (i, &id) in s.input_ids.iter().enumerate() {
                (inputs[at + i], offsets[at + i], segments[at + i]) = (id as i64, i as i64, k as i64);
            }
            for i in 0..len.saturating_sub(1) {
                if s.labels[i + 1] != IGNORE {
                    positions.push((at + i) as i64);
                    targets.push(s.labels[i + 1]);
                }
            }
            at += len;
        }
    }
    let shape = [rows.len() as i64, width as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    Batch {
        inputs: tensor(&inputs),
        supervised: targets.len() as i64,
        positions: Tensor::from_slice(&positions).to_device(device),
        targets: Tensor::from_slice(&targets).to_kind(Kind::Int64).to_device(device),
        real_tokens,
        packed: Some(Packed { positions: tensor(&offsets), segments: tensor(&segments) }),
        numbers: Vec::new(),
    }
}

/// The sizes of one micro-batch, known on the host before any tensor is made.
#[derive(Debug, Clone, Copy)]
pub struct MicroBatch {
    /// Non-padding tokens.
    pub real_tokens: i64,
    pub supervised: i64,
    /// Positions of the input tensor, padding included.
    pub width: i64,
    pub rows: i64,
}

impl MicroBatch {
    /// Padded rows, one sample each ([`make`]).
    fn of(samples: &[&Sample]) -> MicroBatch {
        MicroBatch {
            width: samples.iter().map(|s| s.input_ids.len()).max().unwrap_or(2).max(2) as i64 - 1,
            ..MicroBatch::counts(samples.iter().copied(), samples.len())
        }
    }

    /// Packed rows ([`make_packed`]).
    fn of_rows(rows: &[Vec<&Sample>]) -> MicroBatch {
        let row_len = |r: &Vec<&Sample>| r.iter().map(|s| s.input_ids.len()).sum::<usize>();
        MicroBatch {
            width: rows.iter().map(row_len).max().unwrap_or(1).max(1) as i64,
            ..MicroBatch::counts(rows.iter().flatten().copied(), rows.len())
        }
    }

    fn counts<'a>(samples: impl Iterator<Item = &'a Sample>, rows: usize) -> MicroBatch {
        let (mut real_tokens, mut supervised) = (0, 0);
        for s in samples {
            real_tokens += s.input_ids.len() as i64;
            supervised += s.labels.iter().skip(1).filter(|&&l| l != IGNORE).count() as i64;
        }
        MicroBatch { real_tokens, supervised, width: 0, rows: rows as i64 }
    }
}

/// One optimizer step's micro-batches: the sizes of all of them, and the tensors of this rank's share.
pub struct StepBatches {
    pub all: Vec<MicroBatch>,
    pub mine: Vec<Batch>,
}

impl StepBatches {
    /// Supervised tokens of the whole step, on every rank: the loss's denominator.
    pub fn supervised(&self) -> i64 {
        self.all.iter().map(|b| b.supervised).sum()
    }
}

/// The micro-batches of one optimizer step: the next `batch_size` samples of the run, sorted by
/// length before they are cut into micro-batches of `micro_batch_size`, so each pads as little as
/// possible; or, with `packing` (the row length), packed into rows ([`pack`]), `micro_batch_size`
/// rows per micro-batch. Grouping does not change the step: every supervised token of it weighs the
/// same in the loss and the gradient. Of `world` ranks, rank `rank` makes its share ([`dealt`]).
pub fn for_step<'a>(
    train: &'a [Sample],
    order: &mut Order,
    seen: &mut u64,
    t: &TrainConfig,
    packing: Option<usize>,
    device: Device,
    (rank, world): (usize, usize),
) -> StepBatches {
    let mut picked: Vec<(u64, &Sample)> = (0..t.batch_size)
        .map(|_| {
            let s = (*seen, &train[order.get(*seen)]);
            *seen += 1;
            s
        })
        .collect();
    let micro = t.micro_batch_size.max(1) as usize;
    let numbered = |mut b: Batch, numbers: Vec<u64>| {
        b.numbers = numbers;
        b
    };
    if let Some(row) = packing {
        let rows = pack_by(&picked, |(_, s)| s.input_ids.len(), row);
        let chunks: Vec<&[Vec<(u64, &Sample)>]> = rows.chunks(micro).collect();
        let samples = |c: &[Vec<(u64, &'a Sample)>]| -> Vec<Vec<&'a Sample>> {
            c.iter().map(|r| r.iter().map(|(_, s)| *s).collect()).collect()
        };
        return StepBatches {
            all: chunks.iter().map(|c| MicroBatch::of_rows(&samples(c))).collect(),
            mine: dealt(&chunks, rank, world)
                .map(|c| numbered(make_packed(&samples(c), device), c.iter().map(|r| r[0].0).collect()))
                .collect(),
        };
    }
    picked.sort_by_key(|(_, s)| s.input_ids.len());
    let chunks: Vec<&[(u64, &Sample)]> = picked.chunks(micro).collect();
    let samples = |c: &[(u64, &'a Sample)]| -> Vec<&'a Sample> { c.iter().map(|(_, s)| *s).collect() };
    StepBatches {
        all: chunks.iter().map(|c| MicroBatch::of(&samples(c))).collect(),
        mine: dealt(&chunks, rank, world)
            .map(|c| numbered(make(&samples(c), device), c.iter().map(|(n, _)| *n).collect()))
            .collect(),
    }
}

/// Rank `rank`'s share of micro-batches sorted by length, dealt out there and back (0, 1, …, world − 1,
/// world − 1, …, 0, 0, …) so that each rank gets about as many long ones as short ones and none waits
/// long for the others at the gradient exchange.
fn dealt<T>(chunks: &[T], rank: usize, world: usize) -> impl Iterator<Item = &T> {
    let world = world.max(1);
    chunks.iter().enumerate().filter_map(move |(i, c)| {
        let (round, seat) = (i / world, i % world);
        let owner = if round % 2 == 0 { seat } else { world - 1 - seat };
        (owner == rank).then_some(c)
    })
}

/// The training order: pass `p` over the train split is a shuffle seeded by the run seed and `p`, so
/// sample number `n` of a run is the same on every machine and after a resume.
pub struct Order {
    seed: u64,
    len: usize,
    pass: u64,
    order: Vec<usize>,
}

impl Order {
    pub fn new(seed: u64, len: usize) -> Order {
        let mut o = Order { seed, len, pass: u64::MAX, order: Vec::new() };
        o.reshuffle(0);
        o
    }

    fn reshuffle(&mut self, pass: u64) {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(self.seed ^ (pass + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.order = (0..self.len).collect();
        for i in (1..self.len).rev() {
            self.order.swap(i, rng.random_range(0..=i));
        }
        self.pass = pass;
    }

    /// The index into the train split of sample number `n` of the run.
    pub fn get(&mut self, n: u64) -> usize {
        let pass = n / self.len as u64;
        if pass != self.pass {
            self.reshuffle(pass);
        }
        self.order[(n % self.len as u64) as usize]
    }
}
