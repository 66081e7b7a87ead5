#!/usr/bin/env bash
# `make demo`: the whole product, offline, on the CPU.
#   1. a tokenizer and a small base model trained from scratch on the demo corpus (once; reused after),
#   2. that base fine-tuned on the demo's instruction data set with adapter v2, LoRA and fully,
#   3. the base's and the fine-tuned models' answers to test-split prompts, and their exact-match rates.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/ftexp
newest() { ls -d "experiments/$1"/v* 2>/dev/null | sort -V | tail -n 1; }
completed() { grep -ls '"status": "completed"' experiments/"$1"/v*/run.json >/dev/null 2>&1; }

[ -f checkpoints/demo/tokenizer/tokenizer.json ] ||
  "$bin" tokenizer --corpus data/demo/corpus.txt --vocab-size 1024 --out checkpoints/demo/tokenizer
if completed demo-pretrain; then
  echo "== base model: reusing $(newest demo-pretrain)"
else
  echo "== pretraining the demo base model (configs/demo-pretrain.toml)"
  "$bin" run configs/demo-pretrain.toml
fi
for config in demo demo-lora demo-full; do
  echo "== fine-tuning: configs/$config.toml"
  "$bin" run "configs/$config.toml"
done
adapter=$(newest demo)
lora=$(newest demo-lora)
full=$(newest demo-full)
echo
echo "== before fine-tuning: the base model on the test split"
"$bin" eval "$adapter" --generate --base
echo
echo "== after fine-tuning with adapter v2 ($adapter)"
"$bin" eval "$adapter" --generate
echo
echo "== after fine-tuning with LoRA ($lora)"
"$bin" eval "$lora" --generate
echo
echo "== after fine-tuning every weight ($full)"
"$bin" eval "$full" --generate
echo
echo "== the three fine-tunes compared (ftexp report; curves in experiments/demo-report.png)"
"$bin" report "$adapter" "$lora" "$full" --png experiments/demo-report.png
echo
echo "loss curves: $adapter/loss.png, $lora/loss.png, $full/loss.png"
