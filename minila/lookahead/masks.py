"""The attention mask of a lookahead step, from one rule.

Every token fed in a step belongs to a *chain*: a path of tokens at consecutive
positions that starts at `last` (the last accepted token). A window token's chain is
block 0 up to its column, then its own column's levels; a candidate token's chain is
`last` and the earlier tokens of its candidate. The rule:

    a token sees exactly the tokens of its own chain whose position is not later than its own.

We store each chain as a tree: every token names its *parent*, the token just before
it on its chain (`last` has none). "Its own chain, not later than itself" is then
"itself and its ancestors", and the mask is the ancestor relation. Positions follow
from the same tree: a token sits one position after its parent.
"""

from __future__ import annotations

from typing import Sequence

import torch


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """(T, T) bool: mask[i, j] is True when j is i or an ancestor of i.

    Parents must come before their children (parents[i] < i), or -1 for a root.
    """
    t = len(parents)
    mask = torch.eye(t, dtype=torch.bool)
    for i, parent in enumerate(parents):
        if parent >= 0:
            if parent >= i:
                raise ValueError(f"token {i} names parent {parent}: parents must come first")
            mask[i] |= mask[parent]  # a token sees everything its parent sees, and itself
    return mask


def depths(parents: Sequence[int]) -> list[int]:
    """Distance from the root of every token: its position offset from `last`."""
    out: list[int] = []
    for parent in parents:
        out.append(0 if parent < 0 else out[parent] + 1)
    return out


def render(mask: torch.Tensor, labels: Sequence[str] | None = None) -> str:
    """ASCII picture of a mask, one row per query token ('x' = may attend)."""
    rows = []
    for i, row in enumerate(mask.tolist()):
        label = f"{labels[i]:>4} " if labels else ""
        rows.append(label + "".join("x" if v else "." for v in row))
    return "\n".join(rows)
