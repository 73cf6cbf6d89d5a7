"""Data-parallel `lmtune lora` on the CPU (issue 14): WORLD_SIZE processes started as torchrun starts
them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each on its share of every batch, must
train as one process does on the whole batch, within float tolerance, with only rank 0 writing files
and printing. Cases:
  equal     2 ranks against 1 process (SGD, so that the adapters compare; and Adam's default run's
            losses), train / validation / test losses and the adapters; rank 1 writes and prints nothing
  pack      the same with --pack
  accum     --grad-accumulation-steps 2 on 2 ranks, and their checkpoint in the middle of an accumulation
            resumed by 1 process: both the same run as 1 process throughout (resume with another world size)
  torchrun  `torchrun --nproc-per-node 2 --no-python lmtune lora ...` against 1 process
  gpus      `lmtune lora --gpus 2` (lmtune's own launcher) against 1 process; a failing rank's status
  nccl      (label gpu; 2 GPUs, else skipped) --gpus 2 on CUDA sums with NCCL and equals 1 GPU
  world1    WORLD_SIZE=1 (and RANK 0): byte for byte the files of a run without the variables
  refused   a batch not divisible by WORLD_SIZE, a missing MASTER_PORT, RANK past WORLD_SIZE, a bad
            LMTUNE_DIST_OVERLAP or LMTUNE_DIST_BUCKET_MB: clear errors
  rank_dies rank 1 killed mid-run: rank 0 stops within seconds naming rank 1, nothing torn
  overlap   the sums overlapped with backward in buckets of 10 kB (many buckets) and not overlapped
            (LMTUNE_DIST_OVERLAP=0): the same bytes, with gradient accumulation and checkpointing
  shard     --shard (full fine-tuning, ZeRO-3 style): 2 sharded ranks write the very bytes of 2 data-parallel
            ranks with --grad-checkpoint (the same sums) and the same --test line, at a lower peak memory; so
            do packed batches with a rank left idle and trained embeddings, and 3 ranks (padded slices); 1
            sharded process on an f32 checkpoint (weights in the file's mapping) equals 1 process; refusals
  shard_resume --shard with --grad-accumulation-steps 2: close to data parallel (the micro-batches are summed
            in another order); its checkpoint mid-accumulation resumed by 1 process, sharded or not (the same
            bytes), and a data-parallel checkpoint resumed by 2 sharded ranks

The model is checks.small_llama: random, bf16, 2 blocks of hidden 256, models/default's tokenizer.

Tolerances. This tiny random model is chaotic under training: one process on 2 threads instead of 1
(the same sums in another order) moves the adapters by up to 2.5e-4 of their largest value after 10
SGD steps at LoRA scale 1 (1.5% at scale 20; Adam's near-zero gradients flip the sign of their update,
so Adam's adapters are not compared). 2 ranks moved them by 4.4e-4 in the same run; the bound is 5e-3.
Losses agree to ~1e-7 relative; the bound is 1e-5.

Usage: dist_check.py --lmtune BIN --root REPO --work DIR --case NAME
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from checks import FAILS, check, cli_case_args, small_llama  # noqa: E402

CONFIG = "lora_parameters: {rank: 8, scale: 1.0, dropout: 0.0}\n"
# SGD, so that the adapters compare (see above); 6 steps, validation at 3 and 6, no numbered saves.
# lr 0.05: at 0.1 the GPU-trained models/default (session 20) amplified the summation-order differences of the
# sanitizer build (clang -O1) to 5.6e-3 of the packed adapter's largest value, over ADAPTER_TOL.
SHORT_SGD = ["--iters", "6", "--steps-per-eval", "3", "--save-every", "50", "--optimizer", "sgd",
             "--learning-rate", "0.05"]
ADAPTER_TOL = 5e-3
LOSS_TOL = 1e-5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    a, _, data = cli_case_args()
    # A small random Llama (2 blocks, hidden 256) with models/default's tokenizer: these cases test the group's
    # sums and files, not the text; it keeps them (and their runs under the sanitizers) short.
    model = small_llama(a.root, os.path.join(a.work, "model"))
    cfg = os.path.join(a.work, "config.yaml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    base = ["lora", "--model", model, "--train", "--data", data, "--batch-size", "4", "--max-seq-length", "128",
            "--num-layers", "-1", "--steps-per-report", "2", "--val-batches", "2", "-c", cfg]
    env0 = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env0["OPENBLAS_NUM_THREADS"] = "1"  # each rank one thread: the two ranks share the machine's cores

    def one(out, *args, env=None):
        p = subprocess.run([a.lmtune, *base, *map(str, args), "--adapter-path", os.path.join(a.work, out)],
                           capture_output=True, text=True, timeout=300, env={**env0, **(env or {})})
        check(p.returncode == 0, f"{out}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def group(out, world, *args, extra=None, timeout=300):
        """world ranks of the same command (rank r > 0 writes to OUT-rR, which must stay absent)."""
        port = str(free_port())
        procs = []
        for r in range(world):
            path = os.path.join(a.work, out if r == 0 else f"{out}-r{r}")
            env = {**env0, "WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": port, **(extra or {})}
            procs.append(subprocess.Popen([a.lmtune, *base, *map(str, args), "--adapter-path", path], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, o, e) for p, (o, e) in zip(procs, outs)]

    def losses(out):
        rows = [json.loads(x) for x in open(os.path.join(a.work, out, "metrics.jsonl"))]
        return [(r["iteration"], k, r[k]) for r in rows for k in ("train_loss", "val_loss") if k in r]

    def same_losses(x, y):
        lx, ly = losses(x), losses(y)
        check([r[:2] for r in lx] == [r[:2] for r in ly], f"{x} / {y}: metrics rows differ: {lx} / {ly}")
        worst = max((abs(p[2] - q[2]) / abs(p[2]) for p, q in zip(lx, ly)), default=0)
        check(worst <= LOSS_TOL, f"{x} / {y}: losses differ by {worst:.3g} relative: {lx} / {ly}")

    def same_adapters(x, y, name="adapters.safetensors"):
        u, v = load_file(os.path.join(a.work, x, name)), load_file(os.path.join(a.work, y, name))
        check(sorted(u) == sorted(v), f"{x} / {y}: {name} has other tensors")
        for k in sorted(set(u) & set(v)):
            rel = float(np.max(np.abs(u[k] - v[k]))) / (float(np.max(np.abs(u[k]))) + 1e-30)
            check(rel <= ADAPTER_TOL, f"{x} / {y}: {name} {k} differs by {rel:.3g} of its largest value")

    def group_ok(res, out):
        for r, (rc, o, e) in enumerate(res):
            check(rc == 0, f"{out}: rank {r} exit {rc}\n{o}\n{e}")
        check(res[0][1].count("Data parallel: 2 processes") == 1, f"{out}: rank 0 did not say so:\n{res[0][1]}")
        for r in range(1, len(res)):
            check(res[r][1] == "", f"{out}: rank {r} printed to stdout:\n{res[r][1]}")
            check(not os.path.exists(os.path.join(a.work, f"{out}-r{r}")), f"{out}: rank {r} wrote files")

    test_line = lambda s: [x for x in s.splitlines() if x.startswith("Test loss")]  # noqa: E731

    if a.case == "equal":
        sgd = ["--iters", "10", "--steps-per-eval", "5", "--save-every", "5", "--optimizer", "sgd",
               "--learning-rate", "0.1", "--test", "--test-batches", "3"]
        p1 = one("one", *sgd)
        res = group("two", 2, *sgd)
        group_ok(res, "two")
        same_losses("one", "two")
        same_adapters("one", "two")
        same_adapters("one", "two", "0000005_adapters.safetensors")
        t1, t2 = test_line(p1.stdout), test_line(res[0][1])
        check(len(t1) == 1 and len(t2) == 1, f"test lines: {t1} / {t2}")
        if t1 and t2:
            x, y = float(t1[0].split()[2].rstrip(",")), float(t2[0].split()[2].rstrip(","))
            check(abs(x - y) <= 1e-3, f"test loss {x} / {y}")
        adam = ["--iters", "10", "--steps-per-eval", "5", "--save-every", "50"]
        one("one-adam", *adam)
        group_ok(group("two-adam", 2, *adam), "two-adam")
        same_losses("one-adam", "two-adam")
    elif a.case == "pack":
        args = [*SHORT_SGD, "--pack", "--max-seq-length", "512"]
        one("one", *args)
        group_ok(group("two", 2, *args), "two")
        same_losses("one", "two")
        same_adapters("one", "two")
    elif a.case == "accum":
        args = ["--iters", "8", "--steps-per-eval", "4", "--save-every", "3", "--grad-accumulation-steps", "2",
                "--optimizer", "sgd", "--learning-rate", "0.1"]
        one("one", *args)
        group_ok(group("two", 2, *args), "two")
        same_losses("one", "two")
        same_adapters("one", "two")
        # Its checkpoint at iteration 3, between the two micro-batches of an update, resumed by 1 process.
        ck = os.path.join(a.work, "two", "checkpoints", "0000003")
        check(os.path.isdir(ck), f"no checkpoint {ck}")
        one("resumed", *args, "--resume", ck)
        same_losses("one", "resumed")
        same_adapters("one", "resumed")
    elif a.case == "torchrun":
        # torchrun itself (torch's, from the test venv) starting 2 ranks: its agent holds MASTER_PORT.
        args = SHORT_SGD
        one("one", *args)
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        p = subprocess.run([torchrun, "--nproc-per-node", "2", "--no-python", a.lmtune, *base, *args,
                            "--adapter-path", os.path.join(a.work, "two")], capture_output=True, text=True,
                           timeout=300, env=env0)
        check(p.returncode == 0, f"torchrun: exit {p.returncode}\n{p.stdout}\n{p.stderr[-3000:]}")
        check(p.stdout.count("Data parallel: 2 processes") == 1, f"torchrun: one rank prints:\n{p.stdout}")
        same_losses("one", "two")
        same_adapters("one", "two")
    elif a.case == "gpus":
        # lmtune's own launcher: --gpus 2 starts 2 ranks of the same command (on the CPU here).
        args = [*SHORT_SGD, "--device", "cpu"]
        one("one", *args)
        p = one("two", *args, "--gpus", "2")
        check(p.stdout.count("Data parallel: 2 processes") == 1, f"--gpus 2: one rank prints:\n{p.stdout}")
        same_losses("one", "two")
        same_adapters("one", "two")
        # A rank that fails stops the launcher with its status: batch 4 on 3 ranks.
        q = subprocess.run([a.lmtune, *base, *args, "--gpus", "3", "--adapter-path", os.path.join(a.work, "three")],
                           capture_output=True, text=True, timeout=120, env=env0)
        check(q.returncode != 0 and "not divisible by WORLD_SIZE 3" in q.stderr and "[launch] rank" in q.stderr,
              f"--gpus 3 with batch 4: exit {q.returncode}\n{q.stderr}")
        # Under torchrun (WORLD_SIZE set), a different --gpus is refused.
        p = subprocess.run([a.lmtune, *base, *args, "--gpus", "2", "--adapter-path", os.path.join(a.work, "x")],
                           capture_output=True, text=True, timeout=60,
                           env={**env0, "WORLD_SIZE": "4", "RANK": "0", "MASTER_PORT": "1"})
        check(p.returncode != 0 and "leave --gpus out" in p.stderr, f"--gpus under WORLD_SIZE=4:\n{p.stderr}")
    elif a.case == "nccl":
        # 2 GPUs (skipped, exit 77, where fewer): --gpus 2 on CUDA sums with NCCL, and equals 1 GPU.
        try:
            n = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU ")
        except OSError:  # no driver tools: no GPU
            n = 0
        if n < 2:
            print(f"skipped: needs 2 GPUs, this machine has {n}")
            sys.exit(77)
        env = {}
        if not os.environ.get("LMTUNE_NCCL_LIB"):  # PyTorch's NCCL wheel, where the test's Python has one
            try:
                import nvidia.nccl
                lib = os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2")
                if os.path.exists(lib):
                    env["LMTUNE_NCCL_LIB"] = lib
            except ImportError:
                pass
        args = [*SHORT_SGD, "--device", "cuda", "--dtype", "float32"]
        one("one", *args, env=env)
        p = one("two", *args, "--gpus", "2", env=env)
        check("gradients summed with NCCL" in p.stdout, f"--gpus 2 on CUDA did not use NCCL:\n{p.stdout}")
        same_losses("one", "two")
        same_adapters("one", "two")
    elif a.case == "world1":
        args = ["--iters", "4", "--steps-per-eval", "2", "--save-every", "2"]
        one("plain", *args)
        one("world1", *args, env={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_PORT": "1"})
        for name in ["adapters.safetensors", "0000002_adapters.safetensors", "best_adapters.safetensors",
                     "checkpoints/0000004/optimizer.safetensors"]:
            x = open(os.path.join(a.work, "plain", name), "rb").read()
            y = open(os.path.join(a.work, "world1", name), "rb").read()
            check(x == y, f"WORLD_SIZE=1: {name} differs from a run without it")
    elif a.case == "refused":
        res = group("three", 3, "--iters", "2", timeout=60)
        for r, (rc, o, e) in enumerate(res):
            check(rc != 0 and "not divisible by WORLD_SIZE 3" in e, f"batch 4 on 3 ranks, rank {r}: exit {rc}\n{e}")

        def refused(env, needle):
            p = subprocess.run([a.lmtune, *base, "--iters", "1", "--adapter-path", os.path.join(a.work, "x")],
                               capture_output=True, text=True, timeout=60, env={**env0, **env})
            check(p.returncode != 0 and needle in p.stderr, f"{env}: exit {p.returncode}, want {needle!r}\n{p.stderr}")
        # The overlap's switches, read once the group has met: a bad value stops every rank, naming it.
        for var, val, needle in (("LMTUNE_DIST_OVERLAP", "2", "LMTUNE_DIST_OVERLAP=2 is not 0 or 1"),
                                 ("LMTUNE_DIST_BUCKET_MB", "lots", "LMTUNE_DIST_BUCKET_MB=lots is not a number")):
            res = group("bad-env", 2, "--iters", "1", extra={var: val}, timeout=60)
            for r, (rc, o, e) in enumerate(res):
                check(rc != 0 and needle in e, f"{var}={val}, rank {r}: exit {rc}, want {needle!r}\n{e}")
        refused({"WORLD_SIZE": "2", "RANK": "0"}, "needs MASTER_PORT")
        refused({"WORLD_SIZE": "2", "RANK": "2", "MASTER_PORT": "1234"}, "RANK=2 is not a whole number from 0 to 1")
        refused({"WORLD_SIZE": "two", "RANK": "0", "MASTER_PORT": "1234"}, "WORLD_SIZE=two")
        refused({"WORLD_SIZE": "2", "MASTER_PORT": "1234"}, "needs RANK")
        # Rank 1 alone: rank 0 never comes; it gives up after LMTUNE_DIST_TIMEOUT, naming where it looked.
        t0 = time.time()
        refused({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": str(free_port()), "LMTUNE_DIST_TIMEOUT": "2"},
                "could not connect to rank 0")
        check(time.time() - t0 < 30, f"the lone rank took {time.time() - t0:.0f} s to give up")
    elif a.case == "rank_dies":
        port = str(free_port())
        procs = []
        for r in range(2):
            env = {**env0, "WORLD_SIZE": "2", "RANK": str(r), "MASTER_PORT": port}
            procs.append(subprocess.Popen([a.lmtune, *base, "--iters", "100000", "--steps-per-eval", "1000000",
                                           "--adapter-path", os.path.join(a.work, f"dies-{r}")], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(4)  # loaded and training
        check(procs[0].poll() is None and procs[1].poll() is None, "a rank ended before the kill")
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.time()
        try:
            out, err = procs[0].communicate(timeout=60)
        except subprocess.TimeoutExpired:
            procs[0].kill()
            out, err = procs[0].communicate()
        procs[1].communicate()
        check(procs[0].returncode not in (0, None) and "rank 1 closed its connection" in err,
              f"rank 0 after rank 1's death: exit {procs[0].returncode}\n{err[-2000:]}")
        check(time.time() - t0 < 30, f"rank 0 took {time.time() - t0:.0f} s to stop")
        check("Starting training" in out, f"rank 0 never trained:\n{out}")
    elif a.case == "overlap":
        args = ["--iters", "6", "--steps-per-eval", "3", "--save-every", "4", "--grad-accumulation-steps", "2"]
        for ck in ([], ["--grad-checkpoint"]):
            tag = "-ck" if ck else ""
            group_ok(group("off" + tag, 2, *args, *ck, extra={"LMTUNE_DIST_OVERLAP": "0"}), "off" + tag)
            group_ok(group("on" + tag, 2, *args, *ck, extra={"LMTUNE_DIST_BUCKET_MB": "0.01"}), "on" + tag)
            for name in ["adapters.safetensors", "checkpoints/0000004/optimizer.safetensors",
                         "checkpoints/0000006/optimizer.safetensors"]:
                u, v = (open(os.path.join(a.work, d + tag, name), "rb").read() for d in ("off", "on"))
                check(u == v, f"overlap{tag}: {name} differs from the sums after backward")
    elif a.case == "shard":
        def run_args(iters, save):
            return ["--fine-tune-type", "full", "--learning-rate", "1e-4", "--iters", str(iters), "--steps-per-eval",
                    str(iters), "--save-every", str(save)]

        def same_bytes(x, y, iters, save):
            for name in ["adapters.safetensors", f"{save:07d}_adapters.safetensors", "best_adapters.safetensors",
                         f"checkpoints/{save:07d}/optimizer.safetensors",
                         f"checkpoints/{iters:07d}/optimizer.safetensors"]:
                u, v = (open(os.path.join(a.work, d, name), "rb").read() for d in (x, y))
                check(u == v, f"{x} / {y}: {name} differs")

        def first_peak(out):
            return [json.loads(x) for x in open(os.path.join(a.work, out, "metrics.jsonl"))
                    if "train_loss" in x][0]["peak_memory"]

        full = run_args(6, 4)
        dp = group("dp", 2, *full, "--grad-checkpoint", "--test", "--test-batches", "2")
        group_ok(dp, "dp")
        res = group("sharded", 2, *full, "--shard", "--test", "--test-batches", "2")
        group_ok(res, "sharded")
        check("Sharded: each of 2 processes" in res[0][1], f"sharded: rank 0 did not say so:\n{res[0][1]}")
        same_bytes("dp", "sharded", 6, 4)
        # --test after training runs on the sharded weights (each block gathered as it runs).
        t_dp, t_sh = test_line(dp[0][1]), test_line(res[0][1])
        check(len(t_dp) == 1 and t_dp == t_sh, f"test lines: data parallel {t_dp}, sharded {t_sh}")
        # Rank 0's peak tensors before the first save (the model is bf16: its weights are f32 copies).
        check(first_peak("sharded") < 0.75 * first_peak("dp"),
              f"peak memory: sharded {first_peak('sharded')} GB, data parallel {first_peak('dp')} GB")
        # One process on an f32 checkpoint: its weights are read in place from one mapping of the file,
        # which each sharded weight must leave (its memory is freed and restored apart from the others').
        import shutil
        from safetensors.torch import load_file as load_torch, save_file as save_torch
        f32 = os.path.join(a.work, "model-f32")
        shutil.copytree(model, f32)
        st = os.path.join(f32, "model.safetensors")
        save_torch({k: v.float() for k, v in load_torch(st).items()}, st, metadata={"format": "pt"})
        one("one", *run_args(4, 2), "--grad-checkpoint", "--model", f32)
        one("one-sharded", *run_args(4, 2), "--shard", "--model", f32)
        same_bytes("one", "one-sharded", 4, 2)
        # Packed rows: 9 rows in batches of 4, 4 and 1, so rank 1 sits out one step of the three; with
        # embeddings trained (whole on every rank, summed as data parallel sums them).
        packed = [*run_args(3, 2), "--pack", "--max-seq-length", "2048", "--train-embeddings"]
        group_ok(group("dp-packed", 2, *packed, "--grad-checkpoint"), "dp-packed")
        group_ok(group("sharded-packed", 2, *packed, "--shard"), "sharded-packed")
        same_bytes("dp-packed", "sharded-packed", 3, 2)
        # 3 ranks: the tensors of 65,536 and 256 elements (q/o, norms) padded at the end of their slices.
        three = [*run_args(4, 2), "--batch-size", "3"]
        group_ok3 = lambda res, out: [check(rc == 0, f"{out}: rank {r} exit {rc}\n{e}")  # noqa: E731
                                      for r, (rc, o, e) in enumerate(res)]
        group_ok3(group("dp-3", 3, *three, "--grad-checkpoint"), "dp-3")
        group_ok3(group("sharded-3", 3, *three, "--shard"), "sharded-3")
        same_bytes("dp-3", "sharded-3", 4, 2)

        def refused(args, needle):
            p = subprocess.run([a.lmtune, *base, "--iters", "1", *args, "--adapter-path", os.path.join(a.work, "x")],
                               capture_output=True, text=True, timeout=60, env=env0)
            check(p.returncode != 0 and needle in p.stderr, f"{args}: exit {p.returncode}, want {needle!r}\n{p.stderr}")
        refused(["--shard"], "--shard splits the weights that full fine-tuning trains")
        refused(["--shard", "--fine-tune-type", "full", "--optimizer", "adafactor"], "adafactor works on whole")
    elif a.case == "shard_resume":
        # lr 1e-5: at 1e-4 the full fine-tune of the trained models/default (session 20) amplifies the two ways'
        # summation-order differences to 1.3e-4 by step 8 (equal to 6e-8 at step 4): Adam's near-sign steps.
        args = ["--fine-tune-type", "full", "--learning-rate", "1e-5", "--iters", "8", "--steps-per-eval", "4",
                "--save-every", "3", "--grad-accumulation-steps", "2"]
        group_ok(group("dp", 2, *args, "--grad-checkpoint"), "dp")
        group_ok(group("sharded", 2, *args, "--shard"), "sharded")
        same_losses("dp", "sharded")
        ck = os.path.join(a.work, "sharded", "checkpoints", "0000003")  # between two micro-batches
        check(os.path.isdir(ck), f"no checkpoint {ck}")
        one("resumed-sharded", *args, "--shard", "--resume", ck)
        one("resumed", *args, "--grad-checkpoint", "--resume", ck)
        for name in ["adapters.safetensors", "checkpoints/0000008/optimizer.safetensors"]:
            u, v = (open(os.path.join(a.work, d, name), "rb").read() for d in ("resumed", "resumed-sharded"))
            check(u == v, f"resumed / resumed-sharded: {name} differs")
        same_losses("sharded", "resumed-sharded")
        group_ok(group("sharded-from-dp", 2, *args, "--shard", "--resume",
                       os.path.join(a.work, "dp", "checkpoints", "0000003")), "sharded-from-dp")
        same_losses("dp", "sharded-from-dp")
    else:
        sys.exit(f"unknown case {a.case}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
