"""The command line: JSON output, compare mode, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from minila.cli.common import first_divergence
from minila.cli.generate import main
from minila.speed.memory import tokenizer_fingerprint
from minila.speed.recycle import SuccessorTable, successors_path


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_greedy_and_lookahead_on_a_tiny_checkpoint(make_tiny_llama, capsys):
    folder, _ = make_tiny_llama()
    greedy = run_json(capsys, "--ckpt", str(folder), "--prompt", "the quick fox", "--mode", "greedy", "--max-new-tokens", "12")
    look = run_json(capsys, "--ckpt", str(folder), "--prompt", "the quick fox", "--max-new-tokens", "12", "-W", "3", "-N", "3", "-G", "2", "--copy", "4")
    assert look["config"]["copy"] == 4 and look["config"]["window"] == 3
    for out in (greedy, look):
        assert {"tokens", "text", "steps", "seconds", "compression"} <= set(out)
    assert look["tokens"] == greedy["tokens"] and greedy["steps"] == len(greedy["tokens"])
    assert look["compression"] == pytest.approx(len(look["tokens"]) / look["steps"], abs=1e-3)


def test_compare_mode(make_tiny_llama, capsys):
    folder, _ = make_tiny_llama()
    out = run_json(capsys, "--ckpt", str(folder), "--prompt", "hello world", "--mode", "compare", "--max-new-tokens", "16")
    assert out["identical"] is True and out["first_divergence"] is None
    assert out["tokens"] == out["greedy"]["tokens"]
    assert out["steps"] <= out["greedy"]["steps"]


def test_the_memory_file_is_used_merged_and_survives_damage(make_tiny_llama, capsys, tmp_path):
    folder, _ = make_tiny_llama()
    path = tmp_path / "memory.json"
    argv = ["--ckpt", str(folder), "--prompt", "the quick brown fox", "--mode", "compare", "--max-new-tokens", "24"]
    first = run_json(capsys, *argv, "--memory", str(path))
    second = run_json(capsys, *argv, "--memory", str(path))  # this answer is remembered now
    assert first["identical"] and second["identical"] and second["tokens"] == first["tokens"]
    assert first["budget"] == "cost" and second["memory"]["entries"] == first["memory"]["entries"] > 0
    assert second["steps"] < first["steps"]
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]  # the successor table sits beside it
    table = SuccessorTable.load(successors_path(path), tokenizer_fingerprint(folder), vocab, warn=pytest.fail)
    assert 0 < int((table.ids[:, 0] >= 0).sum()) < vocab
    path.write_text("{ torn")
    assert main([*argv, "--json", "--device", "cpu", "--memory", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["identical"] and captured.err.count("\n") == 1 and "ignoring the n-gram memory" in captured.err
    off = tmp_path / "nothing"
    assert main([*argv, "--json", "--device", "cpu", "--memory", "off"]) == 0 and not off.exists()
    assert "memory" not in json.loads(capsys.readouterr().out)


def test_an_unusable_memory_path_is_refused_before_any_work(make_tiny_llama, capsys, tmp_path, monkeypatch):
    folder, _ = make_tiny_llama()
    capsys.readouterr()  # the fixture's progress bars
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    argv = ["--ckpt", str(folder), "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu"]
    for memory, what in ((tmp_path, "is a folder"), (a_file / "sub" / "m.json", "cannot be written")):
        assert main([*argv, "--memory", str(memory)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith("error: --memory") and what in captured.err
        assert captured.err.count("\n") == 1
    monkeypatch.setenv("MINILA_CACHE", str(a_file / "cache"))  # where nothing can be created
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the n-gram memory") and "MINILA_CACHE" in err and err.count("\n") == 1
    assert main([*argv, "--memory", "off", "--json"]) == 0  # the cost curve then is only not kept


def test_a_save_that_fails_after_the_answer_is_one_warning(make_tiny_llama, capsys, tmp_path, monkeypatch):
    folder, _ = make_tiny_llama()
    path = tmp_path / "gone" / "m.json"

    def vanish(self, target, warn=None):  # the folder removed while the answer was computed
        raise FileNotFoundError(2, "No such file or directory", str(target))

    monkeypatch.setattr("minila.speed.memory.NGramMemory.save", vanish)
    argv = ["--ckpt", str(folder), "--prompt", "hi", "--max-new-tokens", "6", "--memory", str(path)]
    out = run_json(capsys, *argv, "--mode", "compare")
    assert out["identical"] and len(out["tokens"]) == 6 and "memory" not in out
    assert main([*argv, "--device", "cpu"]) == 0  # streamed: the stats line, then the warning
    captured = capsys.readouterr()
    assert "[lookahead] 6 new tokens" in captured.out
    assert captured.err.count("\n") == 1 and captured.err.startswith("warning: the n-gram memory was not saved")


def test_streaming_prints_text_and_stats(make_tiny_llama, capsys):
    folder, _ = make_tiny_llama()
    capsys.readouterr()
    assert main(["--ckpt", str(folder), "--prompt", "hello", "--max-new-tokens", "8", "--device", "cpu", "--no-chat"]) == 0
    out = capsys.readouterr().out
    assert "new tokens in" in out and "compression" in out
    assert "\033[" not in out  # no colour when stdout is not a terminal


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, sp_model_file):
    from conftest import _write_tiny_llama

    folder = tmp_path_factory.mktemp("cli") / "tiny"
    _write_tiny_llama(folder, sp_model_file)
    return folder


NO_GPU = "sees no CUDA GPU" if not torch.cuda.is_available() else "does not exist"
BAD_OPTIONS = [
    (["--threads", "-1"], "--threads must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be >= 1"),
    (["--max-new-tokens", "100000"], "context"),
    (["--prompt", "the quick brown fox " * 100, "--max-new-tokens", "4"], "shorten the prompt"),
    (["--window", "0"], "window"),
    (["--window", "wide"], "expected an integer or 'auto', got 'wide'"),
    (["--ngram", "1"], "ngram"),
    (["--guess", "-1"], "guess"),
    (["--copy", "-1"], "copy"),
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", ""], "unknown device ''"),
    (["--device", "cpu:1"], "one CPU device"),
    (["--device", "cuda:7"], NO_GPU),
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-k", "-1"], "top_k"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--mode", "fast"], "argument --mode: invalid choice: 'fast'"),
    (["--mode", "compare", "--temperature", "0.7"], "compare"),
    (["--interactive", "--json"], "--interactive"),
    (["--interactive", "--mode", "compare"], "--interactive"),
    (["--ckpt", ""], "--ckpt is empty"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
]


@pytest.mark.parametrize("extra, message", BAD_OPTIONS, ids=[" ".join(e)[:30] for e, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_errors(tiny_dir, capsys, tmp_path, extra, message):
    before = sorted(p.name for p in tiny_dir.iterdir())
    capsys.readouterr()  # drop what saving the tiny model printed
    assert main(["--ckpt", str(tiny_dir), "--device", "cpu", "-W", "2", "-N", "3", "-G", "2", "--copy", "0", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tiny_dir.iterdir()) == before


def test_a_required_option_missing_is_one_line_error(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err == "error: the following arguments are required: --ckpt (see python -m minila.generate --help)\n"


def test_bad_input_exit_code_2_from_the_real_process(tiny_dir, tmp_path):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    proc = subprocess.run([sys.executable, "-m", "minila.generate", "--ckpt", str(folder), "--device", "cpu"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and "'gpt2' model" in proc.stderr


@pytest.mark.real_model
@pytest.mark.slow
def test_real_model_compare(smollm2_dir, capsys):
    out = run_json(capsys, "--ckpt", str(smollm2_dir), "--mode", "compare", "--max-new-tokens", "48",
                   "--prompt", "List the first ten prime numbers, separated by commas.")
    assert out["identical"] is True
    assert out["text"].strip()
