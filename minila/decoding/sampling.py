"""Sampling: temperature, top-k and top-p, and why lookahead keeps the distribution.

A `Sampler` is a `Choose` (a row of logits in, a token id out), so it plugs into the
same decoders as the argmax: `sample_generate` is plain one-token-per-step sampling,
and `lookahead_generate(..., sampling=cfg)` verifies candidates by "sample, then match"
(see verify.py). The lookahead window itself stays greedy: its guesses only decide
*which* candidates get checked, never which token is emitted.

Processing order, applied to one row (all of it in float64 on the CPU, so a seed gives
the same tokens on every device):

    1. temperature   logits / T          (T == 0 means argmax, see below)
    2. top-k         keep the k highest logits; ties at the k-th place go to the lowest
                     ids, so exactly min(k, vocab) tokens stay (k == 0: off)
    3. top-p         softmax over what is left, then keep the smallest set of most
                     probable tokens whose mass is >= p (always at least one token)
    4. renormalise and draw one uniform u; the token is where u falls in the cumulative
       distribution (inverse CDF), so every draw consumes exactly one random number

T == 0 or k == 1 is the argmax exactly, ties to the lowest id as torch.argmax does, and
draws nothing. `processed_probs` returns the distribution of step 4, for tests.

Why sample-then-match is exact. Verification emits t1 = a draw from the row of `last`,
then, while some candidate's next token equals the token just emitted, a draw from
that candidate's next row. Such a row was computed with exactly the accepted prefix as
its context, so every emitted token is a fresh draw from the model's conditional given
everything emitted before it. Which rows get examined depends on the candidates (fixed
before the step, from earlier draws and the greedy window) and on the tokens already
drawn, never on the draw being made. So by the chain rule the sequence has the model's
distribution, whatever the candidates were: they change how many tokens a step emits,
not which.

Same seed, same tokens? Both decoders draw one uniform per emitted token, in order, from
the distribution given the same prefix. With bitwise-equal logits they would emit the
same tokens. Lookahead computes a row inside a multi-token forward pass, which rounds
differently from a one-token pass, so the two distributions differ by rounding noise;
the outputs differ only when a uniform lands within that noise of a CDF boundary (or a
top-p/top-k cut moves). Measured on tiny random models (600 runs of 24 tokens, 2535
multi-token steps): float64 and float32 identical in every run, bfloat16 in 566. After
a divergence the two runs are unrelated, each still an exact sample. The float64 case
is a test in tests/test_sampling.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from minila.decoding.generation import Generation, OnTokens
from minila.decoding.greedy import autoregressive_generate
from minila.errors import MinilaError
from minila.llama.model import Transformer


@dataclass(frozen=True)
class SamplingConfig:
    """temperature (0: argmax), top_k (0: off), top_p (1: off), seed of the request's draws."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise MinilaError(f"SamplingConfig.temperature must be a finite number >= 0 (0 = argmax), got {t!r}")
        k = self.top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise MinilaError(f"SamplingConfig.top_k must be an integer >= 0 (0 = off), got {k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise MinilaError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {p!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise MinilaError(f"SamplingConfig.seed must be an integer in [0, 2**64), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """Whether this config always picks the argmax."""
        return self.temperature == 0 or self.top_k == 1


def processed_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution a Sampler draws from: (vocab,) float64 on the CPU, summing to 1."""
    x = logits.detach().to("cpu", torch.float64).reshape(-1)  # (V,)
    if cfg.greedy:
        return torch.nn.functional.one_hot(x.argmax(), x.numel()).to(torch.float64)
    x = x / cfg.temperature
    if cfg.top_k == 0 and cfg.top_p == 1:
        return torch.softmax(x, dim=0)  # nothing to cut
    # best first; stable, so equal logits keep id order and the top-k cut is deterministic
    order = torch.sort(x, descending=True, stable=True).indices  # (V,)
    if cfg.top_k:
        order = order[: cfg.top_k]  # (k,)
    probs = torch.softmax(x[order], dim=0)  # (k,) non-increasing
    if cfg.top_p < 1:
        mass_before = torch.cumsum(probs, 0) - probs  # (k,) mass of the better tokens
        keep = int((mass_before < cfg.top_p).sum())  # a token stays while the mass before it is short of p
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    out = torch.zeros_like(x)
    out[order] = probs
    return out


class Sampler:
    """Draws tokens for one request: a Choose with its own seeded CPU generator.
    Create one per request, so a seed always gives the same tokens."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.config.greedy:
            return int(logits.argmax())
        probs = processed_probs(logits, self.config)  # (V,)
        u = torch.rand((), generator=self.generator, dtype=torch.float64)
        cdf = torch.cumsum(probs, 0)  # (V,) flat over zero-probability tokens: never picked
        token = int(torch.searchsorted(cdf, u, right=True))  # first token whose cdf exceeds u
        if token >= probs.numel():  # u beyond a cdf that rounded to just below 1
            token = int(probs.nonzero()[-1])
        return token


def sample_generate(
    model: Transformer,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: SamplingConfig,
    eos_ids: Sequence[int] = (),
    on_tokens: OnTokens | None = None,
) -> Generation:
    """Plain sampling, one token per forward pass: the reference lookahead sampling must match."""
    return autoregressive_generate(model, prompt_ids, max_new_tokens, eos_ids, on_tokens, Sampler(sampling))
