"""Hot ops of a DistilBERT layer, reached through :mod:`distilbert.kernels.dispatch`.

One module per op (``attention``, ``layernorm``, ``gelu``), each with its Triton kernels,
launchers, autograd Function and PyTorch reference. The ops themselves are called as
``dispatch.attention`` etc.; the package does not re-export them, so that
``distilbert.kernels.attention`` stays the module.
"""

from distilbert.kernels import dispatch
from distilbert.kernels.dispatch import BACKENDS, resolve_backend, use_backend

__all__ = ["BACKENDS", "dispatch", "resolve_backend", "use_backend"]
