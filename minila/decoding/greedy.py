"""Greedy decoding with a KV cache: the baseline every speedup is measured against,
and the oracle every other decoder must reproduce token for token."""

from __future__ import annotations

import time
from typing import Sequence

import torch

from minila.decoding.generation import Choose, Generation, OnTokens, argmax, as_tensor, request_cache
from minila.llama.kv_cache import KVCache
from minila.llama.model import Transformer


@torch.inference_mode()
def autoregressive_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    on_tokens: OnTokens | None = None,
    choose: Choose = argmax,
    cache: KVCache | None = None,
) -> Generation:
    """One token per forward pass: feed the prompt once (the prefill), then each new
    token, choosing the next one from the last row's logits. `cache`: one that already
    holds the prompt's first tokens (see generation.request_cache); only the rest is fed."""
    cache = request_cache(model, prompt_ids, max_new_tokens, cache=cache)
    gen = Generation()
    tokens = as_tensor(prompt_ids[cache.length :], model.device)  # (T,) the prefill, then one token at a time
    last_row = torch.tensor([-1], device=model.device)  # only the last row needs logits
    while True:
        start = time.perf_counter()
        positions = torch.arange(cache.length, cache.length + tokens.shape[0], device=model.device)
        logits = model(tokens, positions, cache, logits_for=last_row)  # (1, vocab)
        cache.commit()
        nxt = choose(logits[0])
        gen.end_step([nxt], eos_ids, max_new_tokens, start, tokens.shape[0], on_tokens)
        if gen.done(max_new_tokens):
            return gen
        tokens = torch.tensor([nxt], device=model.device)


def greedy_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    on_tokens: OnTokens | None = None,
    cache: KVCache | None = None,
) -> Generation:
    """Always the argmax: the ground truth for lookahead and Jacobi decoding."""
    return autoregressive_generate(model, prompt_ids, max_new_tokens, eos_ids, on_tokens, argmax, cache)
