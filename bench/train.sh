#!/usr/bin/env bash
# Fine-tuning speed on the CPU: `ftexp bench` and litgpt 0.5.9 side by side on the pythia-14m shaped
# bench model and synthetic Alpaca data of the shared baseline (../shared/bench), then how ftexp's
# time per optimizer step grows with max_seq_length.
#
#   bench/train.sh            (make bench-train builds first, then runs this; make bench runs it too)
#
# Both tools get the settings of ../shared/bench/litgpt_baseline.sh: prompt masked, fp32, micro batch
# 4, global batch 16, max_seq_length 256, 20 optimizer steps, AdamW (lr 1e-3, weight decay 0.01 —
# torch's defaults, which litgpt uses), warm-up 2 steps then cosine, no gradient clipping (litgpt's
# finetune scripts have none), 10% validation split, no evaluation or checkpoint in the timed part.
# Only ftexp's AdamW betas differ (0.9/0.95 against torch's 0.9/0.999).
# Measured per run: real (non-padding) tokens per second as each tool reports it (litgpt: "Tokens w/
# Prompt" over "Training Time"; ftexp: `ftexp bench --json`), the peak RSS of the whole process tree
# (/usr/bin/time), and the loss of the first and last optimizer step (litgpt: the running mean of the
# step's 4 micro-batches as it logs it; ftexp: the step's mean per supervised token).
# Runs alternate which tool goes first; a run during which other processes used > 10% of the CPUs
# is redone (up to 3x BENCH_REPS tries). The table shows medians of the undisturbed runs.
#
# Settings (environment): BENCH_WORK (/tmp/ftexp-bench, the litgpt baseline's own work dir: its venv,
# model and data are reused), BENCH_REPS (2), BENCH_METHODS ("adapter_v2 lora full"),
# BENCH_SHARED (../shared/bench), BENCH_LENGTHS ("128 256 512"), BENCH_FTEXP,
# BENCH_STRATEGIES (unset: skipped; e.g. "none checkpointing nf4 head-unchunked"): what each memory
# strategy costs, per method of BENCH_METHODS, on the same data and steps: `none` (no checkpointing,
# dense base, the LM head chunked as always), `checkpointing` (train.activation_checkpointing = true),
# `nf4` (model.quantize = "nf4", which turns checkpointing on too; not for full) and `head-unchunked`
# (`ftexp bench --head-chunk-bytes 0`: a micro-batch's head scores in one piece, no checkpointing),
# each as tokens/s and its step time over none's. BENCH_STRATEGY_DATA ("data"; "synthetic": random
# full-length samples, half supervised): on the data set a micro-batch supervises fewer positions than
# one head chunk holds (444 at this vocabulary), so only synthetic samples make the head chunk.
# Without the litgpt venv (make it with ../shared/bench/litgpt_baseline.sh WORK none) only ftexp runs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

bin=${BENCH_FTEXP:-$root/target/release/ftexp}
work=${BENCH_WORK:-/tmp/ftexp-bench}
reps=${BENCH_REPS:-2}
read -r -a methods <<<"${BENCH_METHODS:-adapter_v2 lora full}"
read -r -a lengths <<<"${BENCH_LENGTHS:-128 256 512}"
shared=${BENCH_SHARED:-$root/../shared/bench}
ck="$work/checkpoints/EleutherAI/pythia-14m"

[ -x "$bin" ] || { echo "bench-train: $bin not found; run 'make build' first" >&2; exit 1; }
mkdir -p "$work"
bench_ensure_model "$work" "$shared" bench-train
have_litgpt=0
[ -x "$work/venv/bin/litgpt" ] && [ -f "$shared/litgpt_baseline.sh" ] && have_litgpt=1

cfg="$work/ftexp-bench.toml"
cat >"$cfg" <<EOF
# Written by bench/train.sh: the litgpt baseline's settings.
name = "bench"
seed = 1337
[model]
checkpoint = "$ck"
device = "cpu"
precision = "32-true"
[data]
path = "$work/data.json"
prompt_style = "alpaca"
mask_inputs = true
max_seq_length = 256
split = { train = 0.9, val = 0.1, test = 0.0 }
[train]
learning_rate = 1e-3
weight_decay = 0.01
batch_size = 16
micro_batch_size = 4
warmup_iters = 2
lr_schedule = "cosine"
max_grad_norm = 0.0
EOF
results="$work/train-results.tsv"
: >"$results"
cd "$work"

echo "== fine-tuning speed: ftexp vs litgpt 0.5.9, CPU, fp32 =="
bench_cpu_mark
bench_machine
echo "ftexp: $("$bin" --version)"
[ "$have_litgpt" = 1 ] && echo "litgpt: $("$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("litgpt"), "with torch", m.version("torch"))' 2>/dev/null)"
"$bin" prepare "$cfg" >/dev/null # the data cache is made outside the timed runs (litgpt tokenizes in its timed set-up too)

run_ftexp() { # method -> "tokens_per_s rss_mib first_loss last_loss"
  "$bin" bench "$cfg" --set method.kind="$1" --steps 20 --json >"$work/ftexp-$1.json"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["tokens_per_s"], d["peak_rss_mib"], d["losses"][0], d["losses"][-1])' "$work/ftexp-$1.json"
}
run_litgpt() { # method -> "tokens_per_s rss_mib first_loss last_loss"
  local m=$1 line
  line=$(/usr/bin/time -f '%M' -o "$work/litgpt-$m.rss" bash "$shared/litgpt_baseline.sh" "$work" "$m")
  local tps first last
  tps=$(grep -oP 'real_tokens_per_s=\K[0-9.]+' <<<"$line")
  first=$(grep -oP 'iter 4 step 1 \| loss train: \K[0-9.]+' "$work/litgpt-$m.log")
  last=$(grep -oP 'iter 80 step 20 \| loss train: \K[0-9.]+' "$work/litgpt-$m.log")
  echo "$tps $(awk '{printf "%.0f", $1 / 1024}' "$work/litgpt-$m.rss") $first $last"
}
measure() { # tool method -> appends a row to the results
  local tool=$1 m=$2 clean=0 tries=0
  while ((clean < 1 && tries < 3)); do
    tries=$((tries + 1))
    bench_flagged "run_$tool" "$m" >"$work/measure.out"
    [ "$bench_flag" = clean ] && clean=1
    printf '%s\t%s\t%s\t%s\n' "$tool" "$m" "$bench_flag" "$(cat "$work/measure.out")" >>"$results"
  done
}

for ((r = 1; r <= reps; r++)); do
  for m in "${methods[@]}"; do
    if [ "$have_litgpt" = 1 ] && ((r % 2 == 1)); then measure litgpt "$m"; fi
    measure ftexp "$m"
    if [ "$have_litgpt" = 1 ] && ((r % 2 == 0)); then measure litgpt "$m"; fi
  done
done

echo
python3 - "$results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    tool, m, flag, rest = line.rstrip("\n").split("\t")
    tps, rss, first, last = map(float, rest.split())
    runs.setdefault((tool, m), []).append((flag == "clean", tps, rss, first, last))
def pick(key):
    rs = runs.get(key, [])
    clean = [r for r in rs if r[0]]
    use = clean or rs
    if not use:
        return None
    med = lambda i: statistics.median(r[i] for r in use)
    return dict(tps=med(1), rss=med(2), first=med(3), last=med(4), note=f"{len(clean)}/{len(rs)}" + ("" if clean else "!"))
goals = {"adapter_v2": 6.0, "lora": 6.0, "full": 4.0}
head = f"{'method':<11}{'tool':<8}{'tokens/s':>9}{'peak RSS MiB':>13}{'loss step 1':>12}{'loss step 20':>13}{'runs':>6}{'ftexp/litgpt':>13}{'goal':>6}{'RSS ok':>7}"
print(head); print("-" * len(head))
for m in dict.fromkeys(k[1] for k in runs):
    f, l = pick(("ftexp", m)), pick(("litgpt", m))
    for tool, d in (("litgpt", l), ("ftexp", f)):
        if d is None:
            continue
        ratio = goal = rss_ok = ""
        if tool == "ftexp" and l:
            ratio = f"{d['tps'] / l['tps']:.2f}x"
            goal = "met" if d["tps"] / l["tps"] >= goals.get(m, 6.0) else "no"
            rss_ok = "yes" if d["rss"] <= l["rss"] else "no"
        print(f"{m:<11}{tool:<8}{d['tps']:>9.0f}{d['rss']:>13.0f}{d['first']:>12.4f}{d['last']:>13.4f}{d['note']:>6}{ratio:>13}{goal:>6}{rss_ok:>7}")
print(f"goals: ftexp/litgpt >= {goals['adapter_v2']}x (adapter_v2, lora), >= {goals['full']}x (full); peak RSS not above litgpt's")
print("runs: undisturbed/made ('!': every run was disturbed by other processes; rerun on an idle machine)")
EOF

echo
echo "== ftexp: time per optimizer step against max_seq_length (lora, synthetic full-length samples, 16 per step) =="
for len in "${lengths[@]}"; do
  "$bin" bench "$cfg" --synthetic --set method.kind=lora --set data.max_seq_length="$len" --steps 5 --json >"$work/len-$len.json"
done
python3 - "$work" "${lengths[@]}" <<'EOF'
import json, sys
work, lens = sys.argv[1], [int(x) for x in sys.argv[2:]]
rows = {n: json.load(open(f"{work}/len-{n}.json")) for n in lens}
print(f"{'max_seq_length':>14}{'s/step':>8}{'tokens/s':>10}{'vs previous':>13}{'linear':>8}{'quadratic':>10}")
prev = None
for n in lens:
    d = rows[n]
    s = d["seconds"] / d["steps"]
    growth = f"{s / prev[1]:.2f}x" if prev else ""
    lin = f"{n / prev[0]:.1f}x" if prev else ""
    quad = f"{(n / prev[0]) ** 2:.1f}x" if prev else ""
    print(f"{n:>14}{s:>8.3f}{d['tokens_per_s']:>10.0f}{growth:>13}{lin:>8}{quad:>10}")
    prev = (n, s)
print("attention grows quadratically with length, everything else linearly: a step should grow between the two")
EOF
read -r -a strategies <<<"${BENCH_STRATEGIES:-}"
if ((${#strategies[@]})); then
  echo
  strategy_data=${BENCH_STRATEGY_DATA:-data}
  case $strategy_data in
    data) synth=() ;;
    synthetic) synth=(--synthetic) ;;
    *) echo "bench-train: BENCH_STRATEGY_DATA is \"data\" or \"synthetic\", not \"$strategy_data\"" >&2; exit 1 ;;
  esac
  echo "== ftexp: the cost of each memory strategy ($strategy_data, 20 steps, $reps run(s) each, median) =="
  strategy_args() { # strategy -> ftexp bench arguments
    case $1 in
      none) echo "--set train.activation_checkpointing=false" ;;
      checkpointing) echo "--set train.activation_checkpointing=true" ;;
      nf4) echo "--set model.quantize=nf4" ;;
      head-unchunked) echo "--set train.activation_checkpointing=false --head-chunk-bytes 0" ;;
      *) echo "bench-train: BENCH_STRATEGIES: unknown strategy \"$1\" (none, checkpointing, nf4, head-unchunked)" >&2; return 1 ;;
    esac
  }
  wanted=(none)
  for s in "${strategies[@]}"; do
    strategy_args "$s" >/dev/null || exit 1
    [ "$s" = none ] || wanted+=("$s")
  done
  strategy_results="$work/strategy-results.tsv"
  : >"$strategy_results"
  for ((r = 1; r <= reps; r++)); do
    for m in "${methods[@]}"; do
      for s in "${wanted[@]}"; do
        [ "$s" = nf4 ] && [ "$m" = full ] && continue # full trains every weight: none can be quantized
        read -r -a extra <<<"$(strategy_args "$s")"
        bench_flagged "$bin" bench "$cfg" --set method.kind="$m" "${extra[@]}" "${synth[@]}" --steps 20 --json \
          >"$work/strategy-$m-$s.json"
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(*sys.argv[2:], d["tokens_per_s"], d["seconds"] / d["steps"], d["peak_rss_mib"], sep="\t")' \
          "$work/strategy-$m-$s.json" "$m" "$s" "$bench_flag" >>"$strategy_results"
      done
    done
  done
  python3 - "$strategy_results" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m, s, flag, tps, step, rss = line.rstrip("\n").split("\t")
    runs.setdefault((m, s), []).append((flag == "clean", float(tps), float(step), float(rss)))
def pick(key):
    rs = runs.get(key, [])
    clean = [r for r in rs if r[0]]
    use = clean or rs
    if not use:
        return None
    med = lambda i: statistics.median(r[i] for r in use)
    return dict(tps=med(1), step=med(2), rss=med(3), note=f"{len(clean)}/{len(rs)}" + ("" if clean else "!"))
head = f"{'method':<11}{'strategy':<16}{'tokens/s':>9}{'s/step':>8}{'x none':>8}{'peak RSS MiB':>13}{'runs':>6}"
print(head); print("-" * len(head))
for m in dict.fromkeys(k[0] for k in runs):
    base = pick((m, "none"))
    for s in dict.fromkeys(k[1] for k in runs if k[0] == m):
        d = pick((m, s))
        ratio = f"{d['step'] / base['step']:.2f}x" if base else ""
        print(f"{m:<11}{s:<16}{d['tps']:>9.0f}{d['step']:>8.3f}{ratio:>8}{d['rss']:>13.0f}{d['note']:>6}")
print("x none: step time over the same method's with no checkpointing, a dense base and the LM head in 256 MiB chunks;")
print("nf4 checkpoints too (a quantized base needs it); head-unchunked scores a micro-batch's head in one piece")
print("runs: undisturbed/made ('!': every run was disturbed by other processes)")
EOF
fi

echo
bench_cpu_report
