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
# # 5. Verification and the KV commit
#
# We now have all the parts of a lookahead step: `last`, the window (notebook 3) and the
# candidates the pool holds for `last`, all in one forward pass (notebook 4). This
# notebook finishes the step:
#
# 1. **verify** the candidates against the model's own argmaxes and pick the tokens to
#    emit;
# 2. **commit** the right rows to the KV cache and drop the rest;
#
# and then runs the whole loop, `minila.lookahead_generate`, against greedy decoding.

# %%
import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

import minila
from minila.lookahead.layout import candidate_tree, step_layout
from minila.lookahead.ngram_pool import NGramPool
from minila.lookahead.verify import verify, verify_greedy
from minila.lookahead.window import LookaheadWindow

torch.set_num_threads(2)
ROOT = Path.cwd() if (Path.cwd() / "minila").exists() else Path.cwd().parent
model, tokenizer = minila.load_checkpoint(ROOT / "weights" / "smollm2-135m-instruct", device="cpu", dtype="float32")


def show(tokens):
    return repr(tokenizer.decode(tokens))


# %% [markdown]
# ## One real step
#
# Verification is easiest to see at a moment when the pool has a good candidate. We
# decode a Python answer greedily, then look for the first point in it where a pool
# seeded with the text so far (the prompt and the output, as `lookahead_generate` seeds
# it) holds a continuation of `last` that greedy decoding really produces next. That is a
# lucky moment, chosen on purpose; the full runs below show how often it happens.

# %%
W, N, G = 5, 4, 5
code_prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}]
)
code_greedy = minila.greedy_generate(model, code_prompt, 64, eos_ids=tokenizer.eos_ids)
answer = code_greedy.tokens


def pool_for(context):
    pool = NGramPool(N, per_key=G)
    pool.add_sequence(context)
    return pool


def matched_at(i):
    """Guesses verification would accept i tokens into the answer (greedy's tokens stand in for the model)."""
    candidates = pool_for(code_prompt + answer[:i]).candidates(answer[i - 1])[:G]
    return verify(answer[i], candidates, lambda j, k: answer[i + 1 + k]).matched, len(candidates)


moments = range(1, len(answer) - N)
i = next((i for i in moments if matched_at(i) >= (N - 1, 2)), max(moments, key=matched_at))
context = code_prompt + answer[:i]  # context[-1] is `last`
candidates = pool_for(context).candidates(context[-1])[:G]
print(f"{i} tokens into the answer:", show(answer[:i]))
print(f"last = {show([context[-1]])}; the pool's {len(candidates)} candidates for it:")
for cand in candidates:
    print("   ", show(cand))

# %% [markdown]
# Now the step itself. The cache holds everything before `last`; `last` is row 0 at
# position p = `cache.length`. The window starts from random prompt tokens ("seed"
# warm-up, all N-1 levels at once), as it would early in a real run. The candidates are
# merged into a prefix tree (candidates that share first tokens share rows).

# %%
with torch.inference_mode():
    cache = model.new_cache(len(context) + 64)
    model(torch.tensor(context[:-1]), torch.arange(len(context) - 1), cache)
    cache.commit()  # the accepted text before `last`
    last = context[-1]
    window = LookaheadWindow(W, N, code_prompt, seed=0, warmup="seed")
    tree = candidate_tree(candidates)
    layout = step_layout(W, len(window.levels), tree.parents)
    tokens = torch.tensor(layout.pack(last, window.levels, tree.tokens))
    logits = model(tokens, cache.length + layout.depth, cache, layout.mask, layout.logit_rows)  # (R, vocab)
print(f"one forward pass: {layout.size} tokens fed ({layout.size - len(tree.tokens)} for last and the window, "
      f"{len(tree.tokens)} for {len(candidates)} candidates), logits for {len(layout.logit_rows)} rows")  # fmt: skip

# %% [markdown]
# Verification reads the logits of `last` and of every candidate token:
#
# * the argmax at `last` is the model's next token t1. It is emitted in any case: it is
#   exactly what greedy decoding would emit;
# * a candidate whose first token equals t1 *survives*. It was fed with the right context,
#   so the argmax at its first token is the model's token after t1, t2; a survivor whose
#   second token equals t2 survives again, and so on;
# * the longest surviving candidate wins: m matched tokens give m + 1 tokens, the m guesses
#   (each one confirmed by the model) plus the model's argmax after them, the **bonus**
#   token. A full match of N-1 tokens gives N tokens in one step.
#
# Every emitted token is an argmax of the model given accepted tokens only, never a raw
# guess: that is why the output is exactly greedy's.

# %%
first = int(logits[0].argmax())
predictions = [[int(logits[layout.first_node_logit + node].argmax()) for node in path] for path in tree.paths]
verdict = verify_greedy(first, candidates, predictions)

print(f"model's token after last: {show([first])}")
for j, (cand, pred) in enumerate(zip(candidates, predictions)):
    expected, cells = first, []
    for guess, after in zip(cand, pred):
        if guess != expected:
            cells.append(f"{show([guess])} ✗")
            break
        cells.append(f"{show([guess])} ✓ → {show([after])}")
        expected = after
    print(f"  candidate {j}: " + " | ".join(cells))
print()
print(f"winner: candidate {verdict.candidate}, {verdict.matched} guesses matched; "
      f"emit {len(verdict.tokens)} tokens: {show(verdict.tokens)}")  # fmt: skip
print("the same tokens greedy decoding produces here:", verdict.tokens == answer[i : i + len(verdict.tokens)])

# %% [markdown]
# ## The KV commit
#
# The forward pass wrote keys and values for all its rows into scratch slots of the
# cache. Only some of them describe the accepted text: the row of `last`, and the rows of
# the matched guesses of the winning candidate (their context was `last` and the earlier
# matched guesses, at the right positions). The bonus token was never fed, so it has no
# row yet: it becomes the next step's `last`. Everything else (the window, the losing
# candidates, the unmatched tail) is dropped. `KVCache.commit(rows)` moves the kept rows
# to the end of the committed part, in order; no stale row is ever attended to again.

# %%
kept = [0] + [layout.first_node_row + node for node in tree.paths[verdict.candidate][: verdict.matched]]
before = cache.length
with torch.inference_mode():  # the cache was made in inference mode: update it there too
    cache.commit(kept)
print(f"rows kept: {kept} of {layout.size}; cache length {before} -> {cache.length}")

# %% [markdown]
# Check: the committed cache must hold the keys and values a plain prefill of the
# accepted text computes. (In float32 the two differ by rounding only, since they come
# from matrix products of different shapes.)

# %%
accepted_text = context + verdict.tokens[:-1]  # everything but the bonus token, which has no row yet
with torch.inference_mode():
    plain = model.new_cache(len(accepted_text))
    model(torch.tensor(accepted_text), torch.arange(len(accepted_text)), plain)
    plain.commit()
n = cache.length
print(f"positions: {n} committed vs {plain.length} in the plain prefill")
print(f"max |K difference| {(cache.k[:, :, :n] - plain.k[:, :, :n]).abs().max():.1e}, "
      f"max |V difference| {(cache.v[:, :, :n] - plain.v[:, :, :n]).abs().max():.1e} "
      f"(values are of order {plain.k[:, :, :n].abs().mean():.1f})")  # fmt: skip

# %% [markdown]
# ## The whole loop
#
# `minila.lookahead_generate` repeats this step: candidates from the pool, one forward
# pass, harvest the window's n-grams into the pool, verify, commit, slide the window,
# emit. Its result must equal greedy decoding's, token for token. We run it on two
# prompts, a chat answer and a piece of code, with W=5, N=4, G=5.

# %%
config = minila.LookaheadConfig(window=W, ngram=N, guess=G)
chat_prompt = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Explain in three sentences why the sky is blue."}]
)
runs = {}
for name, prompt, greedy in [
    ("chat", chat_prompt, minila.greedy_generate(model, chat_prompt, 64, eos_ids=tokenizer.eos_ids)),
    ("code", code_prompt, code_greedy),
]:
    lookahead = minila.lookahead_generate(model, prompt, 64, config, eos_ids=tokenizer.eos_ids)
    runs[name] = lookahead
    print(f"{name}: identical to greedy: {lookahead.tokens == greedy.tokens}; "
          f"{len(lookahead.tokens)} tokens in {lookahead.steps} forward passes (greedy: {greedy.steps}), "
          f"S = {lookahead.compression:.2f}")  # fmt: skip

# %% [markdown]
# Below, the code answer with each step's tokens shaded by how many tokens that step
# accepted (like the demo in the paper's blog post): plain text is a step that emitted
# one token, as greedy decoding would; shaded runs are steps that emitted several.
# (GitHub strips colours from HTML outputs; there the multi-token steps show in bold,
# and the picture after the two answers shows the colours.)

# %%
SHADES = {2: "#d4efdf", 3: "#a9dfbf", 4: "#52be80"}  # tokens accepted in one step -> colour


def shade(n):
    return SHADES[min(n, max(SHADES))] if n > 1 else None


def step_texts(gen):
    """The text each step emitted, with the number of tokens it accepted."""
    out, done = [], 0
    for n in gen.accepted:
        out.append((tokenizer.decode(gen.tokens[done : done + n]), n))
        done += n
    return out


def coloured(gen):
    """HTML of a generation: one span per step, shaded (and bold) when it accepted several tokens."""
    spans, plain = [], []
    for step, (text, n) in enumerate(step_texts(gen), start=1):
        text_html = html.escape(text)
        if n > 1:
            text_html = f'<b style="background:{shade(n)};font-weight:normal">{text_html}</b>'
        spans.append(f'<span title="step {step}: {n} tokens">{text_html}</span>')
        plain.append(f"[{text}]" if n > 1 else text)
    legend = " ".join(f'<span style="background:{c};padding:0 4px">{k} tokens</span>' for k, c in SHADES.items())
    page = f'<pre style="white-space:pre-wrap;line-height:1.5">{"".join(spans)}</pre><p>{legend} in one step</p>'
    return {"text/html": page, "text/plain": "".join(plain)}


display(coloured(runs["code"]), raw=True)

# %% [markdown]
# Steps that accept several tokens cluster where the text is predictable from what came
# before: code that repeats its own identifiers and patterns, and phrases the pool has
# already seen. The chat answer is less repetitive:

# %%
display(coloured(runs["chat"]), raw=True)


# %%
def draw_steps(gen, title, columns=80, fontsize=10):
    """The same as a picture: monospace text, each multi-token step on a coloured background."""
    cells, line, col = [], 0, 0  # (line, column, text, colour) of every piece of text
    for text, n in step_texts(gen):
        for k, piece in enumerate(text.split("\n")):
            if k:
                line, col = line + 1, 0
            while piece:
                if col == columns:
                    line, col = line + 1, 0
                chunk, piece = piece[: columns - col], piece[columns - col :]
                cells.append((line, col, chunk, shade(n)))
                col += len(chunk)
    char_w, line_h, head = 0.602 * fontsize / 72, 1.6 * fontsize / 72, 0.4  # inches (DejaVu Sans Mono)
    width, body = columns * char_w / 0.96, (line + 1) * line_h
    fig = plt.figure(figsize=(width, body + head))
    ax = fig.add_axes((0.02, 0, 0.96, body / (body + head)))
    ax.set_xlim(0, columns)
    ax.set_ylim(line + 0.5, -0.5)
    ax.axis("off")
    for ln, c, text, colour in cells:
        if colour:
            ax.add_patch(plt.Rectangle((c, ln - 0.45), len(text), 0.9, color=colour, lw=0))
        for k, char in enumerate(text):  # one glyph per column: no drift from font hinting
            ax.text(c + k + 0.5, ln, char, family="DejaVu Sans Mono", fontsize=fontsize, va="center", ha="center")
    fig.text(0.02, 1 - 0.15 / (body + head), title, va="top", fontsize=10)
    plt.show()


draw_steps(runs["code"], "code answer: shaded = several tokens in one step (light: 2, mid: 3, dark: 4)")

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
width = 0.38
for shift, (name, gen) in zip((-width / 2, width / 2), runs.items()):
    counts = np.bincount(gen.accepted[1:], minlength=N + 1)[1:]  # the prefill is not a lookahead step
    ax.bar(np.arange(1, N + 1) + shift, counts, width, label=f"{name} (S = {gen.compression:.2f})")
ax.set_xticks(range(1, N + 1))
ax.set_xlabel("tokens accepted in one step")
ax.set_ylabel("steps")
ax.set_title(f"Tokens per lookahead step, W={W}, N={N}, G={G}")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Most steps still accept one token, but every multi-token step saves whole forward
# passes, and the output is unchanged. Whether this is faster in seconds depends on the
# price of the wider pass: each step feeds many tokens instead of one (below). The last
# notebook,
# [6. How far it goes](06_how_far_it_goes.ipynb), measures both sides.

# %%
for name, gen in runs.items():
    widths = [s.width for s in gen.stats[1:]]
    print(f"{name}: {sum(widths) / len(widths):.0f} tokens fed per step on average "
          f"(at most {config.step_tokens}); {gen.tokens_per_second:.1f} tokens/s on this machine")  # fmt: skip
