"""What makes lookahead pay on this machine: deciding what a step feeds, and remembering.

Reading order: `budget.py` (before every step, what to feed: each offer's learned chance
against the price of its rows), `cost_curve.py` (that price: a forward of T tokens,
measured here and cached), `memory.py` (n-grams of earlier answers, kept across runs),
`roofline.py` (the machine's bandwidth and arithmetic bounds, for the bench).

Imports: `minila.errors`, `llama/` and this wing; never `decoding/`, `lookahead/` or above.
The paper's loop (`lookahead/loop.py`) takes a budget and a memory from here.
"""
