"""A preallocated key/value cache whose slots are separate from positions.

Lookahead decoding feeds many tokens per step that share positions (a guess for
position p+3 in the window and another in a candidate n-gram), and keeps only a few
of them. So the cache stores rows in *slots*: the first `length` slots are the
committed sequence; a forward pass writes its T new rows to the scratch slots
`length .. length+T-1`; afterwards `commit(rows)` keeps the chosen scratch rows by
moving them, in order, to the front of the scratch area. Nothing relies on stale rows
being overwritten later: a row past `length` is never attended to unless the current
step wrote it.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, shaped (n_layers, n_kv_heads, capacity, head_dim)."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layers, n_kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.capacity = capacity
        self.length = 0  # committed rows
        self.pending = 0  # scratch rows written by the last forward, not yet committed

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a step's (n_kv_heads, T, head_dim) keys/values in the scratch slots of
        `layer` and return the keys/values the step attends to: committed + scratch."""
        t = k.shape[1]
        end = self.length + t
        if end > self.capacity:
            raise ValueError(
                f"KV cache full: {self.length} committed + {t} new rows > capacity {self.capacity}"
            )
        self.k[layer, :, self.length : end] = k
        self.v[layer, :, self.length : end] = v
        self.pending = t
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def commit(self, rows: list[int] | torch.Tensor | None = None) -> None:
        """Keep the scratch rows `rows` (indices into the last step, ascending) and
        drop the rest. `None` keeps all of them (a plain causal forward)."""
        if rows is None:
            self.length += self.pending
        else:
            rows = [int(r) for r in rows]  # a handful of ints: check them in Python, not on the device
            if rows and (rows[0] < 0 or rows[-1] >= self.pending or any(a >= b for a, b in zip(rows, rows[1:]))):
                raise ValueError(f"commit rows must be ascending indices below {self.pending}, got {rows}")
            n = len(rows)
            if n and rows[-1] != n - 1:  # not already the contiguous prefix 0..n-1
                src = self.length + torch.tensor(rows, device=self.k.device)
                dst = slice(self.length, self.length + n)
                self.k[:, :, dst] = self.k[:, :, src]
                self.v[:, :, dst] = self.v[:, :, src]
            self.length += n
        self.pending = 0

    def truncate(self, length: int) -> None:
        """Forget everything after the first `length` committed rows."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length
        self.pending = 0
