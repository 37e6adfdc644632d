"""What the width-invariant forward costs, and what it buys (issue 14).

    PYTHONPATH=. OMP_NUM_THREADS=2 python bench/invariant_cost.py --cost          # step cost + greedy tok/s
    PYTHONPATH=. OMP_NUM_THREADS=2 python bench/invariant_cost.py --divergence 0 5  # bf16 prompts 0..4

--cost: for float32 and bfloat16, the plain and the invariant forward (two loaded
copies of the model) take turns (interleaved, `--rounds` times): one forward of T new
tokens after a 200-token cache (relative to the plain forward's T=1), and greedy tok/s
on two MT-bench prompts. --divergence A B: on MT-bench prompts A..B-1 in bfloat16,
with each forward, whether lookahead (W=5 N=4 G=5) left greedy's path within 128 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from minila import LookaheadConfig, greedy_generate, lookahead_generate
from minila.cli.bench.prompts import load_prompts
from minila.llama.checkpoint import load_checkpoint
from minila.speed.cost_curve import measure_cost_curve

CKPT = Path(__file__).resolve().parents[1] / "weights" / "smollm2-135m-instruct"
FORWARDS = ("plain", "invariant")
WIDTHS = (1, 2, 4, 8, 16, 32, 64)


def cost(rounds: int) -> None:
    for dtype in ("float32", "bfloat16"):
        models = {name: load_checkpoint(CKPT, device="cpu", dtype=dtype, forward=name)[0] for name in FORWARDS}
        tokenizer = load_checkpoint(CKPT, device="cpu", dtype=dtype)[1]
        prompts = load_prompts("mtbench", tokenizer, limit=2)
        curves = {k: [] for k in FORWARDS}
        speed = {k: [] for k in FORWARDS}
        for _ in range(rounds):
            for name, model in models.items():
                curves[name].append(measure_cost_curve(model, widths=WIDTHS, context=200, repeats=3).seconds)
                start, tokens = time.perf_counter(), 0
                for p in prompts:
                    tokens += len(greedy_generate(model, p.ids, 64, tokenizer.eos_ids).tokens)
                speed[name].append(tokens / (time.perf_counter() - start))
        base = statistics.median(c[0] for c in curves["plain"])
        print(f"\n{dtype}: forward of T tokens after 200, ms (x plain T=1); greedy tok/s (2 prompts x 64)")
        print("| forward | " + " | ".join(f"T={t}" for t in WIDTHS) + " | greedy tok/s |")
        print("|---" * (len(WIDTHS) + 2) + "|")
        for name in FORWARDS:
            med = [statistics.median(c[i] for c in curves[name]) for i in range(len(WIDTHS))]
            cells = " | ".join(f"{s * 1e3:.1f} ({s / base:.2f})" for s in med)
            print(f"| {name} | {cells} | {statistics.median(speed[name]):.1f} |")


def divergence(first: int, last: int) -> None:
    models = {name: load_checkpoint(CKPT, device="cpu", dtype="bfloat16", forward=name)[0] for name in FORWARDS}
    tokenizer = load_checkpoint(CKPT, device="cpu", dtype="bfloat16")[1]
    prompts = load_prompts("mtbench", tokenizer, limit=last)[first:last]
    config = LookaheadConfig(window=5, ngram=4, guess=5)
    for p in prompts:
        cells = []
        for name, model in models.items():
            greedy = greedy_generate(model, p.ids, 128, tokenizer.eos_ids).tokens
            look = lookahead_generate(model, p.ids, 128, config, tokenizer.eos_ids).tokens
            d = next((i for i, (a, b) in enumerate(zip(greedy, look)) if a != b), None)
            if d is None and len(greedy) != len(look):
                d = min(len(greedy), len(look))
            cells.append(f"{name}={'identical' if d is None else f'diverged@{d}'}")
        print(p.name, " ".join(cells), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--divergence", type=int, nargs=2, metavar=("FIRST", "LAST"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.cost:
        cost(args.rounds)
    if args.divergence:
        divergence(*args.divergence)
