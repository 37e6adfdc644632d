"""The benchmark (`python -m minila.bench`): `methods.py` parses `--configs`, `decoders.py`
builds one decoder per method (minila's and transformers' peers), `interleaved.py` runs
them over the prompts in rotating order and summarises, `report.py` writes the tables,
plots and the cost curve, `prompts.py` reads the datasets, `main.py` is the command line.
"""
