"""The promise on a CUDA GPU: lookahead and Jacobi decoding emit greedy's tokens there too.

The same random tiny models, configs and budgets as test_lookahead.py, moved to the GPU:
float64, and float32 with TF32 off (TF32 rounds a product's inputs to 10 bits, differently
per batch shape: DESIGN §4). float64 greedy on the GPU is also held against the CPU's: the
two are different kernels, and in float64 these models have no near-ties to flip.
Runs only where a GPU is visible (`bench/gpu_session.sh` runs it on one).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_lookahead import budgets, configs, requests, tables, tiny_models

from minila import greedy_generate, jacobi_generate, lookahead_generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _full_precision_products():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@settings(max_examples=120, **SETTINGS)
@given(tiny_models(), configs, budgets(), st.sampled_from([torch.float64, torch.float32]), st.data())
def test_lookahead_equals_greedy_on_cuda(model, config, budget, dtype, data):
    model = model.to("cuda", dtype)
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    successors = data.draw(tables(model.args.vocab_size))
    greedy = greedy_generate(model, prompt, max_new, eos)
    look = lookahead_generate(model, prompt, max_new, config, eos, budget=budget, successors=successors)
    assert look.tokens == greedy.tokens
    assert look.stop_reason == greedy.stop_reason


@settings(max_examples=40, **SETTINGS)
@given(tiny_models(), st.integers(1, 10), st.integers(0, 99), st.data())
def test_jacobi_equals_greedy_on_cuda(model, block, seed, data):
    model = model.to("cuda", torch.float32)
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    assert jacobi_generate(model, prompt, max_new, block, eos, seed).tokens == greedy_generate(model, prompt, max_new, eos).tokens


@settings(max_examples=40, **SETTINGS)
@given(tiny_models(), st.data())
def test_float64_greedy_on_cuda_equals_the_cpus(model, data):
    prompt, max_new, eos = data.draw(requests(model.args.vocab_size))
    on_cpu = greedy_generate(model, prompt, max_new, eos).tokens
    assert greedy_generate(model.to("cuda"), prompt, max_new, eos).tokens == on_cpu
