"""What a step of T tokens costs at paper scale, on this device: a prediction, not a run.

Timing a forward needs no real weights, so models with the shapes of SmolLM2-135M,
Qwen2.5-0.5B/1.5B, Llama-2-7B and Llama-3-8B get random weights (bfloat16 by default) and
`minila.speed.cost_curve.measure_cost_curve` times one forward of T = 1..256 new tokens after
a 512-token cache. c(T) = cost of T tokens over one: a lookahead step that feeds T tokens
pays only where it accepts more than c(T) tokens (S > c). Next to it, the T=1 forward
against the time to read the weights once at the device's measured copy bandwidth.

    python bench/cost_at_scale.py [--device cuda] [--dtype bfloat16] [--models llama2-7b ...]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from minila.llama.model import ModelArgs
from minila.speed.cost_curve import clock, measure_cost_curve

SHAPES = {
    "smollm2-135m": ModelArgs(49152, 576, 30, 9, 3, 1536, 100000.0, tie_embeddings=True),
    "qwen2.5-0.5b": ModelArgs(151936, 896, 24, 14, 2, 4864, 1e6, tie_embeddings=True, qkv_bias=True),
    "qwen2.5-1.5b": ModelArgs(151936, 1536, 28, 12, 2, 8960, 1e6, tie_embeddings=True, qkv_bias=True),
    "llama2-7b": ModelArgs(32000, 4096, 32, 32, 32, 11008, 10000.0),
    "llama3-8b": ModelArgs(128256, 4096, 32, 32, 8, 14336, 500000.0),
}
WIDTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device copy (each byte read once and written once)."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        start = clock(device)
        dst.copy_(src)
        best = min(best, clock(device) - start)
    return 2 * src.numel() / best


def main() -> None:
    from cuda_exactness import random_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--out", help="also write the curves as JSON here")
    a = p.parse_args()
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bandwidth = copy_bandwidth(device)
    print(f"# Cost of a step of T tokens at paper scale: {name}, {a.dtype}, torch {torch.__version__}\n")
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s; random weights; {a.context} cached tokens; the fastest of 5\n")
    print("| model | params | T=1 ms | weight read ms | " + " | ".join(f"c({t})" for t in WIDTHS) + " | head per row ms |")
    print("|" + " --- |" * (len(WIDTHS) + 5))
    rows = {}
    for key in a.models:
        args = ModelArgs(**{**SHAPES[key].__dict__, "max_seq_len": a.context + max(WIDTHS) + 1})
        start = time.perf_counter()
        model = random_model(args, 0, a.device, dtype)
        params = sum(p.numel() for p in model.parameters())
        curve = measure_cost_curve(model, WIDTHS, context=a.context, repeats=5)
        read = params * dtype.itemsize / bandwidth
        rel = [s / curve.seconds[0] for s in curve.seconds]
        rows[key] = {"params": params, "widths": WIDTHS, "seconds": curve.seconds, "head_seconds_per_row": curve.head_seconds_per_row,
                     "weight_read_seconds": read, "wall": time.perf_counter() - start}  # fmt: skip
        print(f"| {key} | {params / 1e9:.2f}B | {curve.seconds[0] * 1e3:.2f} | {read * 1e3:.2f} | "
              + " | ".join(f"{r:.2f}" for r in rel) + f" | {curve.head_seconds_per_row * 1e3:.3f} |", flush=True)  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": name, "dtype": a.dtype, "torch": torch.__version__, "bandwidth": bandwidth, "models": rows}, f, indent=1)


if __name__ == "__main__":
    main()
