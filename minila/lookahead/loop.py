"""Lookahead decoding: the loop that ties window, pool, layout, mask and verification.

    prefill the prompt -> first token (step 1)
    repeat:
        offers     = pool[last] (+ a copied continuation if copy > 0, + the memory's,
                     + the successor table's tree when a budget chooses)
        plan       = budget(offers): which candidates to verify, whether the window runs
        layout     = step_layout(W, levels, candidate tree)  (rows, positions, mask)
        logits     = model(one forward of last + window + candidates)
        fresh      = argmax of the window's top level (one Jacobi update)
        pool      += the window's W columns + fresh   (harvest)
        verdict    = verify(last row, candidate rows) (1 .. N tokens)
        table     += top-K of every row of logits (recycle.py)
        cache.commit(rows of last + matched candidate tokens)
        window.advance(fresh); emit verdict.tokens

Every state (cache, window, pool, acceptance rates) is created per call: nothing leaks
between requests except through an explicit `memory`, or a conversation's cache
(chat.py) handed in to extend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from minila.decoding.generation import Choose, Generation, OnTokens, argmax, prefill, request_cache
from minila.decoding.sampling import Sampler, SamplingConfig
from minila.errors import MinilaError
from minila.llama.kv_cache import KVCache
from minila.llama.model import Transformer
from minila.lookahead.layout import candidate_tree, step_layout
from minila.lookahead.ngram_pool import ContextLookup, NGramPool
from minila.lookahead.verify import verify
from minila.lookahead.window import LookaheadWindow
from minila.speed.budget import FULL, Acceptance, Budget, Offer
from minila.speed.memory import NGramMemory
from minila.speed.recycle import SuccessorTable, recycled_offers


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
    recycle: int = 0  # nodes of the successor table's tree a budget may choose from (0: off; recycle.py)

    def __post_init__(self) -> None:
        for name, low in (("window", 1), ("ngram", 2), ("guess", 0), ("copy", 0), ("recycle", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MinilaError(
                    f"LookaheadConfig.{name} must be an integer >= {low}, got {value!r} "
                    "(W >= 1 columns, N >= 2 tokens per n-gram, G >= 0 candidates, copy and recycle >= 0)"
                )
        if self.warmup not in ("fill", "seed"):
            raise MinilaError(f"LookaheadConfig.warmup must be 'fill' or 'seed', got {self.warmup!r}")

    @property
    def label(self) -> str:
        """W=15 N=5 G=15 (and copy=K, recycle=K when on), for messages and tables."""
        on = "".join(f" {name}={getattr(self, name)}" for name in ("copy", "recycle") if getattr(self, name))
        return f"W={self.window} N={self.ngram} G={self.guess}" + on

    @property
    def step_tokens(self) -> int:
        """The most tokens a step feeds: last + window + candidates (when none share a prefix)."""
        return 1 + (self.window - 1) + (self.ngram - 2) * self.window + self.guess * (self.ngram - 1) + self.copy + self.recycle


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
    budget: Budget = FULL,
    memory: NGramMemory | None = None,
    acceptance: Acceptance | None = None,
    cache: KVCache | None = None,
    successors: SuccessorTable | None = None,
) -> Generation:
    """Decode exactly as greedy decoding would, several tokens per forward pass.
    `choose` picks the model's token from a row of logits (argmax: greedy; a sampler:
    sampling with the model's distribution preserved). `sampling` is the usual way to
    sample: it makes `choose` a fresh Sampler for this request. `budget` decides what
    each step feeds within the config's W, N, G and copy (FULL: all of it, the paper's
    step; a CostBudget: what pays on this machine). `memory` offers what earlier requests
    produced and learns this one's output. `acceptance` holds the offers' learned rates:
    by default a fresh one (the prior) per request; pass one to carry it across requests.
    `cache`: one that already holds the prompt's first tokens (a conversation so far, see
    generation.request_cache), with room for this request; only the rest of the prompt is
    prefilled. `successors`: a table that learns from every row of logits and, for a budget
    that `wants_more`, drafts a tree (recycle.py); pass one to carry it across requests."""
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
    acceptance = Acceptance() if acceptance is None else acceptance  # what offers turn out to be worth
    max_nodes = config.guess * (config.ngram - 1) + config.copy + config.recycle  # candidate rows the cache reserves
    while not gen.done(max_new_tokens):
        start = time.perf_counter()
        last = context[-1]
        # a candidate longer than the remaining budget - 1 cannot pay off: trim it
        room = max_new_tokens - len(gen.tokens) - 1
        offers = gather_offers(context, pool, lookup, memory, config, room, budget.wants_more)
        if successors is not None and config.recycle and budget.wants_more:  # the paper's step (FULL) stays as it was
            offers += recycled_offers(successors, last, acceptance, room, config.recycle)
        levels = len(window.levels)
        rows, logit_rows = config.window * levels - 1, config.window - (levels == 1)  # beyond `last`'s
        plan = budget.plan(offers, acceptance, rows, logit_rows, max_nodes)
        tree = candidate_tree(plan.candidates)  # shared prefixes are fed once
        if plan.window:
            layout = step_layout(config.window, levels, tree.parents, device)
            tokens = layout.pack(last, window.levels, tree.tokens)
        else:  # `last` and the candidates only
            layout = step_layout(1, 1, tree.parents, device)
            tokens = layout.pack(last, [[]], tree.tokens)

        # guesses may sit past the context's end; they only feed other guesses, never an emitted token
        positions = (cache.length + layout.depth).clamp_(max=last_position)  # (T,)
        forward_start = time.perf_counter()
        logits = model(torch.tensor(tokens, device=device), positions, cache, layout.mask, layout.logit_rows)  # (R, vocab)
        fresh = logits[layout.top].argmax(dim=-1).tolist()  # the window stays greedy
        forward_seconds = time.perf_counter() - forward_start
        verdict = verify(
            choose(logits[0]), plan.candidates, lambda j, k: choose(logits[layout.first_node_logit + tree.paths[j][k]])
        )
        matched = tree.paths[verdict.candidate][: verdict.matched] if verdict.candidate is not None else ()
        cache.commit([0] + [layout.first_node_row + node for node in matched])  # `last`, then the matched tokens
        if successors is not None:  # every row of logits, the accepted path's winning where a token fed several
            fed = [tokens[r] for r in layout.rows_with_logits]
            successors.update(fed, logits, [0] + [layout.first_node_logit + node for node in matched])

        if plan.window:
            pool.add_all(window.ngrams(last, fresh))
            window.advance(fresh)
        emitted = gen.end_step(
            verdict.tokens, eos_ids, max_new_tokens, start, layout.size, on_tokens, verdict.candidate, forward_seconds, plan
        )
        n_before = len(context)
        context.extend(emitted)
        lookup.extend(emitted)
        if config.pool_from_output:
            pool.add_sequence(context, start=n_before - config.ngram + 1)
        if budget.learns:  # score this step's offers once the text has moved past them
            acceptance.record(n_before, offers, plan.window)
            acceptance.catch_up(context, final=gen.done(max_new_tokens))
    if memory is not None:
        memory.learn(context, start=len(prompt_ids))
    return gen


def gather_offers(
    context: Sequence[int],
    pool: NGramPool,
    lookup: ContextLookup,
    memory: NGramMemory | None,
    config: LookaheadConfig,
    room: int,
    wants_more: bool,
) -> list[Offer]:
    """What the sources propose to follow `last` = context[-1], each cut to `room` tokens:
    the copied continuation (if copy > 0), then the pool's n-grams of `last` (most recent
    first, at most G), then the memory's continuations of the last two tokens. The memory
    fills the G candidate slots the pool leaves free, or, for a budget that `wants_more`
    to choose from, offers G of its own."""
    if room < 1:
        return []
    offers = []
    if config.copy:
        tokens, match = lookup.match(min(config.copy, room))
        offers.append(Offer(tuple(tokens), ("copy", match)))
    pooled = pool.entries(context[-1])[: config.guess]
    for cont, evidence in pooled:
        offers.append(Offer(cont[:room], ("pool", evidence.in_text, min(evidence.count, 3))))
    if memory is not None:
        # the paper's step verifies at most G candidates of N-1 tokens: the memory fills free slots
        free, length = (config.guess, room) if wants_more else (config.guess - len(pooled), min(room, config.ngram - 1))
        for cont, count in memory.offers(context, free):
            offers.append(Offer(cont[:length], ("memory", min(count, 4))))
    return [o for o in offers if o.tokens]
