"""Verification: which of a step's candidate n-grams the model agrees with.

Greedy rule. The row of `last` gives the model's next token t1 (always emitted: it
is exactly what greedy decoding would emit). A candidate whose first token equals t1
was fed with the right context, so its row gives the model's token after t1, t2; if
the candidate's second token equals t2, its row gives t3; and so on. A candidate
matching m tokens emits m+1 tokens: the m it matched (which are the model's own
argmaxes) plus the model's next token after them, the *bonus*. A full match of an
(N-1)-token candidate therefore yields N tokens in one step. Every emitted token is a
model argmax, never a raw guess.

Ties: the candidate with the most matched tokens wins; among equals, the first in
the order given (the pool lists the most recent first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Verdict:
    tokens: list[int]  # tokens to emit, 1 + matched
    candidate: int | None  # index of the winning candidate (None when none matched)
    matched: int  # candidate tokens accepted: their KV rows are kept

    @property
    def kept_rows(self) -> list[int]:
        """Rows of the winner, relative to the candidate, whose KV is kept."""
        return list(range(self.matched))


def verify_greedy(
    first: int, candidates: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]]
) -> Verdict:
    """first: the model's argmax at `last`. predictions[j][k]: the model's argmax at
    the row of candidates[j][k] (the token it predicts after that one)."""
    best_j, best_m = None, 0
    for j, (cand, pred) in enumerate(zip(candidates, predictions)):
        m, expected = 0, first
        while m < len(cand) and cand[m] == expected:
            expected = pred[m]
            m += 1
        if m > best_m:
            best_j, best_m = j, m
    tokens = [first] + (list(predictions[best_j][:best_m]) if best_j is not None else [])
    return Verdict(tokens=tokens, candidate=best_j, matched=best_m)
