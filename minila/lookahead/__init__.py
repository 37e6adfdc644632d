"""The paper's algorithm: Lookahead Decoding (Fu et al., ICML 2024), one idea per module.

Reading order: `jacobi.py` (plain Jacobi decoding: the idea it starts from), `window.py`
(the 2-D lookahead window), `ngram_pool.py` (the n-gram pool and the copy lookup),
`masks.py` and `layout.py` (one step's rows, positions and branches; the mask from one
rule), `verify.py` (longest accepted prefix plus the bonus token), `loop.py` (the loop
that ties them together), `auto.py` (the limits `auto` decides within).

Imports: `minila.errors`, `llama/`, `decoding/`, `speed/` and this wing; never
`parallel/` or `cli/`.
"""
