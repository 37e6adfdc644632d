"""The width-invariant forward (invariant.py, attention.py). Its promise, stated directly:
every row of a wide forward equals, bit for bit, the row of the same token fed one
token at a time after its chain (greedy decoding's forward), so lookahead equals greedy
bitwise in bfloat16. Oracles: the one-token-at-a-time forward, and the plain kernel
(same values to rounding; tightly in float64). Every check runs with the chunking the
probe (probe.py) picks on the machine that runs it, in the dtypes that machine runs the
invariant forward in; facts about one CPU's kernels are skipped, naming it, elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import examples, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minila import LookaheadConfig, MinilaError, greedy_generate, lookahead_generate
from minila.llama.attention import BLOCK, InvariantAttention, PlainAttention
from minila.llama.chunked import InvariantLinear
from minila.llama.invariant import (
    WIDTH,
    choose_forward,
    guarantee,
    invariant_ok,
    make_width_invariant,
    why_not_invariant,
)
from minila.llama.model import Linear
from minila.llama.probe import MAX_ROWS, TILES, chunking_for, cpu_name, probe_product
from minila.lookahead.layout import candidate_tree, step_layout
from minila.lookahead.masks import ancestor_mask, depths

CPU = torch.device("cpu")
# the dtypes the invariant forward runs in on this CPU (bfloat16: where oneDNN's products are native)
DTYPES = [dt for dt in (torch.bfloat16, torch.float32) if invariant_ok(dt, CPU)]
pytestmark = pytest.mark.skipif(not DTYPES, reason=f"no oneDNN here: {why_not_invariant(torch.float32, CPU)}")
needs_bf16 = pytest.mark.skipif(
    torch.bfloat16 not in DTYPES, reason=f"this CPU: {why_not_invariant(torch.bfloat16, CPU)}"
)


def invariant_here(model):
    """`make_width_invariant(model)`, or a skip naming what the probe found not invariant here."""
    problem = chunking_for(model.args, model.dtype).problem
    if problem:
        pytest.skip(f"the probe found: {problem} (so --forward invariant refuses here)")
    return make_width_invariant(model)


@st.composite
def invariant_models(draw, max_seq_len: int = 256):
    """Tiny bfloat16 or float32 models with the invariant forward. Widths of at least 128
    keep every matrix product above PyTorch's size threshold for oneDNN (a one-row
    product below it takes another kernel; attention._product pads the attention's own
    products); an FFN of 1152 has its down projection sliced (InvariantLinear)."""
    n_heads, n_kv_heads = draw(st.sampled_from([(4, 2), (2, 1), (4, 4), (3, 1), (6, 2)]))
    head_dim = draw(st.sampled_from([32, 64]))
    step = math.lcm(WIDTH, n_heads)  # every width a multiple of 64, as in every Llama (invariant.WIDTH)
    dim = -(-max(n_heads * head_dim, 128) // step) * step
    model = tiny_model(
        draw(st.integers(0, 10_000)), vocab=draw(st.sampled_from([64, 128])), dim=dim, n_heads=n_heads,
        n_kv_heads=n_kv_heads, n_layers=draw(st.integers(1, 2)), hidden_dim=draw(st.sampled_from([64, 128, 1152])),
        max_seq_len=max_seq_len, dtype=draw(st.sampled_from(DTYPES)),
    )  # fmt: skip
    with torch.no_grad():  # a peaky head makes text repetitive, so that candidates get accepted
        model.output.weight.mul_(draw(st.sampled_from([1.0, 4.0]), label="peak"))
    return invariant_here(model)  # packs the matrices: change no weight after this


@st.composite
def step_parents(draw) -> tuple[int, ...]:
    """A step's parent tree: a real lookahead layout (window + candidate tree) or any tree."""
    if draw(st.booleans()):
        cands = draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=4), max_size=4))
        return step_layout(draw(st.integers(1, 5)), draw(st.integers(1, 3)), candidate_tree(cands).parents).parents
    t = draw(st.integers(1, 48))  # past MAX_ROWS: products fed in row chunks
    return (-1, *(draw(st.integers(-1, i - 1)) for i in range(1, t)))


@torch.inference_mode()
def one_token_at_a_time_logits(model, prefix: list[int], step: list[int], parents) -> torch.Tensor:
    """Greedy's forward for every step row: the prefix, then the row's chain, one token
    per forward into a cache that holds exactly what came before. (T, vocab)"""
    cache = model.new_cache(len(prefix) + len(step))
    for i, tok in enumerate(prefix):
        model(torch.tensor([tok]), torch.tensor([i]), cache)
        cache.commit()
    rows = []
    for i in range(len(step)):
        chain = []
        while i >= 0:
            chain.append(step[i])
            i = parents[i]
        cache.truncate(len(prefix))
        for k, tok in enumerate(reversed(chain)):
            logits = model(torch.tensor([tok]), torch.tensor([len(prefix) + k]), cache)[0]
            cache.commit()
        rows.append(logits)
    return torch.stack(rows)


@torch.inference_mode()
def wide_logits(model, prefix: list[int], step: list[int], parents, chunks: int) -> torch.Tensor:
    """The prefix fed in `chunks` causal forwards (a prefill, then wide steps), then the
    whole step in one forward under its ancestor mask. (T, vocab)"""
    cache = model.new_cache(len(prefix) + len(step))
    bounds = torch.linspace(0, len(prefix), chunks + 1).long().tolist()
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            model(torch.tensor(prefix[a:b]), torch.arange(a, b), cache)
            cache.commit()
    positions = len(prefix) + torch.tensor(depths(parents))
    return model(torch.tensor(step), positions, cache, ancestor_mask(parents))


@pytest.mark.isa
@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invariant_models(), step_parents(), st.integers(1, 2 * BLOCK + 20), st.integers(1, 3), st.data())
def test_every_row_of_a_wide_step_equals_the_one_token_forward_bitwise(model, parents, prefix_len, chunks, data):
    vocab = model.args.vocab_size
    tokens = data.draw(st.lists(st.integers(0, vocab - 1), min_size=prefix_len + len(parents),
                                max_size=prefix_len + len(parents)), label="tokens")  # fmt: skip
    prefix, step = tokens[:prefix_len], tokens[prefix_len:]
    wide = wide_logits(model, prefix, step, parents, chunks)
    alone = one_token_at_a_time_logits(model, prefix, step, parents)
    for i in range(len(step)):
        assert torch.equal(wide[i], alone[i]), f"row {i} (parents {parents}) differs from its one-token forward"


@needs_bf16
def test_the_plain_kernel_is_not_width_invariant_in_bfloat16():
    """Why the invariant kernel exists: with the fused kernel the same comparison fails,
    on every CPU measured so far (Zen 5, Xeon with AMX); where it does not, that is
    reported as a skip naming the CPU, not asserted as universal."""
    parents = step_layout(5, 4, candidate_tree([[1, 2, 3], [1, 4], [5, 6, 7]]).parents).parents
    differ = {"plain": 0, "invariant": 0}
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, 64, (150 + len(parents),), generator=gen).tolist()
        prefix, step = tokens[:150], tokens[150:]
        for forward in ("plain", "invariant"):
            model = choose_forward(tiny_model(seed, vocab=64, dim=128, n_heads=4, n_kv_heads=2, hidden_dim=128,
                                              dtype=torch.bfloat16, max_seq_len=256), forward)  # fmt: skip
            wide = wide_logits(model, prefix, step, parents, 1)
            alone = one_token_at_a_time_logits(model, prefix, step, parents)
            differ[forward] += sum(not torch.equal(wide[i], alone[i]) for i in range(len(step)))
    assert differ["invariant"] == 0, differ
    if differ["plain"] == 0:
        pytest.skip(f"on this CPU ({cpu_name()}) the fused kernel gave every row greedy's bits on these steps")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), step_parents(), st.integers(0, 2 * BLOCK + 20), st.data())
def test_both_kernels_compute_the_same_attention(seed, parents, prefix_len, data):
    """Same values: to float64 rounding in float64, to bfloat16 rounding in bfloat16."""
    vocab = 64
    tokens = data.draw(st.lists(st.integers(0, vocab - 1), min_size=prefix_len + len(parents),
                                max_size=prefix_len + len(parents)), label="tokens")  # fmt: skip
    prefix, step = tokens[:prefix_len], tokens[prefix_len:]
    for dtype, tol in ((torch.float64, 1e-10), (torch.bfloat16, 0.1)):
        model = tiny_model(seed, vocab=vocab, dim=128, n_heads=4, n_kv_heads=2, hidden_dim=64, dtype=dtype,
                           max_seq_len=256)  # fmt: skip
        out = {}
        for kernel in (PlainAttention(), InvariantAttention(), InvariantAttention(TILES[-1])):  # padded; tiled
            model.attention_kernel = kernel
            out[kernel] = wide_logits(model, prefix, step, parents, 2).double()
        plain, *invariant = out.values()
        for other in invariant:
            torch.testing.assert_close(other, plain, rtol=tol, atol=tol)


configs = st.builds(
    LookaheadConfig, window=st.integers(1, 6), ngram=st.integers(2, 5), guess=st.integers(0, 6),
    seed=st.integers(0, 1000), warmup=st.sampled_from(["fill", "seed"]), copy=st.sampled_from([0, 0, 3, 10]),
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.isa
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invariant_models(max_seq_len=160), configs, st.data())
def test_lookahead_equals_greedy_bitwise_in_bfloat16_and_float32(model, config, data):
    vocab = model.args.vocab_size
    alphabet = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=6, unique=True), label="alphabet")
    prompt = data.draw(st.lists(st.sampled_from(alphabet), min_size=1, max_size=70), label="prompt")
    max_new = data.draw(st.integers(1, 64), label="max_new")
    greedy = greedy_generate(model, prompt, max_new)
    look = lookahead_generate(model, prompt, max_new, config)
    assert look.tokens == greedy.tokens


ROWS = 2 * MAX_ROWS + 7  # three row chunks, the last one short


@pytest.mark.isa
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_in", [192, 1088, 1536, 2560])
def test_an_invariant_product_gives_every_row_the_same_bits_whatever_the_row_count(dtype, n_in):
    """With the chunking the probe picks here, on other data and wider calls than it tried."""
    gen = torch.Generator().manual_seed(n_in)
    with torch.no_grad():
        max_rows, max_inner = probe_product(n_in, 192, dtype, torch.Generator().manual_seed(1))
    linear = Linear(n_in, 192).requires_grad_(False)
    linear.weight.copy_(torch.randn(192, n_in, generator=gen) / n_in**0.5)
    linear = linear.to(dtype)
    product = InvariantLinear(linear, max_inner=max_inner, max_rows=max_rows)
    assert all(s.stop - s.start <= max_inner for s in product.slices)
    x = torch.randn(ROWS, n_in, generator=gen).to(dtype)
    wide = product(x)
    for rows in sorted({1, 2, 5, max_rows, max_rows + 1}):
        assert torch.equal(torch.cat([product(x[i : i + rows]) for i in range(0, ROWS, rows)]), wide), rows
    torch.testing.assert_close(wide.float(), linear(x).float(), rtol=0.02, atol=0.02)


def test_a_plain_product_is_not_row_invariant_which_is_why_they_are_cut():
    """Why InvariantLinear exists: over the dtypes, a packed product with a long inner
    length or many rows rounds some rows of a wide call differently from a one-row call
    (which one depends on the CPU: AVX512-BF16 blocks long inner lengths, AMX takes over
    bfloat16 calls of more than 32 rows, float32 blocks inner lengths above 1024). Where
    no dtype shows it, that is a fact about this CPU: reported as a skip naming it."""
    gen = torch.Generator().manual_seed(0)
    differ = []
    for dtype in DTYPES:
        linear = Linear(1536, 192).requires_grad_(False)
        linear.weight.copy_(torch.randn(192, 1536, generator=gen) / 1536**0.5)
        linear = linear.to(dtype)
        linear.pack()
        x = torch.randn(ROWS, 1536, generator=gen).to(dtype)
        differ.append(not torch.equal(linear(x), torch.cat([linear(x[i : i + 1]) for i in range(ROWS)])))
    if not any(differ):
        pytest.skip(f"on this CPU ({cpu_name()}) a packed product of {ROWS} rows gave every row a one-row call's bits")


@pytest.mark.isa
def test_auto_picks_the_invariant_forward_for_bfloat16_only():
    assert not invariant_ok(torch.float64, CPU)
    bf16 = choose_forward(tiny_model(0, dim=128, hidden_dim=1152, dtype=torch.bfloat16), "auto")
    where = torch.bfloat16 in DTYPES and not chunking_for(bf16.args, torch.bfloat16).problem  # this CPU
    assert (bf16.attention_kernel.name == "invariant") is where
    assert isinstance(bf16.layers[0].feed_forward.w2, InvariantLinear) is where
    assert guarantee(bf16).startswith("bitwise" if where else "none")
    fp32 = choose_forward(tiny_model(0, dim=128, hidden_dim=1152, dtype=torch.float32), "auto")
    assert fp32.attention_kernel.name == "plain" and isinstance(fp32.layers[0].feed_forward.w2, Linear)
    assert guarantee(fp32).startswith("not by construction")
    odd = choose_forward(tiny_model(0, dim=128, hidden_dim=40, dtype=torch.bfloat16), "auto")  # SiLU's tail
    assert odd.attention_kernel.name == "plain"
    with pytest.raises(MinilaError, match="multiple of 64"):
        make_width_invariant(tiny_model(0, dim=128, hidden_dim=40, dtype=torch.float32))
    assert choose_forward(tiny_model(0, dim=64, dtype=torch.float32), "invariant").attention_kernel.name == "invariant"
    with pytest.raises(MinilaError, match="unknown forward 'fast'"):
        choose_forward(tiny_model(0), "fast")
