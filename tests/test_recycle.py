"""Token recycling: the successor table, the tree it drafts, its file, and exactness."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scripted import ScriptedModel, periodic

from minila import LookaheadConfig, greedy_generate, lookahead_generate
from minila.speed.budget import Acceptance, CostBudget, Offer
from minila.speed.recycle import NONE, SuccessorTable, grow_tree, recycled_offers, successors_path

# ------------------------------------------------------------------------- the table


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 4), st.lists(st.integers(0, 11), min_size=1, max_size=10), st.data())
def test_update_keeps_the_top_k_of_the_row_that_wins_for_each_token(vocab, k, raw, data):
    """The last kept row a token fed wins; a token no kept row fed takes its last row."""
    table = SuccessorTable(vocab, min(k, vocab))
    tokens = [t % vocab for t in raw]
    kept = data.draw(st.lists(st.integers(0, len(tokens) - 1), unique=True, max_size=len(tokens)))
    gen = torch.Generator().manual_seed(len(tokens))
    logits = torch.randn(len(tokens), vocab, generator=gen, dtype=torch.float64)  # (R, vocab), no ties
    table.update(tokens, logits, kept)
    for token in range(vocab):
        rows = [i for i in kept if tokens[i] == token] or [i for i in range(len(tokens)) if tokens[i] == token]
        if rows:
            expected = sorted(range(vocab), key=lambda v: -logits[rows[-1], v].item())[: table.k]
            assert table.successors(token) == expected and table.touched[token]
        else:  # never fed: still empty
            assert table.successors(token) == [] and not table.touched[token]


def test_a_copy_is_independent_of_its_original():
    table = SuccessorTable(4, 2)
    twin = copy.deepcopy(table)
    table.update([1], torch.tensor([[0.0, 3.0, 2.0, 1.0]]))
    assert table.successors(1) == [1, 2] and twin.successors(1) == []
    twin.update([1], torch.tensor([[5.0, 0.0, 0.0, 1.0]]))
    assert twin.successors(1) == [0, 3] and table.successors(1) == [1, 2]


# ------------------------------------------------------------------------- the tree


@st.composite
def successor_maps(draw):
    vocab = draw(st.integers(1, 6))
    k = draw(st.integers(1, 3))
    rows = {t: draw(st.lists(st.integers(0, vocab - 1), max_size=k, unique=True)) for t in range(vocab)}
    chance = {(r, d): draw(st.floats(0.05, 1.0)) for r in range(k) for d in range(6)}
    return vocab, rows, chance


@settings(max_examples=80, deadline=None)
@given(successor_maps(), st.integers(0, 20), st.integers(1, 5))
def test_the_tree_holds_the_most_likely_nodes(spec, size, depth):
    vocab, rows, chance = spec
    last = 0
    leaves = grow_tree(lambda t: rows[t], last, lambda r, d: chance[(r, d)], size, depth)
    chosen = {tokens[: i + 1]: ranks[: i + 1] for tokens, ranks in leaves for i in range(len(tokens))}

    every = {}  # brute force: every path of the successor tree up to `depth`, with its chance
    for n in range(1, depth + 1):
        for ranks in itertools.product(range(3), repeat=n):
            tokens, token, p = [], last, 1.0
            for d, r in enumerate(ranks):
                if r >= len(rows[token]):
                    break
                token = rows[token][r]
                tokens.append(token)
                p *= chance[(r, d)]
            else:
                every[tuple(tokens)] = (ranks, p)
    assert len(chosen) == min(size, len(every))
    for node, ranks in chosen.items():
        assert every[node][0] == ranks  # each node is its parent's successor of that rank
        assert node[:-1] in chosen or len(node) == 1  # a tree: parents come along
    if chosen:  # best first: nothing left out beats what was taken
        assert min(every[n][1] for n in chosen) >= max((p for n, (_, p) in every.items() if n not in chosen), default=0) - 1e-12
    inner = {node[:-1] for node in chosen}
    assert sorted(t for t, _ in leaves) == sorted(n for n in chosen if n not in inner)


def test_offers_carry_a_kind_per_rank_and_respect_the_room():
    table = SuccessorTable(5, 2)
    for token, row in enumerate([[1, 2], [2, 3], [3, 4], [4, 0], [0, 1]]):
        logits = torch.zeros(1, 5)
        logits[0, row[0]], logits[0, row[1]] = 2.0, 1.0
        table.update([token], logits)
    offers = recycled_offers(table, 0, Acceptance(), room=2, size=6)
    assert all(len(o.tokens) <= 2 for o in offers) and offers[0].tokens == (1, 2)  # rank 0 twice: the likeliest
    for o in offers:
        token = 0
        for depth, t in enumerate(o.tokens):
            rank = table.successors(token).index(t)
            assert o.kind_at(depth) == ("recycle", rank)
            token = t
    assert recycled_offers(table, 0, Acceptance(), room=0, size=6) == []


def test_a_recycled_chain_is_priced_and_scored_per_rank():
    acceptance = Acceptance()
    kinds = (("recycle", 0), ("recycle", 2), ("recycle", 0))
    offer = Offer((5, 6, 7), ("recycle", 0), kinds)
    q = [acceptance.q(kind, depth) for depth, kind in enumerate(kinds)]
    assert acceptance.chance(offer) == pytest.approx([q[0], q[0] * q[1], q[0] * q[1] * q[2]])
    acceptance.score([offer], [5, 6, 9], window_ran=False)
    assert dict(acceptance.tried) == {(kinds[0], 0): 1, (kinds[1], 1): 1, (kinds[2], 2): 1}
    assert {key: n for key, n in acceptance.right.items() if n} == {(kinds[0], 0): 1, (kinds[1], 1): 1}


# ------------------------------------------------------------------------- exactness and use


def test_recycling_alone_compresses_repetitive_text_and_stays_exact():
    """No pool, no copy, no memory: only the table drafts. On a periodic text it learns
    each token's successor within the first period, then accepts whole chains."""
    model = ScriptedModel(16, periodic(7))
    budget = CostBudget(lambda tokens, rows: 1.0 + 0.01 * tokens)
    config = LookaheadConfig(window=1, ngram=2, guess=0, recycle=8)
    prompt, table = [3, 4], SuccessorTable(16)
    look = lookahead_generate(model, prompt, 60, config, budget=budget, successors=table)
    assert look.tokens == greedy_generate(model, prompt, 60).tokens
    assert look.steps < 20  # greedy takes 60
    without = lookahead_generate(model, prompt, 60, config, budget=budget)
    assert without.steps == 60


# ------------------------------------------------------------------------- the file


def test_the_table_survives_a_round_trip_and_merges_concurrent_runs(tmp_path: Path):
    path = successors_path(tmp_path / "ngrams-abc.json")
    first, second = SuccessorTable(6, 2), SuccessorTable(6, 2)
    first.update([1, 2], torch.tensor([[0.0, 1, 2, 3, 4, 5], [5.0, 4, 3, 2, 1, 0]]))
    second.update([2, 3], torch.tensor([[0.0, 0, 0, 0, 1, 2], [1.0, 0, 0, 0, 0, 0]]))
    first.save(path, "abc")
    second.save(path, "abc")  # a second process: its rows win where both wrote, the others stay
    back = SuccessorTable.load(path, "abc", 6, 2)
    assert back.successors(1) == [5, 4] and back.successors(2) == [5, 4] and back.successors(3)[0] == 0
    assert back.successors(0) == [] and not back.touched.any()
    assert second.successors(1) == [5, 4]  # saving also brings in what the file held
    warnings: list[str] = []
    other = SuccessorTable.load(path, "abc", 7, 2, warn=warnings.append)  # another model's vocabulary
    assert (other.ids == NONE).all() and len(warnings) == 1 and "6 x 2" in warnings[0]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-4], "bytes of ids"),
        (lambda b: b"garbage\n" + b, "ignoring"),
        (lambda b: b.replace(b'"abc"', b'"xyz"'), "another tokenizer"),
        (lambda b: b[: b.index(b"\n") + 1] + (99).to_bytes(4, "little") + b[b.index(b"\n") + 5 :], "outside the vocabulary"),
    ],
)
def test_a_damaged_file_is_ignored_with_a_warning(tmp_path: Path, damage, message):
    path = tmp_path / "t.bin"
    table = SuccessorTable(6, 2)
    table.update([1], torch.tensor([[0.0, 1, 2, 3, 4, 5]]))
    table.save(path, "abc")
    path.write_bytes(damage(path.read_bytes()))
    warnings: list[str] = []
    back = SuccessorTable.load(path, "abc", 6, 2, warn=warnings.append)
    assert (back.ids == NONE).all() and len(warnings) == 1 and message in warnings[0]
