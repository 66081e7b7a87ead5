#!/usr/bin/env python3
"""Reference for bench/data.sh: the steps of a data preparation, timed one by one in Python with the
`tokenizers` library (the Rust library ftexp links), on the same records and the same prompts.

    data_reference.py --label NAME --tokenizer DIR --data rows.json

Prints one line: seconds for reading + parsing the JSON, rendering the Alpaca prompts, tokenizing
(encode_batch, which runs on all cores) prompts and responses, and writing JSON Lines samples with
the same fields as ftexp's cache (Python's json, so only a rough guide to serialization cost).
"""
import argparse
import json
import os
import tempfile
import time

WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n"
              "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    a = ap.parse_args()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    t0 = time.perf_counter()
    with open(a.data) as f:
        records = json.load(f)
    t1 = time.perf_counter()
    prompts = [(WITH_INPUT if r.get("input", "").strip() else NO_INPUT)
               .format(instruction=r["instruction"], input=r.get("input", "")) for r in records]
    outputs = [r["output"] for r in records]
    t2 = time.perf_counter()
    p_enc = tok.encode_batch(prompts, add_special_tokens=True)
    o_enc = tok.encode_batch(outputs, add_special_tokens=False)
    t3 = time.perf_counter()
    with tempfile.TemporaryFile("w") as out:
        for r, p, o in zip(records, p_enc, o_enc):
            pi, oi = p.ids, o.ids + [0]
            ids = pi + oi
            out.write(json.dumps({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"],
                                  "input_ids": ids, "input_ids_no_response": pi,
                                  "labels": [-100] * len(pi) + oi}, separators=(",", ":")))
            out.write("\n")
    t4 = time.perf_counter()
    n = len(records)
    tok_s = t3 - t2
    print(f"  {a.label:<20} {n:>7} rows: parse {t1 - t0:.3f}s, render {t2 - t1:.3f}s, "
          f"tokenize {tok_s:.3f}s ({n / tok_s:,.0f} rows/s), write {t4 - t3:.3f}s; "
          f"total {t4 - t0:.3f}s ({n / (t4 - t0):,.0f} rows/s)")


if __name__ == "__main__":
    main()
