"""`python -m minila.generate` under torchrun: one request's steps split over the ranks.

    torchrun --nproc-per-node K -m minila.generate --ckpt DIR -W 15 -N 5 -G 15 --copy 0 ...

`cli/generate.py` hands over to `main` here when torchrun started it; every rank runs
it in step (`parallel/launch.py` joins the group, `parallel/decoder.py` decodes) and
rank 0 alone prints.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import torch

from minila.cli.common import first_divergence, lookahead_config, make_printer, summary
from minila.decoding.greedy import greedy_generate
from minila.errors import MinilaError
from minila.llama.checkpoint import load_checkpoint
from minila.parallel.decoder import parallel_generate
from minila.parallel.launch import (
    Launch,
    LaunchError,
    check_split,
    fail,
    join_group,
    leave_group,
    rank_device,
    read_launch,
)


def check_options(args) -> None:
    """What lookahead parallelism needs from `minila.generate`'s options."""
    if args.mode not in ("lookahead", "compare"):
        raise LaunchError(f"--mode {args.mode} runs in one process: start it with python, not torchrun")
    if args.temperature is not None:
        raise LaunchError("lookahead parallelism is greedy: drop --temperature")
    auto = [f"--{k}" for k in ("window", "ngram", "guess", "copy") if getattr(args, k) == "auto"]
    if auto:
        raise LaunchError(
            f"{', '.join(auto)} auto: auto-tuning times one process, so under torchrun give the settings, "
            "e.g. -W 15 -N 5 -G 15 --copy 0"
        )


def run(args, launch: Launch) -> dict:
    check_options(args)
    config = lookahead_config(args)  # validates W, N, G, copy
    check_split(config.window, launch)
    device, backend = rank_device(args.device, launch)
    if args.threads:
        torch.set_num_threads(args.threads)
    join_group(launch, backend, device, args.rendezvous_timeout)
    model, tokenizer = load_checkpoint(args.ckpt, device=str(device), dtype=args.dtype)
    if device.type == "cuda":  # exactness in float32 needs full-precision products (DESIGN §4)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    prompt_ids = tokenizer.encode(args.prompt) if args.no_chat else tokenizer.apply_chat_template(
        [{"role": "user", "content": args.prompt}]
    )
    eos, k = tokenizer.eos_ids, args.max_new_tokens
    speaker = launch.rank == 0 and not args.json  # rank 0 alone streams and prints
    color = speaker and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    greedy_generate(model, prompt_ids[-8:], 2)  # untimed warm-up, as in one process

    def lookahead() -> dict:
        on_tokens, finish = make_printer(tokenizer, color) if speaker else (None, None)
        gen = parallel_generate(model, prompt_ids, k, config, eos, on_tokens)
        if finish:
            finish()
        per_rank = [sum(w[r] for w in gen.rank_widths) / max(len(gen.rank_widths), 1) for r in range(launch.world)]
        parallel = {
            "ranks": launch.world,
            "rank_width": [round(w, 2) for w in per_rank],  # mean rows fed per decoding step, per rank
            "gather_seconds": round(sum(gen.gather_seconds), 4),  # rank 0's time in the all-gather (waits included)
        }
        return {"gen": gen, **parallel}

    if args.mode == "lookahead":
        out = lookahead()
        gen = out.pop("gen")
        result = {"mode": "lookahead", "text": tokenizer.decode(gen.tokens, skip_special_tokens=True),
                  **summary(gen), **out, "config": asdict(config)}  # fmt: skip
        if speaker:
            print(
                f"[lookahead x{launch.world} ranks] {len(gen.tokens)} new tokens in {gen.steps} steps "
                f"(compression {gen.compression:.2f}), {gen.seconds:.2f} s, {gen.tokens_per_second:.1f} tok/s, "
                f"{config.label}, rows per rank {out['rank_width']}"
            )
        return result

    greedy = greedy_generate(model, prompt_ids, k, eos)  # on every rank: they stay in step
    out = lookahead()
    look = out.pop("gen")
    div = first_divergence(greedy.tokens, look.tokens)
    speedup = greedy.seconds / look.seconds if look.seconds > 0 else 0.0
    result = {
        "mode": "compare", "text": tokenizer.decode(look.tokens, skip_special_tokens=True), **summary(look),
        "identical": div is None, "first_divergence": div, "speedup": round(speedup, 3),
        "greedy": summary(greedy), **out, "config": asdict(config),
    }  # fmt: skip
    if speaker:
        print(
            f"[greedy]    {len(greedy.tokens)} tokens, {greedy.steps} steps, {greedy.tokens_per_second:.1f} tok/s\n"
            f"[lookahead x{launch.world} ranks] {len(look.tokens)} tokens, {look.steps} steps (compression "
            f"{look.compression:.2f}), {look.tokens_per_second:.1f} tok/s, {config.label}, rows per rank "
            f"{out['rank_width']}\nidentical to greedy: {'yes' if div is None else f'NO, first divergence at token {div}'}"
            f"; speedup {speedup:.2f}x"
        )
    return result


def main(args) -> int:
    """`minila.generate` under torchrun: every rank runs this; rank 0 prints."""
    launch = None
    try:
        launch = read_launch()
        result = run(args, launch)
    except MinilaError as e:
        return fail(e, launch)
    finally:
        leave_group()
    if args.json and launch.rank == 0:
        print(json.dumps(result))
    return 0
