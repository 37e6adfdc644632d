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
# # 4. One forward, two branches
#
# A lookahead step does two jobs at once, in **one** forward pass of the model:
#
# * the **lookahead branch** advances the 2-D Jacobi window of notebook 3 by one
#   iteration (and harvests its n-grams);
# * the **verification branch** checks the candidate n-grams the pool holds for `last`,
#   the last accepted token.
#
# Both hang off `last`, the only token of the step that is already accepted. This
# notebook looks at how they share one forward pass: which token sits in which row, at
# which position, and which rows may see which. All of it lives in one object,
# `minila.lookahead.layout.StepLayout`; the attention mask is derived from it by a single rule.
# At the end we check, on a tiny random model, that squeezing everything into one pass
# changes nothing: each token gets exactly the logits it would get in a plain sequence.

# %%
import matplotlib.pyplot as plt
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import minila
from minila.lookahead.layout import LAST, LOOKAHEAD, VERIFY, chains, step_layout

torch.set_num_threads(2)

# %% [markdown]
# ## The paper's example: W=5, N=4, G=2
#
# Figure 3 of the paper draws one step with a window of **W = 5** columns, n-grams of
# **N = 4** tokens (so the window has N-1 = 3 levels) and **G = 2** candidates of N-1 = 3
# tokens each. With `last` at position p:
#
# * level 0 holds W-1 = 4 guesses at p+1 .. p+4 (column 0 of level 0 is `last` itself);
# * level l = 1, 2 holds W = 5 guesses, column c at position p+l+c;
# * candidate token k sits at p+1+k, right after `last`.
#
# The verification branch is given as a small tree of parent pointers (candidates that
# start with the same tokens share rows; see `minila.lookahead.layout.candidate_tree`). Two
# candidates with different first tokens are two separate chains, which
# `minila.lookahead.layout.chains` spells out.

# %%
W, N, G = 5, 4, 2
layout = step_layout(W, N - 1, chains([N - 1] * G))
print(f"one step feeds {layout.size} tokens; logits are needed for {len(layout.logit_rows)} of them")


# %% [markdown]
# Every row has a branch, a parent (the token just before it on its chain) and a
# position offset from `last` (its depth in the tree of chains). The helper below only
# names the rows for printing; it reads `level_rows` and `parents` from the layout.

# %%
def row_names(layout):
    """A short name for every row of a step: 'last', 'L1c3' (level 1, column 3), 'C0t2'."""
    names = ["last"] + [f"L0c{c}" for c in range(1, layout.window)]
    for level in range(1, layout.levels):
        names += [f"L{level}c{c}" for c in range(layout.window)]
    cand, tok = -1, 0
    for row in range(layout.first_node_row, layout.size):
        if layout.parents[row] == 0:  # a new chain hangs from `last`
            cand, tok = cand + 1, 0
        else:
            tok += 1
        names.append(f"C{cand}t{tok}")
    return names


BRANCH = {LAST: "last", LOOKAHEAD: "lookahead", VERIFY: "verify"}
names = row_names(layout)
depth = layout.depth.tolist()
print(f"{'row':>3}  {'name':<5} {'branch':<10} {'parent':>6}  {'position':<8}")
for row in range(layout.size):
    parent = layout.parents[row]
    print(
        f"{row:>3}  {names[row]:<5} {BRANCH[layout.branch[row]]:<10} "
        f"{names[parent] if parent >= 0 else '-':>6}  p+{depth[row]}"
    )

# %% [markdown]
# The same thing folded into one line per part, as in the paper's figure. Note how many
# tokens share a position: five different guesses sit at p+3, for example. Positions
# and cache slots are therefore separate things (the KV cache stores a step's rows in
# scratch slots, whatever their positions).

# %%
def parts_of(names):
    """Consecutive rows grouped into the parts of a step: last, level 0, level 1, ..., cand 0, ..."""
    parts = {}
    for row, name in enumerate(names):
        index = name[1:].split("c")[0].split("t")[0]  # 'L1c3' -> '1', 'C0t2' -> '0'
        part = "last" if name == "last" else ("level " if name[0] == "L" else "cand ") + index
        start = parts.get(part, slice(row, row)).start
        parts[part] = slice(start, row + 1)
    return parts


parts = parts_of(names)
cells = {name: " ".join(str(d) for d in depth[s]) for name, s in parts.items()}
widths = {name: max(len(name), len(cells[name])) for name in parts}
print("branch    | " + " | ".join(f"{name:^{widths[name]}}" for name in parts))
print("rel. pos. | " + " | ".join(f"{cells[name]:^{widths[name]}}" for name in parts))

# %% [markdown]
# ## The mask, from one rule
#
# > Every row sees the whole committed cache; inside the step, a token sees exactly the
# > tokens of its own chain whose position is not later than its own.
#
# A chain is a path of tokens at consecutive positions starting at `last`. A level-l
# token in column c has the chain `last`, level 0 up to column c, then the level-1..l
# tokens of its own column; a candidate token has `last` and the earlier tokens of its
# candidate. Stored as parent pointers, "my chain up to me" is just "me and my
# ancestors", so `minila.lookahead.masks.ancestor_mask` builds the whole mask in a five-line loop:
# no special cases per branch.
#
# Below, row i is the query token, column j the key it may attend to; a coloured cell
# means "may see", coloured by the query's branch. Tick labels are positions relative
# to `last`, as in the paper.

# %%
def draw_mask(ax, layout, parts):
    mask = layout.mask.int() * (torch.tensor(layout.branch) + 1)[:, None]  # 0 = hidden, else branch + 1
    cmap = ListedColormap(["white", "0.45", "tab:blue", "tab:orange"])
    ax.imshow(mask, cmap=cmap, vmin=0, vmax=3)
    ticks = range(layout.size)
    labels = [str(d) for d in layout.depth.tolist()]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    for s in list(parts.values())[1:]:  # separators between the parts of the step
        ax.axhline(s.start - 0.5, color="black", lw=0.8)
        ax.axvline(s.start - 0.5, color="black", lw=0.8)
    for name, s in parts.items():
        ax.text(layout.size + 0.3, (s.start + s.stop - 1) / 2, name, va="center", fontsize=8)
    ax.set_xlabel("key token (position relative to last)")
    ax.set_ylabel("query token (position relative to last)")
    ax.legend(
        handles=[Patch(color=c, label=l) for c, l in [
            ("0.45", "last"), ("tab:blue", "lookahead branch"), ("tab:orange", "verification branch")]],
        loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8,
    )  # fmt: skip


fig, ax = plt.subplots(figsize=(7, 7))
draw_mask(ax, layout, parts)
ax.set_title("Attention mask of one lookahead step (W=5, N=4, G=2)")
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the picture:
#
# * The first five rows (`last` and level 0) form an ordinary causal triangle: level 0 is
#   simply the current Jacobi guess for the next W-1 tokens.
# * A level-1 token in column c sees the first c+1 tokens of block 0 and itself; a
#   level-2 token additionally sees the level-1 token *of its own column*. That is the
#   paper's staircase: each column of the window is a little sequence of its own, grown
#   by one Jacobi iteration per level.
# * Each candidate is a short causal chain hanging from `last`; candidates never see each
#   other, and the two branches never see each other.
#
# A mask built this way is easy to check: following the rule, every row must see exactly
# one token at each position from `last` (0) up to its own, and nothing else.

# %%
for name in ["L2c2", "C1t2"]:
    row = names.index(name)
    seen = layout.mask[row].nonzero().flatten().tolist()
    print(f"{name} (position p+{depth[row]}) sees {[names[r] for r in seen]} at positions {[depth[r] for r in seen]}")

one_chain_each = all(
    [depth[r] for r in layout.mask[row].nonzero().flatten().tolist()] == list(range(depth[row] + 1))
    for row in range(layout.size)
)
print("every row sees one token at each position 0 .. its own:", one_chain_each)

# %% [markdown]
# ## The check: a masked token gets the logits of a plain sequence
#
# Why is this mask right? Because of what attention computes. A token's output depends
# only on the keys and values it attends to, and on its own position (RoPE rotates
# queries and keys by their position ids, which the step passes explicitly). If a token
# sees the committed prompt plus exactly its chain, at the chain's positions, then it
# computes exactly what it would compute at the end of the plain sequence
# `prompt + chain`. Every layer preserves this, so the logits agree too.
#
# Let us check it on a tiny random Llama in float64, where agreement should be at the
# level of rounding error (about 1e-15). We feed a prompt, then one step of random tokens
# in the layout above, and compare every row's logits with a plain causal forward of
# `prompt + its chain`.

# %%
torch.manual_seed(0)
tiny = minila.Transformer(
    minila.ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=64, max_seq_len=128)
).double().eval()
with torch.no_grad():  # weights ~ N(0, 1/fan_in): logits spread about 1, not nearly flat
    for weight in tiny.parameters():
        if weight.dim() == 2:
            weight.normal_(0, weight.shape[1] ** -0.5)

prompt = torch.randint(64, (10,))
step_tokens = torch.randint(64, (layout.size,))  # row 0 is `last`; the rest are guesses
p = len(prompt)  # position of `last`


@torch.inference_mode()
def step_logits(mask, positions):
    """Prefill the prompt, then feed the whole step in one forward pass."""
    cache = tiny.new_cache(64)
    tiny(prompt, torch.arange(p), cache)
    cache.commit()
    return tiny(step_tokens, positions, cache, mask)  # (T, vocab)


@torch.inference_mode()
def plain_logits(row):
    """A plain causal forward of prompt + the chain of `row`; the last row's logits."""
    chain = layout.mask[row].nonzero().flatten()
    sequence = torch.cat([prompt, step_tokens[chain]])
    return tiny(sequence, torch.arange(len(sequence)), tiny.new_cache(64), logits_for=torch.tensor([-1]))[0]


plain = torch.stack([plain_logits(row) for row in range(layout.size)])  # (T, vocab)
in_step = step_logits(layout.mask, p + layout.depth)
print(f"logits have a standard deviation of {plain.std().item():.2f}")
print(f"max |logit difference| over all {layout.size} rows: {(in_step - plain).abs().max().item():.2e}")

# %% [markdown]
# And two ways to get it wrong, to see that the check has teeth: a plain causal mask over
# the packed rows (every token sees all rows before it, including other branches), and
# the right mask with positions 0, 1, 2, ... in row order instead of the chain positions.

# %%
causal = torch.ones(layout.size, layout.size, dtype=torch.bool).tril()
wrong_mask = step_logits(causal, p + layout.depth)
wrong_positions = step_logits(layout.mask, p + torch.arange(layout.size))
for label, logits in [("causal mask over the packed rows", wrong_mask), ("row order as positions", wrong_positions)]:
    diff = (logits - plain).abs().amax(dim=-1)
    agree = (diff < 1e-9).sum().item()
    print(f"{label:<34} max |diff| {diff.max().item():.2f}; rows that still agree: {agree} of {layout.size}")

# %% [markdown]
# Only the rows whose context happens to be right still agree (for the causal mask:
# `last` and level 0, which really are a causal chain; for the positions: the rows whose
# index equals their position offset).
#
# This equality is the whole exactness argument of lookahead decoding in one line:
# whatever else the step feeds, a candidate token's logits are the ones greedy decoding
# would compute after the same tokens. Notebook 5 uses them to verify candidates and to
# keep the right rows of the KV cache.
#
# ## Equal, or equal bit for bit?
#
# The model above is float64, so "agree" means to 1e-9. In bfloat16 a wide step and a
# one-token step can round differently (the fused attention kernel splits its work by
# the number of rows; the products block their inner dimension differently for more
# rows), and at a near-tie the argmax flips: lookahead leaves greedy's path. minila's
# *width-invariant* forward (`minila/llama/invariant.py`, the default for bfloat16 on a CPU)
# computes every row in an order fixed by the row's own position: keys laid out by
# absolute position, values summed in fixed blocks of 64 positions, products fed at most
# 32 rows a call (an AMX CPU switches bfloat16 products to other kernels above that) and
# long ones in fixed slices, SiLU in calls of whole rows. Which chunking keeps each
# kernel invariant is a fact about the CPU's kernels, so `minila/llama/probe.py` measures it
# on the machine at hand, in a second or two, before the forward uses it. Then each row
# of the step equals greedy's, bit for bit (on a CPU without native bfloat16 products,
# such as an AVX2 one, this cell runs in float32: the argument is the same):

# %%
from minila.llama.invariant import invariant_ok, make_width_invariant  # noqa: E402

half_dtype = torch.bfloat16 if invariant_ok(torch.bfloat16, torch.device("cpu")) else torch.float32
torch.manual_seed(0)
half = minila.Transformer(
    minila.ModelArgs(vocab_size=64, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=256)
).to(half_dtype).eval()
half = make_width_invariant(half)  # the invariant attention kernel; products chunked as the probe found
prefix16 = torch.randint(0, 64, (100,), generator=torch.Generator().manual_seed(1))
with torch.inference_mode():
    cache16 = half.new_cache(200)
    half(prefix16, torch.arange(100), cache16)
    cache16.commit()
    step16 = torch.randint(0, 64, (layout.size,), generator=torch.Generator().manual_seed(2))
    wide16 = half(step16, 100 + layout.depth, cache16, layout.mask)  # (T, vocab): the whole step at once
    same = 0
    for row in range(layout.size):
        chain, j = [], row
        while j >= 0:
            chain.append(int(step16[j]))
            j = layout.parents[j]
        cache16.truncate(100)
        for k, tok in enumerate(reversed(chain)):  # greedy: one token per forward
            one = half(torch.tensor([tok]), torch.tensor([100 + k]), cache16)[0]
            cache16.commit()
        same += torch.equal(one, wide16[row])
print(f"{str(half_dtype)[6:]}, invariant forward: {same} of {layout.size} rows bitwise equal to greedy's one-token forward")

# %% [markdown]
# What is guaranteed on which path: with the plain forward, float32 and float64 agree to
# rounding, and lookahead has equalled greedy on every test (an observation); on a CPU
# the invariant forward is identical by construction in bfloat16 (its default) and in
# float32 (`--forward invariant`); bfloat16 with `--forward plain` may differ at near-ties.
