"""The pure parts of lookahead decoding against brute-force models, without a model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.lookahead.ngram_pool import ContextLookup, NGramPool
from minila.lookahead.verify import verify, verify_greedy
from minila.lookahead.window import LookaheadWindow

tok = st.integers(0, 5)  # a small alphabet so keys and n-grams repeat


# ---------------------------------------------------------------- n-gram pool


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 5), st.integers(0, 4), st.data())
def test_pool_matches_list_model(n, per_key, data):
    pool, model = NGramPool(n, per_key), {}
    for key, cont in data.draw(st.lists(st.tuples(tok, st.lists(tok, min_size=n - 1, max_size=n - 1)), max_size=40)):
        pool.add(key, cont)
        if per_key == 0:
            continue
        entries = model.setdefault(key, [])
        if tuple(cont) in entries:
            entries.remove(tuple(cont))
        entries.append(tuple(cont))
        if len(entries) > per_key:
            entries.pop(0)
    for key in range(6):
        assert pool.candidates(key) == list(reversed(model.get(key, [])))
        assert len(pool.candidates(key)) <= per_key


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.lists(tok, max_size=30), st.integers(0, 30))
def test_pool_add_sequence(n, tokens, start):
    pool = NGramPool(n, per_key=1000)
    pool.add_sequence(tokens, start)
    expected = {tuple(tokens[i : i + n]) for i in range(start, len(tokens) - n + 1)}
    got = {(k, *c) for k in range(6) for c in pool.candidates(k)}
    assert got == expected


def test_pool_rejects_wrong_length():
    with pytest.raises(ValueError):
        NGramPool(3, 2).add(1, [1, 2, 3])


# ---------------------------------------------------------------- window


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 6), st.sampled_from(["fill", "seed"]), st.data())
def test_window_shift_and_harvest(w, n, warmup, data):
    win = LookaheadWindow(w, n, seed_tokens=[1, 2, 3], seed=data.draw(st.integers(0, 99)), warmup=warmup)
    levels = [list(lvl) for lvl in win.levels]  # brute model: a list of levels
    for _ in range(data.draw(st.integers(1, 8))):
        assert win.levels == levels
        assert len(levels[0]) == w - 1 and all(len(lvl) == w for lvl in levels[1:])
        last = data.draw(tok)
        fresh = data.draw(st.lists(tok, min_size=w, max_size=w))
        grams = win.ngrams(last, fresh)
        if len(levels) == n - 1:  # full: column c is an n-gram along its positions
            block0 = [last] + levels[0]
            assert grams == [(block0[c], [lvl[c] for lvl in levels[1:]] + [fresh[c]]) for c in range(w)]
            assert all(len(cont) == n - 1 for _, cont in grams)
            levels = levels[1:] + [fresh]
            levels[0] = levels[0][1:]
        else:  # warming up: a new level, nothing harvested
            assert grams == []
            levels = levels + [fresh]
        win.advance(fresh)
    assert win.full == (len(levels) == n - 1)


def test_window_is_reproducible():
    a = LookaheadWindow(6, 4, list(range(100)), seed=7, warmup="seed")
    b = LookaheadWindow(6, 4, list(range(100)), seed=7, warmup="seed")
    c = LookaheadWindow(6, 4, list(range(100)), seed=8, warmup="seed")
    assert a.levels == b.levels != c.levels


# ---------------------------------------------------------------- verification


def brute_verify(first, candidates, predictions):
    """Longest matching prefix, first candidate on ties, plus the bonus token."""
    best_j, best_m = None, 0
    for j, (cand, pred) in enumerate(zip(candidates, predictions)):
        expected = [first] + list(pred)
        m = 0
        while m < len(cand) and cand[m] == expected[m]:
            m += 1
        if m > best_m:
            best_j, best_m = j, m
    tokens = [first] + (list(predictions[best_j][:best_m]) if best_j is not None else [])
    return tokens, best_j


@st.composite
def verification_case(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(0, 6))
    first = draw(tok)
    # candidates drawn near the truth so that long matches are common
    truth = [first] + draw(st.lists(tok, min_size=n, max_size=n))
    candidates, predictions = [], []
    for _ in range(k):
        length = draw(st.integers(1, n))
        m = draw(st.integers(0, length))
        cand = truth[:m] + draw(st.lists(tok, min_size=length - m, max_size=length - m))
        # a row sees its candidate's prefix: where the prefix is right it predicts the truth
        pred = [truth[i + 1] if cand[: i + 1] == truth[: i + 1] else draw(tok) for i in range(length)]
        candidates.append(cand)
        predictions.append(pred)
    return first, candidates, predictions


@settings(max_examples=200, deadline=None)
@given(verification_case())
def test_verify_greedy_matches_brute_force(case):
    first, candidates, predictions = case
    verdict = verify_greedy(first, candidates, predictions)
    tokens, winner = brute_verify(first, candidates, predictions)
    assert verdict.tokens == tokens
    assert verdict.candidate == winner
    assert verdict.matched == len(tokens) - 1
    if winner is not None:  # the matched tokens are the winner's own tokens
        assert list(candidates[winner][: verdict.matched]) == tokens[: verdict.matched]


def test_full_match_yields_n_tokens():
    # an (N-1)-token candidate that the model agrees with yields N tokens: the bonus
    verdict = verify_greedy(5, [[5, 6, 7]], [[6, 7, 8]])
    assert verdict.tokens == [5, 6, 7, 8] and verdict.candidate == 0


def test_verify_reads_only_surviving_rows():
    read = []

    def token_after(j, k):
        read.append((j, k))
        return [[2, 3], [9, 9], [2, 4]][j][k]

    verdict = verify(1, [[1, 2], [0, 0], [1, 2]], token_after)
    assert verdict.tokens == [1, 2, 3] and verdict.candidate == 0
    assert read == [(0, 0), (0, 1)]  # never a row of a candidate that already failed


# ---------------------------------------------------------------- context lookup


def brute_continuation(tokens, length, max_match):
    for n in range(min(max_match, len(tokens)), 0, -1):
        tail = tokens[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):  # latest earlier occurrence first
            if tokens[end - n + 1 : end + 1] == tail:
                return tokens[end + 1 : end + 1 + length]
    return []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(tok, max_size=6), max_size=6), st.integers(1, 6), st.integers(1, 3))
def test_context_lookup_matches_brute_force(chunks, length, max_match):
    lookup, tokens = ContextLookup(max_match), []
    for chunk in chunks:  # tokens arrive a step at a time
        lookup.extend(chunk)
        tokens += chunk
        assert lookup.continuation(length) == brute_continuation(tokens, length, max_match)
