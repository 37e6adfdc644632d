"""Verification: which of a step's candidate n-grams the model agrees with.

The row of `last` gives the model's next token t1 (always emitted: it is exactly
what plain decoding would emit). Candidates whose first token equals t1 *survive*:
they were fed with the right context, so the row of their first token gives the
model's token after t1, t2. Those whose second token equals t2 survive again, and
so on, until no candidate survives. A candidate matching m tokens yields m+1 tokens:
the m it matched (each one the model's own choice) plus the model's next token after
them, the *bonus*. A full match of an (N-1)-token candidate yields N tokens.

How "the model's token" is chosen at a row is not verification's business: greedy
decoding passes the argmax, sampling passes a sample from the row's distribution
("sample, then match": every emitted token is a draw from the model's conditional
given the accepted prefix, so the output distribution is exactly the model's). The
survivors share their prefix, hence their rows' distributions; we read the first one.

Ties: among the candidates that match the most tokens, the first in the order given
(the pool lists the most recent first) wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Verdict:
    tokens: list[int]  # tokens to emit: 1 + matched
    candidate: int | None  # index of the winning candidate (None when none matched)

    @property
    def matched(self) -> int:
        """Candidate tokens accepted; their KV rows are kept."""
        return len(self.tokens) - 1


def verify(
    first: int, candidates: Sequence[Sequence[int]], token_after: Callable[[int, int], int]
) -> Verdict:
    """first: the model's token at `last`. token_after(j, k): the model's token at the
    row of candidates[j][k], i.e. the one it puts after that candidate token."""
    tokens, winner = [first], None
    survivors = range(len(candidates))
    for k in range(max((len(c) for c in candidates), default=0)):
        survivors = [j for j in survivors if k < len(candidates[j]) and candidates[j][k] == tokens[-1]]
        if not survivors:
            break
        winner = survivors[0]
        tokens.append(token_after(winner, k))
    return Verdict(tokens=tokens, candidate=winner)


def verify_greedy(
    first: int, candidates: Sequence[Sequence[int]], predictions: Sequence[Sequence[int]]
) -> Verdict:
    """The greedy case with every row's argmax known: predictions[j][k] is the argmax
    at the row of candidates[j][k]."""
    return verify(first, candidates, lambda j, k: predictions[j][k])
