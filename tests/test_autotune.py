"""Auto-tuning: the cost curve, its cache on disk, and the choice S / c."""

from __future__ import annotations

import pytest
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.lookahead import auto
from minila.lookahead.auto import choose_config
from minila.speed import cost_curve
from minila.speed.cost_curve import CostCurve, cost_curve_for

WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128)


def curve(relative, head=0.0) -> CostCurve:
    return CostCurve(WIDTHS, tuple(relative(t) for t in WIDTHS), head)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=8, max_size=8), st.floats(1, 200))
def test_interpolation_is_monotone_and_exact_at_measured_points(increments, t):
    seconds = [sum(increments[: i + 1]) for i in range(8)]
    c = CostCurve(WIDTHS, tuple(seconds), 0.0)
    for w, s in zip(WIDTHS, seconds):
        assert c.step_seconds(w, 1) == pytest.approx(s)
    assert c.step_seconds(t, 1) <= c.step_seconds(t + 1, 1) + 1e-12
    assert c.relative(1, 1) == 1.0


def test_flat_cost_gets_the_papers_window():
    config = choose_config(curve(lambda t: 1.0))
    assert (config.window, config.ngram) == (15, 5) and config.guess > 0 and config.copy > 0


def test_steep_cost_gets_one_column():
    # a step of T tokens costs T greedy steps: no window is worth its rows
    config = choose_config(curve(lambda t: float(t), head=1.0))
    assert config.window == 1


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 0.2))
def test_the_window_is_the_widest_the_curve_prices_within_the_limit(slope):
    c = curve(lambda t: 1.0 + slope * t)
    config = choose_config(c)
    rows = lambda w: c.relative(w * (config.ngram - 1), w + 1)  # noqa: E731
    assert config.window == 1 or rows(config.window) <= auto.WINDOW_PRICE
    assert all(rows(w) > auto.WINDOW_PRICE for w in auto.WINDOWS if w > config.window)


def test_cost_curve_is_measured_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    model = tiny_model(0, max_seq_len=256)
    first = cost_curve_for(model)
    assert list(tmp_path.glob("cost-*.json"))
    monkeypatch.setattr(cost_curve, "measure_cost_curve", lambda *a, **k: pytest.fail("measured again"))
    assert cost_curve_for(model) == first
    assert first.widths[0] == 1 and all(s > 0 for s in first.seconds)


def test_short_context_models_are_measured_within_their_context(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    c = cost_curve.measure_cost_curve(tiny_model(0, max_seq_len=64), repeats=1)
    assert max(c.widths) < 64
