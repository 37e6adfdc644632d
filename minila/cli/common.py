"""What the command lines share: option values, stats as JSON, streaming text.

`cli/generate.py`, its torchrun twin `cli/generate_ranks.py` and the bench use these;
keeping them here lets each of those import downward only.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from minila.decoding.generation import Generation, OnTokens
from minila.lookahead.auto import auto_config
from minila.lookahead.loop import LookaheadConfig

HIGHLIGHT, RESET = "\033[1;36m", "\033[0m"


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def lookahead_config(args: argparse.Namespace, model=None) -> LookaheadConfig:
    """W, N, G and copy from the options; 'auto' ones from `lookahead/auto.py` (which needs the
    model: without it, they are validated with placeholder values)."""
    chosen = {"window": args.window, "ngram": args.ngram, "guess": args.guess, "copy": args.copy}
    if "auto" in chosen.values():
        auto = auto_config(model, args.seed) if model is not None else LookaheadConfig()
        chosen = {k: getattr(auto, k) if v == "auto" else v for k, v in chosen.items()}
    return LookaheadConfig(**chosen, seed=args.seed)


def summary(gen: Generation) -> dict:
    return {
        "tokens": gen.tokens,
        "steps": gen.steps,
        "seconds": round(gen.seconds, 4),
        "compression": round(gen.compression, 4),
        "tokens_per_second": round(gen.tokens_per_second, 2),
        "stop_reason": gen.stop_reason,
    }


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def make_printer(tokenizer, color: bool) -> tuple[OnTokens, Callable[[], None]]:
    """A streaming callback (highlighting steps that emitted several tokens) and a flush."""
    stream = tokenizer.stream()

    def on_tokens(ids: list[int]) -> None:
        text = stream.push(ids)
        if color and len(ids) > 1 and text:
            text = HIGHLIGHT + text + RESET
        sys.stdout.write(text)
        sys.stdout.flush()

    def finish() -> None:
        sys.stdout.write(stream.flush() + "\n")

    return on_tokens, finish
