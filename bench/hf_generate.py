#!/usr/bin/env python3
"""transformers' side of bench/generate.sh: greedy `generate` on a checkpoint, fp32, CPU.

    hf_generate.py --checkpoint DIR --prompt TEXT --new-tokens N --threads T [--expect-ids JSON]

Loads the model, tokenizes the prompt with the checkpoint's tokenizer.json exactly as ftexp does
(the `tokenizers` library, special tokens added by the tokenizer's post-processor), warms up with
one untimed generate, then prints one JSON line {"ready": ...} and serves: for every line "run"
read on stdin it does one timed generate and prints one JSON line; "quit" or EOF ends it.
This lets the caller alternate ftexp and transformers runs against one warm process.

Timing matches ftexp's: prefill = from the generate call to the first new token (seen by a
streamer), decode = from the first new token to the return of generate, over the tokens after
the first. `prefill_forward_s` is, for reference, one bare forward on the prompt with a cache.
If the warm-up stops at EOS before N tokens, min_new_tokens=N is set so that the lengths match.
"""
import argparse
import json
import os
import sys
import time
import warnings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--expect-ids", default=None, help="ftexp's generated ids (a JSON list), to compare")
    a = ap.parse_args()

    warnings.filterwarnings("ignore")
    import torch
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.checkpoint, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(f"{a.checkpoint}/tokenizer.json")
    prompt_ids = tok.encode(a.prompt, add_special_tokens=True).ids
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    mask = torch.ones_like(ids)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    n = a.new_tokens

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    extra = {}

    def run():
        clock = Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, do_sample=False, use_cache=True, max_new_tokens=n,
                                 streamer=clock, pad_token_id=pad, **extra)
        stop = time.perf_counter()
        new = out[0, ids.shape[1]:].tolist()
        # clock.times[0]: the prompt, pushed before the loop; [1]: the first new token.
        first = clock.times[1] if len(clock.times) > 1 else stop
        with torch.inference_mode():
            t = time.perf_counter()
            model(ids, attention_mask=mask, use_cache=True)
            forward_s = time.perf_counter() - t
        return {"ids": new, "prefill_s": first - start, "decode_s": stop - first, "prefill_forward_s": forward_s}

    warm = run()
    if len(warm["ids"]) < n:
        extra["min_new_tokens"] = n
        warm = run()

    info = {"ready": True, "pid": os.getpid(), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "prompt_tokens": len(prompt_ids), "new_tokens": len(warm["ids"]), "min_new_tokens_set": "min_new_tokens" in extra}
    if a.expect_ids is not None:
        want = json.loads(a.expect_ids)
        got = warm["ids"]
        diff = next((i for i, (x, y) in enumerate(zip(want, got)) if x != y), None)
        if diff is None and len(want) != len(got):
            diff = min(len(want), len(got))
        info["ids_match"] = diff is None
        info["first_difference_at"] = diff
    print(json.dumps(info), flush=True)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            continue
        r = run()
        k = len(r["ids"])
        print(json.dumps({"prompt_tokens": len(prompt_ids), "new_tokens": k, "prefill_s": r["prefill_s"],
                          "decode_s": r["decode_s"], "prefill_forward_s": r["prefill_forward_s"],
                          "prefill_tokens_per_s": len(prompt_ids) / max(r["prefill_s"], 1e-9),
                          "decode_tokens_per_s": (k - 1) / max(r["decode_s"], 1e-9)}), flush=True)


if __name__ == "__main__":
    main()
