"""Lookahead parallelism, part 2: one request's lookahead step spread over K ranks.

Every rank holds the whole model and replicates the decoder's small state (window,
pool, prompt lookup, the accepted text); only the forward pass is shared out. A step:

    1. every rank builds the same candidates from the same pool and cuts the step the
       same way (layout.py): its window columns, its candidates, and the
       accepted tokens it must re-feed;
    2. every rank runs its share in one forward: no communication, because a row only
       needs its own ancestors and every rank feeds those;
    3. one all-gather of a few integers per rank (`Payload`): its verdict (tokens
       accepted from its candidates, the best candidate's global index) and the fresh
       top-level tokens of its columns. That is all a step communicates;
    4. every rank picks the same winner (most tokens, then lowest candidate index:
       exactly the candidate single-process verification picks) and applies the same
       update: window, pool, emitted text. The replicas stay identical by construction.

Caches. Each rank's cache must hold the accepted sequence. `last` was fed by every rank,
so every rank commits its row. The matched candidate tokens were fed by one rank only,
so nobody commits them; instead they are fed again, as ordinary inputs before `last`,
at the start of the next step on every rank (`RankLayout.refeed`). Invariant, after
each step: committed rows + tokens to re-feed == everything accepted except the newest
token. The step count does not change: the re-fed tokens ride in the next forward,
which happens anyway, and every row of it sees exactly the history it would see in
one process (committed rows or re-fed rows, the same tokens at the same positions).
Why re-feed rather than send the winner's keys and values to the others: sending needs a
second collective after the all-gather (only then is the winner known) on every step's
critical path, of m x layers x 2 x kv_heads x head_dim numbers (2 MiB for 4 tokens of a
7B model in fp16), while re-fed rows ride in a forward that runs anyway, nearly free where
LP pays (a GPU's memory-bound forward). bench/lp_carry_cost.py times both: on the 2-core
CPU a re-fed token costs about 1 ms of forward and a broadcast about 0.4 ms, so there
moving would save 1-2% of a step; we keep the simpler exchange, in which every rank's
cache holds only rows that rank computed itself.

Every emitted token is still one rank's model argmax along an accepted path, so the
output equals greedy decoding's, and the number of steps equals single-process
lookahead's with the same settings (the tests check both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from minila.decoding.generation import Generation, OnTokens, check_request, prefill
from minila.llama.model import Transformer
from minila.lookahead.layout import CandidateTree, candidate_tree
from minila.lookahead.loop import LookaheadConfig, gather_offers
from minila.lookahead.ngram_pool import ContextLookup, NGramPool
from minila.lookahead.verify import verify
from minila.lookahead.window import LookaheadWindow
from minila.parallel.layout import RankLayout, assign_candidates, cut_columns, rank_cost, rank_layout


@dataclass
class ParallelGeneration(Generation):
    """A Generation (rank 0's view; every rank's tokens and steps are the same) plus
    what the parallel steps cost: every rank's width and the time spent in the all-gather."""

    ranks: int = 1
    rank_widths: list[tuple[int, ...]] = field(default_factory=list)  # per decoding step, per rank
    gather_seconds: list[float] = field(default_factory=list)  # per decoding step, this rank


class Payload:
    """What one rank tells the others after its forward, as one int64 tensor:

        [width, matched, winner, token_0 .. token_{V-1}, fresh_0 .. fresh_{C-1}]

    width: rows it fed; matched: candidate tokens its best candidate matched; winner:
    that candidate's global index (-1: none); tokens: its verdict (matched + 1 model
    tokens), padded with -1 to V = the longest verdict possible; fresh: the new top-level
    tokens of its columns, padded to C = the widest chunk. Fixed size: no pickling."""

    HEAD = 3

    def __init__(self, verdict_len: int, chunk: int) -> None:
        self.verdict_len, self.chunk = verdict_len, chunk

    @property
    def size(self) -> int:
        return self.HEAD + self.verdict_len + self.chunk

    def pack(self, width: int, tokens: Sequence[int], winner: int | None, fresh: Sequence[int]) -> list[int]:
        pad_t, pad_f = self.verdict_len - len(tokens), self.chunk - len(fresh)
        return [width, len(tokens) - 1, -1 if winner is None else winner, *tokens, *[-1] * pad_t, *fresh, *[-1] * pad_f]

    def unpack(self, row: Sequence[int]) -> tuple[int, int, int, list[int], list[int]]:
        width, matched, winner = row[: self.HEAD]
        tokens = list(row[self.HEAD : self.HEAD + matched + 1])
        fresh = [t for t in row[self.HEAD + self.verdict_len :] if t >= 0]
        return width, matched, winner, tokens, fresh


class RankDecoder:
    """One rank's lookahead decoder. `forward()` runs its share of a step and returns
    its payload; `finish(gathered)` applies everyone's payloads. Driven in lockstep by
    `parallel_generate` (over torch.distributed) or `lockstep_generate` (in one process)."""

    def __init__(
        self,
        model: Transformer,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        config: LookaheadConfig,
        eos_ids: Sequence[int],
        rank: int,
        ranks: int,
        on_tokens: OnTokens | None = None,
    ) -> None:
        if not 1 <= ranks <= config.window:
            raise ValueError(f"{ranks} ranks for {config.window} window columns: each rank needs a column")
        self.model, self.config, self.rank, self.ranks = model, config, rank, ranks
        self.eos_ids, self.max_new_tokens, self.on_tokens = list(eos_ids), max_new_tokens, on_tokens
        refeed_max = max(config.ngram - 1, config.copy)  # the most candidate tokens a step accepts
        self.cache = model.new_cache(
            check_request(model, prompt_ids, max_new_tokens, extra_rows=config.step_tokens + refeed_max)
        )
        self.gen = ParallelGeneration(ranks=ranks)
        emitted = prefill(model, prompt_ids, self.cache, self.gen, eos_ids, max_new_tokens, on_tokens)
        self.context = list(prompt_ids) + emitted  # everything accepted; context[-1] is `last`
        self.refed: list[int] = []  # accepted tokens not in this rank's cache: fed before `last`
        self.window = LookaheadWindow(config.window, config.ngram, prompt_ids, config.seed, config.warmup)
        self.pool = NGramPool(config.ngram, config.guess)
        if config.pool_from_prompt:
            self.pool.add_sequence(prompt_ids)
        if config.pool_from_output:
            self.pool.add_sequence(self.context, start=len(prompt_ids) - config.ngram + 1)
        self.lookup = ContextLookup()
        self.lookup.extend(self.context)
        self.payload = Payload(1 + refeed_max, config.window)  # a chunk never exceeds the window
        self._start = 0.0  # perf_counter at the start of the current step

    @property
    def done(self) -> bool:
        return self.gen.done(self.max_new_tokens)

    def _candidates(self) -> list[list[int]]:
        """The step's candidates: what single-process lookahead offers to the paper's full step."""
        room = self.max_new_tokens - len(self.gen.tokens) - 1
        offers = gather_offers(self.context, self.pool, self.lookup, None, self.config, room, wants_more=False)
        return [list(o.tokens) for o in offers]

    def _cut(self, candidates: list[list[int]]) -> tuple[tuple[range, ...], tuple[tuple[int, ...], ...]]:
        """Every rank's columns and candidates (each rank computes all of them, identically)."""
        levels = len(self.window.levels)
        columns = cut_columns(self.config.window, levels, self.ranks)
        base = [rank_cost(c.start, c.stop, levels) for c in columns]
        return columns, assign_candidates([len(x) for x in candidates], base)

    def forward(self) -> torch.Tensor:
        """This rank's share of the step; returns its (P,) payload."""
        self._start = time.perf_counter()
        last, model = self.context[-1], self.model
        candidates = self._candidates()
        columns, shares = self._cut(candidates)
        mine = shares[self.rank]  # global indices of this rank's candidates
        own = [candidates[j] for j in mine]
        tree: CandidateTree = candidate_tree(own)  # shared prefixes within this rank are fed once
        levels = len(self.window.levels)
        layout: RankLayout = rank_layout(columns[self.rank], levels, len(self.refed), tree.parents, model.device)
        tokens = torch.tensor(layout.pack(self.refed, last, self.window.levels, tree.tokens), device=model.device)  # (T,)
        positions = (self.cache.length + layout.depth).clamp_(max=model.args.max_seq_len - 1)  # (T,)
        logits = model(tokens, positions, self.cache, layout.mask, layout.logit_rows)  # (R, vocab)
        # the cache keeps what every rank fed and will not feed again: the re-fed tokens and `last`
        self.cache.commit(list(range(layout.last_row + 1)))

        fresh = logits[layout.top].argmax(dim=-1).tolist()  # this rank's columns of the new top level
        verdict = verify(  # logits row 0 is `last`: the first token, computed by every rank alike
            int(logits[0].argmax()), own, lambda j, k: int(logits[layout.first_node_logit + tree.paths[j][k]].argmax())
        )
        winner = None if verdict.candidate is None else mine[verdict.candidate]
        return torch.tensor(self.payload.pack(layout.size, verdict.tokens, winner, fresh), device=model.device)

    def finish(self, gathered: Sequence[Sequence[int]], gather_seconds: float = 0.0) -> None:
        """Apply every rank's payload (rows in rank order): the same update on every rank."""
        rows = [self.payload.unpack(row) for row in gathered]
        # the winner: most tokens, then the lowest candidate index (verify's tie rule)
        best = max(rows, key=lambda r: (r[1], -r[2]))  # max() keeps the first (lowest rank) of equals
        _, _, winner, tokens, _ = best
        fresh = [tok for r in rows for tok in r[4]]  # chunks are contiguous and in rank order
        last = self.context[-1]
        self.pool.add_all(self.window.ngrams(last, fresh))
        self.window.advance(fresh)
        emitted = self.gen.end_step(
            tokens, self.eos_ids, self.max_new_tokens, self._start, max(r[0] for r in rows), self.on_tokens,
            None if winner < 0 else winner,
        )  # fmt: skip
        self.gen.rank_widths.append(tuple(r[0] for r in rows))
        self.gen.gather_seconds.append(gather_seconds)
        n_before = len(self.context)
        self.context.extend(emitted)
        self.lookup.extend(emitted)
        if self.config.pool_from_output:
            self.pool.add_sequence(self.context, start=n_before - self.config.ngram + 1)
        # the matched candidate tokens sit in one rank's scratch rows only: re-feed them next step
        self.refed = emitted[:-1]


def parallel_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    config: LookaheadConfig,
    eos_ids: Sequence[int] = (),
    on_tokens: OnTokens | None = None,
    group=None,
) -> ParallelGeneration:
    """Lookahead decoding with each step split over the ranks of a torch.distributed
    process group (gloo on CPU, NCCL on CUDA); call it on every rank with the same
    arguments. Returns this rank's ParallelGeneration (the tokens are the same on all)."""
    import torch.distributed as dist

    rank, ranks = dist.get_rank(group), dist.get_world_size(group)
    with torch.inference_mode():
        decoder = RankDecoder(model, prompt_ids, max_new_tokens, config, eos_ids, rank, ranks, on_tokens)
        slots = [torch.empty(decoder.payload.size, dtype=torch.long, device=model.device) for _ in range(ranks)]
        while not decoder.done:
            payload = decoder.forward()
            start = time.perf_counter()
            dist.all_gather(slots, payload, group=group)
            gathered = torch.stack(slots).tolist()  # (K, P); .tolist() waits for the transfer
            decoder.finish(gathered, time.perf_counter() - start)
    return decoder.gen


def lockstep_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    config: LookaheadConfig,
    ranks: int,
    eos_ids: Sequence[int] = (),
) -> list[ParallelGeneration]:
    """The same algorithm with K ranks simulated one after another in this process:
    what each rank feeds and emits, without launching anything (tests and notebooks)."""
    with torch.inference_mode():
        decoders = [RankDecoder(model, prompt_ids, max_new_tokens, config, eos_ids, r, ranks) for r in range(ranks)]
        while not decoders[0].done:
            gathered = torch.stack([d.forward() for d in decoders]).tolist()  # (K, P)
            for d in decoders:
                d.finish(gathered)
    return [d.gen for d in decoders]
