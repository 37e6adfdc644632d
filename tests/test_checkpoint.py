"""Checkpoint loading: HF folders saved by transformers itself load into minila with the
same logits; bad folders and options fail with a MinilaError that says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minila.errors import MinilaError
from minila.llama import checkpoint
from minila.llama.checkpoint import args_from_hf_config, load_checkpoint, resolve_device, resolve_dtype
from minila.llama.model import not_native, packable_dtypes

SMOLLM_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def minila_logits(model, ids: list[int]) -> torch.Tensor:
    tokens = torch.tensor(ids)
    with torch.no_grad():
        return model(tokens, torch.arange(len(ids)), model.new_cache(len(ids)))  # (T, vocab)


def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([ids])).logits[0]  # (T, vocab)


# ------------------------------------------------------------------------- config.json


def test_args_from_smollm_config():
    a = args_from_hf_config(SMOLLM_CONFIG)
    assert (a.vocab_size, a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim) == (49152, 576, 30, 9, 3, 1536)
    assert (a.rope_theta, a.norm_eps, a.max_seq_len, a.tie_embeddings, a.head_dim) == (1e5, 1e-5, 8192, True, 64)


def test_args_defaults_and_transformers5_rope_parameters():
    dropped = ("num_key_value_heads", "rope_theta", "tie_word_embeddings")
    config = {k: v for k, v in SMOLLM_CONFIG.items() if k not in dropped}
    a = args_from_hf_config(config)
    assert (a.n_kv_heads, a.rope_theta, a.tie_embeddings) == (9, 10000.0, False)
    a = args_from_hf_config({**config, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert a.rope_theta == 5e5
    assert args_from_hf_config({**config, "model_type": "mistral", "sliding_window": None}).dim == 576


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "Llama-architecture"),
        ({"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]}, "Llama-architecture"),
        ({"model_type": "qwen2", "architectures": ["LlamaForCausalLM"]}, "LlamaForCausalLM only"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20},
         "Qwen2 model uses sliding-window"),
        ({"model_type": "qwen2", "layer_types": ["full_attention", "sliding_attention"], "sliding_window": 64},
         "sliding-window"),
        ({"model_type": "qwen2", "layer_types": ["chunked_attention"]}, "chunked_attention"),
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
         "yarn"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForCausalLM only"),
        ({"model_type": "mistral", "sliding_window": 4096}, "sliding-window"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 8.0}}, "dynamic"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks low_freq_factor"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "yarn"),
        ({"head_dim": 128}, "head_dim"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "silu"),
        ({"num_key_value_heads": 2}, "inconsistent"),
        ({"hidden_size": None}, "lacks hidden_size"),
    ],
)
def test_args_refuse_what_minila_cannot_run(change, message):
    with pytest.raises(MinilaError, match=message):
        args_from_hf_config({**SMOLLM_CONFIG, **change})


# ------------------------------------------------------------------------- options


def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("float16") is torch.float16 and resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(MinilaError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # pretend there is no GPU
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(MinilaError, match="sees no CUDA GPU; use --device cpu"):
            resolve_device(name)
    with pytest.raises(MinilaError, match="unknown device 'gpu'"):
        resolve_device("gpu")


def test_cuda_without_gpu_fails_before_loading(make_tiny_llama, monkeypatch):
    folder, _ = make_tiny_llama()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MinilaError, match="no CUDA GPU"):
        load_checkpoint(folder, device="cuda")


# ------------------------------------------------------------------------- tiny folders saved by transformers

IDS = [1, 17, 250, 3, 99, 42, 359, 7, 7, 7, 128, 2]


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_llama_logits_equal_transformers(make_tiny_llama, tie):
    folder, hf = make_tiny_llama(tie=tie)
    model, tok = load_checkpoint(folder, device="cpu", dtype="float32")
    assert model.args.tie_embeddings is tie
    weights = model.state_dict()  # a tied head is packed apart from the table it shares its values with
    assert torch.equal(weights["output.weight"], weights["tok_embeddings.weight"]) is tie
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(minila_logits(model, IDS), hf_logits(hf, IDS), atol=1e-5, rtol=1e-5)
    assert tok.kind == "sentencepiece" and tok.bos_id == 1 and tok.eos_ids == [2]


def test_tiny_llama_float64_weights_are_exact(make_tiny_llama):
    folder, hf = make_tiny_llama()
    model, _ = load_checkpoint(folder, device="cpu", dtype="float64")
    assert model.dtype is torch.float64
    ours = model.state_dict()
    for hf_name, tensor in hf.state_dict().items():  # every HF tensor lands, unchanged, under its minila name
        assert torch.equal(ours[checkpoint.meta_name(hf_name)], tensor.double()), hf_name
    # transformers computes RoPE angles in float32 even for a float64 model: agreement is ~1e-7, not 1e-15
    torch.testing.assert_close(minila_logits(model, IDS), hf_logits(hf.double(), IDS), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(bool(not_native(torch.bfloat16, torch.device("cpu"))), reason=f"{not_native(torch.bfloat16, torch.device('cpu'))}")
def test_bfloat16_keeps_rope_tables_in_float32(make_tiny_llama):
    folder, _ = make_tiny_llama()
    model, _ = load_checkpoint(folder, device="cpu", dtype="bfloat16", pack=False)
    assert all(p.dtype is torch.bfloat16 for p in model.parameters())
    assert model.rope_cos.dtype is torch.float32
    assert torch.isfinite(minila_logits(model, IDS)).all()


def test_sharded_checkpoint(make_tiny_llama):
    folder, hf = make_tiny_llama(max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    model, _ = load_checkpoint(folder, device="cpu")
    torch.testing.assert_close(minila_logits(model, IDS), hf_logits(hf, IDS), atol=1e-5, rtol=1e-5)


def test_pytorch_model_bin(make_tiny_llama):
    folder, hf = make_tiny_llama()
    (folder / "model.safetensors").unlink()
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    model, _ = load_checkpoint(folder, device="cpu")
    torch.testing.assert_close(minila_logits(model, IDS), hf_logits(hf, IDS), atol=1e-5, rtol=1e-5)


def test_missing_lm_head_means_tied(make_tiny_llama):
    from safetensors.torch import load_file, save_file

    folder, hf = make_tiny_llama(tie=False)
    weights = load_file(folder / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model, _ = load_checkpoint(folder, device="cpu", pack=False)
    assert model.output.weight is model.tok_embeddings.weight
    torch.testing.assert_close(model.output.weight, hf.model.embed_tokens.weight)


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file (or [heap], ...) whose mapping holds the tensor's first byte, from /proc/self/maps."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        start, end = (int(a, 16) for a in span.split("-"))
        if start <= address < end:
            return rest[4] if len(rest) == 5 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
@pytest.mark.parametrize("file", ["model.safetensors", "pytorch_model.bin"])
def test_a_packed_model_looks_its_embedding_up_in_the_file(make_tiny_llama, file):
    """Packing gives every matrix, a tied head too, a copy of its own; the embedding's
    table is then only looked up, so it stays where it lies, in the weight file, mapped,
    in the file's dtype; the rows looked up are cast to the model's."""
    folder, hf = make_tiny_llama(tie=True)
    if file == "pytorch_model.bin":
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / file)
    ids, path = torch.tensor(IDS), str((folder / file).resolve())
    for dtype in [d for d in (torch.bfloat16, torch.float32) if d in packable_dtypes()]:  # float32 last
        model, _ = load_checkpoint(folder, device="cpu", dtype=dtype)
        table = model.tok_embeddings.weight
        assert _mapped_file(table) == path
        assert table.dtype is torch.float32 and model.dtype is dtype  # as in the file / as asked
        assert model.output.packed is not None and model.output.weight.is_meta  # the head: one packed copy
        assert torch.equal(model.tok_embeddings(ids).to(dtype), hf.model.embed_tokens.weight.to(dtype)[ids])
    torch.testing.assert_close(minila_logits(model, IDS), hf_logits(hf, IDS), atol=1e-5, rtol=1e-5)  # float32's
    model, _ = load_checkpoint(folder, device="cpu", dtype="float64")  # nothing packed: the table is the head too
    assert model.output.weight is model.tok_embeddings.weight and _mapped_file(model.output.weight) != path


def test_sentencepiece_tokenizer_of_a_checkpoint(make_tiny_llama, sp_model_file):
    import sentencepiece
    from transformers import AutoTokenizer

    folder, _ = make_tiny_llama()
    _, tok = load_checkpoint(folder, device="cpu")
    hf_tok = AutoTokenizer.from_pretrained(folder)
    for text in ["hello world 123", "the quick brown fox, café 東京", "print(x) {a: b}\n\tdef 4567"]:
        assert tok.encode(text) == hf_tok(text)["input_ids"]
    # The template writes "<s>[user] hello</s>...". Each text piece between special tokens is
    # encoded by sentencepiece with its dummy-prefix space, as Meta's Llama-2 code encodes
    # "[INST] ..." after its BOS. (transformers 5's non-legacy pipeline drops that space.)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_file))
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    expected = [1] + sp.encode("[user] hello") + [2] + sp.encode("[assistant] world") + [2]
    assert tok.apply_chat_template(messages) == expected


# ------------------------------------------------------------------------- bad folders


def _error(folder, **kwargs) -> str:
    with pytest.raises(MinilaError) as info:
        load_checkpoint(folder, device="cpu", **kwargs)
    return str(info.value)


def test_missing_folder(tmp_path):
    assert "does not exist; run `make weights`" in _error(tmp_path / "nope")


def test_missing_config(tmp_path):
    assert "has no config.json" in _error(tmp_path)


def test_config_not_a_llama(make_tiny_llama):
    folder, _ = make_tiny_llama()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    assert "'gpt_neox' model" in _error(folder)


def test_missing_tokenizer(make_tiny_llama):
    folder, _ = make_tiny_llama()
    (folder / "tokenizer.model").unlink()
    assert "no tokenizer in" in _error(folder)


def test_missing_weights(make_tiny_llama):
    folder, _ = make_tiny_llama()
    (folder / "model.safetensors").unlink()
    assert "no weights in" in _error(folder)


def test_missing_shard(make_tiny_llama):
    folder, _ = make_tiny_llama(max_shard_size="40KB")
    next(folder.glob("model-*.safetensors")).unlink()
    assert "shards that are missing" in _error(folder)


def test_weights_disagree_with_config(make_tiny_llama):
    folder, _ = make_tiny_llama()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    assert "config.json and the weights disagree" in _error(folder)


def test_missing_and_unexpected_tensors(make_tiny_llama):
    from safetensors.torch import load_file, save_file

    folder, _ = make_tiny_llama()
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "unexpected tensor 'layers.0.attention.wq.bias'" in _error(folder)  # a bias in a Llama
    del weights["model.layers.0.self_attn.q_proj.bias"], weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert "lacks 1 tensors, e.g. ['norm.weight']" in _error(folder)


def test_bad_dtype_and_device(make_tiny_llama):
    folder, _ = make_tiny_llama()
    assert "unknown dtype" in _error(folder, dtype="float8")
    with pytest.raises(MinilaError, match="unknown device"):
        load_checkpoint(folder, device="tpu:0")


@pytest.mark.real_model
def test_tokenizer_from_another_model(make_tiny_llama, smollm2_dir):
    folder, _ = make_tiny_llama()
    (folder / "tokenizer.model").unlink()
    shutil.copy(smollm2_dir / "tokenizer.json", folder / "tokenizer.json")
    assert "belong to another model" in _error(folder)


# ------------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_real_model_args_and_size(real_model):
    model, tok = real_model
    a = model.args
    assert (a.n_layers, a.dim, a.hidden_dim, a.n_heads, a.n_kv_heads, a.vocab_size) == (30, 576, 1536, 9, 3, 49152)
    assert (a.rope_theta, a.norm_eps, a.max_seq_len, a.tie_embeddings) == (1e5, 1e-5, 8192, True)
    weights = {name: p for name, p in model.named_parameters() if name != "output.weight"}  # the tied head: its table's values
    assert sum(p.numel() for p in weights.values()) == 134_515_008
    assert tok.kind == "tokenizer.json"


@pytest.mark.real_model
@pytest.mark.slow
def test_real_model_logits_equal_transformers(real_model, smollm2_dir):
    from transformers import LlamaForCausalLM

    packed, tok = real_model
    plain, _ = load_checkpoint(smollm2_dir, device="cpu", pack=False)  # the same BLAS calls as transformers
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Name three prime numbers below 20."}])
    theirs = hf_logits(hf, ids)
    ours = minila_logits(plain, ids)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    # oneDNN's packed products sum in another order: float32 rounding of logits up to ~30
    ours = minila_logits(packed, ids)
    assert (ours - theirs).abs().max().item() < 1e-5 * theirs.abs().max().item()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_meta_name_mapping():
    assert checkpoint.meta_name("model.layers.12.mlp.gate_proj.weight") == "layers.12.feed_forward.w1.weight"
    assert checkpoint.meta_name("model.layers.0.mlp.up_proj.weight") == "layers.0.feed_forward.w3.weight"
    assert checkpoint.meta_name("model.layers.0.mlp.down_proj.weight") == "layers.0.feed_forward.w2.weight"
    assert checkpoint.meta_name("lm_head.weight") == "output.weight"
    assert checkpoint.meta_name("model.layers.3.self_attn.rotary_emb.inv_freq") is None
