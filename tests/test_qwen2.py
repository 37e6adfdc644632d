"""Qwen2 (a Llama with q/k/v biases) on a tiny random checkpoint, end to end.

A random transformers `Qwen2ForCausalLM` is written as a GGUF the way llama.cpp writes
one for architecture qwen2 (biases as F32 tensors, q/k rows NOT permuted, K-quants and
Q5_0/Q8_0 matrices as in the Q4_K_M file), with a byte-level BPE trained here under
Qwen2's pre-tokenizer; minila's converter turns it into an HF folder. Oracles:
transformers' Qwen2ForCausalLM on that folder (logits, greedy tokens) and a plain-Python
BPE encoder (tests/reference_bpe.py) for the tokenizer.
"""

from __future__ import annotations

import json
import math
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import finish_gguf, gguf_writer
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_bpe import ReferenceBPE

from minila.decoding.greedy import greedy_generate
from minila.llama.checkpoint import args_from_hf_config, load_checkpoint
from minila.llama.convert import QWEN2_SPLIT, convert
from minila.lookahead.loop import LookaheadConfig, lookahead_generate

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# mixed text for the tokenizer: code, digit runs, CJK, whitespace runs, contractions, combining marks
PIECES = [
    "def f(x):\n    return x ** 2\n", "for i in range(10):\n\tprint(i)", "2024-12-04 12345678", "东京 日本語のテキスト",
    "  \n\n   spaces\t\ttabs", "It's we'll they'D", "café Café", "e\u0301 n\u0303", "{a: [1, 2]}", "x+=1;", "你好，世界！",
]  # fmt: skip
CORPUS = [" ".join(random.Random(i).sample(PIECES, 5)) for i in range(200)]


def _train_qwen2_bpe():
    """A byte-level BPE trained under Qwen2's pre-tokenizer: NFC, Qwen2's split, bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _k_quant_bytes(qtype, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random but valid blocks of a K-quant (gguf-py cannot quantize these): random bytes,
    with the block's float16 scale(s) set to small finite values."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(shape[0], shape[1] // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d and dmin lead the block
        raw[..., 0:2], raw[..., 2:4] = scale, scale
    else:  # Q6_K: d ends the block
        raw[..., -2:] = scale
    return raw.reshape(shape[0], -1)


def _write_qwen2_gguf(path: Path, hf_model, bpe) -> dict[str, np.ndarray]:
    """`hf_model` as llama.cpp writes a qwen2 GGUF; returns the weights a perfect converter gives back."""
    import gguf
    from gguf.quants import dequantize, quantize

    c, q = hf_model.config, gguf.GGMLQuantizationType
    w = gguf_writer(path, c, bpe, SPECIALS, arch="qwen2", pre="qwen2", rope_base=1e6, eps=1e-6, bos=0)

    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    glob = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}  # fmt: skip
    rng = np.random.default_rng(0)
    # the quantization of each matrix, as in the Q4_K_M file (the rest stay F32)
    quantized = {"model.embed_tokens.weight": q.Q5_0, "lm_head.weight": q.Q8_0,
                 "model.layers.0.self_attn.v_proj.weight": q.Q8_0, "model.layers.1.self_attn.q_proj.weight": q.Q5_0,
                 "model.layers.0.mlp.down_proj.weight": q.Q6_K, "model.layers.1.mlp.down_proj.weight": q.Q4_K}  # fmt: skip
    expected = {}
    for name, tensor in hf_model.state_dict().items():
        a = tensor.numpy().astype(np.float32)
        if name in glob:
            gguf_name = glob[name]
        else:
            _, _, i, rest = name.split(".", 3)  # model.layers.{i}.{part}.{weight|bias}
            part, kind = rest.rsplit(".", 1)
            gguf_name = f"blk.{i}.{parts[part]}.{kind}"
        qtype = quantized.get(name)
        if qtype in (q.Q6_K, q.Q4_K):
            raw = _k_quant_bytes(qtype, a.shape, rng)
            w.add_tensor(gguf_name, raw, raw_dtype=qtype)
            a = dequantize(raw, qtype).reshape(a.shape)
        elif qtype is not None:
            raw = quantize(a, qtype)
            w.add_tensor(gguf_name, raw, raw_dtype=qtype)
            a = dequantize(raw, qtype).reshape(a.shape)
        else:
            w.add_tensor(gguf_name, a)
        expected[name] = a
    finish_gguf(w)
    return expected


@pytest.fixture(scope="module")
def bpe():
    return _train_qwen2_bpe()


@pytest.fixture(scope="module")
def qwen2(bpe, tmp_path_factory):
    """(converted folder, the weights it must hold, the tokenizer's ReferenceBPE)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(2)
    source = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # spread weights and large biases, so a bias missed or added twice shows
        for name, p in source.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 1.0)
            else:
                p.normal_(1.0 if p.ndim == 1 else 0.0, 0.3 if p.ndim == 1 else 1.0 / math.sqrt(p.shape[-1]))
    tmp = tmp_path_factory.mktemp("qwen2")
    expected = _write_qwen2_gguf(tmp / "tiny.gguf", source, bpe)
    folder = convert(tmp / "tiny.gguf", tmp / "out", log=lambda line: None)
    model_json = json.loads(bpe.to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model_json["merges"]]
    return folder, expected, ReferenceBPE(model_json["vocab"], merges, SPECIALS)


@pytest.fixture(scope="module")
def hf_qwen2(qwen2):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM.from_pretrained(qwen2[0], attn_implementation="eager").eval()


# ------------------------------------------------------------------------- config and conversion


# Qwen2.5-Coder-0.5B-Instruct's config.json as HF publishes it (the fields that matter)
QWEN25_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
    "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 24, "tie_word_embeddings": True,
    "vocab_size": 151936, "attention_dropout": 0.0,
}  # fmt: skip


def test_args_from_qwen25_config():
    a = args_from_hf_config(QWEN25_CONFIG)
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim, a.head_dim) == (896, 24, 14, 2, 4864, 64)
    assert (a.rope_theta, a.norm_eps, a.qkv_bias, a.max_seq_len) == (1e6, 1e-6, True, 32768)
    # a sliding window that never applies (no layer slides, or it spans the context) is full attention
    assert args_from_hf_config({**QWEN25_CONFIG, "use_sliding_window": True, "max_window_layers": 24}).qkv_bias
    assert args_from_hf_config({**QWEN25_CONFIG, "use_sliding_window": True, "max_window_layers": 4}).qkv_bias


def test_converted_weights_and_config(qwen2):
    from safetensors.numpy import load_file

    folder, expected, _ = qwen2
    got = load_file(folder / "model.safetensors")
    assert set(got) == set(expected) and "model.layers.1.self_attn.k_proj.bias" in got
    for name, a in expected.items():  # q/k rows as stored: llama.cpp permutes only for architecture llama
        np.testing.assert_array_equal(got[name], a, err_msg=name)
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["tie_word_embeddings"]) == (
        "qwen2", ["Qwen2ForCausalLM"], False)  # fmt: skip
    assert (config["rope_theta"], config["rms_norm_eps"], config["use_sliding_window"]) == (1e6, 1e-6, False)


# ------------------------------------------------------------------------- the model against transformers


@pytest.mark.parametrize("forward", ["plain", "invariant"])
def test_logits_equal_transformers(qwen2, hf_qwen2, forward):
    """Both forwards add each bias once (the invariant one slices products, never the bias)."""
    model, tok = load_checkpoint(qwen2[0], device="cpu", forward=forward)
    assert model.args.qkv_bias and not model.args.tie_embeddings
    ids = tok.encode("def f(x):\n    return x ** 2  # 東京 2024")
    with torch.no_grad():
        ours = model(torch.tensor(ids), torch.arange(len(ids)), model.new_cache(len(ids)))
        theirs = hf_qwen2(torch.tensor([ids])).logits[0]
    assert theirs.std() > 0.5  # spread logits: a wrong bias or layout would show
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)


def test_greedy_and_lookahead_equal_transformers(qwen2, hf_qwen2):
    model, tok = load_checkpoint(qwen2[0], device="cpu")
    prompt = tok.encode("<|im_start|>user\nfor i in range(10):<|im_end|>\n<|im_start|>assistant\n")
    with torch.no_grad():
        theirs = hf_qwen2.generate(torch.tensor([prompt]), max_new_tokens=60, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)[0, len(prompt):].tolist()  # fmt: skip
    assert greedy_generate(model, prompt, 60).tokens == theirs
    config = LookaheadConfig(window=4, ngram=3, guess=4, copy=4)
    assert lookahead_generate(model, prompt, 60, config).tokens == theirs
    model, _ = load_checkpoint(qwen2[0], device="cpu", forward="invariant")
    assert lookahead_generate(model, prompt, 60, config).tokens == theirs


# ------------------------------------------------------------------------- the tokenizer

MIXED = st.lists(st.sampled_from(PIECES + SPECIALS + [" 42", "\n\n", "    ", "'s", "🙂"]) | st.text(max_size=6), max_size=6)


@settings(max_examples=60, deadline=None)
@given(text=MIXED.map("".join))
def test_tokenizer_equals_reference_bpe(qwen2, text):
    from minila.llama.tokenizer import Tokenizer

    folder, _, reference = qwen2
    tok = Tokenizer.from_folder(folder)
    ids = tok.encode(text)
    assert ids == reference.encode(text)  # the split, NFC, the merges and the special tokens
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_tokenizer_splits_digits_and_keeps_specials(qwen2):
    from minila.llama.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(qwen2[0])
    digits = [tok.encode(d) for d in "0123456789"]
    assert all(len(d) == 1 for d in digits) and tok.encode("2024") == [d[0] for d in (digits[2], digits[0], digits[2], digits[4])]
    assert tok.encode("a<|im_end|>")[-1] == 2 and tok.eos_ids == [2]
