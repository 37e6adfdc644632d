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
# # 6. How far it goes
#
# Two numbers decide whether lookahead decoding is faster than greedy decoding:
#
# * the **step compression** S = new tokens / forward passes. It depends on the text, the
#   model and the settings W (window), N (n-gram size) and G (candidates per step), but
#   not on the hardware;
# * the **cost** of one lookahead forward pass of T tokens relative to a greedy pass of
#   one token, cost(T). It depends on the hardware and the model's size, not on the text.
#
# The wall-clock speedup is their ratio, **S / cost(T)**. This notebook measures how S
# grows with W, N and G on SmolLM2, measures cost(T) on this CPU, and explains why the
# settings that slow decoding down here pay off on a GPU.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import minila
from minila.speed.cost_curve import measure_cost_curve

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
model, tokenizer = minila.load_checkpoint(ROOT / "weights" / "smollm2-135m-instruct", device="cpu", dtype="float32")

# %% [markdown]
# ## S as the step grows
#
# The paper's scaling law (its Figure 5): for a fixed N, S grows roughly linearly in
# log W, and faster for larger N. A wider window harvests more n-grams per step, more
# candidates (G) give each step more chances, and a larger N lets one match accept more
# tokens. All three also make the step wider: it feeds
# T = 1 + (W-1) + (N-2)W + G(N-1) tokens once the window and the pool are full.
#
# We measure S on two prompts, a chat answer and a piece of code, for a few settings with
# G = W as in the paper, ending with the paper's W = 15, N = 5, G = 15. Only 48 new tokens
# per prompt keep the sweep within a minute on a laptop CPU, so the numbers are noisy and
# lower than on long answers (the pool starts empty); the trend is what matters.

# %%
QUESTIONS = {
    "chat": "Explain in three sentences why the sky is blue.",
    "code": "Write a Python function that checks whether a number is prime.",
}
PROMPTS = {name: tokenizer.apply_chat_template([{"role": "user", "content": q}]) for name, q in QUESTIONS.items()}
MAX_NEW = 48
SETTINGS = [(2, 3, 2), (5, 3, 5), (15, 3, 15), (15, 5, 15)]  # (W, N, G)

baseline = {name: minila.greedy_generate(model, p, MAX_NEW, eos_ids=tokenizer.eos_ids) for name, p in PROMPTS.items()}
results = {}  # (W, N, G) -> {prompt name: Generation}
start = time.perf_counter()
for w, n, g in SETTINGS:
    config = minila.LookaheadConfig(window=w, ngram=n, guess=g)
    results[w, n, g] = {
        name: minila.lookahead_generate(model, p, MAX_NEW, config, eos_ids=tokenizer.eos_ids)
        for name, p in PROMPTS.items()
    }
    assert all(gen.tokens == baseline[name].tokens for name, gen in results[w, n, g].items()), "must equal greedy"
print(f"{len(SETTINGS) * len(PROMPTS)} lookahead runs in {time.perf_counter() - start:.0f} s, all identical to greedy")


def compression(runs):
    """S over both prompts: total new tokens / total forward passes."""
    return sum(len(g.tokens) for g in runs.values()) / sum(g.steps for g in runs.values())


def fed_per_step(runs):
    """Mean tokens fed per lookahead step (the prefill left out)."""
    return np.mean([s.width for g in runs.values() for s in g.stats[1:]])


def speedup(runs):
    """Wall-clock speedup over greedy decoding on the same prompts."""
    return sum(baseline[name].seconds for name in runs) / sum(g.seconds for g in runs.values())


print(f"{'W, N, G':<10} {'tokens fed/step':>15} {'S chat':>7} {'S code':>7} {'S both':>7} {'speedup here':>13}")
for setting, runs in results.items():
    per_prompt = " ".join(f"{g.compression:>7.2f}" for g in runs.values())
    print(
        f"{', '.join(map(str, setting)):<10} {fed_per_step(runs):>15.0f} {per_prompt} "
        f"{compression(runs):>7.2f} {speedup(runs):>12.2f}x"
    )

# %% [markdown]
# S grows as the step grows, slowly, and more on code, which repeats its own identifiers
# and lines, than on prose. For comparison, the paper measures 1.5x to 2.3x lower latency
# on one A100 (about 1.5-1.8x for LLaMA-2-chat 7B on MT-bench, more than 2x for CodeLlama
# on HumanEval), on answers of hundreds of tokens.
#
# The speedup column tells another story: on this CPU every setting is slower than greedy
# decoding. The reason is the price of a wide step.
#
# ## The price of a wide step
#
# `minila.speed.cost_curve.measure_cost_curve` times one forward pass of T tokens after a
# 200-token cache, as notebook 1 did by hand (it also measures the output head's cost per
# extra row of logits, which we leave out here: a few percent).

# %%
curve = measure_cost_curve(model, widths=(1, 4, 16, 64, 128), context=200, repeats=3)
T = np.array(curve.widths)
cost = np.array([curve.relative(t, 1) for t in T])  # time of a pass of T tokens / a pass of 1
print("T:          " + " ".join(f"{t:>6}" for t in T))
print("cost(T):    " + " ".join(f"{c:>6.2f}" for c in cost))

# %% [markdown]
# Each run records the width of every step (`Generation.stats[i].width`), so we can
# predict its speedup from the two measurements: the tokens it produced over the cost of
# its passes, counted in greedy passes. That is S / cost(T), with each step's own T
# (interpolated on the curve). Compare it with the measured wall-clock speedup:

# %%
print(f"{'W, N, G':<10} {'S':>6} {'mean cost(T)':>13} {'predicted S/cost':>17} {'measured':>9}")
for setting, runs in results.items():
    steps = [s for g in runs.values() for s in g.stats[1:]]  # the prefill costs the same for both methods
    tokens = sum(len(g.tokens) - g.accepted[0] for g in runs.values())
    mean_cost = np.mean([curve.relative(s.width, 1) for s in steps])
    predicted = tokens / (len(steps) * mean_cost)
    print(
        f"{', '.join(map(str, setting)):<10} {compression(runs):>6.2f} {mean_cost:>13.2f} "
        f"{predicted:>16.2f}x {speedup(runs):>8.2f}x"
    )

# %% [markdown]
# The prediction is rough (timings on a shared CPU are noisy, and the Python bookkeeping
# of each step is left out), but it explains the sign: on this CPU the cost of a step
# grows faster than S does, so lookahead decoding loses. Note that even the narrowest
# step pays for leaving T = 1, where the matrix library has a fast matrix-vector path.
#
# ## On a GPU
#
# A GPU has far more arithmetic per byte of memory bandwidth than a CPU. A decoding step
# of a model with P parameters in 16-bit precision must read its 2P bytes of weights and
# performs about 2P FLOPs per token fed. As long as the arithmetic for T tokens takes less
# time than reading the weights, the step costs about as much as one for a single token:
#
# $$ \text{cost}(T) \approx \max\left(1, \; T \cdot \frac{\text{memory bandwidth}}{\text{peak FLOP/s}}\right). $$
#
# For an A100 (about 2 TB/s and 312 TFLOP/s in bf16) the knee sits near T = 150; for an
# H100 (3.35 TB/s, 989 TFLOP/s) near 300. That is a simple roofline model, not a
# measurement: real kernels reach the knee earlier, and attention over a long cache adds
# cost, but the shape holds. The paper's W = 15, N = 5, G = 15 step of 120 tokens is nearly
# free on an A100 for a 7B model, so most of its compression becomes speedup there.
#
# The picture puts everything on one axis, T, in units of a greedy step: S of our runs
# (points), the cost of a step on this CPU (measured) and on GPUs (roofline model). The
# speedup is the ratio of a point's height to the cost curve's height at its T: above the
# cost curve, lookahead wins.

# %%
knees = {"A100 (roofline model)": 312e12 / 2.0e12, "H100 (roofline model)": 989e12 / 3.35e12}
grid = np.geomspace(1, 256, 60)
fig, ax = plt.subplots(figsize=(8, 4.8))
ax.plot(T, cost, "o-", color="tab:red", label="cost(T), this CPU, SmolLM2-135M fp32 (measured)")
for (label, knee), style in zip(knees.items(), ["--", ":"]):
    ax.plot(grid, np.maximum(1, grid / knee), style, color="tab:blue", label=f"cost(T), {label}")
for setting, runs in results.items():
    x, y = fed_per_step(runs), compression(runs)
    ax.plot(x, y, "o", color="tab:green")
    ax.annotate(",".join(map(str, setting)), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
ax.plot([], [], "o", color="tab:green", label="S of our runs, labelled W,N,G (at their mean T)")
ax.set_xscale("log", base=2)
ax.set_yscale("log", base=2)
ticks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
ax.set_xticks(ticks, [str(t) for t in ticks])
ax.set_yticks([1, 1.25, 1.5, 2, 3, 4, 6], ["1", "1.25", "1.5", "2", "3", "4", "6"])
ax.minorticks_off()
ax.set_xlabel("T = tokens fed in one step")
ax.set_ylabel("relative to one greedy step (log scale)")
ax.set_title("Speedup = S / cost(T): a point must sit above the cost curve to win")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# So the same algorithm, with the same S, is a slowdown on a small CPU and a speedup on a
# GPU. Lookahead decoding trades FLOPs, which a GPU has in surplus during decoding, for
# fewer sequential steps; the scaling law says that more FLOPs per step (larger W, N, G)
# buy more compression, with diminishing returns. Good settings keep T under the knee of
# the hardware while maximising S: the paper uses W = 15, N = 5 for a 7B model on an A100
# (W = 10 and 7 for 13B and 33B); on a CPU, small steps, or plain greedy decoding.

# %% [markdown]
# ## Deciding every step: the step budget
#
# A fixed setting is a bet made once for every prompt and every step, and the sweep above
# shows how it goes on this CPU: the rows of a step that matches nothing still cost. So
# `auto`, the default of `python -m minila.generate` and `la:auto` in the bench, decides
# *before every step* what that step feeds (`minila/budget.py`):
#
# * **the offers**: the pool's n-grams of `last` (read in the text, or guessed by the
#   window), a copied continuation of the context's tail (prompt lookup), and what the
#   n-gram memory remembers after the last two tokens from earlier runs;
# * **their chances**: each offered token's chance of being greedy's next token, learned
#   within the request per kind of evidence (the copy's match length, a pool n-gram's count,
#   whether the text ever contained it) and depth, from a prior. Every step's offers, fed
#   or not, are scored once the text has moved past them;
# * **the rule**: feed the tokens, most promising first, and the window or not, that
#   maximise *expected tokens / cost of the step*, with the cost read off this machine's
#   measured curve. Nothing promising: `last` alone, a greedy step at greedy cost.
#
# Each step's decision is kept in `Generation.stats[i].plan`. Here is the start of a chat
# answer and of a piece of code, decided on this CPU's curve:

# %%
from minila.lookahead.auto import choose_config
from minila.speed.budget import CostBudget
from minila.speed.cost_curve import CostCurve

cpu_curve = measure_cost_curve(model, context=200, repeats=3)  # the curve auto measures, once per machine
limits = choose_config(cpu_curve)  # how wide a window auto may run here (the budget decides each step)
print(f"limits on this CPU: {limits.label}")
LONG = 128
auto_runs = {
    name: minila.lookahead_generate(model, p, LONG, limits, tokenizer.eos_ids, budget=CostBudget(cpu_curve.relative))
    for name, p in PROMPTS.items()
}
for name, gen in auto_runs.items():
    assert gen.tokens == minila.greedy_generate(model, PROMPTS[name], LONG, tokenizer.eos_ids).tokens
    print(f"\n{name}: S = {gen.compression:.2f} over {len(gen.tokens)} tokens")
    print(f"{'step':>4}  {'offers (source:chance of its first token)':<44} {'fed':>4} {'window':>6} {'E':>5} {'cost':>5} {'got':>4}")
    for i, stat in enumerate(gen.stats[1:13], start=2):
        plan = stat.plan
        offers = " ".join(f"{o.kind[0]}:{c[0]:.2f}" for o, c in zip(plan.offers, plan.chances))
        print(f"{i:>4}  {offers[:44]:<44} {stat.width - 1:>4} {'on' if plan.window else 'off':>6} "
              f"{plan.expected:>5.2f} {plan.cost:>5.2f} {stat.accepted:>4}")  # fmt: skip

# %% [markdown]
# *fed* counts the rows beyond `last`, *E* is the tokens the budget expected, *cost* the
# step's price in greedy steps, *got* what verification accepted. Where the offers are weak
# (a pool n-gram seen once, a copy matching one token) the step stays narrow or greedy;
# where the context repeats (a copy matching three tokens, code quoting the signature) it
# feeds long chains. Over the whole answers:

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, (name, gen) in zip(axes, auto_runs.items()):
    steps = np.arange(2, gen.steps + 1)
    ax.bar(steps, [s.width - 1 for s in gen.stats[1:]], color="tab:blue", alpha=0.5, label="rows fed beyond last")
    ax.plot(steps, [s.accepted for s in gen.stats[1:]], "o-", color="tab:green", ms=3, label="tokens accepted")
    ax.set_title(f"{name}: S = {gen.compression:.2f}")
    ax.set_xlabel("step")
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# On a flat (GPU-like) curve, where a step of a hundred tokens costs what one of a single
# token does, the same rule decides differently: the limits are the paper's window (W = 15,
# N = 5) and every step runs it, with every offer that has any chance.

# %%
flat_curve = CostCurve(cpu_curve.widths, (1.0,) * len(cpu_curve.widths), 0.0)
flat_limits = choose_config(flat_curve)
print(f"limits on a flat curve: {flat_limits.label}")
print(f"{'prompt':<6} {'curve':<6} {'S':>5} {'rows fed/step':>14} {'window steps':>13}")
for name, p in PROMPTS.items():
    flat = minila.lookahead_generate(model, p, LONG, flat_limits, tokenizer.eos_ids, budget=CostBudget(flat_curve.relative))
    assert flat.tokens == auto_runs[name].tokens
    for label, gen in (("CPU", auto_runs[name]), ("flat", flat)):
        window_steps = sum(s.plan.window for s in gen.stats[1:])
        print(f"{name:<6} {label:<6} {gen.compression:>5.2f} {np.mean([s.width for s in gen.stats[1:]]):>14.1f} "
              f"{window_steps:>6}/{gen.steps - 1:<6}")  # fmt: skip

# %% [markdown]
# Same tokens, a very different step: on this CPU a handful of rows where they are likely
# to pay, on a flat curve the whole window every step, as the paper runs it on a GPU. The
# budget needs no table of settings measured on other prompts: its costs come from this
# machine and its chances from the text being decoded. Across runs, the n-gram memory
# (`minila/speed/memory.py`, `--memory`) adds what earlier answers said after the same two
# tokens: ask the same kind of question twice and the second answer is faster.

# %% [markdown]
# ## Recycling every row of logits
#
# A step asks the model for a row of logits for each token it feeds a row for: `last`,
# every candidate token (the ones verification rejects too) and the window's top level.
# Verification reads one number from each row, its argmax. Yet a row is the model's whole
# ranking of what may come after its token, in that context, and a token tends to be
# followed by the same few tokens wherever it appears. **Token Recycling** (Luo et al., ACL
# 2025, arXiv 2408.08696) keeps that ranking instead of dropping it: for each token of the
# vocabulary, the 8 best ids of the most recent row that token fed. That is a vocab × 8
# table of ids, 1.5 MB for SmolLM2. Drafting from it needs no model at all: `last`'s 8
# successors, each of their successors, and so on, form a tree, and one forward verifies
# the tree like any other candidates. The paper drafts the same tree shape, about 80
# nodes, every step.
#
# In minila (`minila/speed/recycle.py`) the table is not a decoder of its own but one
# more source for the step budget. A recycled token's kind is its rank in its parent's
# row, and its chance is learned per (rank, depth) within the request, like the copy's
# and the pool's; `grow_tree` keeps the `recycle` = 32 most likely nodes and the budget
# feeds the part of them that pays on this machine's curve. The table outlives the
# request: `lookahead_generate(..., successors=table)` carries it from one call to the
# next, and the command line saves it beside the n-gram memory (`--memory`).
#
# Here a fresh table learns from the chat answer and then from the code answer; the
# tokens must still be greedy decoding's, and S moves a little:

# %%
from minila.cli.bench.prompts import load_prompts
from minila.lookahead.layout import candidate_tree
from minila.speed.memory import NGramMemory
from minila.speed.recycle import SuccessorTable

cpu_budget = CostBudget(cpu_curve.relative)
table = SuccessorTable(model.args.vocab_size)  # (vocab, 8) ids, all -1: nothing seen yet
rows_before = {}  # prompt -> [the table's row for `last` as each step began drafting]
recycled = {}
for name, p in PROMPTS.items():
    seen = rows_before[name] = []  # on_tokens runs after a step has updated the table
    recycled[name] = minila.lookahead_generate(
        model, p, LONG, limits, tokenizer.eos_ids, budget=cpu_budget, successors=table,
        on_tokens=lambda emitted, seen=seen: seen.append(table.successors(emitted[-1])),
    )  # fmt: skip
    assert recycled[name].tokens == auto_runs[name].tokens  # the table only drafts: every token is greedy's
    print(f"{name}: S = {auto_runs[name].compression:.2f} without the table, {recycled[name].compression:.2f} with it")
print(f"table rows written: {int(table.touched.sum())} of {table.vocab_size}")

# %% [markdown]
# Every step keeps its plan (`Generation.stats[i].plan`): all the offers on the table,
# their chances, and the chains it fed; `stats[i].candidate` is the fed chain that
# verification accepted. So each accepted token can be traced to the offer that put its
# node in the step, the one giving it the highest chance (`node_chances` in
# `minila/speed/budget.py` keeps that chance). Below, the step of the code answer where the
# table earned the most: the table's row for `last`, what greedy decoding did next, and
# the tree the table drafted, one chain per leaf. *ranks* are each token's rank in its
# parent's row (0 = that row's argmax), *chance* the learned chance of the whole chain,
# *fed* how many of its tokens the budget fed, *right* how many agree with greedy.

# %%
SOURCES = ("window", "text", "copy", "memory", "recycle")


def source(offer):
    """The source of an offer; a pool n-gram is `text` if the text holds it, else `window`."""
    return ("text" if offer.kind[1] else "window") if offer.kind[0] == "pool" else offer.kind[0]


def accepted_by_source(gen):
    """Per step, the sources of the candidate tokens it accepted ([] for none)."""
    out, done = [], 0
    for stat in gen.stats:
        matched = stat.accepted - 1  # every step emits one token of the model's own; the rest were fed
        credit = []
        if matched:
            chain = stat.plan.candidates[stat.candidate][:matched]  # the fed chain verification accepted
            assert list(chain) == gen.tokens[done : done + matched]
            best = {}  # node -> (its chance, the source offering it)
            for offer, chances in zip(stat.plan.offers, stat.plan.chances):
                for k, chance in enumerate(chances):
                    node = offer.tokens[: k + 1]
                    if chance > best.get(node, (-1.0, ""))[0]:
                        best[node] = (chance, source(offer))
            credit = [best[chain[: k + 1]][1] for k in range(matched)]
        out.append(credit)
        done += stat.accepted
    return out


def show(ids):
    return " ".join(repr(tokenizer.decode([t])) for t in ids)


def right(tokens, truth):
    return next((k for k, (a, b) in enumerate(zip(tokens, truth)) if a != b), min(len(tokens), len(truth)))


gen = recycled["code"]
earned = [credit.count("recycle") for credit in accepted_by_source(gen)]
i = max(range(1, gen.steps), key=lambda j: (earned[j], -j))  # the earliest of the best steps
done = sum(gen.accepted[:i])
last, truth, plan = gen.tokens[done - 1], gen.tokens[done:], gen.stats[i].plan
fed = {c[: k + 1] for c in plan.candidates for k in range(len(c))}
print(f"step {i + 1} of the code answer, after {tokenizer.decode(gen.tokens[max(0, done - 12) : done])!r}")
print(f"  the table's row for last = {tokenizer.decode([last])!r}: {show(rows_before['code'][i - 1])}")
print(f"  greedy decoding goes on with:     {show(truth[:6])}")
tree = [(o, c) for o, c in zip(plan.offers, plan.chances) if o.kind[0] == "recycle"]
print(f"\nthe tree the table drafted ({len(tree)} chains), most likely first:")
print(f"  {'ranks':<8} {'chance':>6} {'fed':>4} {'right':>5}  tokens")
for offer, chances in tree[:10]:
    ranks = "".join(str(kind[1]) for kind in offer.kinds)
    fed_here = sum(offer.tokens[: k + 1] in fed for k in range(len(offer.tokens)))
    print(f"  {ranks:<8} {chances[-1]:>6.3f} {fed_here:>4} {right(offer.tokens, truth):>5}  {show(offer.tokens)}")
print(f"the step accepted {gen.stats[i].accepted - 1} fed tokens, {earned[i]} of them from the table")

# %% [markdown]
# ## S by source on Spec-Bench
#
# Spec-Bench (Xia et al., 2024; `bench/specbench`) is where draft-free decoders are
# compared: six tasks, greedy decoding, batch 1, and "mean accepted tokens", which is S.
# One prompt of each task, 48 tokens each, on this CPU's budget, with one n-gram memory
# and one successor table carried from prompt to prompt, both starting empty. Each
# column is the tokens per step that one source's fed offers got accepted, so S is 1 (the
# token every step emits) plus the row's sum:

# %%
bench = load_prompts("specbench", tokenizer, per_task=1)  # first turns, in the chat template
SHORT = 48


def run_bench(config, budget):
    memory, table = NGramMemory("notebook", vocab_size=model.args.vocab_size), SuccessorTable(model.args.vocab_size)
    return {
        p.task: minila.lookahead_generate(model, p.ids, SHORT, config, tokenizer.eos_ids, budget=budget, memory=memory, successors=table)
        for p in bench
    }  # fmt: skip


def per_step(gen):
    """Tokens per step accepted from each source's offers."""
    credits = [s for credit in accepted_by_source(gen) for s in credit]
    return {s: credits.count(s) / gen.steps for s in SOURCES}


cpu_bench = run_bench(limits, cpu_budget)
print(f"{'task':<15} {'prompt':>6} {'S':>5} = 1 + " + " + ".join(f"{s:>7}" for s in SOURCES))
for p in bench:
    gen = cpu_bench[p.task]
    by = per_step(gen)
    assert abs(1 + sum(by.values()) - gen.compression) < 1e-9
    print(f"{p.task:<15} {len(p.ids):>6} {gen.compression:>5.2f} = 1 + " + " + ".join(f"{by[s]:>7.2f}" for s in SOURCES))
cpu_steps = [s for gen in cpu_bench.values() for s in gen.stats[1:]]
print(f"the window ran in {sum(s.plan.window for s in cpu_steps)} of {len(cpu_steps)} steps ({limits.label})")

# %% [markdown]
# These are single prompts of 48 tokens, so each number is noisy. The window column is
# (close to) empty: on this CPU's curve the budget runs the window in few steps or none
# (the line under the table counts them), and its guesses rarely win. Copy and text n-grams
# earn where the prompt holds the answer's material (summarization and RAG quote their
# documents; translation repeats names and numbers). The table is the one source that
# earns something on every task, the open questions included, where the text offers
# nothing. The memory starts empty and six unrelated prompts give it little to reuse.

# %% [markdown]
# ## Where the window stops earning
#
# On the flat curve the budget runs the paper's window (W = 15, N = 5) every step. What do
# its n-grams earn? Only the tokens accepted from n-grams the window guessed and the text
# did not contain count for it (the *window* column above). The same six prompts, with
# the same tokens (each run is greedy decoding's), on the flat curve:

# %%
flat_bench = run_bench(flat_limits, CostBudget(flat_curve.relative))
print(f"{'task':<15} {'S':>5} {'window steps':>12} {'its rows/step':>13} {'its tokens/step':>15}")
earned = rows = ran = 0
for p in bench:
    gen = flat_bench[p.task]
    assert gen.tokens == cpu_bench[p.task].tokens
    window_steps = [s for s in gen.stats[1:] if s.plan.window]
    fed_rows = sum(s.width - 1 - len(candidate_tree(s.plan.candidates).tokens) for s in window_steps)  # not `last`, not candidates
    tokens = per_step(gen)["window"] * gen.steps
    print(f"{p.task:<15} {gen.compression:>5.2f} {len(window_steps):>5}/{gen.steps - 1:<6} {fed_rows / len(window_steps):>13.1f} "
          f"{tokens / len(window_steps):>15.2f}")  # fmt: skip
    earned, rows, ran = earned + tokens, rows + fed_rows, ran + len(window_steps)

g, w = earned / ran, rows / ran  # what a window step earns, and the rows it adds
speed = sum(len(gen.tokens) - gen.accepted[0] for gen in cpu_bench.values()) / sum(s.plan.cost for s in cpu_steps)
break_even = g / (w * speed)
per_row = (cpu_curve.relative(1 + w, 1 + flat_limits.window) - 1) / w
print(f"\nthe window: {g:.2f} tokens per step for {w:.0f} rows; without it this CPU makes {speed:.2f} tokens per greedy step of cost")
print(f"so it pays while a row costs under {break_even:.4f} greedy steps; this CPU charges {per_row:.4f} ({per_row / break_even:.0f}x)")


# %% [markdown]
# S is higher on the flat curve mostly because there the budget feeds every offer that
# has any chance, not because of the window: its own n-grams earn a small fraction of a
# token per step for its ~55 rows. Adding g tokens for w rows at r greedy steps a row pays
# only if g / (w·r) beats the tokens per unit of cost the CPU's steps make (the window
# hardly ever on), that is while r < g / (w · speed). The last line compares that bound
# with what a window row costs on this CPU's measured curve: about an order of magnitude
# more. So on this machine the budget is right to leave the window (almost) off, and it
# earns its rows only where extra rows are almost free, below a GPU's knee, as the paper
# runs it.
