"""Optimizer and lr-schedule references from MLX itself (mlx[cpu], mlx-lm): N update steps of
each optimizer (mlx.optimizers, mlx-lm's optimizer_config keyword arguments) on a small
parameter set with fixed gradients, and the values of mlx-lm's build_schedule at several steps.

Usage: make_optim_golden.py OUT_DIR -> OUT_DIR/optim.safetensors (init.<p>, grad.<k>.<p>,
<case>.<k>.<p> = the parameters after update k+1) and OUT_DIR/optim.json (the cases and the
schedule values).
"""
import json
import os
import sys

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx_lm.tuner.utils import build_schedule
from safetensors.numpy import save_file

STEPS = 6
# Muon orthogonalizes a tall (a), a wide (d) and a 3-D (c, viewed as (2, 12)) update; b is 1-D.
SHAPES = {"a": (6, 4), "b": (5,), "c": (2, 3, 4), "d": (3, 7)}
CASES = [
    ("adam_default", "adam", {}, 1e-2),
    ("adam_bias_correction", "adam", {"betas": [0.8, 0.95], "eps": 1e-6, "bias_correction": True}, 1e-2),
    ("adamw_default", "adamw", {}, 1e-2),
    ("adamw_wd", "adamw", {"weight_decay": 0.1, "betas": [0.85, 0.99]}, 3e-2),
    ("sgd_default", "sgd", {}, 1e-1),
    ("sgd_momentum", "sgd", {"momentum": 0.9, "weight_decay": 0.01, "dampening": 0.1}, 1e-1),
    ("sgd_nesterov", "sgd", {"momentum": 0.8, "nesterov": True}, 1e-1),
    ("adafactor_default", "adafactor", {}, 1e-5),
    ("adafactor_lr", "adafactor", {"relative_step": False, "beta_1": 0.9, "weight_decay": 0.01,
                                    "clip_threshold": 0.5}, 1e-2),
    ("adafactor_warmup_init", "adafactor", {"warmup_init": True, "scale_parameter": False}, 1e-5),
    ("adam_cosine_warmup", "adam", {}, {"name": "cosine_decay", "arguments": [1e-2, 4, 1e-3],
                                        "warmup": 2, "warmup_init": 1e-4}),
    ("muon_default", "muon", {}, 2e-2),
    ("muon_plain", "muon", {"momentum": 0.9, "weight_decay": 0.0, "nesterov": False, "ns_steps": 3}, 5e-2),
    ("muon_wd_linear", "muon", {"weight_decay": 0.1, "ns_steps": 7},
     {"name": "linear_schedule", "arguments": [3e-2, 1e-3, 5]}),
]
SCHEDULES = [
    {"name": "cosine_decay", "arguments": [1e-3, 20]},
    {"name": "cosine_decay", "arguments": [2e-4, 10, 1e-5], "warmup": 5, "warmup_init": 1e-6},
    {"name": "linear_schedule", "arguments": [1e-3, 1e-5, 12]},
    {"name": "linear_schedule", "arguments": [0.0, 1e-3, 7], "warmup": 3},
    {"name": "exponential_decay", "arguments": [1e-3, 0.9]},
    {"name": "exponential_decay", "arguments": [5e-4, 0.97], "warmup": 4, "warmup_init": 1e-5},
    {"name": "step_decay", "arguments": [1e-3, 0.5, 5]},
    {"name": "step_decay", "arguments": [1e-3, 0.7, 3], "warmup": 10},
]
SCHED_STEPS = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 19, 20, 21, 30, 100]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    init = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: (rng.standard_normal(s) * 0.5).astype(np.float32) for k, s in SHAPES.items()}
             for _ in range(STEPS)]
    tensors = {f"init.{k}": v for k, v in init.items()}
    for i, g in enumerate(grads):
        tensors.update({f"grad.{i}.{k}": v for k, v in g.items()})
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor,
           "muon": optim.Muon}
    for name, opt_name, cfg, lr in CASES:
        lr_arg = build_schedule(lr) if isinstance(lr, dict) else lr
        opt = cls[opt_name](learning_rate=lr_arg, **cfg)  # as mlx-lm's lora.py builds it
        params = {k: mx.array(v) for k, v in init.items()}
        for i in range(STEPS):
            params = opt.apply_gradients({k: mx.array(v) for k, v in grads[i].items()}, params)
            mx.eval(params)
            tensors.update({f"{name}.{i}.{k}": np.array(v) for k, v in params.items()})
    sched = []
    for s in SCHEDULES:
        fn = build_schedule(s)
        sched.append({"config": s, "steps": SCHED_STEPS,
                      "values": [float(np.array(fn(mx.array(st)))) for st in SCHED_STEPS]})
    save_file(tensors, os.path.join(out, "optim.safetensors"))
    with open(os.path.join(out, "optim.json"), "w") as f:
        json.dump({"steps": STEPS, "params": list(SHAPES),
                   "cases": [{"name": n, "optimizer": o, "config": c, "lr": l} for n, o, c, l in CASES],
                   "schedules": sched, "mlx": mx.__version__}, f, indent=1)
    print(f"wrote {out}/optim.safetensors and optim.json", file=sys.stderr)


if __name__ == "__main__":
    main()
