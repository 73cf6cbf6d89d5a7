"""References for quantized GGUF exports (gguf_check.py): llama-quantize's K-quant mixes written again
from llama.cpp's src/llama-quant.cpp (llama_tensor_get_type, tensor_type_fallback; a dense model, no
imatrix), independently of lmtune's tools/cli/gguf_mix.cpp; the value checks of ggml's 32-blocks and
K-quants; MLX's own dequantization of a quantized folder.
"""
import json
import os
import re

import numpy as np

MIXES = {"q4_k_s": "Q4_K", "q4_k_m": "Q4_K", "q5_k_s": "Q5_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "bf16": 32, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16,
          "q5_k_m": 17, "q6_k": 18}
BLOCK = {"Q4_0": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "F16": 1}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
LEVELS = {"Q4_0": 15, "Q5_0": 31, "Q5_1": 31, "Q8_0": 254, "Q4_K": 15, "Q5_K": 31, "Q6_K": 63}


def more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def mix_type(mix, name, row, cfg, has_output):
    """The ggml type llama-quantize gives the 2-D tensor `name` (rows of `row`) of the model of config.json cfg."""
    n = cfg["num_hidden_layers"]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    layer, rest = (int(m[1]), m[2]) if m else (-1, "")
    t = MIXES[mix]
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        t = "Q8_0" if row % BLOCK[t] else "Q6_K"
    elif rest == "attn_v.weight":
        if mix in ("q4_k_m", "q5_k_m") and more_bits(layer, n):
            t = "Q6_K"
        elif mix == "q4_k_s" and layer < 4:
            t = "Q5_K"
        seventy = n == 80 and (cfg["model_type"] == "qwen2" or (
            cfg["model_type"] in ("llama", "mistral") and cfg["num_attention_heads"] != cfg["num_key_value_heads"]))
        if seventy and t == "Q4_K":
            t = "Q5_K"
    elif rest == "attn_qkv.weight":  # phi3's fused q/k/v: llama-quant.cpp's ATTENTION_QKV category
        t = {"q4_k_m": "Q5_K", "q5_k_m": "Q6_K"}.get(mix, t)
    elif rest == "ffn_down.weight":
        if mix in ("q4_k_m", "q5_k_m") and more_bits(layer, n):
            t = "Q6_K"
        elif mix == "q4_k_s" and layer < n // 8:
            t = "Q5_K"
    if row % BLOCK[t]:
        t = FALLBACK.get(t, t)
        if row % BLOCK[t]:
            t = "F16"
    return t


def check_values(check, path, name, tt, raw, got, x):
    """A quantized tensor's values: Q5_0 / Q5_1 byte-identical to gguf-py's quantizer (it has no
    K-quant quantizer); every type within one step of its super-block (256 values, or the row when
    shorter): (max - min) / levels, and RMS within 0.35 of that step."""
    import gguf
    from gguf.quants import quantize
    if tt in ("Q5_0", "Q5_1"):
        theirs = quantize(x.astype(np.float32), getattr(gguf.GGMLQuantizationType, tt))
        check(np.array_equal(raw.reshape(-1).view(np.uint8), theirs.reshape(-1).view(np.uint8)),
              f"{path}: {name} {tt} differs from gguf-py's quantizer")
    span = min(256, x.shape[-1])
    xb, gb = x.reshape(-1, span).astype(np.float64), got.reshape(-1, span).astype(np.float64)
    step = (xb.max(axis=1, keepdims=True) - xb.min(axis=1, keepdims=True)) / LEVELS[tt]
    err = np.abs(gb - xb)
    check(np.all(err <= step + 1e-12), f"{path}: {name} {tt}: an error of {(err / np.maximum(step, 1e-30)).max():.3f} "
          "steps of its super-block")
    rms = np.sqrt((err ** 2).mean() / max((step ** 2).mean(), 1e-30))
    check(rms <= 0.35, f"{path}: {name} {tt}: RMS error {rms:.3f} steps")


def mlx_dequantized(q, mode):
    """MLX's own mx.dequantize of each quantized layer of the folder q, as float32 numpy arrays (the
    dtype convert -d writes: the scales' for affine, bfloat16 for the fp modes, as mlx-lm)."""
    import mlx.core as mx
    cfg = json.load(open(os.path.join(q, "config.json")))["quantization"]
    w = {}
    for f in sorted(os.listdir(q)):
        if f.endswith(".safetensors"):
            w.update(mx.load(os.path.join(q, f)))
    out = {}
    for k in sorted(w):
        if k.endswith(".scales"):
            p = k[:-len(".scales")]
            dt = w[k].dtype if mode == "affine" else mx.bfloat16
            x = mx.dequantize(w[p + ".weight"], w[k], w.get(p + ".biases"), group_size=cfg["group_size"],
                              bits=cfg["bits"], mode=mode, dtype=dt)
            out[p + ".weight"] = np.array(x.astype(mx.float32))
    return out
