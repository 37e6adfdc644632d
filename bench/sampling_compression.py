"""Compression S of lookahead decoding when sampling, at temperature 0, 0.7 and 1.0, on the
first 20 MT-bench prompts (128 new tokens), and whether each output equals plain sampling
with the same seed. Usage, from the repository root:
    PYTHONPATH=. .venv/bin/python bench/sampling_compression.py W,N,G,COPY"""
import sys

import torch

from minila.cli.bench.prompts import load_prompts
from minila.decoding.sampling import SamplingConfig, sample_generate
from minila.llama.checkpoint import load_checkpoint
from minila.lookahead.loop import LookaheadConfig, lookahead_generate

torch.set_num_threads(1)
w, n, g, c = (int(x) for x in sys.argv[1].split(","))
model, tok = load_checkpoint("weights/smollm2-135m-instruct", device="cpu")
prompts = load_prompts("mtbench", tok, 20)
cfg = LookaheadConfig(w, n, g, copy=c)
eos = list(tok.eos_ids)
for temp in (0.0, 0.7, 1.0):
    toks = steps = same = 0
    for i, p in enumerate(prompts):
        sc = SamplingConfig(temperature=temp, seed=i)
        out = lookahead_generate(model, p.ids, 128, cfg, eos, sampling=sc)
        ref = sample_generate(model, p.ids, 128, sc, eos)
        toks += len(out.tokens); steps += out.steps; same += out.tokens == ref.tokens
    print(f"{cfg.label} T={temp}: S={toks / steps:.3f} ({toks} tokens, {steps} steps), same as plain sampling with the same seed: {same}/20", flush=True)
