# ---
# jupyter:
#   execution:
#     timeout: 1800
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
# # 3. Harvesting n-grams
#
# Notebook 2 ended with an observation: the Jacobi trajectory is full of right tokens
# that arrive too early to be accepted. Lookahead decoding turns the trajectory into a
# source of **n-grams** (runs of N consecutive tokens) and collects them in a pool.
#
# It keeps the last N-1 Jacobi iterations as a 2-D **window**: W columns by N-1 levels.
# With `last` at position p,
#
# * level 0 holds W-1 guesses at p+1 .. p+W-1 (column 0 of level 0 is `last` itself);
# * level l (1 .. N-2) holds W guesses, column c at position p+l+c: it is the Jacobi
#   update of the level below, one position further along.
#
# One forward pass updates the window: the argmax at every row of the top level is a
# fresh guess one position further on. Read a column from bottom to top and append its
# fresh token, and you get N tokens at consecutive positions, each produced from the ones
# below it: an n-gram, with the level-0 token as its **key**. Each step harvests W of
# them. This notebook drives the window by hand on SmolLM2 and watches the pool fill.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import Patch, Rectangle

import minila
from minila.lookahead.layout import step_layout
from minila.lookahead.ngram_pool import NGramPool
from minila.lookahead.verify import verify
from minila.lookahead.window import LookaheadWindow

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
model, tokenizer = minila.load_checkpoint(ROOT / "weights" / "smollm2-135m-instruct", device="cpu", dtype="float32")

# %% [markdown]
# ## Driving the window
#
# We use the package's pieces directly: `LookaheadWindow` holds the levels,
# `step_layout` says where each token goes and gives the attention mask (notebook 4 looks
# at it closely), the model does one forward pass, and `NGramPool` stores what we harvest.
# To isolate the window we leave out verification here: each step accepts just the
# model's own next token, as greedy decoding would (notebook 5 adds verification).
#
# The window starts with random prompt tokens (from a seed) and, in the reference's
# "fill" warm-up, gains one level per step until it has N-1; it harvests once it is full.

# %%
W, N, G = 5, 4, 5
prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}]
)

with torch.inference_mode():
    cache = model.new_cache(len(prompt) + 64)
    logits = model(torch.tensor(prompt), torch.arange(len(prompt)), cache, logits_for=torch.tensor([-1]))
    cache.commit()
context = prompt + [int(logits[0].argmax())]  # context[-1] is `last`
window = LookaheadWindow(W, N, prompt, seed=0)
pool = NGramPool(N, per_key=G)


@torch.inference_mode()
def window_step(last):
    """One forward pass of `last` and the window: the fresh top level and the next token."""
    layout = step_layout(W, len(window.levels))  # no candidates: lookahead branch only
    tokens = torch.tensor(layout.pack(last, window.levels, []))
    logits = model(tokens, cache.length + layout.depth, cache, layout.mask, layout.logit_rows)
    cache.commit([0])  # keep `last` only: this notebook accepts one token per step
    return logits[layout.top].argmax(dim=-1).tolist(), int(logits[0].argmax())


snapshots = []  # (last, levels, fresh, harvested) of the first steps, for drawing
for step in range(4):
    last = context[-1]
    fresh, next_token = window_step(last)
    harvested = window.ngrams(last, fresh)  # empty until the window is full
    snapshots.append((last, [list(level) for level in window.levels], fresh, harvested))
    pool.add_all(harvested)
    window.advance(fresh)
    context.append(next_token)
print(f"after {len(snapshots)} steps: {len(window.levels)} levels, pool of {len(pool)} n-grams")


# %% [markdown]
# ## The window, drawn
#
# Each panel is one step. Rows are levels, columns are positions relative to `last`. Blue
# cells are the window fed to the model; orange cells are the argmaxes the pass returns
# for the top level (they become the next level). The red outline follows one column:
# the n-gram it yields, key at the bottom.

# %%
def show(token):
    return tokenizer.decode([token]).replace("\n", "⏎").replace(" ", "·")[:7]


def draw_window(ax, last, levels, fresh, harvested, column):
    cells = [(0, 0, last, "0.75")]  # (x = position - p, y = level, token, colour)
    cells += [(c, 0, t, "#aed6f1") for c, t in enumerate(levels[0], start=1)]
    for level, tokens in enumerate(levels[1:], start=1):
        cells += [(level + c, level, t, "#aed6f1") for c, t in enumerate(tokens)]
    top = len(levels)
    cells += [(top + c, top, t, "#f5cba7") for c, t in enumerate(fresh)]
    for x, y, token, colour in cells:
        outline = harvested and x - y == column  # the cells of this column's n-gram
        edge, lw = ("red", 2.5) if outline else ("white", 1)
        ax.add_patch(Rectangle((x, y), 1, 1, facecolor=colour, edgecolor=edge, lw=lw))
        ax.text(x + 0.5, y + 0.5, show(token), ha="center", va="center", fontsize=7)
    ax.set_xlim(0, W + N - 1)
    ax.set_ylim(0, N)
    ax.set_xticks([x + 0.5 for x in range(W + N - 1)], range(W + N - 1))
    ax.set_yticks([y + 0.5 for y in range(N)], [f"level {y}" for y in range(N - 1)] + ["new top"])
    ax.set_xlabel("position relative to last")


fig, axes = plt.subplots(2, 2, figsize=(12, 6.5))
for i, (ax, snap) in enumerate(zip(axes.flat, snapshots)):
    last, levels, fresh, harvested = snap
    draw_window(ax, *snap, column=1)
    if harvested:
        key, rest = harvested[1]
        ngram = " ".join(show(t) for t in rest)
        ax.set_title(f"step {i + 2}: harvest, e.g. column 1: {show(key)} → {ngram}", fontsize=10)
    else:
        ax.set_title(f"step {i + 2}: warm-up, {len(levels)} of {N - 1} levels (no harvest yet)", fontsize=10)
fig.legend(
    handles=[Patch(color="0.75", label="last"), Patch(color="#aed6f1", label="window (fed)"),
             Patch(color="#f5cba7", label="argmax of the top level (returned)"),
             Patch(facecolor="white", edgecolor="red", lw=2, label="one harvested n-gram")],
    loc="lower center", ncol=4,
)  # fmt: skip
fig.suptitle(f"The lookahead window, W={W}, N={N} (step 1 was the prefill)")
fig.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()

# %% [markdown]
# Between panels the window slides up one level: the fresh argmaxes become the top
# level, the bottom level is dropped, and the old level 1 becomes the new level 0, minus
# its first column, which sat exactly where the new `last` now sits. (During the warm-up
# nothing is dropped: a level is added instead.) Seen from the new `last`, one position
# further on, everything moves one column to the left and one level down.
#
# A harvested n-gram runs diagonally up through its column: one token per level, each one
# position further on, the top one the model's prediction after the tokens below it.
#
# The n-grams of one step:

# %%
for key, rest in snapshots[-1][3]:
    print(f"  {show(key):>8} → {' '.join(show(t) for t in rest)}")

# %% [markdown]
# ## The pool filling up
#
# The pool maps each key to at most G continuations of N-1 tokens, most recent first. A
# repeat moves to the front; a full key drops its oldest continuation. Let us run more
# steps and record, after each one, the pool's size, and whether the pool then holds a
# continuation of the next `last` that greedy decoding will actually produce: that is
# what the verification branch would check in the next step (notebook 5). We find out
# afterwards, once we know greedy's tokens, using `minila.lookahead.verify.verify` with the true
# tokens standing in for the model's argmaxes.

# %%
sizes, waiting = [len(pool)], [(len(context) - 1, pool.candidates(context[-1])[:G])]
for step in range(24):
    last = context[-1]
    fresh, next_token = window_step(last)
    pool.add_all(window.ngrams(last, fresh))
    window.advance(fresh)
    context.append(next_token)
    sizes.append(len(pool))
    waiting.append((len(context) - 1, pool.candidates(next_token)[:G]))

output = context[len(prompt):]
print(tokenizer.decode(output))


known = [(i, cands) for i, cands in waiting if i + N < len(context)]  # greedy's next N tokens are known
accepted = [len(verify(context[i + 1], cands, lambda j, k: context[i + 2 + k]).tokens) for i, cands in known]

# %%
steps = range(len(snapshots) + 1, len(snapshots) + 1 + len(sizes))
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
left.plot(steps, sizes, "o-")
left.set_xlabel("step")
left.set_ylabel("n-grams in the pool")
left.set_title(f"pool size (W={W}: up to {W} new n-grams per step)")
right.bar(steps[: len(accepted)], accepted, color=["tab:green" if a > 1 else "0.7" for a in accepted])
right.set_xlabel("step")
right.set_ylabel("tokens")
right.set_title("tokens the next step's verification would accept")
right.set_yticks(range(1, N + 1))
for ax in (left, right):
    ax.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
print(f"mean over these steps: {sum(accepted) / len(accepted):.2f} tokens per step (1.00 without the pool)")

# %% [markdown]
# The pool grows by up to W n-grams per step (fewer when a column repeats one it already
# holds). Now and then it already holds the right continuation of the next `last` (green
# bars): a step that verifies it accepts the model's own next token *plus* the matched
# guesses, several tokens in one forward pass, with no draft model. The pool only
# proposes; every accepted token is still checked against the model's argmax.
#
# `minila.lookahead_generate` also seeds the pool with the n-grams of the prompt and of
# the accepted output (`LookaheadConfig.pool_from_prompt`, `pool_from_output`), which
# helps when the answer repeats itself or the question, as code often does.
#
# How the harvest and the verification fit in a single forward pass is the subject of
# [4. One forward, two branches](04_one_forward_two_branches.ipynb).
