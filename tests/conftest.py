"""Fixtures shared by the test files: the real SmolLM2 folder and tiny on-disk checkpoints."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "weights" / "smollm2-135m-instruct"
QWEN25_CODER = REPO / "weights" / "qwen2.5-coder-0.5b-instruct"


def pytest_configure(config: pytest.Config) -> None:
    # the numbers in DESIGN.md and the CI machine use 2 threads; more only adds contention
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(autouse=True, scope="session")
def _private_autotune_cache(tmp_path_factory: pytest.TempPathFactory):
    """the cost curve is kept in ~/.cache/minila; tests keep theirs to themselves."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MINILA_CACHE", str(tmp_path_factory.mktemp("minila-cache")))
    yield
    mp.undo()


# ------------------------------------------------------------------------- the real model


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct folder (`make weights` writes it)."""
    if not (SMOLLM2 / "model.safetensors").is_file():
        pytest.skip(f"{SMOLLM2.relative_to(REPO)} is missing: run `make weights` to convert SmolLM2")
    return SMOLLM2


@pytest.fixture(scope="session")
def real_model(smollm2_dir: Path):
    """(model, tokenizer) for SmolLM2, float32 on CPU, loaded once per session."""
    from minila.llama.checkpoint import load_checkpoint

    return load_checkpoint(smollm2_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def qwen2_dir() -> Path:
    """The converted Qwen2.5-Coder-0.5B-Instruct folder: optional, never made by `make test`."""
    if not (QWEN25_CODER / "model.safetensors").is_file():
        pytest.skip(f"{QWEN25_CODER.relative_to(REPO)} is missing: run `make weights MODEL=qwen2.5-coder-0.5b`")
    return QWEN25_CODER


# ------------------------------------------------------------------------- tiny checkpoints

SP_WORDS = (
    "the quick brown fox jumps over lazy dog hello world lookahead decoding jacobi "
    "iteration token model café naïve 東京 123 4567 def return print(x) {a: b}"
).split()


@pytest.fixture(scope="session")
def sp_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-2-style sentencepiece model (BPE, byte fallback, unk/bos/eos = 0/1/2),
    trained here on a generated corpus so no file has to be downloaded."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("sp")
    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(SP_WORDS) for _ in range(12)) for _ in range(2000)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "sp"),
        model_type="bpe",
        vocab_size=360,  # byte fallback alone needs 256 + 3 pieces, plus the corpus's characters
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",  # as Llama: no NFKC, keep every space
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return folder / "sp.model"


def _random_llama(cls, config, seed: int):
    """A transformers Llama with random weights spread so that comparisons mean something
    (HF's own init makes tiny logits)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.ndim == 1 else 1.0 / p.shape[-1] ** 0.5)
        for layer in model.model.layers:
            layer.input_layernorm.weight.add_(1.0)
            layer.post_attention_layernorm.weight.add_(1.0)
    return model


def _write_tiny_llama(
    folder: Path,
    sp_model_file: Path,
    *,
    tie: bool = False,
    seed: int = 0,
    max_shard_size: str | None = None,
    vocab_size: int = 360,
):
    """An HF-format folder: a random transformers LlamaForCausalLM, saved by
    transformers itself, with the sentencepiece tokenizer beside it. Returns the HF model."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = _random_llama(LlamaForCausalLM, config, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    shutil.copy(sp_model_file, folder / "tokenizer.model")
    tok_config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": (
            "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
        ),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return model


@pytest.fixture
def make_tiny_llama(tmp_path: Path, sp_model_file: Path):
    """make(name, tie=..., max_shard_size=..., seed=...) -> (folder, the HF model saved there)."""

    def make(name: str = "tiny", **kwargs):
        folder = tmp_path / name
        return folder, _write_tiny_llama(folder, sp_model_file, **kwargs)

    return make


# ------------------------------------------------------------------------- lookahead parallelism


@pytest.fixture(scope="session")
def rank_pool():
    """Two gloo ranks serving decoding jobs for the whole session (see rank_pool.py)."""
    from rank_pool import RankPool

    pool = RankPool(ranks=2)
    yield pool
    pool.close()
# ------------------------------------------------------------------------- a tiny Llama 3.x

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eom_id|>", "<|eot_id|>"]  # fmt: skip
LLAMA3_TEMPLATE = REPO / "tests" / "data" / "llama3.2_chat_template.jinja"  # Meta's, from Llama 3.2 Instruct
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip


@pytest.fixture(scope="session")
def llama3_tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer.json laid out as Llama 3's: the special tokens above,
    a post-processor that adds <|begin_of_text|>; trained here on SP_WORDS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    rng = random.Random(1)
    tok.train_from_iterator([" ".join(rng.choice(SP_WORDS) for _ in range(12)) for _ in range(500)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    path = tmp_path_factory.mktemp("llama3_tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def write_tiny_llama3(
    folder: Path, tokenizer_json: Path, rope: dict, *, spelling: str = "transformers5", seed: int = 0, **save_kwargs
):
    """A Llama 3.x folder: random weights saved by transformers with scaled RoPE `rope`,
    written in one of config.json's two spellings ("transformers5": rope_parameters;
    "transformers4": rope_theta + rope_scaling), several EOS ids in config.json and
    generation_config.json, Llama 3.2's chat template. Returns the HF model."""
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    eos = [LLAMA3_SPECIALS.index(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    config = LlamaConfig(vocab_size=416, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         rope_parameters=dict(rope), rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=0, eos_token_id=eos)  # fmt: skip
    model = _random_llama(LlamaForCausalLM, config, seed)
    model.save_pretrained(folder, **save_kwargs)
    saved = json.loads((folder / "config.json").read_text())
    if spelling == "transformers4":
        params = saved.pop("rope_parameters")
        saved["rope_theta"] = params.pop("rope_theta")
        saved["rope_scaling"] = params
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": eos}))
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                  "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE.read_text()}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return model
