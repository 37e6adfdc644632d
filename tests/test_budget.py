"""The step budget: the rule E / c, the tree's chances, and the learned rates."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.speed.budget import Acceptance, CostBudget, Offer, node_chances, plan_step


@st.composite
def offers_with_chances(draw, max_offers: int = 4, max_len: int = 3, alphabet: int = 3):
    """Chains over a small alphabet (so prefixes are shared) with chances that only fall along a chain."""
    chains, chances = [], []
    for _ in range(draw(st.integers(0, max_offers))):
        chain = draw(st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=max_len))
        rates = draw(st.lists(st.floats(0.0, 1.0), min_size=len(chain), max_size=len(chain)))
        chains.append(chain)
        chances.append(list(itertools.accumulate(rates, lambda a, b: a * b)))
    return chains, chances


def linear_cost(slope: float):
    return lambda tokens, rows: 1.0 + slope * (tokens - 1)


@settings(max_examples=200, deadline=None)
@given(offers_with_chances())
def test_node_chances_form_a_probability_tree(data):
    chains, chances = data
    p = node_chances(chains, chances)
    assert set(p) == {tuple(c[: k + 1]) for c in chains for k in range(len(c))}
    for node, value in p.items():
        parent = p[node[:-1]] if len(node) > 1 else 1.0
        assert 0.0 <= value <= parent + 1e-12  # a child is never likelier than its parent
    for parent in {n[:-1] for n in p}:  # at most one sibling is right
        assert sum(v for n, v in p.items() if n[:-1] == parent) <= (p[parent] if parent else 1.0) + 1e-9


@settings(max_examples=200, deadline=None)
@given(offers_with_chances(), st.floats(0.0, 1.5), st.integers(0, 12), st.integers(0, 6), st.floats(0.0, 2.0))
def test_the_plan_is_the_best_tree_and_window_choice(data, slope, max_nodes, window_rows, gain):
    """Brute force over every prefix-closed node set (every tree a step could feed) and
    both window choices: none is worth more than the plan."""
    chains, chances = data
    cost = linear_cost(slope)
    plan = plan_step(chains, chances, cost, window_rows, window_rows, gain, max_nodes)
    p = node_chances(chains, chances)
    fed = {c[: k + 1] for c in plan.candidates for k in range(len(c))}
    assert len(fed) <= max_nodes and fed <= set(p)
    assert all(any(tuple(c[: len(f)]) == f for c in chains) for f in fed)  # only offered tokens are fed
    assert plan.expected == pytest.approx(1.0 + sum(p[n] for n in fed) + (gain if plan.window else 0.0))
    assert plan.cost == pytest.approx(cost(1 + len(fed) + window_rows * plan.window, 1 + len(fed) + window_rows * plan.window))
    best = plan.expected / plan.cost
    nodes = list(p)
    for size in range(min(len(nodes), max_nodes) + 1):
        for subset in itertools.combinations(nodes, size):
            chosen = set(subset)
            if any(len(n) > 1 and n[:-1] not in chosen for n in chosen):
                continue  # not a tree: a token without its parent
            for window in (False, True) if window_rows else (False,):
                extra = window_rows if window else 0
                value = (1 + sum(p[n] for n in chosen) + (gain if window else 0.0)) / cost(1 + size + extra, 1 + size + extra)
                assert value <= best + 1e-9


@settings(max_examples=100, deadline=None)
@given(offers_with_chances(), st.integers(0, 6))
def test_when_a_row_costs_a_step_the_step_is_greedy(data, window_rows):
    """Each extra row costing a whole greedy step: no guess can pay (a token is right
    with probability at most 1), so the step feeds `last` alone."""
    chains, chances = data
    chances = [[min(c, 0.99) for c in cs] for cs in chances]
    plan = plan_step(chains, chances, lambda t, r: float(t), window_rows, window_rows, 0.5, 50)
    assert plan.candidates == [] and not plan.window and plan.cost == 1.0


@settings(max_examples=100, deadline=None)
@given(offers_with_chances(), st.integers(1, 6))
def test_on_a_flat_cost_curve_everything_promising_is_fed(data, window_rows):
    chains, chances = data
    plan = plan_step(chains, chances, lambda t, r: 1.0, window_rows, window_rows, 0.1, 1000)
    fed = {c[: k + 1] for c in plan.candidates for k in range(len(c))}
    assert plan.window
    assert fed >= {n for n, v in node_chances(chains, chances).items() if v > 1e-9}  # ties go to the cheaper step


def test_a_sure_long_copy_beats_a_greedy_step_on_a_cpu_like_curve():
    cpu = linear_cost(0.03)
    plan = plan_step([[5, 6, 7, 8]], [[0.9, 0.8, 0.7, 0.6]], cpu, window_rows=7, window_logits=2, window_gain=0.05, max_nodes=20)
    assert plan.candidates == [(5, 6, 7, 8)] and not plan.window
    plan = plan_step([[5, 6, 7, 8]], [[0.01, 0.005, 0.001, 0.0]], cpu, 7, 2, 0.05, 20)
    assert plan.candidates == [] and plan.cost == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=4), st.sampled_from(["copy", "pool", "memory"])), max_size=5),
       st.lists(st.integers(0, 2), max_size=5))  # fmt: skip
def test_scoring_counts_exactly_the_tested_and_right_nodes(raw, truth):
    acceptance = Acceptance()
    offers = [Offer(tuple(tokens), (source, 1)) for tokens, source in raw]
    acceptance.score(offers, truth, window_ran=False)
    expected_tried, expected_right, seen = {}, {}, set()
    for o in offers:
        for d, tok in enumerate(o.tokens):
            if d >= len(truth):
                break
            if (o.kind, o.tokens[: d + 1]) in seen:  # a node shared by chains of one kind is one bet
                if tok != truth[d]:
                    break
                continue
            seen.add((o.kind, o.tokens[: d + 1]))
            key = (o.kind, d)
            expected_tried[key] = expected_tried.get(key, 0) + 1
            if tok != truth[d]:
                break
            expected_right[key] = expected_right.get(key, 0) + 1
    assert dict(acceptance.tried) == expected_tried
    assert {k: v for k, v in acceptance.right.items() if v} == expected_right


def test_rates_move_from_the_prior_to_what_is_observed():
    acceptance = Acceptance()
    kind = ("copy", 3)
    prior = acceptance.q(kind, 0)
    for i in range(200):  # right one time in four at depth 0
        acceptance.score([Offer((1, 2), kind)], [1 if i % 4 == 0 else 0, 2], window_ran=False)
    assert acceptance.q(kind, 0) == pytest.approx(0.25, abs=0.02) and prior != pytest.approx(0.25, abs=0.02)
    assert acceptance.q(kind, 1) == pytest.approx(1.0, abs=0.05)  # once the first is right, the second always was
    chance = acceptance.chance(Offer((1, 2, 3), kind))
    assert chance == sorted(chance, reverse=True) and math.isclose(chance[1], chance[0] * acceptance.q(kind, 1))


def test_the_window_earns_what_its_harvest_beat_the_rest_by():
    acceptance = Acceptance(window_prior=(0.0, 1.0))
    harvested, read = Offer((1, 2, 3), ("pool", False, 1)), Offer((1, 9), ("pool", True, 1))
    acceptance.score([harvested, read], [1, 2, 3, 4], window_ran=True)  # harvest right for 3, the text's for 1
    acceptance.score([read], [1, 9], window_ran=True)
    assert acceptance.window_credit == 2 and acceptance.window_steps == 2
    assert acceptance.window_gain == pytest.approx(2 / 3)


def test_steps_are_scored_once_the_text_is_known():
    acceptance = Acceptance()
    kind = ("copy", 2)
    acceptance.record(3, [Offer((7, 8), kind)], window_ran=False)
    acceptance.catch_up([0, 1, 2, 7])  # one token of the two known: wait
    assert not acceptance.tried
    acceptance.catch_up([0, 1, 2, 7, 8])
    assert acceptance.tried[(kind, 1)] == 1 and acceptance.right[(kind, 1)] == 1 and not acceptance.pending
    acceptance.record(5, [Offer((4, 4, 4), kind)], window_ran=False)
    acceptance.catch_up([0, 1, 2, 7, 8, 4], final=True)  # the request ended: score what is known
    assert acceptance.tried[(kind, 0)] == 2 and not acceptance.pending


def test_a_cost_budget_plans_with_the_learned_rates():
    budget = CostBudget(linear_cost(0.05))
    acceptance = Acceptance()
    good, bad = Offer((1, 2, 3), ("copy", 3)), Offer((4, 5, 6), ("pool", False, 1))
    for _ in range(50):
        acceptance.score([good, bad], [1, 2, 3], window_ran=False)
    plan = budget.plan([bad, good], acceptance, 0, 0, 10)
    assert plan.candidates == [(1, 2, 3)] and plan.offers == (bad, good) and len(plan.chances) == 2
