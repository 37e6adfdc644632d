"""Why a forward on a GPU costs what it does: one tiny kernel launch, timed, and a forward
of one token of a SmolLM2-shaped bfloat16 model (random weights) under the profiler: how
many kernels it launched, how much GPU time they held, and the wall time.

    python bench/cuda_launches.py     # on a machine with a CUDA GPU
"""

from __future__ import annotations

import time

import torch
from cost_at_scale import SHAPES
from cuda_exactness import random_model
from torch.profiler import ProfilerActivity, profile

from minila.llama.model import ModelArgs


def launch_seconds(device: str, launches: int = 2000) -> float:
    x = torch.ones(16, device=device)
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(launches):
            x.add_(1)
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / launches)
    return best


@torch.inference_mode()
def main(device: str = "cuda") -> None:
    print(f"one tiny kernel launch: {launch_seconds(device) * 1e6:.1f} us")
    model = random_model(ModelArgs(**{**SHAPES["smollm2-135m"].__dict__, "max_seq_len": 1024}), 0, device, torch.bfloat16)
    cache = model.new_cache(600)
    model(torch.arange(200, device=device), torch.arange(200, device=device), cache)
    cache.commit()
    token, position = torch.tensor([5], device=device), torch.tensor([200], device=device)
    for _ in range(3):  # warm-up
        model(token, position, cache)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(token, position, cache)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    gpu = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    print(f"SmolLM2 shapes, bfloat16, a forward of one token under the profiler: {wall * 1e3:.1f} ms wall, "
          f"{sum(e.count for e in gpu)} GPU kernels, {sum(e.self_device_time_total for e in gpu) / 1e3:.2f} ms of GPU time")  # fmt: skip
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
