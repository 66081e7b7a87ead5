#!/usr/bin/env python3
"""Load an exported checkpoint the way users do, and print its logits for given token ids.

    check_export.py hf DIR IDS_JSON                 AutoModelForCausalLM.from_pretrained(DIR)
    check_export.py peft BASE_DIR DIR IDS_JSON      PeftModel.from_pretrained(base, DIR)

Prints one JSON object: {"logits": [[...], ...]} (fp32, the prompt's positions), and for peft also
{"merged": {name: max |merged - hf export|}} when an hf export is given as HF_DIR in the environment.
Used by the tests (tests/export.rs); run with the project's venv (`make setup` installs transformers and peft).
"""
import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def logits(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False).logits[0].float()
    return out.tolist()


def main():
    kind = sys.argv[1]
    if kind == "hf":
        model = AutoModelForCausalLM.from_pretrained(sys.argv[2], torch_dtype=torch.float32, attn_implementation="eager")
        print(json.dumps({"logits": logits(model.eval(), json.loads(sys.argv[3]))}))
        return
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(sys.argv[2], torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, sys.argv[3]).eval()
    result = {"logits": logits(model, json.loads(sys.argv[4]))}
    hf_dir = os.environ.get("HF_DIR")
    if hf_dir:
        merged = model.merge_and_unload().state_dict()
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).state_dict()
        result["merged"] = {k: (merged[k] - hf[k]).abs().max().item() for k in hf if k in merged}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
