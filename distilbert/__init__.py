"""distilbert: fast, exact inference for DistilBERT-family encoders.

Importing the package loads no model and compiles no kernel; ``load()`` (embeddings) and
``load_task()`` (classify, tag, answer, fill-mask) do the work.
"""

from distilbert.engine import (
    DistilBertConfig,
    DistilBertModel,
    Embedder,
    Tokenizer,
    load,
    load_task,
)

__version__ = "0.1.0"
__all__ = [
    "DistilBertConfig",
    "DistilBertModel",
    "Embedder",
    "Tokenizer",
    "__version__",
    "load",
    "load_task",
]
