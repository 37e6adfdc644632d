"""GGUF -> HF-format folder, so a llama.cpp file can be loaded like any HF checkpoint.

    python -m minila.convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out weights/smollm2-135m-instruct

writes config.json, generation_config.json, model.safetensors (float32),
tokenizer.json and tokenizer_config.json. Three things need care:

1. Tensor layout. `gguf.quants.dequantize` gives float32 arrays already in HF's
   (out_features, in_features) layout, whatever the quantization (Q4_1, Q8_0, the
   K-quants Q4_K/Q6_K, Q5_0, ...). For architecture "llama", llama.cpp's converter
   permuted the rows of wq and wk, head by head, for its interleaved RoPE (pairs
   (0,1), (2,3), ...). HF and minila rotate the pairs (i, i + head_dim/2), so
   `unpermute_qk` undoes that. For "qwen2" llama.cpp permutes nothing (its RoPE for
   qwen2 is the NEOX kind, which is rotate-half), so the rows are kept: the logits
   test against transformers in tests/test_qwen2.py is what settles it.
2. The tokenizer. The GGUF stores the BPE vocabulary and merges; the pre-tokenizer
   is only a name (`tokenizer.ggml.pre`), so we rebuild it: for "smollm", every digit
   on its own, then the GPT-2 byte-level regex; for "qwen2", NFC, then Qwen2's regex
   (letters, single digits, punctuation runs, newlines), then bytes.
3. Control tokens (token_type 3) are special added tokens, so "<|im_start|>" in text
   encodes to its id.

Only what minila can run is converted (architectures "llama" and "qwen2", byte-level
BPE, plain RoPE); anything else stops with a MinilaError rather than writing a wrong folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from minila.errors import MinilaError

# SmolLM's chat template, used when the GGUF carries none
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# GGUF tensor names -> HF names; per-layer parts live under blk.{i}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",  # a "blk.{i}.{part}.weight" (q, k and v also ".bias" in qwen2)
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types that become added tokens
_BIASED = ("attn_q", "attn_k", "attn_v")  # the parts that carry a bias in qwen2

# Qwen2's pre-tokenizer split (the same rule llama.cpp applies for pre = "qwen2"): English
# contractions, letter runs with one leading non-letter, every digit alone, punctuation
# runs with their newlines, newline runs, then whitespace
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of wq/wk: (n_heads*head_dim, in) -> same.

    llama.cpp stores each head's rows as (head_dim/2, 2): row 2j and 2j+1 are a RoPE
    pair. HF's layout is (2, head_dim/2): the pair is j and j + head_dim/2.
    """
    out_features, in_features = w.shape
    half = out_features // n_heads // 2
    w = w.reshape(n_heads, half, 2, in_features)  # (H, hd/2, 2, in): llama.cpp's pairs
    return w.swapaxes(1, 2).reshape(out_features, in_features)  # (H, 2, hd/2, in) flattened


def hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")  # blk, i, part, weight|bias
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        if parts[3] == "weight" or (parts[3] == "bias" and parts[2] in _BIASED):
            return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise MinilaError(
        f"GGUF tensor {gguf_name!r} has no Llama or Qwen2 counterpart minila knows "
        "(rope_freqs, biases other than q/k/v, MoE experts are not supported); use a plain Llama or Qwen2 GGUF"
    )


# ------------------------------------------------------------------------- reading the GGUF


def _open_gguf(path: Path):
    """A `gguf.GGUFReader` whose file buffer is a plain ndarray view of the memory map.

    The reader slices its buffer once per vocabulary string (~100k times), and numpy's
    memmap subclass makes each slice slow: this cuts parsing from ~4 s to ~1 s.
    """
    import gguf

    class Reader(gguf.GGUFReader):
        @property
        def data(self) -> np.ndarray:
            return self._buffer

        @data.setter
        def data(self, value: np.ndarray) -> None:
            self._buffer = value.view(np.ndarray)  # keeps the memmap alive as its base

    return Reader(path)


def _field(reader, key: str, default=None):
    """A metadata value: a scalar, a string, or a list of either."""
    field = reader.fields.get(key)
    if field is None:
        return default
    import gguf

    def value(part):
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        return part[0].item()

    values = [value(field.parts[i]) for i in field.data]
    return values if field.types[0] == gguf.GGUFValueType.ARRAY else values[0]


def _short_float(x: float) -> float:
    """GGUF stores float32: 1e-5 reads back as 9.99999975e-06. Keep the short decimal."""
    return float(str(np.float32(x)))


def read_hparams(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise MinilaError(f"GGUF architecture is {arch!r}; minila converts only 'llama' and 'qwen2' models")
    key = lambda name: f"{arch}.{name}"  # noqa: E731
    hp = {
        "arch": arch,
        "dim": _field(reader, key("embedding_length")),
        "n_layers": _field(reader, key("block_count")),
        "hidden_dim": _field(reader, key("feed_forward_length")),
        "n_heads": _field(reader, key("attention.head_count")),
        "n_kv_heads": _field(reader, key("attention.head_count_kv")),
        "rope_theta": _short_float(_field(reader, key("rope.freq_base"), 10000.0)),
        "norm_eps": _short_float(_field(reader, key("attention.layer_norm_rms_epsilon"))),
        "context": _field(reader, key("context_length")),
        "vocab_size": _field(reader, key("vocab_size")),
    }
    if None in (hp["dim"], hp["n_layers"], hp["hidden_dim"], hp["n_heads"], hp["norm_eps"], hp["context"]):
        raise MinilaError(f"the GGUF lacks {arch} hyperparameters (embedding_length, block_count, ...); is it complete?")
    if hp["n_kv_heads"] is None:
        hp["n_kv_heads"] = hp["n_heads"]
    head_dim = hp["dim"] // hp["n_heads"]
    for name in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if _field(reader, key(name), head_dim) != head_dim:
            raise MinilaError(f"GGUF {key(name)} differs from embedding_length / head_count; minila cannot run it")
    scaling = _field(reader, key("rope.scaling.type"), "none")
    if scaling != "none":
        raise MinilaError(f"GGUF uses RoPE scaling {scaling!r}, which minila does not implement")
    return hp


def read_weights(reader, hp: dict, workers: int | None = None) -> dict[str, np.ndarray]:
    """Every tensor as float32 in HF layout and under its HF name."""
    from gguf.quants import dequantize

    def one(tensor) -> tuple[str, np.ndarray]:
        name = hf_tensor_name(tensor.name)
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims innermost first
        w = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        if hp["arch"] == "llama" and name.endswith("q_proj.weight"):  # only llama's rows were permuted (see above)
            w = unpermute_qk(w, hp["n_heads"])
        elif hp["arch"] == "llama" and name.endswith("k_proj.weight"):
            w = unpermute_qk(w, hp["n_kv_heads"])
        return name, np.ascontiguousarray(w)  # a copy: never a view into the memory-mapped file

    # dequantizing is numpy work that releases the GIL, so threads help
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return dict(pool.map(one, reader.tensors))


# ------------------------------------------------------------------------- the tokenizer


def build_tokenizer(tokens: list[str], merges: list[str], token_types: list[int], pre: str, add_bos: bool, bos: int):
    """A `tokenizers.Tokenizer` for a GGUF byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if pre not in ("smollm", "qwen2", "gpt2", "default"):
        raise MinilaError(
            f"GGUF pre-tokenizer {pre!r} is not supported (only 'smollm', 'qwen2' and 'gpt2'): "
            "its split rules would have to be rebuilt by hand"
        )
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=[tuple(m.split(" ")) for m in merges],  # stored as "left right"
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # split off every digit before the GPT-2 regex sees the text
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "qwen2":  # Qwen2's own regex, then bytes (the GPT-2 regex must not split again)
        tok.normalizer = normalizers.NFC()  # as Qwen2's own tokenizer.json
        split = pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False)
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    post = processors.ByteLevel(trim_offsets=False)
    if add_bos:
        b = tokens[bos]
        bos_template = processors.TemplateProcessing(single=f"{b} $A", pair=f"{b} $A {b} $B", special_tokens=[(b, bos)])
        post = processors.Sequence([post, bos_template])
    tok.post_processor = post
    # added tokens keep their vocabulary ids; control tokens are special (skipped by decode(skip_special_tokens))
    typed = list(zip(tokens, token_types))
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t, k in typed if k == _USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, k in typed if k == _CONTROL])
    return tok


# ------------------------------------------------------------------------- writing the folder


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def hf_config(hp: dict, tied: bool, bos: int | None, eos: int | None, pad: int | None) -> dict:
    """config.json for transformers' LlamaForCausalLM or Qwen2ForCausalLM (q/k/v biases, always)."""
    common = {
        "hidden_size": hp["dim"],
        "intermediate_size": hp["hidden_dim"],
        "num_hidden_layers": hp["n_layers"],
        "num_attention_heads": hp["n_heads"],
        "num_key_value_heads": hp["n_kv_heads"],
        "hidden_act": "silu",
        "max_position_embeddings": hp["context"],
        "rms_norm_eps": hp["norm_eps"],
        "rope_theta": hp["rope_theta"],
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": hp["vocab_size"],
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
        "use_cache": True,
    }
    if hp["arch"] == "qwen2":  # every layer full attention: the GGUF has no sliding window
        return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", **common,
                "use_sliding_window": False, "sliding_window": None, "max_window_layers": hp["n_layers"]}  # fmt: skip
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common,
            "head_dim": hp["dim"] // hp["n_heads"], "attention_bias": False, "mlp_bias": False}  # fmt: skip


def convert(gguf_path: str | Path, out_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Convert one GGUF file into an HF-format folder; returns the folder."""
    from safetensors.numpy import save_file

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise MinilaError(f"GGUF file {gguf_path} not found; run `make weights` or pass the right --gguf")
    t0 = time.perf_counter()
    elapsed = lambda: f"[{time.perf_counter() - t0:4.1f} s]"  # noqa: E731

    log(f"{elapsed()} reading {gguf_path.name}")
    reader = _open_gguf(gguf_path)
    hp = read_hparams(reader)
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if _field(reader, "tokenizer.ggml.model") != "gpt2" or tokens is None:
        raise MinilaError("only GGUF files with a byte-level BPE tokenizer (tokenizer.ggml.model = gpt2) are supported")
    hp["vocab_size"] = hp["vocab_size"] or len(tokens)
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    unk = _field(reader, "tokenizer.ggml.unknown_token_id")
    pad = _field(reader, "tokenizer.ggml.padding_token_id")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))

    log(f"{elapsed()} dequantizing {len(reader.tensors)} tensors to float32")
    weights = read_weights(reader, hp)
    tied = "lm_head.weight" not in weights
    embedding_shape = weights["model.embed_tokens.weight"].shape
    if embedding_shape != (hp["vocab_size"], hp["dim"]):
        raise MinilaError(f"token embedding shape {embedding_shape} disagrees with the GGUF metadata")
    n_params = sum(w.size for w in weights.values())

    out_dir.mkdir(parents=True, exist_ok=True)
    log(f"{elapsed()} writing model.safetensors ({n_params:,} parameters, {4 * n_params / 1e6:.0f} MB)")
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del weights

    log(f"{elapsed()} writing config and tokenizer files")
    _write_json(out_dir / "config.json", hf_config(hp, tied, bos, eos, pad))
    _write_json(out_dir / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad})

    token_types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = _field(reader, "tokenizer.ggml.merges", [])
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    build_tokenizer(tokens, merges, token_types, pre, add_bos, bos).save(str(out_dir / "tokenizer.json"))
    name = lambda i: None if i is None else tokens[i]  # noqa: E731
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            # transformers loads tokenizer.json as written with this class (GPT2Tokenizer would
            # rebuild the pre-tokenizer and lose the digit split)
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": add_bos,
            "add_eos_token": False,
            "bos_token": name(bos),
            "eos_token": name(eos),
            "unk_token": name(unk),
            "pad_token": name(pad),
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": k == _CONTROL}
                for i, (t, k) in enumerate(zip(tokens, token_types))
                if k in (_CONTROL, _USER_DEFINED)
            },
            "chat_template": _field(reader, "tokenizer.chat_template") or DEFAULT_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "model_max_length": hp["context"],
        },
    )
    log(f"{elapsed()} done: {out_dir}")
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minila.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True, help="the .gguf file to convert")
    parser.add_argument("--out", required=True, help="the folder to write (created if missing)")
    args = parser.parse_args(argv)
    try:
        convert(args.gguf, args.out)
    except MinilaError as e:
        parser.exit(1, f"error: {e}\n")


if __name__ == "__main__":
    main()
