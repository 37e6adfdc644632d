"""The width-invariant forward: every row's logits independent of the step's width.

Lookahead feeds many tokens per step; greedy feeds one. If every operation computes a
row's numbers in an order that does not depend on how many rows share the call, nor
on where the row's keys sit in the cache, then by induction over positions and layers
a step's row gets bitwise the logits greedy computes for the same token, and
lookahead equals greedy in any dtype, not only where rounding happens to agree.

Operation by operation (bfloat16 on a CPU with oneDNN; tests/test_attention.py checks
each fact this relies on):

| operation | why a row's bits do not depend on the step | what had to change |
| --- | --- | --- |
| embedding, RoPE, SwiGLU's product, residual adds | elementwise (a gather; IEEE +, x), rows at the same offsets | nothing |
| SiLU | elementwise; the vector loop covers whole rows (widths are multiples of 32) | nothing |
| RMSNorm | a reduction over one row of `dim` contiguous values, inside one thread | nothing |
| matrix products | oneDNN computes each row alone while the inner length is <= 1024 | inner lengths above 1024 (the FFN's down projection, 1536) are split into fixed slices |
| attention | attention.InvariantAttention: keys by absolute position, fixed blocks | a new kernel (the fused one splits by T) |

The products: above an inner length of 1024, oneDNN blocks the inner dimension once a
call has more than a few rows (6 for 1536 here), so a wide step rounds its rows
differently from a one-row call. `SplitInner` computes such a product as a sum of
products over fixed slices of at most 1024 inner columns, added in order in float32:
each slice is invariant, and so is their sum.

Cost (bench/invariant_cost.py --cost, SmolLM2, 2-core Zen 5, one interleaved run): in
bfloat16 greedy 23.7 tok/s invariant vs 37.8 plain (0.63x); a forward of T tokens after
200 costs 1.8x (T=1) to 2.2x (T=64) the plain one's. Exactness is minila's promise, so
"auto" picks it for bfloat16 anyway; `--forward plain` is the fast, near-tie-inexact choice.

float32 on this CPU: the linear products are pre-packed oneDNN ones (model.pack_weights),
but attention's products go through MKL, whose rounding follows the matrix shapes;
the invariant kernel is then not invariant (`invariant_ok` says False), and the plain
path's exactness in float32 rests on rounding being too small to flip an argmax.
"""

from __future__ import annotations

import torch
from torch import nn

from minila.attention import InvariantAttention, PlainAttention
from minila.errors import MinilaError
from minila.model import Linear, Transformer

MAX_INNER = 1024  # oneDNN's bfloat16 products are row-invariant up to this inner length


class SplitInner(nn.Module):
    """x @ W.T as the in-order sum of products over fixed slices of W's columns."""

    def __init__(self, linear: Linear, max_inner: int = MAX_INNER) -> None:
        super().__init__()
        n_in = linear.in_features
        weight = linear.packed.to_dense() if linear.weight.is_meta else linear.weight.detach()  # packed: its values
        pieces = -(-n_in // max_inner)
        bounds = [n_in * i // pieces for i in range(pieces + 1)]
        self.slices = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
        self.parts = nn.ModuleList()
        for s in self.slices:
            part = Linear(s.stop - s.start, linear.out_features).to(weight.device, weight.dtype).requires_grad_(False)
            part.weight.copy_(weight[:, s])
            if weight.device.type == "cpu" and torch.backends.mkldnn.is_available():
                part.pack()  # oneDNN's pre-packed product, as pack_weights gives float32 models
            self.parts.append(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.parts[0](x[:, self.slices[0]].contiguous()).float()  # (T, out)
        for s, part in zip(self.slices[1:], self.parts[1:]):
            out += part(x[:, s].contiguous())
        return out.to(x.dtype)


def invariant_ok(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the invariant forward is width invariant here: bfloat16 on a CPU (oneDNN)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()


def make_width_invariant(model: Transformer) -> Transformer:
    """Switch `model` to the invariant forward, in place: the invariant attention kernel,
    and every product with an inner length above MAX_INNER split (see the module doc).
    Matrices are pre-packed first where they are not yet: a packed product always runs
    oneDNN, a plain one only above a size threshold."""
    if not any(isinstance(m, Linear) and m.packed is not None for m in model.modules()):
        model.pack_weights()
    model.attention_kernel = InvariantAttention()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear) and child.in_features > MAX_INNER:
                setattr(module, name, SplitInner(child))
    return model


def choose_forward(model: Transformer, name: str) -> Transformer:
    """Give `model` the forward called `name`: "plain", "invariant", or "auto" (the
    invariant one where it is invariant, `invariant_ok`)."""
    if name not in ("auto", "plain", "invariant"):
        raise MinilaError(f"unknown forward {name!r}; use auto, plain or invariant")
    if name == "invariant" or (name == "auto" and invariant_ok(model.dtype, model.device)):
        return make_width_invariant(model)
    model.attention_kernel = PlainAttention()
    return model
