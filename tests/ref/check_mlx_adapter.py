"""Loads adapters that lmtune wrote into the real mlx-lm and compares logits.

For each ADAPTER_DIR (adapter_config.json + adapters.safetensors in mlx-lm's layout, plus
lmtune_logits.safetensors with the batch and lmtune's logits and the HF model folder in its
metadata): mlx_lm.utils.load_model on the HF folder, mlx_lm.tuner.utils.load_adapters (which
rebuilds the LoRA/DoRA layers with linear_to_lora_layers and checks every name and shape), then
the logits of the same batch against lmtune's (max |a - r| / max |r| <= 1e-4, both f32 on CPU).
Usage: check_mlx_adapter.py ADAPTER_DIR...
"""
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import load_model
from safetensors import safe_open

mx.set_default_device(mx.cpu)
worst = 0.0
for d in sys.argv[1:]:
    with safe_open(str(Path(d) / "lmtune_logits.safetensors"), "np") as f:
        ids, ours, model_dir = f.get_tensor("ids"), f.get_tensor("logits"), f.metadata()["model_dir"]
    model, _ = load_model(Path(model_dir))
    model.set_dtype(mx.float32)
    load_adapters(model, d)
    theirs = np.array(model(mx.array(ids)).astype(mx.float32))
    err = float(np.abs(theirs - ours).max() / np.abs(theirs).max())
    worst = max(worst, err)
    print(f"{d}: mlx-lm logits vs lmtune rel err {err:.2e}")
    if not err <= 1e-4:
        sys.exit(f"FAIL: {d}: rel err {err:.2e} > 1e-4")
print(f"all {len(sys.argv) - 1} adapters load in mlx-lm; worst logits rel err {worst:.2e}")
