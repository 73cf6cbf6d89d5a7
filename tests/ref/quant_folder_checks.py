"""Shared by quantized_load_check.py and quantized_fp_check.py: the failure list and check(), the
CLI runner, the greedy text of a generate run, and damaged copies of a quantized model folder."""
import json
import os
import re
import shutil
import subprocess
import sys

from safetensors.numpy import load_file, save_file
from checks import FAILS, check



def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def text_of(out):
    m = re.search(r"==========\n(.*?)\n==========", out, re.S)
    return m.group(1) if m else None


def damaged_copy(src, dst, layer, edit_tensors=None, edit_config=None):
    """A copy of the folder src at dst, edit_tensors(dict) applied to the shard holding layer's
    weight and edit_config(dict) to config.json."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    if edit_tensors:
        for f in [f for f in os.listdir(dst) if f.endswith(".safetensors")]:
            t = load_file(os.path.join(dst, f))
            if f"{layer}.weight" in t:
                edit_tensors(t)
                save_file(t, os.path.join(dst, f), metadata={"format": "mlx"})
    if edit_config:
        c = json.load(open(os.path.join(dst, "config.json")))
        edit_config(c)
        json.dump(c, open(os.path.join(dst, "config.json"), "w"))
    return dst
