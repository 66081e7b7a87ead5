#!/usr/bin/env python3
"""Generate tiny random-weight parity fixtures for ftexp's Hugging Face loaders.

What it makes
-------------
Under ``tests/fixtures/models/`` one directory per architecture family:

    falcon-7b-style       Falcon, old decoder, multi-query attention, parallel attn
    falcon-40b-style      Falcon, new decoder architecture (ln_attn / ln_mlp), 2 KV heads
    llama                 Llama, GQA (4 q heads / 2 kv heads), untied, SHARDED safetensors
    llama3                Llama, tied embeddings, 1 kv head, "llama3" rope scaling
    qwen2                 Qwen2 (q/k/v bias), GQA, untied
    gpt-neox              GPT-NeoX, parallel residual, partial rotary 0.25
    gpt-neox-sequential   GPT-NeoX, sequential residual, partial rotary 0.5
    mistral               Mistral, GQA, sliding-window attention (window 8) on every layer
    qwen2-sliding         Qwen2, use_sliding_window (window 8) on the layers from
                          max_window_layers = 1 on (layer 0 attends to everything)
    qwen3                 Qwen3, per-head q_norm/k_norm, explicit head_dim 32 (!= hidden/heads
                          = 16), GQA, tied embeddings, no sliding window
    gemma2                Gemma2, (1 + w) RMSNorms incl. post-attention/post-feedforward,
                          embeddings scaled by sqrt(hidden), query_pre_attn_scalar 24 (!=
                          head_dim 16), attention softcap 50 and final logit softcap 30 (both
                          bind), window 8 on the alternating layers 0 and 2, tied
    gemma3                Gemma3 text (gemma3_text), layer_types [sliding, sliding, full],
                          window 8, per-head (1 + w) q_norm/k_norm, query_pre_attn_scalar 24,
                          rope per layer type: sliding theta 1e4 default, full theta 1e6
                          linear factor 8; no softcapping, tied
    phi3                  Phi3, fused qkv_proj (GQA 4/2) and gate_up_proj, partial rotary 0.5,
                          window 8 on every layer, longrope (original_max_position_embeddings
                          64 < NLL text: long factors; prompt + greedy run: short factors)
    olmo2                 OLMo2, no pre-norms: post-attention/post-feedforward RMSNorms on the
                          sublayer outputs, q_norm/k_norm over the whole projection, untied
    llama-yarn            Llama, "yarn" rope (factor 4, original_max_position_embeddings 64),
                          tied
    llama-dynamic         Llama, "dynamic" NTK rope (factor 2, max_position_embeddings 64 <
                          NLL text; prompt + greedy run stay inside 64), untied

Every directory holds exactly what a Hugging Face checkpoint holds
(``config.json``, ``*.safetensors`` [+ ``model.safetensors.index.json`` when
sharded], ``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``) plus a ``reference.json`` with outputs computed by
``transformers`` on CPU in fp32:

    transformers_version, torch_version, family
    prompt, prompt_ids           ids exactly as tokenizer.json encodes the prompt
                                 (the tokenizer adds no special tokens)
    logits                       [len(prompt_ids)][vocab] full-precision floats from a
                                 plain forward pass (eager attention, use_cache=False)
    nll_text, nll_ids, mean_nll  mean next-token cross entropy over nll_ids
    greedy_ids                   NEW ids from generate(do_sample=False, max_new_tokens=20)
    greedy_stopped_at_eos        whether generation ended on the EOS id
    greedy_min_top2_margin       smallest gap between the best and second-best logit
                                 over the greedy steps (small = fragile argmax)
    seed                         seed that produced the weights

The sliding-window fixtures add:

    sliding_window               the window
    mean_nll_full_attention      mean_nll of the same weights with the window off (it must
                                 differ: the window binds on the NLL text)
    sdpa_max_logit_diff          max |logit| difference of the sdpa attention path from eager
                                 (both honour the window)

and their prompt plus greedy continuation is longer than the window, so the
KV-cached greedy run goes past it. (gemma2: transformers has no sdpa path for it,
``sdpa_max_logit_diff`` is null and ``sdpa_skipped`` says why.)

The fixtures added later (qwen3, gemma2, gemma3, phi3, olmo2, llama-yarn,
llama-dynamic) also record

    hub_tensor_names             sorted [name, shape] pairs of every safetensors tensor
    config_variant_mean_nll      {variant: mean_nll} of the same weights under a changed
                                 config: the softcaps off, query_pre_attn_scalar = head_dim,
                                 the rope scaling off, ... (family_configs lists them)
    config_variant_max_logit_diff  {variant: max |logit change| over the NLL text}; each
                                 variant moves some logit by > 0.1, and those in a family's
                                 variant_nll_must_move the mean loss by > 1e-2

and family-specific entries:

    gemma2         attn_softcap_max_ratio, final_softcap_max_ratio: max |pre-cap value| / cap
                   over the NLL text (attention scores over unmasked positions, logits)
    gemma3         rope_parameters (as saved, nested per layer type), layer_types
    phi3           rope_original_max_position_embeddings, prompt_logits_max_diff_long_factors
                   (the prompt forward with long_factor substituted for short_factor: proves
                   the prompt uses the short ones), rope_attention_scaling (cos/sin factor)
    llama-yarn     rope_attention_scaling
    llama-dynamic  rope_reference_note, prompt_logits_max_diff_default_rope (0: below
                   max_position_embeddings the dynamic rope is the plain one),
                   rope_inv_freq_nll (the rescaled inverse frequencies of the NLL forward)

Seeds are searched deterministically per family (base seed + 1000*k, first
acceptable k) so that every greedy step has a top-2 logit gap of at least
MIN_TOP2_MARGIN, and so that the qwen2 fixture's greedy run stops on EOS. The
families added later also need at least MIN_DISTINCT_GREEDY distinct non-EOS ids
in their greedy run (no repeat loop, no very early EOS).

All models share one byte-level BPE tokenizer trained here on a small built-in
corpus; ``<|endoftext|>`` is id 0 and serves as BOS, EOS and pad.

The random weights are deliberately re-initialised at a large scale (unit-ish
activations, norm weights scattered around 1, non-zero biases, logits with a
standard deviation of several units) so that the output distribution is far
from uniform and loader/kernel bugs show up as large parity errors. Norms of the
(1 + w) kind (Gemma's, found by probing, not by name) get w scattered around 0.
Gemma's tied embeddings are stored at TIED_EMBED_STD / sqrt(hidden) and its final
norm's effective scale multiplied by sqrt(hidden), so that after the sqrt(hidden)
embedding normaliser it matches the other tied fixtures in and out (otherwise the
greedy run just repeats the last prompt token); gemma2's q_proj/k_proj get an extra
gain of 2.5 so that the attention softcap binds.

How to run
----------
Needs torch 2.11.0, transformers, tokenizers and safetensors in a venv outside
the repository, e.g.::

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install torch==2.11.0 transformers tokenizers safetensors
    /tmp/fixture-venv/bin/python scripts/make_fixtures.py

Without arguments it deletes and rewrites ``tests/fixtures/models/``;
``--only NAME [NAME ...]`` deletes and rewrites only those fixture directories
and leaves every other one alone. ``--out DIR`` writes under DIR instead (e.g. to
compare a full regeneration with the committed files). It is deterministic
(fixed seeds, single thread); re-running it with the same library versions gives
the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO_ROOT / "tests" / "fixtures" / "models"

SPECIAL = "<|endoftext|>"
SPECIAL_ID = 0
TARGET_VOCAB = 448
MAX_POS = 256
MAX_NEW_TOKENS = 20
MIN_TOP2_MARGIN = 0.2  # logit gap required at every greedy step
MAX_SEED_TRIES = 400
MIN_DISTINCT_GREEDY = 8  # families added later: distinct non-EOS ids the greedy run must hold
SLIDING_WINDOW = 8  # much shorter than the NLL text and the prompt plus its continuation
PHI3_ORIGINAL_MAX_POS = 64  # longrope: the NLL text is longer (long factors), the greedy run is not
DYNAMIC_MAX_POS = 64  # llama-dynamic: the NLL text is longer (NTK rescaling), the greedy run is not

# ---------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------

CORPUS = [
    """Instructions are short pieces of text that tell a model what to do. A good
instruction is clear and specific: it says what the answer should contain, how
long it should be, and what format to use. When you write an instruction, read
it again and ask whether a careful person could follow it without guessing. If
the task has several steps, number them. If there is an example, put it after
the instruction so the reader knows what the example is for.""",
    """The model reads the instruction, then the input, and then writes a
response. During fine-tuning we show it many pairs of prompts and responses and
we only count the loss on the response tokens. The learning rate starts small,
warms up over the first hundred steps, and then decays slowly. We save a
checkpoint every few hundred steps and evaluate the validation loss so that we
can stop early when the model begins to overfit the training data.""",
    """Arithmetic is a good way to test whether a model follows rules. Two plus
two is four. Three times seven is twenty-one. Twelve divided by four is three.
If you add ten and fifteen you get twenty-five, and if you subtract nine from
forty you get thirty-one. To multiply large numbers, write them one above the
other, multiply each digit, carry the tens, and add the rows at the end. Always
check the answer by doing the inverse operation: divide the product by one of
the numbers and you should get the other number back.""",
    """To bake a simple loaf of bread you need flour, water, salt and yeast. Mix
two cups of flour with a teaspoon of salt in a large bowl. Dissolve the yeast in
warm water with a pinch of sugar and wait ten minutes until it foams. Pour the
water into the flour and stir until a rough dough forms. Knead the dough on a
floured table for about ten minutes, until it is smooth and springs back when
you press it. Cover the bowl and let the dough rise in a warm place for one
hour, or until it has doubled in size.""",
    """For a quick tomato sauce, warm two spoons of olive oil in a pan, add a
chopped onion and cook it slowly until it is soft and sweet. Add the garlic,
cook for one more minute, then pour in the tomatoes with a little salt and
pepper. Let the sauce simmer for twenty minutes, stirring now and then. Taste it
before you serve it: a little sugar helps if the tomatoes are sour, and fresh
basil at the end makes the whole kitchen smell of summer.""",
    """Question: What is the capital of France? Answer: The capital of France is
Paris. Question: How many days are in a week? Answer: There are seven days in a
week. Question: What do you need to make a cup of tea? Answer: You need water,
a tea bag or tea leaves, and a cup. Boil the water, pour it over the tea, wait
three to five minutes, and then add milk or lemon if you like.""",
]

PROMPT = "The recipe needs two cups of flour and"

NLL_TEXT = (
    "Instructions for a simple cake: heat the oven, then mix three cups of flour "
    "with two eggs, a cup of sugar and a pinch of salt. Stir in warm milk until "
    "the batter is smooth. If the recipe says twelve slices and you need "
    "twenty-four, multiply every amount by two. Pour the batter into a pan and "
    "bake it for forty minutes. Check the cake with a knife: when it comes out "
    "clean, the cake is done."
)

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Offsets only; adds no special tokens, so encode(text) gives the same ids
    # with or without add_special_tokens.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB,
        min_frequency=2,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    assert tok.token_to_id(SPECIAL) == SPECIAL_ID, "special token must be id 0"
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    ids = tok.encode(text).ids
    # The post-processor must not add anything: same ids either way.
    assert ids == tok.encode(text, add_special_tokens=False).ids
    return ids


def write_tokenizer_files(tok: Tokenizer, out: Path, model_max_length: int = MAX_POS) -> None:
    tok.save(str(out / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL,
        "eos_token": SPECIAL,
        "pad_token": SPECIAL,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


# ---------------------------------------------------------------------------
# Model families
# ---------------------------------------------------------------------------

HIDDEN = 64
COMMON = dict(
    hidden_size=HIDDEN,
    max_position_embeddings=MAX_POS,
    bos_token_id=SPECIAL_ID,
    eos_token_id=SPECIAL_ID,
)


def rope_default(cfg) -> None:
    """Config variant: plain rope with the same theta (the scaling off)."""
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}


def family_configs(vocab: int) -> list[dict]:
    """name, config, seed, save kwargs."""
    fams = []

    fams.append(
        dict(
            name="falcon-7b-style",
            seed=1001,
            config=FalconConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                new_decoder_architecture=False,
                multi_query=True,
                parallel_attn=True,
                bias=False,
                alibi=False,
                layer_norm_epsilon=1e-5,
                tie_word_embeddings=True,
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="falcon-40b-style",
            seed=1002,
            config=FalconConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_kv_heads=2,
                new_decoder_architecture=True,
                parallel_attn=True,
                bias=False,
                alibi=False,
                layer_norm_epsilon=1e-5,
                tie_word_embeddings=True,
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="llama",
            seed=1003,
            config=LlamaConfig(
                vocab_size=vocab,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=160,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                **COMMON,
            ),
            save_kwargs=dict(max_shard_size="200KB"),
        )
    )
    fams.append(
        dict(
            name="llama3",
            seed=1004,
            config=LlamaConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=1,
                intermediate_size=192,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="qwen2",
            seed=1005,
            want_eos=True,  # one fixture whose greedy run ends on EOS
            config=Qwen2Config(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=160,
                hidden_act="silu",
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="gpt-neox",
            seed=1006,
            config=GPTNeoXConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=4 * HIDDEN,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
                use_parallel_residual=True,
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.25,
                },
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="gpt-neox-sequential",
            seed=1007,
            config=GPTNeoXConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=4 * HIDDEN,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
                use_parallel_residual=False,
                tie_word_embeddings=False,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,
                },
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="mistral",
            seed=1008,
            sliding=True,
            config=MistralConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=160,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                sliding_window=SLIDING_WINDOW,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="qwen2-sliding",
            seed=1009,
            sliding=True,
            config=Qwen2Config(
                vocab_size=vocab,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=160,
                hidden_act="silu",
                rms_norm_eps=1e-6,
                tie_word_embeddings=False,
                use_sliding_window=True,
                sliding_window=SLIDING_WINDOW,
                max_window_layers=1,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                **COMMON,
            ),
        )
    )

    # ---- families added later: these also record hub_tensor_names and config variants ----
    fams.append(
        dict(
            name="qwen3",
            seed=1010,
            new_style=True,
            config=Qwen3Config(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=32,  # != hidden / heads = 16
                intermediate_size=64,
                hidden_act="silu",
                rms_norm_eps=1e-6,
                attention_bias=False,
                tie_word_embeddings=True,
                use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="gemma2",
            seed=1011,
            new_style=True,
            sliding=True,
            sdpa_skip="transformers' Gemma2 has _supports_sdpa = False (sdpa has no attention softcapping)",
            softcap=True,
            window_off="widen",  # Gemma2Model always builds the sliding mask: needs a window
            qk_gain=2.5,  # attention scores x6.25, so that the attention softcap binds
            tied_embed_std=GEMMA_TIED_EMBED_STD,
            final_norm_gain=GEMMA_FINAL_NORM_GAIN,
            config=Gemma2Config(
                vocab_size=vocab,
                num_hidden_layers=3,  # layer_types default: [sliding, full, sliding]
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=128,
                hidden_activation="gelu_pytorch_tanh",
                rms_norm_eps=1e-6,
                query_pre_attn_scalar=24,  # != head_dim
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                sliding_window=SLIDING_WINDOW,
                tie_word_embeddings=True,
                pad_token_id=SPECIAL_ID,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                **COMMON,
            ),
            variants={
                "no_final_logit_softcapping": lambda c: setattr(c, "final_logit_softcapping", None),
                "no_attn_logit_softcapping": lambda c: setattr(c, "attn_logit_softcapping", None),
                "query_pre_attn_scalar_eq_head_dim": lambda c: setattr(c, "query_pre_attn_scalar", c.head_dim),
            },
            # The attention cap binds (attn_softcap_max_ratio > 1) and it and the scalar move
            # logits of the NLL text by ~1, but the mean loss by only ~1e-3, either way.
            variant_nll_must_move=("no_final_logit_softcapping",),
        )
    )
    fams.append(
        dict(
            name="gemma3",
            seed=1012,
            new_style=True,
            sliding=True,
            window_off="widen",  # keep layer_types: they choose the rope per layer
            tied_embed_std=GEMMA_TIED_EMBED_STD,
            final_norm_gain=GEMMA_FINAL_NORM_GAIN,
            config=Gemma3TextConfig(
                vocab_size=vocab,
                num_hidden_layers=3,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size=64,
                hidden_activation="gelu_pytorch_tanh",
                rms_norm_eps=1e-6,
                query_pre_attn_scalar=24,  # != head_dim
                sliding_window=SLIDING_WINDOW,
                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                sliding_window_pattern=3,  # agrees with layer_types
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                },
                attn_logit_softcapping=None,
                final_logit_softcapping=None,
                tie_word_embeddings=True,
                pad_token_id=SPECIAL_ID,
                **COMMON,
            ),
            variants={
                "query_pre_attn_scalar_eq_head_dim": lambda c: setattr(c, "query_pre_attn_scalar", c.head_dim),
                "full_attention_rope_unscaled": lambda c: c.rope_parameters.__setitem__(
                    "full_attention", {"rope_type": "default", "rope_theta": 1000000.0}
                ),
                "sliding_attention_rope_theta_1e6": lambda c: c.rope_parameters["sliding_attention"].__setitem__(
                    "rope_theta", 1000000.0
                ),
            },
        )
    )
    fams.append(
        dict(
            name="phi3",
            seed=1013,
            new_style=True,
            sliding=True,
            config=Phi3Config(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                sliding_window=SLIDING_WINDOW,
                # Phi3Config keeps this top-level field and copies it over the one in
                # rope_parameters, so both must say 64.
                original_max_position_embeddings=PHI3_ORIGINAL_MAX_POS,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "partial_rotary_factor": 0.5,  # rotary dims 8 of head_dim 16: 4 factors
                    "original_max_position_embeddings": PHI3_ORIGINAL_MAX_POS,
                    "short_factor": [1.0, 1.3, 1.7, 2.2],
                    "long_factor": [1.6, 2.4, 3.1, 3.9],
                },
                tie_word_embeddings=False,
                pad_token_id=SPECIAL_ID,
                **COMMON,
            ),
            variants={
                "long_factor_replaced_by_short_factor": lambda c: c.rope_parameters.__setitem__(
                    "long_factor", list(c.rope_parameters["short_factor"])
                ),
            },
            variant_nll_must_move=("long_factor_replaced_by_short_factor",),
        )
    )
    fams.append(
        dict(
            name="olmo2",
            seed=1014,
            new_style=True,
            config=Olmo2Config(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                tie_word_embeddings=False,
                pad_token_id=SPECIAL_ID,
                **COMMON,
            ),
        )
    )
    fams.append(
        dict(
            name="llama-yarn",
            seed=1015,
            new_style=True,
            config=LlamaConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                    "rope_theta": 10000.0,
                },
                **COMMON,
            ),
            variants={
                "rope_default": rope_default,
            },
            variant_nll_must_move=("rope_default",),
        )
    )
    fams.append(
        dict(
            name="llama-dynamic",
            seed=1016,
            new_style=True,
            stateful_rope=True,  # every reference forward from a freshly loaded model
            model_max_length=DYNAMIC_MAX_POS,
            config=LlamaConfig(
                vocab_size=vocab,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                hidden_act="silu",
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
                **{**COMMON, "max_position_embeddings": DYNAMIC_MAX_POS},
            ),
            variants={
                "rope_default": rope_default,
            },
            variant_nll_must_move=("rope_default",),
        )
    )
    return fams


# ---------------------------------------------------------------------------
# Weight scaling
# ---------------------------------------------------------------------------

LINEAR_GAIN = 1.6  # std of a Linear's output relative to its (unit) input
HEAD_GAIN = 4.5  # approx. logits std for an untied lm_head
TIED_EMBED_STD = 0.55  # tied: logits std ~ sqrt(hidden) * this
UNTIED_EMBED_STD = 1.0
NORM_WEIGHT_SPREAD = 0.25
# Gemma multiplies the embeddings by sqrt(hidden) = 8 on the way in. With the tied 0.55 the
# token's own embedding (rms 4.4) drowns the layers' outputs and the greedy run repeats its
# input token forever. So Gemma stores 0.55 / sqrt(hidden) (the same 0.55 rms on the way in
# as the other tied fixtures) and the final norm's effective scale gets sqrt(hidden) (the
# same logits std, ~4.5, out).
GEMMA_TIED_EMBED_STD = TIED_EMBED_STD / math.sqrt(HIDDEN)
GEMMA_FINAL_NORM_GAIN = math.sqrt(HIDDEN)
BIAS_STD = 0.3


@torch.no_grad()
def norm_is_offset(module: torch.nn.Module) -> bool:
    """Whether a norm scales by (1 + weight), as Gemma's RMSNorm does, rather than by weight.

    Probed, not guessed from the class name: with weight (and bias) zero, a plain norm
    outputs zeros and an offset one outputs the normalised input. Uses no random draws.
    """
    w = getattr(module, "weight", None)
    if w is None or w.dim() != 1:
        return False
    b = getattr(module, "bias", None)
    saved_w, saved_b = w.detach().clone(), None if b is None else b.detach().clone()
    try:
        w.zero_()
        if b is not None:
            b.zero_()
        x = torch.linspace(-1.0, 1.0, w.shape[0], dtype=w.dtype).reshape(1, -1)
        out = module(x)
        return bool(out.abs().max() > 0.1)
    except Exception:  # noqa: BLE001 -- a norm with another call signature is a plain one here
        return False
    finally:
        w.copy_(saved_w)
        if b is not None:
            b.copy_(saved_b)


@torch.no_grad()
def rescale_weights(
    model: torch.nn.Module,
    seed: int,
    qk_gain: float = 1.0,
    tied_embed_std: float = TIED_EMBED_STD,
    final_norm_gain: float = 1.0,
) -> None:
    """Replace the default (tiny, near-uniform-logits) init by a loud one.

    qk_gain multiplies the q_proj and k_proj weights after the draws (so the random stream
    is the same): attention scores grow by qk_gain**2. final_norm_gain multiplies the
    effective scale of the final norm (model.norm), i.e. the logits.
    """
    gen = torch.Generator().manual_seed(seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            std = tied_embed_std if tied else UNTIED_EMBED_STD
            module.weight.copy_(randn(module.weight.shape) * std)
        elif isinstance(module, torch.nn.Linear):
            if module is out_emb:
                if tied:
                    continue  # shares the embedding
                gain = HEAD_GAIN
            else:
                gain = LINEAR_GAIN
            fan_in = module.weight.shape[1]
            module.weight.copy_(randn(module.weight.shape) * (gain / math.sqrt(fan_in)))
            if module.bias is not None:
                module.bias.copy_(randn(module.bias.shape) * BIAS_STD)
            if qk_gain != 1.0 and name.rsplit(".", 1)[-1] in ("q_proj", "k_proj"):
                module.weight.mul_(qk_gain)
        elif "norm" in type(module).__name__.lower() or isinstance(module, torch.nn.LayerNorm):
            w = getattr(module, "weight", None)
            if w is not None:
                # Effective scale near 1 either way: Gemma's x * (1 + w) gets w around 0.
                centre = 0.0 if norm_is_offset(module) else 1.0
                w.copy_(centre + randn(w.shape) * NORM_WEIGHT_SPREAD)
            b = getattr(module, "bias", None)
            if b is not None:
                b.copy_(randn(b.shape) * BIAS_STD)

    if final_norm_gain != 1.0:
        final = dict(model.named_modules())["model.norm"]
        centre = 0.0 if norm_is_offset(final) else 1.0
        effective = (1.0 - centre) + final.weight
        final.weight.copy_(effective * final_norm_gain - (1.0 - centre))

    # Anything left untouched (other than non-persistent buffers) is a surprise.
    touched = set()
    for mname, module in model.named_modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.Linear)) or "norm" in type(module).__name__.lower():
            for pname, _ in module.named_parameters(recurse=False):
                touched.add(f"{mname}.{pname}" if mname else pname)
    untouched = [n for n, _ in model.named_parameters() if n not in touched]
    assert not untouched, f"parameters not re-initialised: {untouched}"
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters still at their default init: {unchanged}"


# ---------------------------------------------------------------------------
# Reference computation
# ---------------------------------------------------------------------------


@torch.no_grad()
def forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int]) -> tuple[list[int], bool, float]:
    x = torch.tensor([ids], dtype=torch.long)
    out = model.generate(
        input_ids=x,
        attention_mask=torch.ones_like(x),
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=SPECIAL_ID,
        pad_token_id=SPECIAL_ID,
        return_dict_in_generate=True,
        output_scores=True,
    )
    new = out.sequences[0, len(ids):].tolist()
    stopped = len(new) > 0 and new[-1] == SPECIAL_ID
    margins = []
    for step_scores in out.scores:
        top2 = torch.topk(step_scores[0].float(), 2).values
        margins.append(float(top2[0] - top2[1]))
    return new, stopped, min(margins) if margins else float("nan")


@torch.no_grad()
def greedy_no_cache(model, ids: list[int]) -> list[int]:
    """Independent greedy loop (full recompute each step) as a cross-check."""
    seq = list(ids)
    new = []
    for _ in range(MAX_NEW_TOKENS):
        nxt = int(forward_logits(model, seq)[-1].argmax())
        new.append(nxt)
        seq.append(nxt)
        if nxt == SPECIAL_ID:
            break
    return new


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tensor_listing(out: Path) -> dict[str, list[int]]:
    shapes = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                shapes[k] = list(st.get_slice(k).get_shape())
    return shapes


def build_model(cfg, seed: int, fam: dict | None = None):
    fam = fam or {}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    rescale_weights(
        model,
        seed,
        qk_gain=fam.get("qk_gain", 1.0),
        tied_embed_std=fam.get("tied_embed_std", TIED_EMBED_STD),
        final_norm_gain=fam.get("final_norm_gain", 1.0),
    )
    return model.eval()


@torch.no_grad()
def sliding_checks(
    name, out, reloaded, logits, prompt_ids, nll_ids, greedy_ids, mean_nll, sdpa_skip=None, window_off="none"
) -> dict:
    """A sliding-window fixture's extra reference entries, and proof that the window matters.

    sdpa_skip: reason why the family has no sdpa path (the sdpa check is then skipped).
    window_off: "none" turns the window off by sliding_window = None and every layer full
    attention; "widen" keeps layer_types (gemma3 picks the rope per layer type from them) and
    widens the window past MAX_POS instead.
    """
    cfg = reloaded.config
    window = cfg.sliding_window
    assert window == SLIDING_WINDOW, f"{name}: sliding_window {window}"
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:  # qwen2: some layers slide, some do not
        assert "sliding_attention" in layer_types and "full_attention" in layer_types, f"{name}: {layer_types}"
    assert len(prompt_ids) + len(greedy_ids) > window, f"{name}: the greedy run stays inside the window"
    assert len(nll_ids) > 4 * window

    # sdpa honours the window as eager does
    if sdpa_skip is None:
        sdpa = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32).eval()
        sdpa_diff = float((forward_logits(sdpa, prompt_ids) - logits).abs().max())
        assert sdpa_diff < 1e-4, f"{name}: sdpa differs from eager by {sdpa_diff}"
    else:
        sdpa_diff = None
        try:  # confirm that there really is no sdpa path
            AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32)
        except (ValueError, ImportError) as err:
            sdpa_skip = f"{sdpa_skip}; from_pretrained(attn_implementation='sdpa') raises: {err}".strip()
        else:
            raise AssertionError(f"{name}: sdpa loads after all, run the sdpa check")

    # the same weights without the window give another loss
    full_cfg = copy.deepcopy(cfg)
    if window_off == "widen":
        full_cfg.sliding_window = MAX_POS + 1
        assert len(nll_ids) < full_cfg.sliding_window
    else:
        assert window_off == "none", window_off
        full_cfg.sliding_window = None
        if hasattr(full_cfg, "use_sliding_window"):
            full_cfg.use_sliding_window = False
        if getattr(full_cfg, "layer_types", None) is not None:
            full_cfg.layer_types = ["full_attention"] * full_cfg.num_hidden_layers
    full = AutoModelForCausalLM.from_pretrained(out, config=full_cfg, attn_implementation="eager", dtype=torch.float32)
    full_logits = forward_logits(full.eval(), nll_ids)
    full_nll = float(F.cross_entropy(full_logits[:-1], torch.tensor(nll_ids[1:]), reduction="mean"))
    assert abs(full_nll - mean_nll) > 1e-2, f"{name}: the window does not change the loss ({full_nll} vs {mean_nll})"
    res = dict(sliding_window=window, mean_nll_full_attention=full_nll, sdpa_max_logit_diff=sdpa_diff)
    if sdpa_skip is not None:
        res["sdpa_skipped"] = sdpa_skip
    return res


def mean_nll_of(logits: torch.Tensor, ids: list[int]) -> float:
    return float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="mean"))


def load_fixture(out: Path, config=None):
    kwargs = {} if config is None else {"config": config}
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32, **kwargs)
    return model.eval()


def variant_config(out: Path, change):
    cfg = AutoConfig.from_pretrained(out)
    cfg = copy.deepcopy(cfg)
    change(cfg)
    return cfg


@torch.no_grad()
def variant_checks(name, out, variants: dict, nll_ids, nll_logits, mean_nll, nll_must_move=()) -> dict:
    """The same weights under each changed config: mean NLL and max |logit change| on the NLL text.

    Each variant must move some logit of the NLL text by > 0.1; those in nll_must_move must
    also move the mean loss by > 1e-2 (a mean over 178 tokens dilutes many real changes).
    """
    nlls, diffs = {}, {}
    for vname, change in variants.items():
        model = load_fixture(out, variant_config(out, change))  # fresh: no rope state carried over
        logits = forward_logits(model, nll_ids)
        nll = mean_nll_of(logits, nll_ids)
        diff = float((logits - nll_logits).abs().max())
        assert diff > 0.1, f"{name}: variant {vname} barely changes the logits ({diff})"
        if vname in nll_must_move:
            assert abs(nll - mean_nll) > 1e-2, f"{name}: variant {vname} does not change the loss ({nll} vs {mean_nll})"
        nlls[vname], diffs[vname] = nll, diff
    return dict(config_variant_mean_nll=nlls, config_variant_max_logit_diff=diffs)


@contextlib.contextmanager
def capture_pre_softcap_scores(model):
    """Record max |attention score| (scaled, before the softcap, unmasked positions only) per call.

    The attention modules look their eager function up as a module global at call time,
    so swapping that global is enough.
    """
    attn = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn"))
    mod = sys.modules[type(attn).__module__]
    orig = mod.eager_attention_forward
    maxima: list[float] = []

    def probe(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kwargs):
        k = mod.repeat_kv(key, module.num_key_value_groups)
        scores = torch.matmul(query, k.transpose(2, 3)) * scaling
        if attention_mask is not None:
            allowed = attention_mask[:, :, :, : k.shape[-2]] == 0
            scores = scores.masked_fill(~allowed, 0.0)
        maxima.append(float(scores.abs().max()))
        return orig(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap, **kwargs
        )

    mod.eager_attention_forward = probe
    try:
        yield maxima
    finally:
        mod.eager_attention_forward = orig


@torch.no_grad()
def softcap_checks(name, out, nll_ids, logits) -> dict:
    """How hard gemma2's attention and final logit softcaps bind on the NLL text."""
    model = load_fixture(out)
    cfg = model.config
    pre_logits = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: pre_logits.append(o.detach()))
    with capture_pre_softcap_scores(model) as maxima:
        forward_logits(model, nll_ids)
    hook.remove()
    assert len(maxima) == cfg.num_hidden_layers, maxima
    attn_ratio = max(maxima) / cfg.attn_logit_softcapping
    final_ratio = float(pre_logits[0].abs().max()) / cfg.final_logit_softcapping
    assert float(logits.abs().max()) < cfg.final_logit_softcapping
    assert attn_ratio > 0.5 and final_ratio > 0.5, f"{name}: softcaps barely bind ({attn_ratio}, {final_ratio})"
    return dict(
        attn_softcap_max_ratio=attn_ratio,
        attn_softcap_max_ratio_per_layer=[m / cfg.attn_logit_softcapping for m in maxima],
        final_softcap_max_ratio=final_ratio,
    )


@torch.no_grad()
def family_checks(fam, out, logits, prompt_ids, nll_ids, greedy_ids, mean_nll) -> dict:
    """Reference entries of the families added later: config variants and family specifics."""
    name = fam["name"]
    res: dict = {}
    saved = AutoConfig.from_pretrained(out)
    if fam.get("softcap"):
        res.update(softcap_checks(name, out, nll_ids, logits))
    if name == "gemma3":
        res["rope_parameters"] = saved.rope_parameters
        res["layer_types"] = saved.layer_types
    if name == "phi3":
        orig = saved.rope_parameters["original_max_position_embeddings"]
        assert orig == PHI3_ORIGINAL_MAX_POS == saved.original_max_position_embeddings, saved.rope_parameters
        assert len(nll_ids) > orig, f"{name}: the NLL text does not reach the long factors"
        assert len(prompt_ids) + MAX_NEW_TOKENS <= orig, f"{name}: the greedy run reaches the long factors"
        res["rope_original_max_position_embeddings"] = orig
        # the prompt's forward uses the short factors: substituting the long ones changes it
        swapped = load_fixture(
            out,
            variant_config(
                out, lambda c: c.rope_parameters.__setitem__("short_factor", list(c.rope_parameters["long_factor"]))
            ),
        )
        diff = float((forward_logits(swapped, prompt_ids) - logits).abs().max())
        assert diff > 1e-3, f"{name}: the prompt logits do not depend on the short factors ({diff})"
        res["prompt_logits_max_diff_long_factors"] = diff
    if name == "llama-dynamic":
        max_pos = saved.max_position_embeddings
        assert len(nll_ids) > max_pos, f"{name}: the NLL text does not trigger the NTK rescaling"
        assert len(prompt_ids) + MAX_NEW_TOKENS <= max_pos, f"{name}: the greedy run triggers the NTK rescaling"
        res["rope_reference_note"] = (
            "transformers' dynamic rope is stateful (it rescales inv_freq when it sees a sequence longer "
            "than max_position_embeddings and resets below it); every reference here (logits, mean_nll, "
            "greedy_ids, the uncached greedy cross-check, each config variant) comes from its own freshly "
            "loaded model. mean_nll: one forward over all nll_ids, so the NTK base is computed for "
            "seq_len = len(nll_ids)."
        )
        plain = load_fixture(out, variant_config(out, rope_default))
        diff = float((forward_logits(plain, prompt_ids) - logits).abs().max())
        assert diff < 1e-5, f"{name}: below max_position_embeddings dynamic differs from default rope by {diff}"
        res["prompt_logits_max_diff_default_rope"] = diff
        # the frequencies the NLL forward used (NTK base for seq_len = len(nll_ids))
        rescaled = load_fixture(out)
        rotary = rescaled.model.rotary_emb
        forward_logits(rescaled, nll_ids)
        assert not torch.equal(rotary.inv_freq, rotary.original_inv_freq)
        res["rope_inv_freq_nll"] = rotary.inv_freq.tolist()
    if name in ("phi3", "llama-yarn"):
        # cos and sin are multiplied by this (phi3: for the short factors as much as the long)
        res["rope_attention_scaling"] = float(load_fixture(out).model.rotary_emb.attention_scaling)
    nll_logits = forward_logits(load_fixture(out), nll_ids)
    assert mean_nll_of(nll_logits, nll_ids) == mean_nll
    res.update(
        variant_checks(
            name, out, fam.get("variants", {}), nll_ids, nll_logits, mean_nll, fam.get("variant_nll_must_move", ())
        )
    )
    return res


def make_family(fam: dict, tok: Tokenizer, prompt_ids, nll_ids, out_root: Path = OUT_ROOT) -> dict:
    name, cfg = fam["name"], fam["config"]
    out = out_root / name
    out.mkdir(parents=True)

    # Deterministic seed search: the first seed whose greedy continuation has
    # no near-tie (so a correct reimplementation reproduces it robustly) and,
    # where asked, that ends on EOS within MAX_NEW_TOKENS.
    for attempt in range(MAX_SEED_TRIES):
        seed = fam["seed"] + 1000 * attempt
        model = build_model(cfg, seed, fam)
        new, stopped, margin = greedy(model, prompt_ids)
        ok = margin >= MIN_TOP2_MARGIN
        if fam.get("want_eos"):
            ok = ok and stopped and len(new) >= 4
        if fam.get("new_style"):  # no degenerate repeat loop, no very early EOS
            ok = ok and len(set(new) - {SPECIAL_ID}) >= MIN_DISTINCT_GREEDY
        if ok:
            break
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_SEED_TRIES} tries")

    gc = model.generation_config
    gc.bos_token_id = SPECIAL_ID
    gc.eos_token_id = SPECIAL_ID
    gc.pad_token_id = SPECIAL_ID

    model.save_pretrained(out, safe_serialization=True, **fam.get("save_kwargs", {}))
    write_tokenizer_files(tok, out, fam.get("model_max_length", MAX_POS))
    if not (out / "generation_config.json").exists():
        gc.save_pretrained(out)

    # Reference outputs come from the model as reloaded from disk, which proves
    # the files alone reproduce it.
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()
    # A stateful rope (dynamic NTK) keeps what the last forward set up, so there every
    # reference comes from its own freshly loaded model.
    fresh = (lambda: load_fixture(out)) if fam.get("stateful_rope") else (lambda: reloaded)

    logits = forward_logits(fresh(), prompt_ids)
    mem_logits = forward_logits(model, prompt_ids)
    assert torch.equal(logits, mem_logits), f"{name}: reloaded model differs from in-memory model"

    nll_logits = forward_logits(fresh(), nll_ids)
    mean_nll = float(F.cross_entropy(nll_logits[:-1], torch.tensor(nll_ids[1:]), reduction="mean"))

    greedy_ids, stopped, margin = greedy(fresh(), prompt_ids)
    check = greedy_no_cache(fresh(), prompt_ids)
    assert check == greedy_ids, f"{name}: cached greedy {greedy_ids} != uncached {check}"

    ref = {
        "family": name,
        "seed": seed,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "prompt": PROMPT,
        "prompt_ids": prompt_ids,
        "logits": logits.tolist(),
        "nll_text": NLL_TEXT,
        "nll_ids": nll_ids,
        "mean_nll": mean_nll,
        "greedy_ids": greedy_ids,
        "greedy_stopped_at_eos": stopped,
        "greedy_min_top2_margin": margin,
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    if fam.get("sliding"):
        ref.update(
            sliding_checks(
                name,
                out,
                reloaded,
                logits,
                prompt_ids,
                nll_ids,
                greedy_ids,
                mean_nll,
                sdpa_skip=fam.get("sdpa_skip"),
                window_off=fam.get("window_off", "none"),
            )
        )
    if fam.get("new_style"):
        ref.update(family_checks(fam, out, logits, prompt_ids, nll_ids, greedy_ids, mean_nll))
        ref["hub_tensor_names"] = [[k, shape] for k, shape in sorted(tensor_listing(out).items())]
    (out / "reference.json").write_text(json.dumps(ref) + "\n")

    # Sanity checks on the directory contents.
    files = {p.name for p in out.iterdir()}
    for required in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "reference.json"):
        assert required in files, f"{name}: missing {required}"
    assert any(f.endswith(".safetensors") for f in files), f"{name}: no safetensors"
    assert not any(f.endswith(".bin") for f in files), f"{name}: found .bin"
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(PROMPT)["input_ids"] == prompt_ids, f"{name}: AutoTokenizer disagrees"
    if fam.get("new_style"):
        assert dir_size(out) < 800_000, f"{name}: {dir_size(out)} bytes"

    return dict(
        ref=ref if fam.get("new_style") else None,
        name=name,
        seed=seed,
        size=dir_size(out),
        params=sum(p.numel() for p in reloaded.parameters()),
        logits_std=float(logits.std()),
        logits_max_abs=float(logits.abs().max()),
        mean_nll=mean_nll,
        greedy=greedy_ids,
        stopped=stopped,
        margin=margin,
        files=sorted(files),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="(re)write only these fixture directories, deleting only them; leave every other one alone",
    )
    parser.add_argument("--out", type=Path, default=OUT_ROOT, help=f"fixture root (default {OUT_ROOT})")
    args = parser.parse_args(argv)
    out_root: Path = args.out

    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.set_seed(0)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    prompt_ids = encode(tok, PROMPT)
    nll_ids = encode(tok, NLL_TEXT)
    assert len(nll_ids) < MAX_POS
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"tokenizer: vocab {vocab}, prompt {len(prompt_ids)} tokens, nll text {len(nll_ids)} tokens")

    fams = family_configs(vocab)
    if args.only:
        known = [f["name"] for f in fams]
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            parser.error(f"unknown fixture(s) {unknown}; known: {known}")
        fams = [f for f in fams if f["name"] in args.only]
        out_root.mkdir(parents=True, exist_ok=True)
        for f in fams:
            if (out_root / f["name"]).exists():
                shutil.rmtree(out_root / f["name"])
    else:
        if out_root.exists():
            shutil.rmtree(out_root)
        out_root.mkdir(parents=True)

    rows = [make_family(f, tok, prompt_ids, nll_ids, out_root) for f in fams]

    print()
    print(f"{'family':22} {'seed':>5} {'bytes':>9} {'params':>8} {'logit std':>9} {'max|l|':>7} {'nll':>7} {'eos':>4} {'margin':>7}")
    for r in rows:
        print(
            f"{r['name']:22} {r['seed']:5d} {r['size']:9d} {r['params']:8d} {r['logits_std']:9.3f} "
            f"{r['logits_max_abs']:7.2f} {r['mean_nll']:7.3f} {str(r['stopped']):>4} {r['margin']:7.3f}"
        )
    for r in rows:
        print(f"  {r['name']}: greedy {r['greedy']}")
    print(f"total: {dir_size(out_root)} bytes")
    print()
    for r in rows:
        print(f"== {r['name']}: {', '.join(r['files'])}")
        if r["ref"] is not None:
            skip = {"family", "prompt", "prompt_ids", "logits", "nll_text", "nll_ids", "hub_tensor_names"}
            for k, v in r["ref"].items():
                if k not in skip:
                    print(f"   {k}: {json.dumps(v)}")
            print(f"   config.json keys: {sorted(json.loads((out_root / r['name'] / 'config.json').read_text()))}")
        for k, shape in tensor_listing(out_root / r["name"]).items():
            if ".layers.0." in k or ".h.0." in k or ".layers." not in k and ".h." not in k:
                print(f"   {k:60} {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
