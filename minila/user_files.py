"""Where minila keeps things between runs, and whether a path there can be written.

The cost curve (speed/cost_curve.py), the kernel probe (llama/probe.py) and the n-gram
memory (speed/memory.py) live in one folder: $MINILA_CACHE, or ~/.cache/minila. A user can point it,
or `--memory PATH`, anywhere. What can be seen to be unusable before any work starts
(a folder where a file should be, a parent that is a file or cannot be written) is
refused then, in one line; a write that still fails later (a full disk, a folder
removed meanwhile) costs only that file, never the answer: the caller warns.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$MINILA_CACHE, or ~/.cache/minila."""
    return Path(os.environ.get("MINILA_CACHE") or Path.home() / ".cache" / "minila")


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (None: it can). Creates the folders
    above it (they would be created anyway) and tries a scratch file beside it, since
    permission bits do not tell (root ignores them; /proc refuses anyway)."""
    if path.is_dir():
        return "is a folder, not a file"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.probe")
        scratch.touch(exist_ok=False)
        scratch.unlink()
    except OSError as e:
        return f"cannot be written ({e.strerror or type(e).__name__}: {e.filename})"
    return None
