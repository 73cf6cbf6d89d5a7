"""Helper of bench/bench_pack_gpu.sh: a chat dataset for the --pack comparison.

  make_pack_data.py DIR --model DIR [--n-train 2000] [--n-valid 8] [--min 100] [--max 800] [--seed 0]
      train.jsonl / valid.jsonl of {"messages": [user, assistant]} records built from the words of
      examples/data, each record's content sized so that the user + assistant text is between --min and
      --max tokens with the model's tokenizer (lengths uniform in between; the chat template adds a few
      tokens more). Prints the token counts' range and mean.
"""
import argparse
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-valid", type=int, default=8)
    ap.add_argument("--min", type=int, default=100)
    ap.add_argument("--max", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    words = []
    for line in open(os.path.join(ROOT, "examples", "data", "train.jsonl")):
        r = json.loads(line)
        words += (r.get("completion") or r.get("text") or r.get("prompt") or "").split()
    rng = random.Random(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    counts, cost = [], {}
    for name, n in (("train", a.n_train), ("valid", a.n_valid)):
        with open(os.path.join(a.dir, f"{name}.jsonl"), "w") as f:
            for _ in range(n):
                want = rng.randint(a.min, a.max)
                # About a fifth of the tokens in the question, the rest in the answer; words are added
                # by their own token counts (cached), the total then counted exactly.
                user = " ".join(rng.choices(words, k=max(4, want // 8)))
                have = len(tok.encode(user).ids)
                answer_words = []
                while have < want:
                    w = rng.choice(words)
                    if w not in cost:
                        cost[w] = len(tok.encode(" " + w).ids)
                    answer_words.append(w)
                    have += cost[w]
                ntok = len(tok.encode(user).ids) + len(tok.encode(" ".join(answer_words)).ids)
                counts.append(ntok)
                rec = {"messages": [{"role": "user", "content": user},
                                    {"role": "assistant", "content": " ".join(answer_words)}]}
                f.write(json.dumps(rec) + "\n")
    print(f"data: {a.n_train} train + {a.n_valid} valid chat records of {min(counts)}..{max(counts)} tokens "
          f"(mean {sum(counts) / len(counts):.0f}) before the chat template, in {a.dir}", flush=True)


if __name__ == "__main__":
    main()
