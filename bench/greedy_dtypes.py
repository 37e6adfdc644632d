"""Greedy tokens/s of minila and transformers in float32 and bfloat16, packed and unpacked
weights, plain and width-invariant forward, in one process, interleaved (the order rotates per prompt and round), so the
ratios hold even when the machine's speed drifts. 3 MT-bench prompts x 3 rounds, 64 new
tokens each, prefill included. Usage, from the repository root:
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/greedy_dtypes.py"""

import torch
from interleaved import interleaved_seconds
from transformers import LlamaForCausalLM

from minila import greedy_generate
from minila.cli.bench.prompts import load_prompts
from minila.llama.checkpoint import load_checkpoint

torch.set_num_threads(2)
CKPT, NEW = "weights/smollm2-135m-instruct", 64
minila_models = {
    f"minila {dt} {'packed' if pack else 'unpacked'} {fw}": load_checkpoint(CKPT, device="cpu", dtype=dt, pack=pack, forward=fw)[0]
    for dt in ("float32", "bfloat16") for pack in (True, False) for fw in ("plain", "invariant") if pack or fw == "plain"
}  # fmt: skip
tok = load_checkpoint(CKPT, device="cpu", pack=False)[1]
hf_models = {f"hf {dt}": LlamaForCausalLM.from_pretrained(CKPT, dtype=getattr(torch, dt)).eval()
             for dt in ("float32", "bfloat16")}  # fmt: skip


def minila_run(model):
    return lambda ids: greedy_generate(model, ids, NEW)


def hf_run(model):
    def run(ids):
        with torch.inference_mode():
            model.generate(torch.tensor([ids]), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)

    return run


methods = {**{k: minila_run(m) for k, m in minila_models.items()}, **{k: hf_run(m) for k, m in hf_models.items()}}
prompts = [p.ids for p in load_prompts("mtbench", tok, limit=3)]
seconds = interleaved_seconds(methods, prompts, 3)
runs = 3 * len(prompts)
for name, s in seconds.items():
    print(f"{name:34} {NEW * runs / s:6.1f} tok/s ({runs} runs x {NEW} tokens)")
