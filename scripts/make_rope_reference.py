"""Makes tests/fixtures/rope/reference.json: rotary inverse frequencies as transformers computes them.

For each case (every rope kind ftexp implements: default, linear, dynamic, yarn, longrope with its
legacy "su" spelling, llama3; partial rotary; classic `rope_scaling` + `rope_theta` and v5
`rope_parameters` forms) a LlamaConfig or Phi3Config is made from the case's config.json values, as
`from_pretrained` would. At each of the case's sequence lengths two results are recorded:

- `inv_freq`, `attention_factor`: the model's rotary embedding module after a forward pass over
  positions 0..seq_len-1 (a fresh module each time), i.e. what a transformers model uses;
- `init_inv_freq`, `init_attention_factor`: `ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=seq_len)`
  called with a Python int (the model's own default function for "default").

They differ only for dynamic above max_position_embeddings, where the forward passes a tensor and
the NTK base is computed in fp32. Each entry also holds `config` (the config.json values given) and
`saved` (the rope-related keys of `config.to_dict()`, as `save_pretrained` would write them).

Run from the repository root with the project's venv: .venv/bin/python scripts/make_rope_reference.py
"""
import copy
import json
import logging
import warnings
from pathlib import Path

import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/rope/reference.json"
SAVED_KEYS = ["rope_parameters", "rope_scaling", "rope_theta", "head_dim", "num_attention_heads", "hidden_size",
              "max_position_embeddings", "partial_rotary_factor", "original_max_position_embeddings"]
CLASSES = {"llama": (LlamaConfig, LlamaRotaryEmbedding), "phi3": (Phi3Config, Phi3RotaryEmbedding)}


def factors(n, start, step, power):
    """A deterministic, uneven list of positive factors with more decimals than fp32 holds."""
    return [round(start + step * i ** power, 9) for i in range(n)]


def base(hidden, heads, max_pos, **extra):
    return {"hidden_size": hidden, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": max_pos, **extra}


PHI3_128K = {"type": "longrope", "short_factor": factors(16, 1.0, 0.013, 1.1),
             "long_factor": factors(16, 1.0, 0.91, 1.3)}

# (name, config class, config.json values, sequence lengths)
CASES = [
    ("default", "llama", base(256, 4, 2048, rope_theta=10000.0), [128]),
    ("default_theta_1e6", "llama", base(512, 4, 4096, rope_parameters={"rope_type": "default",
                                                                        "rope_theta": 1000000.0}), [64]),
    ("default_partial_phi3", "phi3", base(320, 4, 4096, rope_theta=10000.0, partial_rotary_factor=0.4), [64]),
    ("linear_classic", "llama", base(256, 4, 4096, rope_theta=500000.0,
                                     rope_scaling={"type": "linear", "factor": 4.0}), [64]),
    ("linear_v5_partial", "llama", base(256, 4, 4096, partial_rotary_factor=0.5,
                                        rope_parameters={"rope_type": "linear", "factor": 2.5,
                                                         "rope_theta": 10000.0}), [64]),
    ("dynamic", "llama", base(256, 4, 256, rope_theta=10000.0,
                              rope_scaling={"rope_type": "dynamic", "factor": 2.0}), [100, 256, 257, 1000]),
    ("dynamic_odd_factor_partial", "llama", base(320, 4, 512, partial_rotary_factor=0.8,
                                                 rope_parameters={"rope_type": "dynamic", "factor": 1.7,
                                                                  "rope_theta": 25000.0}), [300, 513, 3001]),
    ("yarn", "llama", base(256, 4, 8192, rope_theta=10000.0,
                           rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                         "original_max_position_embeddings": 2048}), [100]),
    ("yarn_attention_factor_betas", "llama", base(256, 4, 32768, rope_parameters={
        "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "attention_factor": 0.83,
        "beta_fast": 16, "beta_slow": 2, "rope_theta": 1000000.0}), [100]),
    ("yarn_mscale_no_truncate", "llama", base(512, 4, 163840, rope_parameters={
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 0.707,
        "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1, "truncate": False, "rope_theta": 10000.0}), [100]),
    ("yarn_mscale_equal", "llama", base(512, 4, 163840, rope_parameters={
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
        "mscale_all_dim": 1.0, "rope_theta": 10000.0}), [100]),
    ("yarn_no_original_max", "llama", base(256, 4, 4096, rope_theta=10000.0,
                                           rope_scaling={"type": "yarn", "factor": 2.0}), [100]),
    ("yarn_top_level_original_max", "llama", base(256, 4, 8192, rope_theta=10000.0,
                                                  original_max_position_embeddings=1024,
                                                  rope_scaling={"rope_type": "yarn", "factor": 8.0,
                                                                "original_max_position_embeddings": 2048}), [100]),
    ("yarn_partial", "llama", base(320, 4, 16384, partial_rotary_factor=0.4, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "rope_theta": 10000.0}), [64]),
    ("longrope_phi3_128k_classic", "phi3", base(128, 4, 131072, rope_theta=10000.0,
                                                original_max_position_embeddings=4096,
                                                rope_scaling=PHI3_128K), [100, 4096, 4097, 20000]),
    ("longrope_v5_factor_attention", "phi3", base(128, 4, 16384, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "factor": 4.0, "attention_factor": 1.2,
        "original_max_position_embeddings": 4096, "short_factor": PHI3_128K["short_factor"],
        "long_factor": PHI3_128K["long_factor"]}, original_max_position_embeddings=4096), [1000, 5000]),
    ("longrope_su_legacy", "phi3", base(128, 4, 131072, rope_theta=10000.0, original_max_position_embeddings=4096,
                                        rope_scaling={**PHI3_128K, "type": "su",
                                                      "original_max_position_embeddings": 4096}), [100, 8000]),
    ("longrope_partial", "phi3", base(256, 4, 65536, rope_theta=250000.0, partial_rotary_factor=0.5,
                                      original_max_position_embeddings=8192,
                                      rope_scaling={"type": "longrope", "short_factor": factors(16, 1.1, 0.02, 1.0),
                                                    "long_factor": factors(16, 1.5, 1.7, 1.2)}), [8192, 8193]),
    ("llama3_classic", "llama", base(512, 4, 131072, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}), [128]),
    ("llama3_v5_factor32", "llama", base(256, 4, 131072, rope_parameters={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_theta": 500000.0}), [128]),
    ("llama3_type_key_partial", "llama", base(256, 4, 65536, rope_theta=100000.0, partial_rotary_factor=0.75,
                                              rope_scaling={"type": "llama3", "factor": 4.0, "low_freq_factor": 2.0,
                                                            "high_freq_factor": 8.0,
                                                            "original_max_position_embeddings": 2048}), [128]),
]


def make(cls_name, values):
    return CLASSES[cls_name][0].from_dict(copy.deepcopy(values))


def saved(config):
    d = config.to_dict()
    return {k: d[k] for k in SAVED_KEYS if k in d}


def forward(cls_name, values, seq_len):
    config = make(cls_name, values)
    rotary = CLASSES[cls_name][1](config)
    positions = torch.arange(seq_len, dtype=torch.int64)[None]
    rotary(torch.zeros(1, dtype=torch.float32), positions)
    return rotary.inv_freq.tolist(), float(rotary.attention_scaling)


def init_fn(cls_name, values, seq_len):
    config = make(cls_name, values)
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        inv, factor = CLASSES[cls_name][1].compute_default_rope_parameters(config)
    else:
        inv, factor = ROPE_INIT_FUNCTIONS[rope_type](config, seq_len=seq_len)
    return inv.tolist(), float(factor), rope_type


def main():
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    entries = []
    for name, cls_name, values, seq_lens in CASES:
        for seq_len in seq_lens:
            inv, factor = forward(cls_name, values, seq_len)
            init_inv, init_factor, rope_type = init_fn(cls_name, values, seq_len)
            entries.append({"name": f"{name}@{seq_len}", "class": cls_name, "rope_type": rope_type,
                            "config": values, "saved": saved(make(cls_name, values)), "seq_len": seq_len,
                            "inv_freq": inv, "attention_factor": factor,
                            "init_inv_freq": init_inv, "init_attention_factor": init_factor})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"transformers": __import__("transformers").__version__,
                               "torch": torch.__version__, "cases": entries}, indent=1) + "\n")
    print(f"{OUT.relative_to(ROOT)}: {len(entries)} cases")


if __name__ == "__main__":
    main()
