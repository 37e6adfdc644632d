"""Lookahead parallelism: one request's steps spread over several processes or GPUs.

Reading order: `layout.py` (how a step is cut over K ranks: pure), `decoder.py` (one
rank's decoding loop and its one all-gather a step), `launch.py` (ranks started by
torchrun: devices, the process group, launch errors).

Imports: `minila.errors`, `llama/`, `decoding/`, `lookahead/` and this wing; never `cli/`.
The command lines under torchrun live in `cli/` (`generate_ranks.py`, `bench/main.py`).
"""
