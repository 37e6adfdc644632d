"""The n-gram memory: what earlier requests produced, kept in a file between runs.

Within a request the pool and the copy lookup know only this request's text. Across
requests the same phrasing comes back: a model's stock sentences, a code base's idioms.
The memory counts, for every two-token context in earlier outputs, the continuation that
followed it (the next LENGTH tokens), and offers the most frequent ones to the step
budget (`budget.py`), which prices them like any other offer. It never changes what is
emitted: every offer is verified.

Bounded: at most `capacity` continuations; beyond that the least useful go first (the
fewest counts, then the longest unseen).

**The file.** One per tokenizer, named by a fingerprint of the tokenizer files, under the
cache directory ($MINILA_CACHE or ~/.cache/minila), or wherever `--memory PATH` says. It
is JSON: {"format": "minila-ngram-memory", "version": 1, "tokenizer": fingerprint,
"entries": [[a, b, [continuation...], count, stamp], ...]}. It is read at start and merged
back after a run: under an exclusive lock on PATH.lock the file is read again, this run's
additions are added to what it holds, and the result replaces it atomically (written to a
temporary file, then renamed over it). Two processes saving at once take turns on the
lock, so neither loses the other's counts and no reader ever sees half a file. A file
that is corrupt or belongs to another tokenizer is ignored with a one-line warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from minila.user_files import cache_root

FORMAT, VERSION = "minila-ngram-memory", 1
LENGTH = 6  # tokens of a remembered continuation
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")

Context = tuple[int, int]
Continuation = tuple[int, ...]
Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def tokenizer_fingerprint(folder: str | Path) -> str:
    """A hash of the checkpoint's tokenizer files: memories are valid for one tokenizer."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def default_path(fingerprint: str) -> Path:
    return cache_root() / f"ngrams-{fingerprint}.json"


class NGramMemory:
    def __init__(
        self, fingerprint: str, capacity: int = 200_000, length: int = LENGTH, vocab_size: int | None = None
    ) -> None:
        if capacity < 1 or length < 1:
            raise ValueError(f"capacity and length must be >= 1, got {capacity}, {length}")
        self.fingerprint, self.capacity, self.length = fingerprint, capacity, length
        self.vocab_size = vocab_size  # a file holding ids beyond it is not this model's
        self._entries: dict[Context, dict[Continuation, list[int]]] = {}  # context -> cont -> [count, stamp]
        self._added: dict[tuple[Context, Continuation], int] = {}  # this run's counts, to merge on save
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def offers(self, context: Sequence[int], limit: int) -> list[tuple[Continuation, int]]:
        """Up to `limit` continuations of the context's last two tokens, with their
        counts, the most frequent (then the most recent) first."""
        if len(context) < 2 or limit < 1:
            return []
        found = self._entries.get((context[-2], context[-1]))
        if not found:
            return []
        ranked = sorted(found.items(), key=lambda item: (-item[1][0], -item[1][1]))[:limit]
        return [(cont, count) for cont, (count, _) in ranked]

    def learn(self, tokens: Sequence[int], start: int = 0) -> None:
        """Count every full continuation in `tokens` that begins at index >= start (the
        two tokens before it being its context)."""
        stamp = int(time.time())
        for i in range(max(start, 2), len(tokens) - self.length + 1):
            context, cont = (tokens[i - 2], tokens[i - 1]), tuple(tokens[i : i + self.length])
            self._bump(context, cont, 1, stamp)
            self._added[(context, cont)] = self._added.get((context, cont), 0) + 1
        self._evict()

    def _bump(self, context: Context, cont: Continuation, count: int, stamp: int) -> None:
        found = self._entries.setdefault(context, {})
        entry = found.get(cont)
        if entry is None:
            found[cont] = [count, stamp]
            self._size += 1
        else:
            entry[0] += count
            entry[1] = max(entry[1], stamp)

    def _evict(self) -> None:
        if self._size <= self.capacity:
            return
        ranked = sorted(
            ((entry[0], entry[1], context, cont) for context, found in self._entries.items() for cont, entry in found.items())
        )
        for _, _, context, cont in ranked[: self._size - self.capacity]:  # fewest counts, then oldest
            del self._entries[context][cont]
            if not self._entries[context]:
                del self._entries[context]
        self._size = self.capacity

    # ----------------------------------------------------------------- the file

    @classmethod
    def load(
        cls, path: str | Path, fingerprint: str, vocab_size: int, warn: Warn = warn_stderr, **kwargs
    ) -> NGramMemory:
        """The memory in `path`, or an empty one if there is none (or it is unusable)."""
        memory = cls(fingerprint, vocab_size=vocab_size, **kwargs)
        for context, cont, count, stamp in _read(Path(path), fingerprint, warn, vocab_size):
            if len(cont) == memory.length:
                memory._bump(context, cont, count, stamp)
        memory._evict()
        return memory

    def save(self, path: str | Path, warn: Warn = lambda message: None) -> None:
        """Merge this run's additions into `path` (see the module docstring). An unusable
        file there was already reported by `load`; it is replaced."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the lock file closes
            merged = NGramMemory(self.fingerprint, self.capacity, self.length, self.vocab_size)
            for context, cont, count, stamp in _read(path, self.fingerprint, warn, self.vocab_size):
                if len(cont) == self.length:
                    merged._bump(context, cont, count, stamp)
            for (context, cont), count in self._added.items():
                merged._bump(context, cont, count, self._entries.get(context, {}).get(cont, [0, 0])[1])
            merged._evict()
            entries = [[*context, list(cont), entry[0], entry[1]]
                       for context, found in merged._entries.items() for cont, entry in found.items()]  # fmt: skip
            text = json.dumps({"format": FORMAT, "version": VERSION, "tokenizer": self.fingerprint, "entries": entries})
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        self._entries, self._size, self._added = merged._entries, merged._size, {}


def _read(
    path: Path, fingerprint: str, warn: Warn, vocab_size: int | None = None
) -> list[tuple[Context, Continuation, int, int]]:
    """The entries of a memory file; [] (with a warning) if it is unusable."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError("not a minila n-gram memory (version 1)")
        if data.get("tokenizer") != fingerprint:
            raise ValueError("it belongs to another tokenizer")
        out = []
        for a, b, cont, count, stamp in data["entries"]:
            values = [a, b, *cont, count, stamp]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values) or count < 1:
                raise ValueError("an entry is not a list of non-negative integers")
            if vocab_size is not None and max(a, b, *cont) >= vocab_size:
                raise ValueError(f"it holds token ids outside the vocabulary (size {vocab_size})")
            out.append(((a, b), tuple(cont), count, stamp))
        return out
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        warn(f"ignoring the n-gram memory {path}: {e}")
        return []
