"""Why a wide step costs more than one row on a CPU: the model's matrix products, streamed
and in cache.

A forward of M rows calls every product of the model once. Streamed, as in a forward, each
weight comes from memory; in cache, the same product repeats with its weight held in the
CPU's caches, so only its arithmetic is left. If a kernel overlapped the two, a forward's
products would cost max(arithmetic, streaming); if it does one after the other, their sum.
Prints both beside the measured streamed time, for M = 1, 2, 4, 8, 16. Run from the
repository root:

    .venv/bin/python bench/products_overlap.py [--ckpt DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from minila import load_checkpoint
from minila.llama.model import Linear
from minila.speed.roofline import measure_limits

ROWS = (1, 2, 4, 8, 16)
IN_CACHE = 8 * 2**20  # a weight up to this many bytes stays in cache when its product repeats
SLICE = 2048  # rows of a larger weight (the head) timed at a time, in cache


def median_seconds(fn, repeats: int) -> float:
    """The median, not the best: this shared machine's speed swings between runs."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def in_cache_seconds(lin: Linear, x: torch.Tensor) -> float:
    """One product with its weight in cache: the product alone, many times over (after the
    first call its weight stays in cache); a weight too large for that (the head) is timed
    a slice of SLICE rows at a time: a packed Linear of that shape, the same kernel."""
    if lin.in_features * lin.out_features * 4 <= IN_CACHE:
        return median_seconds(lambda: lin(x), 21)
    with torch.inference_mode(False):  # packing records the weight's version, which inference tensors lack
        part = Linear(lin.in_features, SLICE)
        part.pack()
    return median_seconds(lambda: part(x), 21) * lin.out_features / SLICE


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="weights/smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.ckpt, device="cpu")
    products = [m for m in model.modules() if isinstance(m, Linear)]
    macs = sum(m.in_features * m.out_features for m in products)  # per row
    limits = measure_limits(torch.float32)
    streaming = macs * 4 / limits.bytes_per_second  # every float32 weight read once
    print(f"{len(products)} products, {macs * 4 / 1e6:.0f} MB of float32 weights, {args.threads} threads")
    bandwidth = limits.bytes_per_second / 1e9
    print(f"read bandwidth {bandwidth:.1f} GB/s: streaming the weights alone takes {streaming * 1e3:.1f} ms")
    print(f"peak product rate (1024 x 1024 x 1024, packed) {limits.flops_per_second / 1e9:.0f} GFLOP/s\n")
    columns = ["M", "streamed ms (a forward's products)", "in cache ms (arithmetic)", "GFLOP/s in cache",
               "arithmetic + streaming", "max of the two", "streamed over M=1"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    first = None
    with torch.inference_mode():
        for m in ROWS:
            inputs = {n: torch.randn(m, n) for n in {lin.in_features for lin in products}}

            def forward_products() -> None:
                for lin in products:
                    lin(inputs[lin.in_features])

            streamed = median_seconds(forward_products, 7)
            arithmetic = sum(in_cache_seconds(lin, inputs[lin.in_features]) for lin in products)
            first = first or streamed
            row = [streamed * 1e3, arithmetic * 1e3, 2 * m * macs / arithmetic / 1e9,
                   (arithmetic + streaming) * 1e3, max(arithmetic, streaming) * 1e3]  # fmt: skip
            print(f"| {m} | " + " | ".join(f"{v:.1f}" for v in row) + f" | {streamed / first:.2f} |")


if __name__ == "__main__":
    main()
