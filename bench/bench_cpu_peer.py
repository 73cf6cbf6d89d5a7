#!/usr/bin/env python3
"""PyTorch CPU peer of bench/bench_cpu.cpp: the same ops, shapes, names and FLOP / byte counts,
f32, with torch.set_num_threads(--threads). Prints one JSON object per line:
{"name": ..., "seconds": median seconds per iteration, "flops": FLOP/s or 0, "bytes": B/s or 0}.
Timing as Google Benchmark does it there: after a warm-up, each of 3 repetitions runs the op
for at least --min-time seconds; the median repetition's mean time per iteration is reported."""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def time_op(fn, min_time, repetitions=3):
    fn()  # warm-up: first-call allocations and dispatch setup stay out of the numbers
    per_iter = []
    for _ in range(repetitions):
        iters, start = 0, time.perf_counter()
        while True:
            fn()
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        per_iter.append(elapsed / iters)
    return statistics.median(per_iter)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-time", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []

    def report(name, fn, flops=0.0, nbytes=0.0, grad=False):
        with torch.set_grad_enabled(grad):
            s = time_op(fn, args.min_time)
        r = {"name": name, "seconds": s, "flops": flops / s if flops else 0.0, "bytes": nbytes / s if nbytes else 0.0}
        results.append(r)
        print(json.dumps(r), flush=True)

    for m, k, n in [(512, 512, 512), (256, 1024, 2816)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        report(f"matmul/{m}x{k}x{n}", lambda a=a, b=b: torch.matmul(a, b), 2.0 * m * k * n,
               4.0 * (m * k + k * n + m * n))
    for m, k, n in [(256, 1024, 2816), (1, 4096, 4096)]:
        x, w = torch.randn(m, k), torch.randn(n, k) * 0.02
        report(f"linear/{m}x{k}x{n}", lambda x=x, w=w: F.linear(x, w), 2.0 * m * k * n,
               4.0 * (m * k + k * n + m * n))

    for t, h, hkv, d in [(256, 8, 2, 64), (512, 8, 2, 64), (512, 8, 4, 64)]:
        shape = f"T{t} H{h} KV{hkv} D{d}"
        # SDPA's layout is (B, H, T, D); ours is (B, T, H, D): the math is the same.
        q = torch.randn(1, h, t, d)
        k = torch.randn(1, hkv, t, d)
        v = torch.randn(1, hkv, t, d)
        dout = torch.randn(1, h, t, d)
        fwd_flops = 4.0 * 1 * h * t * t * d / 2

        def fwd(q=q, k=k, v=v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        def fwd_bwd(q=q, k=k, v=v, dout=dout):
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, enable_gqa=True)
            out.backward(dout)
            return qq.grad

        report(f"attention_fwd/{shape}", fwd, fwd_flops)
        report(f"attention_fwd_bwd/{shape}", fwd_bwd, 3.5 * fwd_flops, grad=True)

    for dim in (1024, 4096):
        x, w = torch.randn(512, dim), torch.randn(dim)
        report(f"rms_norm/512x{dim}", lambda x=x, w=w, dim=dim: F.rms_norm(x, (dim,), w, 1e-5), 0.0,
               4.0 * (2 * 512 * dim + dim + 512))
    assert all(math.isfinite(r["seconds"]) for r in results)


if __name__ == "__main__":
    main()
