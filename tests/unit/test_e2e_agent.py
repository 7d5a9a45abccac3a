"""The e2e node agent's translation of a rendered vLLM container into a local command (tests/e2e/agent.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_operator import api, render
from tests.e2e.agent import container_command, local_command, mount_map, remap


def test_the_rendered_container_becomes_a_local_vllm_command(tmp_path: Path) -> None:
    svc = api.QwenService.model_validate(
        {
            "metadata": {"name": "tiny", "namespace": "e2e"},
            "spec": {
                "model": {"name": "tiny-qwen2", "source": {"hostPath": {"path": "/srv/models"}}},
                "engine": {"maxModelLen": 2048, "env": [{"name": "HF_HOME_X", "value": "/cache/hf"}]},
            },
        }
    )
    template = render.render_deployment(svc)["spec"]["template"]
    container = template["spec"]["containers"][0]
    mounts = mount_map(template["spec"], container, tmp_path)
    assert mounts["/models"] == Path("/srv/models")
    assert mounts["/tmp"] == tmp_path / "v" / "tmp"
    assert "/dev/shm" not in mounts
    # The node's interpreter may itself live under /tmp (a fresh clone there): it is never remapped.
    python, *args = local_command(container, "/tmp/ci/.venv-vllm/bin/python", 41000, mounts)
    assert python == "/tmp/ci/.venv-vllm/bin/python"
    assert args[:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/srv/models/tiny-qwen2"]
    assert args[-4:] == ["--host", "127.0.0.1", "--port", "41000"]
    assert args.count("--port") == 1
    assert "--max-model-len" in args
    assert container_command(container, "python", 1)[4] == "/models/tiny-qwen2"  # before the mapping
    assert remap("/cache/hf", mounts) == str(tmp_path / "v" / "cache" / "hf")
    assert remap("/cachet", mounts) == "/cachet"


def test_an_unexpected_command_is_refused() -> None:
    with pytest.raises(ValueError, match="unexpected vLLM command"):
        container_command({"command": ["python"], "args": ["serve.py"]}, "python", 1)
