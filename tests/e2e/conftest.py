"""Fixtures for the real-vLLM end-to-end test (``make e2e``): the vLLM environment and a tiny model."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import ROOT

VLLM_PYTHON = Path(os.environ.get("QWEN_E2E_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
ARTIFACTS = Path(os.environ.get("QWEN_E2E_ARTIFACTS", ROOT / "build" / "e2e"))


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vLLM (CPU) environment's Python; ``make vllm-env`` builds it."""
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} not found: run `make vllm-env` (or `make e2e`, which does)")
    check = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"},
    )
    if check.returncode != 0:
        pytest.fail(f"vLLM does not import in {VLLM_PYTHON}: {check.stderr[-2000:]}")
    return str(VLLM_PYTHON)


@pytest.fixture(scope="session")
def tiny_model(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 checkpoint with a tokenizer trained on the repository's docs."""
    folder = tmp_path_factory.mktemp("models")
    model = folder / "tiny-qwen2"
    texts = [str(p) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    subprocess.run(
        [vllm_python, str(Path(__file__).with_name("tinyqwen.py")), str(model), *texts],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(folder)},
    )
    return model


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """build/e2e/, emptied: the timeline, request records and every process's log of this run."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
