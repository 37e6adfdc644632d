"""What token recycling costs outside the forward, against one greedy step of the model.

Times (best of many, after warm-up) one greedy step of a ~200-token context, the
successor table's update from R rows of logits (top-K of each, then the write), and
drafting its tree (`recycled_offers`) with a warm table. Run from the repository root:

    .venv/bin/python bench/recycle_cost.py [--ckpt DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from minila import load_checkpoint
from minila.speed.budget import Acceptance
from minila.speed.recycle import SuccessorTable, recycled_offers


def best(fn, repeats: int = 50) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", default="weights/smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.ckpt, device="cpu")
    with torch.inference_mode():
        measure(model)


def measure(model) -> None:
    vocab = model.args.vocab_size
    gen = torch.Generator().manual_seed(0)
    cache = model.new_cache(400)
    model(torch.randint(vocab, (200,), generator=gen), torch.arange(200), cache, logits_for=torch.tensor([-1]))
    cache.commit()
    token, position = torch.tensor([5]), torch.tensor([200])
    step = best(lambda: model(token, position, cache, logits_for=torch.tensor([0])).argmax(-1).tolist())
    print(f"greedy step: {1000 * step:.2f} ms")
    table = SuccessorTable(vocab)
    for rows in (1, 4, 8, 16):
        logits = torch.randn(rows, vocab, generator=gen)  # (R, vocab)
        tokens = torch.randint(vocab, (rows,), generator=gen).tolist()
        argmax = best(lambda: logits.argmax(-1).tolist())
        update = best(lambda: table.update(tokens, logits))
        print(f"R={rows:2}: argmax {1000 * argmax:.3f} ms, table update (top-8 + write) {1000 * update:.3f} ms "
              f"= {100 * update / step:.1f}% of a greedy step")  # fmt: skip
    table.ids.copy_(torch.randint(vocab, table.ids.shape, generator=gen))  # a warm table: every row written
    acceptance = Acceptance()
    for size in (8, 16, 32):
        draft = best(lambda: recycled_offers(table, 5, acceptance, 127, size))
        print(f"tree of {size} nodes: {1000 * draft:.3f} ms = {100 * draft / step:.1f}% of a greedy step")


if __name__ == "__main__":
    main()
