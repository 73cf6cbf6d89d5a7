"""Loads adapters that lmtune wrote into the real mlx-lm and compares logits.

For each ADAPTER_DIR (adapter_config.json + adapters.safetensors in mlx-lm's layout, plus
lmtune_logits.safetensors with the batch and lmtune's logits and the HF model folder in its
metadata): mlx_lm.utils.load_model on the HF folder, mlx_lm.tuner.utils.load_adapters (which
rebuilds the LoRA/DoRA layers with linear_to_lora_layers and checks every name and shape), then
the logits of the same batch against lmtune's (max |a - r| / max |r| <= 1e-4, both f32 on CPU).
mlx-lm's gemma MLP applies the exact (erf) gelu where Gemma's checkpoints and transformers define the
tanh approximation (lmtune follows the checkpoint); that alone moves these logits by ~3.5e-4, so for
gemma the check swaps the tanh form into mlx-lm's MLP and compares the adapters themselves (names,
layout, scale) at the same bound; the unswapped error is printed beside it. Likewise mlx-lm's
gemma3_text multiplies the embeddings by sqrt(hidden_size) rounded to bfloat16 whatever the model's
dtype (transformers and lmtune round it to the model's dtype: exact in f32), ~2e-3 here; for
gemma3_text the check computes that constant in f32.
Usage: check_mlx_adapter.py ADAPTER_DIR...
"""
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import load_model
from safetensors import safe_open

mx.set_default_device(mx.cpu)


def gelu_tanh(x):
    return 0.5 * x * (1 + mx.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def use_tanh_gelu(model):
    """mlx-lm's gemma MLPs with the checkpoint's tanh gelu in place of nn.gelu."""
    import mlx_lm.models.gemma as gemma
    for layer in model.layers:
        mlp = layer.mlp
        if isinstance(mlp, gemma.MLP):
            mlp.__class__ = type("TanhMLP", (gemma.MLP,), {
                "__call__": lambda self, x: self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))})

worst = 0.0
def exact_gemma3_embed_scale():
    """mlx-lm's gemma3_text with its sqrt(hidden_size) in f32 rather than bfloat16."""
    import mlx_lm.models.gemma3_text as g3

    class F32Constants:
        def __getattr__(self, name):
            return getattr(mx, name)

        @staticmethod
        def array(v, dtype=None):
            return mx.array(v, mx.float32 if dtype == mx.bfloat16 else dtype) if dtype is not None else mx.array(v)

    g3.mx = F32Constants()


for d in sys.argv[1:]:
    with safe_open(str(Path(d) / "lmtune_logits.safetensors"), "np") as f:
        ids, ours, model_dir = f.get_tensor("ids"), f.get_tensor("logits"), f.metadata()["model_dir"]
    # mlx-lm reads rope_theta at the top level only; transformers 5 nests it in rope_parameters.
    cfg = json.load(open(Path(model_dir) / "config.json"))
    rp = cfg.get("rope_parameters") or {}
    over = {"rope_theta": rp["rope_theta"]} if "rope_theta" not in cfg and "rope_theta" in rp else {}
    # transformers 5 writes qwen3_moe's num_experts as num_local_experts; mlx-lm reads only the former.
    if cfg["model_type"] == "qwen3_moe" and "num_experts" not in cfg:
        over["num_experts"] = cfg["num_local_experts"]
    model, _ = load_model(Path(model_dir), model_config=over)
    model.set_dtype(mx.float32)
    load_adapters(model, d)
    theirs = np.array(model(mx.array(ids)).astype(mx.float32))
    err = float(np.abs(theirs - ours).max() / np.abs(theirs).max())
    if getattr(model, "model_type", "") == "gemma":
        print(f"{d}: mlx-lm's own gemma (erf gelu) vs lmtune rel err {err:.2e}")
        use_tanh_gelu(model)
        theirs = np.array(model(mx.array(ids)).astype(mx.float32))
        err = float(np.abs(theirs - ours).max() / np.abs(theirs).max())
    if getattr(model, "model_type", "") == "gemma3_text":
        print(f"{d}: mlx-lm's own gemma3_text (bf16 embedding scale) vs lmtune rel err {err:.2e}")
        import mlx_lm.models.gemma3_text as g3
        saved = g3.mx
        exact_gemma3_embed_scale()
        theirs = np.array(model(mx.array(ids)).astype(mx.float32))
        g3.mx = saved
        err = float(np.abs(theirs - ours).max() / np.abs(theirs).max())
    worst = max(worst, err)
    print(f"{d}: mlx-lm logits vs lmtune rel err {err:.2e}")
    if not err <= 1e-4:
        sys.exit(f"FAIL: {d}: rel err {err:.2e} > 1e-4")
print(f"all {len(sys.argv) - 1} adapters load in mlx-lm; worst logits rel err {worst:.2e}")
