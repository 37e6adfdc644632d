"""Reading a checkpoint folder's small files, with errors a person can act on.

A checkpoint arrives by download, copy or conversion, and any of its files may be
missing, cut short, garbled or hand-edited into the wrong shape. Every reader here
turns what the parsing library would raise (JSONDecodeError, UnicodeDecodeError, a
KeyError three calls later) into one `MinilaError` that names the file, says what is
wrong with it, and what to do. `config_value` checks one field's type and range, so
that a zero or negative size is refused where it is read, not divided by later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from minila.errors import MinilaError

FIX = "re-download or re-export the checkpoint"


def broken(path: Path, problem: str, fix: str = FIX) -> MinilaError:
    """The one-line error for a damaged file: `<path>: <problem>; <fix>`."""
    return MinilaError(f"{path}: {problem}; {fix}")


def first_line(error: BaseException, limit: int = 160) -> str:
    """A library's message, cut to one short line (some span pages)."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise broken(path, f"not UTF-8 text (bad byte at {e.start}), so damaged or not a text file") from None
    except OSError as e:
        raise broken(path, f"cannot be read ({e.strerror or first_line(e)})", "check the file's permissions") from None


def read_json(path: Path, required: bool = False) -> dict:
    """A JSON object from `path`; {} when the file is absent and not `required`."""
    if not path.is_file():
        if required:
            raise broken(path, "missing", FIX)
        return {}
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        raise broken(path, what + ", so cut short or garbled") from None
    if not isinstance(value, dict):
        raise broken(path, f"holds a JSON {_JSON_NAMES.get(type(value), type(value).__name__)}, not an object of settings")
    return value


def config_value(
    config: dict, key: str, kind: type, path: Path, default: Any = None, low: float | None = None
) -> Any:
    """config[key] checked to be an int, float, bool, str or list (None: `default`),
    and >= `low` for numbers. JSON writes 4096.0 for an int now and then: accepted."""
    value = config.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is int and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and ok and not math.isfinite(value):
        ok = False
    if not ok:
        raise broken(path, f"{key} is {value!r}, but must be {_KIND_NAMES[kind]}")
    if low is not None and value < low:
        raise broken(path, f"{key} is {value!r}, but must be >= {low:g}")
    return value


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               list: "a list", dict: "an object"}  # fmt: skip
_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}
