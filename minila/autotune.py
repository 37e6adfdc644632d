"""Choosing W, N, G (and copy) for the machine at hand: speed = compression / step cost.

A lookahead step feeds T tokens (last + window + candidate tree) and computes logits
for R of them; it emits S tokens on average. Greedy decoding feeds 1 and emits 1. So

    speedup = S(W, N, G, copy) / c(T, R),   c(T, R) = time of the step / time of a greedy step.

The two factors come from different places:

- c is a property of the hardware. On a GPU one forward of a few hundred tokens costs
  about as much as one of a single token (the weights are read once either way), so c
  stays near 1 and the widest configuration wins. On a 2-core CPU the matrix products
  become compute-bound after a dozen rows and c climbs (about 1.1-1.3 at T=8, 2 at
  T=32, 5 at T=128 for SmolLM2 in float32, with the weights pre-packed). We measure it: one forward of T tokens
  after a cache of typical length for T = 1, 2, 4 ... 128, plus the output head per row
  of logits, and interpolate. The measurement takes a few seconds and is kept in
  `~/.cache/minila/` (or $MINILA_CACHE) per model shape, device, dtype and thread count.
- S is a property of the model and the text. We use compressions measured by
  `minila.bench` with SmolLM2-135M-Instruct on MT-bench and HumanEval prompts (the
  table below, the mean of the two); for another model they are a prior, not a law.
  A prompt-lookup candidate (copy = 10 tokens copied from where the context's tail
  occurred before) raises S most per token fed: code and answers that quote the
  question repeat themselves, and a window of guesses is expensive on a CPU.

`choose_config` returns the measured configuration with the best S / c; the plain
window (1, 2, 0, 0) is greedy decoding at greedy cost, so auto never picks something
it expects to be slower than greedy.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minila.lookahead import LookaheadConfig
from minila.model import Transformer

# (W, N, G, copy) -> (mean compression S, mean tokens fed per step T), measured with
# lookahead_generate on SmolLM2-135M-Instruct, float32, 128 new tokens, the first 6
# MT-bench and 6 HumanEval prompts (W=15 without copy: the first 5 and 4); the mean of
# the two sets. T counts the candidate tree after prefix sharing, so it is below the
# nominal width. copy = K adds a prompt-lookup candidate of K tokens (ContextLookup).
ACCEPTANCE: dict[tuple[int, int, int, int], tuple[float, float]] = {
    (1, 2, 0, 0): (1.0, 1.0),  # greedy decoding in lookahead's clothes
    (2, 3, 2, 0): (1.593, 6.3),  # MT-bench 1.29, HumanEval 1.90
    (3, 3, 3, 0): (1.667, 9.1),  # MT-bench 1.35, HumanEval 1.99
    (2, 4, 3, 0): (1.756, 10.3),  # MT-bench 1.37, HumanEval 2.15
    (3, 4, 2, 0): (1.741, 12.3),  # MT-bench 1.40, HumanEval 2.08
    (1, 4, 3, 0): (1.680, 7.2),  # MT-bench 1.25, HumanEval 2.11
    (1, 5, 5, 0): (1.831, 11.2),  # MT-bench 1.28, HumanEval 2.38
    (4, 4, 4, 0): (1.859, 17.2),  # MT-bench 1.50, HumanEval 2.22
    (5, 4, 5, 0): (1.906, 21.1),  # MT-bench 1.52, HumanEval 2.30
    (5, 5, 5, 0): (1.994, 27.7),  # MT-bench 1.51, HumanEval 2.48
    (15, 5, 15, 0): (2.186, 74.8),  # MT-bench 1.69, HumanEval 2.68; T from HumanEval (not recorded for MT-bench)
    (1, 2, 0, 10): (1.926, 5.7),  # MT-bench 1.34, HumanEval 2.52: prompt lookup alone
    (1, 4, 3, 10): (2.084, 10.1),  # MT-bench 1.38, HumanEval 2.79
    (2, 4, 3, 10): (2.158, 13.3),  # MT-bench 1.49, HumanEval 2.83
    (1, 5, 5, 10): (2.191, 13.5),  # MT-bench 1.39, HumanEval 2.99
    (1, 2, 0, 5): (1.725, 3.7),  # MT-bench 1.30, HumanEval 2.15
    (5, 5, 5, 10): (2.384, 29.7),  # MT-bench 1.63, HumanEval 3.14
    (15, 5, 15, 10): (2.517, 75.6),  # MT-bench 1.78, HumanEval 3.25
}


@dataclass(frozen=True)
class CostCurve:
    """Seconds of one forward of T tokens (logits for one row), and of the output
    head per extra row of logits."""

    widths: tuple[int, ...]
    seconds: tuple[float, ...]
    head_seconds_per_row: float

    def step_seconds(self, tokens: float, logit_rows: float) -> float:
        """Linear interpolation between measured widths (clamped at the ends)."""
        w, s = self.widths, self.seconds
        if tokens <= w[0]:
            body = s[0]
        elif tokens >= w[-1]:
            body = s[-1] * tokens / w[-1]
        else:
            i = next(i for i in range(1, len(w)) if w[i] >= tokens)
            body = s[i - 1] + (s[i] - s[i - 1]) * (tokens - w[i - 1]) / (w[i] - w[i - 1])
        return body + self.head_seconds_per_row * max(logit_rows - 1, 0)

    def relative(self, tokens: float, logit_rows: float) -> float:
        """c(T, R): a step's time over a greedy step's time."""
        return self.step_seconds(tokens, logit_rows) / self.step_seconds(1, 1)


def clock(device: torch.device) -> float:
    """Wall time, after the device has finished what was queued (CUDA runs ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def measure_cost_curve(
    model: Transformer, widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128), context: int = 200, repeats: int = 3
) -> CostCurve:
    """Time forwards of T new tokens after a `context`-token cache (median of
    `repeats`, after one warm-up) and the head's cost per row of logits."""
    widths = tuple(w for w in widths if w < model.args.max_seq_len) or (1,)  # RoPE covers no more
    context = max(1, min(context, model.args.max_seq_len - max(widths)))
    device, vocab = model.device, model.args.vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = model.new_cache(context + max(widths))
    model(torch.randint(vocab, (context,), generator=gen).to(device), torch.arange(context, device=device), cache, logits_for=torch.tensor([-1]))
    cache.commit()

    def timed(t: int, rows: int) -> float:
        tokens = torch.randint(vocab, (t,), generator=gen).to(device)  # (T,)
        positions = torch.arange(context, context + t, device=device)
        logit_rows = torch.arange(t - rows, t, device=device)
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            start = clock(device)
            model(tokens, positions, cache, logits_for=logit_rows)  # scratch slots only
            times.append(clock(device) - start)
        return statistics.median(times[1:])

    for t in widths:  # a first sweep only warms up (page faults, caches, the allocator)
        timed(t, 1)
    seconds = tuple(timed(t, 1) for t in widths)
    wide = max(widths)  # the head's cost per row, from the widest step
    per_row = max(timed(wide, wide) - seconds[-1], 0.0) / (wide - 1) if wide > 1 else 0.0
    return CostCurve(tuple(widths), seconds, per_row)


def _cache_file(model: Transformer) -> Path:
    root = Path(os.environ.get("MINILA_CACHE", Path.home() / ".cache" / "minila"))
    key = json.dumps([asdict(model.args), str(model.device), str(model.dtype), torch.get_num_threads(), torch.__version__])
    return root / f"cost-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def cost_curve_for(model: Transformer) -> CostCurve:
    """The model's cost curve on this machine: measured once, then read back."""
    path = _cache_file(model)
    try:
        return CostCurve(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(path.read_text()).items()})
    except (OSError, ValueError, TypeError):
        pass
    curve = measure_cost_curve(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")  # then renamed: a killed run leaves no half file
        partial.write_text(json.dumps(asdict(curve)))
        os.replace(partial, path)
    except OSError:  # a read-only home only costs a re-measurement next time
        pass
    return curve


def predicted_speedup(curve: CostCurve, window: int, ngram: int, guess: int, copy: int = 0) -> float:
    s, tokens = ACCEPTANCE[(window, ngram, guess, copy)]
    nodes = max(tokens - window * (ngram - 1), 0)  # what is fed beyond `last` and the window
    logit_rows = (0 if ngram == 2 else 1) + window + nodes  # `last` (unless in the top level), top level, candidates
    return s / curve.relative(tokens, logit_rows)


def choose_config(curve: CostCurve, seed: int = 0) -> LookaheadConfig:
    window, ngram, guess, copy = max(ACCEPTANCE, key=lambda setting: predicted_speedup(curve, *setting))
    return LookaheadConfig(window=window, ngram=ngram, guess=guess, copy=copy, seed=seed)


def auto_config(model: Transformer, seed: int = 0) -> LookaheadConfig:
    """W, N, G and copy for this model on this device and dtype (see the module docstring)."""
    return choose_config(cost_curve_for(model), seed)
