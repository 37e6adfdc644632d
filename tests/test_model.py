"""The Llama of model.py: cache consistency, custom masks, agreement with Hugging Face,
greedy decoding, config validation and logits_for.

Oracles: a plain causal forward of the whole sequence (for cached/chunked/masked
forwards), and transformers' LlamaForCausalLM with our weights copied in (for the
logits and for greedy tokens).
"""

from __future__ import annotations

import contextlib
import dataclasses
from unittest import mock

import pytest
import torch
from helpers import ROPE_THETAS, hf_llama_from, model_shapes, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.decoding.greedy import greedy_generate
from minila.errors import MinilaError
from minila.llama.invariant import WIDTH
from minila.llama.model import Linear, ModelArgs, packable_dtypes
from minila.llama.probe import probe_product
from minila.lookahead.masks import ancestor_mask, depths

SEEDS = st.integers(0, 2**31)


def tokens_of(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def causal_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """The oracle: one causal forward of the whole sequence from an empty cache. (L, vocab)"""
    cache = model.new_cache(len(tokens))
    return model(tokens, torch.arange(len(tokens)), cache)


@torch.inference_mode()
def chunked_logits(model, tokens: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Feed the sequence in consecutive chunks, committing each. (L, vocab)"""
    cache = model.new_cache(len(tokens))
    out, start = [], 0
    for size in sizes:
        out.append(model(tokens[start : start + size], torch.arange(start, start + size), cache))
        cache.commit()
        start += size
    assert cache.length == len(tokens)
    return torch.cat(out)


@st.composite
def chunk_sizes(draw, n: int) -> list[int]:
    """Positive sizes that add up to n."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    return [b - a for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------- cache consistency


@settings(max_examples=40, deadline=None)
@given(shape=model_shapes(), seed=SEEDS, n=st.integers(1, 20), data=st.data())
def test_chunked_and_stepwise_forwards_equal_one_causal_forward(shape, seed, n, data):
    model = tiny_model(seed, **shape)
    tokens = tokens_of(n, shape["vocab"], seed)
    full = causal_logits(model, tokens)
    sizes = data.draw(chunk_sizes(n), label="chunks")
    torch.testing.assert_close(chunked_logits(model, tokens, sizes), full, rtol=0, atol=1e-10)
    torch.testing.assert_close(chunked_logits(model, tokens, [1] * n), full, rtol=0, atol=1e-10)


def test_new_cache_matches_the_model():
    model = tiny_model(0, n_layers=3, n_kv_heads=2, dim=32, n_heads=4, max_seq_len=40)
    cache = model.new_cache()
    assert cache.capacity == 40 and cache.length == 0
    assert cache.k.shape == (3, 2, 40, 8) and cache.k.dtype == torch.float64
    assert model.new_cache(5).capacity == 5


# ---------------------------------------------------------------- custom masks


@st.composite
def masked_step(draw, vocab: int, max_pos: int):
    """A prefix length a, a chain length m, and a step that interleaves the chain
    (parents linked, in order) with distractor rows at arbitrary positions whose parents
    are any earlier row (a chain row included) or none."""
    a = draw(st.integers(0, 8), label="prefix")
    m = draw(st.integers(1, 8), label="chain")
    d = draw(st.integers(0, 8), label="distractors")
    order = draw(st.permutations([True] * m + [False] * d), label="order")  # True = chain row
    parents, chain_rows, distractors = [], [], []
    for i, is_chain in enumerate(order):
        if is_chain:
            parents.append(chain_rows[-1] if chain_rows else -1)
            chain_rows.append(i)
        else:
            parents.append(draw(st.integers(-1, i - 1)))
            distractors.append(
                (draw(st.integers(0, vocab - 1)), draw(st.integers(0, max_pos - 1)))  # token, position
            )
    return a, m, parents, chain_rows, distractors


@settings(max_examples=40, deadline=None)
@given(shape=model_shapes(), seed=SEEDS, data=st.data(), use_logits_for=st.booleans())
def test_a_chain_under_the_ancestor_mask_sees_what_a_causal_sequence_sees(shape, seed, data, use_logits_for):
    """The property lookahead relies on: a token at position p whose mask row shows
    exactly its chain gets the logits it would get in the plain sequence, whatever
    else the step feeds; committing the chain's rows then continues that sequence."""
    model = tiny_model(seed, **shape)
    vocab, max_pos = shape["vocab"], model.args.max_seq_len
    a, m, parents, chain_rows, distractors = data.draw(masked_step(vocab, max_pos))
    rest = data.draw(st.integers(1, 4), label="continuation")
    seq = tokens_of(a + m + rest, vocab, seed)
    want = causal_logits(model, seq)

    # the step: chain tokens s[a..a+m) at a + depth, distractors wherever they like
    tokens, positions = [], []
    depth = depths(parents)
    it = iter(distractors)
    chain_k = {row: k for k, row in enumerate(chain_rows)}
    for i in range(len(parents)):
        if i in chain_k:
            assert depth[i] == chain_k[i]
            tokens.append(int(seq[a + chain_k[i]]))
            positions.append(a + depth[i])
        else:
            tok, pos = next(it)
            tokens.append(tok)
            positions.append(pos)
    rows = torch.tensor(chain_rows)

    with torch.inference_mode():
        cache = model.new_cache(a + len(parents) + rest)
        if a:
            model(seq[:a], torch.arange(a), cache)
            cache.commit()
        step = model(
            torch.tensor(tokens), torch.tensor(positions), cache, ancestor_mask(parents), rows if use_logits_for else None
        )
        got = step if use_logits_for else step[rows]
        torch.testing.assert_close(got, want[a : a + m], rtol=0, atol=1e-9)

        cache.commit(chain_rows)
        assert cache.length == a + m
        after = model(seq[a + m :], torch.arange(a + m, a + m + rest), cache)
        torch.testing.assert_close(after, want[a + m :], rtol=0, atol=1e-9)


@torch.inference_mode()
def test_the_mask_is_honoured():
    """Guards the test above: a mask that lets row 0 see later rows changes its logits,
    and mask=None is the causal mask."""
    model = tiny_model(1, n_layers=1)  # one layer: the last row's inputs do not depend on the mask
    tokens = tokens_of(6, 64, 1)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    default = model(tokens, torch.arange(6), model.new_cache())
    explicit = model(tokens, torch.arange(6), model.new_cache(), causal)
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)
    full = model(tokens, torch.arange(6), model.new_cache(), torch.ones(6, 6, dtype=torch.bool))
    assert (full[0] - default[0]).abs().max() > 1e-3
    torch.testing.assert_close(full[-1], default[-1], rtol=0, atol=1e-12)  # the last row saw everything anyway


@torch.inference_mode()
def test_positions_are_used():
    """RoPE is relative: shifting every position leaves the logits alone (up to the
    float32 rounding of the cos/sin tables), while changing the spacing changes them."""
    model = tiny_model(2)
    tokens = tokens_of(5, 64, 2)
    a = model(tokens, torch.arange(5), model.new_cache())
    shifted = model(tokens, torch.arange(7, 12), model.new_cache())
    spread = model(tokens, torch.arange(0, 10, 2), model.new_cache())
    torch.testing.assert_close(shifted, a, rtol=0, atol=1e-5)
    assert (spread[1:] - a[1:]).abs().max() > 1e-2


# ---------------------------------------------------------------- Hugging Face oracle


@contextlib.contextmanager
def hf_rms_norm_in_input_dtype():
    """HF's LlamaRMSNorm always normalises in float32 (and its eager attention takes the
    softmax in float32), so even a float64 HF model agrees with ours only to ~1e-6. With
    the norm patched to the input dtype and SDPA attention, float64 agrees to ~1e-13,
    which catches small errors (an eps mismatch) that 1e-4 would not."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    with mock.patch.object(modeling_llama.LlamaRMSNorm, "forward", forward):
        yield


@torch.inference_mode()
def hf_logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    return hf(input_ids=tokens[None]).logits[0]


@settings(max_examples=25, deadline=None)
@given(
    shape=model_shapes(),
    seed=SEEDS,
    n=st.integers(1, 16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_logits_equal_transformers_llama(shape, seed, n, dtype):
    model = tiny_model(seed, dtype=dtype, **shape)
    hf = hf_llama_from(model)  # eager attention
    tokens = tokens_of(n, shape["vocab"], seed)
    ours = causal_logits(model, tokens)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, hf_logits(hf, tokens), rtol=0, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(shape=model_shapes(), seed=SEEDS, n=st.integers(1, 16))
def test_float64_logits_equal_transformers_llama_tightly(shape, seed, n):
    model = tiny_model(seed, **shape)
    tokens = tokens_of(n, shape["vocab"], seed)
    with hf_rms_norm_in_input_dtype():
        theirs = hf_logits(hf_llama_from(model, "sdpa"), tokens)
    torch.testing.assert_close(causal_logits(model, tokens), theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("ours, theirs", [(10000.0, 500000.0), (100000.0, 10000.0), (500000.0, 100000.0)])
def test_a_wrong_rope_theta_would_be_caught(ours, theirs):
    """Guards the tests above: HF really uses the theta hf_llama_from gives it, so a
    mismatch shows (same weights, different theta -> different logits)."""
    tokens = tokens_of(12, 64, 3)
    ref = causal_logits(tiny_model(3, rope_theta=ours), tokens)
    wrong = hf_logits(hf_llama_from(tiny_model(3, rope_theta=theirs)), tokens)
    right = hf_logits(hf_llama_from(tiny_model(3, rope_theta=ours)), tokens)
    assert (ref - wrong).abs().max() > 1e-2
    torch.testing.assert_close(ref, right, rtol=0, atol=1e-4)


def test_hf_config_carries_our_settings():
    model = tiny_model(4, n_heads=6, n_kv_heads=2, dim=48, rope_theta=ROPE_THETAS[1], tie=True)
    hf = hf_llama_from(model)
    assert hf.config.rope_parameters["rope_theta"] == ROPE_THETAS[1]
    assert hf.config.num_key_value_heads == 2 and hf.config.head_dim == 8
    assert hf.config.rms_norm_eps == model.args.norm_eps
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert model.output.weight is model.tok_embeddings.weight


# ---------------------------------------------------------------- greedy decoding


@torch.inference_mode()
def hf_greedy(hf, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    out = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def check_greedy_shape(gen, max_new_tokens: int) -> None:
    """One forward pass per token (the prefill included): S is exactly 1."""
    assert gen.steps == len(gen.tokens)
    assert gen.accepted == [1] * len(gen.tokens)
    assert gen.compression == 1.0
    assert len(gen.tokens) <= max_new_tokens


@settings(max_examples=25, deadline=None)
@given(shape=model_shapes(), seed=SEEDS, prompt_len=st.integers(1, 8), k=st.integers(1, 12))
def test_greedy_equals_transformers_generate(shape, seed, prompt_len, k):
    model = tiny_model(seed, **shape)
    prompt = tokens_of(prompt_len, shape["vocab"], seed).tolist()
    gen = greedy_generate(model, prompt, k)
    with hf_rms_norm_in_input_dtype():
        want = hf_greedy(hf_llama_from(model, "sdpa"), prompt, k)
    assert gen.tokens == want
    assert len(gen.tokens) == k and gen.stop_reason == "length"
    check_greedy_shape(gen, k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_float32_equals_transformers_generate_eager(seed):
    model = tiny_model(seed, vocab=50, dim=48, n_heads=6, n_kv_heads=2, rope_theta=100000.0, tie=True, dtype=torch.float32)
    prompt = tokens_of(6, 50, seed).tolist()
    gen = greedy_generate(model, prompt, 16)
    assert gen.tokens == hf_greedy(hf_llama_from(model), prompt, 16)
    check_greedy_shape(gen, 16)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, prompt_len=st.integers(1, 6), k=st.integers(1, 10), data=st.data())
def test_greedy_budget_is_exact_and_shorter_runs_are_prefixes(seed, prompt_len, k, data):
    model = tiny_model(seed, vocab=24, dim=16, n_heads=2, n_kv_heads=1, hidden_dim=24, n_layers=1)
    prompt = tokens_of(prompt_len, 24, seed).tolist()
    long = greedy_generate(model, prompt, k)
    assert len(long.tokens) == k
    check_greedy_shape(long, k)
    j = data.draw(st.integers(1, k), label="shorter budget")
    assert greedy_generate(model, prompt, j).tokens == long.tokens[:j]


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, prompt_len=st.integers(1, 6), data=st.data())
def test_greedy_stops_right_after_eos(seed, prompt_len, data):
    """Pick as EOS a token greedy emits when unconstrained: the run must end right after
    its first occurrence, EOS included, exactly like HF generate with that eos id."""
    model = tiny_model(seed, vocab=24, dim=16, n_heads=2, n_kv_heads=1, hidden_dim=24, n_layers=1)
    prompt = tokens_of(prompt_len, 24, seed).tolist()
    free = greedy_generate(model, prompt, 12).tokens
    eos = data.draw(st.sampled_from(free), label="eos")
    other = data.draw(st.integers(0, 23).filter(lambda t: t not in free), label="unused eos")  # 12 < 24: one exists
    want = free[: free.index(eos) + 1]

    gen = greedy_generate(model, prompt, 12, eos_ids=[other, eos])
    assert gen.tokens == want
    assert gen.stop_reason == "eos"
    check_greedy_shape(gen, 12)
    with hf_rms_norm_in_input_dtype():
        assert hf_greedy(hf_llama_from(model, "sdpa"), prompt, 12, eos=eos) == want


def test_greedy_streams_every_token_once():
    model = tiny_model(5)
    seen: list[int] = []
    gen = greedy_generate(model, [1, 2, 3], 7, on_tokens=seen.extend)
    assert seen == gen.tokens and len(seen) == 7


@pytest.mark.parametrize(
    "prompt, k, match",
    [([], 4, "empty"), ([1, 2], 0, "max_new_tokens"), ([1, 64], 4, "vocabulary"), ([-1], 4, "vocabulary"), ([1] * 30, 3, "context")],
)
def test_greedy_rejects_bad_requests(prompt, k, match):
    model = tiny_model(6, max_seq_len=32)
    with pytest.raises(MinilaError, match=match):
        greedy_generate(model, prompt, k)


# ---------------------------------------------------------------- config validation


VALID = dict(vocab_size=10, dim=16, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=8)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dim=18), "not divisible by n_heads"),
        (dict(n_kv_heads=3), "not a multiple of n_kv_heads"),
        (dict(n_kv_heads=8), "not a multiple of n_kv_heads"),
        (dict(dim=12), "head_dim 3 must be even"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
        (dict(n_layers=0), "n_layers must be >= 1"),
        (dict(n_heads=0), "n_heads must be >= 1"),
        (dict(n_kv_heads=0), "n_kv_heads must be >= 1"),
        (dict(hidden_dim=-4), "hidden_dim must be >= 1"),
        (dict(max_seq_len=0), "max_seq_len must be >= 1"),
    ],
)
def test_model_args_reject_invalid_shapes(change, match):
    with pytest.raises(ValueError, match=match):
        ModelArgs(**{**VALID, **change})


def test_model_args_are_frozen_and_derive_head_dim():
    args = ModelArgs(**VALID)
    assert args.head_dim == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.dim = 32


# ---------------------------------------------------------------- logits_for


@settings(max_examples=30, deadline=None)
@given(shape=model_shapes(), seed=SEEDS, n=st.integers(1, 12), data=st.data())
def test_logits_for_returns_exactly_the_selected_rows(shape, seed, n, data):
    model = tiny_model(seed, **shape)
    tokens = tokens_of(n, shape["vocab"], seed)
    with torch.inference_mode():
        full_cache = model.new_cache(n)
        full = model(tokens, torch.arange(n), full_cache)
        rows = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=n + 2), label="rows")
        cache = model.new_cache(n)
        picked = model(tokens, torch.arange(n), cache, logits_for=torch.tensor(rows))
        start = data.draw(st.integers(0, n - 1), label="slice start")
        sliced = model(tokens, torch.arange(n), model.new_cache(n), logits_for=slice(start, None))
    assert picked.shape == (len(rows), shape["vocab"])
    torch.testing.assert_close(picked, full[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(sliced, full[start:], rtol=0, atol=1e-12)
    assert torch.equal(cache.k, full_cache.k) and torch.equal(cache.v, full_cache.v)  # same K/V written


# ------------------------------------------------------------------------- packed CPU weights

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


PACKABLE = [dt for dt in (torch.float32, torch.bfloat16, torch.float16) if dt in packable_dtypes()]


@needs_onednn
@pytest.mark.parametrize("dtype", PACKABLE)
@settings(max_examples=25, deadline=None)
@given(st.one_of(st.integers(1, 96), st.sampled_from(range(64, 1025, 64))), st.integers(1, 96), st.integers(1, 40),
       st.integers(0, 10_000))  # fmt: skip
def test_a_packed_linear_computes_the_same_product_row_by_row(dtype, n_in, n_out, rows, seed):
    """Close to the exact product; and where the width-invariant forward relies on it
    (inner lengths that are multiples of 64, unsliced, and as many rows a call as the
    probe found invariant on this CPU: probe.py), each row's result bitwise independent
    of the other rows: a row fed alone (greedy) and in a wide step (lookahead) gets the
    same numbers."""
    gen = torch.Generator().manual_seed(seed)
    lin = Linear(n_in, n_out).requires_grad_(False).to(dtype)
    lin.weight.copy_(torch.randn(n_out, n_in, generator=gen))
    x = torch.randn(rows, n_in, generator=gen).to(dtype)
    exact = x.double() @ lin.weight.double().T
    lin.pack()
    packed = lin(x)
    assert packed.dtype is dtype
    eps = torch.finfo(dtype).eps  # rounding of the output, plus float32 accumulation of n_in terms
    torch.testing.assert_close(packed.double(), exact, rtol=2 * eps, atol=(2 * eps + 1e-6 * n_in) * n_in**0.5)
    if n_in % WIDTH == 0 and rows > 1:  # where the probe found this shape row-invariant here, on other data
        max_rows, max_inner = probe_product(n_in, n_out, dtype, torch.Generator().manual_seed(1))
        if n_in <= max_inner and rows <= max_rows:
            assert all(torch.equal(lin(x[i : i + 1]), packed[i : i + 1]) for i in range(rows))


@needs_onednn
def test_a_packed_linear_holds_its_weight_once():
    lin = Linear(8, 4).requires_grad_(False)
    weight = torch.randn(4, 8)
    lin.weight.copy_(weight)
    x = torch.randn(3, 8)
    lin.pack()
    assert lin.weight.is_meta and lin.weight.shape == (4, 8) and lin.weight.dtype is torch.float32
    torch.testing.assert_close(lin(x), x @ weight.T)
    assert torch.equal(lin.state_dict()["weight"], weight)  # read back from the packed copy
    lin.unpack()
    assert torch.equal(lin.weight, weight) and lin.packed is None
    lin.pack()
    lin.weight = torch.nn.Parameter(torch.randn(4, 8), requires_grad=False)  # assigned after packing: used
    assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight))


def test_pack_weights_only_where_it_pays():
    model = tiny_model(0)  # float64
    assert model.pack_weights() is False
    for dtype in (torch.float32, torch.bfloat16):
        packed = tiny_model(0, tie=True).to(dtype)
        table = packed.tok_embeddings.weight
        assert packed.pack_weights() is (dtype in packable_dtypes())
        assert packed.tok_embeddings.weight is table  # looked up, never packed
        assert (packed.output.weight is table) is (dtype not in packable_dtypes())  # a packed head: a copy of its own
        prompt = [1, 2, 3, 4, 5]
        plain = tiny_model(0, tie=True).to(dtype)
        if dtype is torch.float32:  # float32 rounding apart, the same model
            assert greedy_generate(packed, prompt, 12).tokens == greedy_generate(plain, prompt, 12).tokens
        logits = [m(torch.tensor(prompt), torch.arange(5), m.new_cache(8)).float() for m in (packed, plain)]
        torch.testing.assert_close(logits[0], logits[1], rtol=0.05, atol=0.05)


