"""The n-gram memory: counting, bounds, the file, and safety when processes save at once."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.speed.memory import NGramMemory, default_path, tokenizer_fingerprint

VOCAB = 50


def brute_counts(texts, length):
    counts = Counter()
    for tokens in texts:
        for i in range(2, len(tokens) - length + 1):
            counts[(tokens[i - 2], tokens[i - 1], tuple(tokens[i : i + length]))] += 1
    return counts


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=30), max_size=4), st.integers(1, 4))
def test_counts_every_continuation_of_every_two_token_context(texts, length):
    memory = NGramMemory("fp", length=length)
    for tokens in texts:
        memory.learn(tokens)
    counts = brute_counts(texts, length)
    assert len(memory) == len(counts)
    for a in range(4):
        for b in range(4):
            offered = memory.offers([9, a, b], limit=100)
            assert sorted(offered) == sorted((c, n) for (x, y, c), n in counts.items() if (x, y) == (a, b))
            assert [n for _, n in offered] == sorted((n for _, n in offered), reverse=True)  # most frequent first


def test_learn_skips_what_comes_before_start():
    memory = NGramMemory("fp", length=2)
    memory.learn([1, 2, 3, 4, 5, 6], start=4)  # the output starts at index 4: only (3, 4) -> (5, 6)
    assert memory.offers([3, 4], 5) == [((5, 6), 1)] and len(memory) == 1


def test_bounded_memory_evicts_the_least_counted_first():
    memory = NGramMemory("fp", capacity=3, length=1)
    memory.learn([1, 2, 3, 1, 2, 3, 1, 2, 3])  # (1,2)->3 and (2,3)->1 counted 3 and 2 times...
    memory.learn([7, 8, 9])
    memory.learn([4, 5, 6])
    assert len(memory) == 3
    assert memory.offers([1, 2], 1) == [((3,), 3)] and memory.offers([2, 3], 1) == [((1,), 2)]


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "m.json"
    memory = NGramMemory("fp", length=3)
    memory.learn([1, 2, 3, 4, 5, 1, 2, 3, 4, 6])
    memory.save(path)
    again = NGramMemory.load(path, "fp", VOCAB, length=3)
    assert sorted(again.offers([1, 2], 5)) == sorted(memory.offers([1, 2], 5)) == [((3, 4, 5), 1), ((3, 4, 6), 1)]
    assert len(again) == len(memory)
    again.learn([1, 2, 3, 4, 5])
    again.save(path)  # merges this run's additions into what the file holds
    assert dict(NGramMemory.load(path, "fp", VOCAB, length=3).offers([1, 2], 5))[(3, 4, 5)] == 2
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written left behind


def test_saving_twice_does_not_count_twice(tmp_path):
    path = tmp_path / "m.json"
    memory = NGramMemory("fp", length=2)
    memory.learn([1, 2, 3, 4])
    memory.save(path)
    memory.save(path)
    assert NGramMemory.load(path, "fp", VOCAB, length=2).offers([1, 2], 3) == [((3, 4), 1)]


def _save_many(path: str, offset: int, rounds: int) -> None:
    for r in range(rounds):
        memory = NGramMemory.load(path, "fp", 10_000, length=1)
        memory.learn([offset, r, 1])  # context (offset, r) -> (1,), a new entry each round
        memory.save(path)


def test_two_processes_saving_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "m.json")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_save_many, args=(path, offset, 15)) for offset in (1000, 2000)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    memory = NGramMemory.load(path, "fp", 10_000, length=1)
    assert len(memory) == 30 and all(memory.offers([o, r], 1) == [((1,), 1)] for o in (1000, 2000) for r in range(15))


BROKEN = {
    "not json": b"{ this is not json",
    "binary": bytes(range(256)),
    "empty": b"",
    "wrong shape": json.dumps([1, 2, 3]).encode(),
    "other format": json.dumps({"format": "something-else", "version": 1}).encode(),
    "other tokenizer": json.dumps({"format": "minila-ngram-memory", "version": 1, "tokenizer": "zz", "entries": []}).encode(),
    "bad entry": json.dumps({"format": "minila-ngram-memory", "version": 1, "tokenizer": "fp", "entries": [[1, "a", [2], 1, 0]]}).encode(),
    "negative": json.dumps({"format": "minila-ngram-memory", "version": 1, "tokenizer": "fp", "entries": [[1, 2, [-3], 1, 0]]}).encode(),
    "outside vocab": json.dumps({"format": "minila-ngram-memory", "version": 1, "tokenizer": "fp", "entries": [[1, 2, [999], 1, 0]]}).encode(),
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_a_broken_or_foreign_file_is_ignored_with_one_warning(tmp_path, what):
    path = tmp_path / "m.json"
    path.write_bytes(BROKEN[what])
    warnings = []
    memory = NGramMemory.load(path, "fp", VOCAB, warn=warnings.append, length=1)
    assert len(memory) == 0 and len(warnings) == 1 and str(path) in warnings[0] and "\n" not in warnings[0]
    memory.learn([1, 2, 3])
    memory.save(path, warn=warnings.append)  # replaced by a valid file
    assert NGramMemory.load(path, "fp", VOCAB, length=1).offers([1, 2], 1) == [((3,), 1)]


def test_files_are_per_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, text in ((a, "{}"), (b, '{"x": 1}')):
        folder.mkdir()
        (folder / "tokenizer.json").write_text(text)
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    assert default_path(tokenizer_fingerprint(a)).parent == Path(tmp_path)
