#!/usr/bin/env python3
"""lmtune server under load and slow clients, models/default on the CPU, a server per case on a free
loopback port (server_check.py's Server).

  load          bench/bench_server_load.py's mixed requests (chat and completions, whole and streamed,
                greedy and sampled) from 16 concurrent clients, 200 in all: 0 failures, and /metrics
                counts exactly the 200s the clients saw
  slow_clients  32 slow connections at once: bodies sent a byte at a time, headers a byte at a time,
                bodies that stall past the server's read timeout, streams read a few hundred bytes at a
                time through a small receive buffer, streams never read and then dropped. Meanwhile a
                normal request every 0.25 s must be answered (correctly, within a bound); the slow
                ones that finish must get their full, correct answers; afterwards no request is left
                in flight and the resident memory is back near its baseline
  backlog       the listening socket's backlog is at least 128 (a burst of that many clients connects
                at once) and a burst of 256 connects at once gets 256 answers, each within 3 s
  slowloris     300 clients that send their request heads a byte a second (three times the server's
                connection threads) must not keep a normal request from its answer
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_check as sc  # noqa: E402  (Server, check, rss_mb, metric; FAILS is shared)

check = sc.check


def metric_sum(srv, name):
    """The sum of every series of a counter (all labels)."""
    _, _, body = srv.request("GET", "/metrics")
    return sum(float(v) for v in re.findall("^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", body.decode(), re.M))


# --- load ---

def case_load(a):
    sys.path.insert(0, os.path.join(a.root, "bench"))
    from bench_server_load import run_load, summary_lines
    srv = sc.Server(a.lmtune, a.model)
    try:
        before = metric_sum(srv, "lmtune_requests_total")
        s = run_load("127.0.0.1", srv.port, a.clients, a.requests)
        print("\n".join(summary_lines(s)))
        check(s["failed"] == 0, f"{s['failed']} of {s['requests']} requests failed: {s['errors']}")
        check(all(n == a.requests // 4 for n in s["by_kind"].values()), f"requests by kind {s['by_kind']}")
        served = metric_sum(srv, "lmtune_requests_total") - before
        check(served == s["ok"], f"/metrics counted {served} requests, the clients got {s['ok']} answers")
        check(sc.metric(srv, "lmtune_requests_in_flight") == 0, "requests still in flight after the run")
        check(srv.alive(), "the server died")
    finally:
        srv.stop()


# --- slow clients ---

def raw_request(path, body):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode(), body


def read_response(s):
    """Reads a whole HTTP/1.1 response (Connection: close) from s: (status, headers text, body bytes)."""
    data = b""
    while True:
        more = s.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d+)", head)
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            n = int(size_line.split(b";")[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return (int(m.group(1)) if m else None), head.decode(errors="replace"), body


def content_of(body):
    j = json.loads(body)
    return j["choices"][0]["message"]["content"]


def stream_content(body):
    """Text, completion_tokens and whether [DONE] came, from a chat SSE body."""
    text, usage, done = "", None, False
    for e in body.decode().split("\n\n"):
        if e == "data: [DONE]":
            done = True
        elif e.startswith("data: {"):
            d = json.loads(e[6:])
            usage = d.get("usage") or usage
            for ch in d.get("choices") or []:
                text += ch["delta"].get("content") or ""
    return text, (usage or {}).get("completion_tokens"), done


def slow_sender(port, body, byte_delay, slow_headers, out, socks=None):
    """Sends the request body (and with slow_headers the head too) one byte at a time. socks: a list
    the connected socket is appended to, for the caller to shut down once it has what it needs."""
    head, payload = raw_request("/v1/chat/completions", body)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        if socks is not None:
            socks.append(s)
        if slow_headers:
            for b in head:
                s.sendall(bytes([b]))
                time.sleep(byte_delay)
            s.sendall(payload)
        else:
            s.sendall(head)
            for b in payload:
                s.sendall(bytes([b]))
                time.sleep(byte_delay)
        st, _, resp = read_response(s)
        s.close()
        out.update(status=st, text=content_of(resp) if st == 200 else resp[:300])
    except Exception as e:  # noqa: BLE001 - reported by the caller
        out.update(error=repr(e))


def staller(port, body, stall_s, out):
    """Sends the head and half the body, then nothing: the server must give up on it (its read timeout)."""
    head, payload = raw_request("/v1/chat/completions", body)
    t0 = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=stall_s)
        s.sendall(head + payload[:len(payload) // 2])
        try:
            got = s.recv(65536)  # b"" (closed) or an error response, within stall_s
            out.update(closed=True, took=time.time() - t0, got=got[:200])
        except socket.timeout:
            out.update(closed=False, took=time.time() - t0)
        except ConnectionResetError:
            out.update(closed=True, took=time.time() - t0, got=b"reset")
        s.close()
    except Exception as e:  # noqa: BLE001
        out.update(error=repr(e))


def slow_reader(port, body, chunk, delay, never_read_s, out):
    """A streamed request read `chunk` bytes every `delay` s through a 4 KiB receive buffer; with
    never_read_s, nothing is read after the request: the socket is closed after that many seconds."""
    head, payload = raw_request("/v1/chat/completions", body)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(60)
        s.connect(("127.0.0.1", port))
        s.sendall(head + payload)
        if never_read_s:
            time.sleep(never_read_s)
            s.close()
            out.update(dropped=True)
            return
        data = b""
        while True:
            more = s.recv(chunk)
            if not more:
                break
            data += more
            time.sleep(delay)
        s.close()
        st, _, resp = read_response(_Replay(data))
        out.update(status=st, bytes=len(data), **dict(zip(("text", "tokens", "done"), stream_content(resp))))
    except Exception as e:  # noqa: BLE001
        out.update(error=repr(e))


class _Replay:
    """A socket stand-in that hands back bytes already read (for read_response)."""

    def __init__(self, data):
        self.data = data

    def recv(self, n):
        out, self.data = self.data[:n], self.data[n:]
        return out


def case_slow_clients(a):
    sys.path.insert(0, os.path.join(a.root, "bench"))
    from bench_server_load import run_load
    srv = sc.Server(a.lmtune, a.model)
    try:
        # Warm up every thread the slow phase will use (32 at once), then take the baseline.
        warm = run_load("127.0.0.1", srv.port, 40, 120)
        check(warm["failed"] == 0, f"warm-up: {warm['errors']}")
        base = sc.rss_mb(srv.proc.pid)
        ref_body = sc.chat_body("Define: river", max_tokens=12)
        st, j = srv.post("/v1/chat/completions", ref_body)
        ref = j["choices"][0]["message"]["content"]
        body = json.dumps(ref_body).encode()
        long_body = json.dumps(sc.chat_body("Define: lantern", max_tokens=300, stream=True,
                                            stream_options={"include_usage": True}, logit_bias={str(sc.EOS_ID): -100})).encode()
        _, j = srv.post("/v1/chat/completions", {**json.loads(long_body), "stream": False, "stream_options": None})
        long_ref = j["choices"][0]["message"]["content"]

        slow = []  # (kind, thread, result)

        def spawn(kind, fn, *args):
            out = {}
            t = threading.Thread(target=fn, args=(srv.port, *args, out), daemon=True)
            slow.append((kind, t, out))

        for _ in range(12):
            spawn("slow body", slow_sender, body, 0.03, False)
        for _ in range(4):
            spawn("slow head", slow_sender, body, 0.02, True)
        for _ in range(4):
            spawn("stall", staller, body, 12.0)
        for _ in range(8):
            spawn("slow reader", slow_reader, long_body, 256, 0.03, 0)
        for _ in range(4):
            spawn("never read", slow_reader, long_body, 0, 0, 6.0)
        t0 = time.time()
        for _, t, _ in slow:
            t.start()

        # Normal requests while they run: each answered correctly within the bound.
        normal, bound = [], 5.0
        while any(t.is_alive() for _, t, _ in slow) and time.time() - t0 < 30:
            t1 = time.time()
            try:
                if len(normal) % 2:
                    text = sc.sse_text(srv, "/v1/chat/completions", {**ref_body, "stream": True})
                else:
                    st, j = srv.post("/v1/chat/completions", ref_body, timeout=30)
                    text = j["choices"][0]["message"]["content"] if st == 200 else f"HTTP {st}: {j}"
            except Exception as e:  # noqa: BLE001
                text = repr(e)
            normal.append((time.time() - t1, text))
            time.sleep(0.25)
        for _, t, _ in slow:
            t.join(5)
        took = time.time() - t0
        worst = max(d for d, _ in normal)
        print(f"slow phase: {took:.1f} s; {len(normal)} normal requests meanwhile, the slowest answered in "
              f"{worst * 1e3:.0f} ms")
        check(len(normal) >= 10, f"only {len(normal)} normal requests ran during the slow phase")
        for i, (d, text) in enumerate(normal):
            check(text == ref and d < bound, f"normal request {i}: {d:.2f} s, {text!r} (want {ref!r})")
        check(not any(t.is_alive() for _, t, _ in slow), "slow clients still running after 30 s")

        for kind, _, out in slow:
            if kind in ("slow body", "slow head"):
                check(out.get("status") == 200 and out.get("text") == ref, f"{kind}: {out}")
            elif kind == "stall":
                # httplib's read timeout is 5 s: the connection is closed (or answered 4xx) well before 12 s.
                check(out.get("closed") and out.get("took", 99) < 10, f"stalled body not dropped: {out}")
            elif kind == "slow reader":
                check(out.get("status") == 200 and out.get("done") and out.get("tokens") == 300 and
                      out.get("text") == long_ref, f"slow reader: {dict(out, text=str(out.get('text'))[:80])}")
            else:
                check(out.get("dropped"), f"never-read client: {out}")
        readers = [o for k, _, o in slow if k == "slow reader" and "bytes" in o]
        if readers:
            print(f"slow readers each took {readers[0]['bytes']} bytes, 256 every 30 ms")

        # Everything ends: no request left in flight, every thread free for new requests.
        end = time.time() + 15
        while sc.metric(srv, "lmtune_requests_in_flight") != 0 and time.time() < end:
            time.sleep(0.2)
        check(sc.metric(srv, "lmtune_requests_in_flight") == 0, "requests still in flight 15 s after the slow phase")
        after_load = run_load("127.0.0.1", srv.port, 32, 64)
        check(after_load["failed"] == 0, f"32 clients after the slow phase: {after_load['errors']}")
        sc.good_request_works(srv, "the slow clients")
        check(srv.alive(), "the server died")
        after = sc.rss_mb(srv.proc.pid)
        print(f"server RSS: {base:.1f} MB after the warm-up, {after:.1f} MB after the slow clients")
        check(after < base + 32, f"RSS grew from {base:.1f} MB to {after:.1f} MB")
    finally:
        srv.stop()


# --- backlog ---

def listen_backlog(port):
    """The backlog of the socket listening on port, from `ss -ltn` (its Send-Q column), or None."""
    try:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"LISTEN\s+\d+\s+(\d+)", out)
    return int(m.group(1)) if m else None


def case_backlog(a):
    srv = sc.Server(a.lmtune, a.model)
    try:
        backlog = listen_backlog(srv.port)
        print(f"listen backlog: {backlog}")
        check(backlog is None or backlog >= 128,
              f"the server listens with a backlog of {backlog}: a burst of connects overflows it (resets, 1 s "
              "SYN retries); cpp-httplib's CPPHTTPLIB_LISTEN_BACKLOG defaults to 5")
        n = 256
        res, barrier = [None] * n, threading.Barrier(n)

        def one(i):
            barrier.wait()
            t0 = time.time()
            try:
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                st, _, _ = read_response(s)
                s.close()
                res[i] = (st, time.time() - t0)
            except Exception as e:  # noqa: BLE001
                res[i] = (repr(e), time.time() - t0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        bad = [r for r in res if r is None or r[0] != 200]
        slowest = max(r[1] for r in res if r)
        print(f"{n} connects at once: {n - len(bad)} answered, slowest {slowest * 1e3:.0f} ms")
        check(not bad, f"{len(bad)} of {n} connects at once failed: {bad[:5]}")
        # A dropped SYN is sent again 1, 3, 7, ... s later: an overflowing backlog shows as seconds here.
        check(slowest < 3, f"the slowest of {n} connects at once took {slowest:.1f} s (SYN retries)")
    finally:
        srv.stop()


# --- slowloris ---

def case_slowloris(a):
    srv = sc.Server(a.lmtune, a.model)
    try:
        n, outs, socks = 300, [], []
        body = json.dumps(sc.chat_body("Define: river", max_tokens=4)).encode()
        for _ in range(n):  # each sends its head a byte a second, under httplib's 5 s read timeout
            outs.append({})
            threading.Thread(target=slow_sender, args=(srv.port, body, 1.0, True, outs[-1], socks),
                             daemon=True).start()
        time.sleep(4)
        t0 = time.time()
        try:
            st, j = srv.post("/v1/chat/completions", sc.chat_body("Define: lantern", max_tokens=4), timeout=10)
            got = f"HTTP {st}"
        except Exception as e:  # noqa: BLE001
            got = repr(e)
        took = time.time() - t0
        print(f"a normal request beside {n} clients sending their heads a byte a second: {got} in {took:.2f} s")
        check(got == "HTTP 200" and took < 5,
              f"{n} slow clients starve the server: a normal request got {got} after {took:.1f} s (one thread "
              "per connection, and a connection that sends a byte every few seconds keeps its thread)")
        check(srv.alive(), "the server died")
    finally:
        # The slow heads would keep their connection threads (and so the server's exit on SIGTERM) for
        # the ~130 s they take to send: shut them down first, as the clients going away would, so that
        # stop() does not wait out its 20 s and kill the server.
        for s in list(socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        srv.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--case", required=True, choices=["load", "slow_clients", "backlog", "slowloris"])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    a = ap.parse_args()
    a.model = os.path.join(a.root, "models", "default")
    {"load": case_load, "slow_clients": case_slow_clients, "backlog": case_backlog, "slowloris": case_slowloris}[a.case](a)
    if sc.FAILS:
        print(f"{len(sc.FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"server {a.case}: all checks passed")


if __name__ == "__main__":
    main()
