"""Config, checkpoint loading, tokenizer front, model, pooling and the embed API."""

from distilbert.engine.config import DistilBertConfig
from distilbert.engine.embedder import Embedder, load
from distilbert.engine.model import DistilBertModel
from distilbert.engine.tokenizer import Tokenizer

__all__ = ["DistilBertConfig", "DistilBertModel", "Embedder", "Tokenizer", "load"]
