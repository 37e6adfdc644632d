"""A scripted stand-in for the Transformer, for tests of the decoding loops.

Its "logits" at a row are one-hot on `rule(context)`, where context is the list of
tokens the row can see (committed cache + visible step rows), in position order. It
also checks, at every row, that what the row sees is one consistent history: exactly
one token at each position 0..p. A wrong mask, wrong position ids or a wrong KV commit
therefore raises instead of passing unnoticed.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import torch

from minila.llama.kv_cache import KVCache
from minila.llama.model import ModelArgs


class BrokenHistory(AssertionError):
    pass


class ScriptedModel:
    def __init__(self, vocab: int, rule: Callable[[Sequence[int]], int], max_seq_len: int = 1024) -> None:
        self.args = ModelArgs(vocab_size=vocab, dim=2, n_layers=1, n_heads=1, n_kv_heads=1, hidden_dim=1, max_seq_len=max_seq_len)
        self.rule = rule
        self.device = torch.device("cpu")
        self.dtype = torch.float64
        self.calls = 0

    def new_cache(self, capacity: int | None = None) -> KVCache:
        return KVCache(1, 1, 2, capacity or self.args.max_seq_len, self.dtype, self.device)

    def __call__(self, tokens, positions, cache, mask=None, logits_for=None) -> torch.Tensor:
        self.calls += 1
        t = tokens.shape[0]
        if mask is None:
            mask = torch.ones(t, t, dtype=torch.bool).tril_()
        # store (token, position) as the "key" of each row, so the cache can be read back
        kv = torch.stack([tokens, positions], dim=-1).to(self.dtype).view(1, t, 2)
        keys, _ = cache.write(0, kv, kv)  # (1, committed + T, 2)
        committed = [(int(p), int(k)) for k, p in keys[0, : cache.length].tolist()]
        rows = range(t) if logits_for is None else torch.arange(t)[logits_for].tolist()
        out = []
        for i in rows:
            seen = committed + [(int(positions[j]), int(tokens[j])) for j in range(t) if mask[i, j]]
            seen.sort()
            if [p for p, _ in seen] != list(range(int(positions[i]) + 1)):
                raise BrokenHistory(f"row {i} at position {int(positions[i])} sees positions {[p for p, _ in seen]}")
            out.append(self.rule([tok for _, tok in seen]))
        return torch.nn.functional.one_hot(torch.tensor(out), self.args.vocab_size).to(self.dtype)

    def committed_tokens(self, cache: KVCache) -> list[int]:
        return [int(k) for k, _ in cache.k[0, 0, : cache.length].tolist()]


def periodic(period: int) -> Callable[[Sequence[int]], int]:
    """The next token depends on the last one only: text that cycles with `period`."""
    return lambda context: (context[-1] + 1) % period


def context_hash(vocab: int) -> Callable[[Sequence[int]], int]:
    """The next token depends on the whole context: any wrong visibility changes it."""
    return lambda context: zlib.crc32(bytes(str(list(context)), "ascii")) % vocab
