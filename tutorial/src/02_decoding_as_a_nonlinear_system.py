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
# # 2. Decoding as a nonlinear system
#
# Greedy decoding computes m new tokens y1 .. ym one after the other:
#
# $$ y_{i+1} = \arg\max f(\text{prompt}, y_1, \dots, y_i), \qquad i = 0, \dots, m-1. $$
#
# Read differently, these m equations are a **system** in m unknowns, and a system can be
# solved by iteration. **Jacobi iteration** guesses all unknowns of a block at once and
# updates every one of them from the previous guess, in parallel:
#
# $$ y^{(j+1)}_{i+1} = \arg\max f(\text{prompt}, y^{(j)}_1, \dots, y^{(j)}_i) \quad \text{for every } i \text{ in the block.} $$
#
# All the updates of one iteration come out of **one** forward pass with a causal mask,
# exactly the wide pass notebook 1 found nearly free. This notebook runs Jacobi decoding
# on SmolLM2, draws its trajectory, and shows why, on its own, it barely helps; the
# lookahead idea (notebook 3) is to keep what the trajectory produces anyway.

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import minila

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
model, tokenizer = minila.load_checkpoint(ROOT / "weights" / "smollm2-135m-instruct", device="cpu", dtype="float32")

# %% [markdown]
# ## Jacobi decoding, converging to greedy
#
# `minila.jacobi_generate` decodes in blocks of `block` tokens. After the prefill, each
# step feeds `last` (the last accepted token) and `block - 1` guesses for the positions
# after it, and takes the argmax of every row:
#
# * the argmax at `last` is always right: its context is all accepted tokens;
# * the argmax after a guess is right if that guess, and every guess before it, was
#   right. Such a converged prefix is accepted together with that one extra argmax;
# * the rest of the argmaxes become the next guesses (the Jacobi update).
#
# Every accepted token is an argmax given accepted tokens only, so the output is the
# greedy output, token for token. The initial guesses are prompt tokens drawn with a
# seed, so runs are reproducible. Let us check it against greedy decoding.

# %%
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain in three sentences why the sky is blue."}])
MAX_NEW, BLOCK = 40, 8

greedy = minila.greedy_generate(model, prompt, MAX_NEW, eos_ids=tokenizer.eos_ids)
jacobi = minila.jacobi_generate(model, prompt, MAX_NEW, block=BLOCK, eos_ids=tokenizer.eos_ids, seed=0)
print(tokenizer.decode(jacobi.tokens))
print()
print("identical to greedy:", jacobi.tokens == greedy.tokens)

# %% [markdown]
# ## The trajectory
#
# `JacobiGeneration.trajectory[i]` is the block fed at step i+2 (step 1 is the prefill):
# `last` followed by the `block - 1` guesses. Below, each row is a step and each column a
# slot of the block. A cell is green when its guess equals the token greedy decoding puts
# at that position: dark green if the step accepted it, light green if it was right but
# could not be accepted because a guess before it was wrong.

# %%
LAST, WRONG, RIGHT_LATE, ACCEPTED, BEYOND = 0, 1, 2, 3, 4


def trajectory_grid(run, truth):
    """For every step after the prefill and every block slot, what the guess there was."""
    grid = np.full((len(run.trajectory), BLOCK), BEYOND)
    done = run.accepted[0]  # tokens accepted before the current step
    for i, fed in enumerate(run.trajectory):
        matched = run.accepted[i + 1] - 1  # guesses this step accepted
        grid[i, 0] = LAST  # slot 0 is `last`, output token done - 1
        for k in range(1, BLOCK):
            index = done - 1 + k
            if index < len(truth):
                right = fed[k] == truth[index]
                grid[i, k] = ACCEPTED if k <= matched else (RIGHT_LATE if right else WRONG)
        done += run.accepted[i + 1]
    return grid


COLOURS = ["0.45", "#f2d7d5", "#a9dfbf", "#1e8449", "white"]
LABELS = ["last (already accepted)", "wrong guess", "right guess, not accepted", "accepted guess", "past the end"]
grid = trajectory_grid(jacobi, greedy.tokens)

fig, ax = plt.subplots(figsize=(6, 8))
ax.imshow(grid, cmap=ListedColormap(COLOURS), vmin=0, vmax=4, aspect="auto")
ax.set_xticks(range(BLOCK), ["last"] + [f"+{k}" for k in range(1, BLOCK)])
ax.set_xlabel("slot in the block (position relative to last)")
ax.set_yticks(range(0, len(grid), 5), [str(i + 2) for i in range(0, len(grid), 5)])
ax.set_ylabel("step (step 1 is the prefill)")
ax.set_title(f"Jacobi trajectory, block = {BLOCK}")
ax.legend(handles=[Patch(facecolor=c, edgecolor="0.6", label=l) for c, l in zip(COLOURS, LABELS)],
          loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)  # fmt: skip
fig.tight_layout()
plt.show()

# %% [markdown]
# The same trajectory as text, for the first steps. Each row lists the block fed at that
# step; a `✓` marks a guess equal to the final greedy token at its position.

# %%
def show(token):
    return repr(tokenizer.decode([token]))[1:-1][:9]


done = jacobi.accepted[0]
for i, fed in enumerate(jacobi.trajectory[:12]):
    marks = [
        show(t) + ("✓" if k and done - 1 + k < len(greedy.tokens) and t == greedy.tokens[done - 1 + k] else " ")
        for k, t in enumerate(fed)
    ]
    print(f"step {i + 2:>2} accepts {jacobi.accepted[i + 1]}: " + " ".join(f"{m:<10}" for m in marks))
    done += jacobi.accepted[i + 1]

# %% [markdown]
# ## Why it converges, and why it barely saves steps
#
# *Convergence.* At every step the first slot's update is the true next token, so a
# block of k tokens is solved after at most k steps: Jacobi decoding is never slower
# than greedy in steps, and its fixed point is the greedy output.
#
# *Speed.* It saves a step only when a guess is already right **and** every guess before
# it in the block is right too. For natural text that is rare: the update of slot k was
# computed from the previous, mostly wrong, guesses of slots 1 .. k-1, so a single wrong
# token early in the block spoils everything after it. The number that measures this is
# the **step compression** S = new tokens / forward passes (the prefill counts as a
# pass, so greedy decoding has S = 1 exactly).

# %%
counts = np.bincount(grid[grid != BEYOND].ravel(), minlength=5)
print(f"greedy: {len(greedy.tokens)} tokens in {greedy.steps} passes, S = {greedy.compression:.2f}")
print(f"Jacobi: {len(jacobi.tokens)} tokens in {jacobi.steps} passes, S = {jacobi.compression:.2f}")
print(f"steps that accepted more than one token: {sum(a > 1 for a in jacobi.accepted[1:])} of {jacobi.steps - 1}")
print(f"guesses that were right: {counts[RIGHT_LATE] + counts[ACCEPTED]}, of which accepted: {counts[ACCEPTED]}")

# %% [markdown]
# S is barely above 1. The picture shows why: a guess is rarely the token greedy decoding
# will put at exactly that position, and even a right guess is accepted only if every
# guess before it in the block is right as well.
#
# Still, every row of every Jacobi step is a real forward computation: the model's best
# continuation of some, partly wrong, context. Lookahead decoding keeps the parallel
# iteration but changes what it looks for. Instead of waiting for a block to converge at
# the right positions, it arranges the guesses so that each column of its window forms a
# short chain of tokens, each predicted from the ones before it: an **n-gram**, a
# plausible phrase. Such a phrase often turns up later in the text, at a position nobody
# could have guessed. A pool keeps the n-grams, and every step verifies the ones that
# start with `last`, in the same forward pass.
#
# Next: [3. Harvesting n-grams](03_harvesting_ngrams.ipynb).
