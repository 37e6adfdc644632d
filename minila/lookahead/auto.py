"""`auto`: the limits within which the step budget decides, from the machine's cost curve.

What a step *emits* is a property of the text, and it changes from prompt to prompt and
within one: so `auto` does not fix W, N, G from a table. It sets generous limits
(`auto_config`: the widest window whose rows the curve (`speed/cost_curve.py`) prices
within WINDOW_PRICE of a greedy step, N = 5, G = 8 pool n-grams, a copy of up to 16
tokens and a recycled tree of 32 nodes) and lets the step budget (`auto_budget`,
`speed/budget.py`) decide before every step what to feed within them.
"""

from __future__ import annotations

from minila.llama.model import Transformer
from minila.lookahead.loop import LookaheadConfig
from minila.speed.budget import CostBudget
from minila.speed.cost_curve import CostCurve, cost_curve_for

WINDOWS = (1, 2, 3, 5, 7, 10, 15)  # window sizes auto may pick, with N = AUTO_NGRAM
AUTO_NGRAM, AUTO_GUESS, AUTO_COPY = 5, 8, 16
AUTO_RECYCLE = 32  # nodes of the recycled tree on offer: more than a CPU step feeds (the budget cuts)
WINDOW_PRICE = 1.25  # the most a window's rows may cost, in greedy steps, to be worth offering


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
