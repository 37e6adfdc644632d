"""The interactive chat: every turn, decoded from the conversation's reused KV cache,
equals greedy decoding of the same history from scratch; Ctrl-C, /reset and a full
context leave a session that still answers exactly; and the whole loop through a real
terminal (a pty), with a Ctrl-C that lands while an answer is being written."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import LLAMA3_ROPE, REPO, write_tiny_llama3

from minila import LookaheadConfig, MinilaError, greedy_generate, load_checkpoint, lookahead_generate
from minila.cli.chat import ChatSession
from minila.decoding.greedy import autoregressive_generate

CONFIG = LookaheadConfig(window=3, ngram=3, guess=3, copy=4)
QUESTIONS = ["the quick brown fox", "hello world 123", "and the lazy dog?"]


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory, llama3_tokenizer_json) -> Path:
    folder = tmp_path_factory.mktemp("chat") / "llama3"
    write_tiny_llama3(folder, llama3_tokenizer_json, LLAMA3_ROPE, seed=3)
    return folder


@pytest.fixture(scope="module")
def llama3_f64(llama3_dir):
    return load_checkpoint(llama3_dir, device="cpu", dtype="float64")


class Dec4:
    """A clock stopped on 4 Dec 2026. Llama 3.2's template prints today's date in the system
    turn, and the tiny tokenizer spells some dates in more tokens than others; three turns of
    24 tokens sit close to the tiny model's 256-token context, so on 5 Dec 2026 the history
    outgrew it. The tests below are about the cache, not the calendar."""

    @staticmethod
    def now():
        return datetime(2026, 12, 4)


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    monkeypatch.setattr("minila.llama.tokenizer.datetime", Dec4)


def lookahead(model, ids, k, eos, on_tokens, cache):
    return lookahead_generate(model, ids, k, CONFIG, eos, on_tokens, cache=cache)


def greedy(model, ids, k, eos, on_tokens, cache):
    return autoregressive_generate(model, ids, k, eos, on_tokens, cache=cache)


def from_scratch(model, tok, messages, k) -> list[int]:
    return greedy_generate(model, tok.apply_chat_template(messages), k, tok.eos_ids).tokens


@pytest.mark.parametrize("decode, extra", [(lookahead, CONFIG.step_tokens), (greedy, 0)], ids=["lookahead", "greedy"])
def test_three_turns_equal_greedy_decoding_of_the_history_from_scratch(llama3_f64, decode, extra):
    model, tok = llama3_f64
    session = ChatSession(model, tok, decode, 24, extra, system="Be brief.")
    prompt_lengths = []
    for i, question in enumerate(QUESTIONS):
        history = [*session.messages, {"role": "user", "content": question}]
        turn = session.ask(question)
        assert turn.tokens == from_scratch(model, tok, history, 24), f"turn {i + 1}"
        assert not turn.interrupted and turn.generation.tokens == turn.tokens
        assert session.messages[-1] == {"role": "assistant", "content": tok.decode(turn.tokens, skip_special_tokens=True)}
        if i:  # the earlier turns' prompt (up to a few re-tokenised boundary tokens) came from the cache
            assert turn.reused >= prompt_lengths[-1] - 3
            assert turn.generation.stats[0].width == turn.prompt_tokens - turn.reused
        prompt_lengths.append(turn.prompt_tokens)
    # what the cache keeps for turn 4: the rows of turn 3's prompt and answer (the last token is never fed)
    ids = tok.apply_chat_template(session.messages[:-1]) + turn.tokens
    assert session.cache_ids == ids[: session.cache.length] and session.cache.length >= len(ids) - 1


def test_without_reuse_the_answers_are_the_same(llama3_f64):
    model, tok = llama3_f64
    reused = ChatSession(model, tok, lookahead, 16, CONFIG.step_tokens)
    fresh = ChatSession(model, tok, lookahead, 16, CONFIG.step_tokens, reuse_cache=False)
    for question in QUESTIONS[:2]:
        a, b = reused.ask(question), fresh.ask(question)
        assert a.tokens == b.tokens and b.reused == 0
    assert a.reused > 0


def test_ctrl_c_keeps_a_session_that_answers_exactly(llama3_f64):
    model, tok = llama3_f64
    session = ChatSession(model, tok, lookahead, 24, CONFIG.step_tokens)
    calls = []

    def interrupt_on_third_step(ids):
        calls.append(ids)
        if len(calls) == 3:
            raise KeyboardInterrupt

    history = [{"role": "user", "content": QUESTIONS[0]}]
    turn = session.ask(QUESTIONS[0], interrupt_on_third_step)
    printed = [t for ids in calls for t in ids]
    assert turn.interrupted and turn.generation is None and turn.tokens == printed
    assert printed == from_scratch(model, tok, history, 24)[: len(printed)]  # what was printed is the true answer's start
    # the cache holds exactly the rows of prompt + printed answer (a committed row past them is dropped)
    assert session.cache_ids == (tok.apply_chat_template(history) + printed)[: session.cache.length]
    history = [*session.messages, {"role": "user", "content": QUESTIONS[1]}]
    assert session.ask(QUESTIONS[1]).tokens == from_scratch(model, tok, history, 24)


def test_reset_and_a_full_context(llama3_f64):
    model, tok = llama3_f64
    session = ChatSession(model, tok, lookahead, 8, CONFIG.step_tokens)
    with pytest.raises(MinilaError, match="fills the model's context.*/reset"):
        session.ask("the quick brown fox " * 80)  # 256 tokens of context
    session.ask(QUESTIONS[0])
    session.reset()
    assert session.messages == [] and session.cache.length == 0
    assert session.ask(QUESTIONS[1]).tokens == from_scratch(model, tok, [{"role": "user", "content": QUESTIONS[1]}], 8)


def test_greedy_chat_from_a_pipe(llama3_dir, monkeypatch, capsys):
    from minila.cli.generate import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTIONS[0]}\n/nonsense\n{QUESTIONS[1]}\n/exit\nnever read\n"))
    args = ["--ckpt", str(llama3_dir), "--interactive", "--mode", "greedy", "--device", "cpu", "--max-new-tokens", "12"]
    assert main(args) == 0
    out = capsys.readouterr().out
    stats = re.findall(r"\[greedy\] (\d+) tokens in (\d+) steps.*?(\d+)/\d+ prompt tokens from the cache", out)
    assert len(stats) == 2 and all(n == steps for n, steps, _ in stats)  # greedy: one token per step
    assert stats[0][2] == "0" and int(stats[1][2]) > 0 and "unknown command /nonsense" in out


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_chat_equals_greedy_from_scratch_in_float32(real_model):
    model, tok = real_model
    config = LookaheadConfig(window=1, ngram=5, guess=5, copy=10)

    def decode(model, ids, k, eos, on_tokens, cache):
        return lookahead_generate(model, ids, k, config, eos, on_tokens, cache=cache)

    session = ChatSession(model, tok, decode, 32, config.step_tokens)
    for question in ["Name three prime numbers.", "Now three even ones.", "Which of them is the largest?"]:
        history = [*session.messages, {"role": "user", "content": question}]
        assert session.ask(question).tokens == from_scratch(model, tok, history, 32)
    assert session.cache_ids[: len(tok.apply_chat_template(history))] == tok.apply_chat_template(history)


# ------------------------------------------------------------------------- through a terminal


class Terminal:
    """A child process on a pseudo-terminal: what a person at a keyboard sees and types."""

    def __init__(self, argv: list[str], env: dict) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, Ctrl-C becomes SIGINT
            # a shell that started this run in the background may have left Ctrl-C ignored, and an
            # ignored signal stays ignored across exec: give the chat a terminal's usual Ctrl-C
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execve(sys.executable, [sys.executable, *argv], env)
        self.seen, self.pos = "", 0  # the whole transcript; where read_until goes on

    def read_until(self, pattern: str, timeout: float = 60.0) -> str:
        """What the terminal shows from where the last call stopped up to the end of `pattern` (a regex)."""
        deadline = time.monotonic() + timeout
        while not (match := re.compile(pattern).search(self.seen, self.pos)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout} s; the terminal shows:\n{self.seen[self.pos:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"the chat exited before {pattern!r}:\n{self.seen[self.pos:]}")
                self.seen += chunk.decode("utf-8", "replace")
        start, self.pos = self.pos, match.end()
        return self.seen[start : self.pos]

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def syscall(self) -> str:
        """The system call the child sleeps in (its number), or "running"."""
        with open(f"/proc/{self.pid}/syscall") as f:
            return f.read().split()[0]

    def wait_for_another_syscall(self, than: str, timeout: float = 30.0) -> None:
        """Until the child sleeps, for 0.1 s in a row, in a system call other than `than`."""
        deadline, streak = time.monotonic() + timeout, 0
        while streak < 3:
            assert time.monotonic() < deadline, f"the chat is still in system call {than} or running"
            streak = streak + 1 if self.syscall() not in (than, "running") else 0
            time.sleep(0.05)

    def close(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not Path("/proc/self/syscall").exists(), reason="reads the child's system call from Linux's /proc")
def test_interactive_chat_in_a_terminal(llama3_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MINILA_CACHE": str(tmp_path)}
    env.pop("NO_COLOR", None)
    args = ["-m", "minila.generate", "--ckpt", str(llama3_dir), "--interactive", "--device", "cpu",
            "--max-new-tokens", "40", "-W", "3", "-N", "3", "-G", "3", "--copy", "4"]  # fmt: skip
    term = Terminal(args, env)
    try:
        assert "/reset" in term.read_until(r"> ")
        term.type(QUESTIONS[0] + "\n")
        answer = term.read_until(r"\[lookahead[^\n]*prompt tokens from the cache")
        steps = re.search(r"(\d+) tokens in (\d+) steps \(compression ([\d.]+)\)", answer)
        assert steps and float(steps[3]) > 1  # some steps accepted several tokens ...
        assert "\033[1;36m" in answer  # ... and the terminal shows them highlighted
        assert re.search(r", 0/\d+ prompt tokens from the cache", answer)

        term.read_until(r"> ")
        term.type(QUESTIONS[1] + "\n")
        reused = re.search(r"(\d+)/(\d+) prompt tokens from the cache", term.read_until(r"from the cache"))
        assert int(reused[1]) > 0  # the second turn extends the first one's cache

        term.read_until(r"> ")
        term.type("/reset\n")
        term.read_until(r"new conversation")

        # Ctrl-C while an answer is being written: stop the terminal's output (XOFF), send a
        # message, wait until the chat blocks writing its first piece of the answer, press Ctrl-C
        term.read_until(r"> ")
        time.sleep(0.2)
        reading = term.syscall()  # the chat waits for a line (a read)
        term.type("\x13" + QUESTIONS[2] + "\n")
        term.wait_for_another_syscall(than=reading)  # it took the line and now blocks writing the answer
        term.type("\x03")  # the terminal turns it into SIGINT, and restarts the output
        stopped = re.search(r"stopped by Ctrl-C after (\d+) tokens.*, (\d+)/\d+ prompt tokens from the cache",
                            term.read_until(r"stopped by Ctrl-C[^\n]*\n"))  # fmt: skip
        assert int(stopped[1]) >= 1  # mid-answer: the first tokens were decoded, the rest never was
        assert stopped[2] == "0"  # /reset forgot the earlier turns' cache

        # the session goes on: a Ctrl-C at the prompt, then an answer that extends the interrupted turn
        term.read_until(r"> ")
        term.type("\x03")
        term.read_until(r"> ")
        term.type(QUESTIONS[0] + "\n")
        again = term.read_until(r"\[lookahead[^\n]*from the cache")
        assert re.search(r"\d+ tokens in \d+ steps", again)
        assert int(re.search(r", (\d+)/\d+ prompt tokens from the cache", again)[1]) > 0
        term.read_until(r"> ")
        term.type("\x04")  # Ctrl-D leaves
        assert term.close() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
            term.close()
        except (ProcessLookupError, ChildProcessError, OSError):
            pass
    assert "Traceback" not in term.seen
