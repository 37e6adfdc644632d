"""The bench's methods as written on the command line: `greedy`, `jacobi:K`, `la:W,N,G[,C]`,
`la:auto`, `hf`, `hf-pld[:K]`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from minila.errors import MinilaError

DEFAULT_CONFIGS = ["greedy", "jacobi:8", "la:15,5,15", "la:15,5,15,10", "la:auto", "hf", "hf-pld"]
CONFIG_HELP = """\
methods to run, space-separated (default: {default}):
  greedy        minila greedy decoding: the baseline, always run (added if missing)
  jacobi:K      plain Jacobi decoding with a block of K tokens (jacobi = jacobi:8)
  la:W,N,G[,C]  lookahead decoding, window W, n-gram size N, G candidates, and a
                prompt-lookup candidate of C tokens (default 0: none; la = la:5,4,5)
  la:auto       lookahead with the step budget (what each step feeds is decided by
                its expected tokens per cost on this machine), the n-gram memory and
                the successor table (token recycling)
  la:auto-norecycle  la:auto without the successor table (for before/after runs)
  hf            transformers generate(do_sample=False)
  hf-pld[:K]    transformers prompt-lookup decoding, K tokens per guess (default 10)""".format(
    default=" ".join(DEFAULT_CONFIGS)
)


@dataclass(frozen=True)
class Method:
    name: str  # as written on the command line, e.g. "la:15,5,15"
    kind: str  # greedy | jacobi | lookahead | hf | hf-pld
    params: tuple[int, ...] = ()
    recycle: bool = True  # la:auto: whether the successor table drafts


def _ints(name: str, text: str, count: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or min(values) < 0 or (count == 1 and values[0] < 1):
        what = "a positive integer" if count == 1 else f"{count} comma-separated integers"
        raise MinilaError(f"config {name!r}: expected {what} after ':'")
    return values


def parse_config(spec: str) -> Method:
    """A --configs entry as a Method (see CONFIG_HELP for the syntax)."""
    kind, _, arg = spec.partition(":")
    if kind == "greedy" and not arg:
        return Method(spec, "greedy")
    if kind == "jacobi":
        return Method(spec, "jacobi", _ints(spec, arg, 1) if arg else (8,))
    if kind in ("la", "lookahead"):
        if arg in ("auto", "auto-norecycle"):  # no params: resolved by auto_lookahead_config
            return Method(spec, "lookahead", (), recycle=arg == "auto")
        return Method(spec, "lookahead", _ints(spec, arg, 4 if arg.count(",") == 3 else 3) if arg else (5, 4, 5))
    if kind == "hf" and not arg:
        return Method(spec, "hf")
    if kind == "hf-pld":
        return Method(spec, "hf-pld", _ints(spec, arg, 1) if arg else (10,))
    raise MinilaError(f"unknown config {spec!r}; use greedy, jacobi:K, la:W,N,G[,C], la:auto, hf or hf-pld[:K]")


def parse_configs(specs: Sequence[str]) -> list[Method]:
    methods = [parse_config(s) for s in specs]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise MinilaError(f"--configs lists a method twice: {names}")
    if "greedy" not in names:  # the baseline for speedup and identical
        methods.insert(0, Method("greedy", "greedy"))
    return methods
