#!/usr/bin/env python3
"""litgpt's trainable/total parameter counts for the hub-config fixtures, per fine-tuning method.

Builds each model with litgpt 0.5.9 on the meta device (no weights, no memory), applies litgpt's own
`mark_only_*_as_trainable` exactly as `litgpt finetune_*` does, and prints trainable and total counts.
Optionally (--hf) also builds the same model with transformers from the fixture config.json on the meta
device and prints its total, as a cross-check of the fixture against litgpt's dimensions.

litgpt is not a dependency of ftexp; run this from a separate environment, e.g.

    python3 -m venv /tmp/litgpt-venv && /tmp/litgpt-venv/bin/pip install litgpt==0.5.9
    /tmp/litgpt-venv/bin/python scripts/litgpt_counts.py [--hf] [MODEL...]

Settings (litgpt 0.5.9 defaults, the ones `litgpt finetune_<method>` uses unless overridden):
  lora:       lora_r=8, lora_alpha=16, lora_dropout=0.05 (finetune/lora.py setup() defaults) and its layer
              choice lora_query=True, lora_key=False, lora_value=True, lora_projection=False,
              lora_mlp=False, lora_head=False; mark_only_lora_as_trainable(model) with bias="none".
  adapter:    adapter_prompt_length=10, adapter_start_layer=2 (litgpt.adapter.Config defaults);
              mark_only_adapter_as_trainable (adapter_wte, gating_factor).
  adapter_v2: same adapter settings; mark_only_adapter_v2_as_trainable (adapter_wte, gating_factor,
              adapter_bias, adapter_scale, and any parameter whose name contains norm_1, norm_2 or ln_f).
  full:       every parameter.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

# fixture file -> litgpt config name. litgpt 0.5.9 has no Gemma-3-1b-pt entry; its Gemma-3-1b-it entry has
# the same architecture and dimensions (the -it and -pt checkpoints differ only in weights and eos ids).
MODELS = {
    "llama-2-7b-hf": "Llama-2-7b-hf",
    "qwen3-8b": "Qwen3-8B",
    "gemma-2-9b": "Gemma-2-9b",
    "gemma-3-1b-pt": "Gemma-3-1b-it",
    "phi-3-mini-4k-instruct": "Phi-3-mini-4k-instruct",
    "olmo-2-1124-7b": "OLMo-2-1124-7B",
}

LORA = dict(
    lora_r=8,
    lora_alpha=16,
    lora_dropout=0.05,
    lora_query=True,
    lora_key=False,
    lora_value=True,
    lora_projection=False,
    lora_mlp=False,
    lora_head=False,
)

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hub-configs"


def counts(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def litgpt_counts(name):
    import litgpt.adapter
    import litgpt.adapter_v2
    import litgpt.lora
    import litgpt.model

    out = {}
    with torch.device("meta"):
        cfg = litgpt.adapter.Config.from_name(name)
        out["adapter_settings"] = dict(
            adapter_prompt_length=cfg.adapter_prompt_length, adapter_start_layer=cfg.adapter_start_layer
        )

        m = litgpt.adapter.GPT(cfg)
        litgpt.adapter.mark_only_adapter_as_trainable(m)
        out["adapter"] = counts(m)

        m = litgpt.adapter_v2.GPT(litgpt.adapter_v2.Config.from_name(name))
        litgpt.adapter_v2.mark_only_adapter_v2_as_trainable(m)
        out["adapter_v2"] = counts(m)
        out["adapter_v2_trained_names"] = sorted(
            {n.split(".", 3)[-1] if n.startswith("transformer.h.") else n for n, p in m.named_parameters() if p.requires_grad}
        )

        m = litgpt.lora.GPT(litgpt.lora.Config.from_name(name, **LORA))
        litgpt.lora.mark_only_lora_as_trainable(m)
        out["lora"] = counts(m)

        m = litgpt.model.GPT(litgpt.model.Config.from_name(name))
        out["full"] = counts(m)
        out["param_names"] = sorted(
            {n.split(".", 3)[-1] if n.startswith("transformer.h.") else n: tuple(p.shape) for n, p in m.named_parameters()}.items()
        )
        c = m.config
        out["config"] = dict(
            n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_query_groups=c.n_query_groups,
            head_size=c.head_size, intermediate_size=c.intermediate_size, padded_vocab_size=c.padded_vocab_size,
            norm_qk=c.norm_qk, norm_qk_type=c.norm_qk_type, norm_1=c.norm_1, norm_2=c.norm_2,
            post_attention_norm=c.post_attention_norm, post_mlp_norm=c.post_mlp_norm,
            scale_embeddings=c.scale_embeddings, bias=c.bias, attn_bias=c.attn_bias,
        )
    return out


def hf_total(fixture):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = json.loads((FIXTURES / f"{fixture}.json").read_text())
    d.pop("auto_map", None)  # Phi-3's remote-code pointers: use the built-in phi3 classes
    d.pop("_name_or_path", None)
    model_type = d.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **d)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    names = {n for n, _ in m.named_parameters()}
    return sum(p.numel() for p in m.parameters()), bool(getattr(cfg, "tie_word_embeddings", False)), type(m).__name__, names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"fixture names (default: all of {', '.join(MODELS)})")
    ap.add_argument("--hf", action="store_true", help="also count the transformers model built from the fixture")
    ap.add_argument("--names", action="store_true", help="print litgpt parameter names and shapes per model")
    ap.add_argument("--json", action="store_true", help="print one JSON object per model instead of text")
    args = ap.parse_args()
    for fixture in args.models or MODELS:
        name = MODELS[fixture]
        r = litgpt_counts(name)
        row = {"fixture": f"{fixture}.json", "litgpt_config": name}
        for k in ("adapter", "adapter_v2", "lora", "full"):
            row[k] = {"trainable": r[k][0], "total": r[k][1]}
        row["adapter_settings"] = r["adapter_settings"]
        row["lora_settings"] = LORA
        row["litgpt_dims"] = r["config"]
        row["adapter_v2_trained"] = r["adapter_v2_trained_names"]
        if args.hf:
            total, tied, cls, _ = hf_total(fixture)
            row["transformers"] = {"class": cls, "total": total, "tie_word_embeddings": tied}
        if args.json:
            print(json.dumps(row))
            continue
        print(f"== {fixture}  (litgpt config {name!r})")
        print(f"   litgpt dims: {r['config']}")
        for k in ("adapter", "adapter_v2", "lora", "full"):
            t, n = r[k]
            print(f"   {k:10s} trainable={t:>15,d}  total={n:>15,d}")
        print(f"   adapter settings: {r['adapter_settings']}; lora settings: {LORA}")
        print(f"   adapter_v2 trains: {', '.join(r['adapter_v2_trained_names'])}")
        if args.hf:
            h = row["transformers"]
            print(f"   transformers {h['class']}: total={h['total']:,d} tie_word_embeddings={h['tie_word_embeddings']}"
                  f" (litgpt full - transformers = {r['full'][1] - h['total']:,d})")
        if args.names:
            for n, s in r["param_names"]:
                print(f"      {n} {list(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
