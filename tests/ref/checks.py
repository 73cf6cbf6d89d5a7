"""The failure list and check() the reference scripts share: a failed check is recorded and
printed (its last 3000 characters, on stderr) and the script goes on, so one run reports every
difference; the script exits non-zero at the end when FAILS is not empty."""
import sys

FAILS = []


def check(cond, msg):
    if not cond:
        FAILS.append(msg)
        print("FAIL:", msg[-3000:], file=sys.stderr)
    return cond
