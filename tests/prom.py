"""A real Prometheus server (the Debian package) for tests: 127.0.0.1, its own data dir, 1 s scrapes.

Targets are given through file_sd with the ``__meta_kubernetes_*`` labels kubernetes_sd would attach,
and the scrape job applies the relabel rules of ``examples/prometheus/scrape-config.yaml`` unchanged,
so the documented config is what the tests exercise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from tests.fakevllm import free_port

SCRAPE_CONFIG = ROOT / "examples" / "prometheus" / "scrape-config.yaml"
BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"


class Prometheus:
    def __init__(
        self, workdir: Path, scrape_interval: str = "1s", extra_jobs: Sequence[dict[str, Any]] = ()
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = workdir / "targets.json"
        self.targets.write_text("[]")
        job = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"][0]
        job.pop("kubernetes_sd_configs")
        job["scrape_interval"] = scrape_interval
        job["scrape_timeout"] = scrape_interval
        job["file_sd_configs"] = [{"files": [str(self.targets)], "refresh_interval": "1s"}]
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": "5s"},
            "scrape_configs": [job, *extra_jobs],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                BINARY,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Prometheus did not become ready in 30 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def set_targets(self, pods: list[tuple[str, str, str, str]]) -> None:
        """(address, namespace, pod, service) per vLLM pod, labelled as kubernetes_sd labels a pod."""
        groups = [
            {
                "targets": [address],
                "labels": {
                    "__meta_kubernetes_namespace": namespace,
                    "__meta_kubernetes_pod_name": pod,
                    "__meta_kubernetes_pod_label_serving_qwenops_io_service": service,
                    "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by": "qwen-operator",
                    "__meta_kubernetes_pod_container_port_name": "http",
                },
            }
            for address, namespace, pod, service in pods
        ]
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(self.targets)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        result: list[dict[str, Any]] = self.get(f"/api/v1/query?query={quote(promql)}")["data"]["result"]
        return result

    def _query_counter(self) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def query_requests(self) -> float:
        """How many instant queries this Prometheus has served (its own counter, once it settles:
        Prometheus counts a request after the answer has gone out)."""
        last = self._query_counter()
        while True:
            time.sleep(0.3)
            now = self._query_counter()
            if now == last:
                return now
            last = now

    def wait_for_series(self, pods: int, within: float = 20) -> None:
        """Wait until ``pods`` distinct pods have been scraped (a pod may have several engines)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            series = self.query('vllm:num_requests_running{serving_qwenops_io_service!=""}')
            if len({(s["metric"]["namespace"], s["metric"]["pod"]) for s in series}) >= pods:
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not scrape {pods} vLLM pods within {within} s")
