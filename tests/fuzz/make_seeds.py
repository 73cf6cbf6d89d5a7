#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from hand-written
inputs and the repository's own test data. Plain Python, no third-party module; run it again after
changing it (the seeds are committed). Inputs of several parts are joined with NUL bytes
(tests/fuzz/fuzz_target.h's split)."""
import json
import struct
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent.parent
corpus = here / "corpus"


def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def parts(*xs):
    return b"\0".join(x.encode() if isinstance(x, str) else x for x in xs)


# ---- safetensors
def safetensors(tensors, metadata=None, pad=True):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
put("safetensors", "two_f32", safetensors({"a": ("F32", [2, 2], f32(1, 2, 3, 4)), "b": ("F32", [1], f32(5))}))
put("safetensors", "mixed_dtypes", safetensors({
    "w": ("BF16", [2, 3], b"\x80\x3f" * 6), "h": ("F16", [2], b"\x00\x3c" * 2), "i": ("I32", [3], b"\x01\0\0\0" * 3),
    "d": ("F64", [1], struct.pack("<d", 1.5)), "u": ("U8", [4], b"abcd"), "s": ("F32", [], f32(7)),
    "z": ("F32", [0, 4], b""), "l": ("I64", [1], b"\x02" + b"\0" * 7)}, {"format": "pt"}))
put("safetensors", "unpadded_mlx", safetensors({"x": ("BF16", [3], b"\x00\x40" * 3), "y": ("F32", [2], f32(1, 2))},
                                               {"format": "mlx"}, pad=False))
put("safetensors", "empty_header", safetensors({}))
put("safetensors", "quantized_layer", safetensors({
    "l.weight": ("U32", [2, 1], b"\x12\x34\x56\x78" * 2), "l.scales": ("F16", [2, 1], b"\x00\x3c" * 2),
    "l.biases": ("F16", [2, 1], b"\x00\x00" * 2)}))

# ---- safetensors_index (shards written by the target: a, b in 00001, c in 00002)
s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
put("safetensors_index", "valid", json.dumps({"metadata": {"total_size": 28}, "weight_map": {"a": s1, "b": s1, "c": s2}}))
put("safetensors_index", "partial", json.dumps({"weight_map": {"c": s2}}))
put("safetensors_index", "wrong_shard", json.dumps({"weight_map": {"a": s2}}))
put("safetensors_index", "missing_shard", json.dumps({"weight_map": {"a": "model-00003-of-00003.safetensors"}}))
put("safetensors_index", "metadata_types", json.dumps({"metadata": {"total_size": "28", "n": [1, 2], "x": None},
                                                       "weight_map": {"b": s1}}))

# ---- config
default_cfg = (root / "models/default/config.json").read_text()
put("config", "default_model", default_cfg)
llama = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
         "max_position_embeddings": 512, "rope_theta": 500000.0, "tie_word_embeddings": False}
put("config", "llama", json.dumps(llama))
put("config", "llama3_rope", json.dumps({**llama, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
put("config", "linear_rope", json.dumps({**llama, "rope_scaling": {"type": "linear", "factor": 2.0}}))
put("config", "yarn_rope_parameters", json.dumps({**llama, "rope_parameters": {"rope_type": "yarn", "factor": 4.0,
    "rope_theta": 10000.0, "original_max_position_embeddings": 4096}}))
put("config", "qwen2", json.dumps({**llama, "model_type": "qwen2", "sliding_window": 128, "use_sliding_window": False}))
put("config", "qwen3", json.dumps({**llama, "model_type": "qwen3", "head_dim": 32, "attention_bias": False}))
put("config", "mistral_window", json.dumps({**llama, "model_type": "mistral", "sliding_window": 64}))
put("config", "quantized", json.dumps({**llama, "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
    "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8}, "model.layers.1.self_attn.q_proj": False}}))
put("config", "mxfp4", json.dumps({**llama, "quantization_config": {"group_size": 32, "bits": 4, "mode": "mxfp4"}}))

# ---- tokenizer_load: tokenizer.json NUL tokenizer_config.json NUL text
bytes_vocab = {}
def byte_level_vocab():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {chr(c): i for i, c in enumerate(cs)}
vocab = byte_level_vocab()
for tok in ["Ġt", "he", "Ġthe", "in", "Ġa"]:
    vocab[tok] = len(vocab)
bpe = {"version": "1.0", "added_tokens": [
          {"id": len(vocab), "content": "<|endoftext|>", "special": True, "single_word": False, "lstrip": False,
           "rstrip": False, "normalized": False},
          {"id": len(vocab) + 1, "content": "<|im_start|>", "special": True, "single_word": False, "lstrip": False,
           "rstrip": False, "normalized": False}],
       "normalizer": {"type": "NFC"},
       "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
       "post_processor": {"type": "TemplateProcessing",
                          "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                     {"Sequence": {"id": "A", "type_id": 0}}],
                          "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                          "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [len(vocab)],
                                                               "tokens": ["<|endoftext|>"]}}},
       "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
       "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                 "vocab": vocab, "merges": ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]}}
tcfg = {"bos_token": None, "eos_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n{% endfor %}"}
put("tokenizer_load", "bpe_byte_level", parts(json.dumps(bpe), json.dumps(tcfg), "the cat in a hat <|im_start|> é 😀"))
unigram = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<unk>", "special": True, "single_word": False,
                                               "lstrip": False, "rstrip": False, "normalized": False}],
           "normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "},
                                                                 "content": "▁"}, {"type": "Prepend", "prepend": "▁"}]},
           "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
           "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                                                        {"type": "ByteFallback"}, {"type": "Fuse"},
                                                        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
           "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                     "vocab": [["<unk>", 0.0], ["▁", -2.0], ["▁the", -1.0], ["a", -3.0], ["t", -3.0], ["h", -3.0],
                               ["e", -3.0], ["<0x41>", -5.0], ["<0xC3>", -5.0], ["<0xA9>", -5.0]]}}
put("tokenizer_load", "unigram_metaspace", parts(json.dumps(unigram), json.dumps({"unk_token": "<unk>"}), "the hat é A"))
wordlevel = {"version": "1.0", "added_tokens": [], "normalizer": {"type": "Lowercase"},
             "pre_tokenizer": {"type": "Whitespace"}, "decoder": None,
             "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2}, "unk_token": "[UNK]"}}
put("tokenizer_load", "wordlevel", parts(json.dumps(wordlevel), "", "Hello  World again"))
put("tokenizer_load", "bpe_no_config", parts(json.dumps(bpe), "", "x"))

# ---- tokenizer_codec: flags byte, then text or ids
for i, text in enumerate(["Define: lantern", "<|user|>hi<|end|><|assistant|>", "é ü 中文 😀 \t\n  spaces",
                          "\xff\xfe invalid", ""]):
    put("tokenizer_codec", f"text_{i}", bytes([i & 3]) + text.encode("utf-8", "surrogateescape"))
put("tokenizer_codec", "ids", bytes([6]) + struct.pack("<8i", 1, 2, 300, 5, 1000, -1, 70000, 3))

# ---- jinja: template NUL context
conv = json.loads((root / "tests/jinja/conversations.json").read_text())
for tpl in sorted((root / "tests/jinja/templates").glob("*.jinja")):
    name = tpl.stem
    sp = conv["special_tokens"].get(name, conv["special_tokens"]["default"])
    convs = list(conv["conversations"].items())
    cname, msgs = convs[hash(name) % len(convs)] if False else convs[len(name) % len(convs)]
    ctx = {"messages": msgs, "tools": conv["tools"], "add_generation_prompt": True, **sp}
    put("jinja", name, parts(tpl.read_text(), json.dumps(ctx)))
put("jinja", "macro_loop_filters", parts(
    "{% macro f(n) %}{% if n > 0 %}{{ n }},{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}"
    "{% set ns = namespace(x=0) %}{% for i in range(5) if i is odd %}{% set ns.x = ns.x + i %}{% endfor %}"
    "{{ ns.x }}{{ 'a,b' | replace(',', ';') | upper }}{{ [3,1,2] | sort | join('-') }}"
    "{{ {'k': 1} | tojson }}{{ messages[0].content[:3] ~ '|' }}{{ raise_exception('x') if false }}",
    "not json"))

# ---- dataset: flags byte, then the jsonl
train = (root / "examples/data/train.jsonl").read_text().splitlines()
put("dataset", "completions", b"\x00" + "\n".join(train[:3]).encode() + b"\n")
put("dataset", "completions_masked", b"\x01" + "\n".join(train[3:5]).encode())
put("dataset", "chat", b"\x01" + (json.dumps({"messages": [{"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Define: lamp"}, {"role": "assistant", "content": "lamp (noun): a light."}]}) + "\n").encode())
put("dataset", "chat_tools", b"\x00" + (json.dumps({"messages": [{"role": "user", "content": "Weather?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
     "arguments": {"city": "Paris"}}}]}, {"role": "tool", "content": "sunny"}], "tools": conv["tools"][:1]}) + "\n").encode())
put("dataset", "text", b"\x00" + (json.dumps({"text": "A lantern is a light."}) + "\n\n" +
                                   json.dumps({"text": "Second line."}) + "\n").encode())
put("dataset", "renamed_keys", b"\x02" + (json.dumps({"input": "Define: x", "output": "x (noun)"}) + "\n" +
                                          json.dumps({"body": "text"}) + "\n").encode())

# ---- lora_yaml
put("lora_yaml", "example_config", (root / "examples/lora_config.yaml").read_bytes())
put("lora_yaml", "full", """model: models/default
train: true
data: examples/data
fine_tune_type: dora
optimizer: adamw
optimizer_config:
  adamw: {betas: [0.9, 0.98], weight_decay: 0.01}
mask_prompt: true
num_layers: -1
batch_size: 2
iters: 20
learning_rate: 1e-4
lora_parameters: &lp
  rank: 8
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, self_attn.v_proj]
lr_schedule:
  name: cosine_decay
  warmup: 5
  warmup_init: 1e-7
  arguments: [1e-4, 100, 1e-6]
grad_checkpoint: false
seed: 0
extra: *lp
prompt_feature: input
""")
put("lora_yaml", "aliases", "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b]\niters: 5\n")
put("lora_yaml", "types", "iters: '10'\nbatch_size: 1.5\nlearning_rate: [1]\nlora_parameters: 3\n")

# ---- hub_api: revision JSON NUL file answer NUL file bytes
sha = "0123456789abcdef0123456789abcdef01234567"
rev = {"sha": sha, "siblings": [{"rfilename": "config.json"}, {"rfilename": "README.md"}]}
put("hub_api", "redirect_to_cdn", parts(json.dumps(rev), '302\nX-Linked-Etag: "abc123"\nX-Linked-Size: 2\nLocation: /cdn/abc123',
                                         "{}"))
put("hub_api", "plain_200", parts(json.dumps(rev), '200\nETag: "def456"', "{}"))
put("hub_api", "traversal", parts(json.dumps({"sha": sha, "siblings": [{"rfilename": "../../config.json"},
    {"rfilename": "/etc/config.json"}, {"rfilename": "sub/model.safetensors"}]}), '200\nETag: "../x"', "x"))
put("hub_api", "size_mismatch", parts(json.dumps(rev), '302\nX-Linked-Etag: "e1"\nX-Linked-Size: 100\nLocation: http://cdn.example/e1', "short"))
put("hub_api", "not_found", parts(json.dumps(rev), "404\nX-Error-Code: EntryNotFound", ""))

# ---- gguf
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b
def gkv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload
def gguf(kvs, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    offset, data = 0, b""
    infos = b""
    for name, ttype, dims, raw in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *reversed(dims))
        infos += struct.pack("<IQ", ttype, offset)
        data += raw + b"\0" * (-len(raw) % align)
        offset = len(data)
    out += infos
    out += b"\0" * (-len(out) % align)
    return out + data
kvs = [gkv("general.architecture", 8, gstr("llama")), gkv("general.alignment", 4, struct.pack("<I", 32)),
       gkv("llama.block_count", 4, struct.pack("<I", 2)), gkv("llama.rope.freq_base", 6, struct.pack("<f", 1e4)),
       gkv("general.flag", 7, b"\x01"), gkv("x.i64", 11, struct.pack("<q", -5)), gkv("x.f64", 12, struct.pack("<d", 0.5)),
       gkv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + gstr("a") + gstr("b") + gstr("<s>")),
       gkv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, -1, -2))]
q8 = struct.pack("<e", 0.5) + bytes(range(32))
put("gguf", "llama_f32_q8", gguf(kvs, [("a.weight", 0, [2, 2], f32(1, 2, 3, 4)), ("b.weight", 8, [1, 32], q8)]))
put("gguf", "f16_bf16", gguf(kvs[:2], [("h", 1, [4], b"\x00\x3c" * 4), ("g", 30, [2], b"\x80\x3f" * 2)]))
put("gguf", "kquants", gguf(kvs[:1], [("k4", 12, [256], bytes(144)), ("k6", 14, [256], bytes(210)),
                                      ("q4", 2, [32], bytes(18)), ("q51", 7, [32], bytes(24))]))
put("gguf", "empty", gguf([], []))

# ---- quant: header bytes (mode, bits, group, out, batch, in, in-skew, skew, scale dtype, bias dtype), then data
import random
rng = random.Random(13)
for mode, bits, group in [(0, 4, 4), (0, 3, 3), (0, 8, 5), (1, 4, 3), (2, 4, 2), (3, 8, 3), (0, 6, 3), (0, 2, 6)]:
    for skew in (0, 1, 8):
        head = bytes([mode, bits, group, 1, 1, 2, 1, skew, 2 if mode == 0 else 3, 2])
        put("quant", f"mode{mode}_bits{bits}_g{group}_s{skew}", head + bytes(rng.randrange(256) for _ in range(240)))

# ---- server_request: endpoint byte (0 chat, 1 completions), then the body
chat = lambda **kw: b"\x00" + json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}], **kw}).encode()
put("server_request", "chat_min", chat())
put("server_request", "chat_sampling", chat(max_tokens=16, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=3,
                                            stop=["\n", "END"], logit_bias={"5": -100, "7": 2.5}, logprobs=True,
                                            top_logprobs=3, stream=True, stream_options={"include_usage": True}))
put("server_request", "chat_tools", chat(tools=conv["tools"], tool_choice={"type": "function", "function": {"name": "add"}}))
put("server_request", "chat_schema", chat(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "n": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["name"]}}}))
put("server_request", "chat_json_object", chat(response_format={"type": "json_object"},
    messages=[{"role": "system", "content": [{"type": "text", "text": "JSON"}]}, {"role": "user", "content": "x"}]))
put("server_request", "chat_template_kwargs", chat(chat_template_kwargs={"enable_thinking": False}, repetition_penalty=1.1))
put("server_request", "completions_text", b"\x01" + json.dumps({"prompt": "Once", "max_tokens": 8, "echo": False}).encode())
put("server_request", "completions_ids", b"\x01" + json.dumps({"prompt": [1, 2, 3], "stop": "x"}).encode())
put("server_request", "deep", b"\x00" + b"[" * 70 + b"]" * 70)
print("seeds written under", corpus)
