//! Prompt styles: how a record's instruction and input become the text the model is prompted with.
use super::records::Record;

const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

/// The prompt for `record` in `style` (`alpaca`, `plain`, `none`, or a template with `{instruction}`
/// and `{input}` placeholders).
pub fn render(style: &str, record: &Record) -> String {
    let has_input = !record.input.trim().is_empty();
    let template = match style {
        "alpaca" if has_input => ALPACA_WITH_INPUT,
        "alpaca" => ALPACA_NO_INPUT,
        "plain" if has_input => "{instruction}\n\n{input}\n\n",
        "plain" => "{instruction}\n\n",
        "none" => "{instruction}",
        custom => custom,
    };
    // One pass over the template, so braces inside the record's own text are left alone.
    template
        .split("{instruction}")
        .map(|piece| piece.replace("{input}", &record.input))
        .collect::<Vec<_>>()
        .join(&record.instruction)
}
