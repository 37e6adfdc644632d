"""Every file of a checkpoint folder, damaged every way a download, a copy or a hand edit
damages it: loading raises one MinilaError that names the file and says what to do
(never a traceback from json, safetensors, tokenizers, sentencepiece, jinja or torch),
and the CLI prints it as one `error: ...` line, exits 2 and writes nothing.

Three pristine folders, saved by transformers: "sp" (model.safetensors, a sentencepiece
tokenizer.model, a chat template in tokenizer_config.json), "sharded" (shards with an
index, a Llama 3 tokenizer.json, chat_template.jinja, several EOS ids) and "bin"
(pytorch_model.bin). Each case copies one and damages one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import LLAMA3_ROPE, LLAMA3_TEMPLATE, _write_tiny_llama, write_tiny_llama3

from minila import MinilaError, load_checkpoint
from minila.cli.generate import main

SHARD = "model-00001-of-*.safetensors"  # the first shard, whatever the count
# a message tells what to do: one of these verbs
WHAT_TO_DO = re.compile(r"\b(re-download|download|re-export|copy|fix|point|check|run|use|give|pass|drop)\b")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, sp_model_file, llama3_tokenizer_json) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pristine")
    hf = _write_tiny_llama(root / "sp", sp_model_file)
    write_tiny_llama3(root / "sharded", llama3_tokenizer_json, LLAMA3_ROPE, max_shard_size="40KB")
    shutil.copy(LLAMA3_TEMPLATE, root / "sharded" / "chat_template.jinja")
    shutil.copytree(root / "sp", root / "bin")
    (root / "bin" / "model.safetensors").unlink()
    torch.save(hf.state_dict(), root / "bin" / "pytorch_model.bin")
    for folder in root.iterdir():  # all three load
        load_checkpoint(folder, device="cpu")
    return {f.name: f for f in root.iterdir()}


def _garbage(data: bytes) -> bytes:
    rng = random.Random(len(data))
    return bytes(rng.randrange(256) for _ in range(max(len(data), 64)))


# how each damage changes a file's bytes (None: delete it)
DAMAGES = {
    "missing": lambda data: None,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": _garbage,
    "json-array": lambda data: b"[1, 2, 3]",
    "json-string": lambda data: b'"model"',
    "json-empty-object": lambda data: b"{}",
}


def edit(**changes):
    """A damage that rewrites fields of a JSON file (None deletes the field)."""

    def apply(data: bytes) -> bytes:
        value = json.loads(data)
        for key, v in changes.items():
            if v is None:
                value.pop(key, None)
            else:
                value[key] = v
        return json.dumps(value).encode()

    return apply


# (folder, file, damage name or edit): whole-file damages for every file ...
FILE_CASES = [
    *[("sp", "config.json", d) for d in DAMAGES],
    *[("sp", "model.safetensors", d) for d in ("missing", "empty", "truncated", "garbage")],
    *[("sp", "tokenizer.model", d) for d in ("missing", "empty", "truncated", "garbage")],
    *[("sp", "tokenizer_config.json", d) for d in ("empty", "truncated", "garbage", "json-array")],
    *[("sp", "generation_config.json", d) for d in ("empty", "truncated", "garbage", "json-string")],
    *[("bin", "pytorch_model.bin", d) for d in ("empty", "truncated", "garbage")],
    *[("sharded", "model.safetensors.index.json", d) for d in ("empty", "truncated", "garbage", "json-empty-object")],
    *[("sharded", SHARD, d) for d in ("missing", "empty", "truncated", "garbage")],
    *[("sharded", "tokenizer.json", d) for d in ("missing", "empty", "truncated", "garbage", "json-empty-object")],
    *[("sharded", "chat_template.jinja", d) for d in ("truncated", "garbage")],
]
# ... and valid JSON with wrong or impossible values (expected words in the message)
VALUE_CASES = [
    ("config.json", edit(num_attention_heads=0), "num_attention_heads is 0"),
    ("config.json", edit(hidden_size=-64), "hidden_size is -64"),
    ("config.json", edit(num_hidden_layers=1.5), "num_hidden_layers is 1.5"),
    ("config.json", edit(vocab_size="many"), "vocab_size is 'many'"),
    ("config.json", edit(intermediate_size=None), "lacks intermediate_size"),
    ("config.json", edit(num_key_value_heads=3), "multiple of n_kv_heads"),
    ("config.json", edit(max_position_embeddings=0), "max_position_embeddings is 0"),
    ("config.json", edit(rms_norm_eps=-1.0), "norm_eps must be > 0"),
    ("config.json", edit(rope_parameters={"rope_type": "default", "rope_theta": 0}), "rope_theta is 0.0"),
    ("config.json", edit(rope_scaling="llama3"), "rope_scaling is 'llama3'"),
    ("config.json", edit(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "lacks low_freq_factor"),
    ("config.json", edit(rope_scaling={"rope_type": "linear", "factor": -2.0}), "factor must be > 0"),
    ("config.json", edit(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' is not implemented"),
    ("config.json", edit(tie_word_embeddings="no"), "tie_word_embeddings is 'no'"),
    ("config.json", edit(architectures="LlamaForCausalLM"), "architectures"),
    ("config.json", edit(model_type=None), "has no model_type"),
    ("config.json", edit(intermediate_size=128), "config.json and the weights disagree"),
    ("config.json", edit(vocab_size=100), "the tokenizer has"),
    ("tokenizer_config.json", edit(bos_token=5), "bos_token is 5"),
    ("tokenizer_config.json", edit(chat_template=42), "chat_template is a JSON int"),
    ("tokenizer_config.json", edit(chat_template="{% for m in messages %}"), "not valid jinja"),
    ("tokenizer_config.json", edit(added_tokens_decoder=["<s>"]), "added_tokens_decoder is"),
    ("tokenizer_config.json", edit(add_bos_token="yes"), "add_bos_token is 'yes'"),
    ("generation_config.json", edit(eos_token_id="</s>"), "eos_token_id is '</s>'"),
    ("generation_config.json", edit(eos_token_id=[2, -1]), "eos_token_id is [2, -1]"),
    ("generation_config.json", edit(eos_token_id=99999), "outside the vocabulary"),
]
SHARDED_VALUE_CASES = [
    ("model.safetensors.index.json", edit(weight_map={"model.norm.weight": 5}), "no weight_map"),
    ("model.safetensors.index.json", edit(weight_map={"model.norm.weight": "../elsewhere.safetensors"}), "no weight_map"),
    ("model.safetensors.index.json", edit(weight_map={"model.norm.weight": "model-absent.safetensors"}),
     "model-absent.safetensors"),
    ("tokenizer.json", edit(model=5), "tokenizer.json"),
]  # fmt: skip
# missing files a checkpoint may lack: it still loads
OPTIONAL = {("sp", "tokenizer_config.json"), ("sp", "generation_config.json"), ("sharded", "chat_template.jinja")}


def damaged_copy(pristine, tmp_path, folder: str, name: str, damage) -> tuple[Path, Path]:
    target = tmp_path / folder
    shutil.copytree(pristine[folder], target)
    path = next(target.glob(name))
    data = damage(path.read_bytes())
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)
    return target, path


def snapshot(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def assert_one_clear_error(folder: Path, expected: str, capsys) -> None:
    """load_checkpoint raises a MinilaError with `expected`; the CLI says it in one line, exits 2, writes nothing."""
    with pytest.raises(MinilaError) as info:
        load_checkpoint(folder, device="cpu")
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert WHAT_TO_DO.search(message), f"says what is wrong but not what to do: {message}"
    cache = Path(os.environ["MINILA_CACHE"])
    before = snapshot(folder, cache)
    capsys.readouterr()
    assert main(["--ckpt", str(folder), "--device", "cpu", "--max-new-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert snapshot(folder, cache) == before  # nothing written, nothing half-written


@pytest.mark.parametrize("folder, name, damage", FILE_CASES, ids=[f"{f}-{n.split('-')[0]}-{d}" for f, n, d in FILE_CASES])
def test_a_damaged_file_is_one_clear_error(pristine, tmp_path, capsys, folder, name, damage):
    target, path = damaged_copy(pristine, tmp_path, folder, name, DAMAGES[damage])
    if damage == "missing" and (folder, name) in OPTIONAL:
        load_checkpoint(target, device="cpu")  # a checkpoint may lack it
        return
    # a missing required file is named by what the folder lacks; any other damage by the file's path
    expected = {"config.json": "no config.json", "model.safetensors": "no weights", "tokenizer.model": "no tokenizer",
                "tokenizer.json": "no tokenizer"}.get(name, path.name) if damage == "missing" else str(path)  # fmt: skip
    assert_one_clear_error(target, expected, capsys)


@pytest.mark.parametrize(
    "folder, name, damage, expected",
    [("sp", *case) for case in VALUE_CASES] + [("sharded", *case) for case in SHARDED_VALUE_CASES],
    ids=[f"{n}-{e[:24]}" for n, _, e in VALUE_CASES + SHARDED_VALUE_CASES],
)
def test_wrong_or_impossible_values_are_one_clear_error(pristine, tmp_path, capsys, folder, name, damage, expected):
    target, _ = damaged_copy(pristine, tmp_path, folder, name, damage)
    assert_one_clear_error(target, expected, capsys)
