"""HF `tokenizers` (Rust) encode throughput, one thread, the peer of bench_tokenizer.

Encodes the benchmark text line by line (each line keeps its '\n'; no special tokens) with
Tokenizer.from_file(DIR/tokenizer.json), once with encode() per line and once with encode_batch() over
all lines (which skips Python's per-call overhead); RAYON_NUM_THREADS=1 keeps encode_batch on one thread.
Prints "name MB/s tokens" with the faster of the two, median of --runs passes after one warm-up.

Usage: bench_tokenizer_peer.py --text FILE [--runs N] NAME=DIR [NAME=DIR ...]
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("folders", nargs="+")
    a = ap.parse_args()
    data = open(a.text, "rb").read()
    text = data.decode("utf-8")
    lines = text.split("\n")
    lines = [l + "\n" for l in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    assert sum(len(l.encode()) for l in lines) == len(data)
    for spec in a.folders:
        name, folder = spec.split("=", 1)
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))

        def per_line():
            return sum(len(tok.encode(l, add_special_tokens=False).ids) for l in lines)

        def batch():
            return sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))

        best = None
        for fn in (per_line, batch):
            n = fn()  # warm-up
            secs = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                n = fn()
                secs.append(time.perf_counter() - t0)
            rate = len(data) / statistics.median(secs) / 1e6
            if best is None or rate > best[0]:
                best = (rate, n)
        print(f"{name} {best[0]:.2f} {best[1]}", flush=True)


if __name__ == "__main__":
    main()
