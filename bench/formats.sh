#!/usr/bin/env bash
# Data preparation speed by file format: rows/s of `ftexp prepare` on the same demo records as a JSON
# array, JSON Lines, CSV and Parquet (snappy, written by pyarrow), each run in a fresh working
# directory (no cache reuse), median of BENCH_REPS. A chat data set (the same records as one-exchange
# conversations, JSON Lines and Parquet) with the fixture's Llama-3 chat template is measured too.
#
#   bench/formats.sh         (make bench-formats builds first, then runs this; make bench runs it too)
#
# Settings (environment): BENCH_WORK (/tmp/ftexp-bench-formats), BENCH_REPS (3), BENCH_ROWS (20000),
# BENCH_FTEXP. Needs the venv's pyarrow (make setup) to write the Parquet files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bin=$(bench_ftexp)
work=${BENCH_WORK:-/tmp/ftexp-bench-formats}
reps=${BENCH_REPS:-3}
n=${BENCH_ROWS:-20000}
py=$root/.venv/bin/python
mkdir -p "$work"
[ -s "$work/rows-$n.json" ] || python3 "$root/scripts/make_demo_data.py" --rows "$n" --out "$work/rows-$n.json" >/dev/null
"$py" - "$work" "$n" <<'EOF'
import csv, json, sys
import pyarrow as pa, pyarrow.parquet as pq
work, n = sys.argv[1], sys.argv[2]
rows = json.load(open(f"{work}/rows-{n}.json"))
with open(f"{work}/alpaca.jsonl", "w") as f:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
with open(f"{work}/alpaca.csv", "w", newline="") as f:
    w = csv.DictWriter(f, ["instruction", "input", "output"])
    w.writeheader()
    w.writerows({k: r.get(k, "") for k in ("instruction", "input", "output")} for r in rows)
pq.write_table(pa.Table.from_pylist([{k: r.get(k, "") for k in ("instruction", "input", "output")} for r in rows]),
               f"{work}/alpaca.parquet", compression="snappy")
chats = [{"messages": [{"role": "user", "content": (r["instruction"] + "\n" + r.get("input", "")).strip()},
                       {"role": "assistant", "content": r["output"]}]} for r in rows]
with open(f"{work}/chat.jsonl", "w") as f:
    f.writelines(json.dumps(c, ensure_ascii=False) + "\n" for c in chats)
pq.write_table(pa.Table.from_pylist(chats), f"{work}/chat.parquet", compression="snappy")
EOF

measure() { # label file format checkpoint -> prints "label rows/s seconds"
  local label=$1 file=$2 format=$3 ck=$4 all=()
  for ((r = 0; r < reps; r++)); do
    dir=$(mktemp -d "$work/run-XXXXXX")
    printf '[model]\ncheckpoint = "%s"\n[data]\nformat = "%s"\npath = "%s"\nmax_seq_length = 256\n' "$ck" "$format" "$file" >"$dir/b.toml"
    (cd "$dir" && "$bin" prepare b.toml --json >out.json)
    all+=("$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["records_per_s"], d["seconds"])' "$dir/out.json")")
    rm -rf "$dir"
  done
  printf '%s\n' "${all[@]}" | sort -n | awk -v l="$label" -v m=$(((reps + 1) / 2)) 'NR == m {printf "%-22s %10.0f %9.3f\n", l, $1, $2}'
}

echo "== ftexp prepare by file format: $n records, median of $reps =="
printf '%-22s %10s %9s\n' "data set" "rows/s" "seconds"
llama=$root/tests/fixtures/models/llama
chat=$root/tests/fixtures/chat/llama3
measure "alpaca JSON" "$work/rows-$n.json" alpaca "$llama"
measure "alpaca JSON Lines" "$work/alpaca.jsonl" alpaca "$llama"
measure "alpaca CSV" "$work/alpaca.csv" alpaca "$llama"
measure "alpaca Parquet" "$work/alpaca.parquet" alpaca "$llama"
measure "chat JSON Lines" "$work/chat.jsonl" chat "$chat"
measure "chat Parquet" "$work/chat.parquet" chat "$chat"
