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
# # 8. A bigger model: where the knee sits
#
# Notebook 6 measured what a step of T tokens costs for SmolLM2-135M on this CPU and
# found it climbs early. A 135M model is small enough to mislead about why: much of its
# forward is the fixed price of calling ~120 matrix products, not the products themselves.
# This notebook puts it next to a real-size model, Qwen2.5-Coder-0.5B-Instruct (24 layers,
# width 896, FFN 4864, 14 query and 2 key/value heads, a 151,936-token vocabulary and an
# untied head; `make weights MODEL=qwen2.5-coder-0.5b` converts the real one), and holds
# each cost curve against its **roofline**: the least time this machine's memory bandwidth
# and arithmetic rate allow.
#
# Timing a forward needs no real weights, so both models get random ones here (the real
# 0.5B is 2 GB in float32, and not needed to run this notebook).

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import minila
from minila.llama.checkpoint import args_from_hf_config
from minila.llama.files import read_json
from minila.llama.model import ModelArgs, Transformer
from minila.lookahead.auto import choose_config
from minila.speed.budget import CostBudget
from minila.speed.cost_curve import measure_cost_curve
from minila.speed.roofline import forward_bound, measure_limits

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
SMOLLM2 = ROOT / "weights" / "smollm2-135m-instruct"

SHAPES = {
    "SmolLM2-135M": args_from_hf_config(read_json(SMOLLM2 / "config.json")),
    "Qwen2.5-Coder-0.5B": ModelArgs(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, hidden_dim=4864,
                                    rope_theta=1e6, norm_eps=1e-6, max_seq_len=4096, qkv_bias=True),
}  # fmt: skip


def random_model(args: ModelArgs) -> Transformer:
    """Random weights of the right shapes, held as the loader holds real ones (pre-packed)."""
    torch.manual_seed(0)
    model = Transformer(args).eval()
    model.pack_weights()
    return model


# %% [markdown]
# ## The roofline of one forward
#
# A forward of T new tokens must read every weight once, whatever T is, and does one
# multiply-add (2 FLOPs) per weight per token. So its time is at least
#
# $$ t(T) \ge \max\left(\frac{\text{weight bytes}}{\text{bandwidth}},\; \frac{2\,T\cdot\text{weights}}{\text{peak FLOP/s}}\right). $$
#
# The first term does not grow with T; the second does. They meet at the **knee**
#
# $$ T^* = \frac{\text{peak FLOP/s}}{\text{bandwidth}} \cdot \frac{\text{bytes per weight}}{2}, $$
#
# which holds no property of the model at all: the machine's arithmetic per byte, and the
# dtype. Below it a wider step is nearly free; above it, each extra token costs its FLOPs.
# `minila.speed.roofline` measures both rates here (a streaming read; a large pre-packed
# product) and applies them per model (cache reads and attention included):

# %%
limits = measure_limits(torch.float32)
knee = limits.flops_per_second / limits.bytes_per_second * 4 / 2
print(f"this CPU, float32, {torch.get_num_threads()} threads: {limits.bytes_per_second / 1e9:.1f} GB/s, "
      f"{limits.flops_per_second / 1e9:.0f} GFLOP/s -> knee at T* = {knee:.0f}")  # fmt: skip

# %% [markdown]
# ## Measured against the bound
#
# `measure_cost_curve` (what `auto` measures once per machine) times one forward of T
# tokens after a 200-token cache, for both models:

# %%
WIDTHS = (1, 2, 4, 8, 16, 32, 64)
curves, bounds = {}, {}
for name, args in SHAPES.items():
    model = random_model(args)
    curves[name] = measure_cost_curve(model, WIDTHS, context=200, repeats=3)
    bounds[name] = [forward_bound(args, 4, limits, t, 200).seconds for t in WIDTHS]
    del model
    print(f"\n{name}")
    print("T          " + "".join(f"{t:>8}" for t in WIDTHS))
    print("ms         " + "".join(f"{1e3 * s:>8.1f}" for s in curves[name].seconds))
    print("bound ms   " + "".join(f"{1e3 * b:>8.1f}" for b in bounds[name]))
    print("x bound    " + "".join(f"{s / b:>8.2f}" for s, b in zip(curves[name].seconds, bounds[name])))
    print("cost(T)    " + "".join(f"{s / curves[name].seconds[0]:>8.2f}" for s in curves[name].seconds))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for (name, curve), color in zip(curves.items(), ["tab:red", "tab:blue"]):
    axes[0].plot(WIDTHS, [1e3 * s for s in curve.seconds], "o-", color=color, label=f"{name}, measured")
    axes[0].plot(WIDTHS, [1e3 * b for b in bounds[name]], "--", color=color, label=f"{name}, roofline")
    axes[1].plot(WIDTHS, [s / curve.seconds[0] for s in curve.seconds], "o-", color=color, label=name)
axes[1].axvline(knee, color="gray", ls=":", label=f"knee T* = {knee:.0f}")
for ax, label in zip(axes, ["ms per forward", "cost(T) = time / time of T=1"]):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(WIDTHS, [str(t) for t in WIDTHS])
    ax.set_xlabel("T = tokens fed in one forward")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Two things to read off:
#
# * **How far above its bound each model sits.** The 0.5B model's one-token forward comes
#   close to the time its weights take to stream in; the 135M model sits further above its
#   bound at every width, because each of its ~120 products is small (576 wide) and pays a
#   fixed price per call, and small products run further from the peak rate.
# * **Where the curves bend.** The roofline is flat up to the knee and both measured curves
#   bend before it (a product of a few rows does not reach the peak rate). Relative to one
#   token, the two curves are close: the knee belongs to the machine, not to the model. So a
#   135M model misleads mostly about the absolute price of a step, inflated by per-call
#   overhead. On a 2-core CPU in float32 the knee is a few dozen tokens at best. bfloat16
#   halves the bytes per weight and, on a CPU with AMX, raises the peak several times, so its
#   knee sits further out; a GPU's sits in the hundreds (notebook 6, and below).
#
# ## What the budget feeds on each
#
# `auto` prices every step on the machine's curve (notebook 6). To see what the curve alone
# changes, decode the same text (SmolLM2's answer to a coding request, so the offers are the
# same) with the budget priced on each model's curve: the tokens are greedy's either way,
# what differs is what each step feeds.

# %%
model, tokenizer = minila.load_checkpoint(SMOLLM2, device="cpu", dtype="float32")
prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number, with a docstring."}]
)
greedy = minila.greedy_generate(model, prompt, 128, tokenizer.eos_ids)
print(f"{'priced on':<20} {'limits':<34} {'S':>5} {'rows fed/step':>14} {'window steps':>13}")
for name, curve in curves.items():
    config = choose_config(curve)
    run = minila.lookahead_generate(model, prompt, 128, config, tokenizer.eos_ids, budget=CostBudget(curve.relative))
    assert run.tokens == greedy.tokens
    fed = np.mean([s.width - 1 for s in run.stats[1:]])
    window = sum(s.plan.window for s in run.stats[1:])
    print(f"{name:<20} {config.label:<34} {run.compression:>5.2f} {fed:>14.1f} {window:>6}/{run.steps - 1:<6}")

# %% [markdown]
# The flatter the curve up to a width, the more rows a step may feed for the same price,
# and the budget feeds them where the offers are worth it. Here the two curves give it about
# the same room: which window limit `auto` picks (1 or 2) moves with the noise of a single
# measurement more than with the model, and the rows fed per step differ little. The knee,
# the machine's, caps both at about the same width.
#
# ## On a GPU
#
# The same measurement on one NVIDIA H200 (bfloat16, random weights, 512 cached tokens;
# `bench/cost_at_scale.py`, committed as `bench/results/h200-cost-at-scale.json`), up to
# the shapes of Llama-2-7B and Llama-3-8B:

# %%
h200 = json.loads((ROOT / "bench" / "results" / "h200-cost-at-scale.json").read_text())
fig, ax = plt.subplots(figsize=(7, 4))
for name, run in h200["models"].items():
    ax.plot(run["widths"], [s / run["seconds"][0] for s in run["seconds"]], "o-", ms=3,
            label=f"{name}: T=1 {1e3 * run['seconds'][0]:.1f} ms, weights read in {1e3 * run['weight_read_seconds']:.2f} ms")  # fmt: skip
ax.set_xscale("log", base=2)
ax.set_xticks(run["widths"], [str(t) for t in run["widths"]])
ax.set_ylim(0.8, 2.0)
ax.set_xlabel("T = tokens fed in one forward")
ax.set_ylabel("cost(T)")
ax.set_title(f"{h200['device']}, {h200['dtype']}, torch {h200['torch']}")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# Up to 256 tokens a step costs about one greedy step at every size, even 8B. But read
# the legend: the one-token forward takes 10-15 ms whatever the size, while the weights of
# the 8B model stream in under 4 ms. minila's eager forward launches over a thousand small
# kernels a step, and on that machine the CPU that launches them is the limit
# (`bench/cuda_launches.py`). So this flat curve is partly an artefact of overhead, as the
# 135M model's was on the CPU: with the launches gone (CUDA graphs, fused kernels) the 8B
# forward would sit near its 4 ms and bend where the H200's arithmetic per byte puts its
# knee, a few hundred tokens in bfloat16. Either way the paper's W = 15, N = 5, G = 15 step
# of about 120 tokens sits below the knee there, which is why it pays on a GPU.
