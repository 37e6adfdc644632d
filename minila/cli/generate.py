"""The command line: `python -m minila.generate --ckpt DIR --prompt TEXT`.

Streams the text as it is produced (tokens accepted several per step are highlighted,
like the paper's demo), then prints one stats line. `--mode compare` runs greedy and
lookahead decoding on the same input and says whether they are identical.
`--json` prints one JSON object instead. `--interactive` holds a conversation instead
(`cli/chat.py`; under torchrun, `cli/generate_ranks.py`). Every bad option or input ends as one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from minila.cli.common import first_divergence, int_or_auto, lookahead_config, make_printer, summary
from minila.decoding.generation import Generation, check_request
from minila.decoding.greedy import greedy_generate
from minila.decoding.sampling import SamplingConfig, sample_generate
from minila.errors import MinilaError
from minila.llama.checkpoint import load_checkpoint
from minila.llama.files import first_line
from minila.llama.invariant import guarantee
from minila.lookahead.auto import auto_budget
from minila.lookahead.jacobi import jacobi_generate
from minila.lookahead.loop import lookahead_generate
from minila.parallel.launch import launched_by_torchrun
from minila.speed.budget import FULL
from minila.speed.memory import NGramMemory, default_path, tokenizer_fingerprint, warn_stderr
from minila.speed.recycle import SuccessorTable, successors_path
from minila.user_files import cache_root, unwritable

DEFAULT_PROMPT = "Write a short poem about the sea."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage and a prefixed message: one line instead
        raise MinilaError(f"{message} (see python -m minila.generate --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m minila.generate", description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True, help="an HF-format Llama folder (config.json, safetensors, tokenizer)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--mode", choices=["lookahead", "greedy", "jacobi", "compare"], default="lookahead")
    p.add_argument("--window", "-W", type=int_or_auto, default="auto", help="lookahead window W (Jacobi: block size)")
    p.add_argument("--ngram", "-N", type=int_or_auto, default="auto", help="n-gram size N")
    p.add_argument("--guess", "-G", type=int_or_auto, default="auto", help="candidates verified per step G")
    p.add_argument("--copy", type=int_or_auto, default="auto",
                   help="also verify a prompt-lookup candidate of this many tokens (0: off)")  # fmt: skip
    p.add_argument("--budget", choices=["cost", "full"], default="cost",
                   help="cost: before each step, feed only what pays on this machine (default); "
                   "full: the whole window and every candidate, every step (the paper's step)")
    p.add_argument("--memory", default="auto", metavar="auto|off|PATH",
                   help="n-grams of earlier runs' outputs and the successor table of their logits, offered to "
                   "lookahead and updated after the run (auto: files per tokenizer under ~/.cache/minila or "
                   "$MINILA_CACHE; PATH: the n-gram file, the table beside it; off: neither)")
    p.add_argument("--seed", type=int, default=0, help="seeds the window (and sampling)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--forward", default="auto", choices=["auto", "plain", "invariant"],
                   help="invariant: every row's logits independent of the step's width, so lookahead "
                   "equals greedy bitwise (auto: where that holds, bfloat16 on a CPU)")  # fmt: skip
    p.add_argument("--no-chat", action="store_true", help="feed the prompt raw, without the chat template")
    p.add_argument("--temperature", type=float, default=None, help="sample instead of greedy decoding")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--json", action="store_true", help="print one JSON object, no streaming")
    p.add_argument("--rendezvous-timeout", type=float, default=60.0,
                   help="under torchrun (lookahead parallelism): seconds to wait for every rank")  # fmt: skip
    p.add_argument("--interactive", "-i", action="store_true",
                   help="a conversation on the terminal (lookahead or greedy mode); /reset, /exit, Ctrl-C stops an answer")
    p.add_argument("--system", default=None, help="a system message to start the conversation with")
    return p.parse_args(argv)


def check_options(args: argparse.Namespace) -> SamplingConfig | None:
    """Refuse bad option values before the (slow) load, so a typo fails at once."""
    if args.threads is not None and args.threads < 1:
        raise MinilaError(f"--threads must be >= 1, got {args.threads}")
    if args.max_new_tokens < 1:
        raise MinilaError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.seed < 0:
        raise MinilaError(f"--seed must be >= 0, got {args.seed}")
    if not args.ckpt:
        raise MinilaError("--ckpt is empty: give the folder of an HF-format Llama checkpoint")
    lookahead_config(args)
    if args.interactive and (args.json or args.mode in ("compare", "jacobi")):
        raise MinilaError("--interactive decodes with --mode lookahead or greedy and prints text: drop --json/--mode")
    if args.temperature is not None and args.mode == "compare":
        raise MinilaError("--mode compare checks lookahead against greedy decoding: drop --temperature")
    # top-k/top-p are checked even when unused, so a bad value never passes silently
    sampling = SamplingConfig(
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    return sampling if args.temperature is not None else None


def run(args: argparse.Namespace) -> dict | None:
    sampling = check_options(args)
    memory_path = None
    if args.memory != "off" and args.mode in ("lookahead", "compare") and not args.interactive:
        memory_path = default_path(tokenizer_fingerprint(args.ckpt)) if args.memory == "auto" else Path(args.memory)
        if problem := unwritable(memory_path):  # before the load: an unusable path costs no work
            where = "--memory" if args.memory != "auto" else f"the n-gram memory in {cache_root()} ($MINILA_CACHE)"
            raise MinilaError(f"{where}: {memory_path} {problem}; give a writable file path, or --memory off")
    model, tokenizer = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype, forward=args.forward)
    if args.threads:  # after the checks: a failed run changes nothing
        torch.set_num_threads(args.threads)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.interactive:
        from minila.cli.chat import chat

        config = lookahead_config(args, model) if args.mode == "lookahead" else None
        return chat(model, tokenizer, config, sampling, args.max_new_tokens, args.system, make_printer)
    memory = successors = None
    if memory_path is not None:  # the n-gram memory, and the successor table beside it
        fingerprint = tokenizer_fingerprint(args.ckpt)
        memory = NGramMemory.load(memory_path, fingerprint, model.args.vocab_size)
        successors = SuccessorTable.load(successors_path(memory_path), fingerprint, model.args.vocab_size)
    if args.no_chat:
        prompt_ids = tokenizer.encode(args.prompt)
    else:
        prompt_ids = tokenizer.apply_chat_template([*system, {"role": "user", "content": args.prompt}])
    check_request(model, prompt_ids, args.max_new_tokens)  # before auto-tuning measures (and caches) anything
    eos, k = tokenizer.eos_ids, args.max_new_tokens
    config = lookahead_config(args, model) if args.mode in ("lookahead", "compare") else None
    budget = auto_budget(model) if args.budget == "cost" else FULL
    color = not args.json and sys.stdout.isatty() and "NO_COLOR" not in os.environ

    def decode(mode: str, stream: bool) -> Generation:
        on_tokens, finish = make_printer(tokenizer, color) if stream else (None, None)
        if mode == "greedy":
            gen = sample_generate(model, prompt_ids, k, sampling, eos, on_tokens) if sampling else greedy_generate(model, prompt_ids, k, eos, on_tokens)
        elif mode == "jacobi":
            block = 8 if args.window == "auto" else args.window
            gen = jacobi_generate(model, prompt_ids, k, block, eos, args.seed, on_tokens)
        else:
            gen = lookahead_generate(model, prompt_ids, k, config, eos, on_tokens, sampling=sampling, budget=budget, memory=memory,
                                     successors=successors)  # fmt: skip
        if finish:
            finish()
        return gen

    def save_memory(result: dict) -> None:
        """After the answer is out: a failed save costs this run's n-grams, not the answer."""
        if memory is None:
            return
        try:
            memory.save(memory_path)
            successors.save(successors_path(memory_path), memory.fingerprint)
        except OSError as e:
            warn_stderr(f"the n-gram memory was not saved to {memory_path} ({e.strerror or first_line(e)})")
            return
        result["memory"] = {"path": str(memory_path), "entries": len(memory)}

    # one short untimed run, so that the first timed one does not pay for warm-up
    greedy_generate(model, prompt_ids[-8:], 2)
    if args.mode != "compare":
        gen = decode(args.mode, stream=not args.json)
        result = {"mode": args.mode, "text": tokenizer.decode(gen.tokens, skip_special_tokens=True), **summary(gen)}
        if config is not None:
            result["config"] = asdict(config)
            result["budget"] = args.budget
            result["guarantee"] = guarantee(model)
        if not args.json:
            print(
                f"[{args.mode}] {len(gen.tokens)} new tokens in {gen.steps} steps "
                f"(compression {gen.compression:.2f}), {gen.seconds:.2f} s, {gen.tokens_per_second:.1f} tok/s"
                + (f", {config.label}, {args.budget} budget" if config else "")
            )
        save_memory(result)
        return result

    greedy = decode("greedy", stream=False)
    look = decode("lookahead", stream=not args.json)
    div = first_divergence(greedy.tokens, look.tokens)
    speedup = greedy.seconds / look.seconds if look.seconds > 0 else 0.0
    result = {
        "mode": "compare",
        "text": tokenizer.decode(look.tokens, skip_special_tokens=True),
        **summary(look),
        "identical": div is None,
        "first_divergence": div,
        "speedup": round(speedup, 3),
        "greedy": summary(greedy),
        "config": asdict(config),
        "budget": args.budget,
        "guarantee": guarantee(model),
    }
    if not args.json:
        print(
            f"[greedy]    {len(greedy.tokens)} tokens, {greedy.steps} steps, {greedy.tokens_per_second:.1f} tok/s\n"
            f"[lookahead] {len(look.tokens)} tokens, {look.steps} steps (compression {look.compression:.2f}), "
            f"{look.tokens_per_second:.1f} tok/s, {config.label}, {args.budget} budget\n"
            f"identical to greedy: {'yes' if div is None else f'NO, first divergence at token {div}'}; "
            f"speedup {speedup:.2f}x\n"
            f"guarantee: {result['guarantee']}"
        )
    save_memory(result)
    return result


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if launched_by_torchrun():  # one request's steps split over the ranks: minila.launch
            from minila.cli.generate_ranks import main as parallel_main

            return parallel_main(args)
        result = run(args)
    except MinilaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C during a load or a one-prompt answer: stop quietly, as a shell tool does
        print(file=sys.stderr)
        return 130
    if result is not None and args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
