"""minila: a readable reference implementation of Lookahead Decoding (Fu et al., ICML 2024)."""

from minila.checkpoint import load_checkpoint
from minila.errors import MinilaError
from minila.generation import Generation, StepStat
from minila.greedy import greedy_generate
from minila.jacobi import JacobiGeneration, jacobi_generate
from minila.lookahead import LookaheadConfig, lookahead_generate
from minila.model import ModelArgs, Transformer
from minila.sampling import SamplingConfig, sample_generate

__all__ = [
    "Generation",
    "LookaheadConfig",
    "MinilaError",
    "ModelArgs",
    "SamplingConfig",
    "StepStat",
    "Transformer",
    "greedy_generate",
    "jacobi_generate",
    "load_checkpoint",
    "JacobiGeneration",
    "lookahead_generate",
    "sample_generate",
]
