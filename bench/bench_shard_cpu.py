"""Full fine-tuning on 2 CPU processes, four ways in one command (issue 14): lmtune data parallel
(--grad-checkpoint), lmtune sharded (--shard, ZeRO-3 style), and the peers torchrun-style PyTorch +
transformers with DDP and with FSDP2 (fully_shard per block, then the model), gloo, gradient
checkpointing on every side. The same Llama-shaped f32 model with random weights (default hidden 1024,
8 blocks, 8 heads, n_ff 2816, vocabulary 2048: 102.8 M trained parameters), the blocks trained and the
embeddings, final norm and lm_head frozen, Adam lr 1e-5, a global batch of 4 rows of --seq tokens
(2 a process), 1 thread a process (the 2 processes fill the 2 cores). lmtune trains on text records
truncated to --seq tokens; the peers on random tokens of the same length (speed and memory do not
depend on the values). Memory of each process, sampled every 50 ms from /proc/PID/status: the peak
of RssAnon (anonymous memory: tensors, heap; not the mapped checkpoint or library code, which the
kernel can drop and reread, and which differ in size between an 8 MB binary and PyTorch's libraries)
and VmHWM (the peak of all resident memory); GiB = 2^30 bytes.
Tokens/s: the group's supervised tokens over the timed steps' wall time (after --warmup steps).
Rank 0 also writes the weights at the end (lmtune gathers a sharded run's weights into its host
memory for that), so rank 1's peak is the training's; both are shown.

Usage: bench/bench_shard_cpu.py [--build DIR] [--warmup W] [--steps S] [--seq L] [--hidden H]
         [--layers N] [--ff F] [--tools lmtune-dp,lmtune-shard,torch-ddp,torch-fsdp]
       bench/bench_shard_cpu.py peer --mode ddp|fsdp --model DIR ...   (one peer process; internal)
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(path, hidden, layers, ff):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=2048, max_position_embeddings=1024, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=0, pad_token_id=1)
    LlamaForCausalLM(cfg).float().save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "models", "default", f), path)
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    return sum(p.numel() for n, p in m.named_parameters() if ".layers." in n)


def make_data(path):
    """Text records of ~20 definitions each (several hundred tokens: every row is cut at --seq)."""
    os.makedirs(path)
    rows = [json.loads(x) for x in open(os.path.join(ROOT, "examples", "data", "train.jsonl"))]
    texts = [" ".join(r["prompt"] + " " + r["completion"] for r in rows[i:i + 20]) for i in range(0, len(rows), 20)]
    for name, part in (("train.jsonl", texts), ("valid.jsonl", texts[:4])):
        with open(os.path.join(path, name), "w") as f:
            for t in part:
                f.write(json.dumps({"text": t}) + "\n")


def status_kib(pid, keys):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":")[0]
                if k in keys:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def run_group(cmd_of_rank, env_extra, work, tag):
    """2 processes; returns [(exit, stdout, stderr, {"anon": peak RssAnon bytes, "hwm": VmHWM bytes})]."""
    port = str(free_port())
    procs = []
    for r in range(2):
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               **env_extra}
        procs.append(subprocess.Popen(cmd_of_rank(r), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    mem = [{"anon": 0, "hwm": 0} for _ in procs]
    outs = [None, None]

    def reader(i):
        outs[i] = procs[i].communicate(timeout=3600)
    import threading
    threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for i, p in enumerate(procs):
            s = status_kib(p.pid, ("RssAnon", "VmHWM"))
            mem[i]["anon"] = max(mem[i]["anon"], s.get("RssAnon", 0) * 1024)
            mem[i]["hwm"] = max(mem[i]["hwm"], s.get("VmHWM", 0) * 1024)
        time.sleep(0.05)
    for t in threads:
        t.join()
    return [(p.returncode, o, e, m) for p, (o, e), m in zip(procs, outs, mem)]


def lmtune_row(build, model, data, work, mode, warmup, steps, seq):
    iters = warmup + steps
    def cmd(r):
        return [os.path.join(build, "bin", "lmtune"), "lora", "--model", model, "--train", "--data", data,
                "--fine-tune-type", "full", "--num-layers", "-1", "--batch-size", "4", "--max-seq-length", str(seq),
                "--iters", str(iters), "--steps-per-report", "1", "--steps-per-eval", "100000", "--val-batches", "1",
                "--save-every", "100000", "--learning-rate", "1e-5",
                "--adapter-path", os.path.join(work, f"{mode}-{r}"), *(["--shard"] if mode == "shard" else
                                                                      ["--grad-checkpoint"])]
    res = run_group(cmd, {}, work, "lmtune-" + mode)
    for r, (rc, o, e, _) in enumerate(res):
        if rc != 0:
            sys.exit(f"lmtune {mode} rank {r}: exit {rc}\n{o[-2000:]}\n{e[-2000:]}")
    lines = re.findall(r"Iter (\d+): Train loss ([\d.]+).*?It/sec ([\d.]+), Tokens/sec ([\d.]+).*?Peak mem ([\d.]+) GB",
                       res[0][1])
    timed = [x for x in lines if int(x[0]) > warmup]
    secs = sum(1 / float(x[2]) for x in timed)
    toks = sum(float(x[3]) / float(x[2]) for x in timed)
    return {"tok_s": toks / secs, "rss": [x[3] for x in res], "alloc_gb": float(lines[-1][4]),
            "loss": float(lines[-1][1])}


def torch_row(model, work, mode, warmup, steps, seq):
    def cmd(r):
        return [sys.executable, os.path.abspath(__file__), "peer", "--mode", mode, "--model", model, "--warmup",
                str(warmup), "--steps", str(steps), "--seq", str(seq)]
    res = run_group(cmd, {}, work, "torch-" + mode)
    for r, (rc, o, e, _) in enumerate(res):
        if rc != 0:
            sys.exit(f"torch {mode} rank {r}: exit {rc}\n{o[-2000:]}\n{e[-3000:]}")
    j = json.loads(res[0][1].strip().splitlines()[-1])
    return {"tok_s": j["tok_s"], "rss": [x[3] for x in res], "alloc_gb": None, "loss": j["loss"]}


def peer(a):
    import torch
    import torch.distributed as dist
    from transformers import LlamaForCausalLM
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    m = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    m.config.use_cache = False
    for mod in (m.model.embed_tokens, m.model.norm, m.lm_head):
        mod.requires_grad_(False)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.train()
    if a.mode == "ddp":
        m = torch.nn.parallel.DistributedDataParallel(m)
    else:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in m.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(rank)
    t0 = None
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            dist.barrier()
            t0 = time.perf_counter()
        x = torch.randint(0, 2048, (2, a.seq), generator=g)
        loss = m(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"tok_s": 2 * 2 * (a.seq - 1) * a.steps / dt, "loss": loss.item()}), flush=True)
    dist.destroy_process_group()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        ap = argparse.ArgumentParser()
        ap.add_argument("peer")
        ap.add_argument("--mode", choices=["ddp", "fsdp"], required=True)
        ap.add_argument("--model", required=True)
        ap.add_argument("--warmup", type=int, default=2)
        ap.add_argument("--steps", type=int, default=5)
        ap.add_argument("--seq", type=int, default=128)
        return peer(ap.parse_args())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ff", type=int, default=2816)
    ap.add_argument("--tools", default="lmtune-dp,lmtune-shard,torch-ddp,torch-fsdp")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-shard-")
    try:
        model, data = os.path.join(work, "model"), os.path.join(work, "data")
        n = make_model(model, a.hidden, a.layers, a.ff)
        make_data(data)
        print(f"model: Llama-shaped f32, hidden {a.hidden}, {a.layers} blocks, n_ff {a.ff}, vocabulary 2048: "
              f"{n / 1e6:.1f} M trained parameters; 2 processes x 1 thread, global batch 4 x {a.seq} tokens, "
              f"{a.warmup} warm-up + {a.steps} timed steps", flush=True)
        rows = {}
        for tool in a.tools.split(","):
            t0 = time.time()
            if tool.startswith("lmtune-"):
                rows[tool] = lmtune_row(os.path.abspath(a.build), model, data, work, tool[7:], a.warmup, a.steps,
                                        a.seq)
            else:
                rows[tool] = torch_row(model, work, tool[6:], a.warmup, a.steps, a.seq)
            r = rows[tool]
            print(f"{tool}: {r['tok_s']:.1f} tok/s, peak anonymous RSS rank 0 {r['rss'][0]['anon'] / GIB:.3f} GiB, "
                  f"rank 1 {r['rss'][1]['anon'] / GIB:.3f} GiB ({time.time() - t0:.0f} s)", flush=True)
        print("\n| tool | tokens/s (2 processes) | peak RssAnon rank 1 / rank 0 (GiB) | VmHWM rank 1 / rank 0 (GiB) | "
              "lmtune's Peak mem (tensors, rank 0, GB = 1e9) | last loss |")
        print("| --- | --- | --- | --- | --- | --- |")
        for tool, r in rows.items():
            alloc = f"{r['alloc_gb']:.3f}" if r["alloc_gb"] is not None else "-"
            m0, m1 = r["rss"]
            print(f"| {tool} | {r['tok_s']:.1f} | {m1['anon'] / GIB:.3f} / {m0['anon'] / GIB:.3f} | "
                  f"{m1['hwm'] / GIB:.3f} / {m0['hwm'] / GIB:.3f} | {alloc} | {r['loss']:.3f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
