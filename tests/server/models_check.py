#!/usr/bin/env python3
"""lmtune server's model-side features end to end on models/default, each case with its own server on a
free loopback port (helpers from server_check.py).

  speculative  --draft-model (models/default's first 2 layers, then models/default itself) and a
           request's num_draft_tokens (0: none; 1): greedy chat, completions and streamed text equal
           plain `lmtune generate`'s, alone and 4 at once; the log lines and /metrics show drafted
           and accepted tokens (all of them with the model as its own draft, some but not all with
           the 2-layer one); a seeded sampled request and a response_format one decode without the
           draft; --num-draft-tokens 0 is refused
  adapters per-request `adapters` and `model` (hot swap): raw completions with and without two
           random adapters, and from another model folder (models/default's first 2 layers, with and
           without an adapter of its own), equal `lmtune generate`'s with the same --model /
           --adapter-path, one at a time and mixed concurrently; the prompt cache never serves one
           pair's entries to another; missing or wrong folders get 404 / 400 and a failed load
           leaves the served model; a server started with --adapter-path serves the base model for
           `adapters: ""`
  disconnect  a client that sends a whole (non-streamed) request that would decode for a minute and
           closes its socket: the generation stops within seconds (its log line says client-gone,
           /metrics counts it), twice, then the server answers as before
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_check import (EOS_ID, FAILS, Server, chat_body, check, expect_error, generate,  # noqa: E402
                          good_request_works, sse_text)
# --- speculative ---

def request_lines(srv):
    return [l for l in list(srv.lines) if l.startswith("[server] ") and " POST " in l]


def draft_counts(srv, first, n):
    """(drafted, accepted) of request lines first .. first + n - 1 (None where a line has none), once
    they are in the log (it is read asynchronously)."""
    until = time.time() + 10
    lines = request_lines(srv)
    while len(lines) < first + n and time.time() < until:
        time.sleep(0.05)
        lines = request_lines(srv)
    out = []
    for l in lines[first:first + n]:
        m = re.search(r" drafted=(\d+) accepted=(\d+)", l)
        out.append((int(m.group(1)), int(m.group(2))) if m else None)
    return out


def case_speculative(a):
    sys.path.insert(0, os.path.join(a.root, "tests", "ref"))
    from speculative_cache_check import truncated_model
    part = truncated_model(a)
    prompts = [("Define: lantern", 40), ("The cat sat on", 30)]
    want = {p: generate(a, p, n) for p, n in prompts}
    raw = generate(a, "Define: river", 30, "--ignore-chat-template")
    for draft, name in [(part, "first-2-layers"), (a.model, "self")]:
        srv = Server(a.lmtune, a.model, "--draft-model", draft, "--num-draft-tokens", "3")
        try:
            for p, n in prompts:
                st, j = srv.post("/v1/chat/completions", chat_body(p, max_tokens=n))
                got = j["choices"][0]["message"]["content"] if st == 200 else j
                check(got == want[p], f"{name} draft, chat {p!r}: {got!r} != generate {want[p]!r}")
            got = sse_text(srv, "/v1/chat/completions", chat_body(prompts[0][0], max_tokens=prompts[0][1],
                                                                        stream=True))
            check(got == want[prompts[0][0]], f"{name} draft, streamed: {got!r}")
            st, j = srv.post("/v1/completions", {"prompt": "Define: river", "max_tokens": 30, "temperature": 0,
                                                 "logprobs": 2})
            got = j["choices"][0]["text"] if st == 200 else j
            check(got == raw, f"{name} draft, completion: {got!r} != generate {raw!r}")
            if st == 200:
                lp = j["choices"][0]["logprobs"]
                check(len(lp["tokens"]) == j["usage"]["completion_tokens"] and "".join(lp["tokens"]) == raw and
                      all(x <= 0 for x in lp["token_logprobs"]), f"{name} draft, logprobs {lp}")
            counts = draft_counts(srv, 0, 4)
            check(all(c and c[0] > 0 for c in counts), f"{name} draft: requests without drafts: {counts}")
            if name == "self":
                check(all(c and c[0] == c[1] for c in counts), f"self draft: not every proposal accepted: {counts}")
            else:
                check(all(c and c[1] < c[0] for c in counts) and any(c and c[1] > 0 for c in counts),
                      f"2-layer draft: expected some proposals accepted, not all: {counts}")
            # Four at once: batched steps while they run together, speculative rounds once one is alone.
            res = {}

            def one(i):
                p, n = prompts[i % 2]
                st, j = srv.post("/v1/chat/completions", chat_body(p, max_tokens=n + 6 * i))
                res[i] = (p, n + 6 * i, j["choices"][0]["message"]["content"] if st == 200 else j)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for i, (p, n, got) in sorted(res.items()):
                exp = generate(a, p, n)
                check(got == exp, f"{name} draft, concurrent {i}: {got!r} != generate {exp!r}")
            check(len(res) == 4, f"{name} draft: {len(res)} of 4 concurrent answers")
            # Seeded sampling and constrained output decode without the draft.
            st, j = srv.post("/v1/chat/completions", chat_body("Define: lantern", max_tokens=8, temperature=1.0,
                                                               seed=3))
            st2, j2 = srv.post("/v1/chat/completions", chat_body("Define: lantern", max_tokens=8, temperature=1.0,
                                                                 response_format={"type": "json_object"}))
            st3, j3 = srv.post("/v1/chat/completions", chat_body(prompts[0][0], max_tokens=prompts[0][1],
                                                                 num_draft_tokens=0))
            check(st == 200 and st2 == 200 and st3 == 200, f"{name} draft: seeded / json / no-draft answers {st} {st2}")
            counts = draft_counts(srv, 8, 3)
            check(counts == [None, None, None], f"{name} draft: seeded / json / num_draft_tokens 0 drafted: {counts}")
            check(st3 == 200 and j3["choices"][0]["message"]["content"] == want[prompts[0][0]], f"no draft: {j3}")
            # The request's own num_draft_tokens: one proposal a round.
            st, j = srv.post("/v1/chat/completions", chat_body(prompts[0][0], max_tokens=prompts[0][1],
                                                               num_draft_tokens=1))
            got = j["choices"][0]["message"]["content"] if st == 200 else j
            check(got == want[prompts[0][0]], f"{name} draft, num_draft_tokens 1: {got!r}")
            c = draft_counts(srv, 11, 1)[0]
            check(c and (name != "self" or c[0] == c[1]), f"{name} draft, num_draft_tokens 1: {c}")
            st, h, body = srv.request("GET", "/metrics")
            batched = re.search(r"lmtune_speculative_rounds_batched_total (\d+)", body.decode())
            check(batched and int(batched.group(1)) > 0, f"{name}: no round taken together by the four at once")
            rounds = re.search(r"lmtune_speculative_rounds_total (\d+)", body.decode())
            acc = re.search(r"lmtune_draft_tokens_accepted_total (\d+)", body.decode())
            check(rounds and int(rounds.group(1)) > 0 and acc and int(acc.group(1)) > 0, f"{name}: metrics {body[-900:]}")
        finally:
            srv.stop()
    # A request's own draft_model (mlx-lm's field), on a server started without one: the triple
    # (model, adapters, draft) is loaded as a hot swap, and the text is still plain greedy's.
    p, n = prompts[0]
    srv = Server(a.lmtune, a.model)
    try:
        for i, (extra, drafts) in enumerate([({"draft_model": part}, True), ({}, False), ({"draft_model": ""}, False),
                                             ({"draft_model": a.model}, True), ({"draft_model": "default_model"}, False)]):
            st, j = srv.post("/v1/chat/completions", chat_body(p, max_tokens=n, **extra))
            got = j["choices"][0]["message"]["content"] if st == 200 else j
            check(got == want[p], f"request draft {extra}: {got!r} != generate {want[p]!r}")
            c = draft_counts(srv, i, 1)[0]
            check((c is not None and c[0] > 0) == drafts, f"request draft {extra}: drafted {c}, expected {drafts}")
        expect_error(srv, chat_body(p, draft_model="/no/such/model"), 404, "draft_model", "model_not_found",
                     "a missing draft model")
        expect_error(srv, chat_body(p, draft_model=7), 400, "draft_model", "invalid_type", "draft_model not a string")
        other = os.path.join(a.work, "other-vocab-draft")  # the truncated model with one token more
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(part, other)
        tj = json.load(open(os.path.join(other, "tokenizer.json")))
        n_vocab = json.load(open(os.path.join(other, "config.json")))["vocab_size"]
        tj["added_tokens"].append({"id": n_vocab, "content": "<extra_draft_token>", "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False, "special": True})
        json.dump(tj, open(os.path.join(other, "tokenizer.json"), "w"))
        cfg = json.load(open(os.path.join(other, "config.json")))
        cfg["vocab_size"] = n_vocab + 1
        json.dump(cfg, open(os.path.join(other, "config.json"), "w"))
        import torch
        from safetensors.torch import load_file, save_file
        w = load_file(os.path.join(other, "model.safetensors"))
        for k in list(w):
            if k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight"):
                w[k] = torch.cat([w[k], w[k][:1]], dim=0)
        save_file(w, os.path.join(other, "model.safetensors"), metadata={"format": "pt"})
        st, j = srv.post("/v1/chat/completions", chat_body(p, draft_model=other))
        check(st == 400 and j["error"]["param"] == "draft_model" and "share the tokenizer" in j["error"]["message"],
              f"a draft with another tokenizer size: {st} {j}")
        st, j = srv.post("/v1/chat/completions", chat_body(p, max_tokens=n))
        check(st == 200 and j["choices"][0]["message"]["content"] == want[p], f"after the refusals: {st} {j}")
    finally:
        srv.stop()
    bad = subprocess.run([a.lmtune, "server", "--model", a.model, "--draft-model", a.model, "--num-draft-tokens", "0"],
                         capture_output=True, text=True, timeout=60)
    check(bad.returncode != 0 and "--num-draft-tokens: must be >= 1" in bad.stderr, f"--num-draft-tokens 0: {bad}")


# --- adapters ---

def random_adapter(a, tag, seed, model=None):
    """A random LoRA adapter (mlx-lm's layout) on every projection of a model (models/default): it changes the
    greedy text."""
    import numpy as np
    from safetensors.numpy import save_file
    cfg = json.load(open(os.path.join(model or a.model, "config.json")))
    d = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    e, ff, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (e, q), "self_attn.k_proj": (e, kv), "self_attn.v_proj": (e, kv),
              "self_attn.o_proj": (q, e), "mlp.gate_proj": (e, ff), "mlp.up_proj": (e, ff), "mlp.down_proj": (ff, e)}
    g = np.random.default_rng(seed)
    t = {}
    for layer in range(cfg["num_hidden_layers"]):
        for k, (i, o) in shapes.items():
            t[f"model.layers.{layer}.{k}.lora_a"] = (g.standard_normal((i, 4)) / np.sqrt(i)).astype(np.float32)
            t[f"model.layers.{layer}.{k}.lora_b"] = (g.standard_normal((4, o)) * 0.2).astype(np.float32)
    save_file(t, os.path.join(d, "adapters.safetensors"))
    json.dump({"fine_tune_type": "lora", "num_layers": -1,
               "lora_parameters": {"rank": 4, "scale": 4.0, "dropout": 0.0, "keys": list(shapes)}},
              open(os.path.join(d, "adapter_config.json"), "w"))
    return d


def case_adapters(a):
    sys.path.insert(0, os.path.join(a.root, "tests", "ref"))
    from speculative_cache_check import truncated_model
    ad_a, ad_b = random_adapter(a, "a", 0), random_adapter(a, "b", 1)
    part = truncated_model(a)
    ad_p = random_adapter(a, "p", 0, part)
    broken = os.path.join(a.work, "adapters", "broken")
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(ad_a, broken)
    open(os.path.join(broken, "adapters.safetensors"), "wb").write(b"not safetensors")
    # Raw completions: the chat template makes models/default's first 2 layers answer "." at once.
    p, n = "The cat sat on", 24

    def gen(model=a.model, adapter=None):
        extra = (["--adapter-path", adapter] if adapter else [])
        out = subprocess.run([a.lmtune, "generate", "--model", model, "--device", "cpu", "--temp", "0", "-m", str(n),
                              "--verbose", "false", "--ignore-chat-template", "-p", p, *extra],
                             capture_output=True, text=True, timeout=60)
        check(out.returncode == 0, f"generate failed: {out.stderr}")
        return out.stdout[:-1] if out.stdout.endswith("\n") else out.stdout

    want = {"base": gen(), "a": gen(adapter=ad_a), "b": gen(adapter=ad_b), "part": gen(part),
            "part+p": gen(part, ad_p)}
    check(len(set(want.values())) == 5, f"the adapters or models do not change the text: {want}")
    body = {"base": {}, "a": {"adapters": ad_a}, "b": {"adapters": ad_b}, "none": {"adapters": ""},
            "part": {"model": part}, "part+p": {"model": part, "adapters": ad_p}}

    def ask(srv, which):
        st, j = srv.post("/v1/completions", {"prompt": p, "max_tokens": n, "temperature": 0, **body[which]})
        if st != 200:
            return st, j, None
        return st, j["choices"][0]["text"], j["usage"]["prompt_tokens_details"]["cached_tokens"]

    # A Hub id from the Hugging Face cache (never downloaded by a request): the truncated model
    # under models--test--part, its refs/main naming the snapshot.
    hub = os.path.join(a.work, "hub-cache")
    shutil.rmtree(hub, ignore_errors=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(part, os.path.join(hub, "models--test--part", "snapshots", commit))
    os.makedirs(os.path.join(hub, "models--test--part", "refs"))
    open(os.path.join(hub, "models--test--part", "refs", "main"), "w").write(commit)
    body["hub"], want["hub"] = {"model": "test/part"}, want["part"]
    other = os.path.join(hub, "models--test--config-only", "snapshots", commit)  # not listed: no weights
    os.makedirs(other)
    shutil.copy(os.path.join(part, "config.json"), other)
    os.makedirs(os.path.join(hub, "models--test--config-only", "refs"))
    open(os.path.join(hub, "models--test--config-only", "refs", "main"), "w").write(commit)
    srv = Server(a.lmtune, a.model, "--prompt-cache-size", "10", env={"HF_HUB_CACHE": hub, "HF_HUB_OFFLINE": "0"})
    try:
        seen = []
        for which in ["base", "a", "a", "b", "base", "none", "part", "part+p", "part", "a", "hub"]:
            st, text, cached = ask(srv, which)
            exp = want["base" if which == "none" else which]
            check(st == 200 and text == exp, f"{which}: {st} {text!r} != generate {exp!r}")
            seen.append((which, cached))
        # A pair's first request finds no entry (though the same prompt ran under others), a repeat does.
        first = {}
        for which, cached in seen:
            key = "base" if which == "none" else which
            if key in first:
                check(cached and cached > 0, f"{which} again: cached {cached} ({seen})")
            else:
                check(cached == 0, f"{which} first: cached {cached}: another pair's entry served it ({seen})")
                first[key] = cached
        # Mixed at once: each answer is its pair's (they run one pair at a time).
        res = {}

        def one(i, which):
            res[i] = (which, ask(srv, which))

        order = ["a", "base", "b", "a", "part", "base"]
        threads = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate(order)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(120)
        for i, (which, (st, text, _)) in sorted(res.items()):
            check(st == 200 and text == want[which], f"concurrent {i} {which}: {st} {text!r} != {want[which]!r}")
        check(len(res) == len(order), f"{len(res)} of {len(order)} concurrent answers")
        # Refusals, then the served model still answers.
        expect_error(srv, chat_body(p, adapters="/no/such/adapters"), 404, "adapters", "adapters_not_found",
                     "a missing adapter folder")
        expect_error(srv, chat_body(p, adapters=a.model), 400, "adapters", "invalid_value", "a model as adapters")
        expect_error(srv, chat_body(p, model="/no/such/model"), 404, "model", "model_not_found", "a missing model")
        expect_error(srv, chat_body(p, model=ad_a), 404, "model", "model_not_found", "an adapter folder as the model")
        expect_error(srv, chat_body(p, adapters=3), 400, "adapters", "invalid_type", "adapters not a string")
        st, h, ms = srv.request("GET", "/v1/models")
        ids = [m["id"] for m in json.loads(ms)["data"]] if st == 200 else []
        check(ids == [a.model, "test/part"], f"/v1/models: the served model, then the cache's: {st} {ids}")
        st, h, one = srv.request("GET", "/v1/models/test/part")
        check(st == 200 and json.loads(one)["id"] == "test/part", f"/v1/models/test/part: {st} {one}")
        st, h, one = srv.request("GET", "/v1/models/test/config-only")
        check(st == 404, f"/v1/models/test/config-only (no weights): {st} {one}")
        st, j = srv.post("/v1/chat/completions", chat_body(p, model="test/not-cached"))
        check(st == 404 and j["error"]["code"] == "model_not_found" and "not in the Hugging Face cache" in
              j["error"]["message"], f"a Hub id not in the cache: {st} {j}")
        st, j = srv.post("/v1/chat/completions", chat_body(p, adapters=broken))
        check(st == 400 and j["error"]["param"] == "adapters" and "cannot load" in j["error"]["message"],
              f"a broken adapter: {st} {j}")
        st, text, _ = ask(srv, "b")
        check(st == 200 and text == want["b"], f"after the refusals: {st} {text!r}")
        st, h, m = srv.request("GET", "/metrics")
        sw = re.search(r"lmtune_model_switches_total (\d+)", m.decode())
        check(sw and int(sw.group(1)) >= 8, f"model switches: {sw and sw.group(0)}")
        check(srv.alive(), "server died")
    finally:
        srv.stop()
    srv = Server(a.lmtune, a.model, "--adapter-path", ad_a)
    try:
        for which, exp in [("base", want["a"]), ("none", want["base"]), ("b", want["b"]), ("base", want["a"])]:
            st, text, _ = ask(srv, which)
            check(st == 200 and text == exp, f"--adapter-path a, {which}: {st} {text!r} != {exp!r}")
    finally:
        srv.stop()


# --- disconnect ---

def send_and_leave(srv, body, after):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    time.sleep(after)
    s.close()


def case_disconnect(a):
    srv = Server(a.lmtune, a.model, "--request-timeout", "60")
    try:
        long_body = chat_body("Define: lantern", max_tokens=30000, logit_bias={str(EOS_ID): -100})
        for i in range(2):
            t0 = time.time()
            send_and_leave(srv, long_body, 0.5)
            until = time.time() + 10
            while True:
                lines = [l for l in list(srv.lines) if " client-gone" in l and " stream" not in l]
                if len(lines) > i or time.time() > until:
                    break
                time.sleep(0.05)
            took = time.time() - t0
            check(len(lines) == i + 1, f"left client {i}: log lines {lines}\n{srv.log()[-2000:]}")
            m = re.search(r" out=(\d+) ", lines[-1]) if lines else None
            check(m and 0 < int(m.group(1)) < 30000 and took < 8, f"left client {i}: stopped after {took:.1f} s: {lines}")
        st, h, body = srv.request("GET", "/metrics")
        check(re.search(r"lmtune_client_disconnects_total 2", body.decode()), f"metrics: {body.decode()[-1500:]}")
        good_request_works(srv, "clients leaving whole requests")
        # A client that stays gets its whole answer (the check does not take a waiting client for gone).
        st, j = srv.post("/v1/chat/completions", chat_body("Define: lantern", max_tokens=300,
                                                           logit_bias={str(EOS_ID): -100}))
        check(st == 200 and j["usage"]["completion_tokens"] == 300, f"a patient client: {st} {str(j)[:300]}")
    finally:
        srv.stop()



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--case", required=True, choices=["speculative", "adapters", "disconnect"])
    ap.add_argument("--work", default="/tmp/lmtune-server-models-check")
    a = ap.parse_args()
    a.model = os.path.join(a.root, "models", "default")
    os.makedirs(a.work, exist_ok=True)
    {"speculative": case_speculative, "adapters": case_adapters, "disconnect": case_disconnect}[a.case](a)
    if FAILS:
        print(f"{len(FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"server {a.case}: all checks passed")


if __name__ == "__main__":
    main()
