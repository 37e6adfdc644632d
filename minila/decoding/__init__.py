"""Decoding one token per forward pass: the baseline and oracle every other loop is held to.

Reading order: `generation.py` (the `Generation` a loop returns, prefill, the request's
cache), `greedy.py` (KV-cached greedy decoding), `sampling.py` (sampling that keeps the
model's distribution, and the sampler lookahead's verification plugs in).

Imports: `minila.errors`, `llama/` and this wing; never `speed/`, `lookahead/` or above.
"""
