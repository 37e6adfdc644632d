"""Measure how often each kind of offer is right: the data behind `budget.PRIOR`.

Runs `auto` (the step budget, n-gram memory off, one successor table carried across the
prompts, as la:auto's bench run does) on held-out prompts, MT-bench 60-69 and
HumanEval 100-109 (the bench and its goals use the first 20 of each), and prints, per
kind of evidence and depth, how many offered tokens were tested and how many were right
(every offer is scored, fed or not), plus how the budget's expected tokens per step
compare with what was accepted. Run from the repository root:

    .venv/bin/python bench/prior.py [--ckpt DIR] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from minila import greedy_generate, load_checkpoint, lookahead_generate
from minila.cli.bench.prompts import load_prompts
from minila.lookahead.auto import auto_budget, auto_config
from minila.speed.budget import Acceptance
from minila.speed.recycle import SuccessorTable

HELD_OUT = {"mtbench": range(60, 70), "humaneval": range(100, 110)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="weights/smollm2-135m-instruct")
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(2)
    model, tok = load_checkpoint(args.ckpt, device="cpu")
    config, budget = auto_config(model), auto_budget(model)
    tried, right, expected, accepted = Counter(), Counter(), 0.0, 0
    successors = SuccessorTable(model.args.vocab_size)
    for dataset, indices in HELD_OUT.items():
        prompts = load_prompts(dataset, tok, None, "bench/data")
        for i in indices:
            acceptance = Acceptance()
            ids = prompts[i].ids
            gen = lookahead_generate(model, ids, args.max_new_tokens, config, tok.eos_ids, budget=budget, acceptance=acceptance,
                                     successors=successors)  # fmt: skip
            assert gen.tokens == greedy_generate(model, ids, args.max_new_tokens, tok.eos_ids).tokens
            tried.update(acceptance.tried)
            right.update(acceptance.right)
            expected += sum(s.plan.expected for s in gen.stats[1:])
            accepted += sum(s.accepted for s in gen.stats[1:])
    for kind in sorted({k for k, _ in tried}, key=str):
        rates = [f"d{d}: {right[(kind, d)]}/{tried[(kind, d)]} = {right[(kind, d)] / tried[(kind, d)]:.2f}"
                 for d in sorted(d for k, d in tried if k == kind) if tried[(kind, d)]]  # fmt: skip
        print(f"{str(kind):<22} " + "  ".join(rates))
    print(f"tokens per step: expected {expected:.0f}, accepted {accepted}")


if __name__ == "__main__":
    main()
