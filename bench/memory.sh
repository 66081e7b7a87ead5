#!/usr/bin/env bash
# Memory: the peak `ftexp plan` expects against the peak measured, over a grid of methods (full, lora,
# adapter_v2) × strategies (none; activation checkpointing; an nf4 base, which brings checkpointing
# with it, for lora and adapter_v2) × micro-batch (1, 4, 8) × length (128, 512) × two model sizes,
# with the ratio.
#
#   bench/memory.sh          (make bench-memory builds first, then runs this)
#
# Models (random weights from a config.json, no download): the pythia-14m shape (GPT-NeoX, 14M
# parameters, vocabulary 50,304) and a Llama of width 512 and 4 layers (vocabulary 32,000), fp32.
# Each point is `ftexp bench --synthetic` for 2 optimizer steps of 2 micro-batches each; synthetic
# samples are full length with the first half a masked prompt, and the plan is computed for the same
# rows, length and supervised positions.
#
# Measured, on the CPU: the growth of the process's peak resident memory (Linux VmHWM, reset once the
# model is built) above the built model, with glibc's mmap threshold fixed at 64 KiB
# (MALLOC_MMAP_THRESHOLD_) so freed tensors go back to the system instead of staying in malloc's free
# lists; and, beside it, the peak bytes of tensors counted by ftexp's own CPU allocator. On CUDA
# (BENCH_DEVICE=cuda): the caching allocator's peak (weights included, as in the plan's total less the
# CUDA context). The goal: every point's plan within ±10% of the counted peak (CPU) or the allocator's
# (CUDA). Settings: BENCH_WORK (/tmp/ftexp-bench-memory), BENCH_DEVICE (cpu), BENCH_STEPS (2),
# BENCH_STRATEGIES ("none checkpointing nf4").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bin=$(bench_ftexp)
work=${BENCH_WORK:-/tmp/ftexp-bench-memory}
device=${BENCH_DEVICE:-cpu}
steps=${BENCH_STEPS:-2}
read -r -a strategies <<<"${BENCH_STRATEGIES:-none checkpointing nf4}"
mkdir -p "$work"
python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
models = {
    "pythia-14m": {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 128,
                   "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 512,
                   "vocab_size": 50304, "max_position_embeddings": 2048, "rotary_pct": 0.25,
                   "rotary_emb_base": 10000, "use_parallel_residual": True, "layer_norm_eps": 1e-5,
                   "hidden_act": "gelu", "tie_word_embeddings": False},
    "llama-512x4": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
                    "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
                    "intermediate_size": 1376, "vocab_size": 32000, "max_position_embeddings": 2048,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
                    "tie_word_embeddings": False},
}
for name, cfg in models.items():
    os.makedirs(f"{work}/{name}", exist_ok=True)
    json.dump(cfg, open(f"{work}/{name}/config.json", "w"), indent=1)
PY
precision=32-true
[ "$device" = cpu ] || precision=bf16-true
echo "$(bench_machine)"
echo "command: make bench-memory (bench/memory.sh), device $device, $precision, $steps steps per point"
printf '\n%-12s %-10s %-13s %5s %5s %12s %12s %7s %14s %7s\n' model method strategy micro len "plan MiB" "measured" ratio "tensors MiB" ratio
for model in pythia-14m llama-512x4; do
  cat >"$work/$model.toml" <<EOT
name = "bench-memory"
[model]
checkpoint = "$work/$model"
init = "random"
device = "$device"
precision = "$precision"
[data]
path = "$root/tests/fixtures/data/alpaca.json"
[method]
kind = "full"
EOT
  for method in full lora adapter_v2; do
   for strategy in "${strategies[@]}"; do
    case $strategy in
      none) set_strategy=(--set train.activation_checkpointing=false) ;;
      checkpointing) set_strategy=(--set train.activation_checkpointing=true) ;;
      nf4) [ "$method" = full ] && continue; set_strategy=(--set model.quantize=nf4) ;;
      *) echo "bench-memory: unknown strategy $strategy (none, checkpointing, nf4)" >&2; exit 1 ;;
    esac
    for micro in 1 4 8; do
      for len in 128 512; do
        MALLOC_MMAP_THRESHOLD_=65536 "$bin" bench "$work/$model.toml" --synthetic --steps "$steps" --json \
          --set "method.kind=$method" --set "train.micro_batch_size=$micro" "${set_strategy[@]}" \
          --set "train.batch_size=$((micro * 2))" --set "data.max_seq_length=$len" >"$work/out.json"
        python3 - "$work/out.json" "$model" "$method" "$strategy" "$micro" "$len" "$device" >>"$work/rows.txt" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); p = d["memory_plan"]; mib = 1 << 20
cuda = sys.argv[7] != "cpu"
if cuda:
    planned, measured, tensors = (p["total"] - p["overhead"]) / mib, d["peak_gpu_mib"], None
else:
    planned, measured = (p["total"] - p["weights"]) / mib, d["training_rss_mib"]
    tensors = d.get("cpu_tensor_peak_mib")
t_plan = planned - p["overhead"] / mib if not cuda else None
t_cols = f"{tensors:>14.1f} {t_plan / tensors:>7.2f}" if tensors else f"{'-':>14} {'-':>7}"
print(f"{sys.argv[2]:<12} {sys.argv[3]:<10} {sys.argv[4]:<13} {sys.argv[5]:>5} {sys.argv[6]:>5} {planned:>12.1f} {measured:>12.1f} {planned / measured:>7.2f} {t_cols}")
PY
        tail -1 "$work/rows.txt"
      done
    done
   done
  done
done
python3 - "$work/rows.txt" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
# Columns: model method strategy micro len plan measured ratio tensors ratio. The goal is on the
# counted peak (tensors) on the CPU, on the allocator's peak on CUDA.
counted = rows[0][8] != "-"
value, col = (8, 9) if counted else (6, 7)
ratios = [float(r[col]) for r in rows]
worst = max(ratios, key=lambda x: abs(x - 1))
at = rows[ratios.index(worst)]
inside = sum(1 for x in ratios if 0.9 <= x <= 1.1)
print(f"\nplan / {'counted tensors' if counted else 'measured'}: {min(ratios):.2f} to {max(ratios):.2f}, "
      f"worst {worst:.2f} ({' '.join(at[:5])}); {inside} of {len(rows)} points within ±10%")
if counted:
    rss = [float(r[7]) for r in rows]
    print(f"plan / resident memory growth: {min(rss):.2f} to {max(rss):.2f}")
plain = {(r[0], r[1], r[3], r[4]): float(r[value]) for r in rows if r[2] == "none"}
for strategy in dict.fromkeys(r[2] for r in rows if r[2] != "none"):
    saved = [1 - float(r[value]) / plain[(r[0], r[1], r[3], r[4])] for r in rows
             if r[2] == strategy and (r[0], r[1], r[3], r[4]) in plain]
    if saved:
        print(f"{strategy}: measured training memory {min(saved):.0%} to {max(saved):.0%} below no strategy ({len(saved)} points)")
PY
rm -f "$work/rows.txt"
