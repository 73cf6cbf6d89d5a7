"""Crash-safe training (issue 13): 20 SIGKILLs of one `lmtune lora` run, each followed by --resume
from the newest checkpoint, must end byte-identical to an uninterrupted run of the same flags, with
no torn file under a final name after any kill and every temp file a kill left removed by a later run.

Usage: crash_check.py --lmtune BIN --model DIR --data DIR --work DIR [--seed N] [--kills 20]

How the kill moments are chosen. The files on disk change only at write steps, so every state a
SIGKILL can leave is the state after one of them. lmtune's write-point hook (src/io/write_points.h)
numbers them: each atomic write's temp created / half written / complete / renamed, each metrics line,
each checkpoint folder created / renamed; LMTUNE_TEST_KILL_AT=train:N kills at the N-th point after
training begins. The uninterrupted run's trace lists them all; a run resumed from checkpoint c repeats
the trace after c's folder-renamed point, so the uninterrupted run's point g is the resumed run's
point g - (index of c's folder-renamed). Planned: one kill halfway through a write of every kind of file
(adapters, best_adapters, NNNNNNN_adapters, loss.svg, metrics.jsonl lines; in a checkpoint: adapters,
optimizer state, adapter_config, metrics, trainer_state, the folder's rename; and, before training
begins, adapter_config.json and the metrics.jsonl a resume rewrites), the rest at random points, and
3 real SIGKILLs from outside at random times (a point near the end armed behind them so that they
always kill). After each hook kill, the killed run's last trace line must be the planned point (the
numbering above holds, or the test fails). Reproducible: the seed is printed; --seed replays it.

Compared at the end: every file of the uninterrupted run, byte for byte (adapters, best and numbered
adapters, each checkpoint's adapters, optimizer state and trainer state, loss.svg); metrics.jsonl
(and checkpoints' copies) on every field except the timings and peak memory, which are measured
per run; adapter_config.json except "adapter_path" and "resume", which record the command line (as
mlx-lm's does).
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ref"))
from checks import FAILS, check  # noqa: E402

ITERS = 24
CONFIG = """lora_parameters: {rank: 4, scale: 10.0, dropout: 0.1}
lr_schedule: {name: cosine_decay, arguments: [1.0e-3, 24], warmup: 3}
"""
TIMING_KEYS = {"iterations_per_second", "tokens_per_second", "val_time", "peak_memory"}
RECORDED_ARGS = {"adapter_path", "resume"}


def st_complete(path):
    """Raises unless the safetensors file is whole: its header parses and its tensors end at the file's end."""
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    end = 0
    for k, v in head.items():
        if k != "__metadata__":
            a, b = v["data_offsets"]
            assert 0 <= a <= b <= len(data) - 8 - n, f"{k} outside the file"
            end = max(end, b)
    assert end == len(data) - 8 - n, f"{len(data) - 8 - n - end} bytes past the last tensor"


def is_temp(rel):
    return any(".tmp." in p or p.startswith(".tmp-") for p in rel.split(os.sep))


def torn_files(d):
    """Files under final names that do not parse in full; every finished checkpoint folder complete."""
    bad = []
    for root, dirs, files in os.walk(d):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, d)
            if is_temp(rel):
                continue
            try:
                if name.endswith(".safetensors"):
                    st_complete(path)
                elif name.endswith(".json"):
                    json.load(open(path))
                elif name.endswith(".jsonl"):
                    text = open(path).read()
                    assert text == "" or text.endswith("\n"), "last line cut"
                    for line in text.splitlines():
                        json.loads(line)
                elif name.endswith(".svg"):
                    assert open(path).read().endswith("</svg>\n"), "cut before </svg>"
            except Exception as e:  # noqa: BLE001 (any failure to parse is the finding)
                bad.append(f"{rel}: {e}")
    ck = os.path.join(d, "checkpoints")
    for name in os.listdir(ck) if os.path.isdir(ck) else []:
        if name.isdigit():
            for f in ("adapters.safetensors", "optimizer.safetensors", "metrics.jsonl", "trainer_state.json",
                      "adapter_config.json"):
                if not os.path.isfile(os.path.join(ck, name, f)):
                    bad.append(f"checkpoints/{name} lacks {f}")
    return bad


def temps(d):
    out = []
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(root, name), d)
            if is_temp(rel) and not is_temp(os.path.dirname(rel)):
                out.append(os.path.join(root, name))
    return out


def trace(stderr, d):
    """[(phase, n, what, path relative to the adapter folder)] of a run's write points."""
    out = []
    for m in re.finditer(r"^\[write-point\] (\w+) (\d+) (\S+) (.*)$", stderr, re.M):
        out.append((m[1], int(m[2]), m[3], os.path.relpath(m[4], d)))
    return out


def kind(rel):
    """The kind of file a write point writes: checkpoint and iteration numbers taken out."""
    rel = re.sub(r"checkpoints/(\.tmp-)?\d+", "checkpoints/N", rel)
    return re.sub(r"^\d+_adapters", "N_adapters", rel)


def latest_checkpoint(d):
    ck = os.path.join(d, "checkpoints")
    done = [int(n) for n in os.listdir(ck) if n.isdigit()] if os.path.isdir(ck) else []
    return max(done, default=0)


def metrics_rows(path):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in open(path).read().splitlines()]


def same_file(whole, killed, rel):
    a, b = os.path.join(whole, rel), os.path.join(killed, rel)
    if rel.endswith(".jsonl"):
        return metrics_rows(a) == metrics_rows(b)
    if os.path.basename(rel) == "adapter_config.json":
        strip = lambda p: {k: v for k, v in json.load(open(p)).items() if k not in RECORDED_ARGS}  # noqa: E731
        return strip(a) == strip(b)
    return open(a, "rb").read() == open(b, "rb").read()


def all_files(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="a folder with train.jsonl and valid.jsonl (the first rows are used)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--seed", type=int, default=None, help="the kill plan's seed (default: a new one, printed)")
    ap.add_argument("--kills", type=int, default=20)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"crash_check: seed {seed} (replay: --seed {seed})")
    rng = random.Random(seed)

    shutil.rmtree(a.work, ignore_errors=True)
    data = os.path.join(a.work, "data")
    os.makedirs(data)
    for name, n in (("train", 24), ("valid", 4)):
        rows = open(os.path.join(a.data, f"{name}.jsonl")).read().splitlines()[:n]
        open(os.path.join(data, f"{name}.jsonl"), "w").write("\n".join(rows) + "\n")
    config = os.path.join(a.work, "config.yaml")
    open(config, "w").write(CONFIG)
    # Checkpoints every 3 iterations fall inside gradient accumulation (2) and report windows (2);
    # dropout, a warm-up + cosine schedule and a best_adapters file that changes are all resumed.
    args = [a.lmtune, "lora", "--model", a.model, "--train", "--data", data, "-c", config, "--iters", str(ITERS),
            "--save-every", "3", "--steps-per-report", "2", "--steps-per-eval", "4", "--val-batches", "1",
            "--batch-size", "2", "--num-layers", "2", "--grad-accumulation-steps", "2", "--max-seq-length", "64",
            "--seed", "5"]
    env = dict(os.environ, LMTUNE_TEST_WRITE_TRACE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("LMTUNE_TEST_KILL_AT", None)

    whole = os.path.join(a.work, "whole")
    t0 = time.time()
    p = subprocess.run([*args, "--adapter-path", whole], capture_output=True, text=True, env=env, timeout=300)
    whole_s = time.time() - t0
    if not check(p.returncode == 0, f"the uninterrupted run failed:\n{p.stdout}\n{p.stderr}"):
        sys.exit(1)
    ev = [e for e in trace(p.stderr, whole) if e[0] == "train"]
    n_setup = sum(e[0] == "setup" for e in trace(p.stderr, whole))
    check(ev and [e[1] for e in ev] == list(range(1, len(ev) + 1)), "the trace's training points are not 1..n")
    commit = {}  # checkpoint iteration -> index (1-based) of its folder-renamed point
    for i, e in enumerate(ev, 1):
        if e[2] == "folder-renamed":
            commit[int(os.path.basename(e[3]))] = i
    check(max(commit) == ITERS and commit[ITERS] == len(ev),
          f"the final checkpoint is not the run's last write: {ev[-3:]}")
    kinds = sorted({kind(e[3]) for e in ev})
    print(f"crash_check: uninterrupted run {whole_s:.1f}s, {n_setup} setup + {len(ev)} training write points, "
          f"{len(commit)} checkpoints; file kinds: {', '.join(kinds)}")

    # The plan: (kind of kill, target). Points are global training indices, never the last one
    # (after it nothing is left to resume).
    last = len(ev) - 1
    plan = []
    for k in kinds:
        mid = [i for i, e in enumerate(ev, 1) if kind(e[3]) == k and e[2] in ("partial", "appended", "folder-created",
                                                                           "folder-renamed") and i <= last]
        plan.append(("point", rng.choice(mid)))
    # Before training: adapter_config.json (setup points 1-4), the metrics.jsonl a resume rewrites (5-).
    plan.append(("setup", (1, 4, "adapter_config.json")))
    plan.append(("setup", (5, n_setup, "metrics.jsonl")))
    n_timed = 3
    while len(plan) < a.kills - n_timed:
        plan.append(("point", rng.randint(1, last)))
    plan = plan[:a.kills - n_timed]
    points = sorted(t for w, t in plan if w == "point")
    others = [p for p in plan if p[0] != "point"] + [("timed", None)] * n_timed
    plan = [("point", t) for t in points]
    for o in others:
        plan.insert(rng.randint(1, len(plan)), o)  # never first: setup kills want a resume to interrupt

    killed = os.path.join(a.work, "killed")
    seen_temps = set()
    c = 0  # the newest complete checkpoint
    for n, (how, target) in enumerate(plan, 1):
        r = commit[c] if c else 0
        cmd = [*args, "--adapter-path", killed]
        if c:
            cmd += ["--resume", os.path.join(killed, "checkpoints", f"{c:07d}")]
        e = dict(env)
        if how == "point":
            if target <= r:  # an earlier kill (a timed one) went past it: the same kind of file, later
                later = [i for i in range(r + 1, last + 1) if kind(ev[i - 1][3]) == kind(ev[target - 1][3])]
                target = rng.choice(later or list(range(r + 1, last + 1)))
            e["LMTUNE_TEST_KILL_AT"] = f"train:{target - r}"
        elif how == "setup":
            lo, hi, setup_file = target
            target = rng.randint(lo, hi)
            e["LMTUNE_TEST_KILL_AT"] = f"setup:{target}"
        else:
            e["LMTUNE_TEST_KILL_AT"] = f"train:{last - r}"  # the backstop
        before = temps(killed)
        t0 = time.time()
        # Output to files, not pipes: a full pipe would stall the run and decide where a timed kill lands.
        log_out, log_err = (open(os.path.join(a.work, f"kill{n}.{x}"), "w+") for x in ("out", "err"))
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=log_err, text=True, env=e)
        if how == "timed":
            delay = rng.uniform(0.0, whole_s * (last - r) / last)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=300)
        out, err = (open(f.name).read() for f in (log_out, log_err))
        log_out.close()
        log_err.close()
        took = time.time() - t0
        tr = trace(err, killed)
        at = tr[-1] if tr else None
        if not check(proc.returncode == -signal.SIGKILL, f"kill {n} ({how}): exit {proc.returncode}, not SIGKILL\n"
                     f"{out[-2000:]}\n{err[-2000:]}"):
            break
        # The clean-up runs before metrics.jsonl is (re)written: a run that got that far left none of
        # the temp files that were there when it started.
        if any(x[0] == "train" or x[3] == "metrics.jsonl" for x in tr):
            made = {os.path.join(killed, x[3]) for x in tr if x[2] == "folder-created"}  # made again by this run
            stale = [t for t in before if os.path.exists(t) and t not in made]
            check(not stale, f"kill {n}: temp files of earlier kills survived the clean-up: {stale}")
        if how == "point":
            want = ("train", target - r, ev[target - 1][2], ev[target - 1][3])
            check(at == want, f"kill {n}: the run died at {at}, planned {want} (point {target} of the uninterrupted run)")
        elif how == "setup":
            check(at is not None and at[:2] == ("setup", target) and at[3] == setup_file,
                  f"kill {n}: died at {at}, planned setup point {target} ({setup_file})")
        bad = torn_files(killed)
        check(not bad, f"kill {n}: torn files under final names: {bad}")
        left = temps(killed)
        seen_temps.update(left)
        c = latest_checkpoint(killed)
        where = f"{at[0]} point {at[1]}: {at[2]} {at[3]}" if at else "before any write point"
        print(f"kill {n:2d} ({how:5s}) after {took:4.1f}s at {where}; newest checkpoint {c}; "
              f"{len(left)} temp files left")
        check(c < ITERS, f"kill {n}: the run had finished")

    # The last resume runs to the end.
    before_last = temps(killed)
    cmd = [*args, "--adapter-path", killed] + (["--resume", os.path.join(killed, "checkpoints", f"{c:07d}")] if c else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    check(p.returncode == 0 and (not c or f"at iteration {c}" in p.stdout),
          f"the final resume failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    removed = set(re.findall(r"^Removed (.*), left by an interrupted save$", p.stdout, re.M))
    check(set(before_last) <= removed, f"the final run did not report removing {sorted(set(before_last) - removed)}")
    check(not temps(killed), f"temp files left at the end: {temps(killed)}")
    wf, kf = all_files(whole), all_files(killed)
    check(wf == kf, f"the files differ: only uninterrupted {sorted(set(wf) - set(kf))}, only killed "
          f"{sorted(set(kf) - set(wf))}")
    differ = [f for f in wf if f in kf and not same_file(whole, killed, f)]
    check(not differ, f"files differ from the uninterrupted run's: {differ}")
    print(f"crash_check: {len(plan)} kills, {len(seen_temps)} temp files left by them, {len(wf)} files compared "
          f"with the uninterrupted run: {len(differ)} differ")
    if FAILS:
        print(f"crash_check: {len(FAILS)} failures (seed {seed})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
