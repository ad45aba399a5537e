"""Task helpers on the heads: classify, tag, answer and fill_mask.

Each task is a small object holding a head and its tokenizer, loaded like the embedder::

    tagger = Tagger.from_pretrained("path/to/ner-checkpoint")
    tagger.tag("Ada Lovelace was born in London.", aggregation="first")

or by name with :func:`load_task`. Results follow Hugging Face's pipelines (same scores,
labels, spans and grouping), with character offsets into the caller's own string, so
``text[start:end]`` is always the entity or answer; the ``word`` and ``answer`` fields are
those substrings (Hugging Face gives decoded word pieces for ``word``). Texts are batched by
length under a token budget, as in :mod:`distilbert.engine.embedder`.

Limits: words for tag aggregation come from the tokenizer's word ids (Hugging Face guesses
them from token lengths, which differs on decomposed accents); classify truncates texts to
``max_length`` while tag and answer split long inputs into overlapping windows.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distilbert.engine.embedder import DEFAULT_TOKEN_BUDGET, length_batches, resolve_device
from distilbert.engine.heads import (
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    TaskHead,
)
from distilbert.engine.tokenizer import Encoded, Tokenizer

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
AGGREGATIONS = ("none", "simple", "first", "max", "average")
DEFAULT_TAG_STRIDE = 32
DEFAULT_QA_MAX_LENGTH = 384
DEFAULT_QA_STRIDE = 128
DEFAULT_MAX_ANSWER_LENGTH = 15


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis``."""
    shifted = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function."""
    return 1.0 / (1.0 + np.exp(-logits))


class Task:
    """A loaded head and tokenizer, and the batching every task shares."""

    head_class: type[TaskHead] = TaskHead

    def __init__(self, model: TaskHead, tokenizer: Tokenizer, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        limit = model.config.max_position_embeddings
        self.max_length = min(max_length or tokenizer.model_max_length, limit)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.model.device

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | None = None,
        backend: str | None = None,
        max_length: int | None = None,
    ):
        """Load the head and tokenizer of a local fine-tuned checkpoint folder."""
        model = cls.head_class.from_pretrained(
            path, dtype=dtype, device=resolve_device(device), backend=backend
        )
        positions = model.config.max_position_embeddings
        tokenizer = Tokenizer.from_pretrained(path, model_max_length=positions)
        return cls(model, tokenizer, max_length=max_length)

    def _limit(self, max_length: int | None) -> int:
        limit = self.model.config.max_position_embeddings
        return min(int(max_length), limit) if max_length else self.max_length

    @torch.inference_mode()
    def _run(
        self,
        encoded: Encoded,
        compute: Callable[..., Sequence],
        batch_size: int,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
    ) -> list:
        """``compute(**inputs)`` over length-sorted batches; one result per row, row order."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        results: list = [None] * len(encoded)
        lengths = encoded.attention_mask.sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        for rows in length_batches(lengths[order].tolist(), batch_size, token_budget):
            index = order[rows[0]:rows[-1] + 1]
            width = int(lengths[index[0]])
            inputs = {
                name: tensor[index, :width].to(self.device)
                for name, tensor in encoded.model_inputs().items()
            }
            for row, value in zip(index.tolist(), compute(**inputs)):
                results[row] = value
        return results


def _as_list(texts: str | Sequence[str], what: str = "texts") -> tuple[list[str], bool]:
    if isinstance(texts, str):
        return [texts], True
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is {type(text).__name__}, not str")
    return texts, False


# --- classification -----------------------------------------------------------------------


class Classifier(Task):
    """Sequence classification: a label and scores per text (or text pair)."""

    head_class = DistilBertForSequenceClassification

    def classify(
        self,
        texts: str | Sequence[str],
        pairs: str | Sequence[str] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
    ) -> dict | list[dict]:
        """``{"label", "score", "scores": {label: score}}`` per text, in input order.

        Scores are a softmax over labels for single-label models, a sigmoid per label for
        multi-label ones (and one-output models), raw logits for regression; ``label`` is
        the best-scoring one. Texts longer than ``max_length`` tokens are truncated.
        """
        texts, single = _as_list(texts)
        if pairs is not None:
            pairs, _ = _as_list(pairs, "pairs")
        if not texts:
            return []
        encoded = self.tokenizer(texts, pairs, max_length=self._limit(max_length))

        def logits_of(**inputs):
            return self.model(**inputs).float().cpu().numpy()

        logits = np.stack(self._run(encoded, logits_of, batch_size))
        problem = self.model.problem_type
        if problem == "regression":
            scores = logits
        elif problem == "multi_label_classification":
            scores = sigmoid(logits)
        else:
            scores = softmax(logits)
        names = [self.model.id2label[i] for i in range(scores.shape[1])]
        results = [
            {
                "label": names[int(row.argmax())],
                "score": float(row.max()),
                "scores": {name: float(value) for name, value in zip(names, row)},
            }
            for row in scores
        ]
        return results[0] if single else results


# --- token classification -----------------------------------------------------------------


@dataclass
class _Piece:
    """One scored word piece of a window: token index, character span, label scores."""

    index: int
    start: int
    end: int
    scores: np.ndarray
    continues_word: bool


def _split_tag(label: str) -> tuple[str, str]:
    """``B-PER`` -> (``B``, ``PER``); labels without a B-/I- prefix count as inside."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


class Tagger(Task):
    """Token classification: labelled entities with character spans in the input."""

    head_class = DistilBertForTokenClassification

    def tag(
        self,
        texts: str | Sequence[str],
        *,
        aggregation: str = "none",
        ignore_labels: Sequence[str] = ("O",),
        stride: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
    ) -> list[dict] | list[list[dict]]:
        """Entities per text, as Hugging Face's token-classification pipeline gives them.

        aggregation: ``none`` (one entity per word piece: ``entity``, ``score``, ``index``),
        ``simple`` (adjacent pieces grouped by B-/I- tags), or ``first``, ``max``, ``average``
        (one label per word, taken from its first piece, its most confident piece or the
        mean of its pieces' scores, then grouped). Grouped entities carry ``entity_group``.
        Every entity has ``start``/``end`` character offsets and ``word == text[start:end]``.
        Texts longer than ``max_length`` tokens are cut into windows overlapping by
        ``stride`` tokens (default min(32, max_length // 4)); where entities of two windows
        overlap, the longer (then the more confident) one is kept.
        """
        if aggregation not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}"
            )
        texts, single = _as_list(texts)
        if not texts:
            return []
        max_length = self._limit(max_length)
        stride = min(DEFAULT_TAG_STRIDE, max_length // 4) if stride is None else stride
        encoded = self.tokenizer(
            texts, max_length=max_length, stride=stride, return_overflowing=True
        )

        def logits_of(**inputs):
            return list(self.model(**inputs).float().cpu().numpy())

        logits = self._run(encoded, logits_of, batch_size)
        per_text: list[list[list[dict]]] = [[] for _ in texts]
        for row, sample in enumerate(encoded.overflow_to_sample):
            text = texts[sample]
            row_logits = logits[row][: len(encoded.offsets[row])]
            pieces = self._pieces(encoded, row, softmax(row_logits))
            entities = self._aggregate(pieces, aggregation, text)
            per_text[sample].append([
                entity for entity in entities
                if entity.get("entity", entity.get("entity_group")) not in ignore_labels
            ])
        results = [
            windows[0] if len(windows) == 1 else _resolve_overlaps(list(itertools.chain(*windows)))
            for windows in per_text
        ]
        return results[0] if single else results

    @staticmethod
    def _pieces(encoded: Encoded, row: int, scores: np.ndarray) -> list[_Piece]:
        word_ids = encoded.word_ids[row]
        pieces = []
        for index, (start, end) in enumerate(encoded.offsets[row]):
            if encoded.special_tokens_mask[row][index]:
                continue
            word = word_ids[index]
            continues = index > 0 and word is not None and word_ids[index - 1] == word
            pieces.append(_Piece(index, start, end, scores[index], continues))
        return pieces

    def _aggregate(self, pieces: list[_Piece], aggregation: str, text: str) -> list[dict]:
        labels = self.model.id2label
        if aggregation in ("none", "simple"):
            entities = []
            for piece in pieces:
                best = int(piece.scores.argmax())
                entities.append({
                    "entity": labels[best], "score": float(piece.scores[best]),
                    "index": piece.index, "word": text[piece.start:piece.end],
                    "start": piece.start, "end": piece.end,
                })
            return entities if aggregation == "none" else _group(entities, text)

        words: list[list[_Piece]] = []
        for piece in pieces:
            if words and piece.continues_word:
                words[-1].append(piece)
            else:
                words.append([piece])
        entities = []
        for word in words:
            if aggregation == "first":
                scores = word[0].scores
            elif aggregation == "max":
                scores = max(word, key=lambda piece: piece.scores.max()).scores
            else:
                scores = np.mean(np.stack([piece.scores for piece in word]), axis=0)
            best = int(scores.argmax())
            start, end = word[0].start, word[-1].end
            entities.append({
                "entity": labels[best], "score": float(scores[best]),
                "word": text[start:end], "start": start, "end": end,
            })
        return _group(entities, text)


def _group(entities: list[dict], text: str) -> list[dict]:
    """Merge runs of entities whose tags continue one another (``B-X I-X I-X``)."""
    groups: list[list[dict]] = []
    for entity in entities:
        bi, tag = _split_tag(entity["entity"])
        if groups and bi != "B" and _split_tag(groups[-1][-1]["entity"])[1] == tag:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    out = []
    for members in groups:
        start, end = members[0]["start"], members[-1]["end"]
        out.append({
            "entity_group": members[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean([member["score"] for member in members])),
            "word": text[start:end], "start": start, "end": end,
        })
    return out


def _resolve_overlaps(entities: list[dict]) -> list[dict]:
    """Among entities from overlapping windows keep the longest, then the most confident."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda entity: entity["start"])
    kept = []
    current = entities[0]
    for entity in entities[1:]:
        if current["start"] <= entity["start"] < current["end"]:
            length = entity["end"] - entity["start"]
            current_length = current["end"] - current["start"]
            if length > current_length or (
                length == current_length and entity["score"] > current["score"]
            ):
                current = entity
        else:
            kept.append(current)
            current = entity
    kept.append(current)
    return kept


# --- question answering -------------------------------------------------------------------


def best_spans(
    start_probs: np.ndarray,
    end_probs: np.ndarray,
    allowed: np.ndarray,
    max_answer_length: int,
    top_k: int = 1,
) -> list[tuple[int, int, float]]:
    """The ``top_k`` spans ``(start, end, start_prob * end_prob)``, best first.

    A span starts and ends on ``allowed`` tokens, never ends before it starts and covers at
    most ``max_answer_length`` tokens.
    """
    if max_answer_length < 1:
        raise ValueError(f"max_answer_length must be >= 1, got {max_answer_length}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    positions = np.flatnonzero(allowed)
    if positions.size == 0:
        return []
    gap = positions[None, :] - positions[:, None]
    valid = (gap >= 0) & (gap < max_answer_length)
    scores = np.where(valid, np.outer(start_probs[positions], end_probs[positions]), -np.inf)
    flat = scores.ravel()
    k = min(top_k, int(valid.sum()))
    top = np.argpartition(-flat, k - 1)[:k]
    top = top[np.argsort(-flat[top], kind="stable")]
    rows, cols = np.unravel_index(top, scores.shape)
    return [
        (int(positions[r]), int(positions[c]), float(scores[r, c])) for r, c in zip(rows, cols)
    ]


class QuestionAnswerer(Task):
    """Extractive question answering over contexts of any length."""

    head_class = DistilBertForQuestionAnswering

    def answer(
        self,
        question: str | Sequence[str],
        context: str | Sequence[str],
        *,
        top_k: int = 1,
        max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH,
        stride: int | None = None,
        max_length: int | None = None,
        align_to_words: bool = True,
        handle_impossible_answer: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> dict | list:
        """``{"answer", "score", "start", "end"}`` for each question (a list when top_k > 1).

        The context is cut into windows of ``max_length`` tokens (default 384) overlapping
        by ``stride`` tokens (default min(128, max_length // 2)); the best spans over all
        windows win. Scores are start x end probabilities, each a softmax over the window's
        context tokens and [CLS], as in Hugging Face's pipeline. With ``align_to_words`` a
        span grows to whole words; a character span found more than once (in overlapping
        windows, or from pieces of one word) is listed once, at its best score.
        ``handle_impossible_answer`` adds the empty answer, scored by [CLS].
        ``context[start:end] == answer`` always.
        """
        questions, single = _as_list(question, "question")
        contexts, _ = _as_list(context, "context")
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
        if max_answer_length < 1 or top_k < 1:
            raise ValueError(
                f"top_k and max_answer_length must be >= 1, got {top_k} and {max_answer_length}"
            )
        for i, text in enumerate(contexts):
            if not text.strip():
                raise ValueError(f"context {i} is empty")
        if not questions:
            return []
        max_length = self._limit(max_length or min(DEFAULT_QA_MAX_LENGTH, self.max_length))
        stride = min(DEFAULT_QA_STRIDE, max_length // 2) if stride is None else stride
        encoded = self.tokenizer(
            questions, contexts, truncation="only_second", max_length=max_length,
            stride=stride, return_overflowing=True,
        )

        def logits_of(**inputs):
            start, end = self.model(**inputs)
            return list(zip(start.float().cpu().numpy(), end.float().cpu().numpy()))

        logits = self._run(encoded, logits_of, batch_size)
        found: list[dict[tuple[int, int], float]] = [{} for _ in questions]
        null_scores = [np.inf for _ in questions]
        has_context = [False for _ in questions]
        for row, sample in enumerate(encoded.overflow_to_sample):
            length = len(encoded.offsets[row])
            context_mask = np.array([s == 1 for s in encoded.sequence_ids[row]])
            has_context[sample] |= bool(context_mask.any())
            ids = encoded.input_ids[row, :length].numpy()
            in_softmax = context_mask | (ids == self.tokenizer.cls_token_id)
            start_probs, end_probs = (
                softmax(np.where(in_softmax, x[:length], -np.inf)) for x in logits[row]
            )
            null_scores[sample] = min(null_scores[sample], float(start_probs[0] * end_probs[0]))
            start_probs[0] = end_probs[0] = 0.0
            for s, e, score in best_spans(start_probs, end_probs, context_mask,
                                          max_answer_length, top_k):
                span = self._char_span(encoded, row, s, e, align_to_words)
                found[sample][span] = max(score, found[sample].get(span, 0.0))

        results = []
        for sample, spans in enumerate(found):
            if not has_context[sample]:
                raise ValueError(f"context {sample} has no tokens")
            text = contexts[sample]
            answers = [
                {"score": score, "start": start, "end": end, "answer": text[start:end]}
                for (start, end), score in spans.items()
            ]
            if handle_impossible_answer:
                answers.append(
                    {"score": null_scores[sample], "start": 0, "end": 0, "answer": ""}
                )
            answers.sort(key=lambda answer: answer["score"], reverse=True)
            results.append(answers[0] if top_k == 1 else answers[:top_k])
        return results[0] if single else results

    @staticmethod
    def _char_span(
        encoded: Encoded, row: int, start: int, end: int, align_to_words: bool
    ) -> tuple[int, int]:
        offsets = encoded.offsets[row]
        if not align_to_words:
            return offsets[start][0], offsets[end][1]
        # Grow to the whole words of the start and end tokens, within this window's context.
        word_ids, sequence_ids = encoded.word_ids[row], encoded.sequence_ids[row]

        def word_chars(token: int) -> list[tuple[int, int]]:
            word = word_ids[token]
            return [
                offsets[t] for t in range(len(offsets))
                if sequence_ids[t] == 1 and word_ids[t] == word
            ]

        return word_chars(start)[0][0], word_chars(end)[-1][1]


# --- masked language modelling ------------------------------------------------------------


class MaskFiller(Task):
    """Masked-token prediction: the likeliest tokens for each mask in the text."""

    head_class = DistilBertForMaskedLM

    def fill_mask(
        self,
        texts: str | Sequence[str],
        top_k: int = 5,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
    ) -> list:
        """``top_k`` predictions per mask: ``{"score", "token", "token_str", "sequence"}``.

        As in Hugging Face's pipeline, a text with one mask gives a list of predictions and
        a text with several masks a list per mask; ``sequence`` is the decoded input with
        that mask filled (special tokens kept when the text has several masks).
        """
        mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            raise ValueError("the tokenizer has no mask token")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        texts, single = _as_list(texts)
        if not texts:
            return []
        encoded = self.tokenizer(texts, max_length=self._limit(max_length))
        lengths = encoded.attention_mask.sum(dim=1).tolist()
        for i, length in enumerate(lengths):
            if not (encoded.input_ids[i, :length] == mask_id).any():
                raise ValueError(
                    f"text {i} has no {self.tokenizer.mask_token} token"
                    " (within the first max_length tokens)"
                )
        k = min(top_k, self.model.config.vocab_size)

        def predictions_of(input_ids, attention_mask, token_type_ids):
            hidden = self.model.encode(input_ids, attention_mask, token_type_ids)
            rows, positions = torch.nonzero(input_ids == mask_id, as_tuple=True)
            probs = self.model.predict(hidden[rows, positions]).float().softmax(dim=-1)
            values, ids = probs.topk(k)
            return [
                (values[rows == r].cpu().numpy(), ids[rows == r].cpu().numpy())
                for r in range(input_ids.shape[0])
            ]

        predictions = self._run(encoded, predictions_of, batch_size)
        results = []
        for row, (values, ids) in enumerate(predictions):
            tokens = encoded.input_ids[row, :lengths[row]].numpy()
            masks = np.flatnonzero(tokens == mask_id)
            per_mask = []
            for mask_index, position in enumerate(masks):
                filled_rows = []
                for score, token in zip(values[mask_index], ids[mask_index]):
                    filled = tokens.copy()
                    filled[position] = token
                    filled = filled[filled != self.tokenizer.pad_token_id]
                    filled_rows.append({
                        "score": float(score),
                        "token": int(token),
                        "token_str": self.tokenizer.decode([int(token)], False),
                        "sequence": self.tokenizer.decode(filled.tolist(), len(masks) == 1),
                    })
                per_mask.append(filled_rows)
            results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return results[0] if single else results


TASKS: dict[str, type[Task]] = {
    "classify": Classifier,
    "tag": Tagger,
    "answer": QuestionAnswerer,
    "fill-mask": MaskFiller,
}


def load_task(task: str, path: str | Path, **options) -> Task:
    """Load a task helper by name (``classify``, ``tag``, ``answer``, ``fill-mask``).

    ``options`` are those of :meth:`Task.from_pretrained` (device, dtype, backend,
    max_length).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return TASKS[task].from_pretrained(path, **options)
