"""Config, checkpoint loading, tokenizer front, model, task heads, pooling, embed and task APIs."""

from distilbert.engine.config import DistilBertConfig
from distilbert.engine.embedder import Embedder, load
from distilbert.engine.heads import (
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
)
from distilbert.engine.model import DistilBertModel
from distilbert.engine.tasks import Classifier, MaskFiller, QuestionAnswerer, Tagger, load_task
from distilbert.engine.tokenizer import Tokenizer

__all__ = [
    "Classifier",
    "DistilBertConfig",
    "DistilBertForMaskedLM",
    "DistilBertForMultipleChoice",
    "DistilBertForQuestionAnswering",
    "DistilBertForSequenceClassification",
    "DistilBertForTokenClassification",
    "DistilBertModel",
    "Embedder",
    "MaskFiller",
    "QuestionAnswerer",
    "Tagger",
    "Tokenizer",
    "load",
    "load_task",
]
