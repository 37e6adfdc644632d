"""A conversation on the terminal: `python -m minila.generate --ckpt DIR --interactive`.

Each turn renders the whole history through the model's chat template and decodes the
answer (lookahead or greedy, exactly as one prompt would be), streaming it with the
tokens accepted in parallel highlighted, then prints a stats line. `/reset` starts a
new conversation; `/exit` or Ctrl-D leaves; Ctrl-C stops the current answer and keeps
the conversation, with the answer as far as it was printed.

What carries from turn to turn, and why it stays exact:

- The KV cache. A turn's prompt is the previous turn's prompt, its answer and the new
  message, so most of its K/V is already computed. The session keeps one cache and
  the token ids whose K/V it holds (`cache_ids`); a turn keeps the longest common
  prefix of those and the new prompt ids (the template may re-tokenise an answer
  differently from how it was generated, so the prefix is computed, never assumed)
  and prefills only the rest. The kept rows are the K/V those very tokens at those
  very positions give, so decoding continues exactly as it would from scratch.
- Lookahead's n-grams. The pool is seeded from the whole prompt, which now holds the
  earlier answers too: a phrase the model produced in turn 1 is a candidate in turn 3.
  That is token bookkeeping, cheap next to one forward pass, so it is redone per turn.

After a turn, or a Ctrl-C anywhere in it, the cache is cut back to the rows known to
match `cache_ids` (the prompt plus the answer as printed): a lookahead step may have
committed a row past the last emitted token, and an interrupted step leaves scratch
rows; neither survives into the next turn.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from minila.decoding.generation import Generation, OnTokens, argmax
from minila.decoding.greedy import autoregressive_generate, greedy_generate
from minila.decoding.sampling import Sampler, SamplingConfig
from minila.errors import MinilaError
from minila.llama.kv_cache import KVCache
from minila.llama.model import Transformer
from minila.llama.tokenizer import Tokenizer
from minila.lookahead.loop import LookaheadConfig, lookahead_generate
from minila.speed.budget import FULL, Budget

# decode(model, prompt_ids, max_new_tokens, eos_ids, on_tokens, cache) -> Generation
Decoder = Callable[[Transformer, Sequence[int], int, Sequence[int], OnTokens, KVCache], Generation]


@dataclass
class Turn:
    """What one answer did."""

    tokens: list[int]  # as printed (cut short by Ctrl-C if `interrupted`)
    text: str
    prompt_tokens: int
    reused: int  # prompt tokens whose K/V came from the conversation's cache
    first_token_seconds: float  # from the message to the first token (template, prefill)
    generation: Generation | None  # None when interrupted
    interrupted: bool = False


@dataclass
class ChatSession:
    """A conversation: the messages so far and one KV cache holding the K/V of `cache_ids`.

    `extra_rows`: scratch slots a decoding step may need beyond the last position
    (LookaheadConfig.step_tokens for lookahead, 0 for greedy). `reuse_cache=False`
    prefills every turn from scratch (to measure what the reuse saves)."""

    model: Transformer
    tokenizer: Tokenizer
    decode: Decoder
    max_new_tokens: int
    extra_rows: int = 0
    system: str | None = None
    reuse_cache: bool = True
    messages: list[dict] = field(default_factory=list)
    cache: KVCache | None = None
    cache_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the cache's memory is kept for the next one)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.cache_ids = []
        if self.cache is not None:
            self.cache.truncate(0)

    def ask(self, text: str, on_tokens: OnTokens | None = None) -> Turn:
        """Add a user message, decode the answer (streamed to `on_tokens`), keep both."""
        start = time.perf_counter()
        messages = [*self.messages, {"role": "user", "content": text}]
        prompt = self.tokenizer.apply_chat_template(messages)
        context = self.model.args.max_seq_len
        budget = min(self.max_new_tokens, context - len(prompt))
        if budget < 1:
            raise MinilaError(
                f"the conversation ({len(prompt)} tokens) fills the model's context of {context}: /reset to start over"
            )
        cache, reused = self._cache_for(prompt, budget)
        printed: list[int] = []
        first: list[float] = []

        def stream(ids: list[int]) -> None:
            if not first:
                first.append(time.perf_counter() - start)
            printed.extend(ids)
            if on_tokens:
                on_tokens(ids)

        gen, interrupted = None, False
        try:
            gen = self.decode(self.model, prompt, budget, self.tokenizer.eos_ids, stream, cache)
        except KeyboardInterrupt:  # Ctrl-C: stop this answer, keep the conversation
            interrupted = True
        finally:
            self._settle(prompt + printed)
        answer = self.tokenizer.decode(printed, skip_special_tokens=True)
        self.messages = [*messages, {"role": "assistant", "content": answer}]
        ttft = first[0] if first else time.perf_counter() - start
        return Turn(printed, answer, len(prompt), reused, ttft, gen, interrupted)

    def _cache_for(self, prompt: list[int], budget: int) -> tuple[KVCache, int]:
        """The session's cache, cut to the longest prefix it shares with `prompt` (leaving
        at least the last prompt token to feed) and big enough for this turn."""
        keep = 0
        if self.reuse_cache and self.cache is not None:
            limit = min(len(self.cache_ids), self.cache.length, len(prompt) - 1)
            while keep < limit and self.cache_ids[keep] == prompt[keep]:
                keep += 1
        needed = len(prompt) + budget + self.extra_rows
        if self.cache is None or self.cache.capacity < needed:
            # grow by doubling up to the whole context: a long chat re-allocates a few times, not per turn
            largest = self.model.args.max_seq_len + self.extra_rows
            bigger = self.model.new_cache(max(needed, min(2 * (self.cache.capacity if self.cache else 0), largest)))
            if keep:
                bigger.k[:, :, :keep] = self.cache.k[:, :, :keep]
                bigger.v[:, :, :keep] = self.cache.v[:, :, :keep]
                bigger.length = keep
            self.cache = bigger
        self.cache.truncate(keep)
        self.cache_ids = self.cache_ids[:keep]
        return self.cache, keep

    def _settle(self, ids: list[int]) -> None:
        """Keep the committed rows that are known to hold `ids`' K/V (see the module docstring)."""
        n = min(self.cache.length, len(ids))
        self.cache.truncate(n)
        self.cache_ids = ids[:n]


# ------------------------------------------------------------------------- the terminal

HELP = "/reset starts over, /exit or Ctrl-D leaves, Ctrl-C stops an answer"


def stats_line(label: str, turn: Turn) -> str:
    gen = turn.generation
    cached = f"{turn.reused}/{turn.prompt_tokens} prompt tokens from the cache"
    first = f"first token {1000 * turn.first_token_seconds:.0f} ms"
    if turn.interrupted or gen is None:
        return f"[{label}] stopped by Ctrl-C after {len(turn.tokens)} tokens; {first}, {cached}"
    return (
        f"[{label}] {len(gen.tokens)} tokens in {gen.steps} steps (compression {gen.compression:.2f}), "
        f"{gen.tokens_per_second:.1f} tok/s, {first}, {cached}"
    )


def run_chat(session: ChatSession, label: str, make_printer) -> None:
    """The read-answer loop on the terminal (stdin may also be a pipe: one message a line)."""
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(f"minila chat ({label}); {HELP}", flush=True)
    while True:
        try:
            line = input("> ")
        except EOFError:  # Ctrl-D
            print()
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            print("(new conversation)", flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", flush=True)
            continue
        on_tokens, finish = make_printer(session.tokenizer, color)
        try:
            try:
                turn = session.ask(text, on_tokens)  # a Ctrl-C while it decodes ends the answer
                finish()
                print(stats_line(label, turn), flush=True)
            except MinilaError as e:  # e.g. the context is full: say so and keep the session
                print(f"error: {e}", flush=True)
        except KeyboardInterrupt:  # a Ctrl-C anywhere else in the turn (e.g. while printing)
            print(flush=True)


def chat(
    model: Transformer,
    tokenizer: Tokenizer,
    config: LookaheadConfig | None,
    sampling: SamplingConfig | None,
    max_new_tokens: int,
    system: str | None,
    make_printer,
    budget: Budget = FULL,
) -> None:
    """The CLI's --interactive: lookahead decoding with `config` and `budget` (None:
    greedy, or plain sampling with `sampling`), printed with generate.py's streaming printer."""
    if config is None:
        choose = Sampler(sampling) if sampling else argmax
        label = "greedy" if sampling is None else f"sampling, T={sampling.temperature}"

        def decode(model, ids, k, eos, on_tokens, cache):
            return autoregressive_generate(model, ids, k, eos, on_tokens, choose, cache)

    else:
        label = "lookahead, " + config.label + (", cost budget" if budget is not FULL else "")

        def decode(model, ids, k, eos, on_tokens, cache):
            return lookahead_generate(model, ids, k, config, eos, on_tokens, sampling=sampling, budget=budget, cache=cache)

    greedy_generate(model, tokenizer.encode("Hello")[-8:] or [0], 2)  # warm-up, as generate.py does
    extra = config.step_tokens if config else 0
    run_chat(ChatSession(model, tokenizer, decode, max_new_tokens, extra, system=system), label, make_printer)
