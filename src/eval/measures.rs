//! What a model scores: the mean loss over supervised tokens of prepared samples, perplexity on a
//! text, and the exact-match rate of greedy answers.
use tch::{Kind, Tensor};

use super::objective::Objective;
use crate::data::batches;
use crate::data::Sample;
use crate::generate::{generate, ids_tensor, Sampling};
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;

/// Mean loss over supervised tokens of `samples` in micro-batches of `micro`, at most `max_batches`.
pub fn mean_loss(model: &mut Gpt, samples: &[Sample], micro: usize, max_batches: Option<usize>) -> Option<f64> {
    let (sum, count) = loss_sums(model, Objective::Sft, samples, micro, max_batches, (0, 1));
    (count > 0).then(|| sum / count as f64)
}

/// The summed loss and the supervised-token count of rank `rank`'s share (micro-batches `rank`,
/// `rank + world`, …) of the micro-batches [`mean_loss`] averages over; the ranks' sums add up to it.
pub fn loss_sums(
    model: &mut Gpt,
    objective: Objective,
    samples: &[Sample],
    micro: usize,
    max_batches: Option<usize>,
    (rank, world): (usize, usize),
) -> (f64, i64) {
    if samples.is_empty() {
        return (0.0, 0);
    }
    let was = std::mem::replace(&mut model.training, false);
    let (mut sum, mut count) = (Tensor::zeros([], (Kind::Float, model.device())), 0i64);
    tch::no_grad(|| {
        let chunks = samples.chunks(micro.max(1)).take(max_batches.unwrap_or(usize::MAX));
        for chunk in chunks.skip(rank).step_by(world.max(1)) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let batch = batches::make(&refs, model.device());
            sum += objective.loss(model, &batch);
            count += batch.supervised;
        }
    });
    model.training = was;
    (sum.double_value(&[]), count)
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
        let input = ids_tensor(ids, model.device()); // (1, time)
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
pub fn exact_match(model: &Gpt, tokenizer: &Tokenizer, samples: &[Sample], show: usize) -> ExactMatch {
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
