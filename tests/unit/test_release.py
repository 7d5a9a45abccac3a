"""The release path: versions in lockstep, the chart's README generated from its values, the workflow."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from qwen_operator import cli
from qwen_tools import release
from tests.conftest import ROOT

CHART = ROOT / "charts" / "qwen-operator"


def test_the_repository_s_versions_are_in_lockstep() -> None:
    found = release.versions(CHART, ROOT / "pyproject.toml")
    assert release.lockstep_errors(found) == []
    assert release.lockstep_errors(found, f"v{found['pyproject.toml version']}") == []


def test_a_version_out_of_step_or_a_wrong_tag_is_named(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["appVersion"] = "9.9.9"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    errors = release.lockstep_errors(release.versions(chart, ROOT / "pyproject.toml"), "v7.0.0")
    assert any(e.startswith("Chart.yaml appVersion is 9.9.9") for e in errors), errors
    assert any("the tag v7.0.0" in e for e in errors), errors
    code = cli.main(["chart", "--chart", str(chart), "--pyproject", str(ROOT / "pyproject.toml"),
                     "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 1
    assert not (tmp_path / "out").exists(), "nothing is packaged when the versions disagree"


def test_a_router_released_out_of_step_is_named(tmp_path: Path) -> None:
    """The router's package and the operator's default router image go with the operator's version."""
    router = tmp_path / "pyproject.toml"
    text = (ROOT / "router" / "pyproject.toml").read_text()
    router.write_text(re.sub(r'(?m)^version = ".*"$', 'version = "0.0.9"', text))
    found = release.versions(CHART, ROOT / "pyproject.toml", router)
    assert release.lockstep_errors(found) == [
        "router/pyproject.toml version is 0.0.9, not " + found["pyproject.toml version"]
    ]
    assert found["the router's default image tag"] == found["pyproject.toml version"]


def test_the_chart_readme_is_generated_from_the_values_and_is_current() -> None:
    assert (CHART / "README.md").read_text() == release.chart_readme(CHART), "run make manifests"
    assert cli.main(["chart-readme", "--chart", str(CHART), "--check"]) == 0


def test_every_value_is_documented_with_the_schema_s_type() -> None:
    values = release.chart_values(CHART)
    keys = {v.key for v in values}
    assert {
        "image.repository",
        "monitoring.prometheusRule.runbookBaseUrl",
        "leaderElection.leaseSeconds",
    } <= keys
    undocumented = [v.key for v in values if not v.description]
    assert undocumented == []
    by_key = {v.key: v for v in values}
    assert by_key["replicaCount"].type == "integer"
    assert by_key["image.repository"].default == '"ghcr.io/qwenops/qwen-operator"'
    assert by_key["monitoring.prometheusRule.thresholds.errorRatio"].default == "0.05"


def test_a_stale_chart_readme_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    values = (chart / "values.yaml").read_text()
    (chart / "values.yaml").write_text(
        values.replace("# -- Image pull policy.", "# -- How to pull the image.")
    )
    assert cli.main(["chart-readme", "--chart", str(chart), "--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_the_release_workflow_checks_the_versions_before_pushing_image_and_chart() -> None:
    flow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    assert flow[True]["push"]["tags"] == ["v*.*.*"]  # YAML 1.1 reads the key `on` as true
    steps = flow["jobs"]["release"]["steps"]
    runs = [s.get("run", "") for s in steps]
    check = next(i for i, r in enumerate(runs) if "qwen-operator chart --tag" in r)
    image = next(
        i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("docker/build-push-action")
    )
    chart = next(i for i, r in enumerate(runs) if "make chart-push" in r)
    assert check < image < chart, "the versions are checked before anything is pushed"
    assert flow["jobs"]["release"]["needs"] == "test", "nothing is pushed before the tests pass"
    assert flow["jobs"]["test"]["steps"][-1]["run"] == ".ci/run"
    assert steps[image]["with"]["tags"] == "${{ env.IMAGE }}:${{ env.VERSION }}", "tagged as the appVersion"
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z-]+)", "\n".join(runs))):
        assert re.search(rf"^{target}:", makefile, re.M), f"make {target} does not exist"


def test_the_notes_point_at_urls_not_repository_paths() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert not re.search(r"(?<![/\w])(examples|docs)/", notes), "a packaged chart has no repository"
