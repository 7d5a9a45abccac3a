"""The CLI a user runs, and the operator's settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from qwen_operator import cli, crd, settings
from qwen_operator.settings import OperatorSettings
from tests.conftest import EXAMPLES, ROOT
from tests.k8s import api_server_errors, validate_k8s


def test_render_prints_valid_objects_for_every_example(capsys):
    assert cli.main(["render", *map(str, EXAMPLES)]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [o["kind"] for o in objects]
    assert kinds.count("Deployment") == kinds.count("Service") == len(EXAMPLES)
    # The AWQ example asks for a NetworkPolicy; every one gets a PodDisruptionBudget by default.
    assert set(kinds) == {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"}
    for obj in objects:
        validate_k8s(obj)
        assert api_server_errors(obj) == []


def test_render_rejects_an_invalid_file_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "serving.qwenops.io/v1alpha1",
                "kind": "QwenService",
                "metadata": {"name": "q"},
                "spec": {"model": {"name": "Q"}, "engine": {"extraArgs": ["--model=x"]}},
            }
        )
    )
    assert cli.main(["render", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "QwenService q is invalid" in err
    assert "--model=x" in err


def test_render_says_when_a_file_holds_no_qwenservice(tmp_path, capsys):
    empty = tmp_path / "x.yaml"
    empty.write_text("kind: ConfigMap\n")
    assert cli.main(["render", str(empty)]) == 1
    assert "no QwenService" in capsys.readouterr().err


def test_crds_command_prints_the_generated_crd(capsys):
    assert cli.main(["crds"]) == 0
    assert capsys.readouterr().out == crd.crd_yaml()


def test_readme_spec_reference_matches_the_model():
    readme = (ROOT / "README.md").read_text()
    assert crd.with_reference(readme) == readme, "README's spec reference drifted: run `make crds`"


def test_readme_settings_table_matches_the_settings_model():
    readme = (ROOT / "README.md").read_text()
    assert settings.with_settings(readme) == readme, "README's settings table drifted: run `make crds`"
    assert "`QWEN_OPERATOR_METRICS_SOURCE` | `prometheus`" in readme


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("QWEN_OPERATOR_NAMESPACES", "ml, serving")
    monkeypatch.setenv("QWEN_OPERATOR_PROMETHEUS_URL", "http://prom:9090")
    s = OperatorSettings()
    assert s.namespaces == ["ml", "serving"]
    assert s.prometheus_url == "http://prom:9090"
    monkeypatch.delenv("QWEN_OPERATOR_NAMESPACES")
    assert OperatorSettings().namespaces == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == "qwen-operator 0.1.0"


@pytest.mark.parametrize("name", ["Qwen7B", "qwen.7b", "7b-qwen", "q" * 64])
def test_render_refuses_a_name_the_api_server_or_the_service_would_refuse(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        f"apiVersion: serving.qwenops.io/v1alpha1\nkind: QwenService\nmetadata: {{name: '{name}'}}\n"
        "spec: {model: {name: Qwen/Qwen2.5-7B-Instruct}}\n"
    )
    assert cli.main(["render", str(path)]) == 1
    assert "metadata.name" in capsys.readouterr().err


def test_run_without_a_cluster_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "KUBECONFIG" in err
    assert "make demo" in err


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS", "https://gw/team-a/../team-b", "'..' segment"),
        ("QWEN_OPERATOR_PROMETHEUS_ALLOWED_URLS", "Team-A=https://gw/", "not a namespace name"),
        ("QWEN_OPERATOR_PROMETHEUS_URL", "http://prom\\x.monitoring.svc", "backslash"),
    ],
)
def test_run_refuses_a_setting_it_cannot_read_exactly_in_one_line(
    variable: str, value: str, said: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert cli.main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"qwen-operator run: {variable}: ")
    assert said in err


def _opening_comment(path: Path) -> str:
    """An example's first comment paragraph, without the `kubectl apply` line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ").rstrip()
        if not text.startswith("kubectl "):
            lines.append(text)
    return " ".join(lines)


def test_readme_examples_table_is_each_example_s_opening_comment() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Examples", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(examples/[^`]+\.yaml)` \| (.+) \|$", section, re.M))
    files = sorted(p.relative_to(ROOT).as_posix() for p in EXAMPLES)
    assert sorted(rows) == files, "every example has a row, and every row an example"
    for name, what in rows.items():
        assert what == _opening_comment(ROOT / name), f"{name}: the README says something else"


def test_readme_kubectl_get_sample_shows_replicas_each_example_can_have() -> None:
    readme = (ROOT / "README.md").read_text()
    sample = readme.split("$ kubectl get qsvc\n", 1)[1].split("```", 1)[0].splitlines()[1:]
    specs = {}
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        specs[doc["metadata"]["name"]] = doc["spec"]
    assert sample
    for row in sample:
        name, model, ready, replicas = row.split()[:4]
        spec = specs[name]
        assert model == spec["model"]["name"]
        auto = spec.get("autoscaling") or {}
        if auto.get("enabled"):
            assert auto.get("minReplicas", 1) <= int(replicas) <= auto["maxReplicas"], row
        else:
            assert int(replicas) == spec.get("replicas", 1), (
                f"{name} is fixed at {spec.get('replicas', 1)}: {row}"
            )
        assert int(ready) <= int(replicas)


def test_a_misspelt_field_gets_the_closest_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = {
        "model": {"name": "Q"},
        "engine": {"maxModelLenn": 100},
        "autoscaling": {"enabled": True, "minReplica": 1},
        "networkPolicy": {"allowFrom": [{"podSelectr": {"app": "gw"}}]},
        "zzz": 1,
    }
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"apiVersion": api_version(), "kind": "QwenService", "metadata": {"name": "q"}, "spec": spec}
        )
    )
    assert cli.main(["render", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.engine.maxModelLenn: no such field: did you mean maxModelLen?" in err
    assert "spec.autoscaling.minReplica: no such field: did you mean minReplicas?" in err
    assert "spec.networkPolicy.allowFrom[0].podSelectr: no such field: did you mean podSelector?" in err
    assert "spec.zzz: no such field" in err
    assert "Extra inputs are not permitted" not in err


def api_version() -> str:
    return "serving.qwenops.io/v1alpha1"
