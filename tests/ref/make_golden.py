"""Writes tiny random-weight models of every registered family (src/models/registry.cpp lists
each family's cases by these CASES keys) with Hugging Face transformers, and for a
fixed batch the reference logits, loss and the gradient of every weight (golden.safetensors).

Usage: make_golden.py OUT_DIR [--device cpu|cuda] [--dtype float32|bfloat16]
Each case lands in OUT_DIR/<case>/ (config.json, model.safetensors, golden.safetensors).
The reference always runs in float32 on the CPU; with --dtype bfloat16 the script also runs
transformers in bf16 on --device and stores that run's relative error against the f32
reference, so the C++ bf16 test can hold our error to the same standard.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers import (Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM, GraniteConfig,
                          GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Olmo2Config, Olmo2ForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM)

CASES = {
    # Grouped-query attention, untied, odd sizes.
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=101, hidden_size=48, intermediate_size=97, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0)),
    # Tied embeddings, llama3 rope scaling, attention and MLP biases.
    "llama_tied_llama3rope_bias": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=67, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8))),
    # head_dim larger than hidden/heads, linear rope scaling, multi-head (no GQA).
    "llama_headdim_linearrope": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=53, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
    # Sliding window shorter than the sequence.
    "mistral_window": (MistralConfig, MistralForCausalLM, dict(
        vocab_size=89, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, sliding_window=4, rope_theta=1e6)),
    # q/k/v bias, tied embeddings.
    "qwen2_bias_tied": (Qwen2Config, Qwen2ForCausalLM, dict(
        vocab_size=79, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    # qwen2 with sliding attention from layer 1 on (max_window_layers=1).
    "qwen2_sliding": (Qwen2Config, Qwen2ForCausalLM, dict(
        vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
        sliding_window=3, max_window_layers=1)),
    # q_norm / k_norm over a head_dim wider than hidden / heads, untied, GQA.
    "qwen3_qknorm": (Qwen3Config, Qwen3ForCausalLM, dict(
        vocab_size=71, hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6)),
    # Tied embeddings, attention_bias (q/k/v/o), sliding attention from layer 1 on.
    "qwen3_tied_bias_sliding": (Qwen3Config, Qwen3ForCausalLM, dict(
        vocab_size=59, hidden_size=36, intermediate_size=60, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=3, head_dim=8, tie_word_embeddings=True,
        attention_bias=True, use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    # Gemma: (1 + w) norms, sqrt(hidden) embedding scale, GeGLU (tanh), tied; one kv head and a
    # head_dim wider than hidden / heads, as the 2B model has.
    "gemma_mqa": (GemmaConfig, GemmaForCausalLM, dict(
        vocab_size=73, hidden_size=40, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, hidden_act="gelu_pytorch_tanh")),
    # Untied head, GQA, the legacy hidden_act "gelu" (read as the tanh approximation).
    "gemma_untied_gqa": (GemmaConfig, GemmaForCausalLM, dict(
        vocab_size=57, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        hidden_act="gelu", rope_theta=1e4)),
    # Gemma 3 text: sandwich norms, (1 + w) q/k norms, query_pre_attn_scalar, sliding layers (window 4
    # < T) on their own rope base between full ones (pattern 2 over 3 layers), one kv head, tied.
    "gemma3_sliding": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        vocab_size=71, hidden_size=40, intermediate_size=88, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24,
        sliding_window=4, sliding_window_pattern=2)),
    # Untied head, GQA, linear rope scaling on the full layers only.
    "gemma3_untied_scaled": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        vocab_size=61, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        sliding_window=3, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 2000.0}})),
    # SmolLM3: tied, GQA, the middle layer without rotary positions (no_rope_layers).
    "smollm3_nope": (SmolLM3Config, SmolLM3ForCausalLM, dict(
        vocab_size=67, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, no_rope_layers=[1, 0, 1], pad_token_id=None,
        rope_theta=5e5)),
    # Untied, MLP biases, every 2nd layer without rope (no_rope_layer_interval) and sliding there
    # (window 4 < T). No attention bias: in a layer without rope, k's bias adds the same q.b to every
    # score of a query, so its true gradient is 0 and both sides' values are rounding noise.
    "smollm3_untied_bias": (SmolLM3Config, SmolLM3ForCausalLM, dict(
        vocab_size=59, hidden_size=40, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False,
        mlp_bias=True, no_rope_layer_interval=2, use_sliding_window=True, sliding_window=4,
        pad_token_id=None)),
    # Granite: all four multipliers away from 1, GQA, tied, attention bias.
    "granite_multipliers": (GraniteConfig, GraniteForCausalLM, dict(
        vocab_size=83, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True,
        embedding_multiplier=3.5, attention_multiplier=0.11, residual_multiplier=0.4,
        logits_scaling=2.5, rope_theta=1e4)),
    # OLMo 2: norms after attention and MLP only, q/k norms over all heads, GQA, untied.
    "olmo2_postnorm": (Olmo2Config, Olmo2ForCausalLM, dict(
        vocab_size=77, hidden_size=48, intermediate_size=88, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=5e5, pad_token_id=None)),
    # Multi-head, attention bias (q/k/v/o), tied, linear rope scaling.
    "olmo2_mha_bias": (Olmo2Config, Olmo2ForCausalLM, dict(
        vocab_size=55, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
        num_attention_heads=4, attention_bias=True, tie_word_embeddings=True, pad_token_id=None,
        eos_token_id=None, rope_scaling=dict(rope_type="linear", factor=2.0))),
    # Phi-3: fused qkv_proj and gate_up_proj, GQA, untied.
    "phi3_fused": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=69, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, rope_theta=1e4)),
    # longrope with the sequence inside original_max_position_embeddings (16 > T): the short factors,
    # and the attention factor sqrt(1 + ln 4 / ln 16) from max_position_embeddings 64.
    "phi3_longrope_short": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=71, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, max_position_embeddings=64, original_max_position_embeddings=16,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.3, 1.9, 2.6, 3.1, 4.5],
                      "long_factor": [1.5, 2.5, 4.0, 7.0, 11.0, 16.0]})),
    # The same past it (original 4 < T): the long factors, and an explicit attention_factor.
    "phi3_longrope_long": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=71, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, max_position_embeddings=64, original_max_position_embeddings=4,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.3, 1.9, 2.6, 3.1, 4.5],
                      "long_factor": [1.5, 2.5, 4.0, 7.0, 11.0, 16.0], "attention_factor": 1.3})),
    # A sliding window on every layer (as Phi-3-mini-4k's 2047), multi-head, tied.
    "phi3_window_tied": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=63, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, sliding_window=4, tie_word_embeddings=True,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)),
    # Gemma 2: soft-caps small enough that tanh bends (scores and logits reach several times
    # them), sandwich norms, alternating sliding (window 4 < T) and full layers, one kv head.
    "gemma2_softcaps": (Gemma2Config, Gemma2ForCausalLM, dict(
        vocab_size=67, hidden_size=40, intermediate_size=88, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=20,
        sliding_window=4, attn_logit_softcapping=1.5, final_logit_softcapping=2.0, pad_token_id=None)),
    # Untied, GQA, both caps off (null), as Gemma-2 files fine-tuned without them are written.
    "gemma2_untied_nocap": (Gemma2Config, Gemma2ForCausalLM, dict(
        vocab_size=59, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        sliding_window=3, attn_logit_softcapping=None, final_logit_softcapping=None, pad_token_id=None)),
    # A window wider than the sequences of the adapter checks: mlx-lm's gemma2 ignores sliding_window.
    "gemma2_wide_window": (Gemma2Config, Gemma2ForCausalLM, dict(
        vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=32, attn_logit_softcapping=2.5, final_logit_softcapping=3.0, pad_token_id=None)),
    # Mixtral: every MLP 4 experts, top 2 renormalized (the checkpoint's block_sparse_moe w1/w2/w3).
    "mixtral_top2": (MixtralConfig, MixtralForCausalLM, dict(
        vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=None, pad_token_id=None, rope_theta=1e6)),
    # Qwen3-MoE: q/k norms, 4 experts of width 16, top 2 with norm_topk_prob.
    "qwen3_moe_norm": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        vocab_size=59, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, pad_token_id=None)),
    # Top 3 of 6 without renormalizing, and layer 0 dense (mlp_only_layers).
    "qwen3_moe_dense_layer": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        vocab_size=53, hidden_size=32, intermediate_size=40, moe_intermediate_size=12,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=6, num_experts_per_tok=3, norm_topk_prob=False, mlp_only_layers=[0],
        pad_token_id=None)),
    # (Cases added later go last: each case's seed follows its place in this dict.)
    # Phi-4-mini's partial rotary: the first 3/4 of each head's 16 dimensions rotate (12), the rest pass;
    # longrope factors over the 6 rotated pairs, the sequence past original_max_position_embeddings.
    "phi3_partial_longrope": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=71, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, partial_rotary_factor=0.75, max_position_embeddings=64,
        original_max_position_embeddings=4,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.3, 1.9, 2.6, 3.1, 4.5],
                      "long_factor": [1.5, 2.5, 4.0, 7.0, 11.0, 16.0]})),
    # Half of each head rotated, no scaling.
    "phi3_partial_half": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=69, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, partial_rotary_factor=0.5)),
}

# pad_token_id None where a config's default names a token: torch's nn.Embedding(padding_idx) leaves
# that row's gradient at zero, a choice of the reference's, not of the model (mlx-lm trains the row).

B, T = 2, 11


def randomize(model):
    """Weights larger than transformers' default 0.02 init, so that every path matters (shared by
    the other reference scripts, which must draw the same values in the same order)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)


def batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    targets[1, :3] = -100  # a masked prompt
    return ids, targets


def run(model, ids, targets):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters()}
    return logits.detach().float().cpu(), loss.detach().float().cpu(), grads


def saved_names(grads, d):
    """transformers 5 keeps a MoE layer's experts stacked (experts.gate_up_proj (E, 2 ff, C), gate's rows
    first; experts.down_proj (E, C, ff)) but saves them one by one under the checkpoint's names
    (mixtral's block_sparse_moe.experts.e.w1/w3/w2): the reference gradients take the saved names."""
    from safetensors import safe_open
    keys = set(safe_open(os.path.join(d, "model.safetensors"), "pt").keys())
    out = {}
    for n, g in grads.items():
        if ".mlp.experts." in n:
            layer = n[: n.index(".mlp.experts.")]
            mix = f"{layer}.block_sparse_moe.gate.weight" in keys
            base = f"{layer}.block_sparse_moe.experts." if mix else f"{layer}.mlp.experts."
            gate, up, down = ("w1", "w3", "w2") if mix else ("gate_proj", "up_proj", "down_proj")
            for e in range(g.shape[0]):
                if n.endswith("gate_up_proj"):
                    ff = g.shape[1] // 2
                    out[f"{base}{e}.{gate}.weight"] = g[e, :ff].contiguous()
                    out[f"{base}{e}.{up}.weight"] = g[e, ff:].contiguous()
                else:
                    out[f"{base}{e}.{down}.weight"] = g[e].contiguous()
        elif n.endswith(".mlp.gate.weight") and n.replace(".mlp.", ".block_sparse_moe.") in keys:
            out[n.replace(".mlp.", ".block_sparse_moe.")] = g
        else:
            out[n] = g
    return out


def rel(a, r):
    return float((a - r).abs().max() / r.abs().max().clamp_min(1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    torch.manual_seed(0)
    for i, name in enumerate(a.cases.split(",")):
        cfg_cls, model_cls, kw = CASES[name]
        cfg = cfg_cls(**kw, attn_implementation="eager")
        torch.manual_seed(100 + i)
        model = model_cls(cfg).float().eval()
        randomize(model)
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        ids, targets = batch(cfg.vocab_size, 7 + i)
        logits, loss, grads = run(model, ids, targets)
        grads = saved_names(grads, d)
        out = {"ids": ids.int().contiguous(), "targets": targets.int().contiguous(),
               "logits": logits.contiguous(), "loss": loss.reshape(1).contiguous()}
        for n, g in grads.items():
            out["grad." + n] = g.contiguous()
        meta = {"case": name, "transformers": __import__("transformers").__version__}
        if a.dtype != "float32":
            dt = getattr(torch, a.dtype)
            # Experts as a loop of per-expert products: transformers' grouped_mm on CUDA needs
            # 16-byte strides, which the tiny MoE cases' widths are not.
            m2 = model_cls.from_pretrained(d, torch_dtype=dt, attn_implementation="eager",
                                           experts_implementation="eager").to(a.device)
            l2, s2, g2 = run(m2, ids.to(a.device), targets.to(a.device))
            g2 = saved_names(g2, d)
            meta["ref_logits_rel_err"] = str(rel(l2, logits))
            meta["ref_loss_rel_err"] = str(rel(s2, loss))
            meta["ref_grad_rel_err"] = json.dumps({n: rel(g2[n], grads[n]) for n in grads})
        save_file(out, os.path.join(d, "golden.safetensors"), metadata=meta)
        print(f"wrote {d} (loss {loss.item():.6f})", file=sys.stderr)


if __name__ == "__main__":
    main()
