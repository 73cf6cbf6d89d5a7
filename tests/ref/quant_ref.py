"""Quantization references from MLX itself (mlx[cpu]): mx.quantize and mx.dequantize of every mode x
bits x group size (affine: bits 2, 3, 4, 5, 6, 8 x groups 32, 64, 128; mxfp4 32/4, nvfp4 16/4,
mxfp8 32/8) on f32, bf16 and f16 weights, for test_quant.cpp to match bit for bit.

Usage: quant_ref.py OUT_DIR -> OUT_DIR/quant.safetensors and OUT_DIR/quant.json.
  w.<dtype>.<weight>                  the inputs: rand7 (7, 256), rand3 (3, 384), edge (odd, 384)
  <case>.<weight>.wq / .scales / .biases (affine only)   mx.quantize's outputs
  <case>.<weight>.deq.<out>           mx.dequantize(..., dtype=out) for out in f32, bf16, f16
  <case>.<weight>.deq                 mx.dequantize without dtype (its default)
quant.json lists the cases {name, mode, bits, group_size, dtype, default_deq} and the weights.

The edge weight holds the awkward rows: zeros, -0, constant rows (positive, negative, huge ones whose
scale collapses to 0), negative-only and positive-only rows, a lone spike, huge and tiny (f32
subnormal) magnitudes, mixed magnitudes within a group, small integers, and rows that put values
exactly halfway between E2M1 / E4M3 codes (with power-of-two and odd group scales).
"""
import json
import os
import sys

import mlx.core as mx
import numpy as np

DTYPES = {"f32": mx.float32, "bf16": mx.bfloat16, "f16": mx.float16}
F16_MAX = 65504.0
# Halfway points of E2M1 (x group scale 1 when the row's max |w| is 6) and of E4M3 (max 448).
E2M1_TIES = [6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, -0.1, -0.0, 0,
             0.1, 5.5, -5.5, 2.75, -6]
E4M3_TIES = [448, 0.5, 1.0625, -1.0625, 2.0625, 240, 232, 248, 440, -440, 0.005859375, 0.0029296875, 1e-5, -1e-5,
             0.0087890625, 416, 424, 432, -0.0]


def tile(values, cols):
    return np.resize(np.array(values, np.float32), cols)


def edge_rows(cols, dtype, rng):
    f32 = np.float32
    lin = np.linspace(-1, 1, cols).astype(f32)
    rows = [np.zeros(cols, f32), np.full(cols, -0.0, f32), np.full(cols, 0.37, f32), np.full(cols, -2.5, f32),
            -np.abs(rng.standard_normal(cols)).astype(f32), np.abs(rng.standard_normal(cols)).astype(f32)]
    spike = np.zeros(cols, f32)
    spike[5] = 1.0
    rows += [spike, -spike, (np.arange(cols) % 7 - 3).astype(f32) * f32(0.5)]
    mixed = rng.standard_normal(cols).astype(f32) * f32(1e-4)
    mixed[::16] = 1e4
    rows.append(mixed)
    for ties in (E2M1_TIES, E4M3_TIES):
        for mult in (1.0, 2.0 ** -10, 2.0 ** 7, 3.0, 1.37):
            rows.append(tile(ties, cols) * f32(mult))
    mags = {"f32": [3e38, 1e30, 1e-30, 1e-38, 1e-40, 1e-44], "bf16": [1e38, 1e30, 1e-30, 1e-38],
            "f16": [F16_MAX, 1e4, 6e-5, 6e-8]}[dtype]
    for mag in mags + [1e-3, 1e3]:
        rows += [lin * f32(mag), np.full(cols, mag, f32), -np.abs(lin) * f32(mag),
                 (np.linspace(-0.3, 1, cols) * mag).astype(f32)]
    w = np.stack(rows)
    if len(w) % 2 == 0:  # an odd row count
        w = np.concatenate([w, rng.standard_normal((1, cols)).astype(f32)])
    return w


def weights(dtype, rng):
    out = {}
    for name, shape in (("rand7", (7, 256)), ("rand3", (3, 384))):
        w = rng.standard_normal(shape).astype(np.float32)
        w *= (10.0 ** rng.uniform(-3, 2, (shape[0], 1))).astype(np.float32)  # a magnitude per row
        out[name] = w
    out["edge"] = edge_rows(384, dtype, rng)
    if dtype == "f16":
        out = {k: np.clip(v, -F16_MAX, F16_MAX) for k, v in out.items()}
    return {k: mx.array(v).astype(DTYPES[dtype]) for k, v in out.items()}


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    mx.set_default_device(mx.cpu)
    rng = np.random.default_rng(0)
    tensors, cases = {}, []
    combos = [("affine", b, g) for b in (2, 3, 4, 5, 6, 8) for g in (32, 64, 128)]
    combos += [("mxfp4", 4, 32), ("nvfp4", 4, 16), ("mxfp8", 8, 32)]
    for dt in DTYPES:
        ws = weights(dt, rng)
        for wname, w in ws.items():
            tensors[f"w.{dt}.{wname}"] = w
        for mode, bits, gs in combos:
            name = f"{mode}_b{bits}_g{gs}_{dt}"
            default_deq = None
            for wname, w in ws.items():
                res = mx.quantize(w, group_size=gs, bits=bits, mode=mode)
                key = f"{name}.{wname}"
                tensors[key + ".wq"], tensors[key + ".scales"] = res[0], res[1]
                biases = res[2] if mode == "affine" else None
                if biases is not None:
                    tensors[key + ".biases"] = biases
                for odt, mdt in DTYPES.items():
                    tensors[f"{key}.deq.{odt}"] = mx.dequantize(res[0], res[1], biases, group_size=gs, bits=bits,
                                                                mode=mode, dtype=mdt)
                deq = mx.dequantize(res[0], res[1], biases, group_size=gs, bits=bits, mode=mode)
                tensors[key + ".deq"] = deq
                default_deq = {mx.float32: "f32", mx.bfloat16: "bf16", mx.float16: "f16"}[deq.dtype]
            cases.append({"name": name, "mode": mode, "bits": bits, "group_size": gs, "dtype": dt,
                          "default_deq": default_deq})
    mx.eval(list(tensors.values()))
    mx.save_safetensors(os.path.join(out_dir, "quant.safetensors"), tensors)
    with open(os.path.join(out_dir, "quant.json"), "w") as f:
        json.dump({"mlx": mx.__version__, "weights": ["rand7", "rand3", "edge"], "cases": cases}, f, indent=1)
    print(f"{len(cases)} cases x 3 weights written to {out_dir} (mlx {mx.__version__})")


if __name__ == "__main__":
    main()
