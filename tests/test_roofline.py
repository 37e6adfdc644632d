"""The roofline model: its arithmetic against a model's own parameter count. No
assertion depends on a timing (the rates are given, not measured)."""

from __future__ import annotations

import pytest
from helpers import tiny_model

from minila.llama.model import Linear
from minila.speed.roofline import Limits, forward_bound


def test_the_bound_reads_every_matrix_once_and_grows_with_the_rows():
    model = tiny_model(0, tie=True)
    args = model.args
    matrix_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, Linear))
    limits = Limits(flops_per_second=1e9, bytes_per_second=1e9)
    one, many = (forward_bound(args, 4, limits, t, context=10) for t in (1, 64))
    kv = args.n_kv_heads * args.head_dim
    assert one.bytes == 4 * (matrix_weights + args.n_layers * 2 * 11 * kv)  # weights, then K and V of 11 rows
    # FLOPs: two per weight of the layers per row, the head for one row, attention over the cache
    body = matrix_weights - args.vocab_size * args.dim
    assert one.flops == 2 * body + 2 * args.vocab_size * args.dim + args.n_layers * 4 * 11 * args.dim
    assert many.flops > 60 * (one.flops - 2 * args.vocab_size * args.dim)
    assert one.seconds == max(one.bytes, one.flops) / 1e9
    wide_head = forward_bound(args, 4, limits, 64, context=10, logit_rows=64)
    assert wide_head.flops - many.flops == 2 * 63 * args.vocab_size * args.dim


def test_memory_bound_until_compute_catches_up():
    args = tiny_model(0).args
    limits = Limits(flops_per_second=1e11, bytes_per_second=1e9)  # 100 FLOPs per byte
    bounds = [forward_bound(args, 2, limits, t, context=0) for t in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    assert bounds[0].memory_seconds > bounds[0].compute_seconds
    assert bounds[-1].compute_seconds > bounds[-1].memory_seconds
    assert all(a.seconds <= b.seconds for a, b in zip(bounds, bounds[1:]))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="positive"):
        Limits(flops_per_second=0.0, bytes_per_second=1e9)
