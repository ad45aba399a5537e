"""Run the Triton kernel tests interpreted on CPU and compiled on CUDA.

Triton fixes at decoration time, which happens when ``triton`` and ``distilbert.kernels``
are first imported, whether kernels are compiled or interpreted, and it reads
``TRITON_INTERPRET`` for that. So:

- On a machine without CUDA this file sets ``TRITON_INTERPRET=1`` before anything here
  imports Triton. When this directory is run alone that is early enough, and the ``cpu``
  cases run in this process.
- When some earlier test module already imported Triton (``distilbert`` or
  ``sentence_transformers`` at the top of another directory's tests), or on a CUDA machine,
  the kernels of this process are compiled; the ``cpu`` cases are then run in one child
  pytest with ``TRITON_INTERPRET=1`` and each case here reports the child's outcome.
- ``cuda`` cases carry the ``gpu`` marker (``pytest -m gpu``) and need compiled kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from distilbert.kernels._triton import HAS_TRITON, interpreter_active

HERE = Path(__file__).parent
CHILD_REPORT_ENV = "DISTILBERT_KERNEL_TESTS_REPORT"
CHILD_TIMEOUT_S = 1800

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"),
]

_delegated: dict[str, object] = {"nodeids": [], "outcomes": None}


def _in_this_dir(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).parents


def _param(item: pytest.Item, name: str):
    callspec = getattr(item, "callspec", None)
    return callspec.params.get(name) if callspec is not None else None


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The device a kernel test runs on: ``cpu`` (interpreted) or ``cuda`` (compiled)."""
    if not HAS_TRITON:
        pytest.skip("Triton is not installed")
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if interpreter_active():
            pytest.skip("TRITON_INTERPRET is set: the gpu cases need compiled kernels")
    return request.param


def pytest_collection_modifyitems(config, items):
    """Drop bf16 cases on CPU (the interpreter's bf16 matmul is wrong); mark delegation."""
    kept, dropped = [], []
    for item in items:
        bf16 = _param(item, "dtype") is torch.bfloat16
        if _in_this_dir(item) and _param(item, "device") == "cpu" and bf16:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept

    if os.environ.get(CHILD_REPORT_ENV) or interpreter_active() or not HAS_TRITON:
        return
    _delegated["nodeids"] = [
        item.nodeid for item in items if _in_this_dir(item) and _param(item, "device") == "cpu"
    ]


def _run_child(rootdir: Path) -> dict[str, dict]:
    """Run every delegated case in one interpreted child pytest; return its outcomes."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "outcomes.jsonl"
        env = dict(os.environ, TRITON_INTERPRET="1", **{CHILD_REPORT_ENV: str(report)})
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
            *_delegated["nodeids"],
        ]
        done = subprocess.run(
            command, cwd=rootdir, env=env, capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_S, check=False,
        )
        outcomes: dict[str, dict] = {}
        if report.exists():
            for line in report.read_text().splitlines():
                entry = json.loads(line)
                previous = outcomes.get(entry["nodeid"])
                if previous is None or previous["outcome"] == "passed":
                    outcomes[entry["nodeid"]] = entry
        outcomes["__log__"] = {"outcome": "log", "text": (done.stdout + done.stderr)[-4000:]}
        return outcomes


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """For a delegated case, report the child's outcome instead of running it here."""
    if pyfuncitem.nodeid not in _delegated["nodeids"]:
        return None
    if _delegated["outcomes"] is None:
        _delegated["outcomes"] = _run_child(pyfuncitem.config.rootpath)
    outcome = _delegated["outcomes"].get(pyfuncitem.nodeid)
    if outcome is None:
        log = _delegated["outcomes"]["__log__"]["text"]
        pytest.fail(f"the interpreted child run reported nothing for this case:\n{log}")
    if outcome["outcome"] == "skipped":
        pytest.skip(outcome["text"])
    if outcome["outcome"] == "failed":
        pytest.fail(f"failed in the interpreted child run:\n{outcome['text']}", pytrace=False)
    return True


def pytest_runtest_logreport(report):
    """In the child run, record each case's outcome for the parent."""
    path = os.environ.get(CHILD_REPORT_ENV)
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    text = report.longreprtext if report.outcome != "passed" else ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        text = report.longrepr[2]
    with open(path, "a", encoding="utf-8") as handle:
        entry = {"nodeid": report.nodeid, "outcome": report.outcome, "text": text}
        handle.write(json.dumps(entry) + "\n")
