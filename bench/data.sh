#!/usr/bin/env bash
# Data preparation speed: rows/s of `ftexp prepare` on 10,000 and 100,000 demo records, each run in a
# fresh working directory (so no cache entry is reused), and whether the time grows linearly.
#
#   bench/data.sh            (make bench-data builds first, then runs this)
#
# Tokenizers: tests/fixtures/models/llama (a small byte-level BPE) and, when present, the pythia-14m
# shaped bench model of /work/shared/bench/make_bench_model.py (4096-token BPE; made by
# bench/generate.sh in /tmp/ftexp-bench-gen, or by the litgpt baseline in /tmp/ftexp-bench).
# Settings (environment): BENCH_WORK (/tmp/ftexp-bench-data), BENCH_REPS (3, median),
# BENCH_ROWS ("10000 100000"), BENCH_PYTHON (for the reference: a Python with `tokenizers`),
# BENCH_PROFILE=1 (also `perf record` one run of the largest size and print the hottest symbols),
# BENCH_FTEXP.
#
# `seconds` and `records_per_s` are what `ftexp prepare --json` reports (tokenizer load, hashing,
# reading, templating, tokenizing, writing the cache); `wall` is the whole process.
# The machine may be shared: a run during which other processes used > 10% of the CPUs is redone
# (up to 3x BENCH_REPS tries); the table says how many undisturbed runs it used.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

bin=${BENCH_FTEXP:-$root/target/release/ftexp}
work=${BENCH_WORK:-/tmp/ftexp-bench-data}
reps=${BENCH_REPS:-3}
read -r -a sizes <<<"${BENCH_ROWS:-10000 100000}"

[ -x "$bin" ] || { echo "bench-data: $bin not found; run 'make build' first" >&2; exit 1; }
mkdir -p "$work"
results="$work/results.tsv"
: >"$results"

echo "== ftexp prepare: rows/s =="
bench_cpu_mark
bench_machine
echo "repetitions: $reps (median), each in a fresh working directory"

for n in "${sizes[@]}"; do
  [ -s "$work/rows-$n.json" ] || python3 "$root/scripts/make_demo_data.py" --rows "$n" --out "$work/rows-$n.json" >/dev/null
done

toks=("llama-fixture" "$root/tests/fixtures/models/llama")
pythia=$(bench_find_pythia /tmp/ftexp-bench-gen)
if [ -n "$pythia" ]; then
  toks+=("pythia-14m-bpe4096" "$pythia")
else
  echo "pythia-14m bench tokenizer skipped: not found (make bench-generate makes it in /tmp/ftexp-bench-gen)"
fi

run_prepare() { # tokenizer-dir rows -> the run dir (holding out.json, and "WALL CPU" in time)
  local ck=$1 n=$2 dir
  dir=$(mktemp -d "$work/run-XXXXXX")
  cat >"$dir/bench.toml" <<EOF
name = "bench"
[model]
checkpoint = "$ck"
[data]
path = "$work/rows-$n.json"
max_seq_length = 256
EOF
  (cd "$dir" && bench_timed time "$bin" prepare bench.toml --json >out.json)
  echo "$dir"
}

# Each measurement is retried (up to 3x the repetitions) when other processes used the CPUs during it.
for ((k = 0; k < ${#toks[@]}; k += 2)); do
  label=${toks[k]}
  ck=${toks[k + 1]}
  for n in "${sizes[@]}"; do
    clean=0
    tries=0
    while ((clean < reps && tries < 3 * reps)); do
      tries=$((tries + 1))
      b0=$(bench_busy)
      dir=$(run_prepare "$ck" "$n")
      b1=$(bench_busy)
      read -r wall own <"$dir/time"
      if bench_disturbed "$b0" "$b1" "$own" "$wall"; then flag=disturbed; else flag=clean; clean=$((clean + 1)); fi
      bytes=$(du -sb "$dir/data/.cache" | cut -f1)
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$n" "$flag" "$wall" "$bytes" "$(tr -d '\n' <"$dir/out.json")" >>"$results"
      rm -rf "$dir"
    done
  done
done

echo
python3 - "$results" <<'EOF'
import json, statistics, sys

runs = {}
for line in open(sys.argv[1]):
    label, n, flag, wall, size, js = line.rstrip("\n").split("\t", 5)
    d = json.loads(js)
    runs.setdefault(label, {}).setdefault(int(n), []).append((float(wall), int(size), d, flag == "clean"))

head = (f"{'tokenizer':<20} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'wall s':>7} {'wall rows/s':>11} "
        f"{'median tok':>10} {'cache MB':>9} {'reused':>6} {'runs':>8} {'goal 20k':>8}")
print(head)
print("-" * len(head))
lin = []
for label, by_n in runs.items():
    secs = {}
    for n in sorted(by_n):
        every = by_n[n]
        rs = [r for r in every if r[3]]
        runs_note = f"{len(rs)}/{len(every)}"
        if not rs:  # no undisturbed run: show the disturbed ones, marked
            rs, runs_note = every, f"0/{len(every)}!"
        s = statistics.median(r[2]["seconds"] for r in rs)
        rps = statistics.median(r[2]["records_per_s"] for r in rs)
        wall = statistics.median(r[0] for r in rs)
        reused = any(r[2]["reused"] for r in rs)
        med_tok = rs[0][2]["splits"]["train"]["median_tokens"]
        secs[n] = s
        print(f"{label:<20} {n:>7} {s:>8.3f} {rps:>8.0f} {wall:>7.3f} {n / wall:>11.0f} {med_tok:>10} "
              f"{rs[0][1] / 1e6:>9.1f} {str(reused).lower():>6} {runs_note:>8} {'yes' if rps >= 20000 else 'no':>8}")
    ns = sorted(secs)
    for a, b in zip(ns, ns[1:]):
        ratio = secs[b] / secs[a]
        ideal = b / a
        verdict = "linear" if ratio <= ideal * 1.25 else "worse than linear"
        if ratio < ideal * 0.8:
            verdict = "better than linear (fixed costs dominate the small run)"
        lin.append(f"  {label}: seconds({b}) / seconds({a}) = {ratio:.2f} (linear would be {ideal:.1f}): {verdict}")
print()
print("growth:")
print("\n".join(lin))
print("runs: undisturbed runs used / runs made (a run is disturbed when other processes used > 10% of the CPUs; '!' = none was undisturbed, the numbers are unreliable)")
print("goal: >= 20,000 rows/s on 2 cores (rows/s = records_per_s reported by ftexp prepare --json)")
EOF

py=$(bench_find_python tokenizers)
echo
if [ -n "$py" ]; then
  echo "reference: the same steps in Python ($py; tokenizers' encode_batch, the library ftexp uses):"
  for ((k = 0; k < ${#toks[@]}; k += 2)); do
    for n in "${sizes[@]}"; do
      for try in 1 2 3; do
        b0=$(bench_busy)
        line=$(bench_timed "$work/ref.time" "$py" "$here/data_reference.py" --label "${toks[k]}" \
          --tokenizer "${toks[k + 1]}" --data "$work/rows-$n.json")
        b1=$(bench_busy)
        read -r wall own <"$work/ref.time"
        bench_disturbed "$b0" "$b1" "$own" "$wall" || break
        line="$line (disturbed)"
      done
      echo "$line"
    done
  done
else
  echo "reference (Python tokenizers on the same texts) skipped: no Python with tokenizers found"
  bench_python_hint
fi

if [ "${BENCH_PROFILE:-0}" = 1 ]; then
  n=${sizes[-1]}
  echo
  if command -v perf >/dev/null; then
    echo "profile: perf record of ftexp prepare, ${toks[0]}, $n rows (self time, top symbols):"
    dir=$(mktemp -d "$work/run-XXXXXX")
    printf 'name = "bench"\n[model]\ncheckpoint = "%s"\n[data]\npath = "%s"\nmax_seq_length = 256\n' \
      "${toks[1]}" "$work/rows-$n.json" >"$dir/bench.toml"
    (cd "$dir" && perf record -q -g -o perf.data "$bin" prepare bench.toml --json >/dev/null 2>&1 &&
      perf report -i perf.data --no-children --sort symbol --stdio 2>/dev/null | grep -E '^ +[0-9.]+%' | head -25)
    rm -rf "$dir"
  else
    echo "profile skipped: perf not found"
  fi
fi

echo
bench_cpu_report
