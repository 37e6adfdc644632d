"""The run: every method once per prompt, in an order that rotates from prompt to prompt,
so that slow drift of the machine (heat, other processes) spreads over all methods
alike; and the per-method summary."""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from minila.cli.bench.decoders import Decoder
from minila.cli.bench.prompts import Prompt
from minila.cli.common import first_divergence
from minila.speed.memory import LENGTH

WARMUP_TOKENS = 4  # shorter than a memory continuation: warming up teaches the memory nothing
assert WARMUP_TOKENS < LENGTH


def run_benchmark(
    decoders: dict[str, Decoder],
    prompts: Sequence[Prompt],
    max_new_tokens: int,
    log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Every method once per prompt, in a rotating order; one row per (method, prompt)."""
    names = list(decoders)
    for name in names:  # untimed: the first call of each pays for allocations and kernel choice
        decoders[name](prompts[0].ids, min(WARMUP_TOKENS, max_new_tokens))
    rows = []
    for i, prompt in enumerate(prompts):
        order = names[i % len(names) :] + names[: i % len(names)]
        runs = {name: decoders[name](prompt.ids, max_new_tokens) for name in order}
        greedy = runs["greedy"].tokens
        parts = []
        for name in names:
            r = runs[name]
            div = first_divergence(greedy, r.tokens)
            rows.append({
                "method": name, "prompt": i, "name": prompt.name, "prompt_tokens": len(prompt.ids),
                "tokens": len(r.tokens), "steps": r.steps, "seconds": round(r.seconds, 5), "fed": r.fed,
                "identical": div is None, "first_divergence": div, "trimmed": r.trimmed, "ids": r.tokens,
                "outside": r.outside, "speedup": runs["greedy"].seconds / r.seconds if r.seconds else 0.0,
                **({"task": prompt.task} if prompt.task else {}),
                **({"rank_fed": list(r.rank_fed)} if r.rank_fed else {}),
                **({"window_steps": r.window_steps} if r.window_steps is not None else {}),
            })  # fmt: skip
            mark = "" if div is None else f" DIFF@{div}"
            parts.append(f"{name} S={len(r.tokens) / r.steps:.2f} {r.seconds:.2f}s{mark}")
        log(f"[{i + 1}/{len(prompts)}] {prompt.name} ({len(prompt.ids)} tok, {len(greedy)} new): " + " | ".join(parts))
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per method: S (total and mean per prompt), step width, tok/s, speedup, identical."""
    names = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for name in names:
        mine = [r for r in rows if r["method"] == name]
        tokens, steps = sum(r["tokens"] for r in mine), sum(r["steps"] for r in mine)
        seconds = sum(r["seconds"] for r in mine)
        decode_steps = sum(r["steps"] - 1 for r in mine)
        out.append({
            "method": name, "prompts": len(mine), "tokens": tokens, "steps": steps, "seconds": seconds,
            "S": tokens / steps, "S_mean": statistics.fmean(r["tokens"] / r["steps"] for r in mine),
            "fed_per_step": sum(r["fed"] for r in mine) / decode_steps if decode_steps else None,
            "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
            "identical": sum(r["identical"] for r in mine),
            "speedup_min": min(r["speedup"] for r in mine),
            "speedup_median": statistics.median(r["speedup"] for r in mine),
            "outside_ms": 1000 * sum(r["outside"] for r in mine) / decode_steps
            if decode_steps and all(r["outside"] is not None for r in mine) else None,
        })  # fmt: skip
        if decode_steps and all("window_steps" in r for r in mine):  # how often the budget ran the window
            out[-1]["window_share"] = sum(r["window_steps"] for r in mine) / decode_steps
        if decode_steps and all("rank_fed" in r for r in mine):  # rows per step on each rank
            out[-1]["rank_fed_per_step"] = [sum(col) / decode_steps for col in zip(*(r["rank_fed"] for r in mine))]
    greedy = next(s for s in out if s["method"] == "greedy")
    for s in out:
        s["speedup"] = s["tokens_per_second"] / greedy["tokens_per_second"] if greedy["tokens_per_second"] else 0.0
        # the price of one step in greedy steps: speedup = S / step_cost
        s["step_cost"] = (s["seconds"] / s["steps"]) / (greedy["seconds"] / greedy["steps"]) if greedy["seconds"] else 0.0
    return out
def summarize_tasks(rows: list[dict]) -> dict[str, list[dict]]:
    """`summarize` over each task's rows and over all of them ("overall"), as Spec-Bench's
    leaderboard reports them; empty when the prompts have no tasks."""
    tasks = list(dict.fromkeys(r["task"] for r in rows if "task" in r))
    if not tasks:
        return {}
    return {**{t: summarize([r for r in rows if r.get("task") == t]) for t in tasks}, "overall": summarize(rows)}


