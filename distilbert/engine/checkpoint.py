"""Checkpoint reading and key mapping, one step per function.

find files -> read tensors -> normalise names -> split base from head -> load and report.

Accepted: ``model.safetensors``, ``pytorch_model.bin``, and sharded checkpoints of either
kind with their ``*.index.json``; keys prefixed ``distilbert.``, ``bert.`` or not at all;
DistilBERT names or BERT-layout names (``encoder.layer.N.attention.self.query`` ...).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from distilbert.engine.model import sinusoidal_positions

logger = logging.getLogger(__name__)

SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
BASE_PREFIXES = ("distilbert.", "bert.")
BASE_ROOTS = ("embeddings.", "transformer.", "encoder.")
# Keys that carry no weights of ours and are dropped without comment.
IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|pooler\.dense\.(weight|bias))$")

# BERT-layout layer part -> DistilBERT layer part, applied after the prefix is gone.
_BERT_LAYER_PARTS = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}
_BERT_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)$")
_OLD_NORM_NAMES = {".gamma": ".weight", ".beta": ".bias"}


def find_checkpoint_files(path: str | Path) -> list[Path]:
    """List the weight files of a checkpoint folder (one file, or every shard in order)."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder does not exist: {folder}")
    if folder.is_file():
        return [folder]
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in INDEX_FILES:
        index = folder / name
        if index.is_file():
            return _shards_from_index(index)
    raise FileNotFoundError(
        f"no weights in {folder}: expected one of {', '.join(SINGLE_FILES + INDEX_FILES)}"
    )


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index} is not a valid shard index (needs 'weight_map'): {err}")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index} is not a valid shard index: 'weight_map' must be an object")
    shards = sorted(set(weight_map.values()))
    files = [index.parent / shard for shard in shards]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"shards named in {index.name} are missing: {missing}")
    return files


def read_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Read one weight file: safetensors, or a PyTorch pickle with ``weights_only=True``."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except SafetensorError as err:
            raise ValueError(f"cannot read {file}: {err}") from err
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refused to load {file}: it holds pickled objects other than tensors "
            f"(weights_only=True rejects code in checkpoints): {err}"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read {file}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{file} does not hold a state dict (got {type(state).__name__})")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint, shards merged, names normalised."""
    state: dict[str, torch.Tensor] = {}
    for file in find_checkpoint_files(path):
        state.update(read_tensors(file))
    return normalize_names(state)


def normalize_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map BERT-layout and old LayerNorm names to DistilBERT names; keep any prefix."""
    out = {}
    for key, tensor in state.items():
        prefix = next((p for p in BASE_PREFIXES if key.startswith(p)), "")
        name = key[len(prefix):]
        match = _BERT_LAYER.match(name)
        if match and match.group(2) in _BERT_LAYER_PARTS:
            layer, part, kind = match.groups()
            name = f"transformer.layer.{layer}.{_BERT_LAYER_PARTS[part]}.{kind}"
        for old, new in _OLD_NORM_NAMES.items():
            if name.endswith(old) and ("LayerNorm" in name or "layer_norm" in name):
                name = name[: -len(old)] + new
        out[prefix + name] = tensor
    return out


def split_base_and_head(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split into encoder weights (prefix removed) and everything else (head weights)."""
    base, head = {}, {}
    for key, tensor in state.items():
        if IGNORED_KEYS.search(key):
            continue
        prefix = next((p for p in BASE_PREFIXES if key.startswith(p)), "")
        name = key[len(prefix):]
        if prefix or name.startswith(BASE_ROOTS):
            base[name] = tensor
        else:
            head[key] = tensor
    return base, head


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each layer's q_lin, k_lin and v_lin into the fused ``qkv`` projection."""
    out = dict(state)
    pattern = re.compile(r"^(transformer\.layer\.\d+\.attention\.)q_lin\.(weight|bias)$")
    for key in list(state):
        match = pattern.match(key)
        if not match:
            continue
        root, kind = match.groups()
        names = [f"{root}{part}.{kind}" for part in ("q_lin", "k_lin", "v_lin")]
        if not all(name in state for name in names):
            continue  # reported as missing by the caller
        shapes = [tuple(state[name].shape) for name in names]
        if len(set(shapes)) > 1:
            raise ValueError("q_lin, k_lin and v_lin differ in shape: " + ", ".join(
                f"{name}: {shape}" for name, shape in zip(names, shapes)))
        out[f"{root}qkv.{kind}"] = torch.cat([state[name] for name in names], dim=0)
        for name in names:
            del out[name]
    return out


def load_base_weights(model: nn.Module, base: dict[str, torch.Tensor]) -> None:
    """Copy encoder weights into ``model``; a missing encoder weight is an error."""
    base = fuse_qkv(base)
    expected = dict(model.state_dict())
    position_key = "embeddings.position_embeddings.weight"
    if position_key not in base and model.config.sinusoidal_pos_embds:
        base[position_key] = sinusoidal_positions(
            model.config.max_position_embeddings, model.config.dim
        )
    missing = sorted(set(expected) - set(base))
    # Name a missing fused projection by the q_lin / k_lin / v_lin keys a checkpoint holds.
    missing = [
        name for key in missing for name in (
            [key.replace(".qkv.", f".{part}.") for part in ("q_lin", "k_lin", "v_lin")]
            if ".attention.qkv." in key else [key])
        if name not in base
    ]
    if missing:
        raise KeyError(
            f"checkpoint lacks {len(missing)} encoder weight(s): {', '.join(missing[:20])}"
            + (" ..." if len(missing) > 20 else "")
        )
    unexpected = sorted(set(base) - set(expected))
    if unexpected:
        logger.warning("ignoring %d unexpected encoder key(s): %s", len(unexpected),
                       ", ".join(unexpected[:20]))
    check_shapes(expected, base)
    model.load_state_dict({k: base[k] for k in expected}, strict=True)


def check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Raise ValueError listing every weight whose shape differs from the config's."""
    wrong = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError("checkpoint shapes do not match config.json: " + "; ".join(wrong))


def finish_model(model: nn.Module, dtype=None, device=None):
    """Cast and move a freshly loaded model and put it in eval mode."""
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device=device)
    return model.eval()


def load_head_weights(
    model: nn.Module,
    head: dict[str, torch.Tensor],
    tied: dict[str, str] | None = None,
    fresh_head: bool = False,
) -> None:
    """Copy task-head weights (every parameter outside ``model.distilbert``) into ``model``.

    A weight named in ``tied`` (head name -> encoder name) that the checkpoint leaves out
    becomes the encoder's parameter itself. Any other weight that is missing, or shaped
    unlike the model's, is an error listing them, unless ``fresh_head`` is set: then those
    weights are initialised as Hugging Face initialises a new head.
    """
    expected = {
        name: param for name, param in model.named_parameters(remove_duplicate=False)
        if not name.startswith("distilbert.")
    }
    for name, target in (tied or {}).items():
        if name in expected and name not in head:
            module_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(module_name), attribute, model.get_parameter(target))
            del expected[name]
            logger.debug("tied %s to %s", name, target)

    missing = sorted(set(expected) - set(head))
    wrong = sorted(k for k in expected if k in head and head[k].shape != expected[k].shape)
    unexpected = sorted(set(head) - set(expected))
    if unexpected:
        logger.warning("ignoring %d checkpoint key(s) the %s head does not use: %s",
                       len(unexpected), type(model).__name__, ", ".join(unexpected[:20]))
    if (missing or wrong) and not fresh_head:
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} {type(model).__name__} head weight(s): "
                f"{', '.join(missing)}; pass fresh_head=True to start a new head"
            )
        check_shapes({k: expected[k] for k in wrong}, head)

    std = float(getattr(model.config, "extra", {}).get("initializer_range", 0.02))
    with torch.no_grad():
        for name, param in expected.items():
            if name in missing or name in wrong:
                _init_fresh(name, param, std)
            else:
                param.copy_(head[name])
    if missing or wrong:
        logger.warning("initialised a fresh head for %s: %s", type(model).__name__,
                       ", ".join(missing + wrong))


def _init_fresh(name: str, param: torch.Tensor, std: float) -> None:
    # Linear weights normal(0, initializer_range); LayerNorm weights one; biases zero.
    if name.endswith("bias"):
        param.zero_()
    elif param.dim() == 1:
        param.fill_(1.0)
    else:
        param.normal_(0.0, std)
