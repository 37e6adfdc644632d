"""Lookahead parallelism, part 3: ranks started by torchrun.

    torchrun --nproc-per-node K -m minila.generate --ckpt DIR -W 15 -N 5 -G 15 --copy 0 ...

torchrun starts K copies of the command and tells each, in its environment, its RANK,
the WORLD_SIZE K, its LOCAL_RANK on this machine and where the rendezvous is
(MASTER_ADDR, MASTER_PORT). `minila.generate` sees RANK and WORLD_SIZE and hands over
to `cli/generate_ranks.py`; a plain `python -m minila.generate` never imports it.

Each rank takes one device: the CPU (gloo collectives) or GPU cuda:LOCAL_RANK (NCCL).
Bad launches end every rank with exit code 2 and one line. Who prints it: an error that
every rank finds from the same inputs (the options, more ranks than window columns or
GPUs) is printed by rank 0 alone, since K copies of the same line help nobody; an error
only some ranks may meet (reaching the rendezvous) is printed by each rank that meets
it, with its rank, since rank 0 may never know.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

import torch

from minila.errors import MinilaError


class LaunchError(MinilaError):
    """A bad launch. `local`: only this rank can know (it prints the message itself)."""

    def __init__(self, message: str, local: bool = False) -> None:
        super().__init__(message)
        self.local = local


@dataclass(frozen=True)
class Launch:
    rank: int
    world: int  # K ranks in all
    local_rank: int  # this rank's index on its machine: its GPU
    local_world: int  # ranks on this machine


def launched_by_torchrun(env: Mapping[str, str] = os.environ) -> bool:
    return "RANK" in env and "WORLD_SIZE" in env


def read_launch(env: Mapping[str, str] = os.environ) -> Launch:
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise LaunchError("RANK, WORLD_SIZE, LOCAL_RANK must be integers: launch with torchrun") from None
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise LaunchError(f"rank {rank} of {world} (local {local_rank} of {local_world}) is not a valid launch")
    return Launch(rank, world, local_rank, local_world)


def rank_device(device: str, launch: Launch) -> tuple[torch.device, str]:
    """This rank's device and the collective backend for it."""
    if device.startswith("cuda:"):
        raise LaunchError(f"--device {device}: under torchrun each rank takes GPU LOCAL_RANK; pass --device cuda")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu"), "gloo"
    if device != "cuda":
        raise LaunchError(f"--device {device}: lookahead parallelism runs on cpu (gloo) or cuda (NCCL)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if launch.local_world > count:
        fix = f"use --nproc-per-node {count} or less, or --device cpu" if count else "use --device cpu"
        raise LaunchError(f"{launch.local_world} ranks on this machine but {count} CUDA GPU(s) visible (one per rank): {fix}")
    return torch.device("cuda", launch.local_rank), "nccl"


def check_split(window: int, launch: Launch) -> None:
    if launch.world > window:
        raise LaunchError(
            f"{launch.world} ranks but the window has {window} columns: every rank needs one; "
            f"use --nproc-per-node {window} or less, or a wider --window"
        )


def join_group(launch: Launch, backend: str, device: torch.device, timeout_s: float) -> None:
    """Join the process group at the rendezvous torchrun announced, or fail clearly."""
    import torch.distributed as dist

    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise LaunchError(
            f"no rendezvous: {' and '.join(missing)} not set; start the ranks with "
            "`torchrun --nproc-per-node K -m minila.generate ...`"
        )
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    # Import torch._dynamo before the group exists. Building the model imports it anyway
    # (torch._refs -> torch._compile), and with it torch.distributed.nn.functional, whose
    # functions take `group=group.WORLD` as a default bound at import time. Imported after
    # init, those defaults pin the WORLD group: destroy_process_group() cannot free it, and
    # its gloo threads live on into interpreter teardown, where rank 0 sometimes aborted
    # ("terminate called without an active exception", issue 11). Imported before, they hold None.
    import torch._dynamo  # noqa: F401

    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        with _quiet_stderr():  # c10d logs every connection retry, stack frames included; we say it in one line
            dist.init_process_group(
                backend, rank=launch.rank, world_size=launch.world, timeout=timedelta(seconds=timeout_s),
                **({"device_id": device} if device.type == "cuda" else {}),  # NCCL: bind this rank's GPU now
            )
            dist.barrier()  # every rank is there: the first collective must not wait on a missing one
    except Exception as e:  # torch raises several kinds (DistNetworkError, RuntimeError, ValueError)
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise LaunchError(
            f"rank {launch.rank}: could not join the {launch.world}-rank group at the rendezvous {where} within "
            f"{timeout_s:g} s ({reason}); check that all ranks were started (--rendezvous-timeout to wait longer)",
            local=True,
        ) from None


@contextmanager
def _quiet_stderr():
    """Send file descriptor 2 (where C++ logs go) to /dev/null for a while."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def leave_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:  # leave together: a rank tearing gloo down while another still talks to it can abort
            dist.barrier()
        except Exception:  # a rank that failed may be gone already; leave anyway
            pass
        dist.destroy_process_group()


def fail(error: MinilaError, launch: Launch | None) -> int:
    """Print the one line by the rule in the module docstring; every rank returns 2."""
    local = isinstance(error, LaunchError) and error.local
    if launch is None or launch.rank == 0 or local:
        print(f"error: {error}", file=sys.stderr, flush=True)
    return 2
