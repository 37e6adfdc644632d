"""Regenerate the tutorial notebooks from their diffable sources and execute them.

    .venv/bin/python tutorial/build.py            # every notebook (what `make tutorial` runs)
    .venv/bin/python tutorial/build.py 04 05      # only those whose name starts with 04 or 05

tutorial/src/NN_name.py (jupytext percent format) -> tutorial/NN_name.ipynb, executed in
place with cwd = tutorial/ so its outputs and plots are saved in the notebook. Edit the
.py file, never the .ipynb. The kernel is `python3`; run this with the venv's python so
the kernel is the venv's python too (jupyter_client starts a kernel whose command is
`python` with the interpreter that runs it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"


def build(source: Path) -> tuple[bool, float]:
    """Convert and execute one notebook; returns (success, seconds spent executing)."""
    notebook = HERE / f"{source.stem}.ipynb"
    subprocess.run(
        [sys.executable, "-m", "jupytext", "--quiet", "--to", "ipynb", "--output", str(notebook), str(source)],
        check=True,
    )
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
            "--ExecutePreprocessor.kernel_name=python3", "--ExecutePreprocessor.timeout=1800", str(notebook),
        ],
    )  # fmt: skip
    return done.returncode == 0, time.perf_counter() - start


def main(argv: list[str]) -> int:
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if argv:
        sources = [s for s in sources if any(s.stem.startswith(a) for a in argv)]
    if not sources:
        print(f"no notebook sources in {SOURCES} match {argv}", file=sys.stderr)
        return 2
    failed = []
    for source in sources:
        ok, seconds = build(source)
        print(f"tutorial: {source.stem}.ipynb {'executed' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
        if not ok:
            failed.append(source.stem)
    if failed:
        print(f"tutorial: failed: {', '.join(failed)} (the error is printed above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
