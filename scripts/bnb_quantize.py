"""Quantize the tensor `w` of a safetensors file with bitsandbytes' NF4 (blocks of 64) on the CPU and
write its packed codes and absmax beside it, for ftexp's test of its own NF4 (tests/quant.rs).

usage: python scripts/bnb_quantize.py IN.safetensors OUT.safetensors
"""
import sys

import bitsandbytes.functional as F
from safetensors.torch import load_file, save_file

w = load_file(sys.argv[1])["w"]
codes, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4")
save_file({"codes": codes.flatten().contiguous(), "absmax": state.absmax.contiguous()}, sys.argv[2])
