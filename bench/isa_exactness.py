"""Lookahead against greedy on SmolLM2, per CPU class this machine can stand in for.

For each class (this CPU as it is, then each of probe.stand_ins(): torch, oneDNN and MKL
capped by their switches) a fresh process loads the model in float32 and bfloat16, with
the plain and the invariant forward, and counts the MT-bench prompts on which lookahead
(W=5 N=4 G=5) gives greedy's tokens. Where a combination is refused (bfloat16 without
native products; an invariant forward the probe found not invariant) it says so.

    .venv/bin/python bench/isa_exactness.py [--prompts 3] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CKPT = REPO / "weights" / "smollm2-135m-instruct"


def one_class(prompts: int, max_new: int) -> dict:
    """Every dtype and forward in this process's instruction set."""
    import torch

    from minila import LookaheadConfig, MinilaError, greedy_generate, lookahead_generate
    from minila.cli.bench.prompts import load_prompts
    from minila.llama.checkpoint import load_checkpoint
    from minila.llama.probe import chunking_for

    torch.set_num_threads(2)
    out = {}
    for dtype in ("float32", "bfloat16"):
        for forward in ("plain", "invariant"):
            start = time.perf_counter()
            try:
                model, tokenizer = load_checkpoint(CKPT, device="cpu", dtype=dtype, forward=forward)
            except MinilaError as e:
                out[f"{dtype} {forward}"] = f"refused: {e}"
                continue
            same, first = 0, []
            for prompt in load_prompts("mtbench", tokenizer, limit=prompts):
                greedy = greedy_generate(model, prompt.ids, max_new, tokenizer.eos_ids)
                look = lookahead_generate(model, prompt.ids, max_new, LookaheadConfig(5, 4, 5), tokenizer.eos_ids)
                same += look.tokens == greedy.tokens
                first.append(next((i for i, (a, b) in enumerate(zip(greedy.tokens, look.tokens)) if a != b), None))
            probe = chunking_for(model.args, model.dtype) if forward == "invariant" else None
            out[f"{dtype} {forward}"] = {
                "identical": f"{same}/{prompts}", "first_divergence": first, "seconds": round(time.perf_counter() - start, 1),
                **({"probe_seconds": probe.seconds, "attention_tile": probe.attention_tile} if probe else {}),
            }  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: this process's class only
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_class(args.prompts, args.max_new_tokens)))
        return
    sys.path.insert(0, str(REPO))
    from minila.llama.probe import stand_ins

    for name, switches in {"this CPU": "", **stand_ins()}.items():
        env = {**os.environ, "PYTHONPATH": str(REPO), **dict(s.split("=") for s in switches.split())}
        child = [sys.executable, __file__, "--one", "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens)]
        result = subprocess.run(child, env=env, capture_output=True, text=True)
        print(f"## {name} {switches}".rstrip())
        if result.returncode:
            print(result.stderr.strip().splitlines()[-1])
            continue
        for combo, found in json.loads(result.stdout.strip().splitlines()[-1]).items():
            print(f"- {combo}: {found}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
