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
# # 1. A Llama from scratch
#
# This series explains **Lookahead Decoding** (Fu, Bailis, Stoica, Zhang, ICML 2024), an
# exact way to decode several tokens per forward pass of a language model, with no draft
# model. Every notebook imports the small `minila` package and looks at one idea:
#
# 1. the model, greedy decoding, and why one token per forward pass wastes the hardware;
# 2. decoding as a nonlinear system solved by Jacobi iteration;
# 3. harvesting n-grams from the Jacobi trajectory;
# 4. one forward pass that serves two branches, and its attention mask;
# 5. verification and the KV-cache commit: lookahead decoding, complete;
# 6. how far it goes as the window grows, on a CPU and on a GPU.
#
# We use SmolLM2-135M-Instruct, a real (small) Llama, converted by `make weights`.
# Everything runs on a laptop CPU.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import minila

torch.set_num_threads(2)  # the numbers quoted in the text were measured with 2 threads
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
CKPT = ROOT / "weights" / "smollm2-135m-instruct"
assert CKPT.is_dir(), f"{CKPT} is missing: run `make weights` in {ROOT} first"

# %% [markdown]
# ## The checkpoint
#
# `minila.load_checkpoint` reads a Hugging Face style folder (`config.json`,
# `model.safetensors`, `tokenizer.json`) and returns our own `Transformer` and a
# tokenizer. The model is a plain Llama: RMSNorm, rotary position embeddings (RoPE),
# grouped-query attention and a SwiGLU feed-forward block, repeated 30 times.

# %%
start = time.perf_counter()
model, tokenizer = minila.load_checkpoint(CKPT, device="cpu", dtype="float32")
print(f"loaded in {time.perf_counter() - start:.1f} s")
for name, value in vars(model.args).items():
    print(f"  {name:<15} {value}")
print(f"  head_dim        {model.args.head_dim}")
print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")

# %% [markdown]
# Nine query heads share three key/value heads (grouped-query attention), which makes
# the KV cache three times smaller. The output head is tied to the token embedding.
# One of the 30 blocks:

# %%
print(model.layers[0])

# %% [markdown]
# ## One forward pass, by hand
#
# `minila`'s model knows nothing about decoding. A call takes
#
# * `tokens`: the new tokens of this pass, shape (T,);
# * `positions`: their position ids (RoPE rotates by these; they are explicit because
#   lookahead decoding will feed many tokens that share a position);
# * `cache`: a `KVCache` holding the keys and values of everything already committed;
# * `mask`: which new tokens see which (default: causal), and `logits_for`: the rows
#   whose logits we want.
#
# Let us ask a question through the chat template and run the prompt through the model
# (the *prefill*).

# %%
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Explain in three sentences why the sky is blue."}])
print(tokenizer.render_chat([{"role": "user", "content": "Explain in three sentences why the sky is blue."}]))
print(f"{len(prompt)} tokens; the first ten: {[tokenizer.decode([t]) for t in prompt[:10]]}")

# %%
with torch.inference_mode():
    cache = model.new_cache(capacity=256)
    logits = model(torch.tensor(prompt), torch.arange(len(prompt)), cache, logits_for=torch.tensor([-1]))
    cache.commit()  # keep the prompt's keys and values
probs = logits[0].softmax(-1)
top = probs.topk(5)
print(f"cache now holds {cache.length} positions; the model's next-token guesses:")
for p, t in zip(top.values.tolist(), top.indices.tolist()):
    print(f"  {tokenizer.decode([t])!r:<12} {p:.3f}")

# %% [markdown]
# Greedy decoding takes the argmax and feeds it back: one token, at the next position,
# attending to everything in the cache. The cache is what makes this cheap: the prompt's
# keys and values are not recomputed, each new token only adds its own.

# %%
with torch.inference_mode():
    next_token = int(logits[0].argmax())
    by_hand = [next_token]
    for _ in range(7):
        logits = model(torch.tensor([next_token]), torch.tensor([cache.length]), cache)
        cache.commit()
        next_token = int(logits[0].argmax())
        by_hand.append(next_token)
print(repr(tokenizer.decode(by_hand)), f"(cache: {cache.length} positions)")

# %% [markdown]
# ## Greedy decoding
#
# `minila.greedy_generate` is that loop, with a stopping rule (the end-of-sequence ids or
# `max_new_tokens`). It returns a `Generation`: the new tokens and one `StepStat` per
# forward pass. Greedy decoding is the baseline and the *oracle* of this series:
# lookahead decoding must produce exactly these tokens.

# %%
greedy = minila.greedy_generate(model, prompt, max_new_tokens=48, eos_ids=tokenizer.eos_ids)
print(tokenizer.decode(greedy.tokens))
print()
print(f"same start as by hand: {greedy.tokens[:8] == by_hand}")
print(f"{len(greedy.tokens)} tokens in {greedy.steps} forward passes ({greedy.tokens_per_second:.1f} tokens/s)")

# %% [markdown]
# ## One token per forward pass wastes the hardware
#
# Each greedy step reads **all** 135 M weights (540 MB in float32) to do about
# 2 x 135 M = 0.27 GFLOP of arithmetic for a single token. Reading memory, not
# arithmetic, sets the pace: the processor mostly waits. A forward pass of T tokens reads
# the weights once and does T times the arithmetic, so until the arithmetic catches up
# with the memory traffic, extra tokens come almost for free.
#
# Let us measure it: fill a cache with 200 tokens, then time one forward pass of T new
# tokens (causal, logits for every row) for several T, keeping the fastest of a few runs
# (other programs on the machine can only ever add time).
# The new rows are written to the cache's scratch slots and never committed, so every
# run starts from the same 200-token cache.

# %%
CONTEXT, REPEATS, WIDTHS = 200, 5, [1, 2, 4, 8, 16, 32, 64, 128]
generator = torch.Generator().manual_seed(0)
with torch.inference_mode():
    cache = model.new_cache(CONTEXT + max(WIDTHS))
    model(torch.randint(model.args.vocab_size, (CONTEXT,), generator=generator), torch.arange(CONTEXT), cache)
    cache.commit()
    seconds = []
    for t in WIDTHS:
        tokens = torch.randint(model.args.vocab_size, (t,), generator=generator)
        positions = torch.arange(CONTEXT, CONTEXT + t)
        runs = []
        for _ in range(REPEATS + 1):  # the first run warms up
            start = time.perf_counter()
            model(tokens, positions, cache)
            runs.append(time.perf_counter() - start)
        seconds.append(min(runs[1:]))

print(f"{'T':>4} {'ms / forward':>13} {'ms / token':>11} {'cost vs T=1':>12}")
for t, s in zip(WIDTHS, seconds):
    print(f"{t:>4} {1000 * s:>13.1f} {1000 * s / t:>11.2f} {s / seconds[0]:>12.2f}")
print(f"one pass of {WIDTHS[-1]} tokens costs {seconds[-1] / seconds[0]:.1f} passes of 1 token: "
      f"{WIDTHS[-1] * seconds[0] / seconds[-1]:.0f}x less time per token")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
left.plot(WIDTHS, [1000 * s for s in seconds], "o-")
left.set_title("time of one forward pass")
left.set_ylabel("milliseconds")
left.set_ylim(bottom=0)
right.plot(WIDTHS, [1000 * s / t for s, t in zip(seconds, WIDTHS)], "o-", color="tab:green")
right.set_title("time per token (log scale)")
right.set_ylabel("milliseconds per token")
right.set_yscale("log")
for ax in (left, right):
    ax.set_xscale("log", base=2)
    ax.set_xticks(WIDTHS, [str(t) for t in WIDTHS])
    ax.set_xlabel(f"T = tokens fed in one pass (after a {CONTEXT}-token cache)")
    ax.grid(True, which="both", alpha=0.3)
fig.suptitle("SmolLM2-135M, float32, 2 CPU threads")
fig.tight_layout()
plt.show()

# %% [markdown]
# Feeding T tokens costs far less than T single passes: the time per token falls
# steeply as T grows. (On a CPU the step from one token to a few is often the biggest: a
# single row gets a matrix-vector product with its own fast path, while a few rows take
# the general matrix product, which re-arranges the weights on every call. `load_checkpoint`
# therefore keeps the weights pre-arranged for oneDNN on a CPU, which makes a few rows
# cost little more than one; see `minila.llama.model.Linear`.) Greedy decoding cannot use this,
# because each token depends on the one before it: we cannot feed token i+1 before we
# know token i.
#
# Lookahead decoding spends the spare capacity on *guesses* for future tokens, computed
# in the same pass, and keeps only those the model itself confirms. How much it gains
# depends on two numbers: how many tokens a step accepts (a property of the algorithm
# and the text) and how much a wider pass costs (the curve above, a property of the
# hardware). On this CPU the curve climbs early; on a GPU it stays flat far longer.
# Notebook 6 puts the two together.
#
# Next: [2. Decoding as a nonlinear system](02_decoding_as_a_nonlinear_system.ipynb).
