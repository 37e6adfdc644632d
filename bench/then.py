"""minila as it was at an earlier commit, importable beside this tree: `git archive` of
its `minila/` into a temporary folder, as the package `minila_then` (imports renamed),
so a bench can time then and now in one interleaved process (bench/interleaved.py)."""

import functools
import importlib
import re
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path


def minila_at(rev: str, module: str = ""):
    """minila's code at git revision `rev`, as `minila_then`, or its submodule `module`
    (one revision per process)."""
    _unpack(rev)
    return importlib.import_module(f"minila_then.{module}" if module else "minila_then")


@functools.cache
def _unpack(rev: str) -> None:
    folder = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", rev, "minila"], capture_output=True, check=True).stdout
    tarfile.open(fileobj=BytesIO(archive)).extractall(folder, filter="data")
    (folder / "minila").rename(folder / "minila_then")
    for path in (folder / "minila_then").rglob("*.py"):
        path.write_text(re.sub(r"\b(from|import) minila\b", r"\1 minila_then", path.read_text()))
    sys.path.insert(0, str(folder))
