"""Shared fixtures: the repository's paths and example QwenServices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DATA = Path(__file__).resolve().parent / "data"


def load_examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in EXAMPLES:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "QwenService"]
    return docs


@pytest.fixture
def minimal() -> dict[str, Any]:
    return {
        "apiVersion": "serving.qwenops.io/v1alpha1",
        "kind": "QwenService",
        "metadata": {"name": "qwen", "namespace": "ml", "uid": "uid-1", "generation": 1},
        "spec": {"model": {"name": "Qwen/Qwen2.5-7B-Instruct"}},
    }
