"""GGUF -> HF folder: the q/k un-permutation, a full round trip through a small GGUF
written here the way llama.cpp writes one, and the facts of the converted SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import finish_gguf, gguf_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from minila.errors import MinilaError
from minila.llama.checkpoint import load_checkpoint
from minila.llama.convert import DEFAULT_CHAT_TEMPLATE, convert, hf_tensor_name, main, unpermute_qk
from minila.llama.model import apply_rope, rope_tables


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's HF->GGUF converter does to wq/wk rows: within each head, row
    j + c * head_dim/2 (HF's RoPE pair (j, j + hd/2)) moves to row 2j + c (pair (2j, 2j+1))."""
    out_features, in_features = w.shape
    return w.reshape(n_heads, 2, out_features // n_heads // 2, in_features).swapaxes(1, 2).reshape(w.shape)


# ------------------------------------------------------------------------- the q/k layout


@given(n_heads=st.integers(1, 6), half=st.integers(1, 8), in_features=st.integers(1, 5))
def test_unpermute_undoes_llama_cpp(n_heads, half, in_features):
    w = np.arange(n_heads * 2 * half * in_features, dtype=np.float32).reshape(n_heads * 2 * half, in_features)
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, n_heads), n_heads), w)
    assert np.array_equal(llama_cpp_permute(unpermute_qk(w, n_heads), n_heads), w)


def interleaved_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's RoPE: rotate pairs (2j, 2j+1) by position * theta^(-2j/hd). x: (heads, T, hd)."""
    hd = x.shape[-1]
    angles = positions[:, None].double() * theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # (T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


@settings(max_examples=25, deadline=None)
@given(n_heads=st.integers(1, 4), half=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_why_unpermute_is_right(n_heads, half, seed):
    """A GGUF's q rows with interleaved RoPE give the same attention inputs as the
    un-permuted rows with minila's rotate-half RoPE (up to the same row permutation)."""
    g = torch.Generator().manual_seed(seed)
    hd, t, dim = 2 * half, 5, 7
    w_gguf = torch.randn(n_heads * hd, dim, generator=g, dtype=torch.float64)
    w_hf = torch.from_numpy(unpermute_qk(w_gguf.numpy(), n_heads))
    x, pos = torch.randn(t, dim, generator=g, dtype=torch.float64), torch.arange(3, 3 + t)
    q_gguf = interleaved_rope((x @ w_gguf.T).view(t, n_heads, hd).transpose(0, 1), pos, 1e4)  # (H, T, hd)
    cos, sin = (table[pos].double() for table in rope_tables(hd, 16, 1e4))
    q_hf = apply_rope((x @ w_hf.T).view(t, n_heads, hd).transpose(0, 1), cos, sin)  # (H, T, hd)
    back = llama_cpp_permute(q_hf.transpose(0, 1).reshape(t, -1).T.numpy(), n_heads).T  # (T, H*hd), GGUF order
    np.testing.assert_allclose(back, q_gguf.transpose(0, 1).reshape(t, -1).numpy(), atol=1e-5)


def test_tensor_names():
    assert hf_tensor_name("blk.7.ffn_gate.weight") == "model.layers.7.mlp.gate_proj.weight"
    assert hf_tensor_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    with pytest.raises(MinilaError, match="rope_freqs"):
        hf_tensor_name("rope_freqs.weight")


# ------------------------------------------------------------------------- a small GGUF, end to end

CORPUS = [
    "Hello world, the year 2024 had 366 days.",
    "def square(x):\n    return x * x  # 12 * 12 = 144",
    "Lookahead decoding breaks the sequential dependency of LLM inference.",
    "café naïve 東京 😀 — ünïcödé",
] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _train_bpe():
    """A byte-level BPE with SmolLM's pre-tokenizer, the source of the GGUF's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _write_gguf(path: Path, hf_model, bpe, tie: bool) -> dict[str, np.ndarray]:
    """Write `hf_model` as llama.cpp would (GGUF names, permuted q/k, a Q8_0 embedding, an
    F16 tensor); return the weights a perfect converter must give back (HF names)."""
    import gguf
    from gguf.quants import dequantize, quantize

    c = hf_model.config
    w = gguf_writer(path, c, bpe, SPECIALS, arch="llama", pre="smollm", rope_base=5000.0, eps=1e-5, bos=1)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)

    expected = {}
    to_gguf = {v: k for k, v in {**{f"blk.{i}.{p}.weight": hf_tensor_name(f"blk.{i}.{p}.weight")
               for i in range(c.num_hidden_layers) for p in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
               "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")},
               "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}.items()}  # fmt: skip
    for name, tensor in hf_model.state_dict().items():
        if name == "lm_head.weight" and tie:
            continue
        a = tensor.numpy().astype(np.float32)
        gguf_name = to_gguf[name]
        stored = a
        if "q_proj" in name:
            stored = llama_cpp_permute(a, c.num_attention_heads)
        elif "k_proj" in name:
            stored = llama_cpp_permute(a, c.num_key_value_heads)
        if name == "model.embed_tokens.weight":  # quantized, as in the real file
            q = quantize(stored, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gguf_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            a = dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(a.shape)
        elif name == "model.layers.0.mlp.down_proj.weight":
            w.add_tensor(gguf_name, stored.astype(np.float16))
            a = a.astype(np.float16).astype(np.float32)
        else:
            w.add_tensor(gguf_name, stored)
        expected[name] = a
    finish_gguf(w)
    return expected


@pytest.fixture(scope="module")
def bpe():
    return _train_bpe()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def converted(request, bpe, tmp_path_factory):
    """(folder, expected HF weights, the source HF model) for a small GGUF converted by minila."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tie = request.param
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=5000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=tie,
    )  # fmt: skip
    torch.manual_seed(1)
    source = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # unit-scale weights so the logits are spread and a wrong layout shows
        for p in source.parameters():
            p.normal_(1.0 if p.ndim == 1 else 0.0, 0.3 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1]))
    tmp = tmp_path_factory.mktemp("gguf")
    expected = _write_gguf(tmp / "tiny.gguf", source, bpe, tie)
    lines: list[str] = []
    folder = convert(tmp / "tiny.gguf", tmp / "out", log=lines.append)
    assert len(lines) >= 4 and lines[-1].endswith("done: " + str(folder))  # one line per phase
    return folder, expected, tie


def test_converted_weights_are_the_source_weights(converted):
    from safetensors.numpy import load_file

    folder, expected, tie = converted
    got = load_file(folder / "model.safetensors")
    assert set(got) == set(expected)
    for name, a in expected.items():
        assert got[name].dtype == np.float32 and got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a, err_msg=name)


def test_converted_config(converted, bpe):
    folder, _, tie = converted
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]) == (64, 4, 2)
    assert (config["rope_theta"], config["rms_norm_eps"], config["max_position_embeddings"]) == (5000.0, 1e-5, 128)
    assert config["tie_word_embeddings"] is tie and config["vocab_size"] == bpe.get_vocab_size()
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == DEFAULT_CHAT_TEMPLATE  # the GGUF had none
    assert tok_config["added_tokens_decoder"]["1"]["content"] == "<|im_start|>"


def test_converted_logits_minila_equals_transformers(converted):
    from transformers import LlamaForCausalLM

    folder, _, tie = converted
    model, tok = load_checkpoint(folder, device="cpu")
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    ids = tok.encode("Hello world, 2024 had 366 days.")
    with torch.no_grad():
        ours = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)))
        theirs = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(text=st.lists(st.sampled_from(CORPUS[:4] + SPECIALS + [" 42"]) | st.text(max_size=8), max_size=6).map("".join))
def test_converted_tokenizer_equals_source(converted, bpe, text):
    from minila.llama.tokenizer import Tokenizer

    folder, _, _ = converted
    tok = Tokenizer.from_folder(folder)
    assert tok.encode(text) == bpe.encode(text).ids  # same vocabulary, merges, digit split, specials


def test_converted_tokenizer_loads_in_transformers(converted, bpe):
    from transformers import AutoTokenizer

    folder, _, _ = converted
    hf = AutoTokenizer.from_pretrained(folder)
    text = "<|im_start|>user\nWhat is 12 * 12?<|im_end|>"
    assert hf(text)["input_ids"] == bpe.encode(text).ids
    assert hf.eos_token == "<|im_end|>" and hf.bos_token == "<|im_start|>"


def test_cli(converted, tmp_path, capsys):
    folder, _, _ = converted
    gguf_file = folder.parent / "tiny.gguf"
    main(["--gguf", str(gguf_file), "--out", str(tmp_path / "cli")])
    assert "dequantizing" in capsys.readouterr().out
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit) as info:
        main(["--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x")])
    assert info.value.code == 1 and "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------- the real SmolLM2 folder


@pytest.mark.real_model
def test_smollm2_folder_facts(smollm2_dir):
    from safetensors import safe_open

    config = json.loads((smollm2_dir / "config.json").read_text())
    facts = {
        "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192, "vocab_size": 49152, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }  # fmt: skip
    assert {k: config[k] for k in facts} == facts
    with safe_open(smollm2_dir / "model.safetensors", "np") as f:
        names = list(f.keys())
        assert "lm_head.weight" not in names
        assert sum(math.prod(f.get_slice(n).get_shape()) for n in names) == 134_515_008
        assert f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape() == [192, 576]
        assert f.get_slice("model.layers.0.mlp.down_proj.weight").get_shape() == [576, 1536]
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "You are a helpful AI assistant named SmolLM, trained by Hugging Face" in tok_config["chat_template"]
    assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert sum(t["special"] for t in tok_config["added_tokens_decoder"].values()) == 17
    pre = json.loads((smollm2_dir / "tokenizer.json").read_text())["pre_tokenizer"]
    assert [p["type"] for p in pre["pretokenizers"]] == ["Digits", "ByteLevel"]


@pytest.mark.real_model
@pytest.mark.slow
def test_smollm2_perplexity(smollm2_dir, real_model):
    """The right q/k layout gives a low perplexity on plain English; a wrong one gives 65-450."""
    model, tok = real_model
    text = (
        "The history of the city goes back more than two thousand years. It was founded as a small trading "
        "post on the banks of a wide river, where merchants from the north and the south met to exchange "
        "grain, wool and salt. Over the centuries the settlement grew into a busy market town, and later into "
        "one of the largest cities in the region."
    )
    ids = torch.tensor(tok.encode(text))
    with torch.no_grad():
        logits = model(ids, torch.arange(len(ids)), model.new_cache(len(ids)))
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])
    assert math.exp(nll.item()) < 25
