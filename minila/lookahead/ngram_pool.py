"""The n-gram pool: what the Jacobi trajectory has produced, waiting to be verified.

Keyed by a token, each entry holds up to G continuations of N-1 tokens, in recency
order. Adding a continuation that is already there moves it to the back (most
recent); adding one to a full key drops the oldest. A step verifies the continuations
of `last`, most recent first.

Each continuation also keeps its evidence, for the step budget (`speed/budget.py`): how many
times it was added, and whether it was ever read in the text (prompt or output) or
only guessed by the window's Jacobi trajectory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

NGram = tuple[int, ...]


@dataclass
class Evidence:
    """Why a pool continuation is there."""

    count: int = 0  # times it was added
    in_text: bool = False  # read in the prompt or the output (not only harvested from the window)


class NGramPool:
    def __init__(self, ngram: int, per_key: int) -> None:
        if ngram < 2:
            raise ValueError(f"n-gram size must be >= 2, got {ngram}")
        self.ngram = ngram
        self.per_key = per_key
        self._pool: dict[int, OrderedDict[NGram, Evidence]] = {}

    def add(self, key: int, continuation: Sequence[int], in_text: bool = False) -> None:
        if self.per_key == 0:
            return
        continuation = tuple(continuation)
        if len(continuation) != self.ngram - 1:
            raise ValueError(f"a continuation has {self.ngram - 1} tokens, got {len(continuation)}")
        entries = self._pool.setdefault(key, OrderedDict())
        evidence = entries.get(continuation)
        if evidence is not None:
            entries.move_to_end(continuation)
        else:
            evidence = entries[continuation] = Evidence()
            if len(entries) > self.per_key:
                entries.popitem(last=False)  # drop the oldest
        evidence.count += 1
        evidence.in_text |= in_text

    def add_all(self, ngrams: Iterable[tuple[int, Sequence[int]]]) -> None:
        """The window's harvest: guesses, not yet seen in the text."""
        for key, continuation in ngrams:
            self.add(key, continuation)

    def add_sequence(self, tokens: Sequence[int], start: int = 0) -> None:
        """Add every n-gram of `tokens` that ends at index >= start + N - 1, i.e. the
        n-grams a text reveals (the prompt, or accepted output as it grows)."""
        n = self.ngram
        for i in range(max(start, 0), len(tokens) - n + 1):
            self.add(tokens[i], tokens[i + 1 : i + n], in_text=True)

    def candidates(self, key: int) -> list[NGram]:
        """The continuations of `key`, most recent first."""
        entries = self._pool.get(key)
        return list(reversed(entries)) if entries else []

    def entries(self, key: int) -> list[tuple[NGram, Evidence]]:
        """The continuations of `key` with their evidence, most recent first."""
        entries = self._pool.get(key)
        return list(reversed(entries.items())) if entries else []

    def __len__(self) -> int:
        return sum(len(v) for v in self._pool.values())


class ContextLookup:
    """Prompt-lookup candidates: where the last few tokens occurred before in the
    prompt or the output, propose what followed them there (copying is common in code
    and in answers that quote the question). Indexes every 1..max_match-gram by the
    positions where it ends, so a query costs a dictionary lookup."""

    def __init__(self, max_match: int = 3) -> None:
        self.max_match = max_match
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> latest index where it ends

    def extend(self, tokens: Sequence[int]) -> None:
        for tok in tokens:
            # index the n-grams ending at the *previous* token: the latest one must have a successor
            end = len(self.tokens) - 1
            for n in range(1, self.max_match + 1):
                if end - n + 1 >= 0:
                    self._ends[tuple(self.tokens[end - n + 1 : end + 1])] = end
            self.tokens.append(tok)

    def continuation(self, length: int) -> list[int]:
        """Up to `length` tokens that followed the longest recent match of the context's tail."""
        return self.match(length)[0]

    def match(self, length: int) -> tuple[list[int], int]:
        """`continuation(length)` and the length of the match it follows (0: none)."""
        for n in range(min(self.max_match, len(self.tokens)), 0, -1):
            end = self._ends.get(tuple(self.tokens[-n:]))
            if end is not None:
                return self.tokens[end + 1 : end + 1 + length], n
        return [], 0
