#!/usr/bin/env bash
# Data-parallel training on the CPU: the same fine-tune of the pythia-14m shaped bench model
# (../shared/bench/make_bench_model.py) on the same cores, as 1 process with all threads and as
# `train.devices = 2` processes with half the threads each (c10d over Gloo on loopback).
#
#   bench/devices.sh          (make bench-devices builds first, then runs this)
#
# Settings as bench/train.sh (fp32, global batch 16, micro batch 4, max_seq_length 256, 20 optimizer
# steps): the 2-process run computes the same updates, each process 2 micro-batches per step.
# Printed per method: real tokens/s of both (all processes together), their ratio, the mean time per
# optimizer step spent adding up gradients (allreduce, inside the 2-process run's time) and each
# process's peak RSS. Goal: the 2-process run keeps >= 90% of the 1-process tokens/s.
# Settings (environment): BENCH_WORK (/tmp/ftexp-bench), BENCH_REPS (2; the median is shown),
# BENCH_METHODS ("lora full"), BENCH_SHARED (../shared/bench), BENCH_FTEXP.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

bin=$(bench_ftexp)
work=${BENCH_WORK:-/tmp/ftexp-bench}
reps=${BENCH_REPS:-2}
read -r -a methods <<<"${BENCH_METHODS:-lora full}"
shared=${BENCH_SHARED:-$root/../shared/bench}
ck="$work/checkpoints/EleutherAI/pythia-14m"
cores=$(nproc)
half=$((cores / 2 > 0 ? cores / 2 : 1))

mkdir -p "$work"
BENCH_PYTHON=${BENCH_PYTHON:-$root/.venv/bin/python} bench_ensure_model "$work" "$shared" bench-devices

cfg="$work/ftexp-devices.toml"
cat >"$cfg" <<EOF
# Written by bench/devices.sh.
name = "bench-devices"
seed = 1337
[model]
checkpoint = "$ck"
device = "cpu"
precision = "32-true"
[data]
path = "$work/data.json"
prompt_style = "alpaca"
max_seq_length = 256
split = { train = 0.9, val = 0.1, test = 0.0 }
[train]
learning_rate = 1e-3
weight_decay = 0.01
batch_size = 16
micro_batch_size = 4
warmup_iters = 2
max_grad_norm = 0.0
EOF
cd "$work"
"$bin" prepare "$cfg" >/dev/null

echo "== data-parallel training on the CPU: 1 process x $cores threads vs 2 processes x $half threads =="
bench_cpu_mark
bench_machine
echo "ftexp: $("$bin" --version)"
echo "command: OMP_NUM_THREADS=$half ftexp bench $cfg --set train.devices=2 --set method.kind=M --steps 20 --json"
results="$work/devices-results.tsv"
: >"$results"
for ((r = 1; r <= reps; r++)); do
  for m in "${methods[@]}"; do
    OMP_NUM_THREADS=$cores "$bin" bench "$cfg" --set method.kind="$m" --steps 20 --json >"$work/one-$m.json"
    OMP_NUM_THREADS=$half "$bin" bench "$cfg" --set method.kind="$m" --set train.devices=2 --steps 20 --json >"$work/two-$m.json"
    python3 - "$m" "$work/one-$m.json" "$work/two-$m.json" >>"$results" <<'EOF'
import json, sys
one, two = (json.load(open(p)) for p in sys.argv[2:4])
print(sys.argv[1], one["tokens_per_s"], two["tokens_per_s"], two["allreduce_ms_per_step"],
      one["seconds"] / one["steps"] * 1e3, " ".join(f"{m:.0f}" for m in two["rank_peak_mib"]), one["peak_rss_mib"],
      one["losses"][-1], two["losses"][-1], sep="\t")
EOF
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m, *rest = line.rstrip("\n").split("\t")
    rows.setdefault(m, []).append(rest)
print(f"{'method':<8} {'1 proc tok/s':>12} {'2 procs tok/s':>13} {'ratio':>6} {'allreduce ms/step':>17} {'step ms (1 proc)':>16} {'peak RSS MiB 1 proc | by rank':>30} {'last loss 1|2':>16}")
for m, rs in rows.items():
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    one, two, sync, step = med(0), med(1), med(2), med(3)
    print(f"{m:<8} {one:>12.0f} {two:>13.0f} {two / one:>6.2f} {sync:>17.1f} {step:>16.1f} {float(rs[-1][5]):>14.0f} | {rs[-1][4]:<13} {float(rs[-1][6]):.4f}|{float(rs[-1][7]):.4f}")
EOF
bench_cpu_report
