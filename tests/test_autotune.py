"""Auto-tuning: the cost curve, its cache on disk, and the choice S / c."""

from __future__ import annotations

import pytest
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from minila import autotune
from minila.autotune import ACCEPTANCE, CostCurve, choose_config, cost_curve_for, predicted_speedup

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


def test_flat_cost_picks_the_best_compression():
    gpu_like = curve(lambda t: 1.0)
    best = max(ACCEPTANCE, key=lambda k: ACCEPTANCE[k][0])
    config = choose_config(gpu_like)
    assert (config.window, config.ngram, config.guess, config.copy) == best


def test_steep_cost_falls_back_to_greedy_cost():
    # a step of T tokens costs T greedy steps: nothing that feeds more than one token pays
    config = choose_config(curve(lambda t: float(t), head=1.0))
    assert (config.window, config.ngram, config.guess, config.copy) == (1, 2, 0, 0)
    assert predicted_speedup(curve(lambda t: float(t), head=1.0), 1, 2, 0, 0) == pytest.approx(1.0)


def test_choice_maximises_predicted_speedup():
    cpu_like = curve(lambda t: 1.0 + 0.03 * t, head=0.004)
    config = choose_config(cpu_like)
    chosen = predicted_speedup(cpu_like, config.window, config.ngram, config.guess, config.copy)
    assert all(chosen >= predicted_speedup(cpu_like, *k) for k in ACCEPTANCE)


def test_cost_curve_is_measured_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    model = tiny_model(0, max_seq_len=256)
    first = cost_curve_for(model)
    assert list(tmp_path.glob("cost-*.json"))
    monkeypatch.setattr(autotune, "measure_cost_curve", lambda *a, **k: pytest.fail("measured again"))
    assert cost_curve_for(model) == first
    assert first.widths[0] == 1 and all(s > 0 for s in first.seconds)


def test_short_context_models_are_measured_within_their_context(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILA_CACHE", str(tmp_path))
    c = autotune.measure_cost_curve(tiny_model(0, max_seq_len=64), repeats=1)
    assert max(c.widths) < 64
