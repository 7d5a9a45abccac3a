"""The operator image's contract, checked in this checkout (there is no Docker engine here to build it).

The Dockerfile's ENTRYPOINT + CMD is run as a process against the kmock emulator: it must start kopf,
answer the liveness probe the chart configures, serve the operator's /metrics, and reconcile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_tools.emulator import Emulator
from tests.conftest import ROOT
from tests.fakevllm import free_port
from tests.integration.conftest import DEPLOY, QSVC, eventually

pytestmark = pytest.mark.integration

DOCKERFILE = ROOT / "images" / "operator" / "Dockerfile"


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    parsed = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(parsed) if op == "FROM")
    return [(op, args) for op, args in parsed if op == "ARG"] + parsed[last_from:]


def one(op: str, dockerfile: Path = DOCKERFILE) -> str:
    (args,) = [a for o, a in instructions(dockerfile) if o == op]
    return args


def test_the_chat_page_s_image_is_pinned_non_root_and_runs_the_app() -> None:
    """The chat page's image (spec.chatUI) is held to the operator image's rules: a pinned base, every
    package pinned, a numeric non-root user, the port the operator's Service targets."""
    from qwen_operator import api

    chat = ROOT / "images" / "chatui"
    text = (chat / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base, "the base image is an ARG with a default"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]), base[1]
    assert int(one("USER", chat / "Dockerfile").split(":")[0]) != 0
    assert "-c /app/requirements.lock -r /app/requirements.txt" in text
    for name in ("requirements.txt", "requirements.lock"):
        pins = [line for line in (chat / name).read_text().splitlines() if line and not line.startswith("#")]
        assert pins, name
        assert all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==\S+", p) for p in pins), (
            f"{name}: every package pinned"
        )
    assert one("EXPOSE", chat / "Dockerfile").split() == [str(api.CHAT_UI_PORT)]
    assert json.loads(one("ENTRYPOINT", chat / "Dockerfile"))[-1] == "/app/app.py"


def test_image_is_pinned_non_root_and_installs_only_the_operator() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base, "the base image is an ARG with a default"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1]), base[1]
    user = one("USER")
    uid = int(user.split(":")[0])
    values = yaml.safe_load((ROOT / "charts" / "qwen-operator" / "values.yaml").read_text())
    assert uid != 0
    assert uid == values["podSecurityContext"]["runAsUser"], "the chart runs the image's user"
    assert re.search(r"pip install [^\n]*-c constraints\.txt \.(\s|$)", text), "pinned, no extras"
    assert "[test" not in text
    assert "[lint" not in text
    exposed = set(one("EXPOSE").split())
    assert {str(values["ports"]["health"]), str(values["ports"]["metrics"])} == exposed
    assert f":{values['ports']['health']}/healthz" in one("HEALTHCHECK")


def entrypoint() -> list[str]:
    command: list[str] = json.loads(one("ENTRYPOINT")) + json.loads(one("CMD"))
    assert command == ["qwen-operator", "run"]
    binary = Path(sys.executable).parent / command[0]  # on PATH in the image; the venv's script here
    return [str(binary), *command[1:]]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


async def test_the_entrypoint_starts_the_operator(emulator: Emulator, tmp_path: Path) -> None:
    health, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "QWEN_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health}/healthz",
        "QWEN_OPERATOR_METRICS_PORT": str(metrics),
        "QWEN_OPERATOR_METRICS_SOURCE": "pods",
    }
    log = (tmp_path / "operator.log").open("wb")
    proc = await asyncio.create_subprocess_exec(*entrypoint(), env=env, stdout=log, stderr=log)
    try:
        loop = asyncio.get_running_loop()

        async def probe(url: str) -> tuple[int, str]:
            return await loop.run_in_executor(None, get, url)

        status: tuple[int, str] = (0, "")
        for _ in range(150):
            status = await probe(f"http://127.0.0.1:{health}/healthz")
            if status[0] == 200 or proc.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert status[0] == 200, (tmp_path / "operator.log").read_text()[-3000:]
        code, text = await probe(f"http://127.0.0.1:{metrics}/metrics")
        assert code == 200
        assert "qwen_operator_evaluation_seconds" in text

        body: dict[str, Any] = {
            "apiVersion": "serving.qwenops.io/v1alpha1",
            "kind": "QwenService",
            "metadata": {"name": "qwen", "namespace": "ml"},
            "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}},
        }
        await emulator.put(QSVC, body)
        await eventually(lambda: emulator.get(DEPLOY, "ml", "qwen"), within=20, what="the vLLM Deployment")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert code == 0, f"exit {code} on SIGTERM: {(tmp_path / 'operator.log').read_text()[-3000:]}"
