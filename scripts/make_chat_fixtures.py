"""Makes tests/fixtures/chat/: three chat-template families and what transformers renders for them.

For each family (llama3: Llama-3 instruct; qwen2: ChatML as Qwen2 ships it; mistral: Mistral
`[INST]`, v0.2) a directory with the fixture tokenizer (tests/fixtures/models/llama's, plus the
families' special tokens as special added tokens) and a tokenizer_config.json holding the family's
real `chat_template` with its BOS and EOS. `expected.json` holds, per family and conversation
(single- and multi-turn, with and without a system turn), the text and token ids transformers'
`apply_chat_template` gives, with and without the generation prompt. The llama3 directory also gets
a tiny random Llama model (its vocabulary includes the added tokens) for end-to-end runs.

`tests/fixtures/data/` gets the same small data sets as JSON and as Parquet (written by pyarrow,
snappy-compressed, as hub data sets are): 24 Alpaca records, and 12 conversations (Parquet: a
`messages` list of role/content structs; JSON Lines: ShareGPT-style `conversations` of from/value).

Run from the repository root with the project's venv: .venv/bin/python scripts/make_chat_fixtures.py
"""
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/chat"
SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|im_start|>", "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]"]

LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
QWEN2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
MISTRAL = "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"

FAMILIES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "qwen2": (QWEN2, None, "<|im_end|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
}

U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t: {"role": "assistant", "content": t}  # noqa: E731
S = lambda t: {"role": "system", "content": t}  # noqa: E731
CONVERSATIONS = [
    [U("Which aisle stocks basil?"), A("Spices, aisle 4.")],
    [U("Double 3 cups."), A("6 cups"), U("And 5 grams?"), A(" 10 grams ")],
    [S("You answer in one word."), U("Colour of basil?"), A("Green"), U("Of salt?"), A("White")],
    [S("Be brief."), U("Naïve café — 東京?"), A("déjà vu ✓")],
]


def main() -> None:
    tok = Tokenizer.from_file(str(ROOT / "tests/fixtures/models/llama/tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    expected = {}
    for family, (template, bos, eos) in FAMILIES.items():
        out = OUT / family
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
                  "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": template}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        hf = AutoTokenizer.from_pretrained(str(out))
        cases = []
        for messages in CONVERSATIONS:
            for gen in (False, True):
                convo = messages[:-1] if gen else messages
                text = hf.apply_chat_template(convo, tokenize=False, add_generation_prompt=gen)
                ids = hf.apply_chat_template(convo, tokenize=True, add_generation_prompt=gen, return_dict=True)["input_ids"]
                cases.append({"messages": convo, "add_generation_prompt": gen, "text": text, "ids": list(ids)})
        expected[family] = cases
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    make_model(OUT / "llama3", tok.get_vocab_size(with_added_tokens=True))


def make_model(out: Path, vocab: int) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out), safe_serialization=True)
    ids = Tokenizer.from_file(str(out / "tokenizer.json"))
    gen = {"bos_token_id": ids.token_to_id("<|begin_of_text|>"),
           "eos_token_id": [ids.token_to_id("<|eot_id|>"), ids.token_to_id("<|endoftext|>")]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def make_data(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    alpaca = [{"instruction": f"Double {i % 8}.", "input": "" if i % 3 else f"{i} cups", "output": f"{2 * (i % 8)} cups"}
              for i in range(24)]
    (out / "alpaca.json").write_text(json.dumps(alpaca, indent=1, ensure_ascii=False) + "\n")
    pq.write_table(pa.Table.from_pylist(alpaca), str(out / "alpaca.parquet"), compression="snappy")
    chats = []
    for i in range(12):
        turns = [U(f"Double {i}."), A(f"{2 * i} cups")]
        if i % 2:
            turns += [U("And half of it?"), A(f"{i} cups")]
        if i % 3 == 0:
            turns = [S("Answer with a quantity.")] + turns
        chats.append(turns)
    pq.write_table(pa.Table.from_pylist([{"messages": c} for c in chats]), str(out / "chat.parquet"),
                   compression="snappy")
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    with open(out / "chat.jsonl", "w") as f:
        for c in chats:
            row = {"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in c]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    shutil.rmtree(OUT, ignore_errors=True)
    main()
    make_data(ROOT / "tests/fixtures/data")
