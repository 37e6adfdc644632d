"""Sampling: the processed distribution, the sampler, sample-then-match verification,
and a statistical test that lookahead sampling keeps the model's distribution exactly."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

import minila.lookahead.loop
from minila import LookaheadConfig, MinilaError, SamplingConfig, greedy_generate, lookahead_generate, sample_generate
from minila.decoding.generation import as_tensor
from minila.decoding.sampling import Sampler, processed_probs
from minila.lookahead.verify import Verdict, verify

# ------------------------------------------------------------------ helpers


def chi_square(observed: Counter, probs: dict, n: int) -> tuple[float, float, int]:
    """Pearson's goodness-of-fit test of `observed` counts (n draws) against cell
    probabilities. Cells expected fewer than 5 times are pooled into one (the usual
    validity rule); an observation in a cell of probability 0 gives p = 0.
    p = Q(df/2, stat/2), the chi-square survival function written as the regularized
    upper incomplete gamma (torch.special.gammaincc). Returns (statistic, p, df)."""
    if any(probs.get(cell, 0.0) == 0.0 for cell in observed):
        return float("inf"), 0.0, 0
    cells = [(n * p, observed.get(cell, 0)) for cell, p in probs.items() if n * p >= 5]
    rest = (n - sum(e for e, _ in cells), n - sum(o for _, o in cells))
    if rest[0] >= 5:
        cells.append(rest)
    elif rest[0] > 1e-9 or rest[1]:  # still too small: merge it into the smallest cell
        cells.sort()
        cells[0] = (cells[0][0] + rest[0], cells[0][1] + rest[1])
    stat = sum((o - e) ** 2 / e for e, o in cells)
    df = len(cells) - 1
    p = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    return stat, float(p), df


def support(probs: torch.Tensor) -> list[int]:
    return [int(i) for i in probs.nonzero().flatten()]


rows = st.one_of(  # logits rows: spread out, or drawn from a few values so ties are common
    st.lists(st.floats(-8, 8), min_size=1, max_size=12),
    st.lists(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), min_size=1, max_size=12),
).map(lambda v: torch.tensor(v, dtype=torch.float64))
temperatures = st.floats(0.3, 3.0)
top_ps = st.floats(0.0, 1.0, exclude_min=True)
configs = st.builds(SamplingConfig, temperatures, st.integers(0, 14), top_ps, st.integers(0, 2**64 - 1))


def ranking(x: torch.Tensor) -> list[int]:
    """Token ids best first, ties to the lowest id: the order top-k and top-p cut
    (given the logits after temperature, which can merge logits a rounding apart)."""
    return sorted(range(x.numel()), key=lambda i: (-float(x[i]), i))


# ------------------------------------------------------------------ the processed distribution


@settings(max_examples=200, deadline=None)
@given(rows, configs)
def test_processed_probs_is_a_distribution(x, cfg):
    probs = processed_probs(x, cfg)
    assert probs.shape == x.shape and probs.dtype == torch.float64
    assert (probs >= 0).all() and abs(float(probs.sum()) - 1) < 1e-12
    assert support(probs)


@settings(max_examples=200, deadline=None)
@given(rows, st.integers(2, 14), temperatures)
def test_top_k_keeps_exactly_the_k_best(x, k, t):
    probs = processed_probs(x, SamplingConfig(temperature=t, top_k=k))
    kept = ranking(x / t)[:k]  # exactly min(k, vocab): ties at the cut go to the lowest ids
    assert support(probs) == sorted(kept)
    base = torch.softmax(x[kept] / t, 0)  # the kept tokens keep their relative odds
    assert torch.allclose(probs[kept], base, rtol=1e-12, atol=0)


@settings(max_examples=200, deadline=None)
@given(rows, top_ps, temperatures)
def test_top_p_keeps_the_smallest_set_with_enough_mass(x, p, t):
    probs = processed_probs(x, SamplingConfig(temperature=t, top_p=p))
    base = torch.softmax(x / t, 0)
    order = ranking(x / t)
    kept = support(probs)
    assert sorted(order[: len(kept)]) == kept  # the most probable tokens
    assert float(base[kept].sum()) >= p - 1e-12  # enough mass
    assert float(base[order[: len(kept) - 1]].sum()) < p + 1e-12  # one fewer is not enough
    assert torch.allclose(probs[kept], base[kept] / base[kept].sum(), rtol=1e-12, atol=0)


@settings(max_examples=200, deadline=None)
@given(rows, st.sampled_from([torch.float64, torch.float32, torch.bfloat16]), configs)
def test_temperature_zero_and_top_k_one_are_the_argmax(x, dtype, cfg):
    x = x.to(dtype)
    best = int(x.argmax())  # the lowest id among equal maxima
    zero_temperature = SamplingConfig(0.0, cfg.top_k, cfg.top_p, cfg.seed)
    top_1 = SamplingConfig(cfg.temperature, 1, cfg.top_p, cfg.seed)
    for greedy in (zero_temperature, top_1):
        assert support(processed_probs(x, greedy)) == [best]
        assert Sampler(greedy)(x) == best


@settings(max_examples=100, deadline=None)
@given(st.lists(rows, min_size=1, max_size=8), configs)
def test_sampler_is_reproducible_and_stays_in_the_support(xs, cfg):
    first, again = Sampler(cfg), Sampler(cfg)
    for x in xs:
        token = first(x)
        assert again(x) == token
        assert processed_probs(x, cfg)[token] > 0


def test_sampler_draws_from_processed_probs():
    x = torch.tensor([1.0, 2.5, 0.3, 2.5, -1.0, 1.8, 0.9, 2.2])
    cfg = SamplingConfig(temperature=0.9, top_k=6, top_p=0.95, seed=7)
    sampler, n = Sampler(cfg), 8000
    counts = Counter(sampler(x) for _ in range(n))
    probs = processed_probs(x, cfg)
    stat, p, df = chi_square(counts, dict(enumerate(probs.tolist())), n)
    assert p > 1e-3, (stat, df)


def test_seeds_give_different_draws():
    x = torch.zeros(50)
    draws = {tuple(Sampler(SamplingConfig(seed=s))(x) for _ in range(5)) for s in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.0}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": float("nan")}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(MinilaError, match=f"SamplingConfig.{field}"):
        SamplingConfig(**kwargs)


def test_config_accepts_the_edges():
    SamplingConfig(temperature=0, top_k=0, top_p=1, seed=2**64 - 1)
    SamplingConfig(temperature=2, top_k=1, top_p=1e-9)


# ------------------------------------------------------------------ sample-then-match, without a model

tok = st.integers(0, 3)  # few tokens, so candidates often share prefixes
candidate_sets = st.lists(st.lists(tok, min_size=1, max_size=4), max_size=6)


@settings(max_examples=300, deadline=None)
@given(tok, candidate_sets, st.lists(tok, min_size=5, max_size=5))
def test_verify_with_random_draws_matches_brute_force(first, candidates, draws):
    """A sampling chooser is a stream of draws. Brute force: keep appending the next draw
    while some candidate continues the emitted tokens; the winner is the first candidate
    holding all the matched tokens. And every draw must be made at a row whose context is
    exactly the emitted prefix: that is what makes the output distribution the model's."""
    stream, calls = iter(draws), []

    def token_after(j, k):
        calls.append((j, k))
        return next(stream)

    verdict = verify(first, candidates, token_after)

    expected, oracle = [first], iter(draws)
    while any(len(c) >= len(expected) and list(c[: len(expected)]) == expected for c in candidates):
        expected.append(next(oracle))
    matched = len(expected) - 1
    winner = next((j for j, c in enumerate(candidates) if matched and list(c[:matched]) == expected[:matched]), None)
    assert verdict.tokens == expected
    assert verdict.candidate == winner
    assert len(calls) == matched  # one draw per emitted token after the first
    for k, (j, kk) in enumerate(calls):
        assert kk == k and list(candidates[j][: k + 1]) == expected[: k + 1]


# ------------------------------------------------------------------ with a model

LOOKAHEADS = [
    LookaheadConfig(window=2, ngram=3, guess=4),
    LookaheadConfig(window=4, ngram=4, guess=3, warmup="seed"),
    LookaheadConfig(window=3, ngram=2, guess=2),
]


def repetitive_prompt(seed: int, vocab: int, length: int = 10, repeats: int = 2) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (length,), generator=g).tolist() * repeats


@pytest.mark.parametrize("model_seed, vocab", [(0, 6), (1, 64)])
def test_greedy_sampling_configs_reproduce_greedy(model_seed, vocab):
    model = tiny_model(model_seed, vocab=vocab)
    prompt = repetitive_prompt(model_seed, vocab)
    greedy = greedy_generate(model, prompt, 20).tokens
    for cfg in (
        SamplingConfig(temperature=0.0, seed=3),
        SamplingConfig(temperature=1e-9, seed=3),
        SamplingConfig(temperature=1.5, top_k=1, top_p=0.5, seed=3),
    ):
        assert sample_generate(model, prompt, 20, cfg).tokens == greedy
        for la in LOOKAHEADS:
            assert lookahead_generate(model, prompt, 20, la, sampling=cfg).tokens == greedy


def test_same_seed_same_tokens():
    model = tiny_model(2, vocab=16)
    prompt = repetitive_prompt(2, 16)
    cfg = SamplingConfig(temperature=1.2, top_k=8, top_p=0.9, seed=11)
    plain = sample_generate(model, prompt, 24, cfg).tokens
    assert sample_generate(model, prompt, 24, cfg).tokens == plain
    assert sample_generate(model, prompt, 24, SamplingConfig(1.2, 8, 0.9, seed=12)).tokens != plain
    for la in LOOKAHEADS:
        ahead = lookahead_generate(model, prompt, 24, la, sampling=cfg)
        assert lookahead_generate(model, prompt, 24, la, sampling=cfg).tokens == ahead.tokens


def test_lookahead_sampling_equals_plain_sampling_with_the_same_seed_in_float64():
    """One draw per emitted token, in order, from the same conditionals: in float64 the
    rounding gap between a multi-token and a one-token forward never moved a token here."""
    multi_token_steps = 0
    for model_seed, vocab in ((3, 6), (4, 64)):
        model = tiny_model(model_seed, vocab=vocab)
        prompt = repetitive_prompt(model_seed, vocab)
        for la, seed in itertools.product(LOOKAHEADS, range(4)):
            top_k, top_p = (0, 5)[seed % 2], (1.0, 0.9)[seed // 2]
            cfg = SamplingConfig(temperature=0.8 + 0.2 * seed, top_k=top_k, top_p=top_p, seed=seed)
            ahead = lookahead_generate(model, prompt, 20, la, sampling=cfg)
            assert ahead.tokens == sample_generate(model, prompt, 20, cfg).tokens
            multi_token_steps += sum(a > 1 for a in ahead.accepted)
    assert multi_token_steps >= 10  # the comparison covered steps that accepted candidates


def test_one_draw_per_emitted_token():
    model = tiny_model(5, vocab=8)
    prompt = repetitive_prompt(5, 8)
    sampler, draws = Sampler(SamplingConfig(seed=1)), []

    def counting(logits):
        draws.append(1)
        return sampler(logits)

    gen = lookahead_generate(model, prompt, 30, LookaheadConfig(window=2, ngram=3, guess=4), choose=counting)
    assert len(draws) == len(gen.tokens) == 30
    assert max(gen.accepted) > 1


def test_lookahead_takes_choose_or_sampling_not_both():
    model = tiny_model(0, vocab=6)
    with pytest.raises(MinilaError, match="not both"):
        lookahead_generate(model, [1, 2], 3, choose=Sampler(SamplingConfig()), sampling=SamplingConfig())


# ------------------------------------------------------------------ the statistical test

# A 6-token model and a prompt where every token is followed by several others, so the
# pool always holds candidates for `last`. We generate 4 tokens and look at the first 3:
# t1 comes from the prefill, t2 is drawn at `last`'s row in step 2 and, when a candidate
# starts with t2, t3 is drawn at that candidate's row. So t3 is where verification acts.
STAT_VOCAB = 6
STAT_PROMPT = [0, 1, 2, 3, 0, 1, 4, 5, 2, 0, 3, 1, 5, 4, 0, 2, 1, 3, 5, 0, 4, 2, 5, 3, 4, 1, 0]
STAT_LOOKAHEAD = LookaheadConfig(window=2, ngram=3, guess=5)
ALPHA = 1e-3  # false-alarm rate of the test; the seeds are fixed, so its outcome is too


@pytest.fixture(scope="module")
def stat_model():
    return tiny_model(1, vocab=STAT_VOCAB, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, max_seq_len=48)


def exact_distribution(model, cfg: SamplingConfig) -> dict[tuple[int, int, int], float]:
    """P(t1, t2, t3) by the chain rule, from a plain causal forward of every
    prompt + t1 + t2 (no cache reuse, no lookahead): rows -3, -2, -1 are the conditionals."""
    dist = {}
    for t1, t2 in itertools.product(range(STAT_VOCAB), repeat=2):
        seq = STAT_PROMPT + [t1, t2]
        with torch.inference_mode():
            logits = model(as_tensor(seq, model.device), torch.arange(len(seq)), model.new_cache(len(seq)))
        p1, p2, p3 = (processed_probs(logits[r], cfg) for r in (-3, -2, -1))
        for t3 in range(STAT_VOCAB):
            dist[(t1, t2, t3)] = float(p1[t1] * p2[t2] * p3[t3])
    return dist


def lookahead_samples(model, cfg: SamplingConfig, n: int) -> tuple[Counter, float]:
    """First three tokens of n lookahead runs with seeds 0..n-1, and the fraction of runs
    whose second step accepted a candidate token."""
    counts, accepted = Counter(), 0
    for seed in range(n):
        sampling = SamplingConfig(cfg.temperature, cfg.top_k, cfg.top_p, seed)
        gen = lookahead_generate(model, STAT_PROMPT, 4, STAT_LOOKAHEAD, sampling=sampling)
        counts[tuple(gen.tokens[:3])] += 1
        accepted += gen.stats[1].candidate is not None and gen.stats[1].accepted > 1
    return counts, accepted / n


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_k=4, top_p=0.9)],
    ids=["plain", "k4-p0.9"],
)
def test_lookahead_sampling_has_the_models_distribution(stat_model, cfg):
    n = 2000
    counts, accepted = lookahead_samples(stat_model, cfg, n)
    assert accepted > 0.4  # the verifier really accepted candidate tokens
    stat, p, df = chi_square(counts, exact_distribution(stat_model, cfg), n)
    print(f"right verifier, {cfg}: chi2 = {stat:.1f}, df = {df}, p = {p:.3g}, accepted = {accepted:.2f}")
    assert p > ALPHA


def trusting_verify(first, candidates, token_after):
    """Wrong on purpose: takes the newest candidate's first token as if the model had
    drawn it, instead of drawing and matching."""
    return verify(candidates[0][0] if candidates else first, candidates, token_after)


def redrawing_verify(first, candidates, token_after):
    """Wrong on purpose, and subtly: when a draw continues no candidate, it draws again,
    so a candidate's token gets a second chance (q + (1 - q) q instead of q). Each draw is
    a fair draw from the right row; only the choice between them is biased."""
    tokens, survivors, winner = [first], range(len(candidates)), None
    for k in range(max((len(c) for c in candidates), default=0)):
        survivors = [j for j in survivors if k < len(candidates[j]) and candidates[j][k] == tokens[-1]]
        if not survivors:
            break
        winner = survivors[0]
        draw = token_after(winner, k)
        if not any(k + 1 < len(candidates[j]) and candidates[j][k + 1] == draw for j in survivors):
            draw = token_after(winner, k)
        tokens.append(draw)
    return Verdict(tokens=tokens, candidate=winner)


@pytest.mark.slow
@pytest.mark.parametrize("wrong, n", [(trusting_verify, 500), (redrawing_verify, 2000)], ids=["trusting", "redrawing"])
def test_a_wrong_verifier_is_caught(stat_model, monkeypatch, wrong, n):
    """The same test, with a wrong verifier plugged into the loop: it must reject."""
    monkeypatch.setattr(minila.lookahead.loop, "verify", wrong)
    cfg = SamplingConfig(temperature=1.0)
    counts, _ = lookahead_samples(stat_model, cfg, n)
    stat, p, df = chi_square(counts, exact_distribution(stat_model, cfg), n)
    print(f"{wrong.__name__}: chi2 = {stat:.1f}, df = {df}, p = {p:.3g}")
    assert p < 1e-6
