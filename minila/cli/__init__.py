"""The tools on top: the command line, the conversation and the benchmark.

`generate.py` (`python -m minila.generate`), `generate_ranks.py` (the same under torchrun),
`chat.py` (the interactive conversation that extends its KV cache), `common.py` (what
they share), `bench/` (`python -m minila.bench`: methods, decoders and transformers
peers, the interleaved run, the report, and its prompts).

Imports: anything below. Nothing in the other wings imports this one.
"""
