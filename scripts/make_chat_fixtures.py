"""Makes tests/fixtures/chat/: chat-template families and what transformers renders for them.

For each family (llama3: Llama-3 instruct; qwen2: ChatML as Qwen2 ships it; mistral: Mistral
`[INST]`, v0.2; qwen3: Qwen3 with its `<think>` block; gemma2 and gemma3: Gemma 2 and Gemma 3
instruct; phi3: Phi-3-mini-4k-instruct; olmo2: OLMo-2-1124-7B-Instruct) a directory with the fixture
tokenizer (tests/fixtures/models/llama's, plus SPECIAL as special added tokens, plus the family's own
added tokens after them) and a tokenizer_config.json holding the family's real `chat_template` with
its BOS and EOS. `expected.json` holds, per family and conversation (single- and multi-turn, with
and without a system turn), the text and token ids transformers' `apply_chat_template` gives, with
and without the generation prompt, or the error it raises (Gemma 2 refuses a system turn). The
llama3 directory also gets a tiny random Llama model (its vocabulary includes the added tokens) for
end-to-end runs.

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
from jinja2 import TemplateError
from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/chat"
SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|im_start|>", "<|im_end|>", "<s>", "</s>", "[INST]", "[/INST]"]

LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
QWEN2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
MISTRAL = "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"

# The templates below are verbatim (byte-exact) copies of what the models ship.
# Qwen3 (Qwen/Qwen3-0.6B and the other hybrid-thinking Qwen3 checkpoints, tokenizer_config.json
# `chat_template`, current revision): huggingface/trl trl/chat_templates/qwen3.jinja, which TRL matches
# against `tokenizer.chat_template` by equality. (llama.cpp's models/templates/Qwen-Qwen3-0.6B.jinja
# holds the earlier revision, which renders string contents the same.)
QWEN3 = "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' %}\n        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}\n        {%- set ns.multi_step_tool = false %}\n        {%- set ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message in messages %}\n    {%- if message.content is string %}\n        {%- set content = message.content %}\n    {%- else %}\n        {%- set content = '' %}\n    {%- endif %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}\n        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {%- set reasoning_content = '' %}\n        {%- if message.reasoning_content is string %}\n            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n            {%- if '</think>' in content %}\n                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n        {%- endif %}\n        {%- if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not loop.last and reasoning_content) %}\n                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            {%- else %}\n                {{- '<|im_start|>' + message.role + '\\n' + content }}\n            {%- endif %}\n        {%- else %}\n            {{- '<|im_start|>' + message.role + '\\n' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n            {%- for tool_call in message.tool_calls %}\n                {%- if (loop.first and content) or (not loop.first) %}\n                    {{- '\\n' }}\n                {%- endif %}\n                {%- if tool_call.function %}\n                    {%- set tool_call = tool_call.function %}\n                {%- endif %}\n                {{- '<tool_call>\\n{\"name\": \"' }}\n                {{- tool_call.name }}\n                {{- '\", \"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n                    {{- tool_call.arguments }}\n                {%- else %}\n                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
# Gemma 2 (google/gemma-2-2b-it; Gemma 1.1 ships the same): llama.cpp
# models/templates/google-gemma-2-2b-it.jinja, byte-identical to huggingface/trl
# trl/chat_templates/gemma.jinja. It refuses a system turn.
GEMMA2 = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
# Gemma 3 (google/gemma-3-1b-it, the text-only checkpoint; every google/gemma-3-*-it ships it):
# huggingface/trl trl/chat_templates/gemma3.jinja, equal to the `chat_template` the Hub reports for
# ggml-org/gemma-3-1b-it-GGUF. It folds a system turn into the first user turn.
GEMMA3 = "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
# Phi-3 (microsoft/Phi-3-mini-4k-instruct, tokenizer_config.json): huggingface/trl
# trl/chat_templates/phi3.jinja (Phi-3.5-mini-instruct's differs: it skips an empty system turn).
PHI3 = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
# OLMo 2 (allenai/OLMo-2-1124-7B-Instruct; the Tülu 3 template all OLMo-2-1124 post-trained models
# ship): tokenizer_config.json `chat_template` as mauer4/Attention-From-Scratch keeps it for
# OLMo-2-1124-13B-Instruct, the same text repositories quote for OLMo-2-1124-7B(-SFT).
OLMO2 = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}"

# name: (template, BOS, EOS, the family's own added tokens after SPECIAL as (text, special)).
# OLMo 2 adds none: its `<|user|>`, `<|assistant|>` and `<|system|>` are plain text, and its BOS
# and EOS are both `<|endoftext|>`. Qwen3's `<think>` and `</think>` are added tokens, not special.
FAMILIES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", []),
    "qwen2": (QWEN2, None, "<|im_end|>", []),
    "mistral": (MISTRAL, "<s>", "</s>", []),
    "qwen3": (QWEN3, None, "<|im_end|>", [("<think>", False), ("</think>", False)]),
    "gemma2": (GEMMA2, "<bos>", "<eos>", [(t, True) for t in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")]),
    "gemma3": (GEMMA3, "<bos>", "<eos>", [(t, True) for t in ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")]),
    "phi3": (PHI3, "<s>", "<|endoftext|>", [(t, True) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")]),
    "olmo2": (OLMO2, "<|endoftext|>", "<|endoftext|>", []),
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
    for family, (template, bos, eos, own) in FAMILIES.items():
        out = OUT / family
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
        if own:
            ftok = Tokenizer.from_file(str(out / "tokenizer.json"))
            for t, special in own:
                add = ftok.add_special_tokens if special else ftok.add_tokens
                add([AddedToken(t, special=special, normalized=False)])
            ftok.save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
                  "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 256, "chat_template": template}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        hf = AutoTokenizer.from_pretrained(str(out))
        cases = []
        for messages in CONVERSATIONS:
            for gen in (False, True):
                convo = messages[:-1] if gen else messages
                try:
                    text = hf.apply_chat_template(convo, tokenize=False, add_generation_prompt=gen)
                except TemplateError as e:  # the template's raise_exception: Gemma 2 and a system turn
                    cases.append({"messages": convo, "add_generation_prompt": gen, "error": str(e)})
                    continue
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
