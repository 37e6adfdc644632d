"""The kernel probe: is the invariant forward invariant on *this* CPU, and how to chunk it.

invariant.py's argument holds only if every kernel it calls gives a row the same bits
whatever else shares the call. oneDNN, MKL and PyTorch pick their kernels (and with them
the order of a sum) by instruction set and by shape, so that is a fact about the machine,
not about the code: an AVX2 CPU rounds shapes that an AMX one does not. So it is measured
here, with the model's own shapes and dtype, on random data, before the forward uses it:

| kernel | checked | what it decides |
| --- | --- | --- |
| each matrix product (inner length n, out length m) | calls of 1..MAX_ROWS rows against one-row calls, for inner slices of 1024, 512 ... 64 | rows per call and slice width (InvariantLinear) |
| attention | steps of T rows after P cached keys against one-token steps, for each product shape in TILES | InvariantAttention.tile, or: not invariant here |
| SiLU, RMSNorm | calls of 1..n rows against one-row calls | rows per call |

A chunk of one row is always invariant (it *is* greedy's call), so products, SiLU and the
norm always get a setting; only attention can fail. A check compares bits, so a kernel
that passes was invariant on these shapes and row counts, on this machine: that is what
the probe can say, no more. It takes a second or two, and its result is kept in the cache
folder (user_files.py) per CPU model and flags, torch version, threads, the instruction-set
switches (ISA_SWITCHES) and the model's shapes and dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from minila.llama.attention import InvariantAttention
from minila.llama.chunked import GRAIN, MAX_INNER, MAX_ROWS, InvariantLinear, in_row_chunks
from minila.llama.model import Linear, ModelArgs, RMSNorm
from minila.user_files import cache_root

INNERS = (MAX_INNER, 512, 256, 128, 64)  # slice widths tried for a product's inner length, widest first
TILES = ((4, 0), (4, 16), (16, 16))  # attention's product shapes tried (attention._product), cheapest first
CACHED = (0, 5, 70, 300)  # cached keys before a probed step: none, inside the first block, past it, far past
STEPS = (*range(1, 9), 12, 16, 24, 32, 48, 64)  # step widths tried for attention
ISA_SWITCHES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
# CPU classes a bigger CPU can stand in for by capping torch's, oneDNN's and MKL's
# instruction sets (each a cap: it never enables what the CPU lacks), and the flag
# (/proc/cpuinfo) a CPU needs above that class for the stand-in to differ from itself
STAND_INS = {
    "AVX2": ("avx512f", "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"),
    "AVX512": ("avx512_bf16", "ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE MKL_ENABLE_INSTRUCTIONS=AVX512"),
    "AVX512_BF16": ("amx_bf16", "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"),
}


@dataclass(frozen=True)
class Chunking:
    """How the invariant forward calls its kernels on this machine (what the probe found)."""

    products: dict[str, tuple[int, int]] = field(default_factory=dict)  # "n_in,n_out" -> (rows per call, slice)
    silu_rows: int = 1
    norm_rows: int = 1
    attention_tile: tuple[int, int] | None = None  # None: no setting tried made attention invariant here
    seconds: float = 0.0

    def product(self, n_in: int, n_out: int) -> tuple[int, int]:
        return self.products.get(f"{n_in},{n_out}", (1, n_in))

    @property
    def problem(self) -> str | None:
        """Why the invariant forward is not invariant here (None: it is)."""
        if self.attention_tile is None:
            return "attention rounds some rows of a wide step differently from a one-token step on this CPU"
        return None


def rows_alone(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """The most rows m such that every call of 1..m rows gives each row the bits of a
    one-row call. x: (2 * rows, n). Each call size reads another window of x: a kernel
    whose sum order changes shows only where the rounded result flips, which depends
    on the data, so every size gets fresh rows."""
    alone = torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])
    for m in range(2, x.shape[0] // 2 + 1):
        at = m * 7 % (x.shape[0] - m + 1)  # a window that moves with m
        if not torch.equal(fn(x[at : at + m]), alone[at : at + m]):
            return m - 1
    return x.shape[0] // 2


@torch.no_grad()
def probe_product(n_in: int, n_out: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[int, int]:
    """(rows per call, slice width) for x @ W.T with W (n_out, n_in): the most rows,
    then the widest slice, with which every row count gives every row the same bits."""
    linear = Linear(n_in, n_out).requires_grad_(False)
    linear.weight.copy_(torch.randn(n_out, n_in, generator=gen) / n_in**0.5)
    linear = linear.to(dtype)
    x = torch.randn(2 * MAX_ROWS, n_in, generator=gen).to(dtype)
    best = (1, n_in)
    for inner in INNERS:
        if inner > n_in and inner != INNERS[0]:
            continue  # one slice already: a narrower "slice" is the same call
        product = InvariantLinear(linear, max_inner=inner, max_rows=MAX_ROWS)
        rows = rows_alone(product, x)
        if rows > best[0]:
            best = (rows, inner)
        if rows == MAX_ROWS:
            break
    return best


@torch.no_grad()
def probe_attention(args: ModelArgs, dtype: torch.dtype, gen: torch.Generator) -> tuple[int, int] | None:
    """The first product shape (of TILES) with which every row of a causal step of T
    rows after P cached keys equals the same token's one-token step, for every P in
    CACHED and T in STEPS; None if none does."""
    h, hkv, hd = args.n_heads, args.n_kv_heads, args.head_dim
    longest = max(CACHED) + max(STEPS)
    q = torch.randn(h, longest, hd, generator=gen).to(dtype)
    keys = torch.randn(hkv, longest, hd, generator=gen).to(dtype)
    values = torch.randn(hkv, longest, hd, generator=gen).to(dtype)
    one = torch.ones(1, 1, dtype=torch.bool)
    for tile in TILES:
        kernel = InvariantAttention(tile)

        def attend(p: int, t: int) -> torch.Tensor:  # t rows at positions p..p+t-1, causal: (H, T, hd)
            mask = torch.ones(t, t, dtype=torch.bool).tril_() if t > 1 else one
            plan = kernel.plan(mask, torch.arange(p, p + t), p)
            return plan.attend(q[:, p : p + t], keys[:, : p + t], values[:, : p + t])

        alone: dict[int, torch.Tensor] = {}  # position -> its one-token step's result, (H, 1, hd)

        def one_token_steps(p: int, t: int) -> torch.Tensor:  # (H, T, hd)
            for i in range(p, p + t):
                alone.setdefault(i, attend(i, 1))
            return torch.cat([alone[i] for i in range(p, p + t)], dim=1)

        if all(torch.equal(attend(p, t), one_token_steps(p, t)) for p in CACHED for t in STEPS):
            return tile
    return None


def probe(args: ModelArgs, dtype: torch.dtype) -> Chunking:
    """Measure every kernel of the invariant forward on this machine (module docstring)."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    kv = args.n_kv_heads * args.head_dim
    shapes = {(args.dim, args.dim + 2 * kv), (args.dim, args.dim), (args.dim, 2 * args.hidden_dim),
              (args.hidden_dim, args.dim), (args.dim, args.vocab_size)}  # fmt: skip
    with torch.no_grad():  # not inference mode: a packed Linear tracks its weight's version
        products = {f"{n},{m}": probe_product(n, m, dtype, gen) for n, m in sorted(shapes)}
        gate = torch.randn(2 * max(1, GRAIN // args.hidden_dim), args.hidden_dim, generator=gen).to(dtype)
        silu_rows = rows_alone(lambda x: in_row_chunks(F.silu, x, x.shape[0]), gate)
        norm = RMSNorm(args.dim, args.norm_eps).to(dtype)
        norm_rows = rows_alone(norm, torch.randn(2 * MAX_ROWS, args.dim, generator=gen).to(dtype))
    attention = probe_attention(args, dtype, gen)
    return Chunking(products, silu_rows, norm_rows, attention, round(time.perf_counter() - start, 3))


def machine_key() -> dict:
    """What the kernels depend on: the CPU (model and flags), torch, threads, the switches."""
    cpu = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "flags", "Features", "CPU part") and name.strip() not in cpu:
                cpu[name.strip()] = value.strip()
    except OSError:  # not Linux: the platform's own description
        cpu["processor"] = platform.processor()
    return {"cpu": cpu, "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "switches": {k: os.environ.get(k) for k in ISA_SWITCHES}}  # fmt: skip


def cpu_name() -> str:
    """The CPU in a few words, for messages: its model name and torch's instruction set."""
    name = machine_key()["cpu"].get("model name") or platform.processor() or platform.machine()
    return f"{name}, torch {torch.backends.cpu.get_cpu_capability()}"


def _cache_file(args: ModelArgs, dtype: torch.dtype) -> Path:
    shapes = [args.dim, args.hidden_dim, args.vocab_size, args.n_heads, args.n_kv_heads, args.norm_eps, str(dtype)]
    key = json.dumps([machine_key(), shapes], sort_keys=True)
    return cache_root() / f"probe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def chunking_for(args: ModelArgs, dtype: torch.dtype) -> Chunking:
    """The probe's result for this model's shapes on this machine: measured once, then read back."""
    path = _cache_file(args, dtype)
    try:
        saved = json.loads(path.read_text())
        tile = saved["attention_tile"] and tuple(saved["attention_tile"])  # JSON keeps lists
        return Chunking(**{**saved, "products": {k: tuple(v) for k, v in saved["products"].items()}, "attention_tile": tile})
    except (OSError, ValueError, TypeError, KeyError):
        pass
    found = probe(args, dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")  # then renamed: a killed run leaves no half file
        partial.write_text(json.dumps(asdict(found)))
        os.replace(partial, path)
    except OSError:  # an unwritable cache only costs probing again next time
        pass
    return found


def stand_ins() -> dict[str, str]:
    """The CPU classes this machine can stand in for: name -> the switches, as VAR=value words."""
    flags = set(machine_key()["cpu"].get("flags", "").split())
    return {name: switches for name, (above, switches) in STAND_INS.items() if above in flags}

