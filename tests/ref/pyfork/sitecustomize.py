"""The client of tests/ref/pyfork/server.py (server.py says why). Python loads this module at start-up when
PYTHONPATH names this folder (scripts/test does, while its server runs). A process started as
`python SCRIPT.py ARGS` on a script of the repository's tests/ folder, with LMTUNE_PYFORK naming the server's socket
and the same environment as the server in every variable read at import time, hands its arguments, environment,
working folder and standard streams to the server and exits with the status the script ended with. Any other start
(`-c`, `-m`, another script, no server, a refused connection) goes on as plain Python."""
import os
import sys


def _forward():
    sock_path = os.environ.get("LMTUNE_PYFORK")
    if not sock_path or len(sys.argv) < 1 or not sys.argv[0].endswith(".py"):
        return
    tests = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.abspath(sys.argv[0])
    if not script.startswith(tests + os.sep) or os.path.dirname(script) == os.path.dirname(os.path.abspath(__file__)):
        return
    # Variables that libraries read when imported: the server's imports were made with its own values.
    prefixes = ("HF_", "HUGGINGFACE", "TRANSFORMERS", "TORCH", "PYTORCH", "OMP_", "MKL_", "OPENBLAS", "PYTHON",
                "TOKENIZERS", "CUDA", "NUMPY", "SAFETENSORS")
    mine = {k: v for k, v in os.environ.items() if k.startswith(prefixes)}
    if mine != {k: v for k, v in _server_env(sock_path).items() if k.startswith(prefixes)}:
        return
    import array
    import json
    import socket
    import struct
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
    except OSError:
        return
    body = json.dumps({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    fds = array.array("i", [0, 1, 2])
    try:
        s.sendmsg([struct.pack("!I", len(body)) + body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except OSError:
        return  # nothing was sent: run here
    # From here on the script may be running in the server: never fall through to running it here as well.
    try:
        got = b""
        while len(got) < 4:
            more = s.recv(4 - len(got))
            if not more:
                os._exit(1)  # the server went away mid-run
            got += more
        code = struct.unpack("!i", got)[0]
    except BaseException:
        os._exit(1)
    if code == 0x7FFFFFFF:  # the server ran nothing (server.py's NOT_SERVED): run here
        s.close()
        return
    if code < 0:  # killed by a signal: end the same way
        import signal
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError):  # SIGKILL and SIGSTOP keep their default anyway
            pass
        os.kill(os.getpid(), -code)
        os._exit(128 - code)
    os._exit(code)


def _server_env(sock_path):
    """The server's environment, as it wrote it beside its socket."""
    import json
    path = sock_path + ".env"
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


_forward()
