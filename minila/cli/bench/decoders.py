"""One decoder per method, all with the same signature: minila's, and transformers' as peers.

Peers: transformers' `generate` on the same folder, same dtype and threads, SDPA
attention. Their forward passes are counted by a hook on the model (prompt lookup
does not report them); their output is cut at the first EOS id and at the budget,
as minila's decoders cut theirs, so token lists compare one to one.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from minila.decoding.generation import Generation
from minila.decoding.greedy import greedy_generate
from minila.llama.model import Transformer
from minila.lookahead.auto import auto_budget, auto_config
from minila.lookahead.jacobi import jacobi_generate
from minila.lookahead.loop import LookaheadConfig, lookahead_generate
from minila.speed.budget import FULL
from minila.speed.cost_curve import clock
from minila.speed.memory import NGramMemory
from minila.speed.recycle import SuccessorTable


@dataclass(frozen=True)
class Run:
    """One method on one prompt."""

    tokens: list[int]
    steps: int  # forward passes, the prefill included
    seconds: float  # wall clock of the whole call
    fed: int  # tokens fed to the model after the prefill (for the mean step width)
    trimmed: int = 0  # tokens a peer produced past the first EOS or the budget
    outside: float | None = None  # seconds of the steps after the prefill spent outside the forward
    rank_fed: tuple[int, ...] = ()  # lookahead parallelism: rows each rank fed after the prefill
    window_steps: int | None = None  # lookahead: steps after the prefill that ran the window (the budget's choice)


# prompt ids, max_new_tokens -> Run
Decoder = Callable[[Sequence[int], int], Run]


def auto_lookahead_config(model: Transformer, seed: int) -> LookaheadConfig:
    """The limits behind `la:auto` (the step budget decides within them)."""
    return auto_config(model, seed=seed)


def minila_decoder(model: Transformer, decode: Callable[[Sequence[int], int], Generation]) -> Decoder:
    def run(ids: Sequence[int], max_new_tokens: int) -> Run:
        start = clock(model.device)
        gen = decode(ids, max_new_tokens)
        seconds = clock(model.device) - start
        outside = sum(s.seconds - s.forward_seconds for s in gen.stats[1:]) if gen.stats[1:] and gen.stats[1].forward_seconds else None
        ranks = range(getattr(gen, "ranks", 0))  # a ParallelGeneration knows every rank's width
        rank_fed = tuple(sum(w[r] for w in gen.rank_widths) for r in ranks)
        plans = [s.plan for s in gen.stats[1:] if s.plan is not None]
        window_steps = sum(bool(p.window) for p in plans) if plans else None
        return Run(gen.tokens, gen.steps, seconds, sum(s.width for s in gen.stats[1:]), outside=outside,
                   rank_fed=rank_fed, window_steps=window_steps)  # fmt: skip

    return run


class HFPeer:
    """transformers' LlamaForCausalLM on the same folder, with a forward-pass counter.
    transformers is a dev/bench dependency: imported here, never by minila itself."""

    def __init__(self, ckpt: str | Path, device: torch.device, dtype: torch.dtype, eos_ids: Sequence[int]) -> None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.version = transformers.__version__
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(ckpt), dtype=dtype, attn_implementation="sdpa"
        ).to(device).eval()
        self.device, self.eos_ids = device, list(eos_ids)
        self.widths: list[int] = []  # tokens fed by each forward pass of the current call
        self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        # nothing from the folder's generation_config may change the stopping rule
        self.model.generation_config = self._config(1)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.widths.append(int(ids.shape[-1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1]))

    def _config(self, max_new_tokens: int, **extra):
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False, max_new_tokens=max_new_tokens, min_length=0, min_new_tokens=None,
            temperature=None, top_p=None, top_k=None, repetition_penalty=None,
            eos_token_id=self.eos_ids or None, pad_token_id=self.eos_ids[0] if self.eos_ids else None,
            bos_token_id=None, **extra,
        )  # fmt: skip

    def decoder(self, **extra) -> Decoder:
        """generate() with extra GenerationConfig fields, e.g. prompt_lookup_num_tokens=10."""

        def run(ids: Sequence[int], max_new_tokens: int) -> Run:
            config = self._config(max_new_tokens, **extra)
            x = torch.tensor([list(ids)], device=self.device)  # (1, T)
            self.widths = []
            start = clock(self.device)
            out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
            seconds = clock(self.device) - start
            new = out[0, len(ids) :].tolist()
            tokens = cut(new, self.eos_ids, max_new_tokens)
            return Run(tokens, len(self.widths), seconds, sum(self.widths[1:]), len(new) - len(tokens))

        return run


def cut(tokens: list[int], eos_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Tokens up to and including the first EOS, at most max_new_tokens: minila's rule."""
    out = tokens[:max_new_tokens]
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    return out


def build_decoders(
    methods,
    model,
    tokenizer,
    ckpt,
    seed: int,
    memory: NGramMemory | None = None,
    lookahead: Callable[..., Generation] = lookahead_generate,
    successors: SuccessorTable | None = None,
) -> tuple[dict[str, Decoder], dict]:
    """One Decoder per method, and facts to record (lookahead settings, peer version).
    `memory` and `successors` are what la:auto remembers across the run's prompts (None: nothing);
    `lookahead` decodes the fixed la:W,N,G methods (under torchrun: minila.parallel's)."""
    eos = list(tokenizer.eos_ids)
    decoders: dict[str, Decoder] = {}
    info: dict = {}
    peer: HFPeer | None = None
    remembering = 0  # la:auto variants so far: each after the first remembers on its own
    for m in methods:
        if m.kind == "greedy":
            decoders[m.name] = minila_decoder(model, lambda ids, k: greedy_generate(model, ids, k, eos))
        elif m.kind == "jacobi":
            block = m.params[0]
            decoders[m.name] = minila_decoder(model, lambda ids, k, b=block: jacobi_generate(model, ids, k, b, eos, seed))
        elif m.kind == "lookahead":
            if m.params:  # the paper's step: the whole window and every candidate, every step
                window, ngram, guess, *copy = m.params
                config = LookaheadConfig(window, ngram, guess, copy=copy[0] if copy else 0, seed=seed)
                budget, recall, table = FULL, None, None
            else:
                config, budget, recall, table = auto_lookahead_config(model, seed), auto_budget(model), memory, successors
                if remembering:  # else one would replay the answer the other just gave
                    recall, table = deepcopy(recall), deepcopy(table)
                remembering += 1
                table = table if m.recycle else None
            info[m.name] = {"window": config.window, "ngram": config.ngram, "guess": config.guess, "copy": config.copy}
            if budget is not FULL:
                info[m.name].update(recycle=config.recycle if table is not None else 0, budget="cost")

            def decode(ids, k, c=config, b=budget, r=recall, t=table):
                if b is FULL:  # the paper's step, which lookahead parallelism can split
                    return lookahead(model, ids, k, c, eos)
                return lookahead_generate(model, ids, k, c, eos, budget=b, memory=r, successors=t)

            decoders[m.name] = minila_decoder(model, decode)
        else:
            if peer is None:
                peer = HFPeer(ckpt, model.device, model.dtype, eos)
                info["transformers"] = peer.version
            extra = {"prompt_lookup_num_tokens": m.params[0]} if m.kind == "hf-pld" else {}
            decoders[m.name] = peer.decoder(**extra)
    return decoders, info
