"""A Llama, written out: RMSNorm, RoPE, grouped-query attention, SwiGLU.

The model knows nothing about decoding. One call takes the new tokens of a step,
their explicit position ids, an explicit (T, T) attention mask among them and a KV
cache holding the committed sequence, and returns logits for the rows the caller asks
for. Every new row sees the whole committed cache; the mask only says which *new*
rows see each other. `mask=None` means the usual causal mask.

Batch size is 1 (lookahead decoding is a batch-1 algorithm), so activations are 2-D:
(T, dim). Parameter names follow Meta's Llama code; `checkpoint.py` maps HF names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minila.kv_cache import KVCache
from minila.rope import RopeScaling, inv_frequencies


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int  # SwiGLU inner size
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None  # Llama 3.1+ ("llama3") or "linear"; see rope.py

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelArgs.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"ModelArgs.{name} must be > 0, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32 at least, as the reference Llama does, then cast back
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_tables(
    head_dim: int, max_len: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, (max_len, head_dim), in the rotate-half layout."""
    inv_freq = inv_frequencies(head_dim, theta, scaling)  # (hd/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (heads, T, hd); cos/sin: (T, hd). Rotates pairs (i, i + hd/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Linear(nn.Linear):
    """A bias-free nn.Linear whose weight can also be kept pre-packed for the CPU.

    On a CPU in float32, a product with a handful of rows (a lookahead step) takes the
    BLAS's general path, which re-packs the weight on every call: two rows cost about
    1.5x one row, although both read the weight once. oneDNN's pre-packed layout
    (`pack()`) brings a few rows close to the price of one, and makes each row's result
    bitwise independent of how many rows come with it. It keeps a second copy of the
    weight; a weight changed or moved after packing is noticed and used directly.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.packed: torch.Tensor | None = None
        self._packed_from: tuple[int, int] | None = None  # (address, version) of the packed weight

    def _weight_key(self) -> tuple[int, int]:
        # runs on every product of every step: _parameters skips nn.Module's slow __getattr__
        weight = self._parameters["weight"]
        return weight.data_ptr(), weight._version

    def pack(self) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
        self._packed_from = self._weight_key()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self._packed_from == self._weight_key():
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = Linear(args.dim, args.n_heads * args.head_dim)
        self.wk = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wv = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wo = Linear(args.n_heads * args.head_dim, args.dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        t = x.shape[0]
        q = self.wq(x).view(t, self.n_heads, self.head_dim).transpose(0, 1)  # (H, T, hd)
        k = self.wk(x).view(t, self.n_kv_heads, self.head_dim).transpose(0, 1)  # (Hkv, T, hd)
        v = self.wv(x).view(t, self.n_kv_heads, self.head_dim).transpose(0, 1)  # (Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = cache.write(layer, k, v)  # (Hkv, S, hd), S = committed + T
        # grouped-query attention: each group of n_heads / n_kv_heads query heads shares one kv head
        out = F.scaled_dot_product_attention(
            q.unsqueeze(0), keys.unsqueeze(0), values.unsqueeze(0), attn_mask=mask, enable_gqa=True
        )  # (1, H, T, hd)
        return self.wo(out[0].transpose(0, 1).reshape(t, -1))  # (T, dim)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = Linear(args.dim, args.hidden_dim)  # gate
        self.w3 = Linear(args.dim, args.hidden_dim)  # up
        self.w2 = Linear(args.hidden_dim, args.dim)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, cache, layer, mask) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, layer, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta, args.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def pack_weights(self) -> bool:
        """Pre-pack every matrix for oneDNN (see Linear) where it pays: on a CPU in
        float32. Returns whether it did. Call it once the weights are final."""
        if self.device.type != "cpu" or self.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
            return False
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack()
        return True

    def new_cache(self, capacity: int | None = None) -> KVCache:
        """A cache with `capacity` slots (default: the context length). Slots are not
        positions: a lookahead step needs scratch slots beyond the last position."""
        a = self.args
        capacity = a.max_seq_len if capacity is None else capacity
        return KVCache(a.n_layers, a.n_kv_heads, a.head_dim, capacity, self.dtype, self.device)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mask: torch.Tensor | None = None,
        logits_for: torch.Tensor | slice | None = None,
    ) -> torch.Tensor:
        """Run T new tokens after the committed cache.

        tokens, positions: (T,) long. mask: (T, T) bool, True where new row i may see
        new row j; None means causal. logits_for: the rows whose logits to return
        (None = all). Returns (R, vocab). The new rows' K/V stay in the cache's scratch
        slots until the caller commits them.
        """
        t = tokens.shape[0]
        if mask is None:
            mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril_()
        # every new row sees the whole committed cache: (T, committed + T)
        full_mask = torch.cat([mask.new_ones(t, cache.length), mask], dim=1)
        cos = self.rope_cos[positions].to(self.dtype)  # (T, hd)
        sin = self.rope_sin[positions].to(self.dtype)
        x = self.tok_embeddings(tokens)  # (T, dim)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, full_mask)
        if logits_for is not None:
            x = x[logits_for]  # (R, dim), 2-D so the head never copies its weight
        return self.output(self.norm(x))  # (R, vocab)
