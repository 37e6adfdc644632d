"""What this machine's limits predict for one forward pass: a roofline per step width.

A forward of T new tokens has to read every weight once (however many rows come with
it) and do about 2 * T * (weights of the matrices) multiply-adds, plus attention over
the cache. Its time can be no less than the larger of

    bytes read / memory bandwidth      (the same for every T: the weights dominate)
    FLOPs / peak matrix-product rate   (grows with T)

so the cost curve of an ideal implementation is flat until the two meet, at T of about
(peak / bandwidth) / (FLOPs per weight byte), and rises with T after. `measure_limits`
measures both rates on this machine (a streaming read of a buffer far larger than the
caches; a large pre-packed product in the model's dtype, on the threads torch uses);
`forward_bound` applies them to a model. The bench prints the bound beside the
measured curve, so a reader sees how far each T is from what the hardware allows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from minila.llama.model import ModelArgs, packable_dtypes


@dataclass(frozen=True)
class Limits:
    """Measured rates of this machine for one dtype."""

    flops_per_second: float  # a large matrix product, pre-packed where the model packs
    bytes_per_second: float  # a streaming read from memory

    def __post_init__(self) -> None:
        if self.flops_per_second <= 0 or self.bytes_per_second <= 0:
            raise ValueError(f"rates must be positive, got {self}")


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: page faults, oneDNN's primitive cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_limits(dtype: torch.dtype, read_mib: int = 256, size: int = 1024, repeats: int = 5) -> Limits:
    """Peak product rate in `dtype` and memory read bandwidth, on the CPU (about a second)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    if dtype in packable_dtypes():  # the kernels the model's packed products use
        packed = torch.ops.mkldnn._reorder_linear_weight(b, None)
        product = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")  # noqa: E731
    else:
        product = lambda: a @ b.T  # noqa: E731
    flops = 2 * size**3 / _best_seconds(product, repeats)
    # ones, not empty: untouched pages all map the one zero page, which stays in cache
    buffer = torch.ones(read_mib * 2**20 // 4, dtype=torch.float32)
    bandwidth = buffer.numel() * 4 / _best_seconds(buffer.sum, repeats)
    return Limits(flops, bandwidth)


@dataclass(frozen=True)
class Bound:
    """The time one forward of T tokens cannot beat, and which limit sets it."""

    tokens: int
    bytes: float
    flops: float
    memory_seconds: float
    compute_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.memory_seconds, self.compute_seconds)


def forward_bound(
    args: ModelArgs, bytes_per_weight: int, limits: Limits, tokens: int, context: int, logit_rows: int = 1
) -> Bound:
    """The roofline of one forward of `tokens` new tokens after `context` cached ones,
    with logits for `logit_rows` of them."""
    d, kv = args.dim, args.n_kv_heads * args.head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * args.hidden_dim  # wq, wo; wk, wv; w1, w3, w2
    matrices = args.n_layers * per_layer + args.vocab_size * d  # the head reads all of its weights
    seen = context + tokens  # keys each new row attends to (at most)
    cache_bytes = args.n_layers * 2 * seen * kv * bytes_per_weight  # K and V read back
    flops = 2 * tokens * args.n_layers * per_layer + 2 * logit_rows * args.vocab_size * d
    flops += args.n_layers * 4 * tokens * seen * d  # q.k and p.v over every head
    total_bytes = matrices * bytes_per_weight + cache_bytes
    return Bound(tokens, total_bytes, flops, total_bytes / limits.bytes_per_second, flops / limits.flops_per_second)
