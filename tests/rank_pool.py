"""A real 2-rank gloo process group that lives for the whole test session.

Starting processes is slow (each imports torch), so the ranks are started once and then
serve jobs: the test process sends the same job to every rank and reads back what each
decoded with `minila.parallel.decoder.parallel_generate` over real gloo collectives. The test
process is not a rank; it computes the oracles (greedy, single-process lookahead)
itself. A job names its model, so the ranks build exactly the test's model:
("tiny", seed, shape) with helpers.tiny_model, or ("checkpoint", path) loaded in float32.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import socket
import traceback
from datetime import timedelta


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankPool:
    def __init__(self, ranks: int = 2, timeout_s: float = 300.0) -> None:
        ctx = mp.get_context("spawn")
        port = free_port()
        self.timeout_s = timeout_s
        self.inboxes = [ctx.Queue() for _ in range(ranks)]
        self.outbox = ctx.Queue()
        self.procs = [
            ctx.Process(target=serve, args=(r, ranks, port, self.inboxes[r], self.outbox), daemon=True)
            for r in range(ranks)
        ]
        for p in self.procs:
            p.start()
        self.broken: str | None = None

    def run(self, job: dict) -> list[dict]:
        """Every rank's result for one job, in rank order."""
        if self.broken:
            raise RuntimeError(f"the rank pool broke earlier:\n{self.broken}")
        for inbox in self.inboxes:
            inbox.put(job)
        results = {}
        for _ in self.procs:
            try:
                rank, out = self.outbox.get(timeout=self.timeout_s)
            except queue.Empty:
                self.broken = f"a rank gave no answer within {self.timeout_s} s"
                raise RuntimeError(self.broken) from None
            if "error" in out:
                self.broken = out["error"]
                raise RuntimeError(f"rank {rank} failed:\n{out['error']}")
            results[rank] = out
        return [results[r] for r in sorted(results)]

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for p in self.procs:
            p.join(timeout=20)
            if p.is_alive():
                p.terminate()


def build_model(spec: tuple):
    if spec[0] == "tiny":
        import torch
        from helpers import tiny_model

        _, seed, shape, peak = spec
        model = tiny_model(seed, **shape)
        with torch.no_grad():
            model.output.weight.mul_(peak)
        return model
    from minila.llama.checkpoint import load_checkpoint

    return load_checkpoint(spec[1], device="cpu", dtype="float32")[0]


def serve(rank: int, ranks: int, port: int, inbox, outbox) -> None:
    import torch
    import torch.distributed as dist

    from minila.lookahead.loop import LookaheadConfig
    from minila.parallel.decoder import parallel_generate

    torch.set_num_threads(1)  # 2 ranks on the 2-core machine: one core each
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=ranks, timeout=timedelta(seconds=120)
    )
    models: dict = {}
    while (job := inbox.get()) is not None:
        try:
            key = repr(job["model"])
            if key not in models:
                models = {key: build_model(job["model"])}  # keep one: the real model is 0.5 GB
            config = LookaheadConfig(**job["config"])
            gen = parallel_generate(models[key], job["prompt"], job["max_new"], config, job["eos"])
            outbox.put((rank, {"tokens": gen.tokens, "steps": gen.steps, "stop_reason": gen.stop_reason,
                               "rank_widths": gen.rank_widths, "gather_seconds": sum(gen.gather_seconds)}))  # fmt: skip
        except Exception:
            outbox.put((rank, {"error": traceback.format_exc()}))
    dist.destroy_process_group()
