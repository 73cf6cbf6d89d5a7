"""`lmtune convert` against the real mlx_lm.convert (MLX's CPU backend) on the same inputs.

Usage: convert_check.py --lmtune BIN --root REPO --work DIR --case CASE

Inputs are tiny random models written by transformers' save_pretrained (f32, bf16 and f16; tied
and untied; a llama with llama3 rope scaling; a qwen3 of 8 layers so that the mixed recipes'
first/last eighth and every-third-layer rule all apply; a qwen2 with q/k/v biases) with the
tokenizer of models/default (mlx-lm cannot load a folder without one). Each conversion runs
`lmtune convert ARGS` and `python -m mlx_lm convert ARGS` and requires:
  - both succeed, and print the same stdout ([INFO] Loading / Using dtype / Quantizing /
    Quantized model with X.XXX bits per weight. / Dequantizing);
  - every tensor bit-identical: the same names, dtypes, shapes and bytes;
  - config.json (hence "quantization" and "quantization_config" with their per-layer entries),
    model.safetensors.index.json, README.md and generation_config.json byte-identical;
  - the same file names, except that transformers' save_pretrained (called by mlx-lm) re-writes the
    tokenizer files where lmtune copies them: for those, transformers must load both folders'
    tokenizers to the same ids and chat-template text.
Cases:
quantize_llama  llama f32 untied (no torch_dtype: no cast): -q; 8 bits group 32; mixed_3_6; mxfp4;
                -q --dtype bfloat16. llama bf16 tied (torch_dtype bfloat16): -q; mixed_2_6 group 32;
                nvfp4. llama3-rope f32 with torch_dtype float16 (cast to f16; mlx-lm counts the rope's
                _freqs in bits per weight): 3 bits group 128; no flags (the cast alone).
quantize_qwen   qwen3 f32 (8 layers, untied): -q; group 128 (only down_proj divides: the rest stay
                dense); mixed_4_6; mixed_3_4 with --q-bits 5 (top-level bits 5, layers 3/4).
                qwen3 bf16 tied: 6 bits group 32; mxfp8; --dtype float32 alone. qwen2 f16 with
                biases: -q; mixed_3_6.
dequantize      -d of folders mlx_lm.convert quantized (affine 4, mixed_3_6, mxfp4, bf16 6-bit,
                qwen2 with biases), plain and with --dtype float16, against mlx_lm.convert -d.
shards          --max-shard-size N against mlx-lm with make_shards limited to the same N bytes
                (mlx-lm's own function with the limit as a parameter): the same shard files
                (model-0000i-of-0000n.safetensors), the same weight_map, the same tensors.
refusals        an existing --mlx-path, --q-bits 7, --q-group-size 48, a group size dividing no
                layer, --q-mode foo, -q with -d, a mixed recipe with mxfp4, --upload-repo without a token: lmtune
                exits non-zero with the reason, and leaves neither the output nor a .tmp folder.
                mlx-lm refuses the same for the first, second, fifth, sixth and seventh; for 48 and
                for a group dividing no layer it writes an unquantized model labelled quantized,
                which lmtune refuses (the check records mlx-lm's behaviour so a change shows).
families        each later family's chat_<family> model (generate_ref.py: gemma2, gemma3, smollm3,
                granite, olmo2, phi3, mixtral, qwen3_moe) -q; granite, mixtral and qwen3_moe also
                mixed_3_6, 8 bits to bfloat16 and nvfp4 (granite's and qwen3_moe's quant_predicate);
                the mixtures also --dtype float16 and -d of mlx-lm's 4-bit folder (experts stacked
                as switch_mlp both ways).
hub             a Hub id (test-org/tiny-llama) resolved from a Hugging Face cache made under WORK,
                offline (HF_HUB_OFFLINE=1): the same output as mlx-lm's, but for README.md, which
                mlx-lm builds from the repo's own card and lmtune from the template (with base_model).
progress        on a pseudo-terminal stderr shows a progress bar ending at 100%; on a pipe, nothing.
mlx_generate    models/default (f32 via --dtype float32) converted by lmtune (affine 4 group 64,
                8 bits group 32, mixed_3_6) loads in mlx-lm (`mlx_lm generate`, which calls
                mlx_lm.utils.load) and gives the same greedy text as `lmtune generate` on the folder
                (compared stripped: mlx-lm's streaming detokenizer trims a leading space); one
                recipe's text must differ from the f32 model's.
"""
import argparse
import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from checks import FAILS, check
from checks import mlx_lm_cli

TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt"}


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- models ---

def save_model(a, name, make, dtype, config_edit=None):
    import torch
    d = os.path.join(a.work, "models", name)
    if os.path.isdir(d):
        return d
    torch.manual_seed(zlib.crc32(name.encode()))
    m = make().to(dtype)
    with torch.no_grad():  # visible norms (transformers initialises them to ones)
        for n, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    m.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.root, "models", "default", f), d)
    if config_edit:
        path = os.path.join(d, "config.json")
        c = json.load(open(path))
        config_edit(c)
        json.dump(c, open(path, "w"), indent=2)
    return d


def llama(a, name, dtype, tie, rope=None, edit=None):
    from transformers import LlamaConfig, LlamaForCausalLM
    kw = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=tie)
    if rope:
        kw["rope_parameters"] = rope
    return save_model(a, name, lambda: LlamaForCausalLM(LlamaConfig(**kw)), dtype, edit)


def qwen3(a, name, dtype, tie):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tie)
    return save_model(a, name, lambda: Qwen3ForCausalLM(cfg), dtype,
                      (lambda c: c.update(torch_dtype="bfloat16")) if dtype_name(dtype) == "bfloat16" else None)


def qwen2(a, name, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return save_model(a, name, lambda: Qwen2ForCausalLM(cfg), dtype,
                      lambda c: c.update(torch_dtype="float16", rope_theta=c["rope_parameters"]["rope_theta"]))


def dtype_name(dt):
    return str(dt).replace("torch.", "")


def llama_models(a):
    import torch
    f32 = llama(a, "llama_f32", torch.float32, False)
    bf16 = llama(a, "llama_bf16_tied", torch.bfloat16, True, edit=lambda c: c.update(torch_dtype="bfloat16"))
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

    def mlx_reads_rope(c):  # mlx-lm's llama reads rope_scaling / rope_theta, not rope_parameters
        c.update(torch_dtype="float16", rope_scaling=dict(rope), rope_theta=rope["rope_theta"])
    llama3 = llama(a, "llama3_rope_f32", torch.float32, False, rope=rope, edit=mlx_reads_rope)
    return f32, bf16, llama3


# --- comparing folders ---

def tensors_of(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        b = open(f, "rb").read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        for k, v in h.items():
            if k != "__metadata__":
                s, e = v["data_offsets"]
                out[k] = (os.path.basename(f), v["dtype"], tuple(v["shape"]), b[8 + n + s:8 + n + e])
        check(h.get("__metadata__") == {"format": "mlx"}, f"{f}: metadata {h.get('__metadata__')}")
    return out


def tokenizers_equal(d1, d2):
    from transformers import AutoTokenizer
    t1, t2 = AutoTokenizer.from_pretrained(d1), AutoTokenizer.from_pretrained(d2)
    text = "Define: lantern. A lamp with a transparent case!"
    if t1.encode(text) != t2.encode(text):
        return False
    if bool(t1.chat_template) != bool(t2.chat_template):
        return False
    if t1.chat_template:
        msgs = [{"role": "user", "content": text}]
        return t1.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
            t2.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return True


def compare_folders(tag, ours, theirs):
    fo, ft = set(os.listdir(ours)), set(os.listdir(theirs))
    check(fo - TOKENIZER_FILES == ft - TOKENIZER_FILES, f"{tag}: files {sorted(fo)} vs mlx-lm {sorted(ft)}")
    for f in ("config.json", "model.safetensors.index.json", "README.md", "generation_config.json"):
        if f in ft:
            a, b = open(os.path.join(ours, f), "rb").read(), open(os.path.join(theirs, f), "rb").read()
            check(a == b, f"{tag}: {f} differs:\n--- lmtune\n{a.decode()[:1500]}\n--- mlx-lm\n{b.decode()[:1500]}")
    to, tt = tensors_of(ours), tensors_of(theirs)
    check(sorted(to) == sorted(tt), f"{tag}: tensor names differ: only lmtune {sorted(set(to) - set(tt))[:5]}, "
                                    f"only mlx-lm {sorted(set(tt) - set(to))[:5]}")
    bad = [k for k in to if k in tt and to[k] != tt[k]]
    for k in bad[:5]:
        check(False, f"{tag}: {k}: lmtune {to[k][:3]} vs mlx-lm {tt[k][:3]}"
                     f"{' (bytes differ)' if to[k][:3] == tt[k][:3] else ''}")
    check(tokenizers_equal(ours, theirs), f"{tag}: the tokenizers load differently")
    return len(to)


def convert_both(a, tag, src, args, env=None):
    ours, theirs = os.path.join(a.work, "out", tag + "-lmtune"), os.path.join(a.work, "out", tag + "-mlx")
    for d in (ours, theirs):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(a.work, "out"), exist_ok=True)
    r1 = run([a.lmtune, "convert", "--hf-path", src, "--mlx-path", ours] + args)
    theirs_args = ["convert", "--hf-path", src, "--mlx-path", theirs] + args
    r2 = mlx_lm_cli(theirs_args) if env is None else run([sys.executable, "-m", "mlx_lm"] + theirs_args, env=env)
    ok = check(r1.returncode == 0, f"{tag}: lmtune convert {args}: rc {r1.returncode}\n{r1.stderr[-2000:]}")
    ok &= check(r2.returncode == 0, f"{tag}: mlx_lm convert {args}: rc {r2.returncode}\n{r2.stderr[-2000:]}")
    if not ok:
        return None
    check(r1.stdout == r2.stdout, f"{tag}: stdout differs:\n--- lmtune\n{r1.stdout}--- mlx-lm\n{r2.stdout}")
    n = compare_folders(tag, ours, theirs)
    bpw = re.search(r"Quantized model with (\S+) bits", r1.stdout)
    print(f"{tag}: {' '.join(args) or '(no flags)'}: {n} tensors identical"
          f"{', ' + bpw.group(1) + ' bits per weight' if bpw else ''}")
    return ours, theirs


# --- cases ---

def case_quantize_llama(a):
    f32, bf16, llama3 = llama_models(a)
    runs = [("llama_f32_q4", f32, ["-q"]),
            ("llama_f32_q8g32", f32, ["-q", "--q-bits", "8", "--q-group-size", "32"]),
            ("llama_f32_mixed_3_6", f32, ["-q", "--quant-predicate", "mixed_3_6"]),
            ("llama_f32_mxfp4", f32, ["-q", "--q-mode", "mxfp4"]),
            ("llama_f32_q4_bf16", f32, ["-q", "--dtype", "bfloat16"]),
            ("llama_bf16_q4", bf16, ["-q"]),
            ("llama_bf16_mixed_2_6_g32", bf16, ["-q", "--quant-predicate", "mixed_2_6", "--q-group-size", "32"]),
            ("llama_bf16_nvfp4", bf16, ["-q", "--q-mode", "nvfp4"]),
            ("llama3_rope_q3g128", llama3, ["-q", "--q-bits", "3", "--q-group-size", "128"]),
            ("llama3_rope_cast", llama3, [])]
    for tag, src, args in runs:
        convert_both(a, tag, src, args)


def case_quantize_qwen(a):
    import torch
    q3 = qwen3(a, "qwen3_f32", torch.float32, False)
    q3b = qwen3(a, "qwen3_bf16_tied", torch.bfloat16, True)
    q2 = qwen2(a, "qwen2_f16_bias", torch.float16)
    runs = [("qwen3_f32_q4", q3, ["-q"]),
            ("qwen3_f32_g128", q3, ["-q", "--q-group-size", "128"]),
            ("qwen3_f32_mixed_4_6", q3, ["-q", "--quant-predicate", "mixed_4_6"]),
            ("qwen3_f32_mixed_3_4_b5", q3, ["-q", "--quant-predicate", "mixed_3_4", "--q-bits", "5"]),
            ("qwen3_bf16_q6g32", q3b, ["-q", "--q-bits", "6", "--q-group-size", "32"]),
            ("qwen3_bf16_mxfp8", q3b, ["-q", "--q-mode", "mxfp8"]),
            ("qwen3_bf16_to_f32", q3b, ["--dtype", "float32"]),
            ("qwen2_f16_q4", q2, ["-q"]),
            ("qwen2_f16_mixed_3_6", q2, ["-q", "--quant-predicate", "mixed_3_6"])]
    for tag, src, args in runs:
        convert_both(a, tag, src, args)
    c = json.load(open(os.path.join(a.work, "out", "qwen3_f32_g128-lmtune", "config.json")))
    w = tensors_of(os.path.join(a.work, "out", "qwen3_f32_g128-lmtune"))
    check("model.layers.0.mlp.down_proj.scales" in w and "model.layers.0.mlp.up_proj.scales" not in w,
          "qwen3 group 128: down_proj (in 128) quantized and up_proj (in 64) dense expected")
    check(c["quantization"] == {"group_size": 128, "bits": 4, "mode": "affine"}, f"qwen3 g128: {c['quantization']}")


def case_families(a):
    # generate_ref.py's chat_<family> models (64 wide, Llama 2's tokenizer): each family's module
    # order; granite's and qwen3_moe's own quant_predicate (8 bits for o_proj / down_proj / lm_head,
    # for the router); the mixtures' experts written stacked (switch_mlp) from transformers' per-expert
    # files, and read back from mlx-lm's stacked ones (-d).
    for fam in ("gemma2", "gemma3", "gemma3mm", "smollm3", "granite", "olmo2", "phi3", "mixtral", "qwen3_moe"):
        src = os.path.join(a.models, "chat_" + fam)
        convert_both(a, fam + "_q4", src, ["-q"])
        if fam in ("granite", "mixtral", "qwen3_moe"):
            convert_both(a, fam + "_mixed_3_6", src, ["-q", "--quant-predicate", "mixed_3_6"])
            convert_both(a, fam + "_q8_bf16", src, ["-q", "--q-bits", "8", "--dtype", "bfloat16"])
            convert_both(a, fam + "_nvfp4", src, ["-q", "--q-mode", "nvfp4"])
        if fam in ("mixtral", "qwen3_moe"):
            q4 = os.path.join(a.work, "out", fam + "_q4-mlx")
            convert_both(a, fam + "_dequantize", q4, ["-d"])
            convert_both(a, fam + "_f16", src, ["--dtype", "float16"])


def case_dequantize(a):
    import torch
    f32, bf16, _ = llama_models(a)
    q3b = qwen3(a, "qwen3_bf16_tied", torch.bfloat16, True)
    q2 = qwen2(a, "qwen2_f16_bias", torch.float16)
    sources = [("llama_q4", f32, ["-q"]), ("llama_mixed", f32, ["-q", "--quant-predicate", "mixed_3_6"]),
               ("llama_mxfp4", f32, ["-q", "--q-mode", "mxfp4"]), ("bf16_q4", bf16, ["-q"]),
               ("qwen3_q6", q3b, ["-q", "--q-bits", "6", "--q-group-size", "32"]), ("qwen2_q4", q2, ["-q"])]
    for tag, src, args in sources:
        q = os.path.join(a.work, "quantized", tag)
        shutil.rmtree(q, ignore_errors=True)
        r = mlx_lm_cli(["convert", "--hf-path", src, "--mlx-path", q] + args)
        if not check(r.returncode == 0, f"{tag}: mlx_lm convert {args}: {r.stderr[-2000:]}"):
            continue
        convert_both(a, tag + "_deq", q, ["-d"])
        if tag in ("llama_q4", "bf16_q4", "llama_mxfp4"):
            convert_both(a, tag + "_deq_f16", q, ["-d", "--dtype", "float16"])


SHARDED_MLX = r"""
import sys
import mlx_lm.utils as u
limit = int(sys.argv[1])
def make_shards(weights, max_file_size_gb=None):  # mlx-lm's make_shards with the limit in bytes
    shards, shard_size = [], 0
    for k, v in weights.items():
        if not shards or shard_size + v.nbytes > limit:
            shards.append({})
            shard_size = 0
        shards[-1][k] = v
        shard_size += v.nbytes
    return shards
u.make_shards = make_shards
from mlx_lm.convert import main
sys.argv = ["mlx_lm.convert"] + sys.argv[2:]
main()
"""


def case_shards(a):
    import torch
    f32, _, _ = llama_models(a)
    q2 = qwen2(a, "qwen2_f16_bias", torch.float16)
    q3 = qwen3(a, "qwen3_f32", torch.float32, False)
    for tag, src, limit, args in [("llama_f32_shards", f32, 300000, []), ("llama_q4_shards", f32, 60000, ["-q"]),
                                  ("qwen2_shards", q2, 40000, ["-q", "--quant-predicate", "mixed_3_6"]),
                                  ("qwen3_shards", q3, 100000, [])]:
        ours, theirs = os.path.join(a.work, "out", tag + "-lmtune"), os.path.join(a.work, "out", tag + "-mlx")
        for d in (ours, theirs):
            shutil.rmtree(d, ignore_errors=True)
        r1 = run([a.lmtune, "convert", "--hf-path", src, "--mlx-path", ours, "--max-shard-size", str(limit)] + args)
        r2 = run([sys.executable, "-c", SHARDED_MLX, str(limit), "--hf-path", src, "--mlx-path", theirs] + args)
        if not (check(r1.returncode == 0, f"{tag}: lmtune: {r1.stderr[-2000:]}") and
                check(r2.returncode == 0, f"{tag}: mlx-lm: {r2.stderr[-2000:]}")):
            continue
        check(r1.stdout == r2.stdout, f"{tag}: stdout differs:\n{r1.stdout}\n{r2.stdout}")
        n = compare_folders(tag, ours, theirs)
        to, tt = tensors_of(ours), tensors_of(theirs)
        check({k: v[0] for k, v in to.items()} == {k: v[0] for k, v in tt.items()}, f"{tag}: shard assignment differs")
        shards = sorted({v[0] for v in to.values()})
        check(len(shards) > 2, f"{tag}: only {shards}")
        print(f"{tag}: {n} tensors in {len(shards)} shards ({shards[0]} ...), as mlx-lm's")


def case_refusals(a):
    f32, _, _ = llama_models(a)
    from transformers import LlamaConfig, LlamaForCausalLM
    import torch
    odd = save_model(a, "llama_odd_widths", lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=2048, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
        num_key_value_heads=1, tie_word_embeddings=True)), torch.float32)
    out = os.path.join(a.work, "out")
    os.makedirs(out, exist_ok=True)
    existing = os.path.join(out, "existing")
    os.makedirs(existing, exist_ok=True)
    target = os.path.join(out, "refused")
    # (tag, source, flags, lmtune's message, mlx-lm's exit code, mlx-lm's message)
    cases = [("existing", f32, ["--mlx-path", existing, "-q"], "Cannot save to the path .* as it already exists",
              1, "as it already exists"),
             ("bits7", f32, ["-q", "--q-bits", "7"], "bits .*got 7", 1, "number of bits 7 is not supported"),
             ("group48", f32, ["-q", "--q-group-size", "48"], "group sizes .*got 48", 0, None),
             ("no_layer_divides", odd, ["-q"], "divides the input size of no layer", 0, None),
             ("unknown_mode", f32, ["-q", "--q-mode", "foo"], "invalid choice: 'foo'", 2, "invalid choice"),
             ("quantize_and_dequantize", f32, ["-q", "-d"], "Choose either quantize or dequantize", 1,
              "Choose either quantize or dequantize"),
             ("mixed_mxfp4", f32, ["-q", "--q-mode", "mxfp4", "--quant-predicate", "mixed_3_6"],
              "Quant predicates only support 'affine'", 1, "Quant predicates only support 'affine'"),
             ("upload", f32, ["--upload-repo", "me/model"], "--upload-repo: no Hugging Face token", None, None)]
    no_token = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    no_token["HF_TOKEN_PATH"] = os.path.join(a.work, "no-such-token")  # not the real home's token
    for tag, src, flags, ours_msg, mlx_rc, mlx_msg in cases:
        path = existing if tag == "existing" else target
        args = ["--hf-path", src] + ([] if "--mlx-path" in flags else ["--mlx-path", target]) + flags
        shutil.rmtree(target, ignore_errors=True)
        r = run([a.lmtune, "convert"] + args, env=no_token)
        last = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"{tag}: lmtune rc {r.returncode}: {last}")
        check(r.returncode in (1, 2), f"{tag}: lmtune rc {r.returncode} (want 1 or 2)\n{r.stdout}{r.stderr}")
        check(re.search(ours_msg, r.stderr) is not None, f"{tag}: lmtune's message lacks /{ours_msg}/: {r.stderr}")
        check(tag == "existing" or not os.path.exists(target), f"{tag}: lmtune left {target}")
        check(os.listdir(existing) == [], f"{tag}: lmtune wrote into the existing folder")
        left = [f for f in os.listdir(out) if ".tmp." in f]
        check(not left, f"{tag}: temporary folders left: {left}")
        if mlx_rc is None:
            continue
        shutil.rmtree(target, ignore_errors=True)
        m = mlx_lm_cli(["convert"] + args)
        print(f"{tag}: mlx-lm rc {m.returncode}" + ("" if mlx_rc else
              f" (writes {path}: {re.search(r'Quantized model with (.*)', m.stdout).group(0) if m.returncode == 0 else '?'})"))
        check(m.returncode == mlx_rc, f"{tag}: mlx-lm rc {m.returncode}, expected {mlx_rc}: {m.stderr[-1500:]}")
        if mlx_msg:
            check(mlx_msg in m.stderr, f"{tag}: mlx-lm's message lacks {mlx_msg!r}: {m.stderr[-1500:]}")
    shutil.rmtree(target, ignore_errors=True)


PROMPT = "Define: lantern"


def text_of(out):
    m = re.search(r"==========\n(.*?)\n==========", out, re.S)
    return m.group(1) if m else None


def case_mlx_generate(a):
    src = os.path.join(a.root, "models", "default")
    out = os.path.join(a.work, "out")
    os.makedirs(out, exist_ok=True)

    def lmtune_text(d):
        r = run([a.lmtune, "generate", "--model", d, "--device", "cpu", "--temp", "0", "-m", "24",
                 "--ignore-chat-template", "-p", PROMPT])
        check(r.returncode == 0, f"lmtune generate {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
        return text_of(r.stdout)

    def mlx_text(d):
        r = mlx_lm_cli(["generate", "--model", d, "--temp", "0", "-m", "24",
                 "--ignore-chat-template", "-p", PROMPT])
        check(r.returncode == 0, f"mlx_lm generate {d}: rc {r.returncode}\n{r.stderr[-2000:]}")
        return text_of(r.stdout)

    base = lmtune_text(src)
    differs = False
    for tag, args in [("q4", ["-q"]), ("q8g32", ["-q", "--q-bits", "8", "--q-group-size", "32"]),
                      ("mixed_3_6", ["-q", "--quant-predicate", "mixed_3_6"])]:
        d = os.path.join(out, "default-" + tag)
        shutil.rmtree(d, ignore_errors=True)
        r = run([a.lmtune, "convert", "--hf-path", src, "--mlx-path", d, "--dtype", "float32"] + args)
        if not check(r.returncode == 0, f"{tag}: lmtune convert: {r.stderr[-2000:]}"):
            continue
        ours, theirs = lmtune_text(d), mlx_text(d)
        print(f"{tag}: lmtune {ours!r}\n{' ' * len(tag)}  mlx-lm {theirs!r}")
        check(ours is not None and theirs is not None and ours.strip() == theirs.strip(),
              f"{tag}: lmtune {ours!r} != mlx-lm {theirs!r}")
        differs |= ours != base
    print(f"f32 model: {base!r}")
    check(differs, f"no recipe changed the text of the f32 model ({base!r}): quantization had no effect?")


def case_hub(a):
    f32, _, _ = llama_models(a)
    repo_id = "test-org/tiny-llama"
    hub = os.path.join(a.work, "hub")
    shutil.rmtree(hub, ignore_errors=True)
    repo = os.path.join(hub, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", "1" * 40)
    shutil.copytree(f32, snap)
    open(os.path.join(snap, "README.md"), "w").write("---\nlicense: mit\n---\n\n# tiny llama\n")
    os.makedirs(os.path.join(repo, "refs"))
    open(os.path.join(repo, "refs", "main"), "w").write("1" * 40)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=hub)
    ours, theirs = os.path.join(a.work, "out", "hub-lmtune"), os.path.join(a.work, "out", "hub-mlx")
    for d in (ours, theirs):
        shutil.rmtree(d, ignore_errors=True)
    r1 = run([a.lmtune, "convert", "--hf-path", repo_id, "--mlx-path", ours, "-q"], env=env)
    r2 = run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", repo_id, "--mlx-path", theirs, "-q"], env=env)
    if not (check(r1.returncode == 0, f"hub: lmtune: {r1.stderr[-2000:]}") and
            check(r2.returncode == 0, f"hub: mlx-lm: {r2.stderr[-2000:]}")):
        return
    check(r1.stdout == r2.stdout, f"hub: stdout differs:\n{r1.stdout}\n{r2.stdout}")
    # mlx-lm's card starts from the repo's README (license: mit here); lmtune's is the template card.
    card = open(os.path.join(ours, "README.md")).read()
    check(card == "---\nlanguage: en\nbase_model: test-org/tiny-llama\nlibrary_name: mlx\n"
                  "pipeline_tag: text-generation\ntags:\n- mlx\n---\n", f"hub: lmtune's card {card!r}")
    print("mlx-lm's card:", repr(open(os.path.join(theirs, "README.md")).read()))
    shutil.copy(os.path.join(theirs, "README.md"), os.path.join(a.work, "mlx-card.md"))
    shutil.copy(os.path.join(ours, "README.md"), os.path.join(theirs, "README.md"))
    n = compare_folders("hub", ours, theirs)
    print(f"hub: {repo_id} from the cache (offline): {n} tensors identical, card {card!r}")


def case_progress(a):
    import pty
    src = os.path.join(a.root, "models", "default")
    out = os.path.join(a.work, "out")
    os.makedirs(out, exist_ok=True)
    for tty in (True, False):
        d = os.path.join(out, "progress-" + ("tty" if tty else "pipe"))
        shutil.rmtree(d, ignore_errors=True)
        cmd = [a.lmtune, "convert", "--hf-path", src, "--mlx-path", d, "-q"]
        if tty:
            master, slave = pty.openpty()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave)
            os.close(slave)
            err = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                err += chunk
            os.close(master)
            stdout = p.communicate()[0].decode()
            rc, err = p.returncode, err.decode(errors="replace")
        else:
            r = run(cmd)
            rc, stdout, err = r.returncode, r.stdout, r.stderr
        check(rc == 0, f"progress tty={tty}: rc {rc}: {err[-1000:]}")
        check("Quantized model with" in stdout, f"progress tty={tty}: stdout {stdout!r}")
        if tty:
            check(re.search(r"\r\[convert\] 100% \|#+\|", err) is not None, f"no progress bar on a terminal: {err!r}")
        else:
            check("[convert]" not in err, f"a progress bar on a pipe: {err!r}")
        print(f"tty={tty}: stderr {err[-120:]!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lmtune", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--case", required=True, choices=["quantize_llama", "quantize_qwen", "dequantize", "shards",
                                                     "refusals", "mlx_generate", "progress", "hub", "families"])
    p.add_argument("--models", help="generate_ref.py's output (the families case)")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    globals()["case_" + a.case](a)
    if FAILS:
        print(f"{len(FAILS)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
