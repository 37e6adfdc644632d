"""Plain Jacobi decoding: the idea lookahead decoding starts from.

Greedy decoding solves, one unknown at a time, the system

    y[i+1] = argmax f(prompt, y[1..i])     for i = 0 .. m-1.

Jacobi iteration guesses a whole block of k future tokens and updates all of them at
once from the previous guess, in one forward pass with a causal mask:

    y'[i+1] = argmax f(prompt, accepted, y[1..i])   for every i in the block.

The first token of the block is always right (its context is all accepted tokens),
and so is every token whose guessed predecessors were all right: that converged
prefix is accepted (`verify.verify` with the block as the single candidate), the rest
of the update becomes the next guess. It is exact, since every accepted token is an
argmax given accepted tokens, and needs no draft model; but on real text a wrong
guess early in the block spoils the rest, so it rarely accepts more than one token per
step. Lookahead decoding keeps its trajectory instead of only its fixed points.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from minila.decoding.generation import Generation, OnTokens, as_tensor, check_request, prefill
from minila.llama.model import Transformer
from minila.lookahead.verify import verify


@dataclass
class JacobiGeneration(Generation):
    """A Generation that also records the guess block fed at every step after the
    prefill (trajectory[i][0] is the accepted `last` token of step i+2)."""

    trajectory: list[list[int]] = field(default_factory=list)


@torch.inference_mode()
def jacobi_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    block: int = 8,
    eos_ids: Sequence[int] = (),
    seed: int = 0,
    on_tokens: OnTokens | None = None,
) -> JacobiGeneration:
    """Greedy output, decoded a block of `block` tokens at a time by Jacobi iteration.
    The initial guesses are prompt tokens drawn with `seed`."""
    if block < 1:
        raise ValueError(f"the Jacobi block needs at least 1 token, got {block}")
    cache = model.new_cache(check_request(model, prompt_ids, max_new_tokens, extra_rows=block))
    device = model.device
    rng = random.Random(seed)
    gen = JacobiGeneration()
    prefill(model, prompt_ids, cache, gen, eos_ids, max_new_tokens, on_tokens)
    guesses = rng.choices(list(prompt_ids), k=block - 1)  # for the positions after `last`

    while not gen.done(max_new_tokens):
        start = time.perf_counter()
        p = cache.length
        fed = [gen.tokens[-1]] + guesses  # `last` and the guessed block, one causal chain
        gen.trajectory.append(fed)
        positions = torch.arange(p, p + block, device=device).clamp_(max=model.args.max_seq_len - 1)
        update = model(as_tensor(fed, device), positions, cache).argmax(dim=-1).tolist()  # (block,)
        verdict = verify(update[0], [guesses], lambda _, k: update[k + 1])
        cache.commit(list(range(1 + verdict.matched)))  # `last` and the converged guesses
        # the unconverged part of the update is the next guess; pad with its last token
        rest = update[verdict.matched + 1 :]
        guesses = (rest + [update[-1]] * block)[: block - 1]
        gen.end_step(verdict.tokens, eos_ids, max_new_tokens, start, block, on_tokens)
    return gen
