# ftexp — fine-tune LLMs from declarative TOML experiment files.
#   make demo   the whole product on the bundled demo (offline, CPU)
#   make test   set up, build and run every test
#   make lint   rustfmt + clippy, warnings are errors
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
TORCH_VERSION := 2.11.0
# transformers and peft load ftexp's exports in the tests (scripts/check_export.py).
TRANSFORMERS_VERSION := 5.24.0
PEFT_VERSION := 0.21.2
# The CUDA headers the wheel lacks, for the NCCL part of the c10d bridge (csrc/dist.cpp).
CUDA_HEADERS := nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
# pyarrow writes the Parquet test fixtures (scripts/make_chat_fixtures.py).
PYARROW_VERSION := 21.0.0
# bitsandbytes' NF4 on the CPU is the reference of ftexp's own (scripts/bnb_quantize.py, tests/quant.rs).
BITSANDBYTES_VERSION := 0.50.2
# TensorBoard's own reader checks the event files ftexp writes (scripts/read_tensorboard.py, tests/track.rs).
TENSORBOARD_VERSION := 2.21.0
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)-transformers-$(TRANSFORMERS_VERSION)-peft-$(PEFT_VERSION)-pyarrow-$(PYARROW_VERSION)-bnb-$(BITSANDBYTES_VERSION)-tensorboard-$(TENSORBOARD_VERSION)-cuda-headers-13.0
# gguf reads ftexp's GGUF exports and llama-cpp-python (llama.cpp built from its sdist, CPU only, a few
# minutes) runs them (scripts/check_gguf.py, tests/gguf.rs).
GGUF_VERSION := 0.17.1
LLAMA_CPP_PYTHON_VERSION := 0.3.16
GGUF_STAMP := $(VENV)/.gguf-$(GGUF_VERSION)-llama-cpp-python-$(LLAMA_CPP_PYTHON_VERSION)
BIN := target/release/ftexp

# torch-sys finds libtorch through the venv's python (`python` on PATH when VIRTUAL_ENV is set).
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup setup-gguf gloo-headers build test lint demo sweep clean-venv bench bench-train bench-generate bench-data bench-formats bench-packing bench-devices bench-memory

setup: $(TORCH_STAMP) gloo-headers

$(TORCH_STAMP):
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q torch==$(TORCH_VERSION) \
		transformers==$(TRANSFORMERS_VERSION) peft==$(PEFT_VERSION) pyarrow==$(PYARROW_VERSION) \
		bitsandbytes==$(BITSANDBYTES_VERSION) tensorboard==$(TENSORBOARD_VERSION) $(CUDA_HEADERS)
	touch $@

setup-gguf: $(GGUF_STAMP)

$(GGUF_STAMP): $(TORCH_STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(VENV)/bin/pip install --disable-pip-version-check -q gguf==$(GGUF_VERSION) llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	touch $@

# Gloo's headers (Debian's libgloo-dev), which the torch wheel leaves out: training on several CPU
# processes needs them at build time.
gloo-headers:
	@test -f /usr/include/gloo/algorithm.h || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y -qq libgloo-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libgloo-dev; }; \
	  else \
	    echo "note: several CPU processes (train.devices > 1 on the CPU) need Gloo's headers: run 'sudo apt-get install libgloo-dev', then make build"; \
	  fi; }

build: setup
	cargo build --release

test: build setup-gguf
	cargo test --release

lint: setup
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

demo: build
	bash scripts/demo.sh

# make sweep CONFIG=configs/x.toml GRID='train.learning_rate=3e-3,9e-3 method.lora_r=8,16' [SEEDS='1 2 3'] [-j N]
CONFIG ?= configs/demo.toml
GRID ?=
SEEDS ?=
sweep: build
	$(BIN) sweep $(CONFIG) --grid '$(GRID)' --seeds '$(SEEDS)' --makefile > .sweep.mk
	$(MAKE) -f .sweep.mk

clean-venv:
	rm -rf $(VENV)

# Benchmarks (print numbers; not tests). See bench/*.sh for settings.
# make bench: fine-tuning speed side by side with litgpt (when its venv exists) and its growth with
# max_seq_length, then data preparation speed and its growth with the data set's size
# and its speed by file format (JSON, JSON Lines, CSV, Parquet; Alpaca and chat), then training
# tokens/s with and without packing.
bench: build
	bash bench/train.sh
	bash bench/data.sh
	bash bench/formats.sh
	bash bench/packing.sh

# bench-train also prices each memory strategy (BENCH_STRATEGIES= skips that part).
bench-train: build
	BENCH_STRATEGIES="$${BENCH_STRATEGIES-none checkpointing nf4 head-unchunked}" bash bench/train.sh

bench-generate: build
	bash bench/generate.sh

bench-data: build
	bash bench/data.sh

# Data-parallel training on the CPU: 1 process with all threads vs train.devices = 2 (bench/devices.sh).
bench-devices: build
	bash bench/devices.sh

bench-formats: build
	bash bench/formats.sh

bench-packing: build
	bash bench/packing.sh

# The memory plan against measured peak memory over a grid of methods, micro-batches, lengths and two models.
bench-memory: build
	bash bench/memory.sh
