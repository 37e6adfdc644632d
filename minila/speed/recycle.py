"""Token recycling: what every row of logits says about the token that fed it.

Every forward computes a row of logits for each token whose logits it is asked for: the
`last` row, the candidates' rows (the rejected ones too), the window's top level. That
row ranks what should follow its token in that context. The successor table keeps, for
every token of the vocabulary, the top K ids of the latest row that token fed
(Luo et al., "Turning Trash into Treasure", ACL 2025, arXiv 2408.08696):

    table[token] = top-K(latest row of logits that `token` fed)        (vocab, K) int32

The same token tends to be followed by the same few tokens, so the table drafts: from
`last`, its K successors, their successors, and so on, a tree. `grow_tree` picks the
tree's nodes best first by the chance the step budget (`budget.py`) has learned for a
node of that rank at that depth (kind ("recycle", rank)); `recycled_offers` hands the
tree to the budget as chains, one per leaf, and the budget decides how much of it to
feed. Nothing here touches what is emitted: every drafted token is verified.

The table is worth keeping between requests (a model's phrasing repeats); it is saved
beside the n-gram memory, one file per tokenizer. **The file** is one JSON header line,
{"format": "minila-successors", "version": 1, "tokenizer": fingerprint, "vocab": V, "k": K},
then V*K int32 ids, little-endian (-1: not yet written). Saving follows the memory's rule:
under an exclusive lock on PATH.lock the file is read again, the rows this run wrote
replace its rows (the latest row wins, as within a run), and the result replaces the
file atomically. A file that is damaged, or made for another tokenizer or vocabulary,
is ignored with a one-line warning.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from minila.speed.budget import DEEPEST, Acceptance, Offer
from minila.speed.memory import Warn, warn_stderr

FORMAT, VERSION = "minila-successors", 1

K = 8  # successors kept per token, as in the paper
NONE = -1  # a table row not yet written

Successors = Callable[[int], Sequence[int]]  # token -> its successors, best first
Chance = Callable[[int, int], float]  # (rank, depth) -> P(right | parent right)


class SuccessorTable:
    """The (vocab, K) table of the module docstring, and which rows this run wrote."""

    def __init__(self, vocab_size: int, k: int = K) -> None:
        if not 1 <= k <= vocab_size:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={k}, vocab_size={vocab_size}")
        self.ids = torch.full((vocab_size, k), NONE, dtype=torch.int32)  # (vocab, K)
        self._rows = self.ids.numpy()  # the same memory: a row lookup from Python costs ~0.2 us
        self.touched = torch.zeros(vocab_size, dtype=torch.bool)  # (vocab,) rows this run wrote

    def __deepcopy__(self, memo: dict) -> SuccessorTable:
        twin = SuccessorTable(self.vocab_size, self.k)  # a fresh view over its own ids
        twin.ids.copy_(self.ids)
        twin.touched.copy_(self.touched)
        return twin

    @property
    def vocab_size(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def successors(self, token: int) -> list[int]:
        """The token's recorded successors, best first ([] before any row fed it)."""
        return [t for t in self._rows[token].tolist() if t != NONE]

    def update(self, tokens: Sequence[int], logits: torch.Tensor, kept: Sequence[int] = ()) -> None:
        """Row i of `logits` (R, vocab) was computed for tokens[i]. Where one token fed
        several rows, the last of the rows in `kept` wins (a step's accepted path: those rows
        saw the text that stays), else the last row."""
        latest = {tokens[i]: i for i in range(len(tokens))}
        latest.update((tokens[i], i) for i in kept)
        if not latest:
            return
        rows = torch.tensor(list(latest.values()), device=logits.device)
        top = logits[rows].topk(self.k, dim=-1).indices  # (R', K), best first
        fed = torch.tensor(list(latest), dtype=torch.long)
        self.ids[fed] = top.to(device="cpu", dtype=torch.int32)
        self.touched[fed] = True

    # ----------------------------------------------------------------- the file

    @classmethod
    def load(cls, path: str | Path, fingerprint: str, vocab_size: int, k: int = K, warn: Warn = warn_stderr) -> SuccessorTable:
        """The table in `path`, or an empty one if there is none (or it is unusable)."""
        table = cls(vocab_size, k)
        ids = _read(Path(path), fingerprint, vocab_size, k, warn)
        if ids is not None:
            table.ids.copy_(torch.from_numpy(ids))
        return table

    def save(self, path: str | Path, fingerprint: str) -> None:
        """Merge the rows this run wrote into `path` (see the module docstring)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file closes
            held = _read(path, fingerprint, self.vocab_size, self.k, lambda message: None)  # reported at load
            merged = torch.from_numpy(held) if held is not None else torch.full_like(self.ids, NONE)
            merged[self.touched] = self.ids[self.touched]
            header = {"format": FORMAT, "version": VERSION, "tokenizer": fingerprint, "vocab": self.vocab_size, "k": self.k}
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(json.dumps(header).encode() + b"\n")
                f.write(merged.numpy().astype("<i4").tobytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        self.ids.copy_(merged)
        self.touched.zero_()


def successors_path(memory_path: str | Path) -> Path:
    """Where the table lives: beside the n-gram memory file `memory_path`."""
    path = Path(memory_path)
    return path.with_name(path.stem + "-successors.bin")


def _read(path: Path, fingerprint: str, vocab_size: int, k: int, warn: Warn) -> np.ndarray | None:
    """The ids of a table file, (vocab, k) int32; None (with a warning) if unusable."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline().decode("utf-8"))
            body = f.read()
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError("not a minila successor table (version 1)")
        if header.get("tokenizer") != fingerprint:
            raise ValueError("it belongs to another tokenizer")
        if header.get("vocab") != vocab_size or header.get("k") != k:
            raise ValueError(f"it is {header.get('vocab')} x {header.get('k')}, not {vocab_size} x {k}")
        if len(body) != vocab_size * k * 4:
            raise ValueError(f"it holds {len(body)} bytes of ids, not {vocab_size * k * 4}")
        ids = np.frombuffer(body, dtype="<i4").reshape(vocab_size, k).astype(np.int32)
        if ids.min() < NONE or ids.max() >= vocab_size:
            raise ValueError(f"it holds token ids outside the vocabulary (size {vocab_size})")
        return ids
    except (OSError, UnicodeDecodeError, ValueError) as e:
        warn(f"ignoring the successor table {path}: {e}")
        return None


def grow_tree(successors: Successors, last: int, chance: Chance, size: int, depth: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The `size` most likely nodes of the successor tree below `last`, at most `depth`
    deep, best first: a node's chance is the product of chance(rank, d) along its path.
    Returns the leaves as (tokens, ranks) paths from `last`, the most likely first;
    together they hold every chosen node (a parent is always chosen before its child)."""
    frontier: list[tuple[float, int, tuple[int, ...], tuple[int, ...]]] = []  # (-p, tie, tokens, ranks)
    tie = 0

    def expand(p: float, tokens: tuple[int, ...], ranks: tuple[int, ...]) -> None:
        nonlocal tie
        if len(tokens) >= depth:
            return
        for rank, token in enumerate(successors(tokens[-1] if tokens else last)):
            q = p * chance(rank, len(tokens))
            if q > 0:
                heapq.heappush(frontier, (-q, tie, tokens + (token,), ranks + (rank,)))
                tie += 1

    expand(1.0, (), ())
    chosen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    inner: set[tuple[int, ...]] = set()
    while frontier and len(chosen) < size:
        negative, _, tokens, ranks = heapq.heappop(frontier)
        chosen.append((tokens, ranks))
        inner.add(tokens[:-1])
        expand(-negative, tokens, ranks)
    return [(tokens, ranks) for tokens, ranks in chosen if tokens not in inner]


def recycled_offers(table: SuccessorTable, last: int, acceptance: Acceptance, room: int, size: int) -> list[Offer]:
    """The `size`-node tree below `last`, as one Offer per leaf whose tokens' kinds are
    ("recycle", rank); at most `room` tokens deep."""
    if room < 1:
        return []
    depths = min(room, DEEPEST + 1)  # from DEEPEST on, depths share one rate
    q = [[acceptance.q(("recycle", rank), d) for d in range(depths)] for rank in range(table.k)]  # read once per step
    tree = grow_tree(table.successors, last, lambda rank, d: q[rank][min(d, depths - 1)], size, room)
    return [Offer(tokens, ("recycle", ranks[0]), tuple(("recycle", r) for r in ranks)) for tokens, ranks in tree]
