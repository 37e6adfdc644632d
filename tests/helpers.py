"""Shared test utilities: tiny random models and an independent Hugging Face oracle.

- `tiny_model(seed, ...)`: a `minila.Transformer` with random weights whose logits are
  well spread, so argmax ties are practically impossible in float64 (and rare in float32).
- `hf_llama_from(model)`: a `transformers.LlamaForCausalLM` with the same config and
  our weights copied in: an independent implementation to compare logits and greedy
  tokens with (test-only; minila itself never imports transformers).
- `model_shapes()`: a hypothesis strategy of small valid configs, as keyword arguments
  for `tiny_model`: `tiny_model(seed, **shape)`.
"""

from __future__ import annotations

import math
import os

import torch
from hypothesis import strategies as st

from minila.llama.model import ModelArgs, Transformer


def examples(n: int) -> int:
    """n hypothesis examples, a quarter of them in `make test-isa`'s runs (the Makefile
    sets MINILA_ISA_RUN), which repeat the exactness tests once per CPU class."""
    return max(3, n // 4) if os.environ.get("MINILA_ISA_RUN") else n


ROPE_THETAS = (10000.0, 100000.0, 500000.0)


def tiny_model(
    seed: int,
    vocab: int = 64,
    dim: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    hidden_dim: int = 64,
    rope_theta: float = 10000.0,
    tie: bool = False,
    dtype: torch.dtype = torch.float64,
    max_seq_len: int = 128,
) -> Transformer:
    """A small Llama with random weights drawn from `seed` (global RNG untouched).

    Every linear is N(0, 1/in_features) so activations keep unit scale; embeddings are
    N(0, 1); the output head is N(0, 4/dim) so logits have a spread of about 2 (a
    tied head inherits the embedding scale, about sqrt(dim)). Norm weights are drawn
    from U(0.5, 1.5), not left at 1, so a swapped or dropped norm shows up in the logits.
    The same seed and shape give the same weights whatever `rope_theta`, `dtype` or
    `max_seq_len` are.
    """
    args = ModelArgs(
        vocab_size=vocab,
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=hidden_dim,
        rope_theta=rope_theta,
        max_seq_len=max_seq_len,
        tie_embeddings=tie,
    )
    with torch.random.fork_rng(devices=[]):  # nn.Linear's default init uses the global RNG
        model = Transformer(args)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied head is listed once, as the embedding
            if name.endswith("norm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float64))
            elif name == "tok_embeddings.weight":
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif name == "output.weight":
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * (2.0 / math.sqrt(dim)))
            else:  # a linear, (out, in)
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1]))
    return model.to(dtype).eval()


# Meta (minila) name -> HF name, per layer and global.
_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(name: str) -> str:
    """The HF Llama parameter name of a minila parameter name."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    _, i, rest = name.split(".", 2)  # "layers.3.attention.wq.weight"
    return f"model.layers.{i}.{_LAYER_NAMES[rest]}"


def hf_llama_from(model: Transformer, attn_implementation: str = "eager"):
    """A `transformers.LlamaForCausalLM` with `model`'s config, weights and dtype, in eval mode.

    minila's RoPE is HF's rotate-half form, so q/k need no permutation. HF's special
    token ids are cleared (no EOS unless `generate` is given one). Eager attention by
    default: a different kernel from the SDPA minila uses, so a more independent oracle.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    a = model.args
    config = LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.dim,
        intermediate_size=a.hidden_dim,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads,
        num_key_value_heads=a.n_kv_heads,
        head_dim=a.head_dim,
        max_position_embeddings=a.max_seq_len,
        rms_norm_eps=a.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(a.rope_theta)},
        tie_word_embeddings=a.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    # transformers 5 keeps theta under rope_parameters; make sure it landed there
    assert config.rope_parameters["rope_theta"] == float(a.rope_theta), config.rope_parameters
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):  # HF's random init uses the global RNG
        hf = LlamaForCausalLM(config)
    hf = hf.to(model.dtype).eval()

    ours = model.state_dict()  # Meta's names: a fused stack is listed as its matrices
    theirs = dict(hf.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, p in ours.items():
            target = theirs.pop(hf_name(name))
            if target.shape != p.shape:
                raise AssertionError(f"{name}: shape {tuple(p.shape)} vs HF {tuple(target.shape)}")
            target.copy_(p)
    if theirs:
        raise AssertionError(f"HF parameters left without a minila counterpart: {sorted(theirs)}")
    if a.tie_embeddings and hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr():
        raise AssertionError("HF did not tie lm_head to embed_tokens")
    return hf


@st.composite
def model_shapes(draw) -> dict:
    """Keyword arguments for `tiny_model`: small valid configs, grouped-query attention
    included (n_kv_heads divides n_heads), head_dim even, tied or untied heads, and the
    rope thetas of real checkpoints (1e4 Llama-2, 1e5 SmolLM2, 5e5 Llama-3)."""
    n_kv_heads = draw(st.integers(1, 2))
    group = draw(st.integers(1, 3))  # query heads per kv head
    n_heads = n_kv_heads * group
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return dict(
        vocab=draw(st.integers(8, 64)),
        dim=n_heads * head_dim,
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=draw(st.integers(4, 48)),
        rope_theta=draw(st.sampled_from(ROPE_THETAS)),
        tie=draw(st.booleans()),
    )


def gguf_writer(path, config, bpe, specials, *, arch: str, pre: str, rope_base: float, eps: float, bos: int):
    """A `gguf.GGUFWriter` holding a transformers `config`'s shape and the BPE tokenizer
    `bpe` (`specials` typed as control tokens), as llama.cpp writes them; add the tensors,
    then `finish_gguf`."""
    import json

    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(config.num_hidden_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    model_json = json.loads(bpe.to_str())["model"]
    tokens = sorted(model_json["vocab"], key=model_json["vocab"].get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model_json["merges"]])
    w.add_bos_token_id(bos)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    return w


def finish_gguf(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

