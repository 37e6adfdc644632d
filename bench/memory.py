"""Resident memory a loaded model adds, against the size of its weights (issue 15).

    PYTHONPATH=. .venv/bin/python bench/memory.py [CKPT]

Each dtype loads in a fresh process (resident memory never shrinks back cleanly):
VmRSS after importing torch and minila, then after load_checkpoint and one forward
(which builds oneDNN's kernels), both read from /proc/self/status. The weights' size
is the parameter count times the dtype's bytes."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, torch
from minila.checkpoint import load_checkpoint

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

before = rss()
model, _ = load_checkpoint(sys.argv[1], device="cpu", dtype=sys.argv[2], forward=sys.argv[3])
with torch.inference_mode():
    model(torch.tensor([1, 2, 3]), torch.arange(3), model.new_cache(8))
weights = model.args.vocab_size * model.args.dim * (1 if model.args.tie_embeddings else 2)
weights += model.args.n_layers * sum(p.numel() for p in model.layers[0].state_dict().values())
weights += model.args.dim  # final norm
weights *= torch.finfo(model.dtype).bits // 8
print(f"| {sys.argv[2]} | {sys.argv[3]} | {weights / 2**20:.0f} MiB | {(rss() - before) / 2**20:.0f} MiB | {(rss() - before) / weights:.2f}x |")
"""

if __name__ == "__main__":
    ckpt = sys.argv[1] if len(sys.argv) > 1 else "weights/smollm2-135m-instruct"
    print("| dtype | forward | weights | resident after loading | ratio |\n| --- | --- | --- | --- | --- |")
    for dtype, forward in (("float32", "plain"), ("float32", "invariant"), ("bfloat16", "plain"), ("bfloat16", "invariant")):
        out = subprocess.run([sys.executable, "-c", CHILD, ckpt, dtype, forward], capture_output=True, text=True)
        print(out.stdout.strip() or out.stderr.strip().splitlines()[-1], flush=True)
