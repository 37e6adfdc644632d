"""The invariant attention kernel of this tree against an earlier commit's, in one
process, alternating every call (best of 300 each), on random bfloat16 SmolLM2-shaped
heads (9 query, 3 kv, 64 wide), a causal step of T tokens after a cache of P; the two
must agree bitwise. Usage, from the repository root:
    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python bench/attention_then_and_now.py [REV]"""

import sys
import time

import torch
from then import minila_at

from minila.llama.attention import InvariantAttention

REV = sys.argv[1] if len(sys.argv) > 1 else "5ae02a2"
attention_then = minila_at(REV, "attention")

torch.set_num_threads(2)
kernels = {"then": attention_then.InvariantAttention(), "now": InvariantAttention()}
for cache in (200, 232):
    row = []
    for t in (1, 4, 16, 32):
        mask, positions = torch.ones(t, t, dtype=torch.bool).tril_(), torch.arange(cache, cache + t)
        q, k, v = (torch.randn(h, n, 64).bfloat16() for h, n in ((9, t), (3, cache + t), (3, cache + t)))
        plans = {name: kernel.plan(mask, positions, cache) for name, kernel in kernels.items()}
        assert torch.equal(plans["then"].attend(q, k, v), plans["now"].attend(q, k, v))
        best = dict.fromkeys(plans, float("inf"))
        for r in range(300):
            for name in ("then", "now") if r % 2 else ("now", "then"):
                start = time.perf_counter()
                plans[name].attend(q, k, v)
                best[name] = min(best[name], time.perf_counter() - start)
        row.append(f"T={t} {best['then'] * 1e6:.0f} -> {best['now'] * 1e6:.0f} us ({best['now'] / best['then']:.2f}x)")
    print(f"cache {cache}, {REV} -> now:", "  ".join(row))
