"""A local node for the kmock cluster: the ReplicaSet controller, kubelet and endpoints controller, with
real vLLM server processes as the pods' containers.

For every Deployment the operator owns, the agent keeps ``spec.replicas`` pods:
- **start**: a Pod object (labels, annotations, owner from the template), and a vLLM OpenAI server
  started from the template's container exactly as rendered (``vllm serve`` becomes
  ``python -m vllm.entrypoints.openai.api_server``, which is how this vLLM distribution starts), on its
  own 127.0.0.1 port. Volume mounts become folders: ``hostPath`` volumes their path, ``emptyDir``
  volumes a folder of the pod's (so ``/tmp`` and ``/cache`` stay inside the pod's folder);
- **ready**: once the readiness probe's path answers 200, the Pod's ``Ready`` condition turns True, and
  the pod joins the endpoints file (what a Service would balance over); the Pod's conditions and its
  container's start are stamped as a kubelet would, so the operator measures the cold start's phases;
- **scale down**: the pod with the lowest ``pod-deletion-cost`` goes first (then unready, then newest),
  as the ReplicaSet controller picks; it is marked terminating and leaves the endpoints at once, then
  the agent runs the ``preStop`` hook, sends SIGTERM to the server (vLLM drains for
  ``--shutdown-timeout``), and kills what is left after ``terminationGracePeriodSeconds``;
- **status**: the Deployment's replica counts; Prometheus' file_sd targets for every pod (with the
  ``__meta_kubernetes_*`` labels kubernetes_sd would attach).

Every step is stamped in ``timeline`` (wall-clock seconds) for the test's assertions and artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from qwen_operator import labels
from qwen_tools.demo import free_port
from qwen_tools.emulator import DEPLOY, ENDPOINTSLICES, PODS, SERVICE, Emulator, now, pod_status

ENTRYPOINT = ["-m", "vllm.entrypoints.openai.api_server"]
FINALIZER = "e2e.qwenops.io/node-agent"


@dataclass
class LocalPod:
    namespace: str
    name: str
    deployment: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]
    template: dict[str, Any]
    started: float
    ready_at: float | None = None
    created: str = ""  # the Pod's creationTimestamp (the API's clock, whole seconds)
    terminating_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    log: Path = field(default_factory=Path)
    cores: set[int] = field(default_factory=set)
    host: str = "127.0.0.1"
    router: bool = False  # a router pod (spec.routing): not a vLLM server

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def container_command(container: dict[str, Any], python: str, port: int) -> list[str]:
    """The rendered container's command line for a local vLLM: ``vllm serve MODEL ...`` becomes the
    api_server module with ``--model MODEL``; ``--host``/``--port`` are this node's."""
    command, args = list(container.get("command") or []), list(container.get("args") or [])
    if command[:2] != ["vllm", "serve"] or not args or args[0].startswith("-"):
        raise ValueError(f"unexpected vLLM command: {command} {args[:2]}")
    out = [python, *ENTRYPOINT, "--model", args[0]]
    rest = args[1:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in ("--host", "--port") and i + 1 < len(rest):
            i += 2
            continue
        out.append(flag)
        i += 1
    return [*out, "--host", "127.0.0.1", "--port", str(port)]


def router_command(container: dict[str, Any], python: str, host: str, port: int) -> list[str]:
    """The router's container (the image's entrypoint is ``qwen-router``, its arguments as rendered),
    on this node's address: ``--host``/``--port`` are the pod's."""
    args, out, i = list(container.get("args") or []), [], 0
    while i < len(args):
        if args[i] in ("--host", "--port") and i + 1 < len(args):
            i += 2
            continue
        out.append(args[i])
        i += 1
    return [python, "-m", "qwen_router", *out, "--host", host, "--port", str(port)]


def mount_map(pod_spec: dict[str, Any], container: dict[str, Any], folder: Path) -> dict[str, Path]:
    """mountPath -> local folder, for the container's hostPath and emptyDir mounts (not /dev/shm)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    out: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        path = mount["mountPath"]
        volume = volumes.get(mount["name"], {})
        if path.startswith("/dev/"):
            continue
        if "hostPath" in volume:
            out[path] = Path(volume["hostPath"]["path"])
        elif "emptyDir" in volume:
            local = folder / "v" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            out[path] = local
        else:
            raise ValueError(f"volume {mount['name']!r}: only hostPath and emptyDir run on this node")
    return out


def remap(value: str, mounts: dict[str, Path]) -> str:
    for path in sorted(mounts, key=len, reverse=True):
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return str(mounts[path]) + value[len(path) :]
    return value


def local_command(container: dict[str, Any], python: str, port: int, mounts: dict[str, Path]) -> list[str]:
    """The container's command with its paths in the pod's folders (the node's interpreter as it is)."""
    interpreter, *args = container_command(container, python, port)
    return [interpreter, *(remap(a, mounts) for a in args)]


class NodeAgent:
    def __init__(
        self,
        emulator: Emulator,
        python: str,
        folder: Path,
        endpoints_file: Path,
        set_targets: Callable[[list[tuple[str, str, str, str]]], None],
        router_python: str | None = None,
        kubeconfig: Path | None = None,
        router_port: int | None = None,
        vllm_nice: int = 0,
    ) -> None:
        # Router pods: the operator's interpreter (qwen_router), each on its own loopback address and
        # one port (the operator reads them there, QWEN_OPERATOR_ROUTER_METRICS_PORT).
        self.router_python, self.kubeconfig = router_python, kubeconfig
        self.router_port = router_port or free_port()
        self.routers_started = 0
        # On a node of two cores the router pods share the servers' cores; with vllm_nice the servers
        # yield to them, as routers with CPUs of their own would not wait for the servers' turns.
        self.vllm_nice = vllm_nice
        self.slices: set[tuple[str, str]] = set()
        self.emulator = emulator
        self.python = python
        self.folder = folder
        self.endpoints_file = endpoints_file
        self.set_targets = set_targets
        self.pods: dict[str, LocalPod] = {}
        self.timeline: list[dict[str, Any]] = []
        self.crashes: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._written: tuple[Any, ...] | None = None
        self._session: aiohttp.ClientSession | None = None

    def note(self, event: str, **data: Any) -> None:
        self.timeline.append({"t": time.time(), "event": event, **data})

    # ------------------------------------------------------------------ pods
    async def _start(self, dep: dict[str, Any]) -> None:
        meta, template = dep["metadata"], dep["spec"]["template"]
        namespace, deployment = meta["namespace"], meta["name"]
        name = f"{deployment}-{secrets.token_hex(3)}"
        folder = self.folder / name
        folder.mkdir(parents=True)
        container = template["spec"]["containers"][0]
        router = container["name"] == "router"
        host = "127.0.0.1"
        if router:
            self.routers_started += 1
            host, port = f"127.0.0.{50 + self.routers_started % 200}", self.router_port
            argv = router_command(container, self.router_python or self.python, host, port)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "POD_NAMESPACE": namespace,
                "KUBECONFIG": str(self.kubeconfig),
            }
        else:
            mounts = mount_map(template["spec"], container, folder)
            port = free_port()
            argv = local_command(container, self.python, port, mounts)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "TMPDIR": str(mounts.get("/tmp", folder)),
                "VLLM_CACHE_ROOT": str(folder / "vllm-cache"),
                "XDG_CACHE_HOME": str(folder / "xdg-cache"),
                **{
                    e["name"]: remap(str(e["value"]), mounts)
                    for e in container.get("env") or []
                    if "value" in e
                },
            }
        cores = self._cores(container)
        log = folder / ("router.log" if router else "vllm.log")
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: ASYNC220  (returns at once; the server runs apart)
                argv,
                env=env,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: (os.sched_setaffinity(0, cores), os.nice(0 if router else self.vllm_nice)),
            )
        pod = LocalPod(namespace, name, deployment, port, folder, process, template, time.time(), log=log)
        pod.cores, pod.host, pod.router = cores, host, router
        self.pods[name] = pod
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment,
            "uid": meta.get("uid", ""),
            "controller": True,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": dict(template["metadata"].get("labels") or {}),
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [owner],
                # The kubelet's hold on a deleted pod until its containers are gone (the emulator keeps
                # an object with a finalizer as Terminating, with a deletionTimestamp).
                "finalizers": [FINALIZER],
            },
            "spec": template["spec"],
            # Scheduled on this node, no init containers, the container started with the process.
            "status": {
                **pod_status(now(), now(), container=container["name"]),
                "podIP": host,
                "hostIP": "127.0.0.1",
            },
        }
        pod.created = (await self.emulator.put(PODS, body))["metadata"]["creationTimestamp"]
        self.note("pod-started", pod=name, port=port, cores=sorted(cores), argv=argv)

    def _cores(self, container: dict[str, Any]) -> set[int]:
        """Whole CPUs for the pod, as many as it requests, the least used first (like the kubelet's
        static CPU manager), so that a starting server does not fight a busy one for the same core."""
        request = str((container.get("resources") or {}).get("requests", {}).get("cpu", "1"))
        count = max(1, math.ceil(float(request[:-1]) / 1000 if request.endswith("m") else float(request)))
        usage = dict.fromkeys(sorted(os.sched_getaffinity(0)), 0)
        for pod in self.pods.values():
            if pod.exited_at is None:
                for core in pod.cores:
                    usage[core] = usage.get(core, 0) + 1
        return set(sorted(usage, key=lambda c: (usage[c], c))[:count])

    async def _probe(self, pod: LocalPod) -> bool:
        container = pod.template["spec"]["containers"][0]
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {"path": "/health"}
        assert self._session is not None
        try:
            async with self._session.get(f"http://{pod.address}{probe['path']}", timeout=2) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _victims(self, live: list[LocalPod], count: int) -> list[LocalPod]:
        def cost(pod: LocalPod) -> int:
            obj = self.emulator.get(PODS, pod.namespace, pod.name) or {}
            annotations = obj.get("metadata", {}).get("annotations") or {}
            return int(annotations.get(labels.POD_DELETION_COST_ANNOTATION, 0))

        return sorted(live, key=lambda p: (cost(p), p.ready_at is not None, -p.started))[:count]

    async def _terminate(self, pod: LocalPod) -> None:
        """What the kubelet does with a deleted pod: preStop, SIGTERM, grace, SIGKILL."""
        pod.terminating_at = time.time()
        self.note("pod-terminating", pod=pod.name)
        await self.emulator.remove(PODS, pod.namespace, pod.name)  # Terminating, held by the finalizer
        spec = pod.template["spec"]
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        container = spec["containers"][0]
        pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command")
        if pre_stop:
            if pre_stop[0] == "sleep":
                await asyncio.sleep(float(pre_stop[1]))
            else:
                proc = await asyncio.create_subprocess_exec(*pre_stop)
                await proc.wait()
        self.note("pod-sigterm", pod=pod.name)
        with contextlib.suppress(ProcessLookupError):
            pod.process.send_signal(signal.SIGTERM)
        await _exited(pod.process, grace - (time.time() - pod.terminating_at))
        if pod.process.poll() is None:
            self.note("pod-killed", pod=pod.name)
        _kill_group(pod.process)
        pod.exited_at, pod.exit_code = time.time(), pod.process.returncode
        self.note("pod-exited", pod=pod.name, code=pod.exit_code)
        await self.emulator.patch(PODS, pod.namespace, pod.name, {"metadata": {"finalizers": None}})
        del self.pods[pod.name]

    async def kill(self, name: str) -> None:
        """A pod lost at once, as when its node fails (a test's doing, not a crash): SIGKILL, no
        preStop, gone from the API at once; its Deployment gets a new one at the next sync."""
        pod = self.pods.pop(name)
        pod.terminating_at = time.time()
        _kill_group(pod.process)
        pod.exited_at, pod.exit_code = time.time(), pod.process.returncode
        self.note("pod-killed", pod=name, by="test")
        await self.emulator.patch(PODS, pod.namespace, name, {"metadata": {"finalizers": None}})
        await self.emulator.remove(PODS, pod.namespace, name)

    # ------------------------------------------------------------------ loop
    async def sync(self) -> None:
        for dep in self.emulator.items(DEPLOY):
            if (dep["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") != labels.MANAGED_BY:
                continue
            ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
            mine = [p for p in self.pods.values() if (p.namespace, p.deployment) == (ns, name)]
            live = [p for p in mine if p.terminating_at is None]
            desired = int(dep["spec"].get("replicas", 1))
            for _ in range(desired - len(live)):
                await self._start(dep)
            if len(live) > desired:
                for pod in self._victims(live, len(live) - desired):
                    pod.terminating_at = time.time()
                    task = asyncio.create_task(self._terminate(pod))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            for pod in live:
                if pod.terminating_at is not None:
                    continue
                if pod.process.poll() is not None:
                    self.crashes.append(f"{pod.name} exited with {pod.process.returncode} (log: {pod.log})")
                    pod.terminating_at = time.time()
                    self.note("pod-crashed", pod=pod.name, code=pod.process.returncode)
                    continue
                if pod.ready_at is None and await self._probe(pod):
                    pod.ready_at = time.time()
                    self.note("pod-ready", pod=pod.name, seconds=round(pod.ready_at - pod.started, 1))
                    container = pod.template["spec"]["containers"][0]["name"]
                    ready = pod_status(pod.created, pod.created, now(), container)
                    await self.emulator.patch(PODS, ns, pod.name, {"status": ready}, sub="status")
            serving = [p for p in self.pods.values() if p.deployment == name and p.terminating_at is None]
            ready = sum(1 for p in serving if p.ready_at is not None)
            counts = {
                "replicas": len(serving),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": len(serving),
                "observedGeneration": dep["metadata"].get("generation", 1),
            }
            if {k: (dep.get("status") or {}).get(k) for k in counts} != counts:
                await self.emulator.patch(DEPLOY, ns, name, {"status": counts}, sub="status")
        self._publish()
        await self._endpoint_slices()

    async def _endpoint_slices(self) -> None:
        """The endpoints controller's EndpointSlices for the engines' Services (``NAME-engines``, with
        the router): one slice per ready vLLM pod (each pod has its own port here), gone with it."""
        want: dict[tuple[str, str], dict[str, Any]] = {}
        for pod in self.pods.values():
            service = labels.engines_name(pod.deployment)
            if pod.router or not pod.ready_at or pod.terminating_at is not None:
                continue
            if self.emulator.get(SERVICE, pod.namespace, service) is None:
                continue
            want[pod.namespace, pod.name] = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": "IPv4",
                "endpoints": [
                    {
                        "addresses": [pod.host],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace},
                    }
                ],
                "ports": [{"name": "http", "port": pod.port, "protocol": "TCP"}],
            }
        for key in self.slices - set(want):
            await self.emulator.remove(ENDPOINTSLICES, *key)
            self.note("endpointslice-removed", pod=key[1])
        for key in set(want) - self.slices:
            await self.emulator.put(ENDPOINTSLICES, want[key])
            self.note("endpointslice", pod=key[1])
        self.slices = set(want)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.crashes.append(f"terminating a pod failed: {task.exception()!r}")

    def _publish(self) -> None:
        """Endpoints (ready, not terminating) and Prometheus targets (every running pod), when changed."""
        endpoints = sorted(
            p.address for p in self.pods.values() if p.ready_at and p.terminating_at is None and not p.router
        )
        targets = sorted(
            (p.address, p.namespace, p.name, p.template["metadata"]["labels"].get(labels.SERVICE_LABEL, ""))
            for p in self.pods.values()
            if p.exited_at is None and not p.router
        )
        if self._written == (endpoints, targets):
            return
        self._written = (endpoints, targets)
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{e}\n" for e in endpoints))
        tmp.replace(self.endpoints_file)
        self.set_targets(targets)
        self.note("endpoints", endpoints=endpoints)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as self._session:
            while not stop.is_set():
                try:
                    await self.sync()
                except Exception as exc:  # the test fails on it, with the cause
                    self.crashes.append(f"the node agent failed: {exc!r}\n{traceback.format_exc()}")
                    raise
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            for task in list(self._tasks):
                with contextlib.suppress(Exception):
                    await task

    async def shutdown(self, grace: float = 30) -> None:
        """The end of the test: SIGTERM every server, SIGKILL what is left after ``grace`` seconds."""
        for pod in self.pods.values():
            with contextlib.suppress(ProcessLookupError):
                pod.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(_exited(p.process, grace) for p in self.pods.values()))
        self.close()

    def close(self) -> None:
        """Kill every server process group the agent started (the end of the test, or a failure)."""
        for pod in list(self.pods.values()):
            _kill_group(pod.process)


async def _exited(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for the process to exit (off the event loop)."""
    try:
        await asyncio.to_thread(process.wait, max(seconds, 0.0))
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
