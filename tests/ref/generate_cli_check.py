"""Drives `lmtune generate / chat / benchmark` on the tiny Llama-3-tokenizer model that
generate_ref.py writes (chat_llama3) and checks the output against transformers' greedy text
and mlx-lm's output format. One case per run: --case NAME.
"""
import argparse
import json
import os
import re
import subprocess
import sys


def run(cmd, stdin=None, env=None):
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=env)
    return p.returncode, p.stdout, p.stderr


def check(cond, msg):
    if not cond:
        print("FAIL:", msg, file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--ref-dir", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    model = os.path.join(a.ref_dir, "chat_llama3")
    ref = json.load(open(os.path.join(model, "ref.json")))
    gen = [a.lmtune, "generate", "--model", model, "--device", "cpu"]
    c = a.case
    if c == "greedy_text":
        rc, out, err = run(gen + ["--ignore-chat-template", "-p", "hello", "-m", "12"])
        check(rc == 0, err)
        want = "==========\n" + ref["hello_text"] + "\n==========\n"
        check(out.startswith(want), f"text differs from transformers:\n{out!r}\nwant {want!r}")
        lines = out[len(want):].splitlines()
        check(re.fullmatch(r"Prompt: %d tokens, [0-9]+\.[0-9]{3} tokens-per-sec" % len(ref["hello_ids"]), lines[0]),
              lines[0])
        check(re.fullmatch(r"Generation: %d tokens, [0-9]+\.[0-9]{3} tokens-per-sec" % len(ref["hello_new"]),
                           lines[1]), lines[1])
        check(re.fullmatch(r"Peak memory: [0-9]+\.[0-9]{3} GB", lines[2]), lines[2])
        rc, out, err = run(gen + ["--ignore-chat-template", "-p", "hello", "-m", "12", "--verbose", "false"])
        check(rc == 0 and out == ref["hello_text"] + "\n", f"--verbose false: {out!r}")
    elif c == "stdin":
        rc1, out1, _ = run(gen + ["-p", "-", "-m", "8", "--verbose", "F"], stdin="two\nlines")
        rc2, out2, _ = run(gen + ["-p", "two\\nlines", "-m", "8", "--verbose", "F"])
        check(rc1 == 0 and rc2 == 0 and out1 == out2 and out1.strip(), f"stdin {out1!r} vs escaped {out2!r}")
    elif c == "seed":
        args = ["-p", "hi", "-m", "10", "--temp", "1.0", "--verbose", "false"]
        o1 = run(gen + args + ["--seed", "5"])[1]
        o2 = run(gen + args + ["--seed", "5"])[1]
        o3 = run(gen + args + ["--seed", "6"])[1]
        check(o1 == o2 and o1 != o3, f"seed 5 twice {o1!r} {o2!r}, seed 6 {o3!r}")
        g = run(gen + ["-p", "hi", "-m", "10", "--verbose", "false"])[1]
        k = run(gen + args + ["--seed", "9", "--top-k", "1"])[1]
        check(g == k, f"top-k 1 {k!r} differs from greedy {g!r}")
        m = run(gen + args + ["--seed", "9", "--min-p", "1.0"])[1]
        check(g == m, f"min-p 1.0 {m!r} differs from greedy {g!r}")
        r = run(gen + ["-p", "hi", "-m", "10", "--verbose", "false", "--repetition-penalty", "5"])[1]
        check(r != g, "a strong repetition penalty left the repetitive greedy text unchanged")
    elif c == "stop":
        first = ref["hello_new"][0]
        rc, out, err = run(gen + ["--ignore-chat-template", "-p", "hello", "--extra-eos-token", str(first)])
        check(rc == 0 and "No text generated for this prompt" in out, out + err)
        rc, out, err = run(gen + ["--extra-eos-token", "not-a-token"])
        check(rc == 1 and "is not a token for this model" in err, err)
    elif c == "rotating":
        rc, out, err = run(gen + ["-p", "hello", "-m", "40", "--max-kv-size", "16", "--prefill-step-size", "4"])
        check(rc == 0 and "Generation: 40 tokens" in out, out + err)
        rc2, out2, _ = run(gen + ["-p", "hello", "-m", "40", "--verbose", "false"])
        check(rc2 == 0, "full cache run")
    elif c == "refused":
        rc, _, err = run(gen + ["--bogus"])
        check(rc == 2 and "unrecognized arguments: --bogus" in err, err)
        rc, _, err = run([a.lmtune, "generate", "--model", os.path.join(a.ref_dir, "no-such-model")])
        check(rc == 1 and "no such folder" in err, err)
        # A Hub id goes through the Hub cache; offline and uncached, it is refused clearly.
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=os.path.join(a.ref_dir, "empty-hub-cache"))
        rc, _, err = run([a.lmtune, "generate", "--model", "mlx-community/no-such-model"], env=env)
        check(rc == 1 and "mlx-community/no-such-model" in err and "offline" in err.lower(), err)
        rc, _, err = run(gen + ["--adapter-path", os.path.join(a.ref_dir, "no-such-adapters")])
        check(rc == 1 and "adapter path does not exist" in err, err)
        rc, _, err = run(gen + ["--temp", "hot"])
        check(rc == 2 and "invalid float value" in err, err)
        rc, _, err = run(gen + ["--verbose", "maybe"])
        check(rc == 2 and "Boolean value expected" in err, err)
    elif c == "chat_pipe":
        chat = [a.lmtune, "chat", "--model", model, "--device", "cpu", "-m", "6"]
        rc, out, err = run(chat, stdin="hello\nand more\nh\nr\nhello\nq\n")
        check(rc == 0, err)
        check(out.startswith("[INFO] Starting chat session with"), out)
        footers = re.findall(r"^(\d+) tokens · [0-9.]+ tok/s · prompt [0-9.]+ tok/s \((\d+) new\) · peak [0-9.]+ GB$",
                             out, re.M)
        check(len(footers) == 3, f"three turns expected:\n{out}")
        check(out.count("- 'q' to exit") == 2, "h shows the help again")
        # Turn 2 prefills only its new tokens; after r, turn 3 starts over and repeats turn 1.
        check(int(footers[1][1]) < int(footers[0][1]) + 6 + 12, f"turn 2 prefilled {footers[1][1]} tokens")
        turns = re.split(r"^\d+ tokens · .*$", out, flags=re.M)
        check(footers[2][1] == footers[0][1], f"after reset the first turn repeats: {footers}")
        t1 = turns[0].split(">> ")[-1]
        t3 = turns[2].split(">> ")[-1]
        check(t1 == t3, f"after reset: {t1!r} vs {t3!r}")
        rc, out, _ = run(chat, stdin="hello\n")  # EOF ends the session
        check(rc == 0 and len(re.findall(r"tok/s", out)) == 2, out)
    elif c == "benchmark":
        rc, out, err = run([a.lmtune, "benchmark", "--model", model, "--device", "cpu", "-p", "32", "-g", "8",
                            "-n", "2", "-b", "2"])
        check(rc == 0, err)
        check(re.search(r"^Trial 2:  prompt_tps=[0-9.]+, generation_tps=[0-9.]+, peak_memory=[0-9.]+, "
                        r"total_time=[0-9.]+$", out, re.M), out)
        check(re.search(r"^Averages: prompt_tps=[0-9.]+, generation_tps=[0-9.]+, peak_memory=[0-9.]+$", out, re.M),
              out)
    else:
        check(False, "unknown case " + c)
    print("ok", c)


if __name__ == "__main__":
    main()
