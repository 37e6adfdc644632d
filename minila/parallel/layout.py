"""Lookahead parallelism, part 1: how one step is cut over K ranks (pure, no processes).

Every rank holds the whole model, the whole window and the whole pool; a step's rows
are shared out so that no rank needs another's keys and values during the forward.
A row needs exactly its ancestors (masks.py's rule), so a rank's share of the step is
an *ancestor-closed* subset of the single-process layout, and each of its rows sees
the same tokens at the same positions as it would there: the same logits.

For W=5, N=4 (3 levels) on K=2 ranks, columns 0-2 on rank 0 and 3-4 on rank 1
(`.` = not fed by that rank; `L` = last):

    rank 0                       rank 1
    level 2   | 2 3 4 . .        level 2   | . . . 5 6
    level 1   | 1 2 3 . .        level 1   | . . . 4 5
    block 0   | L 1 2 . .        block 0   | L 1 2 3 4     (relative positions)

A level-l token of column c sees block 0 up to column c, so rank 1 re-feeds the
block-0 tokens of columns 0..2 as well: the *prefix* its columns attend to. Its own
levels and candidates are what it alone computes. Cost per rank, with L levels and
columns [s, e): e rows of block 0 plus (L-1)(e-s) upper rows, i.e. s + L(e-s). Later
ranks pay for a longer block-0 prefix, so `cut_columns` gives them fewer columns, and
`assign_candidates` hands each candidate to the rank that is narrowest so far.

Before `last`, a rank may feed `refeed` accepted tokens as a causal chain: the tokens
the previous step accepted from a candidate, whose keys and values only the winning
rank computed (see decoder.py). Everything after them sees them, as if committed.

    rows:  refeed chain | last | block-0 prefix | levels 1..L-1 of own columns | own candidate tree
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch

from minila.lookahead.masks import ancestor_mask, depths


def rank_cost(start: int, stop: int, levels: int) -> int:
    """Window rows a rank feeds for columns [start, stop): block 0 up to stop, upper levels of its own."""
    return stop + (levels - 1) * (stop - start)


@lru_cache(maxsize=256)
def cut_columns(window: int, levels: int, ranks: int) -> tuple[range, ...]:
    """Contiguous column chunks, one per rank, each at least one column, that make the
    widest rank's window rows as few as possible (later ranks get fewer columns)."""
    if not 1 <= ranks <= window:
        raise ValueError(f"cannot cut {window} window columns over {ranks} ranks: each rank needs a column")

    def chunks(budget: int) -> tuple[range, ...] | None:
        out, start = [], 0
        for r in range(ranks):
            left_for_others = ranks - r - 1
            if r == ranks - 1:
                n = window - start
            else:  # as many columns as fit the budget, leaving one for every later rank
                n = min((budget - start) // levels, window - start - left_for_others)
            if n < 1 or rank_cost(start, start + n, levels) > budget:
                return None
            out.append(range(start, start + n))
            start += n
        return tuple(out)

    budget = levels  # a single column costs at least `levels` rows
    while (best := chunks(budget)) is None:
        budget += 1
    return best


def assign_candidates(lengths: Sequence[int], base: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Give each candidate (by length, in order) to the rank with the fewest rows so far,
    starting from `base` rows per rank (ties: the lower rank). Returns each rank's
    candidate indices, ascending."""
    load = list(base)
    share: list[list[int]] = [[] for _ in base]
    for j, n in enumerate(lengths):
        r = min(range(len(load)), key=lambda k: load[k])
        share[r].append(j)
        load[r] += n
    return tuple(tuple(s) for s in share)


@dataclass(frozen=True)
class RankLayout:
    """One rank's rows of one step: the same fields as layout.StepLayout, for its share."""

    columns: range
    levels: int
    refeed: int  # accepted tokens re-fed before `last`
    parents: tuple[int, ...]
    depth: torch.Tensor  # (T,) position offset of each row from the first one
    mask: torch.Tensor  # (T, T) bool: the ancestor relation, one rule as everywhere
    logit_rows: torch.Tensor  # (R,) rows whose logits are used: last, own top level, own candidates
    top: slice  # the own columns' top level, as rows of the logits
    first_node_row: int  # own candidate-tree node i sits in row first_node_row + i
    first_node_logit: int  # ... and its logits are row first_node_logit + i

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def last_row(self) -> int:
        return self.refeed

    def pack(self, refed: Sequence[int], last: int, levels: Sequence[Sequence[int]], nodes: Sequence[int]) -> list[int]:
        """Input tokens in row order, from the whole window's levels (this picks its share)."""
        c = self.columns
        tokens = [*refed, last, *levels[0][: c.stop - 1]]
        for level in levels[1:]:
            tokens.extend(level[c.start : c.stop])
        tokens.extend(nodes)
        if len(tokens) != self.size:
            raise ValueError(f"packed {len(tokens)} tokens into a rank layout of {self.size} rows")
        return tokens


@lru_cache(maxsize=1024)
def _build(columns: range, levels: int, refeed: int, tree_parents: tuple[int, ...], device: str) -> RankLayout:
    parents = [i - 1 for i in range(refeed)]  # the re-fed accepted tokens: a causal chain
    last = refeed
    parents.append(last - 1)  # `last` continues it (-1: no re-feed, `last` is the root)
    block0 = [last] + [last + c for c in range(1, columns.stop)]  # row of block-0 column c
    parents.extend(range(last, last + columns.stop - 1))  # block 0: last -> col 1 -> ... -> col stop-1
    below = [block0[c] for c in columns]
    for _ in range(1, levels):  # own columns only; each token continues its column's chain
        here = list(range(len(parents), len(parents) + len(columns)))
        parents.extend(below)
        below = here
    first_node_row = len(parents)
    parents.extend(last if p < 0 else first_node_row + p for p in tree_parents)
    top_rows = below  # the highest level of the own columns (block 0 itself while levels == 1)
    rows = ([] if top_rows[0] == last else [last]) + top_rows
    first_node_logit = len(rows)
    rows.extend(range(first_node_row, len(parents)))
    return RankLayout(
        columns=columns,
        levels=levels,
        refeed=refeed,
        parents=tuple(parents),
        depth=torch.tensor(depths(parents), dtype=torch.long, device=device),
        mask=ancestor_mask(parents).to(device),
        logit_rows=torch.tensor(rows, dtype=torch.long, device=device),
        top=slice(first_node_logit - len(columns), first_node_logit),
        first_node_row=first_node_row,
        first_node_logit=first_node_logit,
    )


def rank_layout(
    columns: range, levels: int, refeed: int = 0, tree_parents: Sequence[int] = (), device: torch.device | str = "cpu"
) -> RankLayout:
    """The rows of a rank that owns window `columns` of a window with `levels` levels,
    re-feeds `refeed` accepted tokens and verifies the candidate tree `tree_parents`."""
    if len(columns) < 1 or columns.step != 1 or levels < 1 or refeed < 0:
        raise ValueError(f"need contiguous columns, levels >= 1, refeed >= 0; got {columns}, {levels}, {refeed}")
    return _build(columns, levels, refeed, tuple(tree_parents), str(device))


def nominal_rank_widths(window: int, ngram: int, guess: int, copy: int, ranks: int, refeed: int = 0) -> tuple[int, ...]:
    """Rows each rank feeds in a step with a full window and a full, unshared candidate
    list (G n-grams of N-1 tokens, and a copy candidate of `copy` tokens): the width
    the cost model of lookahead parallelism charges each rank."""
    levels = ngram - 1
    columns = cut_columns(window, levels, ranks)
    base = [refeed + rank_cost(c.start, c.stop, levels) for c in columns]
    lengths = ([copy] if copy else []) + [ngram - 1] * guess
    shares = assign_candidates(lengths, base)
    return tuple(b + sum(lengths[j] for j in share) for b, share in zip(base, shares))
