"""RoPE frequencies, plain and scaled the ways Llama checkpoints ask for.

Rotary embeddings turn position p into rotations by the angles p * f_i, one frequency
f_i = theta^(-2i/d) per pair of dimensions (i < d/2). A model trained on short
contexts and stretched to long ones changes those frequencies, once, at load time:

- "linear" (position interpolation): every f_i / factor, so position p looks like p / factor.
- "llama3" (Llama 3.1, 3.2, 3.3): only the slow frequencies are stretched. With the
  pretraining context L and a pair's wavelength 2*pi / f_i:
      wavelength < L / high_freq_factor  ->  f_i unchanged (local detail stays sharp)
      wavelength > L / low_freq_factor   ->  f_i / factor
      in between                         ->  interpolated: (1 - s) f_i / factor + s f_i,
                                             s = (L / wavelength - low) / (high - low)
  Both leave the attention scale alone, so the tables are still plain cos and sin.

The arithmetic runs in float32, in the order transformers uses, so the tables agree
with its `LlamaForCausalLM` bit for bit; the model casts them to its dtype per step.
Other kinds (dynamic NTK, YaRN, LongRoPE) also rescale the attention or depend on
the sequence length: `checkpoint.py` refuses them by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("linear", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How a checkpoint stretches RoPE (see the module docstring)."""

    kind: str  # "linear" or "llama3"
    factor: float
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_len: int = 8192  # llama3 only: the pretraining context L

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RoPE scaling kind must be one of {KINDS}, got {self.kind!r}")
        if not self.factor > 0:
            raise ValueError(f"RoPE scaling factor must be > 0, got {self.factor}")
        if self.kind == "llama3":
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError(
                    f"llama3 RoPE needs 0 < low_freq_factor < high_freq_factor, got "
                    f"{self.low_freq_factor} and {self.high_freq_factor}"
                )
            if self.original_max_len < 1:
                raise ValueError(f"llama3 RoPE needs original_max_position_embeddings >= 1, got {self.original_max_len}")


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """f_i for the head_dim / 2 rotated pairs, (head_dim / 2,) float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    low, high, context = scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_max_len
    wavelength = 2 * math.pi / inv_freq
    stretched = torch.where(wavelength > context / low, inv_freq / scaling.factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    blended = (1 - smooth) * stretched / scaling.factor + smooth * stretched
    middle = (wavelength >= context / high) & (wavelength <= context / low)
    return torch.where(middle, blended, stretched)
