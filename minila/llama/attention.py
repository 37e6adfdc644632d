"""How a step's rows attend to the keys: two interchangeable kernels the model holds.

The model (model.py) asks its kernel once per forward for a *plan* (what the step's
mask means for the keys), and every layer calls `plan.attend(q, keys, values)`. The
decoding loops never know which kernel runs.

`PlainAttention`: PyTorch's fused scaled_dot_product_attention over committed + step
keys, with a (T, committed + T) mask. Fast, but a row's result depends on the step:
the kernel splits queries and keys into blocks whose sizes follow T, and a row's
visible keys sit at different slots (with masked gaps) in a wide step than in a
one-token step. So a wide step and greedy decoding round differently; in bfloat16
that flips near-tie argmaxes (lookahead then leaves greedy's path).

`InvariantAttention`: each row's result is a function of its query and of the keys
and values of positions 0..p alone, computed in the same order whatever else the
step holds ("width invariance"). Then, by induction over positions and layers, every
row of a wide step gets bitwise the logits that greedy decoding computes for the
same token, and lookahead *is* greedy in any dtype. The argument:

1. A row at position p sees exactly one key per position 0..p: the committed cache
   (slot j holds position j; KVCache keeps it so) and its ancestors in the step (one
   per position, by the mask rule). Greedy sees the same keys, all in the cache. The
   plan lists each row's visible step rows *in position order*, so both cases put the
   key of position j at index j: the row's keys are laid out by absolute position.
2. Scores q.k: one matrix product against every slot, then laid out by position with
   the plan's slot index (a gather). Each product element is one q.k dot product; it
   must not depend on how many rows (M) or keys (N) share the call. oneDNN's bfloat16
   products (what `torch.matmul` runs in bfloat16 on a CPU) and MKL's float32 ones
   have this property for the short inner lengths used here (head_dim, BLOCK), as
   long as a call has at least 4 rows and 2 columns (smaller ones take other kernels),
   so `_product` never makes a smaller one. MKL's AVX2 kernels (an AVX2 CPU, or
   MKL_ENABLE_INSTRUCTIONS=AVX2) do not: they sum a row in another order once a call
   has 8 rows or 16 columns. There every product is made a batch of equal tiles
   (4 x 16), one shape whatever T and P are. probe.py finds which a CPU needs.
3. Softmax over the row's scores by absolute position, padded with -inf up to a
   multiple of BLOCK (>= 16 lanes). PyTorch's last-dim softmax handles each row alone:
   an exact max, exp by vector code on every element (tails too), a sum whose lane k
   adds the elements k, k+16, ... in order. The padding adds exact zeros, so a longer
   row gives the same bits on the shared prefix.
4. Probabilities times values, in blocks of BLOCK absolute positions: one product per
   block with a fixed inner length (BLOCK). Blocks that are wholly committed are
   shared by every row (one product over all rows); the rest are gathered per row
   (committed tail, then the ancestors by position, zeros past p); a one-token step
   (greedy) has its keys in slot order already, so all its blocks count as shared
   (the same products, one call fewer). The per-block
   partial sums are added in block order by a cumulative sum (sequential by
   definition); blocks past a row's position hold exact zeros.

What it costs: a product against the scores' blocks instead of one fused kernel, and
a per-row copy of at most BLOCK + depth values. invariant.py makes the rest of the
forward invariant too, and says where it holds.
Scores are rounded to the model's dtype before the softmax, as transformers' eager
attention does; the fused kernel keeps them in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = 64  # positions per block of the value product; a multiple of the 16 float lanes of AVX-512
# PyTorch hands a bfloat16 (batched) product to oneDNN only above this many multiply-adds
_ONEDNN_MIN = 16 * 16 * 16
MIN_ROWS = 4  # the fewest rows of an attention product (see _product)


def _product(a: torch.Tensor, b: torch.Tensor, tile: tuple[int, int] = (MIN_ROWS, 0)) -> torch.Tensor:
    """torch.matmul(a, b), never in a shape that takes a special kernel, so that a
    one-token step takes the same kernel as a wide one. `tile` = (rows, 0): zero rows
    are appended to `a` up to `rows` (MKL's float32 kernels for one to three rows sum
    in other orders) or until oneDNN takes a bfloat16 product (below that PyTorch runs
    its own loop), and a zero column to a one-column `b` (a matrix-vector product).
    The kernels compute each row and column alone, so the padding changes no bit of
    the rest. `tile` = (rows, cols): where a kernel's order follows the whole call's
    shape (MKL's AVX2 kernels do), every call is a batch of equal rows x cols tiles."""
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if tile[1]:
        return _tiled_product(a, b, *tile)
    if n == 1:
        return _product(a, F.pad(b, (0, 1)), tile)[..., :1]
    need = max(tile[0], _ONEDNN_MIN // (k * n) + 1)
    if m >= need:
        return torch.matmul(a, b)
    return torch.matmul(F.pad(a, (0, 0, 0, need - m)), b)[..., :m, :]


def _tiled_product(a: torch.Tensor, b: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """a @ b as one batch of (rows, k) @ (k, cols) products, zero-padded to whole tiles:
    the kernel sees one shape whatever the step's width and the cache's length."""
    m, n = a.shape[-2], b.shape[-1]
    mp, np_ = -(-m // rows) * rows, -(-n // cols) * cols
    a = F.pad(a, (0, 0, 0, mp - m)).unflatten(-2, (mp // rows, rows)).unsqueeze(-3)  # (..., M/r, 1, r, k)
    b = F.pad(b, (0, np_ - n)).unflatten(-1, (np_ // cols, cols)).movedim(-2, -3).unsqueeze(-4)  # (..., 1, N/c, k, c)
    out = torch.matmul(a, b).transpose(-3, -2)  # (..., M/r, r, N/c, c)
    return out.reshape(*out.shape[:-4], mp, np_)[..., :m, :n]


class AttentionPlan:
    """What one forward's layers need to attend: built once per forward."""

    def attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """q: (H, T, hd); keys/values: (Hkv, committed + T, hd). Returns (H, T, hd)."""
        raise NotImplementedError


@dataclass(frozen=True)
class _PlainPlan(AttentionPlan):
    mask: torch.Tensor  # (T, committed + T) float: 0 where the row sees the key, -inf where not

    def attend(self, q, keys, values):
        # scores and softmax in float32 at least, as the reference Llama does; on a CPU this is
        # also 3-4x faster for one bfloat16 row than PyTorch's bfloat16 attention kernel
        wide = torch.promote_types(q.dtype, torch.float32)
        # grouped-query attention: each group of H / Hkv query heads shares one kv head
        out = F.scaled_dot_product_attention(
            q.unsqueeze(0).to(wide), keys.unsqueeze(0).to(wide), values.unsqueeze(0).to(wide), attn_mask=self.mask.to(wide),
            enable_gqa=True,
        )  # (1, H, T, hd)
        return out[0].to(q.dtype)


class PlainAttention:
    """The fused kernel (see the module docstring)."""

    name = "plain"

    def plan(self, mask: torch.Tensor, positions: torch.Tensor, committed: int) -> AttentionPlan:
        # every new row sees the whole committed cache: (T, committed + T); as the additive
        # mask the kernel would otherwise build from a boolean one in every layer
        sees = torch.cat([mask.new_ones(mask.shape[0], committed), mask], dim=1)
        return _PlainPlan(torch.zeros(sees.shape, device=mask.device).masked_fill_(~sees, float("-inf")))


@dataclass(frozen=True)
class _InvariantPlan(AttentionPlan):
    committed: int  # P: cache slots 0..P-1 hold positions 0..P-1
    slots: torch.Tensor  # (T, L) long: the cache slot of each position 0..L-1 a row sees (0 where hidden)
    hidden: torch.Tensor  # (T, L) bool: positions the row does not see (past it, or not its ancestor)
    own: torch.Tensor  # (T * (L - start),) long: slots of the per-row blocks' positions, P + T (a zero row) where hidden
    tile: tuple[int, int]  # how products are shaped (see _product)

    def attend(self, q, keys, values):
        n_heads, t, hd = q.shape
        n_kv, p, length = keys.shape[0], self.committed, self.slots.shape[1]
        g = n_heads // n_kv
        shared = p // BLOCK  # blocks every row sees whole from the cache
        start = shared * BLOCK  # first position of the per-row blocks
        qg = q.reshape(n_kv, g * t, hd)  # rows of a kv group: (g, T) flattened
        acc = torch.promote_types(q.dtype, torch.float32)  # softmax and block sums: float32 at least

        # 2. scores against every slot, then each row's laid out by position 0..L-1
        scores = _product(qg, keys.transpose(1, 2), self.tile).to(acc) * hd**-0.5  # (Hkv, gT, P+T)
        scores = scores.view(n_kv, g, t, -1)  # (Hkv, g, T, P+T): every head of a group reads the same slots
        by_position = scores.gather(3, self.slots.expand(n_kv, g, -1, -1)).masked_fill_(self.hidden, float("-inf"))
        # 3. softmax over positions 0..L-1
        probs = torch.softmax(by_position, dim=3).to(values.dtype).view(n_kv, g * t, length)  # (Hkv, gT, L)

        # 4. values in blocks of BLOCK positions: shared blocks once for all rows ...
        if t == 1:  # one token (greedy): it sees every slot in position order, so every block is shared
            shared, start, values = length // BLOCK, length, F.pad(values, (0, 0, 0, length - p - 1))  # zeros past it
        v_shared = values[:, :start].view(n_kv, shared, BLOCK, hd)
        p_shared = probs[..., :start].view(n_kv, g * t, shared, BLOCK).transpose(1, 2)  # (Hkv, nS, gT, B)
        part_shared = _product(p_shared, v_shared, self.tile)  # (Hkv, nS, gT, hd)
        parts = part_shared.view(n_kv, shared, g, t, hd).permute(0, 2, 3, 1, 4)  # (Hkv, g, T, nS, hd)
        if start < length:  # ... and the rest per row: the committed tail, the row's ancestors, zeros
            v_own = F.pad(values, (0, 0, 0, 1)).index_select(1, self.own)  # hidden positions read the zero row
            v_own = v_own.view(n_kv, t, -1, BLOCK, hd)  # (Hkv, T, nO, B, hd)
            p_own = probs[..., start:].reshape(n_kv, g, t, -1, BLOCK).permute(0, 2, 3, 1, 4)  # (Hkv, T, nO, g, B)
            part_own = _product(p_own, v_own, self.tile)  # (Hkv, T, nO, g, hd)
            parts = torch.cat([parts, part_own.permute(0, 3, 1, 2, 4)], dim=3)  # (Hkv, g, T, blocks, hd), block order
        total = parts.to(acc).cumsum(dim=3)[:, :, :, -1]  # sequential sum over blocks: (Hkv, g, T, hd)
        return total.reshape(n_heads, t, hd).to(q.dtype)


@dataclass(frozen=True)
class InvariantAttention:
    """Each row's result independent of the step's width (see the module docstring).
    `tile`: how its products are shaped (see _product); probe.py finds what this CPU needs."""

    tile: tuple[int, int] = (MIN_ROWS, 0)
    name = "invariant"

    def plan(self, mask: torch.Tensor, positions: torch.Tensor, committed: int) -> AttentionPlan:
        t = mask.shape[0]
        # sort each row's visible step rows by position (then by row); hidden ones last
        key = positions[None, :] * t + torch.arange(t, device=mask.device)[None, :]  # (T, T)
        key = key.masked_fill(~mask, torch.iinfo(torch.long).max)
        d = int(mask.sum(dim=1).max())
        order = key.sort(dim=1).indices[:, :d]  # (T, D): the step rows each row sees, in position order
        length = -(-(committed + d) // BLOCK) * BLOCK  # L: the score row, in whole blocks
        # position j < P sits in slot j; the row's ancestors in slots P + order; then nothing
        slots = torch.cat([torch.arange(committed).expand(t, -1), committed + order, order.new_zeros(t, length - committed - d)], 1)
        hidden = torch.cat([mask.new_zeros(t, committed), ~mask.gather(1, order), mask.new_ones(t, length - committed - d)], 1)
        start = committed // BLOCK * BLOCK  # where the per-row blocks begin (see attend)
        own = slots[:, start:].masked_fill(hidden[:, start:], committed + t).flatten()
        return _InvariantPlan(committed, slots.masked_fill(hidden, 0), hidden, own, self.tile)
