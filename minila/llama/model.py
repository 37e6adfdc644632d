"""A Llama, written out: RMSNorm, RoPE, grouped-query attention, SwiGLU.
(Qwen2 is the same model plus a bias on q, k and v: `ModelArgs.qkv_bias`.)

The model knows nothing about decoding. One call takes the new tokens of a step,
their explicit position ids, an explicit (T, T) attention mask among them and a KV
cache holding the committed sequence, and returns logits for the rows the caller asks
for. Every new row sees the whole committed cache; the mask only says which *new*
rows see each other. `mask=None` means the usual causal mask. How the rows attend
is the job of an attention kernel the model holds (attention.py): the fused plain one,
or one whose every row is independent of the step's width.

Batch size is 1 (lookahead decoding is a batch-1 algorithm), so activations are 2-D:
(T, dim). Parameter names follow Meta's Llama code; `checkpoint.py` maps HF names.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minila.llama.attention import AttentionPlan, PlainAttention
from minila.llama.kv_cache import KVCache
from minila.llama.rope import RopeScaling, inv_frequencies


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
    qkv_bias: bool = False  # Qwen2: q, k and v have a bias (o and the FFN have none)

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
        """x * rsqrt(mean(x^2) + eps) * weight, in one fused call (the same bits as the
        four ops written out). Half precision normalises in float32, casts back and only
        then scales, as the reference Llama does (the fused weight would scale in float32)."""
        if x.dtype in (torch.float16, torch.bfloat16):
            return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_tables(
    head_dim: int, max_len: int, theta: float, scaling: RopeScaling | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, (max_len, head_dim), in the rotate-half layout,
    with rotate-half's sign folded into sin: its first half is negated (see apply_rope)."""
    inv_freq = inv_frequencies(head_dim, theta, scaling)  # (hd/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (L, hd/2)
    return torch.cat([angles, angles], dim=-1).cos(), torch.cat([-angles.sin(), angles.sin()], dim=-1)  # (L, hd)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (heads, T, hd); cos/sin: (T, hd) from rope_tables. Rotates pairs (i, i + hd/2):
    x * cos + (-x2, x1) * sin, with (-x2, x1) * (s, s) computed as (x2, x1) * (-s, s),
    the same numbers in one roll instead of two slices, a negation and a cat."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


# oneDNN keeps a pre-packed copy of a matrix in these dtypes where the CPU has the
# instructions for them (bfloat16: AVX512-BF16 or AMX; float16: AVX512-FP16 or AMX-FP16)
def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes whose products `Linear.pack` can pre-pack on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return ()
    dtypes = [torch.float32]
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.append(torch.bfloat16)
    if torch.ops.mkldnn._is_mkldnn_fp16_supported():
        dtypes.append(torch.float16)
    return tuple(dtypes)


# oneDNN packs bfloat16 on any AVX-512 CPU, but without bfloat16 instructions it emulates
# them, and then a row's result depends on the call's size (and, since only some sums
# round differently, on the data: no probe can rule it out). Native: AVX512-BF16 or AMX,
# unless ONEDNN_MAX_CPU_ISA caps oneDNN below them.
_BELOW_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
NATIVE_NEEDS = {torch.bfloat16: "avx512_bf16 or amx_bf16", torch.float16: "avx512_fp16, amx_fp16 or avx_ne_convert"}


def not_native(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why `dtype` products are not native here (None: they are, or it is not a half
    dtype, or not a CPU). Without native products a half dtype runs on slow generic
    or emulated kernels whose rounding the invariant forward cannot rely on:
    load_checkpoint refuses it."""
    if device.type != "cpu" or dtype not in NATIVE_NEEDS:
        return None
    native = dtype in packable_dtypes()
    if native and dtype == torch.bfloat16 and platform.machine().lower() in ("x86_64", "amd64"):
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _BELOW_BF16
        native = not capped and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if native:
        return None
    name = str(dtype).removeprefix("torch.")
    return f"{name} products are not native on this CPU (it needs {NATIVE_NEEDS[dtype]}); use --dtype float32"


class Linear(nn.Linear):
    """A bias-free nn.Linear whose weight can instead be kept pre-packed for the CPU.

    On a CPU, a product with a handful of rows (a lookahead step) takes the BLAS's
    general path, which re-packs the weight on every call: two rows cost about 1.5x one
    row, although both read the weight once, and bfloat16 gains nothing over float32.
    oneDNN's pre-packed layout (`pack()`) brings a few rows close to the price of one,
    and makes each row's result bitwise independent of how many rows come with it.

    The packed copy replaces the plain one: `weight` stays a parameter of the right
    shape and dtype, but on the meta device (no memory, no values), so a packed model
    holds its weights once. `unpack()` brings the values back (bitwise); `state_dict()`
    unpacks on the fly. A weight assigned after packing is noticed and used directly.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.packed: torch.Tensor | None = None
        self._packed_from: tuple[int, int] | None = None  # (address, version) of the weight it stands for

    def _weight_key(self) -> tuple[int, int]:
        # runs on every product of every step: _parameters skips nn.Module's slow __getattr__
        weight = self._parameters["weight"]
        return weight.data_ptr(), weight._version

    def pack(self) -> None:
        weight = self.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.weight = nn.Parameter(weight.to("meta"), requires_grad=False)  # shape and dtype only
        self._packed_from = self._weight_key()

    def unpack(self) -> None:
        """Back to a plain weight (the packed copy's values, bitwise)."""
        if self.packed is not None and self.weight.is_meta:
            self.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        self.packed, self._packed_from = None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and self._packed_from == self._weight_key():
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed is not None and self.weight.is_meta:  # the values live in the packed copy
            destination[prefix + "weight"] = self.packed.to_dense()


class Fused(nn.Module):
    """Products that read the same input, computed as one: the matrices stacked by rows
    into one Linear, `stack` (on a CPU each call has a fixed cost, and one long weight
    streams faster than three short ones); the result is split back into views.
    With `bias`, one stacked bias is added to the whole product, once: an elementwise
    add after it, so the width-invariant forward, which replaces `stack`, keeps it.
    Checkpoints keep the separate matrices under Meta's names: `owned_by` makes the
    parent's state_dict() list them and its load_state_dict() stack them."""

    def __init__(self, in_features: int, parts: dict[str, int], bias: bool = False) -> None:
        super().__init__()
        self.parts = parts  # name -> rows, in stacking order
        self.stack = Linear(in_features, sum(parts.values()))
        self.bias = nn.Parameter(torch.zeros(sum(parts.values()))) if bias else None

    def joint(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked product, bias included: (T, in) -> (T, sum of the parts)."""
        out = self.stack(x)
        return out if self.bias is None else out + self.bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.joint(x).split(list(self.parts.values()), dim=-1)  # views of one (T, sum) result

    def owned_by(self, parent: nn.Module, attr: str) -> "Fused":
        kinds = ("weight", "bias") if self.bias is not None else ("weight",)
        groups = [(f"{attr}.{'stack.' if k == 'weight' else ''}{k}", [f"{n}.{k}" for n in self.parts]) for k in kinds]

        def split(module, state, prefix, local_metadata) -> None:  # "attention.qkv.stack.weight" -> "attention.wq.weight", ...
            for stacked, names in groups:
                if prefix + stacked in state:
                    rows = state.pop(prefix + stacked).split(list(self.parts.values()))
                    state.update({prefix + n: r for n, r in zip(names, rows)})

        def join(module, state, prefix, *args) -> None:
            for stacked, names in groups:
                if all(prefix + n in state for n in names):
                    state[prefix + stacked] = torch.cat([state.pop(prefix + n) for n in names])

        parent.register_state_dict_post_hook(split)
        parent.register_load_state_dict_pre_hook(join)
        return self


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        kv = args.n_kv_heads * args.head_dim
        qkv = {"wq": args.n_heads * args.head_dim, "wk": kv, "wv": kv}
        self.qkv = Fused(args.dim, qkv, bias=args.qkv_bias).owned_by(self, "qkv")
        self.wo = Linear(args.n_heads * args.head_dim, args.dim)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache,
        layer: int,
        plan: AttentionPlan,
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv.joint(x).view(t, -1, self.head_dim).transpose(0, 1)  # (H + 2 Hkv, T, hd): q's heads, k's, v's
        qk = apply_rope(qkv[: self.n_heads + self.n_kv_heads], cos, sin)  # q and k side by side: rotated in one go
        q, k, v = qk[: self.n_heads], qk[self.n_heads :], qkv[self.n_heads + self.n_kv_heads :]  # (H|Hkv, T, hd)
        keys, values = cache.write(layer, k, v)  # (Hkv, S, hd), S = committed + T
        out = plan.attend(q, keys, values)  # (H, T, hd)
        return self.wo(out.transpose(0, 1).reshape(t, -1))  # (T, dim)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_up = Fused(args.dim, {"w1": args.hidden_dim, "w3": args.hidden_dim}).owned_by(self, "gate_up")  # gate, up
        self.w2 = Linear(args.hidden_dim, args.dim)  # down
        self.activation = F.silu  # the width-invariant forward swaps in its own (invariant.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)  # (T, hidden) each
        return self.w2(self.activation(gate) * up)


class Block(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, cache, layer, plan) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, layer, plan)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.attention_kernel = PlainAttention()  # how rows attend: see attention.py
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
        return self.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:  # not the embedding's: its table may stay in the checkpoint's dtype
        return self.norm.weight.dtype

    def pack_weights(self) -> bool:
        """Pre-pack every matrix for oneDNN (see Linear) where it pays: on a CPU, in
        float32 and in the half-precision dtypes this CPU has instructions for. Each
        matrix is then held once. A head tied to the embedding is packed too (that
        halves its cost) and so no longer shares the embedding's table, which only
        looks rows up from then on: load_checkpoint leaves that table in the
        checkpoint's file, so a loaded model still holds the matrix once.
        Returns whether it packed. Call it once the weights are final."""
        if self.device.type != "cpu" or self.dtype not in packable_dtypes():
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
        plan = self.attention_kernel.plan(mask, positions, cache.length)  # every row also sees the cache
        cos = self.rope_cos[positions].to(self.dtype)  # (T, hd)
        sin = self.rope_sin[positions].to(self.dtype)
        x = self.tok_embeddings(tokens).to(self.dtype)  # (T, dim); rows of a table kept in another dtype: cast
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i, plan)
        if logits_for is not None:
            x = x[logits_for]  # (R, dim), 2-D so the head never copies its weight
        return self.output(self.norm(x))  # (R, vocab)
