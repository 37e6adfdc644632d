"""What every decoder returns, and the stopping rule they all share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from minila.errors import MinilaError

# Called with the tokens a step emitted (after stopping rules), e.g. to stream text.
OnTokens = Callable[[list[int]], None]
# Picks the model's token from one row of logits (vocab,): argmax, or a sampler.
Choose = Callable[[torch.Tensor], int]


def argmax(logits: torch.Tensor) -> int:
    """Greedy choice. Ties go to the lowest id, as torch.argmax does everywhere."""
    return int(logits.argmax())


@dataclass
class StepStat:
    """One forward pass of the model."""

    accepted: int  # tokens emitted by this step
    seconds: float
    width: int = 1  # tokens fed to the model in this step
    candidate: int | None = None  # index of the winning candidate n-gram, if any
    forward_seconds: float = 0.0  # of `seconds`, the model's forward (and reading its argmaxes)
    plan: object = None  # lookahead: the step budget's budget.Plan (what it fed and why)


@dataclass
class Generation:
    """The result of a decoder: new tokens only, and one StepStat per forward pass
    (the prefill included, so greedy decoding has exactly one step per token)."""

    tokens: list[int] = field(default_factory=list)
    stats: list[StepStat] = field(default_factory=list)
    stop_reason: str = "length"  # "eos" | "length"

    @property
    def steps(self) -> int:
        return len(self.stats)

    @property
    def accepted(self) -> list[int]:
        return [s.accepted for s in self.stats]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stats)

    @property
    def compression(self) -> float:
        """S = new tokens / forward passes: hardware-independent speedup bound."""
        return len(self.tokens) / self.steps if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def emit(self, new: Sequence[int], eos_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Append a step's tokens, cut at the first EOS (kept) and at the budget.
        Returns what was appended; `done` tells whether decoding must stop."""
        out: list[int] = []
        for tok in new:
            if len(self.tokens) + len(out) >= max_new_tokens:
                break
            out.append(tok)
            if tok in eos_ids:
                self.stop_reason = "eos"
                break
        self.tokens.extend(out)
        return out

    def done(self, max_new_tokens: int) -> bool:
        return self.stop_reason == "eos" or len(self.tokens) >= max_new_tokens

    def end_step(
        self,
        new: Sequence[int],
        eos_ids: Sequence[int],
        max_new_tokens: int,
        start: float,
        width: int,
        on_tokens: OnTokens | None,
        candidate: int | None = None,
        forward_seconds: float = 0.0,
        plan: object = None,
    ) -> list[int]:
        """Close one forward pass: emit its tokens (see `emit`), record its StepStat
        (timed from `start`, a perf_counter reading), and stream what was emitted."""
        emitted = self.emit(new, eos_ids, max_new_tokens)
        self.stats.append(StepStat(len(emitted), time.perf_counter() - start, width, candidate, forward_seconds, plan))
        if on_tokens:
            on_tokens(emitted)
        return emitted


def prefill(
    model,
    prompt_ids: Sequence[int],
    cache,
    gen: Generation,
    eos_ids: Sequence[int],
    max_new_tokens: int,
    on_tokens: OnTokens | None,
    choose: Choose = argmax,
) -> list[int]:
    """Step 1 of the parallel decoders: one causal forward of the prompt, committed to
    the cache, gives the first token. Returns what it emitted. A cache that already
    holds the first `cache.length` prompt tokens (a conversation's earlier turns, see
    `request_cache`) is extended: only the rest of the prompt is fed."""
    start = time.perf_counter()
    device = model.device
    held = cache.length
    positions = torch.arange(held, len(prompt_ids), device=device)
    logits = model(as_tensor(prompt_ids[held:], device), positions, cache, logits_for=torch.tensor([-1], device=device))
    cache.commit()
    return gen.end_step([choose(logits[0])], eos_ids, max_new_tokens, start, len(prompt_ids) - held, on_tokens)


def check_request(model, prompt_ids: Sequence[int], max_new_tokens: int, extra_rows: int = 0) -> int:
    """Validate a decoding request at the boundary; return the KV-cache capacity it needs."""
    if len(prompt_ids) == 0:
        raise MinilaError("the prompt is empty: give at least one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise MinilaError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    vocab = model.args.vocab_size
    bad = [t for t in prompt_ids if not 0 <= int(t) < vocab]
    if bad:
        raise MinilaError(f"prompt token ids {bad[:5]} are outside the vocabulary (size {vocab})")
    context = model.args.max_seq_len
    if len(prompt_ids) + max_new_tokens > context:
        raise MinilaError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
            f"model's context of {context} tokens: shorten the prompt or lower --max-new-tokens"
        )
    # a lookahead step may feed guesses past the final position; RoPE covers max_seq_len
    return len(prompt_ids) + max_new_tokens + extra_rows


def request_cache(model, prompt_ids: Sequence[int], max_new_tokens: int, extra_rows: int = 0, cache=None):
    """The KV cache a request decodes into, after `check_request`: a new one, or `cache`,
    whose committed rows the caller vouches are the K/V of prompt_ids[:cache.length]
    (what a chat session keeps from turn to turn). It must leave at least the prompt's
    last token to feed (its logits give the first new token) and have room for the rest."""
    needed = check_request(model, prompt_ids, max_new_tokens, extra_rows)
    if cache is None:
        return model.new_cache(needed)
    if cache.pending or cache.length >= len(prompt_ids):
        raise MinilaError(
            f"a reused KV cache must hold a proper prefix of the prompt ({len(prompt_ids)} tokens), "
            f"it holds {cache.length}: truncate it first"
        )
    if cache.capacity < needed:
        raise MinilaError(f"the KV cache has {cache.capacity} slots but this request needs {needed}")
    return cache


def as_tensor(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(ids), dtype=torch.long, device=device)
