"""Load an HF-format Llama (or Qwen2) folder into minila's `Transformer` and `Tokenizer`.

A folder holds config.json, the weights (model.safetensors, or shards listed in
model.safetensors.index.json, or pytorch_model.bin) and the tokenizer files. HF
names the weights `model.layers.3.self_attn.q_proj.weight`; minila uses Meta's names
(`layers.3.attention.wq.weight`), so loading is a rename. HF's q/k rows are already
in the rotate-half layout minila's RoPE uses: no permutation is needed.

The model is built on the meta device (no memory, no random init) and the loaded
tensors are assigned to it, so loading costs about one read of the weight files.
"""

from __future__ import annotations

import ctypes
import dataclasses
import re
from pathlib import Path

import torch

from minila.errors import MinilaError
from minila.llama.files import FIX, broken, config_value, first_line, read_json
from minila.llama.invariant import choose_forward
from minila.llama.model import Linear, ModelArgs, Transformer, not_native, rope_tables
from minila.llama.rope import KINDS as ROPE_KINDS
from minila.llama.rope import RopeScaling
from minila.llama.tokenizer import Tokenizer

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
    elif dev.index not in (None, 0):
        raise MinilaError(f"device {str(device)!r}: PyTorch has one CPU device; use --device cpu")
    return dev


# ------------------------------------------------------------------------- config.json

CONFIG = Path("config.json")  # the name errors give when args_from_hf_config is called on a dict


def _rope(config: dict, path: Path) -> tuple[float, RopeScaling | None]:
    """The base theta and the scaling, from either spelling of config.json.

    transformers < 5 writes `rope_theta` and `rope_scaling` (None, or a dict with
    `rope_type`, or `type` in older files); transformers 5 writes one `rope_parameters`
    dict holding both. Kinds minila does not implement are refused by name: their
    outputs would be silently wrong.
    """
    # as transformers reads them: rope_scaling, when present, wins; the dict's theta over the top-level one
    params = config_value(config, "rope_scaling", dict, path) or config_value(config, "rope_parameters", dict, path)
    params = params or {}
    theta = config_value(params, "rope_theta", float, path)
    theta = config_value(config, "rope_theta", float, path, 10000.0) if theta is None else theta
    if not theta > 0:
        raise broken(path, f"rope_theta is {theta!r}, but must be > 0")
    if config_value(config, "partial_rotary_factor", float, path, 1.0) != 1.0:
        raise MinilaError(f"{path}: partial_rotary_factor is not 1: minila rotates whole heads and cannot run this model")
    kind = params.get("rope_type", params.get("type")) or "default"
    if kind == "default":
        return theta, None
    if kind not in ROPE_KINDS:
        raise MinilaError(
            f"{path}: RoPE scaling {kind!r} is not implemented (minila runs default, linear and llama3 RoPE); "
            "its outputs would be silently wrong, so the model is refused: use a checkpoint without it"
        )
    factor = config_value(params, "factor", float, path)
    if factor is None:
        raise broken(path, f"the {kind} RoPE scaling lacks its factor")
    fields = {}
    if kind == "llama3":
        for key, name in (("low_freq_factor", "low_freq_factor"), ("high_freq_factor", "high_freq_factor")):
            fields[name] = config_value(params, key, float, path)
            if fields[name] is None:
                raise broken(path, f"the llama3 RoPE scaling lacks {key}")
        # transformers falls back to the model's context when the pretraining one is not given
        original = config_value(params, "original_max_position_embeddings", int, path)
        fields["original_max_len"] = original or config_value(config, "max_position_embeddings", int, path, 2048)
    try:
        return theta, RopeScaling(kind, factor, **fields)
    except ValueError as e:
        raise broken(path, str(e)) from None


def _qwen2_sliding_window(config: dict, path: Path, max_len: int) -> None:
    """Refuse a Qwen2 whose sliding window bites: transformers slides the layers from
    `max_window_layers` on (or those `layer_types` names) when `use_sliding_window` is
    set; minila runs full attention only. A window as long as the context is full attention."""
    n_layers = config_value(config, "num_hidden_layers", int, path, 1, low=1)
    layer_types = config_value(config, "layer_types", list, path)
    if layer_types is not None:
        unknown = sorted({str(t) for t in layer_types} - {"full_attention", "sliding_attention"})
        if unknown:
            raise MinilaError(f"{path}: layer_types {unknown} are not implemented; minila runs full attention only")
        sliding = "sliding_attention" in layer_types
    else:
        first = config_value(config, "max_window_layers", int, path, n_layers)
        sliding = config_value(config, "use_sliding_window", bool, path, False) and first < n_layers
    window = config_value(config, "sliding_window", int, path)
    if sliding and window is not None and window < max_len:
        raise MinilaError(
            f"{path}: this Qwen2 model uses sliding-window attention (use_sliding_window, a window of {window} "
            f"< context {max_len}); minila runs full attention only: set use_sliding_window to false if the "
            "model was trained without it"
        )


# the classes each model_type may name (a Mistral without a biting window is a Llama)
_ARCHITECTURES = {
    "llama": {"LlamaForCausalLM", "MistralForCausalLM"},
    "mistral": {"LlamaForCausalLM", "MistralForCausalLM"},
    "qwen2": {"Qwen2ForCausalLM"},
}


def args_from_hf_config(config: dict, path: Path = CONFIG) -> ModelArgs:
    """ModelArgs from an HF config.json, refusing anything that is not a plain Llama or
    a Qwen2 (a Llama with q/k/v biases). `path` names the file in error messages."""
    model_type = config_value(config, "model_type", str, path)
    architectures = config_value(config, "architectures", list, path, [])
    max_len = config_value(config, "max_position_embeddings", int, path, 2048, low=1)
    if model_type == "mistral":  # a Llama, unless its sliding window actually bites
        window = config_value(config, "sliding_window", int, path)
        if window is not None and window < max_len:
            raise MinilaError(
                f"this Mistral model uses sliding-window attention ({window} < context {max_len}); "
                "minila runs full attention only"
            )
    elif model_type == "qwen2":
        _qwen2_sliding_window(config, path, max_len)
    elif model_type is None:
        raise broken(path, "has no model_type, so it is not an HF transformers model config")
    elif model_type != "llama":
        raise MinilaError(
            f"{path} describes a {model_type!r} model {architectures}; minila runs Llama-architecture "
            "models only (model_type 'llama' or 'qwen2', architectures LlamaForCausalLM or Qwen2ForCausalLM): "
            "use such a checkpoint"
        )
    unknown = {str(a) for a in architectures} - _ARCHITECTURES[model_type]
    if unknown:
        raise MinilaError(
            f"{path} names architectures {sorted(unknown)}; minila loads LlamaForCausalLM only "
            "(and Qwen2ForCausalLM for model_type 'qwen2')"
        )
    if config_value(config, "hidden_act", str, path, "silu") != "silu":
        raise MinilaError(f"hidden_act {config['hidden_act']!r} is not SwiGLU's silu; minila cannot run this model")
    if config_value(config, "attention_bias", bool, path) or config_value(config, "mlp_bias", bool, path):
        raise MinilaError("this checkpoint has attention/MLP biases; minila's Llama has none")

    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
               if config.get(k) is None]  # fmt: skip
    if missing:
        raise MinilaError(f"{path} lacks {', '.join(missing)}; is it an HF transformers config? {FIX}")
    size = {k: config_value(config, k, int, path, low=1) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")}  # fmt: skip
    dim, n_heads = size["hidden_size"], size["num_attention_heads"]
    n_kv_heads = config_value(config, "num_key_value_heads", int, path, n_heads, low=1)
    head_dim = config_value(config, "head_dim", int, path, low=1)
    if head_dim is not None and (dim % n_heads or head_dim != dim // n_heads):
        raise MinilaError(
            f"{path}: head_dim {head_dim} differs from hidden_size / num_attention_heads = {dim}/{n_heads}; "
            "minila derives head_dim from those and cannot run this model"
        )
    theta, scaling = _rope(config, path)
    try:
        return ModelArgs(
            vocab_size=size["vocab_size"],
            dim=dim,
            n_layers=size["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            hidden_dim=size["intermediate_size"],
            rope_theta=theta,
            norm_eps=config_value(config, "rms_norm_eps", float, path, 1e-6),
            max_seq_len=max_len,
            tie_embeddings=config_value(config, "tie_word_embeddings", bool, path, False),
            rope_scaling=scaling,
            qkv_bias=model_type == "qwen2",  # transformers' Qwen2 always has them; its config has no switch
        )
    except ValueError as e:
        raise broken(path, f"inconsistent settings: {e}") from None


# ------------------------------------------------------------------------- weights

# HF name -> Meta name; the per-layer part follows "model.layers.{i}."
EMBEDDING = "model.embed_tokens.weight"  # HF's name for the token embedding's table
_GLOBAL_NAMES = {
    EMBEDDING: "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attention_norm.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",  # Qwen2 only
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.bias": "attention.wv.bias",
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
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) and v and ".." not in Path(v).parts for v in weight_map.values()
            ):
                raise broken(index, "has no weight_map of tensor names to shard files")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise broken(
                    index, f"lists shards that are missing from {folder}: {missing[:3]}", "download the missing shards"
                )
            return [folder / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise MinilaError(
        f"no weights in {folder}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
        "download the weights into it, or point --ckpt at the complete checkpoint"
    )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one weight file. Whatever the reader raises on a damaged file
    (safetensors' "invalid header length", a truncated zip, a bad pickle) means the same
    thing to the user: this file is damaged; so it becomes that one error."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path), device="cpu")
        else:  # weights_only=True: a pickle may carry code; this refuses anything but tensors
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is the file's fault
        size = path.stat().st_size if path.exists() else 0
        what = "empty" if size == 0 else f"unreadable ({first_line(e)})"
        raise broken(path, f"{what}, so cut short (an interrupted download?) or damaged") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise broken(path, "holds something other than a mapping of names to tensors")
    return tensors


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
    unexpected = sorted(set(state) - set(expected))
    if unexpected:  # e.g. q/k/v biases beside a config.json of model_type llama
        raise MinilaError(
            f"unexpected tensor {unexpected[0]!r} (and {len(unexpected) - 1} more) in the checkpoint: config.json "
            f"describes a model without it (biases belong to model_type 'qwen2'); {FIX}"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise MinilaError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}; is it complete?")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise MinilaError(
                f"tensor {name} has shape {tuple(state[name].shape)} but config.json implies {shape}; "
                f"config.json and the weights disagree; {FIX}"
            )
    model.load_state_dict(state, strict=True, assign=True)
    if args.tie_embeddings:  # assign=True replaced both parameters: tie them again
        model.output.weight = model.tok_embeddings.weight
    # the RoPE tables are buffers, not weights: compute them for real (kept in float32)
    cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta, args.rope_scaling)
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
    if folder.is_file():
        raise MinilaError(f"{folder} is a file; point --ckpt at the folder that holds config.json and the weights")
    if not folder.is_dir():
        raise MinilaError(f"checkpoint folder {folder} does not exist; run `make weights` or pass --ckpt DIR")
    if not (folder / "config.json").is_file():
        raise MinilaError(f"{folder} has no config.json; point --ckpt at an HF-format model folder")
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if problem := not_native(dt, dev):  # before the (slow) load
        raise MinilaError(problem)
    if forward not in ("auto", "plain", "invariant"):  # fail before the (slow) load
        raise MinilaError(f"unknown forward {forward!r}; use auto, plain or invariant")
    args = args_from_hf_config(read_json(folder / "config.json"), folder / "config.json")
    tokenizer = Tokenizer.from_folder(folder)  # before the weights: fail fast on a missing tokenizer
    if tokenizer.vocab_size > args.vocab_size:
        raise MinilaError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {args.vocab_size}; "
            "the tokenizer files belong to another model: copy the ones that came with the weights"
        )
    outside = [i for i in [*tokenizer.eos_ids, tokenizer.bos_id] if i is not None and not 0 <= i < args.vocab_size]
    if outside:
        raise MinilaError(
            f"{folder}: special token ids {outside} (eos_token_id / bos_token_id in config.json or "
            f"generation_config.json) are outside the vocabulary of {args.vocab_size} tokens; {FIX}"
        )
    model = build_model(args, load_state_dict(folder, dt, dev), dev)
    if pack and model.pack_weights():  # every matrix a packed copy: the embedding's table is only looked up now
        model.tok_embeddings.weight = torch.nn.Parameter(_table_in_the_files(folder), requires_grad=False)
        _copy_out_of_the_files(model)
    model = choose_forward(model, forward)
    _return_freed_memory()
    return model, tokenizer


def _return_freed_memory() -> None:
    """Loading frees as much as it keeps (file bytes converted to the dtype, matrices
    stacked, then packed), and glibc's allocator holds freed memory for reuse instead
    of giving it back: a bfloat16 SmolLM2 stayed at 2.3x its weights' size resident,
    1.7x after this. Elsewhere (no glibc) it does nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _table_in_the_files(folder: Path) -> torch.Tensor:
    """The embedding's table where it lies: in the weight file, mapped, in the file's
    dtype (the model casts the rows it looks up, the same values as casting the table).

    A step looks up a few rows, so only the pages of those rows are ever read in: the
    table costs almost no memory, and a tied head's packed copy is then the only one
    held. The mapping is private (writes to it stay in this process), and fresh: the
    pages that loading read went with the first one. The file must stay in place while
    the model runs, as with any memory-mapped model."""
    for path in weight_files(folder):
        if path.suffix == ".safetensors":  # safe_open maps the one tensor (load_file touches a page of each)
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                if EMBEDDING in f.keys():
                    return f.get_tensor(EMBEDDING)
        elif EMBEDDING in (tensors := _read_tensors(path)):  # torch.load(mmap=True)
            return tensors[EMBEDDING]
    raise AssertionError(f"{folder}: the embedding loaded a moment ago is gone from the files")


def _copy_out_of_the_files(model: Transformer) -> None:
    """Give the norms of a packed model memory of their own.

    safetensors and torch.load(mmap=True) hand out tensors backed by one mapping of
    each file, and the mapping, with every page read so far, stays resident while any
    of them lives. Packing reads the matrices straight from it, and the embedding's
    table is mapped afresh; once the norms are copied out too, the first mapping goes:
    the weights are held once.
    """
    for module in model.modules():
        if not isinstance(module, (Linear, torch.nn.Embedding)):
            for param in module.parameters(recurse=False):
                param.data = param.data.clone()
