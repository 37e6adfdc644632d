# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. How far it goes
#
# Two numbers decide whether lookahead decoding is faster than greedy decoding:
#
# * the **step compression** S = new tokens / forward passes. It depends on the text, the
#   model and the settings W (window), N (n-gram size) and G (candidates per step), but
#   not on the hardware;
# * the **cost** of one lookahead forward pass of T tokens relative to a greedy pass of
#   one token, cost(T). It depends only on the hardware (and the model size).
#
# The speedup in wall-clock time is their ratio, **S / cost(T)**. This notebook measures
# how S grows with W and N on SmolLM2, measures cost(T) on this CPU, and explains why the
# same settings that slow things down here pay off on a GPU.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import minila
from minila.autotune import measure_cost_curve

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
model, tokenizer = minila.load_checkpoint(ROOT / "weights" / "smollm2-135m-instruct", device="cpu", dtype="float32")

# %% [markdown]
# ## S as the window grows
#
# The paper's scaling plot (its Figure 5) shows S growing roughly linearly in log W for a
# fixed N, and faster for larger N: a wider window harvests more n-grams per step, and a
# larger N lets a single match accept more tokens. We measure the same on two prompts (a
# chat answer and a piece of code), with G = W as in the paper, and only 32 new tokens each
# so that the sweep fits in well under a minute on a laptop CPU. The numbers are therefore
# noisy; the trend is what matters.

# %%
QUESTIONS = {
    "chat": "Explain in three sentences why the sky is blue.",
    "code": "Write a Python function that checks whether a number is prime.",
}
PROMPTS = {name: tokenizer.apply_chat_template([{"role": "user", "content": q}]) for name, q in QUESTIONS.items()}
MAX_NEW = 32
WINDOWS, NGRAMS = [2, 5, 15], [3, 5]

baseline = {name: minila.greedy_generate(model, p, MAX_NEW, eos_ids=tokenizer.eos_ids) for name, p in PROMPTS.items()}
results = {}  # (N, W) -> list of (prompt name, Generation)
start = time.perf_counter()
for n in NGRAMS:
    for w in WINDOWS:
        config = minila.LookaheadConfig(window=w, ngram=n, guess=w)
        runs = [
            (name, minila.lookahead_generate(model, p, MAX_NEW, config, eos_ids=tokenizer.eos_ids))
            for name, p in PROMPTS.items()
        ]
        assert all(gen.tokens == baseline[name].tokens for name, gen in runs), "lookahead must equal greedy"
        results[n, w] = runs
print(f"{len(results) * len(PROMPTS)} lookahead runs in {time.perf_counter() - start:.0f} s, all identical to greedy")


def compression(runs):
    """S over all prompts together: total new tokens / total forward passes."""
    return sum(len(g.tokens) for _, g in runs) / sum(g.steps for _, g in runs)


def speedup(runs):
    """Wall-clock speedup over greedy on the same prompts."""
    return sum(baseline[name].seconds for name, _ in runs) / sum(g.seconds for _, g in runs)


print(f"{'N':>2} {'W=G':>4} {'tokens/step fed':>16} {'S':>6} {'speedup here':>13}")
for (n, w), runs in results.items():
    widths = [s.width for _, g in runs for s in g.stats[1:]]
    print(f"{n:>2} {w:>4} {np.mean(widths):>16.0f} {compression(runs):>6.2f} {speedup(runs):>12.2f}x")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
for n in NGRAMS:
    left.plot(WINDOWS, [compression(results[n, w]) for w in WINDOWS], "o-", label=f"N = {n}")
    right.plot(WINDOWS, [speedup(results[n, w]) for w in WINDOWS], "o-", label=f"N = {n}")
left.set_title(f"step compression S (greedy: 1), {MAX_NEW} tokens x {len(PROMPTS)} prompts")
left.set_ylabel("S = tokens / forward passes")
right.axhline(1, color="black", lw=0.8)
right.set_title("wall-clock speedup over greedy, this CPU")
right.set_ylabel("greedy time / lookahead time")
for ax in (left, right):
    ax.set_xscale("log", base=2)
    ax.set_xticks(WINDOWS, [str(w) for w in WINDOWS])
    ax.set_xlabel("window W (= G)")
    ax.grid(True, alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# S grows with the window, and more with N = 5 than with N = 3. With this 135M model and
# only 64 tokens in all, the gains are modest and noisy; for comparison, the paper measures
# 1.5x to 2.3x lower latency on one A100 (about 1.5-1.8x for LLaMA-2-chat 7B on MT-bench,
# above 2x for CodeLlama on HumanEval).
#
# The speedup on this CPU tells another story: the wide settings are *slower* than greedy.
# The reason is the cost of the wider pass.
#
# ## The price of a wide step
#
# `minila.autotune.measure_cost_curve` times one forward pass of T tokens after a
# 200-token cache, as notebook 1 did by hand (it also measures the output head's cost per
# extra row of logits, which we leave out here). A lookahead step feeds
# T = 1 + (W-1) + (N-2)W + G(N-1) tokens once the window and the pool are full; for the
# paper's W = 15, N = 5, G = 15 that is 120.

# %%
curve = measure_cost_curve(model, widths=(1, 4, 16, 64, 128), context=200, repeats=3)
T = np.array(curve.widths)
cost = np.array([curve.relative(t, 1) for t in T])  # time of a pass of T tokens / a pass of 1
print("T:          " + " ".join(f"{t:>6}" for t in T))
print("cost(T):    " + " ".join(f"{c:>6.2f}" for c in cost))


# %% [markdown]
# Each run records the width of every step (`Generation.stats[i].width`), so we can
# predict its speedup from the two measured quantities: the tokens it produced, divided by
# the cost of all its passes in units of a greedy pass. That is S / cost(T) with each
# step's own T. Compare with the measured wall-clock speedup:

# %%
print(f"{'N':>2} {'W=G':>4} {'S':>6} {'mean cost(T)':>13} {'predicted S/cost':>17} {'measured':>9}")
predicted, measured = [], []
for (n, w), runs in results.items():
    steps = [s for _, g in runs for s in g.stats[1:]]  # the prefill costs the same for both methods
    tokens = sum(len(g.tokens) - g.accepted[0] for _, g in runs)
    mean_cost = np.mean([curve.relative(s.width, 1) for s in steps])  # interpolated between measured T
    predicted.append(tokens / (len(steps) * mean_cost))
    measured.append(speedup(runs))
    print(f"{n:>2} {w:>4} {compression(runs):>6.2f} {mean_cost:>13.2f} {predicted[-1]:>16.2f}x {measured[-1]:>8.2f}x")

# %% [markdown]
# The prediction is rough (timings on a shared CPU are noisy, and the prefill and the
# Python bookkeeping are left out), but it explains the sign: on this CPU cost(T) rises
# almost as fast as S does, so lookahead decoding barely breaks even at best.
#
# ## On a GPU
#
# A GPU has far more arithmetic per byte of memory bandwidth than a CPU. A decoding step
# of a model with P parameters in 16-bit precision must read its 2P bytes of weights and
# performs about 2P FLOPs per token fed. As long as the arithmetic for T tokens takes less
# time than reading the weights, the step costs the same as for one token:
#
# $$ \text{cost}(T) \approx \max\left(1, \; T \cdot \frac{\text{memory bandwidth}}{\text{peak FLOP/s}}\right). $$
#
# For an A100 (about 2 TB/s and 312 TFLOP/s in bf16) the knee sits near T = 150; for an
# H100 near 300. That is a simple roofline model, not a measurement: real kernels reach the
# knee earlier, and attention over a long cache adds cost, but the shape holds. The
# paper's W = 15, N = 5, G = 15 step of 120 tokens is nearly free on an A100 for a 7B
# model, so most of its compression becomes speedup there. On this CPU the same step
# costs several greedy steps.

# %%
knees = {"A100 (roofline model)": 312e12 / 2.0e12, "H100 (roofline model)": 989e12 / 3.35e12}
grid = np.geomspace(1, 256, 50)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(T, cost, "o-", color="tab:red", label="this CPU, SmolLM2-135M fp32 (measured)")
for (label, knee), style in zip(knees.items(), ["--", ":"]):
    ax.plot(grid, np.maximum(1, grid / knee), style, color="tab:blue", label=label)
w15 = 1 + 14 + 3 * 15 + 15 * 4
ax.axvline(w15, color="0.5", lw=0.8)
ax.text(w15 * 1.05, ax.get_ylim()[1] * 0.9, "W=15, N=5, G=15", fontsize=8, va="top")
ax.set_xscale("log", base=2)
ax.set_xlabel("T = tokens fed in one pass")
ax.set_ylabel("cost(T) / cost(1)")
ax.set_title("The price of a wide step")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# So the same algorithm, with the same S, is a slowdown on a small CPU and a speedup on
# a GPU. Lookahead decoding trades FLOPs, which a GPU has in surplus during decoding, for
# fewer sequential steps; the scaling law says that more FLOPs per step (larger W, N, G)
# buy more compression, with diminishing returns. Good settings keep T under the knee of
# the hardware while maximising S: the paper uses W = 15, N = 5 for a 7B model on an A100
# (W = 10 and 7 for 13B and 33B); on a CPU, small windows or plain greedy decoding.

# %% [markdown]
# ## Choosing W, N, G automatically
#
# TODO(lead): this section will show how `minila` picks W, N and G for a given model and
# device: measure cost(T) once, estimate S for candidate settings, and choose the setting
# with the best predicted S / cost(T). Placeholder until the auto-tuner lands.
