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
For the MoE cases OUT_DIR/<case>/experts/ also holds LoRA on block 1's experts (mlx-lm's stacked
LoRASwitchLinear layout and names), its reference written here in torch (expert_lora).
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
# The experts' LoRA (mlx-lm's SwitchLinear LoRA, lmtune's keys <moe block>.switch_mlp.*): peft has
# none for transformers' stacked experts, so the reference below is written here in torch.
EXPERT_CASES = {"mixtral_top2": "block_sparse_moe", "qwen3_moe_norm": "mlp"}


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


def expert_lora(name, seed, out_dir, ids, targets):
    """LoRA on every expert's gate, up and down projection of block 1: per expert e, y = W x + SCALE
    B[e] (A[e] x), A (E, r, in) and B (E, out, r) as mlx-lm's LoRASwitchLinear keeps them; the
    experts' forward is transformers' loop with those terms added; everything else frozen."""
    _, model = make_model(name, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    ex = model.model.layers[1].mlp.experts
    E, hid, ff = ex.num_experts, ex.hidden_dim, ex.intermediate_dim
    g = torch.Generator().manual_seed(seed + 1000)
    dims = {"gate_proj": (hid, ff), "up_proj": (hid, ff), "down_proj": (ff, hid)}
    A = {k: (((torch.rand(E, RANK, i, generator=g) * 2 - 1) / i ** 0.5)).requires_grad_() for k, (i, o) in dims.items()}
    Bm = {k: (0.2 * torch.randn(E, o, RANK, generator=g) / RANK ** 0.5).requires_grad_() for k, (i, o) in dims.items()}

    def lora(x, w, k, e):
        return x @ w.T + SCALE * (x @ A[k][e].T) @ Bm[k][e].T

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(E):
            token_idx, pos = torch.where(top_k_index == e)
            if token_idx.numel() == 0:
                continue
            x = hidden_states[token_idx]
            wg, wu = self.gate_up_proj[e].chunk(2, dim=0)
            h = self.act_fn(lora(x, wg, "gate_proj", e)) * lora(x, wu, "up_proj", e)
            y = lora(h, self.down_proj[e], "down_proj", e) * top_k_weights[token_idx, pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out

    ex.forward = forward.__get__(ex)
    prefix = f"model.layers.1.{EXPERT_CASES[name]}.switch_mlp."
    gold = {"ids": ids.int().contiguous()}
    for tname, tg in targets:
        gold["targets_" + tname] = tg.int().contiguous()
        for t in list(A.values()) + list(Bm.values()):
            t.grad = None
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tg.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        gold["loss_" + tname] = loss.detach().reshape(1).contiguous()
        for k in dims:
            gold[f"grad_{tname}.{prefix}{k}.lora_a"] = A[k].grad.detach().contiguous()
            gold[f"grad_{tname}.{prefix}{k}.lora_b"] = Bm[k].grad.detach().contiguous()
    adapters = {}
    for k in dims:
        adapters[f"{prefix}{k}.lora_a"] = A[k].detach().contiguous()
        adapters[f"{prefix}{k}.lora_b"] = Bm[k].detach().contiguous()
    ad = os.path.join(out_dir, "experts")
    os.makedirs(ad, exist_ok=True)
    save_file(adapters, os.path.join(ad, "adapters.safetensors"))
    lp = {"rank": RANK, "scale": SCALE, "dropout": 0.0, "keys": [EXPERT_CASES[name] + ".switch_mlp." + k for k in dims]}
    with open(os.path.join(ad, "adapter_config.json"), "w") as f:
        json.dump({"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": lp}, f, indent=4)
    save_file(gold, os.path.join(ad, "golden.safetensors"), metadata={"reference": "torch, make_lora_golden.py"})
    print(f"wrote {ad} (loss {gold['loss_all'].item():.6f} / {gold['loss_masked'].item():.6f})", file=sys.stderr)


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
        if name in EXPERT_CASES:
            expert_lora(name, 300 + ci, d, ids, [("all", t_all), ("masked", t_masked)])


if __name__ == "__main__":
    main()
