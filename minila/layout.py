"""The layout of one lookahead step: which token sits in which row, at which position.

With W = window, N = n-gram size and `last` at position p, one step feeds:

    row 0                last                                   position p
    block 0, col c>0     level-0 guess of column c              p + c        (W-1 rows)
    level l, col c       level-l guess of column c (l=1..N-2)   p + l + c    (W rows each)
    candidate j, tok k   k-th token of candidate n-gram j       p + 1 + k    (N-1 rows each)

For W=5, N=4, G=2 (the paper's figure), positions relative to p:

    branch     | last | level 0 | level 1   | level 2   | cand 0 | cand 1
    rel. pos.  |  0   | 1 2 3 4 | 1 2 3 4 5 | 2 3 4 5 6 | 1 2 3  | 1 2 3

Everything downstream reads this object: the mask (`masks.ancestor_mask` over the
parents), the position ids, which logits to compute (row 0, the top level and the
candidates) and where each named part sits in those logits. No other module does
offset arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from minila.masks import ancestor_mask, depths

LAST, LOOKAHEAD, VERIFY = 0, 1, 2  # branch ids


@dataclass(frozen=True)
class StepLayout:
    window: int
    levels: int  # lookahead levels present (grows from 1 to N-1 during warm-up)
    candidate_lens: tuple[int, ...]
    parents: tuple[int, ...]
    branch: tuple[int, ...]
    depth: torch.Tensor  # (T,) position offset of each row from `last`
    mask: torch.Tensor  # (T, T) bool, True where row i may attend to row j
    logit_rows: torch.Tensor  # (R,) the rows whose logits the step uses
    top: slice  # the top level, as rows of the logits (its argmaxes are the next level)
    candidates: tuple[slice, ...]  # each candidate's rows, in the logits
    candidate_rows: tuple[slice, ...]  # each candidate's rows, in the step

    @property
    def size(self) -> int:
        return len(self.parents)

    def level_rows(self, level: int) -> slice:
        """Rows of a lookahead level in the step; level 0 is block 0 (row 0 included)."""
        if level == 0:
            return slice(0, self.window)
        start = self.window + (level - 1) * self.window
        return slice(start, start + self.window)

    def pack(self, last: int, levels: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> list[int]:
        """The step's input tokens, in row order."""
        tokens = [last]
        for level in levels:
            tokens.extend(level)
        for cand in candidates:
            tokens.extend(cand)
        if len(tokens) != self.size:
            raise ValueError(f"packed {len(tokens)} tokens into a layout of {self.size} rows")
        return tokens


def _parents(window: int, levels: int, candidate_lens: Sequence[int]) -> tuple[list[int], list[int]]:
    parents, branch = [-1], [LAST]
    for c in range(1, window):  # block 0: a causal chain starting at `last`
        parents.append(c - 1)
        branch.append(LOOKAHEAD)
    below = list(range(window))  # the row of each column in the level below
    for _ in range(1, levels):
        here = []
        for c in range(window):  # a level-l token continues its column's chain
            here.append(len(parents))
            parents.append(below[c])
            branch.append(LOOKAHEAD)
        below = here
    for n in candidate_lens:  # a candidate is a chain hanging from `last`
        for k in range(n):
            parents.append(0 if k == 0 else len(parents) - 1)
            branch.append(VERIFY)
    return parents, branch


@lru_cache(maxsize=256)
def _build(window: int, levels: int, candidate_lens: tuple[int, ...], device: str) -> StepLayout:
    parents, branch = _parents(window, levels, candidate_lens)
    lookahead_end = window * levels
    top_start = 0 if levels == 1 else lookahead_end - window
    # logits are needed for `last` (the first emitted token), the top level and the candidates
    rows = ([0] if top_start > 0 else []) + list(range(top_start, lookahead_end))
    n_top_rows = len(rows)
    top = slice(n_top_rows - window, n_top_rows)
    candidates, candidate_rows, start = [], [], lookahead_end
    for n in candidate_lens:
        candidates.append(slice(len(rows), len(rows) + n))
        candidate_rows.append(slice(start, start + n))
        rows.extend(range(start, start + n))
        start += n
    return StepLayout(
        window=window,
        levels=levels,
        candidate_lens=candidate_lens,
        parents=tuple(parents),
        branch=tuple(branch),
        depth=torch.tensor(depths(parents), dtype=torch.long, device=device),
        mask=ancestor_mask(parents).to(device),
        logit_rows=torch.tensor(rows, dtype=torch.long, device=device),
        top=top,
        candidates=tuple(candidates),
        candidate_rows=tuple(candidate_rows),
    )


def step_layout(
    window: int, levels: int, candidate_lens: Sequence[int], device: torch.device | str = "cpu"
) -> StepLayout:
    """The layout for a window of `levels` levels and candidates of the given lengths.
    Built once per shape and device, then reused (steps repeat the same shapes)."""
    if window < 1 or levels < 1:
        raise ValueError(f"need window >= 1 and levels >= 1, got {window}, {levels}")
    return _build(window, levels, tuple(candidate_lens), str(device))
