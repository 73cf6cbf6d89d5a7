"""transformers' generate on the model bench_generate times: MistralForCausalLM(config) with random
init, bf16 on cuda (sdpa attention), batch 1, greedy (do_sample False, min_new_tokens equal to
max_new_tokens, so no early stop). Prompt tok/s: a 512-token prompt generating 1 token (prefill
plus one lm_head and argmax, as lmtune's prompt time counts); decode tok/s: (G - 1) extra tokens
over the extra time of generating G tokens. Median of the trials, after a warm-up of each.
Usage: bench_generate_peer.py [--json PATH] [--smoke]   (--smoke: tiny model on the CPU in f32)
       bench_generate_peer.py --model DIR [-p N] [-g N] [-n N] [--threads N]: a saved model folder in
       f32 on the CPU instead (bench/bench_generate_cpu.sh), torch.set_num_threads(N).
"""
import argparse
import json
import time

import torch
from transformers import MistralConfig, MistralForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-g", type=int, default=128)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.model:
        from transformers import AutoModelForCausalLM
        P, G, trials, dev, dtype = a.p, a.g, a.n, "cpu", torch.float32
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).eval()
        cfg = model.config
    elif a.smoke:
        kw = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=1000)
        P, G, trials, dev, dtype = 64, 8, 2, "cpu", torch.float32
    else:
        kw = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=32000)
        P, G, trials, dev, dtype = 512, 128, 3, "cuda", torch.bfloat16
    if not a.model:
        cfg = MistralConfig(**kw, rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768,
                            sliding_window=None, tie_word_embeddings=False, attn_implementation="sdpa")
        t0 = time.perf_counter()
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)  # random init straight in the target dtype, on the device
        with torch.device(dev):
            model = MistralForCausalLM(cfg).eval()
        torch.set_default_dtype(torch.float32)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"transformers: {type(model).__name__} {n_params / 1e9:.3f} B parameters, {dtype}, {dev}, "
          f"built in {time.perf_counter() - t0:.1f} s", flush=True)

    def gen(ids, n):
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0, eos_token_id=None)
        sync()
        assert out.shape[1] == ids.shape[1] + n, out.shape
        return time.perf_counter() - t

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, cfg.vocab_size, (1, P), generator=g).to(dev) for _ in range(trials + 1)]
    gen(prompts[0], 1)
    gen(prompts[0], 8)  # warm-up
    ptps, dtps = [], []
    for i in range(trials):
        tp = gen(prompts[i + 1], 1)
        tg = gen(prompts[i + 1], G)
        ptps.append(P / tp)
        dtps.append((G - 1) / max(tg - tp, 1e-9))
        print(f"trial {i + 1}: prompt {P} tokens {ptps[-1]:.1f} tok/s, decode {G} tokens {dtps[-1]:.2f} tok/s",
              flush=True)
    med = lambda v: sorted(v)[len(v) // 2]
    peak = torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else 0.0
    print(f"transformers median: prompt {med(ptps):.1f} tok/s, decode {med(dtps):.2f} tok/s, peak {peak:.2f} GB")
    print(f"Averages: prompt_tps={sum(ptps) / len(ptps):.3f}, generation_tps={sum(dtps) / len(dtps):.3f}")
    if a.json:
        import transformers
        json.dump({"prompt_tps": med(ptps), "decode_tps": med(dtps), "peak_gb": peak,
                   "torch": torch.__version__, "transformers": transformers.__version__}, open(a.json, "w"))


if __name__ == "__main__":
    main()
