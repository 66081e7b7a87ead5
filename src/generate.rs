//! Text generation (one prefill, then one token per step through a KV cache) and perplexity.
use rand::{RngExt, SeedableRng};
use tch::{Kind, Tensor};

use crate::model::{Gpt, KvCache};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { max_new_tokens: 50, temperature: 0.0, top_k: None, top_p: None, seed: 1337 }
    }
}

/// `(1, len)` int64 ids on `device`.
pub fn ids_tensor(ids: &[u32], device: tch::Device) -> Tensor {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&ids).to_device(device).unsqueeze(0)
}

/// New token ids after `prompt`, stopping at any of `eos` (which is kept) or after `max_new_tokens`.
/// `on_token` sees each id as it is produced. Without `use_cache` every step reruns the whole
/// sequence (slow; for checking the cache).
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    sampling: &Sampling,
    eos: &[u32],
    use_cache: bool,
    mut on_token: impl FnMut(u32),
) -> Vec<u32> {
    tch::no_grad(|| {
        let device = model.device();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(sampling.seed);
        let mut cache = use_cache.then(|| {
            let capacity = (prompt.len() + sampling.max_new_tokens) as i64;
            KvCache::new(&model.spec, 1, capacity, model.compute_kind, device)
        });
        let mut out: Vec<u32> = Vec::new();
        let mut next_input = ids_tensor(prompt, device);
        while out.len() < sampling.max_new_tokens {
            let hidden = match cache.as_mut() {
                Some(c) => model.hidden(&next_input, Some(c)),
                None => model.hidden(&ids_tensor(&[prompt, &out[..]].concat(), device), None),
            };
            // Only the last position picks the next token: the output head runs there alone.
            let last = model.logits(&hidden.select(1, -1)).squeeze_dim(0);
            let id = pick(&last, sampling, &mut rng);
            out.push(id);
            on_token(id);
            if eos.contains(&id) {
                break;
            }
            next_input = ids_tensor(&[id], device);
        }
        out
    })
}

fn pick(logits: &Tensor, s: &Sampling, rng: &mut rand_pcg::Pcg64) -> u32 {
    if s.temperature <= 0.0 {
        return logits.argmax(-1, false).int64_value(&[]) as u32;
    }
    let scaled: Vec<f32> = Vec::try_from((logits.to_kind(Kind::Float) / s.temperature).to_device(tch::Device::Cpu))
        .expect("logits are a float vector");
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_unstable_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let max = scaled[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| ((scaled[i] - max) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = s.top_p {
        let mut cumulative = 0.0;
        let keep = probs.iter().position(|p| {
            cumulative += p;
            cumulative >= top_p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        draw -= p;
        if draw <= 0.0 {
            return i as u32;
        }
    }
    *order.last().expect("at least one candidate") as u32
}

/// Prints text as ids arrive, holding back bytes that do not yet form whole characters.
pub struct Streamer<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> Streamer<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Streamer { tokenizer, ids: Vec::new(), printed: 0 }
    }

    /// The text to print now for one more id.
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids);
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return String::new();
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        new
    }
}

/// A generation with its timing: the prefill lasts until the first new token, decoding the rest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Timed {
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Timed {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_s.max(1e-9)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        self.ids.len().saturating_sub(1) as f64 / self.decode_s.max(1e-9)
    }
}

/// [`generate`] with the KV cache, timed.
pub fn timed(model: &Gpt, prompt: &[u32], sampling: &Sampling, eos: &[u32], mut on_token: impl FnMut(u32)) -> Timed {
    let start = std::time::Instant::now();
    let mut first_token_at = None;
    let ids = generate(model, prompt, sampling, eos, true, |id| {
        first_token_at.get_or_insert_with(std::time::Instant::now);
        on_token(id);
    });
    let first = first_token_at.unwrap_or(start);
    Timed {
        ids,
        prompt_tokens: prompt.len(),
        prefill_s: first.duration_since(start).as_secs_f64(),
        decode_s: first.elapsed().as_secs_f64(),
    }
}
