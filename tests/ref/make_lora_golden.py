"""LoRA / DoRA golden references from Hugging Face transformers + peft.

For tiny random models of each family (cases of make_golden.py), peft adapters on every linear
layer of the last block (of 2), with random nonzero lora_A / lora_B / magnitude so that every
gradient is nonzero; the loss and the gradient of every adapter tensor for two target sets: all
next tokens, and a masked prompt (targets -100 on the first tokens of each row).

mlx-lm's scale is the multiplier itself; peft's is lora_alpha / r, so lora_alpha = scale * r.
peft's DoRA (tuners/lora/dora.py) is mlx-lm's definition (tuner/dora.py): the magnitude over the
detached row norm of W + scale * B A, rescaling W x + scale * B A x, with the bias added after;
with dropout 0 the two agree term by term, so peft is the reference for DoRA too.

Usage: make_lora_golden.py OUT_DIR. For each case and type (lora, dora), OUT_DIR/<case>/ holds the
HF model folder and <type>/ holds the adapters in mlx-lm's layout (adapters.safetensors with
lora_a (in, r) = lora_A.weight^T, lora_b (r, out) = lora_B.weight^T, m = lora_magnitude_vector,
and adapter_config.json) plus golden.safetensors (ids, targets, losses, gradients by our names).
"""
import json
import os
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden import CASES, randomize  # noqa: E402

FAMILY_CASES = ["llama_gqa", "llama_tied_llama3rope_bias", "mistral_window", "qwen2_bias_tied", "gemma_mqa", "gemma3_sliding",
                "smollm3_nope", "granite_multipliers", "olmo2_postnorm", "phi3_fused",
                "gemma2_softcaps", "gemma2_wide_window", "mixtral_top2", "qwen3_moe_norm"]
KEYS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED_KEYS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # phi3's layers (mlx-lm adapts the fused ones)
ATTN_KEYS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # MoE blocks: transformers keeps router and experts outside nn.Linear
RANK, SCALE = 4, 2.5
B, T = 2, 9


def make_model(name, seed):
    cfg_cls, model_cls, kw = CASES[name]
    kw = dict(kw, num_hidden_layers=2)
    if "no_rope_layers" in kw:  # per-layer lists follow the layer count (smollm3_nope: layer 1 without rope)
        kw["no_rope_layers"] = kw["no_rope_layers"][:2]
    cfg = cfg_cls(**kw, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_cls(cfg).float().eval()
    randomize(model)
    return cfg, model


def our_name(peft_name):
    # base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight -> (prefix, leaf)
    n = peft_name.removeprefix("base_model.model.")
    for tag, leaf in ((".lora_A.default.weight", "lora_a"), (".lora_B.default.weight", "lora_b"),
                      (".lora_magnitude_vector.default.weight", "m")):
        if n.endswith(tag):
            return n[: -len(tag)] + "." + leaf
    raise ValueError(peft_name)


def to_ours(leaf, t):
    return t.t().contiguous() if leaf in ("lora_a", "lora_b") else t.contiguous()


def main():
    out = sys.argv[1]
    for ci, name in enumerate(FAMILY_CASES):
        cfg, base = make_model(name, 300 + ci)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        base.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(50 + ci)
        ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
        t_all = torch.roll(ids, -1, dims=1)
        t_all[:, -1] = -100
        t_masked = t_all.clone()
        t_masked[0, :3] = -100
        t_masked[1, :5] = -100
        keys = FUSED_KEYS if name.startswith("phi3") else ATTN_KEYS if "moe" in name or "mixtral" in name else KEYS
        for kind in ("lora", "dora"):
            _, model = make_model(name, 300 + ci)
            pc = LoraConfig(r=RANK, lora_alpha=SCALE * RANK, lora_dropout=0.0, target_modules=keys,
                            layers_to_transform=[1], use_dora=(kind == "dora"), bias="none")
            model = get_peft_model(model, pc)
            torch.manual_seed(900 + ci)
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if "lora_A" in n:
                        bound = 1 / p.shape[1] ** 0.5
                        p.uniform_(-bound, bound)
                    elif "lora_B" in n:
                        p.copy_(0.2 * torch.randn_like(p) / RANK ** 0.5)
                    elif "lora_magnitude_vector" in n:
                        p.mul_(1.0 + 0.2 * torch.randn_like(p))
            params = {n: p for n, p in model.named_parameters() if p.requires_grad}
            assert len(params) == len(keys) * (3 if kind == "dora" else 2), sorted(params)
            gold = {"ids": ids.int().contiguous(), "targets_all": t_all.int().contiguous(),
                    "targets_masked": t_masked.int().contiguous()}
            for tname, tg in (("all", t_all), ("masked", t_masked)):
                model.zero_grad(set_to_none=True)
                logits = model(input_ids=ids).logits
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                         tg.reshape(-1), ignore_index=-100)
                loss.backward()
                gold["loss_" + tname] = loss.detach().reshape(1).contiguous()
                for n, p in params.items():
                    o = our_name(n)
                    gold[f"grad_{tname}.{o}"] = to_ours(o.rsplit(".", 1)[1], p.grad.detach())
            adapters = {}
            for n, p in params.items():
                o = our_name(n)
                adapters[o] = to_ours(o.rsplit(".", 1)[1], p.detach())
            ad = os.path.join(d, kind)
            os.makedirs(ad, exist_ok=True)
            save_file(adapters, os.path.join(ad, "adapters.safetensors"))
            lp = {"rank": RANK, "scale": SCALE, "dropout": 0.0}
            if keys is ATTN_KEYS:  # without keys, a mixture's adapter config means mlx-lm's set (router, experts)
                lp["keys"] = ["self_attn." + k for k in keys]
            with open(os.path.join(ad, "adapter_config.json"), "w") as f:
                json.dump({"fine_tune_type": kind, "num_layers": 1, "lora_parameters": lp}, f, indent=4)
            save_file(gold, os.path.join(ad, "golden.safetensors"),
                      metadata={"peft": __import__("peft").__version__})
            print(f"wrote {ad} (loss {gold['loss_all'].item():.6f} / {gold['loss_masked'].item():.6f})",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
