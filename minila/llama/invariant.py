"""The width-invariant forward: every row's logits independent of the step's width.

Lookahead feeds many tokens per step; greedy feeds one. If every operation computes a
row's numbers in an order that does not depend on how many rows share the call, nor
on where the row's keys sit in the cache, then by induction over positions and layers
a step's row gets bitwise the logits greedy computes for the same token, and
lookahead equals greedy in any dtype, not only where rounding happens to agree.

Operation by operation (bfloat16 and float32 on a CPU with oneDNN). Which call sizes keep
a kernel invariant is a fact about the CPU's kernels, so probe.py measures it on the
machine at hand with the model's shapes, and this forward takes its chunking from it
(rows per call, slice widths, attention's padding); tests/test_attention.py checks the
whole on the machine that runs it:

| operation | why a row's bits do not depend on the step | what had to change |
| --- | --- | --- |
| embedding, RoPE, SwiGLU's product, residual adds | elementwise (a gather; IEEE +, x), rows at the same offsets | nothing |
| SiLU | elementwise, but PyTorch's loop takes 32 elements at a time and leftovers with scalar code (a different exp), and it splits a call of more than GRAIN elements between threads wherever the halves fall | `SiluByRows`: calls of whole rows below GRAIN elements (and at most the rows probed invariant); the FFN's width a multiple of WIDTH (every Llama's is) |
| RMSNorm | a reduction over one row of `dim` contiguous values, inside one thread | `NormByRows`: at most the rows probed invariant per call |
| matrix products | oneDNN's pre-packed kernel computes each row alone, as long as the call keeps its kernel | as many rows per call and inner slices as wide as the probe found invariant, at most MAX_ROWS and MAX_INNER (InvariantLinear) |
| attention | attention.InvariantAttention: keys by absolute position, fixed blocks, products of >= 4 rows and >= 2 columns, or of fixed tiles where the CPU's kernels need them (probe) | a new kernel (the fused one splits by T) |

The products: oneDNN picks its kernel, and with it the order in which a dot product is
summed, from the call's shape. Measured: on an AVX512-BF16 CPU (Zen 5) a bfloat16 call
with more than about 6 rows blocks an inner length above 1024 differently; on an AMX
CPU (Sapphire Rapids) a bfloat16 call of more than 32 rows runs on AMX tiles, and a
float32 call of 2 or more rows blocks an inner length above 1024. Inside those limits
every row's bits were the same at every row count tried, for inner lengths that are
multiples of WIDTH = 64 (AMX rounds some short odd ones, 16 to 120, differently even for
a few rows; every Llama's widths are multiples of 64, and the forward refuses a model
whose are not). So `InvariantLinear` feeds at
most MAX_ROWS = 32 rows per call (a wider step: several calls, each reading the weight
again) and computes a longer inner length as the in-order float32 sum of products over
fixed slices of MAX_INNER = 1024 columns (the last one shorter): each call is invariant,
so is the sum.
The limits are facts about kernels, not laws: the probe measures them where the forward
runs (on an AVX2 CPU, MKL_ENABLE_INSTRUCTIONS=AVX2 on this Xeon: see README), and
MAX_ROWS, MAX_INNER are only the widest it tries. The chunked kernels themselves
(InvariantLinear, SiluByRows, NormByRows) live in `chunked.py`, below both this module
and the probe.

Cost: see README ("What is guaranteed") and bench/invariant_cost.py --cost. Exactness is
minila's promise, so "auto" takes it for bfloat16, where the plain forward measurably
leaves greedy's path at near-ties; in float32 the plain forward's rounding has never
flipped an argmax on any test, and "auto" keeps the faster plain one
(`--forward invariant` gives the guarantee there too).
"""

from __future__ import annotations

import torch

from minila.errors import MinilaError
from minila.llama.attention import InvariantAttention, PlainAttention
from minila.llama.chunked import InvariantLinear, NormByRows, SiluByRows
from minila.llama.model import Linear, RMSNorm, Transformer, not_native, packable_dtypes
from minila.llama.probe import Chunking, chunking_for

WIDTH = 64  # the model's widths must be multiples of this (every Llama's are; see the module docstring)
def invariant_ok(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the invariant forward can run here: bfloat16 or float32 on a CPU whose
    oneDNN pre-packs products in that dtype, natively (bfloat16: AVX512-BF16 or AMX;
    model.not_native). Whether it is then invariant, the probe says (probe.py)."""
    cpu = device.type == "cpu" and dtype in (torch.bfloat16, torch.float32) and dtype in packable_dtypes()
    return cpu and not not_native(dtype, device)


def why_not_invariant(dtype: torch.dtype, device: torch.device) -> str:
    """One line for a user: why `invariant_ok` is False."""
    if device.type != "cpu":
        return f"the invariant forward runs on a CPU only, not on {device.type}"
    if dtype not in (torch.bfloat16, torch.float32):
        return f"the invariant forward runs in bfloat16 or float32, not {str(dtype).removeprefix('torch.')}"
    return not_native(dtype, device) or "this torch has no oneDNN to run the invariant forward's products"


def widths_ok(model: Transformer) -> bool:
    return model.args.dim % WIDTH == 0 and model.args.hidden_dim % WIDTH == 0


def make_width_invariant(model: Transformer, chunking: Chunking | None = None) -> Transformer:
    """Switch `model` to the invariant forward, in place: the invariant attention kernel,
    every product an InvariantLinear, SiLU and the norms by rows (see the module docstring),
    each chunked as the probe found invariant on this machine (probe.py; `chunking`:
    given instead). Matrices are pre-packed first where they are not yet: a packed
    product always runs oneDNN, a plain one only above a size threshold."""
    if not invariant_ok(model.dtype, model.device):
        raise MinilaError(why_not_invariant(model.dtype, model.device))
    if not widths_ok(model):
        raise MinilaError(
            f"the model's width {model.args.dim} or FFN width {model.args.hidden_dim} is not a multiple of {WIDTH}, "
            "so its products and SiLU may round a row differently in a wide step; use the plain forward (--forward plain)"
        )
    chunking = chunking or chunking_for(model.args, model.dtype)
    if chunking.problem:
        raise MinilaError(f"the invariant forward is not invariant here: {chunking.problem}; use --forward plain")
    if not any(isinstance(m, Linear) and m.packed is not None for m in model.modules()):
        model.pack_weights()
    model.attention_kernel = InvariantAttention(chunking.attention_tile)
    for layer in model.layers:
        layer.feed_forward.activation = SiluByRows(chunking.silu_rows)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Linear):
                rows, inner = chunking.product(child.in_features, child.out_features)
                setattr(module, name, InvariantLinear(child, max_inner=inner, max_rows=rows))
            elif isinstance(child, RMSNorm):
                NormByRows.by_rows(child, chunking.norm_rows)
    return model


def choose_forward(model: Transformer, name: str) -> Transformer:
    """Give `model` the forward called `name`: "plain", "invariant", or "auto" (the
    invariant one for half precision where it is invariant, `invariant_ok`; see the
    module docstring for why float32 keeps the plain one)."""
    if name not in ("auto", "plain", "invariant"):
        raise MinilaError(f"unknown forward {name!r}; use auto, plain or invariant")
    auto = model.dtype in (torch.bfloat16, torch.float16) and widths_ok(model) and invariant_ok(model.dtype, model.device)
    if name == "invariant" or (name == "auto" and auto and not chunking_for(model.args, model.dtype).problem):
        return make_width_invariant(model)
    model.attention_kernel = PlainAttention()
    return model


def guarantee(model: Transformer) -> str:
    """What "identical to greedy" rests on for this model on this machine, in one line."""
    if model.attention_kernel.name == "invariant":
        return "bitwise by construction: the invariant forward, its kernels checked on this CPU (probe.py)"
    dtype = str(model.dtype).removeprefix("torch.")
    why = ""
    if invariant_ok(model.dtype, model.device) and widths_ok(model):
        problem = chunking_for(model.args, model.dtype).problem if model.dtype != torch.float32 else None
        why = f" ({problem})" if problem else ""
    if model.dtype in (torch.float32, torch.float64):
        return f"not by construction: the plain forward in {dtype} rounds a wide step's rows differently; no test has seen that change a token{why}"
    return f"none: the plain forward in {dtype} may leave greedy's path at near-ties{why}"

