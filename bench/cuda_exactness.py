"""How exact lookahead is on a CUDA GPU, per dtype: two measurements, printed as tables.

1. Width invariance. A model of SmolLM2's shapes (random weights) runs a causal step of T
   tokens after a 200-token cache, and the same tokens one at a time. Per dtype and T: are
   the step's rows bitwise the one-token steps' rows, and if not, how far apart? (On a CPU
   this is what `minila/llama/probe.py` checks; the invariant forward is CPU-only.)
2. Divergence rate. Random tiny models (as in the tests), random prompts: how often
   lookahead (the paper's W=15 N=5 G=15, and W=5 N=4 G=5 with a copy) leaves greedy's path,
   per dtype: float64, float32 with TF32 off and on, bfloat16, float16.

    python bench/cuda_exactness.py [--examples 200] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random

import torch

from minila import LookaheadConfig, greedy_generate, lookahead_generate
from minila.llama.model import ModelArgs, Transformer

SMOLLM2 = ModelArgs(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                    rope_theta=100000.0, max_seq_len=512, tie_embeddings=True)  # fmt: skip
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float32+tf32": torch.float32,
          "bfloat16": torch.bfloat16, "float16": torch.float16}  # fmt: skip
WIDTHS = (2, 4, 8, 16, 32, 64, 128)


def tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def random_model(args: ModelArgs, seed: int, device: str, dtype: torch.dtype) -> Transformer:
    """Random weights with unit-scale activations (as tests/helpers.py's tiny_model)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name == "tok_embeddings.weight":
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    return model.to(dtype).eval()


@torch.inference_mode()
def width_invariance(device: str, dtype_name: str, context: int = 200) -> list[dict]:
    tf32(dtype_name == "float32+tf32")
    model = random_model(SMOLLM2, 0, device, DTYPES[dtype_name])
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(SMOLLM2.vocab_size, (context + max(WIDTHS),), generator=gen).to(device)

    def fresh_cache():
        cache = model.new_cache(context + max(WIDTHS))
        model(tokens[:context], torch.arange(context, device=device), cache, logits_for=torch.tensor([-1], device=device))
        cache.commit()
        return cache

    cache = fresh_cache()
    alone = []
    for i in range(max(WIDTHS)):  # one token per step, each committed: greedy's view of every row
        p = torch.arange(context + i, context + i + 1, device=device)
        alone.append(model(tokens[context + i : context + i + 1], p, cache))
        cache.commit()
    alone = torch.cat(alone).float()
    rows = []
    for t in WIDTHS:
        cache = fresh_cache()
        step = model(tokens[context : context + t], torch.arange(context, context + t, device=device), cache).float()
        same = (step == alone[:t]).all(dim=-1)
        rows.append({"dtype": dtype_name, "T": t, "rows bitwise equal": f"{int(same.sum())}/{t}",
                     "max |diff|": f"{float((step - alone[:t]).abs().max()):.3g}",
                     "argmax equal": f"{int((step.argmax(-1) == alone[:t].argmax(-1)).sum())}/{t}"})  # fmt: skip
    tf32(False)
    return rows


@torch.inference_mode()
def divergence(device: str, dtype_name: str, examples: int) -> dict:
    tf32(dtype_name == "float32+tf32")
    configs = {"W15 N5 G15": LookaheadConfig(15, 5, 15), "W5 N4 G5 copy10": LookaheadConfig(5, 4, 5, copy=10)}
    left = {name: 0 for name in configs}
    tokens = 0
    for seed in range(examples):
        rng = random.Random(seed)
        vocab, heads = rng.choice([16, 64, 256]), rng.choice([(4, 2), (2, 1), (4, 4)])
        args = ModelArgs(vocab_size=vocab, dim=8 * heads[0], n_layers=rng.choice([1, 2]), n_heads=heads[0],
                         n_kv_heads=heads[1], hidden_dim=64, max_seq_len=256)  # fmt: skip
        model = random_model(args, seed, device, DTYPES[dtype_name])
        with torch.no_grad():
            model.output.weight.mul_(rng.choice([1.0, 4.0]))  # a peaky head: repetitive text, candidates match
        alphabet = rng.sample(range(vocab), rng.randint(1, 6))
        prompt = [rng.choice(alphabet) for _ in range(rng.randint(1, 24))]
        greedy = greedy_generate(model, prompt, 64).tokens
        tokens += len(greedy)
        for name, config in configs.items():
            left[name] += lookahead_generate(model, prompt, 64, config).tokens != greedy
    tf32(False)
    return {"dtype": dtype_name, "examples": examples, "tokens": tokens,
            **{f"{name}: not greedy's": f"{n}/{examples}" for name, n in left.items()}}  # fmt: skip


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", help="also write the rows as JSON here")
    a = p.parse_args()
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device
    print(f"# Exactness on {name}, torch {torch.__version__}\n")
    invariance = [r for d in DTYPES for r in width_invariance(a.device, d)]
    print("## Width invariance (SmolLM2 shapes, random weights, after 200 cached tokens)\n")
    print(table(invariance), "\n", flush=True)
    rates = [divergence(a.device, d, a.examples) for d in DTYPES]
    print("## Lookahead against greedy on random tiny models (64 new tokens each)\n")
    print(table(rates), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "invariance": invariance, "divergence": rates}, f, indent=1)


if __name__ == "__main__":
    main()
