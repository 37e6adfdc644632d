"""The model underneath: a Llama written out, and everything that gets one into memory.

Reading order: `model.py` (RMSNorm, RoPE by explicit positions, attention with an
explicit mask, SwiGLU; `forward(tokens, positions, cache, mask, logits_for)`), `rope.py`,
`kv_cache.py` (slots are not positions: `commit(rows)`, `truncate`), `attention.py` and
`invariant.py` (the fused attention kernel, and the forward whose rows do not depend on
the step's width), `checkpoint.py`, `tokenizer.py`, `files.py` (HF-format folders in),
`convert.py` (GGUF to an HF-format folder).

Imports: only `minila.errors` and this wing. The model knows nothing about decoding.
"""
