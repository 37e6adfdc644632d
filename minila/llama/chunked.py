"""Kernels fed in chunks of whole rows: the building blocks of the invariant forward.

Each wraps a plain kernel (a product, SiLU, RMSNorm) so that no call holds more rows,
or a longer inner length, than a limit; `invariant.py` says why that keeps every row's
bits independent of the step's width, and `probe.py` measures, on this CPU, which limits
do. Both import these; neither is imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minila.llama.model import Linear, RMSNorm

MAX_ROWS = 32  # the most rows a product call takes (a wider step: calls of this many rows)
MAX_INNER = 1024  # the longest inner length a product call takes (a longer one: summed over slices)
GRAIN = 32768  # PyTorch splits an elementwise call of more elements than this between threads


def in_row_chunks(fn, x: torch.Tensor, rows: int) -> torch.Tensor:
    """fn over x's rows, at most `rows` of them per call, the results stacked again."""
    if x.shape[0] <= rows:
        return fn(x)
    return torch.cat([fn(x[i : i + rows]) for i in range(0, x.shape[0], rows)])


class SiluByRows:
    """F.silu computed by vector code on every element of every row: each call holds
    whole rows and stays below GRAIN (one thread; rows of a multiple of invariant.WIDTH leave no
    scalar leftovers). One call with more elements would be cut between threads at
    half its length, which for an odd number of rows falls inside a row. At most
    `rows` rows per call (what the probe found invariant here). (T, hidden)"""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return in_row_chunks(F.silu, x, max(1, min(self.rows, GRAIN // x.shape[-1])))


class NormByRows(RMSNorm):
    """An RMSNorm fed at most `rows` rows per call (what the probe found invariant here).
    `by_rows` turns a model's RMSNorm into one in place: same weight, same name."""

    rows: int

    @staticmethod
    def by_rows(norm: RMSNorm, rows: int) -> None:
        norm.__class__, norm.rows = NormByRows, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_row_chunks(super().forward, x, self.rows)


class InvariantLinear(nn.Module):
    """x @ W.T with every row's bits independent of how many rows share the call: at
    most MAX_ROWS rows per product, and an inner length above MAX_INNER summed over
    fixed slices of W's columns, in order, in float32."""

    def __init__(self, linear: Linear, max_inner: int = MAX_INNER, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        n_in, self.max_rows = linear.in_features, max_rows
        self.slices = [slice(a, min(a + max_inner, n_in)) for a in range(0, n_in, max_inner)]  # widths: multiples of invariant.WIDTH
        pieces = len(self.slices)
        onednn = linear.packed is not None or (linear.weight.device.type == "cpu" and torch.backends.mkldnn.is_available())
        if pieces == 1:
            if onednn and linear.packed is None:
                linear.pack()  # a packed product always runs oneDNN, a plain one only above a size
            self.parts = nn.ModuleList([linear])  # the product as it is
            return
        weight = linear.packed.to_dense() if linear.weight.is_meta else linear.weight.detach()  # packed: its values
        self.parts = nn.ModuleList()
        for s in self.slices:
            part = Linear(s.stop - s.start, linear.out_features).to(weight.device, weight.dtype).requires_grad_(False)
            part.weight.copy_(weight[:, s])
            if onednn:
                part.pack()
            self.parts.append(part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_row_chunks(self._product, x, self.max_rows)  # (T, in) -> (T, out)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0](x)
        out = self.parts[0](x[:, self.slices[0]].contiguous()).float()  # (T, out)
        for s, part in zip(self.slices[1:], self.parts[1:]):
            out += part(x[:, s].contiguous())
        return out.to(x.dtype)
