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

Peers: transformers' greedy and prompt lookup (`decoders.py`). Under torchrun the la:W,N,G
methods split each step over the ranks (`bench_main`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from minila.cli.bench.decoders import build_decoders
from minila.cli.bench.interleaved import run_benchmark, summarize, summarize_tasks
from minila.cli.bench.methods import CONFIG_HELP, DEFAULT_CONFIGS, parse_configs
from minila.cli.bench.prompts import load_prompts
from minila.cli.bench.report import cost_curve, markdown, plots
from minila.errors import MinilaError
from minila.llama.checkpoint import load_checkpoint
from minila.lookahead.loop import lookahead_generate
from minila.parallel.launch import (
    LaunchError,
    check_split,
    fail,
    join_group,
    launched_by_torchrun,
    leave_group,
    rank_device,
    read_launch,
)
from minila.speed.memory import NGramMemory, tokenizer_fingerprint
from minila.speed.recycle import SuccessorTable, successors_path


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
                   help="minila's forward path (see minila/llama/invariant.py)")  # fmt: skip
    p.add_argument("--data-dir", default="bench/data", help="where `make bench-data` put the wheels")
    p.add_argument("--cost-curve", action="store_true", help="also time one forward of T=1..128 tokens")
    p.add_argument("--cost-context", type=int, default=200, help="cache length for --cost-curve")
    p.add_argument("--cost-repeats", type=int, default=5, help="timed repeats per T (median)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib needed)")
    return p.parse_args(argv)


def run(args: argparse.Namespace, log: Callable[[str], None], launch=None) -> dict:
    """The benchmark; `launch` (minila.parallel.launch.Launch) when started by torchrun: then every
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
        from minila.parallel.decoder import parallel_generate as lookahead
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
    if launched_by_torchrun():  # la:* methods split over the ranks
        return bench_main(args)
    try:
        run(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    except MinilaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def bench_main(args) -> int:
    """`minila.bench` under torchrun: greedy on every rank, la:W,N,G[,C] split over them."""
    launch = None
    try:
        launch = read_launch()
        methods = parse_configs(args.configs) if args.dataset else []
        other = [m.name for m in methods if m.kind not in ("greedy", "lookahead") or (m.kind == "lookahead" and not m.params)]
        if other:
            raise LaunchError(f"under torchrun the bench runs greedy and la:W,N,G[,C] only; drop {' '.join(other)} from --configs")
        for m in methods:
            if m.kind == "lookahead":
                check_split(m.params[0], launch)
        device, backend = rank_device(args.device, launch)
        join_group(launch, backend, device, timeout_s=60.0)
        args.device = str(device)
        run(args, (lambda s: print(s, file=sys.stderr, flush=True)) if launch.rank == 0 else (lambda s: None), launch)
    except MinilaError as e:
        return fail(e, launch)
    finally:
        leave_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
