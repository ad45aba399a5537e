"""Write a DistilBERT-base-sized checkpoint with random weights, for benchmarks on a GPU.

No model hub is reachable from the benchmark machines, so the GPU suite measures a
``transformers.DistilBertModel`` at distilbert-base sizes (dim 768, 6 layers, 12 heads,
FFN 3072) drawn at random with a fixed seed. Speed does not depend on the weights' values.
The built-in model's tokenizer (the same 30,522-token uncased vocabulary) is copied in,
and sentence-transformers files (mean pooling, then normalisation) are written so that
every provider of ``distilbert bench`` embeds the same way.

    python benchmarks/make_base_checkpoint.py OUT_FOLDER
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")


def write_base_checkpoint(folder: Path, seed: int = 0) -> Path:
    """Save the random distilbert-base model, tokenizer and pooling files under ``folder``."""
    import transformers

    from distilbert.engine.embedder import default_model_path

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = transformers.DistilBertModel(transformers.DistilBertConfig())
    model.save_pretrained(folder)
    source = default_model_path()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    shutil.copy(source / "modules.json", folder / "modules.json")
    pooling = folder / "1_Pooling"
    pooling.mkdir(exist_ok=True)
    (pooling / "config.json").write_text(json.dumps({
        "word_embedding_dimension": model.config.dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2), encoding="utf-8")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 512, "do_lower_case": False}), encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> int:
    """Write the checkpoint into the folder named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_base_checkpoint(args.folder, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
