"""Write Hugging Face models to disk in every layout the loader accepts.

Used by the test fixtures: ``write_checkpoint(hf_model, folder, fmt, prefix, shards)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

FORMATS = ("safetensors", "bin", "sharded-safetensors", "sharded-bin")
BASE_PREFIXES = ("distilbert.", "bert.")
BASE_ROOTS = ("embeddings.", "transformer.", "encoder.", "pooler.")


def rename_base_keys(state: dict, prefix: str) -> dict:
    """Give every encoder key ``prefix`` ('' for none); head keys stay as they are."""
    out = {}
    for key, tensor in state.items():
        bare = next((key[len(p):] for p in BASE_PREFIXES if key.startswith(p)), key)
        out[prefix + bare if bare.startswith(BASE_ROOTS) else key] = tensor
    return out


def write_checkpoint(
    hf_model,
    folder: str | Path,
    fmt: str = "safetensors",
    prefix: str | None = None,
    shards: int = 3,
    drop: tuple[str, ...] = (),
) -> Path:
    """Save ``hf_model``'s config and weights under ``folder`` in format ``fmt``.

    ``prefix`` (None keeps the model's own names) renames encoder keys; ``drop`` removes
    keys ending with any of the given suffixes (e.g. a tied projector weight).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_model.config.save_pretrained(folder)
    # Clone so tied tensors become separate storage (safetensors refuses shared memory).
    state = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(drop or ("\0",))}
    if prefix is not None:
        state = rename_base_keys(state, prefix)

    kind = "safetensors" if fmt.endswith("safetensors") else "bin"
    if not fmt.startswith("sharded"):
        _write_file(state, folder / ("model.safetensors" if kind == "safetensors"
                                     else "pytorch_model.bin"))
        return folder

    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    stem, ext = ("model", "safetensors") if kind == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = f"{stem}-{i:05d}-of-{shards:05d}.{ext}"
        _write_file({k: state[k] for k in group}, folder / name)
        weight_map.update({k: name for k in group})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index, indent=1))
    return folder


def _write_file(state: dict, file: Path) -> None:
    if file.suffix == ".safetensors":
        save_file(state, str(file), metadata={"format": "pt"})
    else:
        torch.save(state, file)


def copy_tokenizer(source: str | Path, folder: str | Path) -> None:
    """Copy the tokenizer files of ``source`` into ``folder``."""
    import shutil

    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, Path(folder) / name)
