#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server (lmtune server, or any peer that speaks the same
API): for each concurrency c, c streamed /v1/completions requests start together (a barrier), each
with a prompt of about --prompt-tokens tokens and --max-tokens output tokens (EOS banned through
logit_bias so every stream runs its full length). Reports per c: aggregate output tok/s (all
completion tokens over the wall time from the barrier to the last stream's end), time to first
token p50 / p99 (request sent to the first chunk carrying text), and the prompt tokens the server
counted. A stream counts as failed when its usage is missing or its completion tokens fall short of
--max-tokens (a peer that did not ban EOS). Standard library only. Writes a JSON list with --json."""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.request


def one(port, body, out, barrier):
    barrier.wait()
    t0 = time.perf_counter()
    ttft, usage, chunks = None, None, 0
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            out.update(error=f"HTTP {r.status}: {r.read()[:200]!r}")
            return
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]
            for ch in d.get("choices") or []:
                if ch.get("text"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
        c.close()
    except Exception as e:  # noqa: BLE001 - reported, not raised: one failed stream must not hide the others
        out.update(error=repr(e))
        return
    out.update(ttft=ttft, end=time.perf_counter(), usage=usage, chunks=chunks)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def run(a, c):
    body = {"model": a.model, "prompt": " ".join([a.word] * (a.prompt_tokens - 1)), "max_tokens": a.max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
            "logit_bias": {str(a.eos_id): -100}}
    body = json.dumps({**body, **json.loads(a.extra_body)})
    outs = [{} for _ in range(c)]
    barrier = threading.Barrier(c + 1)
    threads = [threading.Thread(target=one, args=(a.port, body, outs[i], barrier)) for i in range(c)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    for o in outs:
        if "error" not in o and not o.get("usage"):
            o["error"] = "no usage in the stream"
        elif "error" not in o and o["usage"].get("completion_tokens", 0) < a.max_tokens:
            o["error"] = f"{o['usage'].get('completion_tokens')} of {a.max_tokens} tokens (EOS not banned?)"
    errors = [o["error"] for o in outs if "error" in o]
    ok = [o for o in outs if "error" not in o]
    wall = max((o["end"] for o in ok), default=t0) - t0
    gen = sum(o["usage"]["completion_tokens"] for o in ok)
    ttfts = [o["ttft"] for o in ok if o["ttft"] is not None]
    return {"streams": c, "max_tokens": a.max_tokens, "ok": len(ok), "errors": errors[:3], "n_errors": len(errors), "wall_s": wall,
            "completion_tokens": gen, "tok_s": gen / wall if wall > 0 else 0.0,
            "prompt_tokens": ok[0]["usage"]["prompt_tokens"] if ok else 0,
            "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99)}


def step_counters(port):
    """lmtune's lmtune_batch_*_total counters from /metrics, by the name between the prefix and suffix."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("lmtune_batch_") and "_total " in line:
            name, value = line.split(" ", 1)
            out[name[len("lmtune_batch_"):-len("_total")]] = float(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--streams", default="1,8,32,64")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--word", default="the", help="a word the tokenizer keeps as one token (Llama 2: \"the\")")
    ap.add_argument("--eos-id", type=int, default=2)
    ap.add_argument("--model", default="default_model", help="the request's model field")
    ap.add_argument("--extra-body", default="{}",
                    help="JSON fields merged into each request, for a peer that bans EOS its own way: transformers "
                         "serve ignores logit_bias on /v1/completions but takes "
                         "'{\"generation_config\": \"{\\\"eos_token_id\\\": -1}\"}'; llama-server takes "
                         "'{\"ignore_eos\": true}'")
    ap.add_argument("--json")
    ap.add_argument("--step-metrics", action="store_true",
                    help="lmtune server: per load, the step counters of /metrics (forward and host time a step)")
    a = ap.parse_args()
    warm = argparse.Namespace(**{**vars(a), "max_tokens": 8})
    run(warm, 1)  # the first request pays for lazy set-up (plans, graphs)
    results = []
    for c in (int(s) for s in a.streams.split(",")):
        before = step_counters(a.port) if a.step_metrics else {}
        r = run(a, c)
        results.append(r)
        print(f"streams {c:3d}: {r['tok_s']:8.1f} output tok/s ({r['completion_tokens']} tokens in {r['wall_s']:.2f} s), "
              f"TTFT p50 {r['ttft_p50_s'] * 1e3:.0f} ms, p99 {r['ttft_p99_s'] * 1e3:.0f} ms, prompt {r['prompt_tokens']} "
              f"tokens, {r['ok']} ok, {r['n_errors']} failed {r['errors']}", flush=True)
        if a.step_metrics:
            d = {k: v - before.get(k, 0.0) for k, v in step_counters(a.port).items()}
            steps, dec = d.get("steps", 0), d.get("decode_steps", 0)
            r["steps"] = {k: round(v, 6) for k, v in d.items()}
            if steps:
                print(f"           {steps:.0f} steps: forward {d['forward_seconds'] / steps * 1e3:.2f} ms, host "
                      f"{d['host_seconds'] / steps * 1e3:.2f} ms a step; {dec:.0f} decode-only steps of "
                      f"{d['decode_step_seconds'] / max(dec, 1) * 1e3:.2f} ms", flush=True)
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)
    return 0 if all(r["n_errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
