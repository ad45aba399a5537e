"""Backend choice: argument, use_backend block, environment variable, automatic fallback."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from distilbert.kernels import dispatch

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No environment override and a fresh log-once memory in every test."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())


def test_precedence_argument_block_environment(monkeypatch):
    """The argument beats a use_backend block, which beats the environment variable."""
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: True)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert dispatch.resolve_backend(CPU) == "triton"
    with dispatch.use_backend("torch"):
        assert dispatch.resolve_backend(CPU) == "torch"
        assert dispatch.resolve_backend(CPU, "triton") == "triton"
        with dispatch.use_backend(None):
            assert dispatch.resolve_backend(CPU) == "triton"
    assert dispatch.resolve_backend(CPU) == "triton"


def test_use_backend_restores_on_error():
    """Leaving a block by an exception restores the previous choice."""
    with pytest.raises(KeyError), dispatch.use_backend("torch"):
        raise KeyError("boom")
    assert dispatch._override.get() is None


def test_unknown_backend_is_refused(monkeypatch):
    """A misspelt backend is named, wherever it comes from."""
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        dispatch.resolve_backend(CPU, "cuda")
    with pytest.raises(ValueError, match="unknown backend 'fast'"), dispatch.use_backend("fast"):
        pass
    monkeypatch.setenv(dispatch.ENV_VAR, "Tritn")
    with pytest.raises(ValueError, match="unknown backend 'tritn'"):
        dispatch.resolve_backend(CPU)


def test_auto_picks_by_device_and_logs_once(caplog):
    """auto: triton for CUDA tensors, torch on CPU with one log line however many calls."""
    caplog.set_level(logging.INFO, logger=dispatch.__name__)
    assert dispatch.resolve_backend(CUDA) == ("triton" if dispatch.HAS_TRITON else "torch")
    for _ in range(3):
        assert dispatch.resolve_backend(CPU) == "torch"
        assert dispatch.resolve_backend(CPU, "auto") == "torch"
    cpu_lines = [r for r in caplog.records if "device is cpu" in r.getMessage()]
    assert len(cpu_lines) == 1


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    """Without the interpreter, asking for triton on CPU tensors says how to get it."""
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dispatch.resolve_backend(CPU, "triton")


def test_without_triton(monkeypatch, caplog):
    """No Triton: auto falls back on CUDA (logged), an explicit request is refused."""
    monkeypatch.setattr(dispatch, "HAS_TRITON", False)
    caplog.set_level(logging.INFO, logger=dispatch.__name__)
    assert dispatch.resolve_backend(CUDA) == "torch"
    assert "Triton is not installed" in caplog.text
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        dispatch.resolve_backend(CUDA, "triton")


def test_auto_falls_back_for_unsupported_inputs(monkeypatch, caplog):
    """auto sends head dims the kernel lacks to torch (logged once); explicit triton refuses."""
    monkeypatch.setattr(dispatch, "resolve_backend", lambda device, requested=None: "triton")
    caplog.set_level(logging.INFO, logger=dispatch.__name__)
    qkv = torch.randn(2, 3, 3 * 2 * 16)
    for _ in range(2):
        out = dispatch.attention(qkv, None, 2)
    torch.testing.assert_close(out, dispatch._attention.attention_torch(qkv, None, 2))
    assert caplog.text.count("head dim 16") == 1
    with pytest.raises(ValueError, match="head dim 16 is not supported"):
        dispatch.attention(qkv, None, 2, backend="triton")

    x = torch.randn(2, 8, dtype=torch.float64)
    out = dispatch.bias_gelu(x, None)
    torch.testing.assert_close(out, torch.nn.functional.gelu(x))
    assert "not torch.float64" in caplog.text


def test_package_imports_and_runs_without_triton():
    """With triton unimportable, distilbert imports, runs on torch and names the problem."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        import torch
        import distilbert
        from distilbert.kernels import _triton, dispatch
        from distilbert.engine.config import DistilBertConfig
        assert not _triton.HAS_TRITON
        model = distilbert.DistilBertModel(DistilBertConfig(
            vocab_size=20, dim=32, n_layers=1, n_heads=1, hidden_dim=64,
            max_position_embeddings=8))
        print(tuple(model(torch.tensor([[1, 2, 3]])).shape))
        try:
            dispatch.resolve_backend(torch.device("cuda"), "triton")
        except RuntimeError as err:
            print(err)
        try:
            dispatch._attention.attention_triton(torch.randn(1, 2, 96), None, 1)
        except RuntimeError as err:
            print(err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "(1, 3, 32)" in done.stdout
    assert "Triton is not installed" in done.stdout
    assert "attention: the triton backend needs Triton, which is not installed" in done.stdout
