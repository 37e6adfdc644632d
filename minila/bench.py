"""The benchmark: `python -m minila.bench --ckpt DIR --dataset mtbench`.

Runs greedy, Jacobi and lookahead decoding, and Hugging Face transformers' greedy and
prompt-lookup decoding as peers, on the same prompts in one process. For each prompt
every method runs once, in an order that rotates from prompt to prompt, so that slow
drift of the machine (heat, other processes) spreads over all methods alike.

Per method it reports the step compression S = tokens / forward passes (prefill
included, so greedy's S is 1), tokens per second (wall clock of the whole call, for
every method alike), the speedup over minila's greedy decoding, and how many outputs
are identical to it. Writes results.json (every row), results.md (the table) and PNG
plots to --out. `--cost-curve` also times one forward pass of T = 1..128 new tokens:
a step feeding T tokens must accept more tokens than its cost ratio to pay off.

Peers: transformers' `generate` on the same folder, same dtype and threads, SDPA
attention. Their forward passes are counted by a hook on the model (prompt lookup
does not report them); their output is cut at the first EOS id and at the budget,
as minila's decoders cut theirs, so token lists compare one to one.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from minila.autotune import auto_budget, auto_config, clock, measure_cost_curve
from minila.bench_data import Prompt, load_prompts
from minila.budget import FULL
from minila.checkpoint import load_checkpoint
from minila.errors import MinilaError
from minila.generation import Generation
from minila.greedy import greedy_generate
from minila.jacobi import jacobi_generate
from minila.launch import launched_by_torchrun
from minila.lookahead import LookaheadConfig, lookahead_generate
from minila.memory import LENGTH, NGramMemory, tokenizer_fingerprint
from minila.model import Transformer
from minila.recycle import SuccessorTable, successors_path
from minila.roofline import forward_bound, measure_limits

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

# ------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Run:
    """One method on one prompt."""

    tokens: list[int]
    steps: int  # forward passes, the prefill included
    seconds: float  # wall clock of the whole call
    fed: int  # tokens fed to the model after the prefill (for the mean step width)
    trimmed: int = 0  # tokens a peer produced past the first EOS or the budget
    outside: float | None = None  # seconds of the steps after the prefill spent outside the forward
    rank_fed: tuple[int, ...] = ()  # lookahead parallelism: rows each rank fed after the prefill


# prompt ids, max_new_tokens -> Run
Decoder = Callable[[Sequence[int], int], Run]


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


def auto_lookahead_config(model: Transformer, seed: int) -> LookaheadConfig:
    """The limits behind `la:auto` (the step budget decides within them)."""
    return auto_config(model, seed=seed)


def minila_decoder(model: Transformer, decode: Callable[[Sequence[int], int], Generation]) -> Decoder:
    def run(ids: Sequence[int], max_new_tokens: int) -> Run:
        start = clock(model.device)
        gen = decode(ids, max_new_tokens)
        seconds = clock(model.device) - start
        outside = sum(s.seconds - s.forward_seconds for s in gen.stats[1:]) if gen.stats[1:] and gen.stats[1].forward_seconds else None
        ranks = range(getattr(gen, "ranks", 0))  # a ParallelGeneration knows every rank's width
        rank_fed = tuple(sum(w[r] for w in gen.rank_widths) for r in ranks)
        return Run(gen.tokens, gen.steps, seconds, sum(s.width for s in gen.stats[1:]), outside=outside, rank_fed=rank_fed)

    return run


class HFPeer:
    """transformers' LlamaForCausalLM on the same folder, with a forward-pass counter.
    transformers is a dev/bench dependency: imported here, never by minila itself."""

    def __init__(self, ckpt: str | Path, device: torch.device, dtype: torch.dtype, eos_ids: Sequence[int]) -> None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.version = transformers.__version__
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(ckpt), dtype=dtype, attn_implementation="sdpa"
        ).to(device).eval()
        self.device, self.eos_ids = device, list(eos_ids)
        self.widths: list[int] = []  # tokens fed by each forward pass of the current call
        self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        # nothing from the folder's generation_config may change the stopping rule
        self.model.generation_config = self._config(1)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.widths.append(int(ids.shape[-1]) if ids is not None else int(kwargs["inputs_embeds"].shape[1]))

    def _config(self, max_new_tokens: int, **extra):
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False, max_new_tokens=max_new_tokens, min_length=0, min_new_tokens=None,
            temperature=None, top_p=None, top_k=None, repetition_penalty=None,
            eos_token_id=self.eos_ids or None, pad_token_id=self.eos_ids[0] if self.eos_ids else None,
            bos_token_id=None, **extra,
        )  # fmt: skip

    def decoder(self, **extra) -> Decoder:
        """generate() with extra GenerationConfig fields, e.g. prompt_lookup_num_tokens=10."""

        def run(ids: Sequence[int], max_new_tokens: int) -> Run:
            config = self._config(max_new_tokens, **extra)
            x = torch.tensor([list(ids)], device=self.device)  # (1, T)
            self.widths = []
            start = clock(self.device)
            out = self.model.generate(x, attention_mask=torch.ones_like(x), generation_config=config)
            seconds = clock(self.device) - start
            new = out[0, len(ids) :].tolist()
            tokens = cut(new, self.eos_ids, max_new_tokens)
            return Run(tokens, len(self.widths), seconds, sum(self.widths[1:]), len(new) - len(tokens))

        return run


def cut(tokens: list[int], eos_ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """Tokens up to and including the first EOS, at most max_new_tokens: minila's rule."""
    out = tokens[:max_new_tokens]
    for i, t in enumerate(out):
        if t in eos_ids:
            return out[: i + 1]
    return out


def build_decoders(
    methods,
    model,
    tokenizer,
    ckpt,
    seed: int,
    memory: NGramMemory | None = None,
    lookahead: Callable[..., Generation] = lookahead_generate,
    successors: SuccessorTable | None = None,
) -> tuple[dict[str, Decoder], dict]:
    """One Decoder per method, and facts to record (lookahead settings, peer version).
    `memory` and `successors` are what la:auto remembers across the run's prompts (None: nothing);
    `lookahead` decodes the fixed la:W,N,G methods (under torchrun: minila.parallel's)."""
    eos = list(tokenizer.eos_ids)
    decoders: dict[str, Decoder] = {}
    info: dict = {}
    peer: HFPeer | None = None
    remembering = 0  # la:auto variants so far: each after the first remembers on its own
    for m in methods:
        if m.kind == "greedy":
            decoders[m.name] = minila_decoder(model, lambda ids, k: greedy_generate(model, ids, k, eos))
        elif m.kind == "jacobi":
            block = m.params[0]
            decoders[m.name] = minila_decoder(model, lambda ids, k, b=block: jacobi_generate(model, ids, k, b, eos, seed))
        elif m.kind == "lookahead":
            if m.params:  # the paper's step: the whole window and every candidate, every step
                window, ngram, guess, *copy = m.params
                config = LookaheadConfig(window, ngram, guess, copy=copy[0] if copy else 0, seed=seed)
                budget, recall, table = FULL, None, None
            else:
                config, budget, recall, table = auto_lookahead_config(model, seed), auto_budget(model), memory, successors
                if remembering:  # else one would replay the answer the other just gave
                    recall, table = deepcopy(recall), deepcopy(table)
                remembering += 1
                table = table if m.recycle else None
            info[m.name] = {"window": config.window, "ngram": config.ngram, "guess": config.guess, "copy": config.copy}
            if budget is not FULL:
                info[m.name].update(recycle=config.recycle if table is not None else 0, budget="cost")

            def decode(ids, k, c=config, b=budget, r=recall, t=table):
                if b is FULL:  # the paper's step, which lookahead parallelism can split
                    return lookahead(model, ids, k, c, eos)
                return lookahead_generate(model, ids, k, c, eos, budget=b, memory=r, successors=t)

            decoders[m.name] = minila_decoder(model, decode)
        else:
            if peer is None:
                peer = HFPeer(ckpt, model.device, model.dtype, eos)
                info["transformers"] = peer.version
            extra = {"prompt_lookup_num_tokens": m.params[0]} if m.kind == "hf-pld" else {}
            decoders[m.name] = peer.decoder(**extra)
    return decoders, info


# ------------------------------------------------------------------------- the run

WARMUP_TOKENS = 4  # shorter than a memory continuation: warming up teaches the memory nothing
assert WARMUP_TOKENS < LENGTH


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


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


# ------------------------------------------------------------------------- cost curve


def cost_curve(
    model: Transformer, context: int = 200, repeats: int = 5, widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
) -> tuple[list[dict], dict | None]:
    """Seconds for one forward of T new tokens with logits for all T rows, after a
    `context`-token cache, and its ratio to T=1 (autotune's measurement, as a table).
    A lookahead step feeding T tokens pays off only if it accepts more than the ratio.
    On a CPU each row also carries the roofline bound (minila.roofline) and the
    measured time over it; the second value is the measured limits (None elsewhere)."""
    if context < 1 or context + 1 >= model.args.max_seq_len:
        raise MinilaError(f"--cost-context {context} leaves no room in the model's context of {model.args.max_seq_len}")
    curve = measure_cost_curve(model, widths=tuple(widths), context=context, repeats=repeats)
    rows = [{"T": t, "seconds": curve.step_seconds(t, t), "relative": curve.relative(t, t)} for t in curve.widths]
    if model.device.type != "cpu":
        return rows, None
    limits = measure_limits(model.dtype)
    for r in rows:  # the measured rows have logits for all T rows: so does their bound
        b = forward_bound(model.args, model.dtype.itemsize, limits, r["T"], context, logit_rows=r["T"])
        r.update(bound_seconds=b.seconds, bound_by="memory" if b.memory_seconds >= b.compute_seconds else "compute",
                 x_bound=r["seconds"] / b.seconds)  # fmt: skip
    return rows, {"gflops": limits.flops_per_second / 1e9, "read_gbps": limits.bytes_per_second / 1e9}


# ------------------------------------------------------------------------- report


def task_table(by_task: dict[str, list[dict]]) -> list[str]:
    """Markdown lines: one row per method, one column per task, each cell "S / speedup"."""
    tasks = list(by_task)
    lines = ["| method | " + " | ".join(tasks) + " |", "| --- " * (len(tasks) + 1) + "|"]
    for i, name in enumerate(s["method"] for s in by_task["overall"]):
        cells = [f"{by_task[t][i]['S']:.2f} / {by_task[t][i]['speedup']:.2f}x" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    prompts = ", ".join(f"{t} {by_task[t][0]['prompts']}" for t in tasks)
    return lines + ["", f"Each cell: S (Spec-Bench's mean accepted tokens) / speedup over minila greedy (tok/s) "
                    f"on the task's prompts ({prompts})."]  # fmt: skip


def markdown(meta: dict, summary: list[dict] | None, curve: list[dict] | None, by_task: dict | None = None) -> str:
    lines = [f"# minila benchmark: {meta.get('dataset') or 'cost curve'}", ""]
    lines.append(
        f"{meta['model']} · {meta['device']} {meta['dtype']} · {meta.get('forward', 'plain')} forward · "
        f"{meta['threads']} threads · "
        f"torch {meta['torch']}" + (f" · transformers {meta['transformers']}" if meta.get("transformers") else "")
    )
    if summary:
        n = summary[0]["prompts"]
        lines += [
            f"{n} prompts, at most {meta['max_new_tokens']} new tokens, {meta['date']}, {meta['machine']}",
            "",
            "| method | S | S per prompt | fed/step | step cost | tok/s | speedup | per prompt min / median "
            "| outside fwd | identical | tokens | steps | seconds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        greedy_ms = 1000 * next(s["seconds"] / s["steps"] for s in summary if s["method"] == "greedy")
        for s in summary:
            fed = f"{s['fed_per_step']:.1f}" if s["fed_per_step"] is not None else "-"
            outside = "-" if s["outside_ms"] is None else f"{s['outside_ms']:.2f} ms ({100 * s['outside_ms'] / greedy_ms:.1f}%)"
            lines.append(
                f"| {s['method']} | {s['S']:.2f} | {s['S_mean']:.2f} | {fed} | {s['step_cost']:.2f} | "
                f"{s['tokens_per_second']:.1f} | {s['speedup']:.2f}x | {s['speedup_min']:.2f}x / {s['speedup_median']:.2f}x | "
                f"{outside} | {s['identical']}/{s['prompts']} | {s['tokens']} | {s['steps']} | {s['seconds']:.1f} |"
            )
        lines += [
            "",
            "S = total new tokens / total forward passes (prefill included; greedy = 1). S per prompt: the mean "
            "of each prompt's S. fed/step: mean tokens fed per forward after the prefill. step cost: seconds per "
            "forward over greedy's (prefill included), so speedup = S / step cost. tok/s: total tokens / "
            "total wall-clock seconds. speedup: tok/s over minila greedy's; per prompt: the smallest and the median "
            "of each prompt's greedy seconds over the method's. outside fwd: time per step outside the model's "
            "forward (bookkeeping, budget, verification, KV commit), and its share of a greedy step. identical: outputs equal to minila "
            "greedy's, token for token. Peers (hf*): transformers generate; their forward passes are counted "
            "by a hook on the model, their output cut at the first EOS and at the budget.",
        ]
        if by_task:
            lines += ["", "## Per task", "", *task_table(by_task)]
        parallel = [s for s in summary if s.get("rank_fed_per_step")]
        if parallel:
            lines += ["", f"## Lookahead parallelism: each step split over {meta['ranks']} ranks", "",
                      "| method | rows/step per rank | widest rank | step cost |", "| --- | --- | --- | --- |"]  # fmt: skip
            for s in parallel:
                per_rank = s["rank_fed_per_step"]
                lines.append(f"| {s['method']} | {' / '.join(f'{w:.1f}' for w in per_rank)} | {max(per_rank):.1f} | "
                             f"{s['step_cost']:.2f} |")  # fmt: skip
            lines += ["", "Rows per rank: mean tokens each rank fed per step (its columns, the block-0 prefix they "
                      "attend to, its candidates, the re-fed accepted tokens); fed/step above is the widest rank's. "
                      "Step cost: seconds per step over greedy's, greedy running on every rank alike."]  # fmt: skip
        chosen = (meta.get("lookahead") or {}).get("la:auto")
        if chosen:
            memory = meta.get("memory") or "empty at start"
            lines += ["", "la:auto decided each step within " + ", ".join(f"{k}={v}" for k, v in chosen.items())
                      + f" on this machine; n-gram memory: {memory}."]  # fmt: skip
    if curve:
        lines += ["", f"## Cost of one forward of T tokens after a {meta['cost_context']}-token cache", ""]
        lines += ["| T | " + " | ".join(str(r["T"]) for r in curve) + " |", "| --- " * (len(curve) + 1) + "|"]
        lines += ["| ms | " + " | ".join(f"{1000 * r['seconds']:.1f}" for r in curve) + " |"]
        lines += ["| relative | " + " | ".join(f"{r['relative']:.2f}" for r in curve) + " |"]
        limits = meta.get("limits")
        if limits:
            lines += ["| bound ms | " + " | ".join(f"{1000 * r['bound_seconds']:.1f}" for r in curve) + " |"]
            lines += ["| x bound | " + " | ".join(f"{r['x_bound']:.2f}" for r in curve) + " |"]
            lines += [
                "",
                f"bound: what this machine's limits allow, the larger of weight and cache bytes over the read "
                f"bandwidth ({limits['read_gbps']:.1f} GB/s measured) and FLOPs over the peak product rate "
                f"({limits['gflops']:.0f} GFLOP/s in {meta['dtype']}); x bound: measured over bound "
                f"(minila/roofline.py). The compute limit takes over from T = "
                f"{next((r['T'] for r in curve if r['bound_by'] == 'compute'), '-')}.",
            ]
    return "\n".join(lines) + "\n"


def plots(out: Path, summary: list[dict] | None, curve: list[dict] | None) -> list[Path]:
    """speedup.png (speedup and S per method), scaling.png (steps and S against tokens fed
    per step, with the cost curve when measured) and cost_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if summary:
        names = [s["method"] for s in summary]
        colors = {n: "tab:orange" if n.startswith("hf") else "tab:blue" for n in names}  # peers in orange
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in ((axes[0], "speedup", "speedup over minila greedy (tok/s)"), (axes[1], "S", "S = tokens / forward passes")):
            ax.bar(names, [s[key] for s in summary], color=[colors[n] for n in names])
            ax.axhline(1.0, color="gray", lw=1, ls="--")
            ax.set_title(title)
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / "speedup.png", dpi=120)
        plt.close(fig)
        written.append(out / "speedup.png")

        points = [s for s in summary if s["fed_per_step"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "steps", "forward passes, all prompts"), (axes[1], "S", "S = tokens / forward passes")):
            ax.scatter([s["fed_per_step"] for s in points], [s[key] for s in points], c=[colors[s["method"]] for s in points])
            labels: dict[tuple, list[str]] = {}  # methods on the same spot share one label
            for s in points:
                labels.setdefault((s["fed_per_step"], s[key]), []).append(s["method"])
            for xy, names_here in labels.items():
                ax.annotate(", ".join(names_here), xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("tokens fed per step")
            ax.set_ylabel(label)
        if curve:
            axes[1].plot([r["T"] for r in curve], [r["relative"] for r in curve], color="tab:red", lw=1,
                         label="cost of a step of T tokens (x greedy step)")  # fmt: skip
            axes[1].legend(fontsize=8)
        fig.suptitle("scaling: more tokens per step, fewer steps")
        fig.tight_layout()
        fig.savefig(out / "scaling.png", dpi=120)
        plt.close(fig)
        written.append(out / "scaling.png")
    if curve:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ts = [r["T"] for r in curve]
        ax.plot(ts, [1000 * r["seconds"] for r in curve], marker="o", label="measured")
        if "bound_seconds" in curve[0]:
            ax.plot(ts, [1000 * r["bound_seconds"] for r in curve], ls="--", color="gray",
                    label="bound: max(bytes / bandwidth, FLOPs / peak)")  # fmt: skip
            ax.legend(fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("new tokens T in one forward")
        ax.set_ylabel("ms per forward")
        ax.set_title("cost of one forward pass")
        fig.tight_layout()
        fig.savefig(out / "cost_curve.png", dpi=120)
        plt.close(fig)
        written.append(out / "cost_curve.png")
    return written


# ------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m minila.bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--ckpt", required=True, help="an HF-format Llama folder")
    p.add_argument("--dataset", help="mtbench, humaneval (from `make bench-data`), specbench (bench/specbench)\n"
                   'or a FILE.jsonl (one {"prompt": ...} or {"turns": [...]} per line; "raw": true skips the chat template)')  # fmt: skip
    p.add_argument("--limit", type=int, default=20, help="first K prompts; 0 = all (default %(default)s; not specbench)")  # fmt: skip
    p.add_argument("--per-task", type=int, default=10, help="specbench: K prompts of each of its 6 tasks; 0 = all 80\n"
                   "(default %(default)s)")  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, metavar="CONFIG", help=CONFIG_HELP)
    p.add_argument("--out", help="output folder (default bench/out/<dataset>)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="seeds the Jacobi and lookahead initial guesses")
    p.add_argument("--memory", default=None, metavar="PATH",
                   help="la:auto's n-gram memory: start from PATH and merge the run's outputs back into it\n"
                   "(default: start empty and keep it for this run only; 'off': no memory)")  # fmt: skip
    p.add_argument("--forward", default="auto", choices=["auto", "plain", "invariant"],
                   help="minila's forward path (see minila/invariant.py)")  # fmt: skip
    p.add_argument("--data-dir", default="bench/data", help="where `make bench-data` put the wheels")
    p.add_argument("--cost-curve", action="store_true", help="also time one forward of T=1..128 tokens")
    p.add_argument("--cost-context", type=int, default=200, help="cache length for --cost-curve")
    p.add_argument("--cost-repeats", type=int, default=5, help="timed repeats per T (median)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log: Callable[[str], None], launch=None) -> dict:
    """The benchmark; `launch` (minila.launch.Launch) when started by torchrun: then every
    rank runs it in step, the la:* methods split each step over the ranks, rank 0 reports."""
    if not args.dataset and not args.cost_curve:
        raise MinilaError("give --dataset (mtbench, humaneval, specbench or FILE.jsonl), --cost-curve, or both")
    if args.limit < 0 or args.per_task < 0 or args.max_new_tokens < 1:
        raise MinilaError("--limit and --per-task must be >= 0 and --max-new-tokens >= 1")
    methods = parse_configs(args.configs) if args.dataset else []
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype, forward=args.forward)
    lookahead = lookahead_generate
    if launch is not None:
        from minila.parallel import parallel_generate as lookahead
    label = Path(args.dataset).stem if args.dataset else "cost-curve"
    out = Path(args.out or Path("bench/out") / label)
    meta = {
        "dataset": args.dataset, "model": Path(args.ckpt).name, "ckpt": str(args.ckpt),
        "max_new_tokens": args.max_new_tokens, "limit": args.limit, "per_task": args.per_task, "threads": args.threads,
        "device": str(model.device), "dtype": args.dtype, "forward": model.attention_kernel.name, "seed": args.seed, "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "configs": [m.name for m in methods],
        "ranks": launch.world if launch else 1,
    }  # fmt: skip
    result: dict = {"meta": meta}
    if args.cost_curve:
        log(f"cost curve: one forward of T tokens after a {args.cost_context}-token cache")
        result["cost_curve"], meta["limits"] = cost_curve(model, args.cost_context, args.cost_repeats)
        meta["cost_context"] = args.cost_context
        log("  " + "  ".join(f"T={r['T']}: {r['relative']:.2f}" for r in result["cost_curve"]))
    summary = None
    if args.dataset:
        prompts = load_prompts(args.dataset, tokenizer, args.limit or None, args.data_dir, args.per_task or None)
        if not prompts:
            raise MinilaError(f"{args.dataset} gave no prompts")
        memory = successors = None
        if args.memory != "off":
            fingerprint = tokenizer_fingerprint(args.ckpt)
            memory = NGramMemory(fingerprint, vocab_size=model.args.vocab_size)
            successors = SuccessorTable(model.args.vocab_size)
            if args.memory:
                memory = NGramMemory.load(args.memory, fingerprint, model.args.vocab_size)
                successors = SuccessorTable.load(successors_path(args.memory), fingerprint, model.args.vocab_size)
                meta["memory"] = f"{args.memory} ({len(memory)} continuations at start)"
        decoders, info = build_decoders(methods, model, tokenizer, args.ckpt, args.seed, memory, lookahead, successors)
        meta["transformers"] = info.pop("transformers", None)
        meta["lookahead"] = info
        log(f"bench: {len(prompts)} prompts x {len(decoders)} methods ({', '.join(decoders)}), "
            f"at most {args.max_new_tokens} new tokens, {meta['device']} {args.dtype}, {args.threads} threads")  # fmt: skip
        rows = run_benchmark(decoders, prompts, args.max_new_tokens, log)
        if memory is not None and args.memory:
            memory.save(args.memory)
            successors.save(successors_path(args.memory), fingerprint)
        summary, by_task = summarize(rows), summarize_tasks(rows)
        result["summary"], result["rows"] = summary, rows
        if by_task:
            result["tasks"] = by_task

    if launch is not None and launch.rank != 0:
        return result  # rank 0 reports
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(meta, summary, result.get("cost_curve"), result.get("tasks"))
    (out / "results.md").write_text(table)
    written = [] if args.no_plots else plots(out, summary, result.get("cost_curve"))
    print(table)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p.name}" for p in written))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if launched_by_torchrun():  # la:* methods split over the ranks: minila.launch
        from minila.launch import bench_main

        return bench_main(args)
    try:
        run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    except MinilaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
