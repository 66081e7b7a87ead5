# Helpers shared by the bench/*.sh scripts (sourced, not run).

# The first Python that can import the given modules, in the documented order:
# $BENCH_PYTHON, /tmp/ftexp-bench/venv/bin/python (made by /work/shared/bench/litgpt_baseline.sh),
# /tmp/fixture-venv/bin/python. Prints its path, or nothing.
bench_find_python() {
  local mods=${1:-torch,transformers,tokenizers} py
  for py in "${BENCH_PYTHON:-}" /tmp/ftexp-bench/venv/bin/python /tmp/fixture-venv/bin/python; do
    [ -n "$py" ] && [ -x "$py" ] || continue
    if "$py" -c "import $mods" >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 0
}

bench_python_hint() {
  echo "  to get them: set BENCH_PYTHON to a Python with torch==2.11.0 transformers tokenizers safetensors, or run"
  echo "    python3 -m venv /tmp/fixture-venv && /tmp/fixture-venv/bin/pip install torch==2.11.0 transformers tokenizers safetensors"
}

# Physical cores (distinct socket/core pairs); falls back to nproc.
bench_physical_cores() {
  local n
  n=$(lscpu -p=SOCKET,CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
  [ "${n:-0}" -gt 0 ] 2>/dev/null || n=$(nproc)
  echo "$n"
}

bench_machine() {
  local cpu
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  echo "machine: $(nproc) logical CPUs, $(bench_physical_cores) physical cores, ${cpu:-unknown CPU}; $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
}

# The pythia-14m shaped bench model (/work/shared/bench/make_bench_model.py): an existing copy in
# $1 (the bench's work dir) or in the litgpt baseline's work dir. Prints the checkpoint dir, or nothing.
bench_find_pythia() {
  local d
  for d in "$1" /tmp/ftexp-bench; do
    d="$d/checkpoints/EleutherAI/pythia-14m"
    if [ -f "$d/config.json" ] && [ -f "$d/tokenizer.json" ] && [ -f "$d/model.safetensors" ]; then
      echo "$d"
      return 0
    fi
  done
  return 0
}

# CPU used by other processes while a bench runs (the machine is shared with builds): call
# bench_cpu_mark at the start and bench_cpu_report at the end, from the bench's own shell (not a
# subshell). Busy CPU time of the whole machine (from /proc/stat) minus this shell's and its
# waited-for children's (from /proc/$$/stat), in CPU-seconds (USER_HZ ticks / 100).
_bench_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
_bench_own() { sed 's/.*) //' "/proc/$$/stat" | awk '{print $12 + $13 + $14 + $15}'; }
bench_cpu_mark() {
  _bench_t0=$(date +%s.%N)
  _bench_busy0=$(_bench_busy)
  _bench_own0=$(_bench_own)
}
bench_cpu_report() {
  local t1 busy1 own1
  t1=$(date +%s.%N)
  busy1=$(_bench_busy)
  own1=$(_bench_own)
  awk -v t0="$_bench_t0" -v t1="$t1" -v b0="$_bench_busy0" -v b1="$busy1" -v o0="$_bench_own0" -v o1="$own1" \
    -v n="$(nproc)" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" 'BEGIN {
      wall = t1 - t0; other = ((b1 - b0) - (o1 - o0)) / 100; if (other < 0) other = 0
      printf "other processes used %.1f CPU-s during this bench (%.0f s wall x %d CPUs = %.0f CPU-s); load average now %s\n", other, wall, n, wall * n, load
      if (other > 0.05 * wall * n) print "note: the machine was busy with other work during the bench; runs it disturbed were redone and left out (column runs; rows marked ! had no undisturbed run: rerun when the machine is idle)"
    }'
}

# Per-run check: a run is disturbed when other processes used more than 10% of the machine's CPU
# time during it. bench_busy: the machine's busy ticks now (1/100 s). bench_disturbed B0 B1 OWN_S WALL_S
# succeeds when (B1 - B0)/100 - OWN_S > 0.1 * WALL_S * nproc. OWN_S: the CPU-seconds of the run itself.
bench_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
bench_disturbed() {
  awk -v b0="$1" -v b1="$2" -v own="$3" -v wall="$4" -v n="$(nproc)" \
    'BEGIN { other = (b1 - b0) / 100 - own; exit !(other > 0.1 * wall * n) }'
}
# Runs a command in this shell (its stdout passes through) and sets bench_flag to "clean" or
# "disturbed" by bench_disturbed. Call it as `bench_flagged cmd … >file`, not in $( ), so the flag
# stays set.
bench_flagged() {
  local b0 b1 t0 t1 cpu0 cpu1 own wall
  b0=$(bench_busy) t0=$(date +%s.%N) cpu0=$(_bench_own)
  "$@"
  cpu1=$(_bench_own) t1=$(date +%s.%N) b1=$(bench_busy)
  own=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {print (b - a) / 100}')
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
  if bench_disturbed "$b0" "$b1" "$own" "$wall"; then bench_flag=disturbed; else bench_flag=clean; fi
}
# CPU-seconds (user + system) a live process has used so far.
bench_proc_cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{printf "%.2f\n", ($12 + $13) / 100}'; }
# Runs a command under /usr/bin/time; writes "WALL CPU" (seconds) to the file $1, the command's stdout to stdout.
bench_timed() {
  local out=$1
  shift
  /usr/bin/time -f '%e %U %S' -o "$out.raw" "$@"
  awk '{printf "%s %.2f\n", $1, $2 + $3}' "$out.raw" >"$out"
  rm -f "$out.raw"
}

# Makes sure the pythia-14m shaped bench model and its data are in the work dir $1, making them with
# $2/make_bench_model.py (../shared/bench) when missing. $3 names the bench in messages.
bench_ensure_model() {
  local work=$1 shared=$2 name=$3 py
  if [ -f "$work/data.json" ] && [ -f "$work/checkpoints/EleutherAI/pythia-14m/model.safetensors" ]; then
    return 0
  fi
  py=$(bench_find_python torch,transformers,tokenizers,safetensors)
  if [ -z "$py" ] || [ ! -f "$shared/make_bench_model.py" ]; then
    echo "$name: the bench model is missing in $work and cannot be made here:" >&2
    echo "  run $shared/litgpt_baseline.sh $work none (or set BENCH_SHARED / BENCH_PYTHON)" >&2
    bench_python_hint >&2
    exit 1
  fi
  "$py" "$shared/make_bench_model.py" "$work" >/dev/null
}

# The ftexp binary to measure (BENCH_FTEXP, else the release build); exits when it is not built.
bench_ftexp() {
  local bin=${BENCH_FTEXP:-$root/target/release/ftexp}
  [ -x "$bin" ] || { echo "bench: $bin not found; run 'make build' first" >&2; exit 1; }
  echo "$bin"
}
