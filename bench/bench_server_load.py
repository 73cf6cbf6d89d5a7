#!/usr/bin/env python3
"""Bounded load run against an OpenAI-compatible server: --clients threads, each on its own keep-alive
HTTP connection, take the next of --requests requests until none is left. The requests cycle through
four kinds (chat whole, chat streamed, completion whole, completion streamed) over short prompts
("Define: <word>"), 4 to 16 output tokens, greedy and sampled (seeded). Every answer is checked: status
200, the response's shape (choices, finish_reason, usage with 0 < completion_tokens <= max_tokens and
total = prompt + completion), streams ending with a usage chunk and `data: [DONE]`. Anything else is a
failure, never retried. Prints p50 / p90 / p99 of the total time (request sent to answer read) over all
requests and of the time to first token (to the first chunk carrying text) over the streamed ones, the
requests per second and the output tokens per second over the run's wall time. Standard library only
(it runs on the GPU machine too). Exit status 1 when any request failed. --json writes the summary.

The clients open their first connections one after another before the run starts: cpp-httplib listens
with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, which lmtune server leaves at its default), and 64
connects at once overflow it (ConnectionResetError on a few, or SYN retries 1 s later; tests/server's
server_listen_backlog shows it). Reconnects during the run (the server closes a keep-alive connection
after 5 requests) still arrive as they come."""
import argparse
import http.client
import json
import sys
import threading
import time

WORDS = ["lantern", "river", "anchor", "basket", "candle", "desert", "engine", "forest", "garden", "harbor", "island",
         "jacket", "kettle", "ladder", "mirror", "needle", "orange", "pillow", "quartz", "rocket", "saddle", "tunnel"]
KINDS = ["chat", "chat_stream", "completion", "completion_stream"]


def request_body(i, model):
    kind = KINDS[i % 4]
    max_tokens = 4 + (i * 7) % 13
    body = {"model": model, "max_tokens": max_tokens}
    if i % 3 == 2:
        body.update(temperature=0.8, top_p=0.95, seed=i)
    else:
        body["temperature"] = 0
    word = WORDS[(i // 4) % len(WORDS)]
    if kind.startswith("chat"):
        body["messages"] = [{"role": "user", "content": f"Define: {word}"}]
    else:
        body["prompt"] = f"Define: {word}"
    if kind.endswith("stream"):
        body.update(stream=True, stream_options={"include_usage": True})
    return kind, max_tokens, body


def check_usage(u, max_tokens):
    if not isinstance(u, dict):
        raise ValueError(f"no usage: {u!r}")
    p, c, t = u.get("prompt_tokens"), u.get("completion_tokens"), u.get("total_tokens")
    if not (isinstance(p, int) and p > 0 and isinstance(c, int) and 0 < c <= max_tokens and t == p + c):
        raise ValueError(f"bad usage {u} (max_tokens {max_tokens})")
    return c


def read_whole(r, kind, max_tokens):
    j = json.loads(r.read())
    ch = j["choices"][0]
    text = ch["message"]["content"] if kind == "chat" else ch["text"]
    if not isinstance(text, str) or ch.get("finish_reason") not in ("stop", "length"):
        raise ValueError(f"bad choice {ch}")
    return check_usage(j.get("usage"), max_tokens), None


def read_stream(r, kind, max_tokens, t0):
    if not r.getheader("Content-Type", "").startswith("text/event-stream"):
        raise ValueError(f"stream Content-Type {r.getheader('Content-Type')}")
    ttft, usage, finish, done = None, None, None, False
    for raw in r:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        if done:
            raise ValueError("data after [DONE]")
        if line == b"data: [DONE]":
            done = True
            continue
        d = json.loads(line[6:])
        if d.get("usage"):
            usage = d["usage"]
        for ch in d.get("choices") or []:
            piece = ch["delta"].get("content") if kind == "chat_stream" else ch.get("text")
            if piece and ttft is None:
                ttft = time.perf_counter() - t0
            finish = ch.get("finish_reason") or finish
    if not done or finish not in ("stop", "length"):
        raise ValueError(f"stream ended without [DONE] or a finish_reason (done {done}, finish {finish})")
    return check_usage(usage, max_tokens), ttft


class Client:
    def __init__(self, host, port, headers, timeout):
        self.host, self.port, self.headers, self.timeout = host, port, headers, timeout
        self.conn = None

    def run(self, i, model):
        kind, max_tokens, body = request_body(i, model)
        rec = {"i": i, "kind": kind}
        t0 = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            path = "/v1/chat/completions" if kind.startswith("chat") else "/v1/completions"
            self.conn.request("POST", path, body=json.dumps(body), headers=self.headers)
            r = self.conn.getresponse()
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}: {r.read()[:300]!r}")
            if kind.endswith("stream"):
                tokens, ttft = read_stream(r, kind, max_tokens, t0)
            else:
                tokens, ttft = read_whole(r, kind, max_tokens)
            rec.update(ok=True, total_s=time.perf_counter() - t0, ttft_s=ttft, tokens=tokens)
            if r.will_close:  # the server ended keep-alive (its per-connection request count)
                self.conn.close()
                self.conn = None
        except Exception as e:  # noqa: BLE001 - a failure is recorded, never retried
            rec.update(ok=False, error=f"{type(e).__name__}: {e}"[:400], total_s=time.perf_counter() - t0)
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        return rec


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_load(host, port, clients, requests, model="default_model", api_key=None, timeout=120):
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    records = [None] * requests
    next_i = [0]
    lock, connect_lock = threading.Lock(), threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker():
        c = Client(host, port, headers, timeout)
        with connect_lock:  # one at a time, before the start: see the module's note on the listen backlog
            c.conn = http.client.HTTPConnection(host, port, timeout=timeout)
            c.conn.connect()
        barrier.wait()
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= requests:
                break
            records[i] = c.run(i, model)
        if c.conn is not None:
            c.conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    totals = [r["total_s"] for r in ok]
    ttfts = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": requests, "ok": len(ok), "failed": len(failed),
            "errors": [f"#{r['i']} {r['kind']}: {r['error']}" for r in failed[:5]], "wall_s": wall,
            "requests_per_s": len(ok) / wall, "output_tokens": tokens, "output_tok_s": tokens / wall,
            "streamed": len(ttfts), "by_kind": {k: sum(r["kind"] == k for r in ok) for k in KINDS},
            **{f"total_p{q}_s": pct(totals, q) for q in (50, 90, 99)}, "total_max_s": max(totals, default=0.0),
            **{f"ttft_p{q}_s": pct(ttfts, q) for q in (50, 90, 99)}}


def summary_lines(s):
    ms = lambda x: f"{x * 1e3:.0f} ms"  # noqa: E731
    return [f"{s['requests']} requests from {s['clients']} concurrent clients in {s['wall_s']:.1f} s: {s['ok']} ok, "
            f"{s['failed']} failed {s['errors'] if s['errors'] else ''}".rstrip(),
            f"throughput: {s['requests_per_s']:.1f} requests/s, {s['output_tok_s']:.1f} output tok/s "
            f"({s['output_tokens']} tokens); by kind {s['by_kind']}",
            f"total time p50 {ms(s['total_p50_s'])}, p90 {ms(s['total_p90_s'])}, p99 {ms(s['total_p99_s'])}, "
            f"max {ms(s['total_max_s'])}",
            f"time to first token ({s['streamed']} streamed) p50 {ms(s['ttft_p50_s'])}, p90 {ms(s['ttft_p90_s'])}, "
            f"p99 {ms(s['ttft_p99_s'])}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--model", default="default_model")
    ap.add_argument("--api-key")
    ap.add_argument("--json")
    a = ap.parse_args()
    s = run_load(a.host, a.port, a.clients, a.requests, a.model, a.api_key)
    print("\n".join(summary_lines(s)), flush=True)
    if a.json:
        json.dump(s, open(a.json, "w"), indent=1)
    return 0 if s["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
