#!/usr/bin/env python3
"""Reads a GGUF file as llama.cpp's tools do and prints JSON (used by tests/gguf.rs).

    check_gguf.py FILE                      tensors (name, shape innermost first, type), metadata
                                            (arrays as their length, tokens and merges in full),
                                            the chat template and stop tokens
    check_gguf.py FILE --dequantize NAME    also the values of tensor NAME dequantized by gguf's
                                            quants module (flat, row-major)
    check_gguf.py FILE --generate IDS N     also the N greedy ids llama.cpp generates after the
                                            comma-separated prompt IDS, with the top-2 logit margin
                                            at each step
    check_gguf.py FILE --tokenize TEXT      also llama.cpp's ids for TEXT (no special tokens added)
    check_gguf.py --q8-0 VALUES.json        (no FILE) the q8_0 blocks gguf's reference quantizer
                                            makes of the float32 values in VALUES.json, as hex

Needs the `gguf` package, and `llama-cpp-python` for --generate and --tokenize (make setup-gguf).
"""
import argparse
import json
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize


def field_value(field):
    """A metadata field's value: scalars and strings as they are, arrays as lists."""
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    value = field.parts[field.data[0]].tolist()[0]
    return value


def read(path):
    reader = GGUFReader(path)
    metadata = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        metadata[name] = field_value(field)
    tensors = [
        {"name": t.name, "shape": [int(d) for d in t.shape], "type": t.tensor_type.name}
        for t in reader.tensors
    ]
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    stops = [metadata[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in metadata]
    return reader, {
        "version": int(reader.fields["GGUF.version"].parts[-1][0]),
        "tensors": tensors,
        "metadata": metadata,
        "chat_template": metadata.get("tokenizer.chat_template"),
        "stop_tokens": [{"id": i, "text": tokens[i] if i < len(tokens) else None} for i in stops],
    }


def dequantized(reader, name):
    for t in reader.tensors:
        if t.name == name:
            return dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1).tolist()
    sys.exit(f"{name}: no such tensor")


def generate(path, ids, n):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=len(ids) + n + 8, logits_all=False, verbose=False, n_threads=2, seed=0)
    llm.reset()
    out, margins = [], []
    tokens = list(ids)
    llm.eval(tokens)
    for _ in range(n):
        # with logits_all=False only the last position's logits are computed, and kept in the context
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).astype(np.float64)
        top = np.argsort(logits)[::-1][:2]
        margins.append(float(logits[top[0]] - logits[top[1]]))
        nxt = int(top[0])
        out.append(nxt)
        llm.eval([nxt])
    return out, margins


def tokenize(path, text):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=64, vocab_only=True, verbose=False)
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?")
    ap.add_argument("--q8-0", dest="q8_0")
    ap.add_argument("--dequantize")
    ap.add_argument("--generate", nargs=2, metavar=("IDS", "N"))
    ap.add_argument("--tokenize")
    a = ap.parse_args()
    if a.q8_0:
        from gguf import GGMLQuantizationType
        from gguf.quants import quantize

        values = np.array(json.load(open(a.q8_0)), dtype=np.float32).reshape(1, -1)
        json.dump({"q8_0": quantize(values, GGMLQuantizationType.Q8_0).tobytes().hex()}, sys.stdout)
        return
    reader, out = read(a.file)
    if a.dequantize:
        out["values"] = dequantized(reader, a.dequantize)
    if a.generate:
        ids = [int(x) for x in a.generate[0].split(",")]
        out["generated"], out["margins"] = generate(a.file, ids, int(a.generate[1]))
    if a.tokenize is not None:
        out["tokens_of_text"] = tokenize(a.file, a.tokenize)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
