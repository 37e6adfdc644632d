"""The machine's side of `auto`: what a forward of T tokens costs here, and the limits
within which the step budget (`budget.py`) chooses.

A lookahead step feeds T tokens (last + window + candidate tree) and computes logits
for R of them. Its price in greedy steps, c(T, R), is a property of the hardware. On a
GPU one forward of a few hundred tokens costs about as much as one of a single token
(the weights are read once either way), so c stays near 1 and the widest window pays.
On a 2-core CPU the matrix products become compute-bound after a few rows and c climbs
(about 1.1-1.3 at T=8, 2 at T=32, 5 at T=128 for SmolLM2 in float32). We measure it: one
forward of T tokens after a cache of typical length for T = 1, 2, 4 ... 128, plus the
output head per extra row of logits, and interpolate. The measurement takes a few
seconds and is kept in `~/.cache/minila/` (or $MINILA_CACHE) per model shape, device,
dtype and thread count.

What a step *emits* is a property of the text, and it changes from prompt to prompt and
within one: so `auto` does not fix W, N, G from a table. It sets generous limits
(`auto_config`: the widest window whose rows the curve prices within WINDOW_PRICE of a
greedy step, N = 5, G = 8 pool n-grams, a copy of up to 16 tokens and a recycled tree of
32 nodes) and lets the
step budget (`auto_budget`) decide before every step what to feed within them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minila.budget import CostBudget
from minila.lookahead import LookaheadConfig
from minila.model import Transformer

WINDOWS = (1, 2, 3, 5, 7, 10, 15)  # window sizes auto may pick, with N = AUTO_NGRAM
AUTO_NGRAM, AUTO_GUESS, AUTO_COPY = 5, 8, 16
AUTO_RECYCLE = 32  # nodes of the recycled tree on offer: more than a CPU step feeds (the budget cuts)
WINDOW_PRICE = 1.25  # the most a window's rows may cost, in greedy steps, to be worth offering


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
    model: Transformer, widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128), context: int = 200, repeats: int = 5
) -> CostCurve:
    """Time forwards of T new tokens after a `context`-token cache (the fastest of
    `repeats`, after one warm-up: on a shared machine noise only ever adds time) and
    the head's cost per row of logits."""
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
        return min(times[1:])

    for t in widths:  # a first sweep only warms up (page faults, caches, the allocator)
        timed(t, 1)
    seconds = tuple(timed(t, 1) for t in widths)
    wide = max(widths)  # the head's cost per row, from the widest step
    per_row = max(timed(wide, wide) - seconds[-1], 0.0) / (wide - 1) if wide > 1 else 0.0
    return CostCurve(tuple(widths), seconds, per_row)


def _cache_file(model: Transformer) -> Path:
    root = Path(os.environ.get("MINILA_CACHE", Path.home() / ".cache" / "minila"))
    kernel = getattr(getattr(model, "attention_kernel", None), "name", "plain")  # the invariant path costs more
    key = json.dumps([asdict(model.args), str(model.device), str(model.dtype), torch.get_num_threads(), torch.__version__, kernel])
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


def choose_config(curve: CostCurve, seed: int = 0) -> LookaheadConfig:
    """The limits `auto` decodes within (module docstring): on a flat curve the paper's
    W=15, N=5; on a steep one a window of a column or two."""
    n = AUTO_NGRAM
    window = max(w for w in WINDOWS if w == 1 or curve.relative(w * (n - 1), w + 1) <= WINDOW_PRICE)
    return LookaheadConfig(window=window, ngram=n, guess=AUTO_GUESS, copy=AUTO_COPY, recycle=AUTO_RECYCLE, seed=seed)


def auto_config(model: Transformer, seed: int = 0) -> LookaheadConfig:
    """W, N, G and copy limits for this model on this device and dtype."""
    return choose_config(cost_curve_for(model), seed)


def auto_budget(model: Transformer) -> CostBudget:
    """The step budget priced by this model's cost curve on this machine."""
    return CostBudget(cost_curve_for(model).relative)
