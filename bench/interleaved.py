"""Timing several methods on a machine whose speed drifts: every method runs on every
prompt in every round, in an order that rotates per prompt and round, so drift spreads
evenly over them and their ratios hold (the bench scripts beside this file use it)."""

import time
from collections.abc import Callable, Sequence


def interleaved_seconds(methods: dict[str, Callable[[list[int]], object]], prompts: Sequence[list[int]], rounds: int) -> dict[str, float]:
    """Total wall-clock seconds of each method over rounds x prompts, after one warm-up run each."""
    for run in methods.values():
        run(prompts[0][:20])  # warm-up: oneDNN's kernels, caches
    seconds = dict.fromkeys(methods, 0.0)
    names = list(methods)
    for r in range(rounds):
        for i, ids in enumerate(prompts):
            k0 = (r * len(prompts) + i) % len(names)
            for name in names[k0:] + names[:k0]:
                start = time.perf_counter()
                methods[name](ids)
                seconds[name] += time.perf_counter() - start
    return seconds
