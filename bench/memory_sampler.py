"""Runs a command and samples its memory over time (bench/bench_memory_flat.sh): resident memory
(VmRSS of /proc/PID/status, every 0.1 s) and, with --gpu, the GPU memory nvidia-smi reports for
the process (every 0.5 s). Each sample is tagged with the command's progress, the last number the
--progress regex matched on its stdout (the command must flush its lines). Prints a table of the
samples over the run and a summary line; writes every sample to --csv.

Usage: memory_sampler.py --label NAME --progress REGEX --warmup N --every K [--gpu [--gpu-device]] [--csv FILE] -- CMD...
Rows: the first sample at each multiple of K, and one every 5% of the run's time. "warm-up" is the first sample at progress >= N; "max growth after warm-up" is the largest
sample after it minus it.
"""
import argparse
import csv
import os
import re
import subprocess
import sys
import threading
import time


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def gpu_mib(pid):
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            return int(parts[1])
    # In a container nvidia-smi often lists no process (its PIDs are the host's): then the whole
    # device's used memory, which on a machine of our own is this process plus the driver's share.
    if not GPU_WHOLE_DEVICE[0]:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(out) if out.isdigit() else None


GPU_WHOLE_DEVICE = [False]  # --gpu-device: fall back to the device's used memory


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--progress", required=True, help="regex on stdout lines; group 1 is the progress count, "
                    "or, without a group, the progress is the number of lines matched so far")
    ap.add_argument("--warmup", type=int, required=True)
    ap.add_argument("--every", type=int, required=True)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--gpu-device", action="store_true", help="with --gpu: where nvidia-smi does not list the "
                    "process, sample the device's used memory instead (a machine nothing else uses)")
    ap.add_argument("--csv")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    GPU_WHOLE_DEVICE[0] = a.gpu_device
    rx = re.compile(a.progress)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    progress = [0]
    log = []

    def read():
        for line in proc.stdout:
            log.append(line)
            m = rx.search(line)
            if m:
                progress[0] = int(m[1]) if rx.groups else progress[0] + 1
    reader = threading.Thread(target=read)
    reader.start()
    samples = []  # (seconds, progress, rss KiB, gpu MiB or None)
    t0 = time.time()
    last_gpu, gpu = 0.0, None
    while proc.poll() is None:
        r = rss_kib(proc.pid)
        now = time.time()
        if a.gpu and now - last_gpu >= 0.5:
            gpu, last_gpu = gpu_mib(proc.pid), now
        if r is not None:
            samples.append((now - t0, progress[0], r, gpu if a.gpu else None))
        time.sleep(0.1)
    reader.join()
    rc = proc.wait()
    if rc != 0 or not samples:
        sys.stdout.write("".join(log[-30:]))
        sys.exit(f"{a.label}: the command failed (exit {rc})")
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seconds", "progress", "rss_kib", "gpu_mib"])
            w.writerows(samples)

    warm = next((i for i, s in enumerate(samples) if s[1] >= a.warmup), None)
    if warm is None:
        sys.exit(f"{a.label}: progress never reached the warm-up point {a.warmup}")
    mib = lambda k: k / 1024  # noqa: E731
    print(f"\n{a.label}: {' '.join(cmd[:2])} ... ({len(samples)} samples over {samples[-1][0]:.0f} s)")
    head = f"{'progress':>9} {'seconds':>8} {'RSS MiB':>9}" + (f" {'GPU MiB':>8}" if a.gpu else "")
    print(head)
    # A row at each new multiple of --every, and at each 5% of the run's time.
    shown, tick = set(), samples[-1][0] / 20
    for s in samples:
        step = s[1] // a.every * a.every
        slot = ("t", int(s[0] // tick)) if tick > 0 else None
        if step not in shown or (slot and slot not in shown):
            shown.update({step, slot})
            print(f"{s[1]:>9} {s[0]:>8.1f} {mib(s[2]):>9.1f}" + (f" {s[3] if s[3] is not None else '-':>8}" if a.gpu
                                                                  else ""))
    end = samples[-1]
    print(f"{end[1]:>9} {end[0]:>8.1f} {mib(end[2]):>9.1f}" + (f" {end[3] if end[3] is not None else '-':>8}"
                                                             if a.gpu else "") + "  (last sample)")
    peaks = {}
    for s in samples:
        peaks[s[1]] = max(peaks.get(s[1], 0), s[2])
    print("peak RSS MiB by progress: " + ", ".join(f"{k}: {mib(v):.1f}" for k, v in sorted(peaks.items())))
    w, after = samples[warm], samples[warm:]
    peak = max(after, key=lambda s: s[2])
    line = (f"{a.label}: RSS at warm-up (progress {w[1]}) {mib(w[2]):.1f} MiB, at the end {mib(end[2]):.1f} MiB, "
            f"max growth after warm-up {mib(peak[2] - w[2]):+.1f} MiB (at progress {peak[1]})")
    gw = [s[3] for s in after if s[3] is not None]
    if a.gpu and gw:
        line += f"; GPU at warm-up {gw[0]} MiB, at the end {gw[-1]} MiB, max growth after warm-up {max(gw) - gw[0]:+d} MiB"
    print(line)


if __name__ == "__main__":
    main()
