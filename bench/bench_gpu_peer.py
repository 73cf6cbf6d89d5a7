#!/usr/bin/env python3
"""PyTorch peer of bench/bench_gpu.cpp: the same items, names, shapes and FLOP / byte counts in
bf16 on the GPU (torch.matmul / F.linear, F.scaled_dot_product_attention causal with GQA,
transformers' MistralForCausalLM with 1 and 2 layers and vocab 256, attn_implementation sdpa),
plus the two ceilings METHOD.md asks for: a device-to-device copy and an 8192^3 bf16 matmul.
Timed with CUDA events around N repetitions after warm-up, the median of several runs; the
inputs cycle through 3 distinct sets as bench_gpu's do.
Prints a line per item and, with --json PATH, writes one JSON object per line:
{"name", "ms", "tflops", "gbps", "error"}.
--smoke runs tiny shapes on the CPU (a check of the script itself, not a measurement)."""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SETS = 3


class Shapes:
    def __init__(self, smoke):
        # Mistral-7B; --smoke divides every size so the CPU gets through it in seconds.
        d = 16 if smoke else 1
        h = 4 if smoke else 1
        self.embd, self.ff = 4096 // d, 14336 // d
        self.head, self.kv_head, self.head_dim = 32 // h, 8 // h, 128 // h
        self.batch, self.tokens, self.vocab = 1, 2048 // d, 256
        self.copy_elems = (1 << 29) // (1024 if smoke else 1)  # bf16: 1 GiB
        self.peak_n = 8192 // (32 if smoke else 1)


def timer(device):
    """fn(i) is one repetition; returns (median, min, max) ms per repetition over `runs` runs."""

    def time_ms(fn, warmup, reps, runs):
        for i in range(warmup):
            fn(i % SETS)
        per_rep = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            for _ in range(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for i in range(reps):
                    fn(i % SETS)
                end.record()
                end.synchronize()
                per_rep.append(start.elapsed_time(end) / reps)
        else:
            for _ in range(runs):
                t0 = time.perf_counter()
                for i in range(reps):
                    fn(i % SETS)
                per_rep.append((time.perf_counter() - t0) * 1e3 / reps)
        return statistics.median(per_rep), min(per_rep), max(per_rep)

    return time_ms


class Report:
    def __init__(self):
        self.rows = []

    def add(self, name, what, flops, nbytes, measure):
        row = {"name": name, "what": what, "ms": 0.0, "min": 0.0, "max": 0.0, "flops": flops, "bytes": nbytes,
               "error": ""}
        try:
            row["ms"], row["min"], row["max"] = measure()
        except Exception as e:  # a failing item is reported, the rest still run
            row["error"] = f"{type(e).__name__}: {e}".replace("\n", " ")
        self.print(row)
        self.rows.append(row)

    def find(self, name):
        return next((r for r in self.rows if r["name"] == name and not r["error"]), None)

    @staticmethod
    def rate(amount, ms):
        return amount / (ms * 1e-3) if amount and ms > 0 else 0.0

    def print(self, r):
        if r["error"]:
            print(f"{r['name']:<22} {r['what']:<44} FAILED: {r['error']}", flush=True)
            return
        line = f"{r['name']:<22} {r['what']:<44} {r['ms']:9.3f} ms (min {r['min']:.3f}, max {r['max']:.3f})"
        if r["flops"]:
            line += f"  {self.rate(r['flops'], r['ms']) / 1e12:7.1f} TFLOP/s"
        if r["bytes"]:
            line += f"  {self.rate(r['bytes'], r['ms']) / 1e9:7.1f} GB/s"
        print(line, flush=True)

    def write_json(self, path):
        with open(path, "w") as f:
            for r in self.rows:
                f.write(json.dumps({"name": r["name"], "ms": r["ms"], "tflops": self.rate(r["flops"], r["ms"]) / 1e12,
                                    "gbps": self.rate(r["bytes"], r["ms"]) / 1e9, "error": r["error"]}) + "\n")


def random_sets(shape, std, dev):
    base = torch.randn(*shape, device=dev, dtype=torch.bfloat16) * std
    return [base] + [base * (1 - 0.125 * i) for i in range(1, SETS)]


def bench_ceilings(rep, S, dev, time_ms):
    src = torch.randn(S.copy_elems, device=dev, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    rep.add("copy_d2d", "copy of 1 GiB (read + write counted)", 0, 2.0 * src.numel() * 2,
            lambda: time_ms(lambda i: dst.copy_(src), 2, 10, 5))
    del src, dst
    n = S.peak_n
    a, b = random_sets((n, n), 1.0, dev), random_sets((n, n), 1.0, dev)
    rep.add("peak_matmul_8192", f"torch.matmul bf16 {n}^3 (random data)", 2.0 * n ** 3, 0,
            lambda: time_ms(lambda i: torch.matmul(a[i], b[i]), 3, 10, 5))


def bench_gemms(rep, S, dev, time_ms):
    T = S.batch * S.tokens
    for name, out, inp in [("q", S.head * S.head_dim, S.embd), ("kv", S.kv_head * S.head_dim, S.embd),
                           ("gate_up", S.ff, S.embd), ("down", S.embd, S.ff)]:
        x, w, dy = random_sets((T, inp), 1.0, dev), random_sets((out, inp), 0.02, dev), random_sets((T, out), 1.0, dev)
        flops, nbytes = 2.0 * T * inp * out, 2.0 * (T * inp + out * inp + T * out)
        rep.add(f"gemm_fwd_{name}", f"Y = X({T}x{inp}) @ W({out}x{inp})^T", flops, nbytes,
                lambda: time_ms(lambda i: F.linear(x[i], w[i]), 3, 20, 7))
        rep.add(f"gemm_dx_{name}", f"dX = dY({T}x{out}) @ W({out}x{inp})", flops, nbytes,
                lambda: time_ms(lambda i: torch.matmul(dy[i], w[i]), 3, 20, 7))
        rep.add(f"gemm_dw_{name}", f"dW = dY^T({out}x{T}) @ X({T}x{inp})", flops, nbytes,
                lambda: time_ms(lambda i: torch.matmul(dy[i].t(), x[i]), 3, 20, 7))


def attention_fwd_flops(S):
    return 4.0 * S.batch * S.head * S.tokens * S.tokens * S.head_dim / 2


def sdpa(q, k, v):
    # Stored as (B, T, H, D), as the projections make them and as lmtune keeps them; SDPA takes
    # (B, H, T, D) views. GQA through enable_gqa (no copy of k and v).
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                          enable_gqa=True).transpose(1, 2)


def bench_attention(rep, S, dev, time_ms):
    B, T, H, Hkv, D = S.batch, S.tokens, S.head, S.kv_head, S.head_dim
    q, k, v = random_sets((B, T, H, D), 1.0, dev), random_sets((B, T, Hkv, D), 1.0, dev), \
        random_sets((B, T, Hkv, D), 1.0, dev)
    dout = random_sets((B, T, H, D), 1.0, dev)
    fwd_bytes = 2.0 * (2 * q[0].numel() + 2 * k[0].numel()) + 4.0 * B * H * T
    bwd_bytes = fwd_bytes + 2.0 * (2 * q[0].numel() + 2 * k[0].numel())
    shape = f"causal B{B} T{T} H{H} KV{Hkv} D{D}"

    def fwd(i):
        with torch.no_grad():
            sdpa(q[i], k[i], v[i])

    leaves = [[t.detach().requires_grad_() for t in (q[i], k[i], v[i])] for i in range(SETS)]

    def fwd_bwd(i):
        qq, kk, vv = leaves[i]
        for t in leaves[i]:
            t.grad = None
        sdpa(qq, kk, vv).backward(dout[i])

    rep.add("attn_fwd", shape, attention_fwd_flops(S), fwd_bytes, lambda: time_ms(fwd, 3, 10, 7))
    rep.add("attn_fwd_bwd", shape + ", fwd + bwd", 3.5 * attention_fwd_flops(S), bwd_bytes,
            lambda: time_ms(fwd_bwd, 3, 10, 7))


def block_fwd_flops(S):
    params = S.embd * S.head * S.head_dim * 2 + S.embd * S.kv_head * S.head_dim * 2 + 3 * S.embd * S.ff
    return 2.0 * S.batch * S.tokens * params + attention_fwd_flops(S)


def bench_model(rep, S, dev, time_ms, n_layer):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=S.vocab, hidden_size=S.embd, intermediate_size=S.ff, num_hidden_layers=n_layer,
                        num_attention_heads=S.head, num_key_value_heads=S.kv_head, head_dim=S.head_dim,
                        rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768, sliding_window=None,
                        tie_word_embeddings=False, hidden_act="silu", initializer_range=0.02)
    with torch.device(dev):
        model = MistralForCausalLM._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.train()  # dropout is 0 in Mistral; train() only as a fine-tuning loop would run it
    g = torch.Generator(device="cpu").manual_seed(300)
    ids = [torch.randint(0, S.vocab, (S.batch, S.tokens), generator=g).to(dev) for _ in range(SETS)]
    targets = [torch.roll(t, -1, dims=1) for t in ids]
    V = S.vocab

    def loss(i):
        logits = model(input_ids=ids[i]).logits
        return F.cross_entropy(logits.reshape(-1, V).float(), targets[i].reshape(-1))

    def fwd(i):
        with torch.no_grad():
            loss(i)

    def fwd_bwd(i):
        model.zero_grad(set_to_none=True)
        loss(i).backward()

    flops = n_layer * block_fwd_flops(S) + 2.0 * S.batch * S.tokens * S.embd * S.vocab
    L = str(n_layer)
    rep.add(f"model{L}_fwd", f"{L}-layer model, vocab {V}: loss fwd", flops, 0, lambda: time_ms(fwd, 2, 5, 5))
    rep.add(f"model{L}_fwd_bwd", f"{L}-layer model, vocab {V}: loss fwd + bwd", 3 * flops, 0,
            lambda: time_ms(fwd_bwd, 2, 5, 5))
    del model


def derive_block(rep, S):
    for p in ("fwd", "fwd_bwd"):
        one, two = rep.find(f"model1_{p}"), rep.find(f"model2_{p}")
        if not one or not two:
            continue
        row = {"name": f"block_{p}", "what": f"one block (2-layer minus 1-layer), {p}", "ms": two["ms"] - one["ms"],
               "min": two["min"] - one["max"], "max": two["max"] - one["min"],
               "flops": (1 if p == "fwd" else 3) * block_fwd_flops(S), "bytes": 0, "error": ""}
        rep.print(row)
        rep.rows.append(row)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks this script only")
    args = ap.parse_args()
    if args.smoke:
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench_gpu_peer: no CUDA device", file=sys.stderr)
        return 1
    else:
        dev = torch.device("cuda")
    S = Shapes(args.smoke)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (smoke)"
    print(f"bench_gpu_peer: {name}, torch {torch.__version__}, bf16, Mistral-7B shapes (B {S.batch}, T {S.tokens})")
    time_ms = timer(dev)
    rep = Report()
    bench_ceilings(rep, S, dev, time_ms)
    bench_gemms(rep, S, dev, time_ms)
    bench_attention(rep, S, dev, time_ms)
    bench_model(rep, S, dev, time_ms, 1)
    bench_model(rep, S, dev, time_ms, 2)
    derive_block(rep, S)
    if args.json:
        rep.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
