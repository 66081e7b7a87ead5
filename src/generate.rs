//! Text generation (one prefill, then one token per step through a KV cache) and perplexity.
use rand::{RngExt, SeedableRng};
use tch::{Kind, Tensor};

use crate::model::{Gpt, KvCache, Tokenizer};

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

fn ids_tensor(ids: &[u32], device: tch::Device) -> Tensor {
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
            KvCache::new(&model.spec, 1, capacity, model.kind(), device)
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// Mean next-token negative log-likelihood of `ids` as one sequence.
pub fn perplexity(model: &Gpt, ids: &[u32]) -> Perplexity {
    tch::no_grad(|| {
        let input = ids_tensor(ids, model.device());
        let t = ids.len() as i64;
        let logits = model.forward(&input.narrow(1, 0, t - 1), None).to_kind(Kind::Float);
        let targets = input.narrow(1, 1, t - 1);
        let nll = logits
            .view([t - 1, -1])
            .cross_entropy_loss::<Tensor>(&targets.view([t - 1]), None, tch::Reduction::Mean, -100, 0.0)
            .double_value(&[]);
        Perplexity { tokens: ids.len(), mean_nll: nll, perplexity: nll.exp() }
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExactMatch {
    pub samples: usize,
    pub correct: usize,
    pub rate: f64,
    /// A few (prompt's instruction, expected, answered) triples to show.
    pub examples: Vec<(String, String, String)>,
}

/// Greedy answers to each sample's prompt, compared with its expected output (surrounding white space
/// ignored).
pub fn exact_match(model: &Gpt, tokenizer: &Tokenizer, samples: &[crate::data::Sample], show: usize) -> ExactMatch {
    let mut correct = 0;
    let mut examples = Vec::new();
    for s in samples {
        let expected_len = s.input_ids.len() - s.input_ids_no_response.len();
        let sampling = Sampling { max_new_tokens: expected_len + 8, ..Sampling::default() };
        let mut ids = generate(model, &s.input_ids_no_response, &sampling, &tokenizer.eos_ids, true, |_| {});
        if ids.last().is_some_and(|id| tokenizer.eos_ids.contains(id)) {
            ids.pop();
        }
        let answer = tokenizer.decode(&ids);
        if answer.trim() == s.output.trim() {
            correct += 1;
        }
        if examples.len() < show {
            examples.push((
                s.instruction.clone() + if s.input.is_empty() { "" } else { " | " } + &s.input,
                s.output.clone(),
                answer,
            ));
        }
    }
    ExactMatch { samples: samples.len(), correct, rate: correct as f64 / samples.len().max(1) as f64, examples }
}
