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
KV-cached greedy run goes past it.

Seeds are searched deterministically per family (base seed + 1000*k, first
acceptable k) so that every greedy step has a top-2 logit gap of at least
MIN_TOP2_MARGIN, and so that the qwen2 fixture's greedy run stops on EOS.

All models share one byte-level BPE tokenizer trained here on a small built-in
corpus; ``<|endoftext|>`` is id 0 and serves as BOS, EOS and pad.

The random weights are deliberately re-initialised at a large scale (unit-ish
activations, norm weights scattered around 1, non-zero biases, logits with a
standard deviation of several units) so that the output distribution is far
from uniform and loader/kernel bugs show up as large parity errors.

How to run
----------
Needs torch 2.11.0, transformers, tokenizers and safetensors in a venv outside
the repository, e.g.::

    python3 -m venv /tmp/fixture-venv
    /tmp/fixture-venv/bin/pip install torch==2.11.0 transformers tokenizers safetensors
    /tmp/fixture-venv/bin/python scripts/make_fixtures.py

It deletes and rewrites ``tests/fixtures/models/`` and is deterministic (fixed
seeds, single thread); re-running it with the same library versions gives the
same files.
"""

from __future__ import annotations

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
    AutoModelForCausalLM,
    AutoTokenizer,
    FalconConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
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
SLIDING_WINDOW = 8  # much shorter than the NLL text and the prompt plus its continuation

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


def write_tokenizer_files(tok: Tokenizer, out: Path) -> None:
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
        "model_max_length": MAX_POS,
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
    return fams


# ---------------------------------------------------------------------------
# Weight scaling
# ---------------------------------------------------------------------------

LINEAR_GAIN = 1.6  # std of a Linear's output relative to its (unit) input
HEAD_GAIN = 4.5  # approx. logits std for an untied lm_head
TIED_EMBED_STD = 0.55  # tied: logits std ~ sqrt(hidden) * this
UNTIED_EMBED_STD = 1.0
NORM_WEIGHT_SPREAD = 0.25
BIAS_STD = 0.3


@torch.no_grad()
def rescale_weights(model: torch.nn.Module, seed: int) -> None:
    """Replace the default (tiny, near-uniform-logits) init by a loud one."""
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    out_emb = model.get_output_embeddings()
    in_emb = model.get_input_embeddings()
    tied = out_emb is not None and out_emb.weight is in_emb.weight

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding):
            std = TIED_EMBED_STD if tied else UNTIED_EMBED_STD
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
        elif "norm" in type(module).__name__.lower() or isinstance(module, torch.nn.LayerNorm):
            w = getattr(module, "weight", None)
            if w is not None:
                w.copy_(1.0 + randn(w.shape) * NORM_WEIGHT_SPREAD)
            b = getattr(module, "bias", None)
            if b is not None:
                b.copy_(randn(b.shape) * BIAS_STD)

    # Anything left untouched (other than non-persistent buffers) is a surprise.
    touched = set()
    for mname, module in model.named_modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.Linear)) or "norm" in type(module).__name__.lower():
            for pname, _ in module.named_parameters(recurse=False):
                touched.add(f"{mname}.{pname}" if mname else pname)
    untouched = [n for n, _ in model.named_parameters() if n not in touched]
    assert not untouched, f"parameters not re-initialised: {untouched}"


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


def build_model(cfg, seed: int):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    rescale_weights(model, seed)
    return model.eval()


@torch.no_grad()
def sliding_checks(name, out, reloaded, logits, prompt_ids, nll_ids, greedy_ids, mean_nll) -> dict:
    """A sliding-window fixture's extra reference entries, and proof that the window matters."""
    cfg = reloaded.config
    window = cfg.sliding_window
    assert window == SLIDING_WINDOW, f"{name}: sliding_window {window}"
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:  # qwen2: some layers slide, some do not
        assert "sliding_attention" in layer_types and "full_attention" in layer_types, f"{name}: {layer_types}"
    assert len(prompt_ids) + len(greedy_ids) > window, f"{name}: the greedy run stays inside the window"
    assert len(nll_ids) > 4 * window

    # sdpa honours the window as eager does
    sdpa = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32).eval()
    sdpa_diff = float((forward_logits(sdpa, prompt_ids) - logits).abs().max())
    assert sdpa_diff < 1e-4, f"{name}: sdpa differs from eager by {sdpa_diff}"

    # the same weights without the window give another loss
    full_cfg = copy.deepcopy(cfg)
    full_cfg.sliding_window = None
    if hasattr(full_cfg, "use_sliding_window"):
        full_cfg.use_sliding_window = False
    if getattr(full_cfg, "layer_types", None) is not None:
        full_cfg.layer_types = ["full_attention"] * full_cfg.num_hidden_layers
    full = AutoModelForCausalLM.from_pretrained(out, config=full_cfg, attn_implementation="eager", dtype=torch.float32)
    full_logits = forward_logits(full.eval(), nll_ids)
    full_nll = float(F.cross_entropy(full_logits[:-1], torch.tensor(nll_ids[1:]), reduction="mean"))
    assert abs(full_nll - mean_nll) > 1e-2, f"{name}: the window does not change the loss ({full_nll} vs {mean_nll})"
    return dict(sliding_window=window, mean_nll_full_attention=full_nll, sdpa_max_logit_diff=sdpa_diff)


def make_family(fam: dict, tok: Tokenizer, prompt_ids, nll_ids) -> dict:
    name, cfg = fam["name"], fam["config"]
    out = OUT_ROOT / name
    out.mkdir(parents=True)

    # Deterministic seed search: the first seed whose greedy continuation has
    # no near-tie (so a correct reimplementation reproduces it robustly) and,
    # where asked, that ends on EOS within MAX_NEW_TOKENS.
    for attempt in range(MAX_SEED_TRIES):
        seed = fam["seed"] + 1000 * attempt
        model = build_model(cfg, seed)
        new, stopped, margin = greedy(model, prompt_ids)
        ok = margin >= MIN_TOP2_MARGIN
        if fam.get("want_eos"):
            ok = ok and stopped and len(new) >= 4
        if ok:
            break
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_SEED_TRIES} tries")

    gc = model.generation_config
    gc.bos_token_id = SPECIAL_ID
    gc.eos_token_id = SPECIAL_ID
    gc.pad_token_id = SPECIAL_ID

    model.save_pretrained(out, safe_serialization=True, **fam.get("save_kwargs", {}))
    write_tokenizer_files(tok, out)
    if not (out / "generation_config.json").exists():
        gc.save_pretrained(out)

    # Reference outputs come from the model as reloaded from disk, which proves
    # the files alone reproduce it.
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    reloaded.eval()

    logits = forward_logits(reloaded, prompt_ids)
    mem_logits = forward_logits(model, prompt_ids)
    assert torch.equal(logits, mem_logits), f"{name}: reloaded model differs from in-memory model"

    nll_logits = forward_logits(reloaded, nll_ids)
    mean_nll = float(F.cross_entropy(nll_logits[:-1], torch.tensor(nll_ids[1:]), reduction="mean"))

    greedy_ids, stopped, margin = greedy(reloaded, prompt_ids)
    check = greedy_no_cache(reloaded, prompt_ids)
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
        ref.update(sliding_checks(name, out, reloaded, logits, prompt_ids, nll_ids, greedy_ids, mean_nll))
    (out / "reference.json").write_text(json.dumps(ref) + "\n")

    # Sanity checks on the directory contents.
    files = {p.name for p in out.iterdir()}
    for required in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "reference.json"):
        assert required in files, f"{name}: missing {required}"
    assert any(f.endswith(".safetensors") for f in files), f"{name}: no safetensors"
    assert not any(f.endswith(".bin") for f in files), f"{name}: found .bin"
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok(PROMPT)["input_ids"] == prompt_ids, f"{name}: AutoTokenizer disagrees"

    return dict(
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


def main() -> int:
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.set_seed(0)

    if OUT_ROOT.exists():
        shutil.rmtree(OUT_ROOT)
    OUT_ROOT.mkdir(parents=True)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    prompt_ids = encode(tok, PROMPT)
    nll_ids = encode(tok, NLL_TEXT)
    assert len(nll_ids) < MAX_POS
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"tokenizer: vocab {vocab}, prompt {len(prompt_ids)} tokens, nll text {len(nll_ids)} tokens")

    rows = [make_family(f, tok, prompt_ids, nll_ids) for f in family_configs(vocab)]

    print()
    print(f"{'family':22} {'seed':>5} {'bytes':>9} {'params':>8} {'logit std':>9} {'max|l|':>7} {'nll':>7} {'eos':>4} {'margin':>7}")
    for r in rows:
        print(
            f"{r['name']:22} {r['seed']:5d} {r['size']:9d} {r['params']:8d} {r['logits_std']:9.3f} "
            f"{r['logits_max_abs']:7.2f} {r['mean_nll']:7.3f} {str(r['stopped']):>4} {r['margin']:7.3f}"
        )
    for r in rows:
        print(f"  {r['name']}: greedy {r['greedy']}")
    print(f"total: {dir_size(OUT_ROOT)} bytes")
    print()
    for r in rows:
        print(f"== {r['name']}: {', '.join(r['files'])}")
        for k, shape in tensor_listing(OUT_ROOT / r["name"]).items():
            if ".layers.0." in k or ".h.0." in k or ".layers." not in k and ".h." not in k:
                print(f"   {k:60} {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
