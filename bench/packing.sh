#!/usr/bin/env bash
# Packing: real (non-padding) tokens/s of `ftexp bench` with and without `data.packing`, side by side,
# on an Alpaca data set of mixed lengths (answers of 1 to 300 words), the same samples per step.
#
#   bench/packing.sh         (make bench-packing builds first, then runs this; make bench runs it too)
#
# Model: a Llama of BENCH_HIDDEN (256) width and 4 layers on random weights (model.init = "random",
# with the fixture tokenizer), full fine-tuning in fp32 on the CPU (or BENCH_DEVICE), 32 samples per
# step. Settings (environment): BENCH_WORK (/tmp/ftexp-bench-packing), BENCH_STEPS (8), BENCH_SEQ
# (512), BENCH_MICRO (4: samples, or packed rows, per micro-batch), BENCH_HIDDEN, BENCH_FTEXP.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bin=$(bench_ftexp)
work=${BENCH_WORK:-/tmp/ftexp-bench-packing}
steps=${BENCH_STEPS:-8}
seq=${BENCH_SEQ:-512}
hidden=${BENCH_HIDDEN:-256}
device=${BENCH_DEVICE:-cpu}
micro=${BENCH_MICRO:-4}
mkdir -p "$work"
python3 - "$work/mixed.json" <<'EOF'
import json, random, sys
rng = random.Random(7)
words = "flour sugar basil salt butter aisle cups grams shelf pantry dairy spices".split()
rows = [{"instruction": f"List {n} pantry words.", "input": "",
         "output": " ".join(rng.choice(words) for _ in range(n))}
        for n in (int(rng.paretovariate(1.2)) % 300 + 1 for _ in range(2000))]
json.dump(rows, open(sys.argv[1], "w"))
EOF
cat >"$work/bench.toml" <<EOF
name = "bench-packing"
[model]
checkpoint = "$root/tests/fixtures/models/llama"
tokenizer = "$root/tests/fixtures/models/llama"
init = "random"
device = "$device"
precision = "32-true"
[model.architecture]
model_type = "llama"
hidden_size = $hidden
num_hidden_layers = 4
num_attention_heads = 8
intermediate_size = $((hidden * 4))
max_position_embeddings = $seq
[data]
path = "$work/mixed.json"
max_seq_length = $seq
[method]
kind = "full"
[train]
batch_size = 32
micro_batch_size = $micro
EOF
cd "$work"
"$bin" prepare bench.toml --set data.packing=true | grep -E "^(split|train|packing)"
printf '\n%-10s %12s %14s %10s %10s %12s\n' packing "tokens/s" "padding share" "micro-b." seconds "last loss"
for packing in false true; do
  "$bin" bench bench.toml --set "data.packing=$packing" --steps "$steps" --json >"out-$packing.json"
  python3 - "out-$packing.json" "$packing" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
pad = 1 - d["real_tokens"] / max(1, d["padded_tokens"])
print(f"{sys.argv[2]:<10} {d['tokens_per_s']:>12.0f} {pad:>14.1%} {d['micro_batches']:>10} {d['seconds']:>10.2f} {d['losses'][-1]:>12.4f}")
EOF
done
