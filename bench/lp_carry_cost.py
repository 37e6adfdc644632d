"""Lookahead parallelism: is it cheaper to re-feed a step's accepted tokens or to move their KV?

The m candidate tokens a step accepts were fed by one rank only. Either every rank feeds
them again at the start of the next step (m more rows in a forward that runs anyway:
what minila.parallel does), or the winning rank sends their keys and values to the
others (a broadcast of m x layers x 2 x kv_heads x head_dim numbers, after the
all-gather that names the winner, so a second collective on every step's critical path).
This times both on the machine at hand, with every rank busy as in decoding, and the
all-gather of the step's payload for reference. From the repository root:

    PYTHONPATH=. .venv/bin/torchrun --nproc-per-node 2 bench/lp_carry_cost.py [LOW HIGH] [CONTEXT]

A rank's step feeds LOW..HIGH rows before the re-feed (default 10..20, one rank's share of
W=5 N=4 G=5 copy=10 on 2 ranks); the extra cost of m re-fed rows is averaged over those
widths, since one width alone can sit on a lucky or unlucky kernel size. Rank 0 prints.
"""

import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from minila.llama.checkpoint import load_checkpoint

low, high = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (10, 20)
context = int(sys.argv[3]) if len(sys.argv) > 3 else 200
repeats = 20
ms = (1, 2, 3, 5, 10)
dist.init_process_group("gloo", timeout=timedelta(seconds=120))
rank = dist.get_rank()
torch.set_num_threads(1)
model, _ = load_checkpoint("weights/smollm2-135m-instruct", device="cpu", dtype="float32")
a = model.args
gen = torch.Generator().manual_seed(0)
cache = model.new_cache(context + high + max(ms) + 1)
with torch.inference_mode():
    model(torch.randint(a.vocab_size, (context,), generator=gen), torch.arange(context), cache, logits_for=torch.tensor([-1]))
    cache.commit()


def median_ms(fn) -> float:
    times = []
    for i in range(repeats + 2):
        dist.barrier()  # every rank starts together: the same contention as in decoding
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[2:])


def forward(t: int):
    tokens = torch.randint(a.vocab_size, (t,), generator=gen)
    positions = torch.arange(context, context + t)

    def run():
        with torch.inference_mode():
            model(tokens, positions, cache, logits_for=torch.arange(t))  # scratch rows only, never committed
    return run


def broadcast_kv(m: int):
    kv = torch.zeros(2, a.n_layers, a.n_kv_heads, m, a.head_dim)  # what the winner would send

    def run():
        dist.broadcast(kv, src=0)
        for layer in range(a.n_layers):  # ... and each receiver writes into its cache
            cache.k[layer, :, context : context + m] = kv[0, layer]
            cache.v[layer, :, context : context + m] = kv[1, layer]
    return run


payload = torch.zeros(3 + 11 + 5, dtype=torch.long)  # the step's payload: W=5, N=4, copy=10
slots = [torch.empty_like(payload) for _ in range(dist.get_world_size())]
gather_ms = median_ms(lambda: dist.all_gather(slots, payload))
step_ms = {t: median_ms(forward(t)) for t in range(low, high + max(ms) + 1)}
rows = []
for m in ms:
    refeed = statistics.fmean(step_ms[t + m] - step_ms[t] for t in range(low, high + 1))
    move = median_ms(broadcast_kv(m))
    rows.append((m, refeed, move, 4 * 2 * a.n_layers * a.n_kv_heads * a.head_dim * m / 1024))
if rank == 0:
    mean_step = statistics.fmean(step_ms[t] for t in range(low, high + 1))
    print(f"SmolLM2 fp32, {dist.get_world_size()} gloo ranks x 1 thread, {context}-token cache, a rank's step of "
          f"{low}..{high} rows: {mean_step:.1f} ms; all-gather of the step payload: {gather_ms:.3f} ms\n")
    print("| accepted m | re-feed: extra forward ms | move KV: broadcast + write ms | KV bytes |")
    print("| --- | --- | --- | --- |")
    for m, refeed, move, kib in rows:
        print(f"| {m} | {refeed:.2f} | {move:.2f} | {kib:.0f} KiB |")
dist.destroy_process_group()
