#!/usr/bin/env bash
# Greedy generation speed on the CPU: prefill and decode tokens/s of `ftexp generate`, side by side
# with transformers' `generate` (same checkpoint, same prompt ids, fp32, same thread count).
#
#   bench/generate.sh            (make bench-generate builds first, then runs this)
#
# Models: (a) the parity fixture tests/fixtures/models/gpt-neox; (b) the pythia-14m shaped model of
# /work/shared/bench/make_bench_model.py, made once in the work dir (or reused from the litgpt
# baseline's /tmp/ftexp-bench).
# Settings (environment): BENCH_WORK (/tmp/ftexp-bench-gen), BENCH_NEW_TOKENS (128), BENCH_REPS (5),
# BENCH_PROMPT, BENCH_PYTHON (a Python with torch, transformers, tokenizers), BENCH_FTEXP.
#
# Method: one untimed warm-up run of each tool per model, then BENCH_REPS timed runs, alternating
# which tool goes first; the table shows medians. ftexp's numbers are the ones its --json reports
# (prefill = call to first new token, decode = the tokens after the first); each ftexp run is a fresh
# process. transformers runs in one warm process (bench/hf_generate.py) timed the same way.
# The machine may be shared: a repetition during which other processes used > 10% of the CPUs is
# redone (up to 3x BENCH_REPS tries); the table says how many undisturbed runs it used.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

bin=${BENCH_FTEXP:-$root/target/release/ftexp}
work=${BENCH_WORK:-/tmp/ftexp-bench-gen}
N=${BENCH_NEW_TOKENS:-128}
reps=${BENCH_REPS:-5}
prompt=${BENCH_PROMPT:-"Below is an instruction that describes a task. Write a response that appropriately completes the request. ### Instruction: Convert 42 km to m. Describe the object in one sentence: a red apple. ### Response:"}

[ -x "$bin" ] || { echo "bench-generate: $bin not found; run 'make build' first" >&2; exit 1; }
mkdir -p "$work"
results="$work/results.tsv"
: >"$results"

echo "== ftexp generate vs transformers generate: greedy, fp32, CPU =="
bench_cpu_mark
bench_machine
threads=$("$bin" env | awk '/^threads:/ {print $2}')
phys=$(bench_physical_cores)
echo "threads: ftexp/libtorch default $threads; physical cores $phys; transformers gets torch.set_num_threads($threads)"
[ "$threads" = "$phys" ] || echo "note: libtorch's default thread count differs from the physical core count"
echo "new tokens asked: $N; repetitions: $reps (median), after one warm-up of each tool"

py=$(bench_find_python torch,transformers,tokenizers,safetensors)
if [ -n "$py" ]; then
  echo "transformers from: $py"
else
  echo "transformers' numbers are skipped: no Python with torch, transformers, tokenizers and safetensors found"
  echo "  (looked at \$BENCH_PYTHON, /tmp/ftexp-bench/venv/bin/python, /tmp/fixture-venv/bin/python)"
  bench_python_hint
fi

models=("gpt-neox-fixture" "$root/tests/fixtures/models/gpt-neox")
pythia=$(bench_find_pythia "$work")
if [ -z "$pythia" ] && [ -n "$py" ]; then
  echo "making the pythia-14m shaped bench model in $work (once) ..."
  "$py" /work/shared/bench/make_bench_model.py "$work" >"$work/make_bench_model.log" 2>&1 \
    || { cat "$work/make_bench_model.log" >&2; exit 1; }
  pythia=$(bench_find_pythia "$work")
fi
if [ -n "$pythia" ]; then
  models+=("pythia-14m-shaped" "$pythia")
else
  echo "pythia-14m shaped model skipped: not found and no Python to make it (needs /work/shared/bench/make_bench_model.py)"
fi

ftexp_args() { # checkpoint -> the command line of one ftexp run
  ftexp_cmd=("$bin" generate --checkpoint "$1" --prompt "$prompt" --max-new-tokens "$N" --device cpu --precision 32-true --json)
}

for ((m = 0; m < ${#models[@]}; m += 2)); do
  label=${models[m]}
  ck=${models[m + 1]}
  echo
  echo "-- $label: $ck"
  ftexp_args "$ck"
  warm=$("${ftexp_cmd[@]}")
  read -r n ptoks ids < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(len(d["ids"]), d["prompt_tokens"], json.dumps(d["ids"], separators=(",", ":")))' "$warm")
  echo "ftexp: prompt $ptoks tokens, generated $n of $N new tokens$([ "$n" -lt "$N" ] && echo " (stopped at EOS)")"

  hf=0
  if [ -n "$py" ]; then
    coproc HF { "$py" "$here/hf_generate.py" --checkpoint "$ck" --prompt "$prompt" --new-tokens "$n" \
      --threads "$threads" --expect-ids "$ids" 2>"$work/hf-$label.log"; }
    if read -r -t 900 ready <&"${HF[0]}"; then
      hf=1
      hf_pid=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["pid"])' "$ready")
      python3 - "$ready" "$ptoks" <<'EOF'
import json, sys
d = json.loads(sys.argv[1]); ptoks = int(sys.argv[2])
line = (f"transformers {d['transformers']} (torch {d['torch']}, attention {d['attn_implementation']}, threads {d['threads']}):"
        f" prompt {d['prompt_tokens']} tokens, {d['new_tokens']} new tokens")
if d["min_new_tokens_set"]:
    line += ", min_new_tokens set to match ftexp"
print(line)
if d["prompt_tokens"] != ptoks:
    print(f"WARNING: prompt token counts differ (ftexp {ptoks}, transformers {d['prompt_tokens']})")
same = "yes" if d["ids_match"] else f"no, first difference at new token {d['first_difference_at']}"
print(f"greedy ids identical to ftexp: {same}")
EOF
    else
      echo "transformers failed to start; its log:" >&2
      cat "$work/hf-$label.log" >&2
      exit 1
    fi
  fi

  # One repetition = one run of each tool, in alternating order; it is redone (up to 3x the
  # repetitions) when other processes used the CPUs during it.
  good=0
  tries=0
  while ((good < reps && tries < 3 * reps)); do
    tries=$((tries + 1))
    if ((tries % 2 == 1)); then order="ftexp hf"; else order="hf ftexp"; fi
    b0=$(bench_busy)
    t0=$(date +%s.%N)
    own=0
    lines=()
    for tool in $order; do
      if [ "$tool" = ftexp ]; then
        js=$(bench_timed "$work/ftexp.time" "${ftexp_cmd[@]}")
        read -r _ cpu <"$work/ftexp.time"
        own=$(awk -v a="$own" -v b="$cpu" 'BEGIN {print a + b}')
        lines+=("$label"$'\t'ftexp$'\t'"$js")
      elif ((hf)); then
        c0=$(bench_proc_cpu "$hf_pid")
        echo run >&"${HF[1]}"
        read -r -t 900 js <&"${HF[0]}" || { cat "$work/hf-$label.log" >&2; exit 1; }
        c1=$(bench_proc_cpu "$hf_pid")
        own=$(awk -v a="$own" -v b="$c0" -v c="$c1" 'BEGIN {print a + c - b}')
        lines+=("$label"$'\t'transformers$'\t'"$js")
      fi
    done
    b1=$(bench_busy)
    wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
    if bench_disturbed "$b0" "$b1" "$own" "$wall"; then flag=disturbed; else flag=clean; good=$((good + 1)); fi
    for l in "${lines[@]}"; do printf '%s\t%s\n' "$flag" "$l" >>"$results"; done
  done
  if ((hf)); then
    echo quit >&"${HF[1]}"
    wait "$HF_PID" || true
  fi
done

echo
python3 - "$results" "$hf" <<'EOF'
import json, statistics, sys

rows = {}
order = []
for line in open(sys.argv[1]):
    flag, model, tool, js = line.rstrip("\n").split("\t", 3)
    d = json.loads(js)
    d["clean"] = flag == "clean"
    if "ids" in d:
        d["new_tokens"] = len(d["ids"])
    key = (model, tool)
    if key not in rows:
        rows[key] = []
        order.append(key)
    rows[key].append(d)

med = lambda xs: statistics.median(xs)
def use(rs):  # the undisturbed runs, or all of them (marked) when none was
    good = [r for r in rs if r["clean"]]
    return (good, f"{len(good)}/{len(rs)}") if good else (rs, f"0/{len(rs)}!")

head = f"{'model':<20} {'tool':<13} {'prompt tok':>10} {'new tok':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode ms/tok':>14} {'decode ftexp/tf':>16} {'runs':>6}"
print(head)
print("-" * len(head))
notes = []
for model, tool in order:
    rs, runs_note = use(rows[(model, tool)])
    pre = med([r["prefill_tokens_per_s"] for r in rs])
    dec = med([r["decode_tokens_per_s"] for r in rs])
    ratio = ""
    if tool == "ftexp" and (model, "transformers") in rows:
        tf = med([r["decode_tokens_per_s"] for r in use(rows[(model, "transformers")])[0]])
        ratio = f"{dec / tf:.2f}x"
    news = {r["new_tokens"] for r in rs}
    print(f"{model:<20} {tool:<13} {rs[0]['prompt_tokens']:>10} {'/'.join(map(str, sorted(news))):>8} {pre:>14.0f} {dec:>13.0f} {1000 / dec:>14.2f} {ratio:>16} {runs_note:>6}")
    decs = sorted(r["decode_tokens_per_s"] for r in rs)
    pres = sorted(r["prefill_tokens_per_s"] for r in rs)
    notes.append(f"  {model} {tool}: {len(rs)} runs; decode tok/s {decs[0]:.0f}..{decs[-1]:.0f}; prefill tok/s {pres[0]:.0f}..{pres[-1]:.0f}"
                 + (f"; bare prefill forward {med([r['prefill_forward_s'] for r in rs]) * 1000:.2f} ms" if "prefill_forward_s" in rs[0] else ""))
print()
print("spread (min..max over the runs):")
print("\n".join(notes))
if sys.argv[2] != "1":
    print("transformers' numbers skipped (no Python with transformers; see above)")
print("runs: undisturbed runs used / runs made (a repetition is redone when other processes used > 10% of the CPUs during it;")
print("      '!' = none was undisturbed, the numbers are unreliable)")
print("goal: ftexp decode >= 1.5x transformers on CPU")
EOF

echo
bench_cpu_report
