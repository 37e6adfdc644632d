"""KVCache without a model: slots, commit of chosen rows, truncate, capacity.

The oracle is a plain Python list of committed rows (one (layers, kv_heads, head_dim)
tensor per row for keys and one for values), updated by the obvious list operations.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from minila.llama.kv_cache import KVCache

LAYERS, KV_HEADS, HEAD_DIM = 2, 2, 3


def random_step(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of a step of t rows for every layer: (layers, kv_heads, t, head_dim)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (LAYERS, KV_HEADS, t, HEAD_DIM)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)


def write_step(cache: KVCache, k: torch.Tensor, v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Write a step to every layer, as a forward pass does; return what each layer attends to."""
    return [tuple(x.clone() for x in cache.write(layer, k[layer], v[layer])) for layer in range(LAYERS)]


def committed(cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
    return cache.k[:, :, : cache.length], cache.v[:, :, : cache.length]


def ascending_subsets(t: int):
    return st.sets(st.integers(0, t - 1), max_size=t).map(sorted)


@settings(max_examples=50, deadline=None)
@given(
    prefix=st.integers(0, 5),
    t=st.integers(1, 8),
    data=st.data(),
    seed=st.integers(0, 2**31),
    as_tensor=st.booleans(),
)
def test_commit_keeps_the_chosen_rows_in_order(prefix, t, data, seed, as_tensor):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=prefix + t, dtype=torch.float64)
    k0, v0 = random_step(prefix, seed)
    write_step(cache, k0, v0)
    cache.commit()
    k, v = random_step(t, seed + 1)
    write_step(cache, k, v)
    rows = data.draw(ascending_subsets(t), label="rows")
    cache.commit(torch.tensor(rows, dtype=torch.long) if as_tensor else rows)

    assert cache.length == prefix + len(rows)
    ck, cv = committed(cache)
    torch.testing.assert_close(ck, torch.cat([k0, k[:, :, rows]], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(cv, torch.cat([v0, v[:, :, rows]], dim=2), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(prefix=st.integers(0, 5), t=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_commit_none_keeps_every_row(prefix, t, seed):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=prefix + t, dtype=torch.float64)
    k0, v0 = random_step(prefix, seed)
    write_step(cache, k0, v0)
    cache.commit(None)
    k, v = random_step(t, seed + 1)
    write_step(cache, k, v)
    cache.commit()
    assert cache.length == prefix + t
    ck, cv = committed(cache)
    torch.testing.assert_close(ck, torch.cat([k0, k], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(cv, torch.cat([v0, v], dim=2), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(prefix=st.integers(0, 6), t=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_write_returns_committed_then_new_rows(prefix, t, seed):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=prefix + t, dtype=torch.float64)
    k0, v0 = random_step(prefix, seed)
    write_step(cache, k0, v0)
    cache.commit()
    k, v = random_step(t, seed + 1)
    seen = write_step(cache, k, v)
    for layer, (keys, values) in enumerate(seen):
        assert keys.shape == (KV_HEADS, prefix + t, HEAD_DIM)
        torch.testing.assert_close(keys, torch.cat([k0[layer], k[layer]], dim=1), rtol=0, atol=0)
        torch.testing.assert_close(values, torch.cat([v0[layer], v[layer]], dim=1), rtol=0, atol=0)
    assert cache.length == prefix  # nothing is committed by writing


def test_an_uncommitted_step_is_forgotten_by_the_next():
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=6, dtype=torch.float64)
    write_step(cache, *random_step(4, 0))  # a step whose rows are all rejected (never committed)
    k, v = random_step(2, 1)
    seen = write_step(cache, k, v)
    cache.commit([1])
    assert cache.length == 1
    assert seen[0][0].shape[1] == 2  # the new step attends to its own rows only
    torch.testing.assert_close(committed(cache)[0], k[:, :, [1]], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_truncate_rejects_lengths_outside_the_committed_range(bad):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=8, dtype=torch.float64)
    write_step(cache, *random_step(3, 0))
    cache.commit()
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(bad)
    assert cache.length == 3


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 8), keep=st.data(), seed=st.integers(0, 2**31))
def test_truncate_keeps_the_first_rows_and_the_next_step_continues_there(n, keep, seed):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=n + 3, dtype=torch.float64)
    k0, v0 = random_step(n, seed)
    write_step(cache, k0, v0)
    cache.commit()
    m = keep.draw(st.integers(0, n), label="truncate to")
    cache.truncate(m)
    assert cache.length == m
    k, v = random_step(3, seed + 1)
    seen = write_step(cache, k, v)
    torch.testing.assert_close(seen[1][0], torch.cat([k0[1, :, :m], k[1]], dim=1), rtol=0, atol=0)
    cache.commit([0, 2])
    torch.testing.assert_close(committed(cache)[1], torch.cat([v0[:, :, :m], v[:, :, [0, 2]]], dim=2), rtol=0, atol=0)


@pytest.mark.parametrize("committed_rows, t, capacity", [(0, 5, 4), (3, 2, 4), (4, 1, 4)])
def test_writing_past_the_capacity_raises(committed_rows, t, capacity):
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=capacity, dtype=torch.float64)
    if committed_rows:
        write_step(cache, *random_step(committed_rows, 0))
        cache.commit()
    before = cache.k.clone()
    with pytest.raises(ValueError, match="capacity"):
        cache.write(0, *[x[0] for x in random_step(t, 1)])
    assert cache.length == committed_rows
    assert torch.equal(cache.k, before)  # a refused write leaves the cache untouched


def test_writing_exactly_up_to_the_capacity_is_fine():
    cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, capacity=4, dtype=torch.float64)
    write_step(cache, *random_step(4, 0))
    cache.commit()
    assert cache.length == cache.capacity == 4


def test_dtype_and_shape():
    cache = KVCache(3, 2, 4, capacity=7, dtype=torch.float64)
    assert cache.k.shape == cache.v.shape == (3, 2, 7, 4)
    assert cache.k.dtype == torch.float64 and cache.length == 0


class CacheAgainstList(RuleBasedStateMachine):
    """Random steps, commits and truncations, checked against a list of committed rows."""

    CAPACITY = 12

    @initialize()
    def start(self):
        self.cache = KVCache(LAYERS, KV_HEADS, HEAD_DIM, self.CAPACITY, dtype=torch.float64)
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []  # committed (k, v), each (layers, kv_heads, hd)
        self.step: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the last uncommitted step
        self.seed = 0

    @rule(t=st.integers(1, 6))
    def forward(self, t):
        self.seed += 1
        k, v = random_step(t, self.seed)
        if len(self.rows) + t > self.CAPACITY:
            with pytest.raises(ValueError):
                self.cache.write(0, k[0], v[0])
            return  # a refused write changes nothing: an uncommitted earlier step stays pending
        seen = write_step(self.cache, k, v)
        for layer, (keys, values) in enumerate(seen):
            want_k = torch.stack([r[0][layer] for r in self.rows] + [k[layer, :, i] for i in range(t)], dim=1)
            want_v = torch.stack([r[1][layer] for r in self.rows] + [v[layer, :, i] for i in range(t)], dim=1)
            assert torch.equal(keys, want_k) and torch.equal(values, want_v)
        self.step = [(k[:, :, i], v[:, :, i]) for i in range(t)]

    @precondition(lambda self: self.step is not None)
    @rule(data=st.data())
    def commit(self, data):
        t = len(self.step)
        rows = data.draw(st.none() | ascending_subsets(t), label="rows")
        self.cache.commit(rows)
        self.rows.extend(self.step if rows is None else [self.step[i] for i in rows])
        self.step = None

    @precondition(lambda self: self.step is None)
    @rule()
    def commit_nothing_pending(self):
        self.cache.commit()  # nothing was written since the last commit: a no-op

    @rule(data=st.data())
    def truncate(self, data):
        n = data.draw(st.integers(0, len(self.rows)), label="length")
        self.cache.truncate(n)
        del self.rows[n:]
        self.step = None

    @invariant()
    def committed_rows_match_the_list(self):
        assert self.cache.length == len(self.rows)
        k, v = committed(self.cache)
        if self.rows:
            assert torch.equal(k, torch.stack([r[0] for r in self.rows], dim=2))
            assert torch.equal(v, torch.stack([r[1] for r in self.rows], dim=2))


CacheAgainstList.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
test_cache_against_a_list_model = CacheAgainstList.TestCase
