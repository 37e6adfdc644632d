"""Lookahead decoding: the loop that ties window, pool, layout, mask and verification.

    prefill the prompt -> first token (step 1)
    repeat:
        candidates = pool[last] (+ a copied continuation if copy > 0)   (verification branch)
        layout     = step_layout(W, levels, candidate tree)  (rows, positions, mask)
        logits     = model(one forward of last + window + candidates)
        fresh      = argmax of the window's top level (one Jacobi update)
        pool      += the window's W columns + fresh   (harvest)
        verdict    = verify(last row, candidate rows) (1 .. N tokens)
        cache.commit(rows of last + matched candidate tokens)
        window.advance(fresh); emit verdict.tokens

Every state (cache, window, pool) is created per call: nothing leaks between requests,
unless the caller hands in a conversation's cache (chat.py) to extend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from minila.errors import MinilaError
from minila.generation import Choose, Generation, OnTokens, argmax, prefill, request_cache
from minila.kv_cache import KVCache
from minila.layout import candidate_tree, step_layout
from minila.model import Transformer
from minila.ngram_pool import ContextLookup, NGramPool
from minila.sampling import Sampler, SamplingConfig
from minila.verify import verify
from minila.window import LookaheadWindow


@dataclass(frozen=True)
class LookaheadConfig:
    """W (window), N (n-gram size), G (max candidates verified per step)."""

    window: int = 5
    ngram: int = 4
    guess: int = 5
    seed: int = 0  # initialises the window from prompt tokens, reproducibly
    warmup: str = "fill"  # "fill": one level per step (reference); "seed": all at once
    pool_from_prompt: bool = True  # seed the pool with the prompt's n-grams
    pool_from_output: bool = True  # and with the accepted output's
    copy: int = 0  # also verify a prompt-lookup candidate of this many tokens (0: off)

    def __post_init__(self) -> None:
        for name, low in (("window", 1), ("ngram", 2), ("guess", 0), ("copy", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MinilaError(
                    f"LookaheadConfig.{name} must be an integer >= {low}, got {value!r} "
                    "(W >= 1 columns, N >= 2 tokens per n-gram, G >= 0 candidates, copy >= 0 tokens)"
                )
        if self.warmup not in ("fill", "seed"):
            raise MinilaError(f"LookaheadConfig.warmup must be 'fill' or 'seed', got {self.warmup!r}")

    @property
    def label(self) -> str:
        """W=15 N=5 G=15 (and copy=K when on), for messages and tables."""
        return f"W={self.window} N={self.ngram} G={self.guess}" + (f" copy={self.copy}" if self.copy else "")

    @property
    def step_tokens(self) -> int:
        """The most tokens a step feeds: last + window + candidates (when none share a prefix)."""
        return 1 + (self.window - 1) + (self.ngram - 2) * self.window + self.guess * (self.ngram - 1) + self.copy


@torch.inference_mode()
def lookahead_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    config: LookaheadConfig = LookaheadConfig(),
    eos_ids: Sequence[int] = (),
    on_tokens: OnTokens | None = None,
    choose: Choose = argmax,
    sampling: SamplingConfig | None = None,
    cache: KVCache | None = None,
) -> Generation:
    """Decode exactly as greedy decoding would, several tokens per forward pass.
    `choose` picks the model's token from a row of logits (argmax: greedy; a sampler:
    sampling with the model's distribution preserved). `sampling` is the usual way to
    sample: it makes `choose` a fresh Sampler for this request. `cache`: one that already
    holds the prompt's first tokens (a conversation so far, see generation.request_cache),
    with room for this request; only the rest of the prompt is prefilled."""
    if sampling is not None:
        if choose is not argmax:
            raise MinilaError("give lookahead_generate either `choose` or `sampling`, not both")
        choose = Sampler(sampling)
    cache = request_cache(model, prompt_ids, max_new_tokens, config.step_tokens, cache)
    last_position = model.args.max_seq_len - 1
    device = model.device
    gen = Generation()

    emitted = prefill(model, prompt_ids, cache, gen, eos_ids, max_new_tokens, on_tokens, choose)
    context = list(prompt_ids) + emitted  # everything accepted so far; context[-1] is `last`
    window = LookaheadWindow(config.window, config.ngram, prompt_ids, config.seed, config.warmup)
    pool = NGramPool(config.ngram, config.guess)
    if config.pool_from_prompt:
        pool.add_sequence(prompt_ids)
    if config.pool_from_output:  # n-grams that end in output tokens
        pool.add_sequence(context, start=len(prompt_ids) - config.ngram + 1)

    lookup = ContextLookup()
    lookup.extend(context)
    while not gen.done(max_new_tokens):
        start = time.perf_counter()
        last = context[-1]
        # a candidate longer than the remaining budget - 1 cannot pay off: trim it
        room = max_new_tokens - len(gen.tokens) - 1
        candidates = pool.candidates(last)[: config.guess]
        if config.copy:
            candidates = [lookup.continuation(config.copy)] + candidates
        candidates = [c[:room] for c in candidates] if room > 0 else []
        candidates = [c for c in candidates if c]
        tree = candidate_tree(candidates)  # shared prefixes are fed once
        layout = step_layout(config.window, len(window.levels), tree.parents, device)

        tokens = torch.tensor(layout.pack(last, window.levels, tree.tokens), device=device)  # (T,)
        # guesses may sit past the context's end; they only feed other guesses, never an emitted token
        positions = (cache.length + layout.depth).clamp_(max=last_position)  # (T,)
        logits = model(tokens, positions, cache, layout.mask, layout.logit_rows)  # (R, vocab)

        fresh = logits[layout.top].argmax(dim=-1).tolist()  # the window stays greedy
        verdict = verify(
            choose(logits[0]), candidates, lambda j, k: choose(logits[layout.first_node_logit + tree.paths[j][k]])
        )
        kept = [0]  # `last`, then the matched tokens of the winner
        if verdict.candidate is not None:
            kept += [layout.first_node_row + node for node in tree.paths[verdict.candidate][: verdict.matched]]
        cache.commit(kept)

        pool.add_all(window.ngrams(last, fresh))
        window.advance(fresh)
        emitted = gen.end_step(
            verdict.tokens, eos_ids, max_new_tokens, start, layout.size, on_tokens, verdict.candidate
        )
        n_before = len(context)
        context.extend(emitted)
        lookup.extend(emitted)
        if config.pool_from_output:
            pool.add_sequence(context, start=n_before - config.ngram + 1)
    return gen
