"""The failure list and check() the reference scripts share: a failed check is recorded and
printed (its last 3000 characters, on stderr) and the script goes on, so one run reports every
difference; the script exits non-zero at the end when FAILS is not empty."""
import sys

FAILS = []


def cli_case_args():
    """The command line of a script that runs the lmtune binary case by case (--lmtune BIN --root REPO
    --work DIR --case NAME): the parsed arguments with DIR emptied, and the paths of models/default and
    examples/data."""
    import argparse
    import os
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--lmtune", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    return a, os.path.join(a.root, "models", "default"), os.path.join(a.root, "examples", "data")


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg[-3000:], file=sys.stderr)
    return cond


def mlx_lm_cli(args):
    """`python -m mlx_lm ARGS` run in this process: a CompletedProcess with its exit status and what it
    printed. A fresh interpreter costs ~2-3 s of imports (mlx, transformers) on this machine's two
    cores, and the reference scripts run mlx_lm dozens of times each; in-process, the imports are paid
    once. mlx_lm's commands keep no state between calls that these scripts depend on (each loads its
    model folder afresh)."""
    import contextlib
    import io
    import runpy
    import subprocess
    import traceback

    out, err, rc = io.StringIO(), io.StringIO(), 0
    saved = sys.argv
    try:
        sys.argv = ["mlx_lm", *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module("mlx_lm", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # a command that raises: its traceback as a subprocess would print it
        rc = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv = saved
    # As subprocess.run(text=True) reads a child's output: universal newlines ("\r\n" and "\r" become "\n").
    def text(b):
        return b.getvalue().replace("\r\n", "\n").replace("\r", "\n")

    return subprocess.CompletedProcess(["mlx_lm", *map(str, args)], rc, text(out), text(err))
