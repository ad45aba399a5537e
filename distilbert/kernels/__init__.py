"""Hot ops of a DistilBERT layer, reached through :mod:`distilbert.kernels.dispatch`."""

from distilbert.kernels.dispatch import (
    BACKENDS,
    add_layer_norm,
    attention,
    bias_gelu,
    resolve_backend,
)

__all__ = ["BACKENDS", "add_layer_norm", "attention", "bias_gelu", "resolve_backend"]
