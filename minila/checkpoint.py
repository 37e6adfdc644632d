"""Load an HF-format Llama folder into minila's `Transformer` and `Tokenizer`.

A folder holds config.json, the weights (model.safetensors, or shards listed in
model.safetensors.index.json, or pytorch_model.bin) and the tokenizer files. HF
names the weights `model.layers.3.self_attn.q_proj.weight`; minila uses Meta's names
(`layers.3.attention.wq.weight`), so loading is a rename. HF's q/k rows are already
in the rotate-half layout minila's RoPE uses: no permutation is needed.

The model is built on the meta device (no memory, no random init) and the loaded
tensors are assigned to it, so loading costs about one read of the weight files.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from minila.errors import MinilaError
from minila.invariant import choose_forward
from minila.model import Linear, ModelArgs, Transformer, rope_tables
from minila.tokenizer import Tokenizer

# ------------------------------------------------------------------------- options

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise MinilaError(f"unknown dtype {dtype!r}; use float32, float64, bfloat16 or float16")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" means the GPU when PyTorch sees one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise MinilaError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MinilaError(
                f"device {str(device)!r} was requested but PyTorch {torch.__version__} sees no CUDA GPU; "
                "use --device cpu (or install a CUDA build of PyTorch)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MinilaError(f"device {dev} does not exist: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise MinilaError("device 'mps' was requested but this PyTorch has no Apple-GPU support; use --device cpu")
    elif dev.type != "cpu":
        raise MinilaError(f"device type {dev.type!r} is not supported; use auto, cpu, cuda or mps")
    return dev


# ------------------------------------------------------------------------- config.json


def _rope_theta(config: dict) -> float:
    """Reject the RoPE variants minila does not implement, and return the base theta.

    transformers < 5 writes `rope_theta` and `rope_scaling`; transformers 5 writes both
    into `rope_parameters`.
    """
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in (None, "default"):
        raise MinilaError(
            f"this checkpoint uses RoPE scaling {kind!r} (e.g. Llama 3.1+), which minila does not implement; "
            "its outputs would be silently wrong, so it is refused"
        )
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def args_from_hf_config(config: dict) -> ModelArgs:
    """ModelArgs from an HF config.json, refusing anything that is not a plain Llama."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    max_len = int(config.get("max_position_embeddings", 2048))
    if model_type == "mistral":  # a Llama, unless its sliding window actually bites
        window = config.get("sliding_window")
        if window is not None and window < max_len:
            raise MinilaError(
                f"this Mistral model uses sliding-window attention ({window} < context {max_len}); "
                "minila runs full attention only"
            )
    elif model_type != "llama":
        raise MinilaError(
            f"config.json describes a {model_type!r} model {architectures}; minila runs Llama-architecture "
            "models only (model_type 'llama', architectures LlamaForCausalLM)"
        )
    unknown = set(architectures) - {"LlamaForCausalLM", "MistralForCausalLM"}
    if unknown:
        raise MinilaError(f"config.json names architectures {sorted(unknown)}; minila loads LlamaForCausalLM only")
    if config.get("hidden_act", "silu") != "silu":
        raise MinilaError(f"hidden_act {config['hidden_act']!r} is not SwiGLU's silu; minila cannot run this model")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise MinilaError("this checkpoint has attention/MLP biases; minila's Llama has none")

    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if config.get(k) is None]  # fmt: skip
    if missing:
        raise MinilaError(f"config.json lacks {', '.join(missing)}; is it an HF transformers config?")
    dim, n_heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = config.get("head_dim")
    if head_dim is not None and (dim % n_heads or head_dim != dim // n_heads):
        raise MinilaError(
            f"config head_dim {head_dim} differs from hidden_size / num_attention_heads = {dim}/{n_heads}; "
            "minila derives head_dim from those and cannot run this model"
        )
    try:
        return ModelArgs(
            vocab_size=int(config["vocab_size"]),
            dim=dim,
            n_layers=int(config["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
            hidden_dim=int(config["intermediate_size"]),
            rope_theta=_rope_theta(config),
            norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            max_seq_len=max_len,
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except ValueError as e:
        raise MinilaError(f"config.json is inconsistent: {e}") from None


# ------------------------------------------------------------------------- weights

# HF name -> Meta name; the per-layer part follows "model.layers.{i}."
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def meta_name(hf_name: str) -> str | None:
    """minila's name for an HF tensor; None for tensors to skip (old saved RoPE buffers)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise MinilaError(f"unexpected tensor {hf_name!r} in the checkpoint; minila loads plain Llama weights only")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, in the order HF prefers them."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise MinilaError(f"{index_name} lists shards that are missing from {folder}: {missing[:3]}")
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise MinilaError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # weights_only=True: a pickle may carry code; this refuses anything but tensors
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def load_state_dict(folder: Path, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Every weight of the folder under its minila name, in `dtype` on `device`."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        for hf_name, tensor in _read_tensors(path).items():
            name = meta_name(hf_name)
            if name is not None:
                state[name] = tensor.to(device=device, dtype=dtype)
    return state


# ------------------------------------------------------------------------- the model


def build_model(args: ModelArgs, state: dict[str, torch.Tensor], device: torch.device) -> Transformer:
    """A Transformer whose parameters are exactly the tensors in `state` (minila names)."""
    if "output.weight" not in state and "tok_embeddings.weight" in state and not args.tie_embeddings:
        # no lm_head in the files: HF would leave it random; the embedding is the only sensible head
        args = dataclasses.replace(args, tie_embeddings=True)
    if args.tie_embeddings and "tok_embeddings.weight" in state:
        state = {**state, "output.weight": state["tok_embeddings.weight"]}

    with torch.device("meta"):  # shapes only: no allocation, no random init
        model = Transformer(args)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise MinilaError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}; is it complete?")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise MinilaError(
                f"tensor {name} has shape {tuple(state[name].shape)} but config.json implies {shape}; "
                "config.json and the weights disagree"
            )
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_embeddings:  # assign=True replaced both parameters: tie them again
        model.output.weight = model.tok_embeddings.weight
    # the RoPE tables are buffers, not weights: compute them for real (kept in float32)
    cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
    model.rope_cos, model.rope_sin = cos.to(device), sin.to(device)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:  # a new buffer in model.py that this loader does not know how to fill
        raise RuntimeError(f"checkpoint loader left tensors on the meta device: {leftover}")
    return model.eval().requires_grad_(False)


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    pack: bool = True,
    forward: str = "auto",
) -> tuple[Transformer, Tokenizer]:
    """Load an HF-format Llama folder: returns (model in eval mode, tokenizer).
    `pack`: pre-pack the matrices for fast CPU inference (Transformer.pack_weights: float32,
    and bfloat16/float16 where the CPU has the instructions; the packed copy replaces the plain one).
    `forward`: "plain", "invariant" (each row's logits independent of the step's width:
    invariant.py), or "auto" (invariant where that holds: bfloat16 on a CPU)."""
    folder = Path(path)
    if not folder.is_dir():
        raise MinilaError(f"checkpoint folder {folder} does not exist; run `make weights` or pass --ckpt DIR")
    if not (folder / "config.json").is_file():
        raise MinilaError(f"{folder} has no config.json; point --ckpt at an HF-format model folder")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if forward not in ("auto", "plain", "invariant"):  # fail before the (slow) load
        raise MinilaError(f"unknown forward {forward!r}; use auto, plain or invariant")
    with open(folder / "config.json", encoding="utf-8") as f:
        args = args_from_hf_config(json.load(f))
    tokenizer = Tokenizer.from_folder(folder)  # before the weights: fail fast on a missing tokenizer
    if tokenizer.vocab_size > args.vocab_size:
        raise MinilaError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {args.vocab_size}; "
            "the tokenizer files belong to another model"
        )
    model = build_model(args, load_state_dict(folder, dt, dev), dev)
    if pack:
        _copy_out_of_the_files(model)
        model.pack_weights()
    return choose_forward(model, forward), tokenizer


def _copy_out_of_the_files(model: Transformer) -> None:
    """Give the tensors that packing keeps plain (embedding, norms) memory of their own.

    safetensors and torch.load(mmap=True) hand out tensors backed by one mapping of
    each file, and the mapping, with every page read so far, stays resident while any
    of them lives. Packing reads the matrices straight from it; once the rest is copied
    out, the mapping goes with the packing: the weights are held once.
    """
    for module in model.modules():
        if not isinstance(module, Linear):  # a tied head is the embedding's weight: copied here
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()
