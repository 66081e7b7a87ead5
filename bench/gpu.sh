#!/usr/bin/env bash
# The CUDA path on a GPU machine, no network needed: `ftexp bench` on the Falcon-7B architecture
# (configs/falcon7b-adapter.toml as written, random weights from its config.json, bf16-true), micro
# batch 4, synthetic samples of 512 tokens, for lora and adapter_v2; prints tokens/s, GPU memory and
# MFU with the card's name.
#
#   bench/gpu.sh [STEPS]      (default 10; on the device machine, from the repository root)
#
# Needs target/release/ftexp built against the torch 2.11.0 wheel (its libtorch_cuda is linked; the
# rpath points at this checkout's .venv, so point LD_LIBRARY_PATH at the machine's torch/lib).
set -euo pipefail
steps=${1:-10}
bin=${BENCH_FTEXP:-target/release/ftexp}
export LD_LIBRARY_PATH=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}:${LD_LIBRARY_PATH:-}
ck=checkpoints/tiiuae/falcon-7b-instruct
mkdir -p "$ck"
[ -f "$ck/config.json" ] || cp tests/fixtures/hub-configs/falcon-7b-instruct.json "$ck/config.json"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$bin" env
for m in lora adapter_v2; do
  "$bin" bench configs/falcon7b-adapter.toml --synthetic --steps "$steps" --set model.init=random \
    --set method.kind="$m" --set data.max_seq_length=512 --set train.micro_batch_size=4 --set train.batch_size=4
done
