"""The tokenizer front: Hugging Face ``tokenizers`` configured per call, padded by us.

A folder's ``tokenizer.json`` is used when present; otherwise a BERT WordPiece tokenizer is
built from ``vocab.txt`` and ``tokenizer_config.json``. Settings the library would panic on
(a stride that does not fit the window, a pair whose fixed part leaves no room) are refused
here with a ``ValueError`` before the library sees them.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as RustTokenizer

logger = logging.getLogger(__name__)

TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
DEFAULT_MAX_LENGTH = 512


@dataclass
class Encoded:
    """A padded batch of encodings; row ``i`` came from input ``overflow_to_sample[i]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    overflow_to_sample: list[int]
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    sequence_ids: list[list[int | None]] = field(default_factory=list)
    word_ids: list[list[int | None]] = field(default_factory=list)
    special_tokens_mask: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def model_inputs(self, device=None) -> dict[str, torch.Tensor]:
        """The tensors a model's forward takes, moved to ``device``."""
        names = ("input_ids", "attention_mask", "token_type_ids")
        return {name: getattr(self, name).to(device) for name in names}


class Tokenizer:
    """Encode texts and text pairs into padded id tensors.

    ``model_max_length`` is the default ``max_length``: the smaller of the tokenizer's and
    the model's limits, as given by the loader.
    """

    def __init__(self, backend: RustTokenizer, model_max_length: int = DEFAULT_MAX_LENGTH):
        self._backend = copy.deepcopy(backend)
        self._backend.no_truncation()
        self._backend.no_padding()
        self._lock = threading.Lock()
        self.model_max_length = int(model_max_length)
        self.pad_token_id = self._special_id(("[PAD]", "<pad>"), default=0)
        self.cls_token_id = self._special_id(("[CLS]", "<s>"))
        self.sep_token_id = self._special_id(("[SEP]", "</s>"))
        self.mask_token_id = self._special_id(("[MASK]", "<mask>"))
        self.mask_token = self._backend.id_to_token(self.mask_token_id) if (
            self.mask_token_id is not None) else None

    def _special_id(self, names: Sequence[str], default: int | None = None) -> int | None:
        for name in names:
            token_id = self._backend.token_to_id(name)
            if token_id is not None:
                return token_id
        return default

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def num_special_tokens(self, pair: bool = False) -> int:
        """How many special tokens a single text (or a pair) gets."""
        return self._backend.num_special_tokens_to_add(pair)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids back to text."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of one id."""
        return self._backend.id_to_token(int(token_id))

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of ``text`` without special tokens."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def __call__(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        truncation: str | bool | None = "longest_first",
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing: bool = False,
        padding: str | bool = "longest",
        pad_to_multiple_of: int | None = None,
    ) -> Encoded:
        """Encode ``texts`` (and ``pairs``, the second sequence of each) into a batch.

        truncation: ``longest_first``, ``only_first``, ``only_second``, or ``None``/``False``
        for none. With ``return_overflowing`` every window of a truncated input becomes its
        own row (windows overlap by ``stride`` tokens). padding: ``longest``, ``max_length``
        or ``False`` (then all rows must have equal length).
        """
        texts, pairs = _as_lists(texts, pairs)
        max_length = self.model_max_length if max_length is None else int(max_length)
        strategy = _check_truncation(truncation, stride, max_length, pairs, return_overflowing)

        with self._lock:
            if strategy is not None:
                self._check_fits(texts, pairs, strategy, max_length, stride, add_special_tokens)
                self._backend.enable_truncation(max_length, stride=stride, strategy=strategy)
            else:
                self._backend.no_truncation()
            inputs = texts if pairs is None else list(zip(texts, pairs))
            try:
                encodings = self._backend.encode_batch(
                    inputs, add_special_tokens=add_special_tokens
                )
            finally:
                self._backend.no_truncation()

        rows, origin = [], []
        for index, encoding in enumerate(encodings):
            windows = [encoding] + (list(encoding.overflowing) if return_overflowing else [])
            rows.extend(windows)
            origin.extend([index] * len(windows))
        return self._pad(rows, origin, padding, max_length, pad_to_multiple_of)

    def _check_fits(self, texts, pairs, strategy, max_length, stride, add_special_tokens):
        """Refuse, naming the input, what the Rust library would fail or panic on.

        The library truncates only inputs that are too long; a truncated sequence must keep
        at least one token (``only_first`` / ``only_second``) and more than ``stride``.
        """
        specials = self.num_special_tokens(pairs is not None) if add_special_tokens else 0
        room = max_length - specials
        if room <= 0:
            raise ValueError(
                f"max_length {max_length} leaves no room for text after {specials} special tokens"
            )
        if pairs is None:
            if stride < room:
                return
            for index, length in enumerate(self._token_counts(texts)):
                if length > room:
                    raise ValueError(
                        f"stride {stride} must be smaller than max_length minus special tokens "
                        f"({room}) to truncate input {index} ({length} tokens)"
                    )
            return
        if strategy == "longest_first" and stride == 0:
            return  # the library never fails here

        counts = zip(self._token_counts(texts), self._token_counts(pairs))
        for index, (first, second) in enumerate(counts):
            if first + second <= room:
                continue
            kept = _kept_lengths(first, second, room, strategy)
            for which, length, keep in zip(("first", "second"), (first, second), kept):
                if keep >= length:
                    continue
                if keep <= 0 and strategy != "longest_first":
                    other = second if which == "first" else first
                    raise ValueError(
                        f"truncation {strategy!r} cannot fit input {index}: its other sequence "
                        f"has {other} tokens, leaving no room in max_length {max_length} for "
                        f"its {which} sequence"
                    )
                if 0 < keep <= stride:
                    raise ValueError(
                        f"stride {stride} must be smaller than the {keep} tokens that truncation "
                        f"{strategy!r} keeps of input {index}'s {which} sequence "
                        f"(max_length {max_length})"
                    )

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]

    def _pad(self, rows, origin, padding, max_length, pad_to_multiple_of) -> Encoded:
        lengths = [len(r.ids) for r in rows]
        if padding == "max_length":
            width = max_length
        elif padding in ("longest", True):
            width = max(lengths, default=0)
        elif padding in (False, None, "do_not_pad"):
            width = max(lengths, default=0)
            if len(set(lengths)) > 1:
                raise ValueError("padding=False needs rows of equal length; use 'longest'")
        else:
            raise ValueError(f"unknown padding {padding!r}; use 'longest' or 'max_length'")
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of

        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            n = len(row.ids)
            ids[i, :n] = row.ids
            mask[i, :n] = row.attention_mask
            types[i, :n] = row.type_ids
        return Encoded(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types),
            overflow_to_sample=origin,
            offsets=[list(r.offsets) for r in rows],
            sequence_ids=[list(r.sequence_ids) for r in rows],
            word_ids=[list(r.word_ids) for r in rows],
            special_tokens_mask=[list(r.special_tokens_mask) for r in rows],
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, model_max_length: int | None = None):
        """Load (once per folder) the tokenizer of a checkpoint folder."""
        folder = Path(path).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder does not exist: {folder}")
        return _load_cached(str(folder), model_max_length)


@functools.lru_cache(maxsize=16)
def _load_cached(folder: str, model_max_length: int | None) -> Tokenizer:
    path = Path(folder)
    settings = _read_json(path / "tokenizer_config.json")
    if (path / "tokenizer.json").is_file():
        backend = RustTokenizer.from_file(str(path / "tokenizer.json"))
    elif (path / "vocab.txt").is_file():
        backend = wordpiece_from_vocab(path / "vocab.txt", settings)
    else:
        raise FileNotFoundError(f"no tokenizer.json or vocab.txt in {path}")
    limit = settings.get("model_max_length")
    if not isinstance(limit, int) or limit > 1_000_000:
        limit = DEFAULT_MAX_LENGTH
    if model_max_length is not None:
        limit = min(limit, model_max_length)
    logger.debug("loaded tokenizer from %s (max_length %d)", path, limit)
    return Tokenizer(backend, limit)


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def wordpiece_from_vocab(vocab: Path, settings: dict) -> RustTokenizer:
    """A BERT WordPiece tokenizer from ``vocab.txt``, as ``tokenizer_config.json`` asks."""
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    tokens = settings.get("unk_token", "[UNK]"), settings.get("cls_token", "[CLS]"), \
        settings.get("sep_token", "[SEP]"), settings.get("pad_token", "[PAD]"), \
        settings.get("mask_token", "[MASK]")
    unk, cls_token, sep, pad, mask = (t["content"] if isinstance(t, dict) else t for t in tokens)
    backend = RustTokenizer(WordPiece.from_file(str(vocab), unk_token=unk))
    lowercase = settings.get("do_lower_case", True)
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
        strip_accents=settings.get("strip_accents"),
        lowercase=lowercase,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.add_special_tokens([pad, unk, cls_token, sep, mask])
    cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep}:0",
        pair=f"{cls_token}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls_token, cls_id), (sep, sep_id)],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _kept_lengths(first: int, second: int, room: int, strategy: str) -> tuple[int, int]:
    """Tokens of each sequence the library keeps when a pair of this size exceeds ``room``."""
    if strategy == "only_first":
        return room - second, second
    if strategy == "only_second":
        return first, room - first
    # longest_first: the longer sequence gives way first; if both must, each keeps half.
    shorter = min(first, second)
    keep_shorter = shorter
    keep_longer = shorter if shorter > room else max(shorter, room - shorter)
    if keep_shorter + keep_longer > room:
        keep_shorter, keep_longer = room // 2, room // 2 + room % 2
    return (keep_longer, keep_shorter) if first > second else (keep_shorter, keep_longer)


def _as_lists(texts, pairs):
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if pairs is not None:
        pairs = [pairs] if isinstance(pairs, str) else list(pairs)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} second sequences")
    for i, text in enumerate(texts + (pairs or [])):
        if not isinstance(text, str):
            raise TypeError(f"input {i % max(len(texts), 1)} is {type(text).__name__}, not str")
    return texts, pairs


def _check_truncation(truncation, stride, max_length, pairs, return_overflowing):
    if truncation in (None, False, "do_not_truncate"):
        if return_overflowing:
            raise ValueError("return_overflowing needs a truncation strategy")
        return None
    strategy = "longest_first" if truncation is True else truncation
    if strategy not in TRUNCATION_STRATEGIES:
        raise ValueError(
            f"unknown truncation {truncation!r}; use one of {', '.join(TRUNCATION_STRATEGIES)}"
        )
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    if pairs is None and strategy != "longest_first":
        # For single texts every strategy truncates the one sequence.
        strategy = "longest_first" if strategy == "only_first" else None
        if strategy is None:
            raise ValueError("truncation 'only_second' needs sentence pairs")
    if pairs is not None and strategy == "longest_first" and stride and return_overflowing:
        raise ValueError(
            "overflowing windows of sentence pairs need truncation 'only_first' or "
            "'only_second', not 'longest_first'"
        )
    return strategy
