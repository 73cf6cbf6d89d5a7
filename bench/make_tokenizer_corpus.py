"""Writes the tokenizer benchmark's text: a few MB of mixed text, the same bytes on every run.

Mixes the hard-case corpus (tests/tokenizer/corpus/hard_cases.json: many scripts, emoji, code,
whitespace runs) into sentences, word salads, numbers, whitespace runs and random code points, like
tests/ref/tokenizer_ref.py's 1 MB document but with its own seed and size, in lines of up to a few
hundred bytes. Both bench_tokenizer and bench_tokenizer_peer.py encode it line by line.

Usage: make_tokenizer_corpus.py --cases hard_cases.json --out FILE [--mb 4]
"""
import argparse
import json
import random


def make_text(cases, size):
    rng = random.Random(20261125)
    texts = [c["text"] for c in cases if c["text"] and len(c["text"]) < 2000]
    words = " ".join(texts).split()
    parts, n = [], 0
    while n < size:
        r = rng.random()
        if r < 0.30:
            s = rng.choice(texts)
        elif r < 0.75:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))
        elif r < 0.85:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 8)))
        elif r < 0.93:
            s = rng.choice([" ", "  ", "\t", "    ", "\r\n"]) * rng.randint(1, 4)
        else:
            s = "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                        rng.randint(0x4e00, 0x9fff), rng.randint(0x1f300, 0x1faff)]))
                        for _ in range(rng.randint(1, 20)))
        s += rng.choice([" ", "\n", ". ", ".\n", "\n\n"])
        s = s.encode("utf-8", "replace").decode("utf-8", "replace")  # drop lone surrogates
        parts.append(s)
        n += len(s.encode())
    return "".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=4)
    a = ap.parse_args()
    text = make_text(json.load(open(a.cases)), int(a.mb * 1_000_000))
    with open(a.out, "w", encoding="utf-8", newline="") as f:
        f.write(text)


if __name__ == "__main__":
    main()
