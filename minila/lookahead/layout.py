"""The layout of one lookahead step: which token sits in which row, at which position.

With W = window, N = n-gram size and `last` at position p, one step feeds:

    row 0                last                                   position p
    block 0, col c>0     level-0 guess of column c              p + c        (W-1 rows)
    level l, col c       level-l guess of column c (l=1..N-2)   p + l + c    (W rows each)
    candidate node i     a token of the candidate tree          p + depth    (one row per node)

For W=5, N=4, G=2 (the paper's figure), positions relative to p:

    branch     | last | level 0 | level 1   | level 2   | cand 0 | cand 1
    rel. pos.  |  0   | 1 2 3 4 | 1 2 3 4 5 | 2 3 4 5 6 | 1 2 3  | 1 2 3

The candidates are fed as a tree: candidates that start with the same tokens share
those rows (a token with the same prefix at the same position has the same keys,
values and logits, so feeding it twice is waste). Candidates with different first
tokens are separate chains, exactly as in the paper's figure.

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

from minila.lookahead.masks import ancestor_mask, depths

LAST, LOOKAHEAD, VERIFY = 0, 1, 2  # branch ids


@dataclass(frozen=True)
class CandidateTree:
    """The verification branch: candidate n-grams merged on their common prefixes."""

    tokens: tuple[int, ...]  # one per node
    parents: tuple[int, ...]  # each node's parent node, -1 for a child of `last`
    paths: tuple[tuple[int, ...], ...]  # candidate j -> its nodes, in order


def candidate_tree(candidates: Sequence[Sequence[int]]) -> CandidateTree:
    tokens: list[int] = []
    parents: list[int] = []
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    paths = []
    for cand in candidates:
        node, path = -1, []
        for tok in cand:
            if (node, tok) not in children:
                children[(node, tok)] = len(tokens)
                tokens.append(tok)
                parents.append(node)
            node = children[(node, tok)]
            path.append(node)
        paths.append(tuple(path))
    return CandidateTree(tuple(tokens), tuple(parents), tuple(paths))


def chains(lengths: Sequence[int]) -> tuple[int, ...]:
    """Candidate-tree parents for separate chains of the given lengths (no sharing)."""
    parents: list[int] = []
    for n in lengths:
        parents.extend([-1] + [len(parents) + k for k in range(n - 1)])
    return tuple(parents)


@dataclass(frozen=True)
class StepLayout:
    window: int
    levels: int  # lookahead levels present (grows from 1 to N-1 during warm-up)
    parents: tuple[int, ...]  # every row's parent row (-1 for `last`): the chains
    branch: tuple[int, ...]
    depth: torch.Tensor  # (T,) position offset of each row from `last`
    mask: torch.Tensor  # (T, T) bool, True where row i may attend to row j
    logit_rows: torch.Tensor  # (R,) the rows whose logits the step uses
    rows_with_logits: tuple[int, ...]  # the same rows, on the host
    top: slice  # the top level, as rows of the logits (its argmaxes are the next level)
    first_node_row: int  # candidate-tree node i sits in row first_node_row + i
    first_node_logit: int  # ... and its logits are row first_node_logit + i of the logits

    @property
    def size(self) -> int:
        return len(self.parents)

    def level_rows(self, level: int) -> slice:
        """Rows of a lookahead level in the step; level 0 is block 0 (row 0 included)."""
        if level == 0:
            return slice(0, self.window)
        start = self.window + (level - 1) * self.window
        return slice(start, start + self.window)

    def pack(self, last: int, levels: Sequence[Sequence[int]], nodes: Sequence[int]) -> list[int]:
        """The step's input tokens, in row order: `last`, the window, the candidate tree."""
        tokens = [last]
        for level in levels:
            tokens.extend(level)
        tokens.extend(nodes)
        if len(tokens) != self.size:
            raise ValueError(f"packed {len(tokens)} tokens into a layout of {self.size} rows")
        return tokens


def _parents(window: int, levels: int, tree_parents: Sequence[int]) -> tuple[list[int], list[int]]:
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
    first = len(parents)
    for p in tree_parents:  # candidates hang from `last`
        parents.append(0 if p < 0 else first + p)
        branch.append(VERIFY)
    return parents, branch


@lru_cache(maxsize=1024)
def _build(window: int, levels: int, tree_parents: tuple[int, ...], device: str) -> StepLayout:
    parents, branch = _parents(window, levels, tree_parents)
    lookahead_end = window * levels
    top_start = 0 if levels == 1 else lookahead_end - window
    # logits are needed for `last` (the first emitted token), the top level and the candidates
    rows = ([0] if top_start > 0 else []) + list(range(top_start, lookahead_end))
    first_node_logit = len(rows)
    rows.extend(range(lookahead_end, lookahead_end + len(tree_parents)))
    return StepLayout(
        window=window,
        levels=levels,
        parents=tuple(parents),
        branch=tuple(branch),
        depth=torch.tensor(depths(parents), dtype=torch.long, device=device),
        mask=ancestor_mask(parents).to(device),
        logit_rows=torch.tensor(rows, dtype=torch.long, device=device),
        rows_with_logits=tuple(rows),
        top=slice(first_node_logit - window, first_node_logit),
        first_node_row=lookahead_end,
        first_node_logit=first_node_logit,
    )


def step_layout(
    window: int, levels: int, tree_parents: Sequence[int] = (), device: torch.device | str = "cpu"
) -> StepLayout:
    """The layout for a window of `levels` levels and a candidate tree given by its
    parent pointers. Built once per shape and device, then reused."""
    if window < 1 or levels < 1:
        raise ValueError(f"need window >= 1 and levels >= 1, got {window}, {levels}")
    return _build(window, levels, tuple(tree_parents), str(device))
