"""minila: a readable reference implementation of Lookahead Decoding (Fu et al., ICML 2024)."""

from minila.decoding.generation import Generation, StepStat
from minila.decoding.greedy import greedy_generate
from minila.decoding.sampling import SamplingConfig, sample_generate
from minila.errors import MinilaError
from minila.llama.checkpoint import load_checkpoint
from minila.llama.model import ModelArgs, Transformer
from minila.lookahead.jacobi import JacobiGeneration, jacobi_generate
from minila.lookahead.loop import LookaheadConfig, lookahead_generate

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
