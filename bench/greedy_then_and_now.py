"""Greedy tokens/s of this tree against the code of an earlier commit, interleaved in one
process (the order rotates per prompt and round), so the ratio holds while the machine's
speed drifts. Issue 15 asked bfloat16 greedy to reach 1.7x the float32 greedy of its day:
the commit before its work is 011a9ac^. Usage, from the repository root:
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/greedy_then_and_now.py [REV]

The earlier code is imported beside this tree as `minila_then` (bench/then.py)."""

import sys

import torch
from interleaved import interleaved_seconds
from then import minila_at

from minila import greedy_generate
from minila.cli.bench.prompts import load_prompts
from minila.llama.checkpoint import load_checkpoint

REV = sys.argv[1] if len(sys.argv) > 1 else "011a9ac^"
CKPT, NEW, ROUNDS = "weights/smollm2-135m-instruct", 64, 3

minila_then, checkpoint_then = minila_at(REV), minila_at(REV, "checkpoint")

torch.set_num_threads(2)
tok = load_checkpoint(CKPT, device="cpu", pack=False)[1]
methods = {}
for dt in ("float32", "bfloat16"):
    then = checkpoint_then.load_checkpoint(CKPT, device="cpu", dtype=dt)[0]
    methods[f"{REV} {dt}"] = lambda ids, m=then: minila_then.greedy_generate(m, ids, NEW)
for dt in ("float32", "bfloat16"):
    for forward in ("plain", "invariant"):
        now = load_checkpoint(CKPT, device="cpu", dtype=dt, forward=forward)[0]
        methods[f"now {dt} {forward}"] = lambda ids, m=now: greedy_generate(m, ids, NEW)

prompts = [p.ids for p in load_prompts("mtbench", tok, limit=3)]
seconds = interleaved_seconds(methods, prompts, ROUNDS)
base = seconds[f"{REV} float32"]
for name, s in seconds.items():
    print(f"{name:28} {NEW * ROUNDS * len(prompts) / s:6.1f} tok/s  {base / s:5.2f}x {REV} float32")
