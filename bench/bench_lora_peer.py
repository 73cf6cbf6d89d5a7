"""Helper of bench/bench_lora_gpu.sh: makes the model folder and the data, and runs the peer
(transformers + peft LoRA training) with the settings `lmtune lora` gets.

  bench_lora_peer.py model DIR [--smoke]
      A Mistral-7B-shaped model folder with random weights (hidden 4096, n_ff 14336, 32 layers,
      32 heads, 8 kv heads, head_dim 128, vocab 32000, rope_theta 1e6, untied lm_head), bf16,
      written as safetensors shards + index + config.json, plus models/default's tokenizer (ids <
      2048). The weights are drawn on the GPU (N(0, 0.02), norms 1) and copied out shard by shard;
      --smoke: a 2-layer f32 model of the same family on the CPU. --shape qwen2-26m: a Qwen2-shaped
      f32 model on the CPU (hidden 512, n_ff 1536, 8 layers, 8 heads, 2 kv heads, head_dim 64,
      vocab 2048 = models/default's, q/k/v biases, untied lm_head: 26.2 M parameters), the
      model of bench/bench_lora_cpu.sh --peer peft. --shape qwen3-0.6b / gemma3-1b: Qwen3-0.6B's shape
      (hidden 1024, n_ff 3072, 28 layers, 16 heads, 8 kv heads, head_dim 128, q/k norms, vocab
      151936, tied) or Gemma-3-1B's (gemma3_text: hidden 1152, n_ff 6912, 26 layers, 4 heads, 1 kv
      head, head_dim 256, vocab 262144, tied, 5 sliding layers of window 512 to each full one,
      query_pre_attn_scalar 256), or --shape mixtral-moe, Mixtral's layout scaled to one GPU (hidden
      2048, 8 experts of width 7168, top 2, 16 layers, 16 heads, 8 kv heads, vocab 32000; the experts
      saved per expert as the Hub's checkpoints hold them), or --shape qwen3-moe, Qwen3-30B-A3B's layout with
      16 of its 48 layers (hidden 2048, 128 experts of width 768, top 8, 32 heads, 4 kv heads, q/k norms,
      vocab 151936, untied; saved per expert), bf16 on the GPU (the models of bench_lora_gpu.sh --shape); with
      --smoke, a 2-layer f32 model of that family on the CPU.
  bench_lora_peer.py data DIR --model DIR --seq N [--n-train 16] [--n-valid 2]
      train.jsonl / valid.jsonl of {"text": ...} records built from the words of examples/data,
      each at least N + 64 tokens long (checked with the model's tokenizer), so that every example
      is truncated to exactly N tokens (N - 1 inputs and N - 1 targets, as mlx-lm and lmtune cut).
  bench_lora_peer.py train --model DIR --data DIR --seq N [--grad-checkpoint] [--warmup W]
      [--steps S] [--keys q_proj,...] [--json PATH] [--nf4] [--smoke] [--cpu] [--batch N] [--threads N]
      The peer: AutoModelForCausalLM (sdpa, bf16 on cuda; f32 on the CPU with --smoke) + peft
      LoraConfig(r 8, alpha 160 = mlx-lm's scale 20 x r, dropout 0, all 7 linear layers of every
      block), torch.optim.Adam (lr 1e-5), batch 1; each step feeds the first N tokens of a record
      (inputs = tokens[:-1], targets = tokens[1:], the loss as HF computes it: logits upcast to f32,
      mean cross-entropy). W warm-up steps, then S timed steps (torch.cuda.synchronize around each);
      tokens/s = S * (N - 1) / their time, like lmtune's Tokens/sec (supervised tokens over train
      time). Peak = torch.cuda.max_memory_allocated over the whole process (weights included), as
      lmtune's Peak mem counts its allocator's peak; on the CPU, the process's max RSS.
      --nf4: QLoRA, the base loaded by bitsandbytes in 4-bit NormalFloat (bf16 compute).
      --cpu: f32 on the CPU (as --smoke does); --batch N: N records a step (tokens/s counts
      N * (seq - 1) a step); --threads N: torch.set_num_threads.
"""
import argparse
import json
import math
import os
import random
import resource
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, "models", "default")
LORA_KEYS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, SCALE, LR = 8, 20.0, 1e-5


FAMILY_SHAPES = {  # --shape: the real models' dimensions
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936),
    "gemma3-1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=256, vocab_size=262144),
    # Issue 16's mixture, Mixtral's layout scaled to one GPU: 8 experts (top 2) of width 7168 (Mixtral's
    # 3.5x the hidden size), 16 layers of hidden 2048: 5.8 B parameters, 11.6 GB in bf16.
    "mixtral-moe": dict(hidden_size=2048, intermediate_size=7168, num_hidden_layers=16, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, vocab_size=32000, num_local_experts=8,
                        num_experts_per_tok=2),
    # A mixture of many small experts, Qwen3-30B-A3B's layout (128 experts of width 768, top 8, normalised
    # top-k weights, q/k norms, 32 heads, 4 kv heads, vocab 151936) with 16 of its 48 layers: 10.6 B
    # parameters, 21 GB in bf16.
    "qwen3-moe": dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                      num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1),
}


def shapes(smoke, shape=None):
    if shape in FAMILY_SHAPES:
        d = dict(FAMILY_SHAPES[shape])
        if smoke:  # the family's layout at a CPU size
            d.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, vocab_size=2048)
        return d
    if shape == "qwen2-26m":
        return dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=64, vocab_size=2048)
    if smoke:
        return dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=64, vocab_size=2048)
    return dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=32000)


def per_expert_specs(specs, experts, gate, up, down, router=None):
    """transformers 5 keeps a mixture's experts stacked in memory (mlp.experts.gate_up_proj (E, 2 ff, C),
    mlp.experts.down_proj (E, C, ff)) and saves them as the Hub's checkpoints hold them, per expert:
    <experts>e.<gate>.weight, <up>, <down>, and the router mlp.gate renamed to <router> where given;
    from_pretrained and lmtune both read that layout."""
    out = []
    for n, s in specs:
        if n.endswith(".mlp.experts.gate_up_proj"):
            base = n.replace(".mlp.experts.gate_up_proj", experts)
            for e in range(s[0]):
                out += [(f"{base}{e}.{gate}.weight", (s[1] // 2, s[2])), (f"{base}{e}.{up}.weight", (s[1] // 2, s[2]))]
        elif n.endswith(".mlp.experts.down_proj"):
            base = n.replace(".mlp.experts.down_proj", experts)
            out += [(f"{base}{e}.{down}.weight", (s[1], s[2])) for e in range(s[0])]
        elif router and n.endswith(".mlp.gate.weight"):
            out.append((n.replace(".mlp.gate.", router), s))
        else:
            out.append((n, s))
    return out


def cmd_model(a):
    import torch
    from safetensors.torch import save_file
    import transformers
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    t0 = time.perf_counter()
    cpu = a.smoke or a.shape == "qwen2-26m"  # the family shapes are GPU models unless --smoke
    dev = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    if not cpu and dev != "cuda":
        sys.exit("bench_lora_peer model: no CUDA device (use --smoke on the CPU)")
    dtype, dname = (torch.float32, "float32") if cpu else (torch.bfloat16, "bfloat16")
    base = json.load(open(os.path.join(DEFAULT_MODEL, "config.json")))
    Config, Model, arch = MistralConfig, MistralForCausalLM, "MistralForCausalLM"
    ids = dict(bos_token_id=base["bos_token_id"], eos_token_id=base["eos_token_id"], pad_token_id=base["pad_token_id"])
    if a.shape == "qwen2-26m":
        Config, Model, arch = Qwen2Config, Qwen2ForCausalLM, "Qwen2ForCausalLM"
    if a.shape == "qwen3-0.6b":
        Config, Model, arch = transformers.Qwen3Config, transformers.Qwen3ForCausalLM, "Qwen3ForCausalLM"
        cfg = Config(**shapes(a.smoke, a.shape), rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960,
                     tie_word_embeddings=True, **ids)
    elif a.shape == "qwen3-moe":
        Config, Model, arch = transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM, "Qwen3MoeForCausalLM"
        cfg = Config(**shapes(a.smoke, a.shape), rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960,
                     tie_word_embeddings=False, router_aux_loss_coef=0.0, **ids)
    elif a.shape == "mixtral-moe":
        Config, Model, arch = transformers.MixtralConfig, transformers.MixtralForCausalLM, "MixtralForCausalLM"
        cfg = Config(**shapes(a.smoke, a.shape), rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768,
                     sliding_window=None, router_jitter_noise=0.0, tie_word_embeddings=False, **ids)
    elif a.shape == "gemma3-1b":
        Config, Model, arch = transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, "Gemma3ForCausalLM"
        cfg = Config(**shapes(a.smoke, a.shape), rms_norm_eps=1e-6, max_position_embeddings=32768,
                     sliding_window=512, query_pre_attn_scalar=256, tie_word_embeddings=True, **ids)
    else:
        cfg = Config(**shapes(a.smoke, a.shape), rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768,
                     sliding_window=None, tie_word_embeddings=False, **ids)
    with torch.device("meta"):  # names and shapes only, no memory
        specs = [(n, tuple(p.shape)) for n, p in Model(cfg).state_dict().items()]
    if a.shape == "mixtral-moe":  # block_sparse_moe.experts.e.w1 (gate), w3 (up), w2 (down); block_sparse_moe.gate
        specs = per_expert_specs(specs, ".block_sparse_moe.experts.", "w1", "w3", "w2", ".block_sparse_moe.gate.")
    if a.shape == "qwen3-moe":  # mlp.experts.e.gate_proj, up_proj, down_proj; the router stays mlp.gate
        specs = per_expert_specs(specs, ".mlp.experts.", "gate_proj", "up_proj", "down_proj")
    if cfg.tie_word_embeddings:  # the head is the embedding: one tensor in the file, as save_pretrained writes
        specs = [(n, s) for n, s in specs if n != "lm_head.weight"]
    unit_offset = a.shape == "gemma3-1b"  # gemma's norms scale by (1 + w): w = 0 is the identity
    os.makedirs(a.dir, exist_ok=True)
    d = cfg.to_dict()
    d["architectures"] = [arch]
    d["torch_dtype"] = d["dtype"] = dname
    json.dump(d, open(os.path.join(a.dir, "config.json"), "w"), indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEFAULT_MODEL, f), os.path.join(a.dir, f))

    esize = torch.tensor([], dtype=dtype).element_size()
    limit = 4 * 10**9
    shards, cur, cur_bytes = [], [], 0
    for n, s in specs:
        b = math.prod(s) * esize
        if cur and cur_bytes + b > limit:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((n, s))
        cur_bytes += b
    shards.append(cur)
    g = torch.Generator(device=dev).manual_seed(0)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for n, s in shard:
            if n.endswith("norm.weight"):
                t = (torch.zeros if unit_offset else torch.ones)(s, dtype=dtype, device=dev)
            elif n.endswith(".bias"):
                t = torch.zeros(s, dtype=dtype, device=dev).add_(0.02)
            else:
                t = torch.randn(s, dtype=dtype, device=dev, generator=g).mul_(0.02)
            tensors[n] = t.cpu()
            weight_map[n] = fname
            total += t.numel() * esize
        save_file(tensors, os.path.join(a.dir, fname), metadata={"format": "pt"})
        del tensors
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(a.dir, "model.safetensors.index.json"), "w"), indent=2)
    n_params = sum(math.prod(s) for _, s in specs)
    print(f"model: {n_params / 1e9:.3f} B parameters, {dname}, {total / 1e9:.2f} GB in {len(shards)} shards, "
          f"written in {time.perf_counter() - t0:.1f} s ({a.dir})", flush=True)


def cmd_data(a):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    words = []
    for line in open(os.path.join(ROOT, "examples", "data", "train.jsonl")):
        r = json.loads(line)
        words += (r.get("completion") or r.get("text") or "").split()
    rng = random.Random(0)
    need = a.seq + 64
    os.makedirs(a.dir, exist_ok=True)
    shortest = None
    for name, n in (("train", a.n_train), ("valid", a.n_valid)):
        with open(os.path.join(a.dir, f"{name}.jsonl"), "w") as f:
            for _ in range(n):
                parts = []
                while True:
                    parts += rng.choices(words, k=max(256, need // 2))
                    text = " ".join(parts)
                    ntok = len(tok.encode(text).ids)
                    if ntok >= need:
                        break
                shortest = ntok if shortest is None else min(shortest, ntok)
                f.write(json.dumps({"text": text}) + "\n")
    print(f"data: {a.n_train} train + {a.n_valid} valid text records, each >= {shortest} tokens "
          f"(truncated to {a.seq}) in {a.dir}", flush=True)


def cmd_train(a):
    import torch
    import torch.nn.functional as F
    import transformers
    import peft
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = "cpu" if a.smoke or a.cpu else "cuda"
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    cuda = dev == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    kw = dict(dtype=dtype, attn_implementation="sdpa")
    if a.nf4:  # QLoRA's usual recipe: the frozen base in bitsandbytes' 4-bit NormalFloat, bf16 compute
        from transformers import BitsAndBytesConfig
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(a.model, device_map=dev, **kw)
    except (ImportError, ValueError) as e:  # no accelerate: load on the host, then move
        print(f"peer: device_map unavailable ({e}); loading on the host", flush=True)
        model = AutoModelForCausalLM.from_pretrained(a.model, **kw).to(dev)
    sync()
    load_s = time.perf_counter() - t0
    if a.grad_checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = peft.LoraConfig(r=RANK, lora_alpha=SCALE * RANK, lora_dropout=0.0, target_modules=a.keys.split(","),
                           bias="none", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    model.train()  # HF checkpoints only in training mode
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    ldt = sorted({str(p.dtype) for p in params})
    n_all = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    if a.compile:  # the peft model under torch.compile (inductor), the forward and the backward it derives
        model = torch.compile(model)
    extra = ", torch.compile" if a.compile else ""
    if a.nf4:
        import bitsandbytes
        extra += f", bitsandbytes {bitsandbytes.__version__} nf4 base"
    print(f"peer: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}{extra}; "
          f"{n_all / 1e9:.3f} B parameters ({dtype}, {dev}), LoRA {n_lora / 1e6:.3f} M trainable ({', '.join(ldt)}), "
          f"gradient checkpointing {'on' if a.grad_checkpoint else 'off'}; loaded in {load_s:.1f} s", flush=True)

    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    rows = []
    for line in open(os.path.join(a.data, "train.jsonl")):
        ids = tok.encode(json.loads(line)["text"]).ids
        assert len(ids) >= a.seq, f"a record has {len(ids)} tokens < {a.seq}"
        rows.append(torch.tensor(ids[:a.seq], dtype=torch.long))

    def step(i):
        ids = torch.stack([rows[(i * a.batch + j) % len(rows)] for j in range(a.batch)]).to(dev)
        x, y = ids[:, :-1], ids[:, 1:]
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        if i == 0:  # lora_B starts at zero, so its gradient is the one that must be there in every layer
            gb = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
            bad = sum(1 for g_ in gb if g_ is None or not torch.isfinite(g_).all() or g_.abs().sum() == 0)
            assert bad == 0, f"{bad} of {len(gb)} lora_B weights got no (finite, nonzero) gradient"
        opt.step()
        return loss.item()  # a sync, as lmtune's per-step loss read is

    losses, times = [], []
    for i in range(a.warmup + a.steps):
        sync()
        t = time.perf_counter()
        losses.append(step(i))
        sync()
        times.append(time.perf_counter() - t)
        if i < a.warmup:
            print(f"warm-up step {i + 1}: loss {losses[-1]:.3f}, {times[-1] * 1e3:.1f} ms", flush=True)
    meas = times[a.warmup:]
    tokens = a.steps * a.batch * (a.seq - 1)
    tps = tokens / sum(meas)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    med = sorted(meas)[len(meas) // 2]
    print(f"peer: {a.steps} steps of {a.batch} x {a.seq - 1} tokens after {a.warmup} warm-up: {tps:.1f} tok/s "
          f"(median step {med * 1e3:.1f} ms, min {min(meas) * 1e3:.1f}, max {max(meas) * 1e3:.1f}), "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, peak {peak:.3f} GB", flush=True)
    if a.json:
        json.dump({"tokens_per_sec": tps, "peak_gb": peak, "median_step_ms": med * 1e3, "first_loss": losses[0],
                   "last_loss": losses[-1], "lora_params": n_lora, "torch": torch.__version__,
                   "transformers": transformers.__version__, "peft": peft.__version__}, open(a.json, "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("dir")
    m.add_argument("--smoke", action="store_true")
    m.add_argument("--shape", choices=["qwen2-26m", *FAMILY_SHAPES], help="another model shape than Mistral-7B's")
    d = sub.add_parser("data")
    d.add_argument("dir")
    d.add_argument("--model", required=True)
    d.add_argument("--seq", type=int, required=True)
    d.add_argument("--n-train", type=int, default=16)
    d.add_argument("--n-valid", type=int, default=2)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--seq", type=int, required=True)
    t.add_argument("--grad-checkpoint", action="store_true")
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--steps", type=int, default=15)
    t.add_argument("--threads", type=int)
    t.add_argument("--keys", default=",".join(LORA_KEYS), help="peft target_modules, comma-separated")
    t.add_argument("--json")
    t.add_argument("--nf4", action="store_true", help="the base in bitsandbytes nf4 (QLoRA), bf16 compute")
    t.add_argument("--smoke", action="store_true")
    t.add_argument("--cpu", action="store_true", help="f32 on the CPU")
    t.add_argument("--compile", action="store_true", help="the peft model under torch.compile")
    t.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    {"model": cmd_model, "data": cmd_data, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
