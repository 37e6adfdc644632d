"""The promise: lookahead (and Jacobi) decoding emit exactly greedy decoding's tokens."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted import ScriptedModel, context_hash, periodic

from minila import LookaheadConfig, MinilaError, greedy_generate, jacobi_generate, lookahead_generate
from minila.speed.budget import FULL, CostBudget
from minila.speed.memory import LENGTH, NGramMemory
from minila.speed.recycle import SuccessorTable

configs = st.builds(
    LookaheadConfig,
    window=st.integers(1, 8),
    ngram=st.integers(2, 6),
    guess=st.integers(0, 8),
    seed=st.integers(0, 1000),
    warmup=st.sampled_from(["fill", "seed"]),
    pool_from_prompt=st.booleans(),
    pool_from_output=st.booleans(),
    copy=st.sampled_from([0, 0, 1, 3, 10]),
    recycle=st.sampled_from([0, 0, 3, 16]),
)


@st.composite
def requests(draw, vocab: int):
    # prompts from a few tokens so that n-grams repeat and the pool has something to offer
    alphabet = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=6, unique=True))
    prompt = draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=24))
    max_new = draw(st.integers(1, 64))
    eos = draw(st.lists(st.integers(0, vocab - 1), max_size=2))
    return prompt, max_new, eos


@st.composite
def tiny_models(draw):
    vocab = draw(st.sampled_from([8, 16, 64]))
    n_heads, n_kv_heads = draw(st.sampled_from([(4, 2), (2, 1), (4, 4), (3, 1)]))
    model = tiny_model(draw(st.integers(0, 10_000)), vocab=vocab, dim=8 * n_heads, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, n_layers=draw(st.integers(1, 2)), max_seq_len=160)
    # a peaky head makes the text repetitive, as real text often is: candidates then match
    peak = draw(st.sampled_from([1.0, 4.0]))
    with torch.no_grad():
        model.output.weight.mul_(peak)
    return model


@st.composite
def budgets(draw):
    """The paper's full step, or the cost budget on a curve from flat (GPU-like) to steep."""
    if draw(st.booleans()):
        return FULL
    slope, knee = draw(st.floats(0.0, 1.0)), draw(st.integers(1, 40))
    return CostBudget(lambda tokens, rows: 1.0 + 0.01 * tokens + slope * max(0, tokens - knee))


@st.composite
def memories(draw, vocab: int):
    """None, or a memory that has learnt random texts over the request's alphabet or not."""
    if draw(st.booleans()):
        return None
    memory = NGramMemory("test", capacity=draw(st.integers(1, 500)))
    for _ in range(draw(st.integers(0, 3))):
        memory.learn(draw(st.lists(st.integers(0, vocab - 1), max_size=40)))
    return memory


@st.composite
def tables(draw, vocab: int):
    """None, or a successor table: empty, or holding random rows (drafts that are wrong)."""
    if draw(st.booleans()):
        return None
    table = SuccessorTable(vocab, draw(st.integers(1, 8)))
    if draw(st.booleans()):
        fed = draw(st.lists(st.integers(0, vocab - 1), max_size=8))
        table.update(fed, torch.randn(len(fed), vocab, generator=torch.Generator().manual_seed(len(fed))))
    return table


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tiny_models(), configs, budgets(), st.data())
def test_lookahead_equals_greedy(model, config, budget, data):
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    memory = data.draw(memories(model.args.vocab_size))
    greedy = greedy_generate(model, prompt, max_new, eos)
    if memory is not None and data.draw(st.booleans()):  # a memory that knows (part of) this very answer
        memory.learn(prompt + greedy.tokens[: data.draw(st.integers(0, max_new))])
    successors = data.draw(tables(model.args.vocab_size))
    look = lookahead_generate(model, prompt, max_new, config, eos, budget=budget, memory=memory, successors=successors)
    assert look.tokens == greedy.tokens
    assert look.stop_reason == greedy.stop_reason
    assert sum(look.accepted) == len(look.tokens) and look.steps <= greedy.steps
    longest = max(config.ngram, config.copy + 1, LENGTH + 1 if memory is not None and budget is not FULL else 0,
                  config.recycle + 1 if successors is not None and budget is not FULL else 0)
    assert all(1 <= a <= longest for a in look.accepted[1:] if a)
    assert max((s.width for s in look.stats[1:]), default=0) <= config.step_tokens  # the cache reserves this many rows


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tiny_models(), st.integers(1, 10), st.integers(0, 99), st.data())
def test_jacobi_equals_greedy(model, block, seed, data):
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    greedy = greedy_generate(model, prompt, max_new, eos)
    jacobi = jacobi_generate(model, prompt, max_new, block, eos, seed)
    assert jacobi.tokens == greedy.tokens
    assert all(len(fed) == block for fed in jacobi.trajectory)


@settings(max_examples=60, deadline=None)
@given(configs, budgets(), st.integers(2, 5), st.data())
def test_scripted_context_model(config, budget, vocab, data):
    """Every row must see one consistent history (ScriptedModel checks it), and the
    output must equal greedy's; with 2..5 token types candidates match often."""
    model = ScriptedModel(vocab, context_hash(vocab))
    prompt = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=12))
    max_new = data.draw(st.integers(1, 48))
    eos = data.draw(st.lists(st.integers(0, vocab - 1), max_size=1))
    look = lookahead_generate(model, prompt, max_new, config, eos, budget=budget)
    assert look.tokens == greedy_generate(model, prompt, max_new, eos).tokens


@pytest.mark.parametrize("window,ngram", [(1, 2), (4, 2), (3, 3), (5, 4), (7, 5), (2, 6)])
def test_periodic_text_compresses_towards_n(window, ngram):
    """Text that cycles: the window's columns become exact n-grams, so once the pool has
    them every step fully matches a candidate and emits N tokens (N-1 + the bonus).
    The pool is filled only from the window here, which proves the harvest works."""
    model = ScriptedModel(12, periodic(period=12))
    config = LookaheadConfig(window=window, ngram=ngram, guess=3, pool_from_prompt=False, pool_from_output=False)
    look = lookahead_generate(model, [0], 400, config)
    assert look.tokens == greedy_generate(model, [0], 400).tokens
    steady = sorted(look.accepted[len(look.accepted) // 2 : -1])
    assert steady[len(steady) // 2] == ngram, steady  # the typical step emits N tokens
    assert look.compression > 0.75 * ngram


def test_prompt_seeding_finds_repeats_at_once():
    model = ScriptedModel(10, periodic(period=10))
    config = LookaheadConfig(window=1, ngram=4, guess=2, pool_from_prompt=True)
    look = lookahead_generate(model, list(range(10)) * 2, 40, config)
    assert look.accepted[1:4] == [4, 4, 4]  # the prompt's own n-grams match from step 2


def test_kv_cache_holds_exactly_the_accepted_sequence():
    model = ScriptedModel(7, periodic(period=7))
    cache_seen = {}
    original = model.new_cache

    def spy(capacity=None):
        cache_seen["cache"] = original(capacity)
        return cache_seen["cache"]

    model.new_cache = spy
    prompt = [3, 4, 5]
    look = lookahead_generate(model, prompt, 40, LookaheadConfig(window=3, ngram=3, guess=2))
    # every accepted token but the last one (never fed) sits in the cache, in order
    assert model.committed_tokens(cache_seen["cache"]) == prompt + look.tokens[:-1]


def test_eos_inside_an_accepted_ngram_stops_there():
    model = ScriptedModel(20, periodic(period=20))
    config = LookaheadConfig(window=2, ngram=5, guess=2)
    prompt = list(range(20)) * 2  # the pool knows the whole cycle from the prompt
    look = lookahead_generate(model, prompt, 100, config, eos_ids=[7])
    greedy = greedy_generate(model, prompt, 100, eos_ids=[7])
    assert look.tokens == greedy.tokens == list(range(0, 8))
    assert look.stop_reason == "eos" and max(look.accepted) > 1


@pytest.mark.parametrize("max_new", [1, 2, 3, 5, 9, 10, 11])
def test_never_overshoots_max_new_tokens(max_new):
    model = ScriptedModel(20, periodic(period=20))
    look = lookahead_generate(model, list(range(20)) * 2, max_new, LookaheadConfig(window=2, ngram=5, guess=2))
    assert len(look.tokens) == max_new
    assert look.tokens == greedy_generate(model, list(range(20)) * 2, max_new).tokens


def test_state_is_reset_between_calls():
    model = tiny_model(3, vocab=16)
    config = LookaheadConfig(window=4, ngram=3, guess=4)
    prompt = [1, 2, 3, 1, 2, 3, 1]
    first = lookahead_generate(model, prompt, 30, config)
    lookahead_generate(model, [5, 6, 7, 5, 6], 30, config)  # a different request in between
    again = lookahead_generate(model, prompt, 30, config)
    assert again.tokens == first.tokens and again.accepted == first.accepted


def test_positions_past_the_context_end():
    """Near the end of the context the window's guesses sit past the last position;
    they are clamped and the output is still greedy's."""
    model = tiny_model(5, vocab=8, max_seq_len=40)
    prompt = [random.Random(0).randrange(8) for _ in range(10)]
    config = LookaheadConfig(window=8, ngram=6, guess=8)
    assert lookahead_generate(model, prompt, 30, config).tokens == greedy_generate(model, prompt, 30).tokens
    with pytest.raises(MinilaError, match="context"):
        lookahead_generate(model, prompt, 31, config)


@pytest.mark.parametrize(
    "kwargs", [dict(window=0), dict(ngram=1), dict(guess=-1), dict(window=2.5), dict(ngram=True), dict(warmup="x"), dict(copy=-1)]
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(MinilaError):
        LookaheadConfig(**kwargs)


def test_bad_requests_are_clear_errors():
    model = tiny_model(1, vocab=8)
    with pytest.raises(MinilaError, match="empty"):
        lookahead_generate(model, [], 4)
    with pytest.raises(MinilaError, match="max_new_tokens"):
        greedy_generate(model, [1], 0)
    with pytest.raises(MinilaError, match="vocabulary"):
        lookahead_generate(model, [1, 99], 4)
