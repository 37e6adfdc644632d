"""The 2-D lookahead window: N-1 levels of W guesses, the trajectory of Jacobi iteration.

Level 0 holds W-1 guesses for the positions after `last` (`last` itself is column 0
of level 0); level l >= 1 holds W guesses, column c at position p + l + c. Each step
the model's argmax at every top-level row is one Jacobi update: it becomes the new
top level, and the window slides up one level (the bottom level is dropped; the new
level 0 is the old level 1 minus its first column, which sat where the next `last`
will sit).

Column c, read bottom to top and followed by the fresh argmax, is an n-gram the
trajectory produced: key = block-0 token of the column, continuation = the column's
upper levels + the fresh token. Those are what the pool harvests.

Warm-up: "fill" (the reference) starts with level 0 only and adds one level per step,
harvesting once all N-1 levels exist; "seed" (llama.cpp) fills every level with
random prompt tokens at once and harvests from the first step.
"""

from __future__ import annotations

import random
from typing import Sequence


class LookaheadWindow:
    def __init__(self, window: int, ngram: int, seed_tokens: Sequence[int], seed: int, warmup: str = "fill") -> None:
        if not seed_tokens:
            raise ValueError("the window is seeded from the prompt: it needs at least one token")
        if warmup not in ("fill", "seed"):
            raise ValueError(f"warmup must be 'fill' or 'seed', got {warmup!r}")
        self.window, self.ngram = window, ngram
        rng = random.Random(seed)
        self.levels: list[list[int]] = [rng.choices(seed_tokens, k=window - 1)]
        if warmup == "seed":
            self.levels += [rng.choices(seed_tokens, k=window) for _ in range(ngram - 2)]

    @property
    def full(self) -> bool:
        return len(self.levels) == self.ngram - 1

    def ngrams(self, last: int, fresh: Sequence[int]) -> list[tuple[int, list[int]]]:
        """The W n-grams of a full window, given the top level's fresh argmaxes."""
        if not self.full:
            return []
        keys = [last, *self.levels[0]]
        return [(keys[c], [lvl[c] for lvl in self.levels[1:]] + [fresh[c]]) for c in range(self.window)]

    def advance(self, fresh: Sequence[int]) -> None:
        """One Jacobi update: the fresh argmaxes become the top level."""
        if len(fresh) != self.window:
            raise ValueError(f"a top level has {self.window} tokens, got {len(fresh)}")
        self.levels.append(list(fresh))
        if len(self.levels) > self.ngram - 1:
            self.levels.pop(0)
            self.levels[0] = self.levels[0][1:]  # column 0 of level 0 is `last`, not a guess
