"""Resident memory a loaded model adds, against the size of its weights (issue 15).

    PYTHONPATH=. .venv/bin/python bench/memory.py [CKPT]

Each dtype and forward runs in a fresh process, which loads the checkpoint twice (and
runs a forward after each load, which builds oneDNN's kernels) and reads VmRSS from
/proc/self/status before and after each. The first load also pays what any load pays
once per process: libraries' code and state, oneDNN's kernels, the tokenizer's tables.
The second load adds only what a model holds, which is what grows with the model:
that is the ratio that matters for a large one. The weights' size is the parameter
count (a tied head counted once) times the dtype's bytes."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, torch
from minila.llama.checkpoint import load_checkpoint

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

added, kept = [], []
for _ in range(2):
    before = rss()
    model, tokenizer = load_checkpoint(sys.argv[1], device="cpu", dtype=sys.argv[2], forward=sys.argv[3])
    with torch.inference_mode():
        model(torch.tensor([1, 2, 3]), torch.arange(3), model.new_cache(8))
    added.append(rss() - before)
    kept.append((model, tokenizer))
tied = {"output.weight"} if model.args.tie_embeddings else set()  # packed apart from its table, the same values
weights = sum(p.numel() for n, p in model.named_parameters() if n not in tied) * torch.finfo(model.dtype).bits // 8
first, second = (f"{m / 2**20:.0f} MiB = {m / weights:.2f}x" for m in added)
print(f"| {sys.argv[2]} | {sys.argv[3]} | {weights / 2**20:.0f} MiB | {first} | {second} |")
"""

if __name__ == "__main__":
    ckpt = sys.argv[1] if len(sys.argv) > 1 else "weights/smollm2-135m-instruct"
    print("| dtype | forward | weights | resident added: first load | a second load |\n| --- | --- | --- | --- | --- |")
    for dtype, forward in (("float32", "plain"), ("float32", "invariant"), ("bfloat16", "plain"), ("bfloat16", "invariant")):
        out = subprocess.run([sys.executable, "-c", CHILD, ckpt, dtype, forward], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1], flush=True)
