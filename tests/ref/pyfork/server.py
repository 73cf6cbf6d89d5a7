"""A fork server for the test suite's Python scripts (scripts/test starts it; CI's time budget). ctest starts ~190
Python processes, and each spent ~3 s of CPU importing torch and transformers before its first check: about a
quarter of the suite's CPU time on two cores. This process imports them once; a test script started with
PYTHONPATH=tests/ref/pyfork (sitecustomize.py there) hands its arguments, environment, working folder and
standard streams to it over a Unix socket, and a fork of this process runs the script with the modules already
loaded. The script's exit status goes back to the process ctest started, which exits with it.

One connection, two forks: this server forks a supervisor for each connection (the server itself never runs test
code and stays single-threaded, so every fork is safe); the supervisor forks the runner, in a process group of
its own, and waits for either the runner's end (its status goes back to the client) or the client's end (ctest's
timeout killed it: the runner's group is killed too).

Usage: server.py SOCKET   (runs until killed; scripts/test kills it when ctest ends)
"""
import array
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys

# What the test scripts import at their top or in their references. Not mlx: its import may start threads, and a
# fork keeps only the forking thread.
import numpy  # noqa: F401
import safetensors.numpy  # noqa: F401
import torch  # noqa: F401
import transformers  # noqa: F401
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

MAX_MSG = 1 << 20


def recv_request(conn):
    fds = array.array("i")
    data, anc, _, _ = conn.recvmsg(MAX_MSG, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise EOFError("request cut short")
        body += more
    return json.loads(body), list(fds)


def run_script(req, fds):
    """In the runner: become the process the client would have been, then run the script as __main__."""
    os.setpgid(0, 0)
    for i, fd in enumerate(fds[:3]):
        os.dup2(fd, i)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.argv = list(req["argv"])
    script = os.path.abspath(sys.argv[0])
    sys.path[0] = os.path.dirname(script)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(code)


NOT_SERVED = 0x7FFFFFFF  # the client then runs the script itself


def supervise(conn):
    req, fds = recv_request(conn)
    if len(fds) != 3:  # no standard streams came: nothing is run here
        for fd in fds:
            os.close(fd)
        conn.sendall(struct.pack("!i", NOT_SERVED))
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        run_script(req, fds)
    for fd in fds:
        os.close(fd)
    while True:
        # The runner's end, or the client's: a closed connection reads as ready (EOF).
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        ready, _, _ = select.select([conn], [], [], 0.05)
        if ready and not conn.recv(1):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os._exit(0)
    code = os.waitstatus_to_exitcode(status)
    conn.sendall(struct.pack("!i", code))
    os._exit(0)


def main():
    path = sys.argv[1]
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    with open(path + ".env.tmp", "w") as f:  # for the clients' check (sitecustomize.py)
        json.dump(dict(os.environ), f)
    os.replace(path + ".env.tmp", path + ".env")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors reaped by the kernel
    print(f"pyfork: serving on {path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = srv.accept()
        if os.fork() == 0:
            srv.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its runner
            try:
                supervise(conn)
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    main()
