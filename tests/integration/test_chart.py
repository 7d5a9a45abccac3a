"""The Helm chart, rendered by Helm's own Go SDK (helm-python-sdk), and deploy/install.yaml.

Every rendered object is checked against upstream schemas: kubernetes-validate (strict) for built-in
kinds, prometheus-operator's CRD models for ServiceMonitor/PodMonitor/PrometheusRule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring

from qwen_operator import api, cli, crd, kube, urls, validation
from qwen_operator.settings import OperatorSettings
from qwen_tools import install
from tests.conftest import ROOT
from tests.k8s import validate_k8s

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "qwen-operator"
MONITORING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml-platform"}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    }
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "monitoring": MONITORING_ON,
    "custom-image": {
        "image": {
            "repository": "registry.example.com/ml/qwen-operator",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": ["regcred"],
    },
    "prometheus-auth": {
        "rbac": {"prometheusSecrets": True, "prometheusSecretNamespaces": ["inference", "research"]},
        "prometheus": {
            "url": "https://prometheus.monitoring.svc:9091",
            "bearerTokenSecret": {"name": "prom-token"},
            "ca": {"configMap": "prom-ca"},
            "allowedServiceURLs": ["https://prom.research.svc:9090/", "*.monitoring.svc"],
            "allowedServiceURLsByNamespace": {"team-a": ["https://prom.team-a.svc:9090/", "*.team-a.svc"]},
        },
        "podSecurity": {"allowHostPath": True},
        "verbose": True,
        "extraEnv": [{"name": "QWEN_OPERATOR_RESYNC_SECONDS", "value": "120"}],
    },
    "ha": {"replicaCount": 2},
    "basic-auth-namespaced-monitoring": {
        "watchNamespaces": ["inference"],
        "prometheus": {"basicAuthSecret": {"name": "prom-basic"}, "ca": {"secret": "prom-ca"}},
        **MONITORING_ON,
    },
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return install.render(values, chart=CHART)


def only(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's own ClusterRoles (not those aggregated into the built-in user roles)."""
    return [o for o in only(objects, "ClusterRole") if not o["metadata"]["name"].endswith(("-edit", "-view"))]


def watch_rbac(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Roles or RoleBindings other than leader election's (which every install has)."""
    return [o for o in only(objects, kind) if not o["metadata"]["name"].endswith("-leader-election")]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = only(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ------------------------------------------------------------------------------ sources of truth


def test_chart_crds_come_from_the_generator() -> None:
    assert install.chart_crds(CHART) == [crd.crd()], "run `make crds`"
    assert (CHART / "crds" / "qwenservices.yaml").read_text() == (
        ROOT / "crds" / "qwenservices.yaml"
    ).read_text()


def test_install_yaml_is_the_chart_rendered_with_defaults() -> None:
    committed = (ROOT / "deploy" / "install.yaml").read_text()
    assert committed == install.install_yaml(CHART), "deploy/install.yaml drifted: run `make manifests`"
    kinds = [d["kind"] for d in yaml.safe_load_all(committed) if d]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], "namespace and CRDs go first"
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= set(kinds)


def test_chart_version_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    assert chart["version"] == chart["appVersion"] == version[1]


def _keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        out.add(prefix + key)
        if isinstance(value, dict) and value and not key.endswith(("labels", "Labels", "annotations")):
            out |= _keys(value, f"{prefix}{key}.")
    return out


def _schema_keys(node: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, sub in node.get("properties", {}).items():
        out.add(prefix + key)
        if sub.get("additionalProperties") is False:
            out |= _schema_keys(sub, f"{prefix}{key}.")
    return out


def test_values_schema_and_values_yaml_name_the_same_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)  # the defaults pass their own schema
    in_values = {k for k in _keys(values) if not k.startswith(("resources.", "podSecurityContext."))}
    in_values = {k for k in in_values if not k.startswith("securityContext.")}
    assert in_values == _schema_keys(schema), "values.yaml and values.schema.json disagree"


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not match or line.lstrip().startswith("- "):
            continue
        before = lines[i - 1].strip() if i else ""
        parent_is_free_form = any(
            re.match(rf"^\s{{0,{max(len(match[1]) - 2, 0)}}}(labels|annotations|resources):", p)
            for p in lines[max(0, i - 3) : i]
        )
        if not before.startswith("#") and not parent_is_free_form:
            undocumented.append(line.strip())
    assert not undocumented, f"values without a comment: {undocumented}"


# ------------------------------------------------------------------------------ Helm lint and schema


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_lints_strict(name: str) -> None:
    report = helm.lint(str(CHART), VALUE_SETS[name], strict=True, namespace="qwen-operator")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 9}, "/replicaCount"),
        ({"leaderElection": {"leaseSeconds": 1}}, "/leaderElection/leaseSeconds"),
        ({"metricsSource": "datadog"}, "value must be one of 'prometheus', 'pods'"),
        ({"imagee": {"tag": "1"}}, "additional properties 'imagee' not allowed"),
        ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"monitoring": {"prometheusRule": {"thresholds": {"kvCacheUsage": 90}}}}, "kvCacheUsage"),
        ({"monitoring": {"podMonitor": {"interval": "5 seconds"}}}, "/monitoring/podMonitor/interval"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    assert message in str(info.value)
    with pytest.raises(helm.HelmValuesError):
        render(values)  # an install with them fails too


def test_two_ca_sources_fail_the_render() -> None:
    with pytest.raises(helm.HelmError, match="set configMap or secret, not both"):
        render({"prometheus": {"ca": {"configMap": "a", "secret": "b"}}})


# ------------------------------------------------------------------------------ rendered objects


def validate_monitoring(obj: dict[str, Any]) -> None:
    """Against prometheus-operator's CRD models; a field they do not know is an error, not dropped."""
    model = getattr(monitoring, obj["kind"]).model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == obj, "unknown fields"


RESTRICTED_VOLUMES = set(
    [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ]
)


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' "restricted" checks, plus our read-only root filesystem."""
    found = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(key)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            found.append(f"{name}: runs as UID 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds {caps['add']}")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: root filesystem is writable")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{name}: hostPort")
    return found


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_passes_upstream_schemas(name: str) -> None:
    objects = render(VALUE_SETS[name])
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_monitoring(obj)
        else:
            validate_k8s(obj)
    (deployment,) = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert deployment["spec"]["replicas"] == VALUE_SETS[name].get("replicaCount", 1)
    # The replicas elect a leader, so an update may surge: the new pod stands by until the old one goes.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_replicas_elect_a_leader_on_a_lease_in_the_release_namespace() -> None:
    objects = render({"replicaCount": 2})
    env = {e["name"]: e for e in operator_container(objects)["env"]}
    assert env["QWEN_OPERATOR_LEADER_ELECTION_NAMESPACE"]["value"] == "qwen-operator"
    assert (
        env["QWEN_OPERATOR_LEADER_ELECTION_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    )
    settings = {k: e["value"] for k, e in env.items() if "value" in e}
    config = OperatorSettings.model_validate(
        {k.removeprefix("QWEN_OPERATOR_").lower(): v for k, v in settings.items()}
    )
    assert config.leader_election_lease_seconds == 15
    assert config.leader_election_namespace == "qwen-operator"
    (role,) = [r for r in only(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == "qwen-operator"
    assert granted(role["rules"]) == needed(own_namespace=True, features=set())
    (pdb,) = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = only(objects, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not only(render({}), "PodDisruptionBudget"), "one replica: a PDB would block every drain"


def test_namespace_users_get_qwenservices_through_the_built_in_roles() -> None:
    roles = {r["metadata"]["name"]: r for r in only(render({}), "ClusterRole")}
    edit, view = roles["qwen-operator-edit"], roles["qwen-operator-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    group = api.GROUP
    assert {(group, api.PLURAL, v) for v in ("create", "patch", "delete")} <= granted(edit["rules"])
    assert (group, f"{api.PLURAL}/scale", "update") in granted(edit["rules"]), "kubectl scale qsvc"
    assert granted(view["rules"]) == {
        (group, r, v)
        for r in (api.PLURAL, f"{api.PLURAL}/status", f"{api.PLURAL}/scale")
        for v in ("get", "list", "watch")
    }
    assert not any(
        r["metadata"]["name"].endswith("-edit")
        for r in only(render({"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole")
    )
    # No aggregated role reaches what the operator itself may do (Secrets, pods, Leases).
    for role in (edit, view):
        assert {g for g, _, _ in granted(role["rules"])} == {group}


def test_leader_election_timings_that_cannot_work_fail_the_render() -> None:
    with pytest.raises(Exception, match="retrySeconds < renewDeadlineSeconds < leaseSeconds"):
        render({"leaderElection": {"leaseSeconds": 10, "renewDeadlineSeconds": 10, "retrySeconds": 2}})


def test_the_restricted_check_catches_a_weakened_pod() -> None:
    # Helm deletes a default with null.
    objects = render(
        {
            "securityContext": {"allowPrivilegeEscalation": True},
            "podSecurityContext": {"seccompProfile": None},
        }
    )
    pod = only(objects, "Deployment")[0]["spec"]["template"]["spec"]
    problems = restricted_violations(pod)
    assert "operator: allowPrivilegeEscalation must be false" in problems
    assert "operator: seccompProfile None" in problems


def test_operator_settings_come_from_values() -> None:
    container = operator_container(render(VALUE_SETS["prometheus-auth"]))
    values = env(container)
    assert values["QWEN_OPERATOR_PROMETHEUS_URL"] == "https://prometheus.monitoring.svc:9091"
    assert values["QWEN_OPERATOR_PROMETHEUS_BEARER_TOKEN_FILE"] == (
        "/var/run/secrets/qwen-operator/prometheus-token/token"
    )
    assert values["QWEN_OPERATOR_PROMETHEUS_CA_FILE"] == "/etc/qwen-operator/prometheus-ca/ca.crt"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {
        "/tmp",
        "/var/run/secrets/qwen-operator/prometheus-token",
        "/etc/qwen-operator/prometheus-ca",
    } <= mounts
    assert container["args"] == ["run", "--verbose"]
    # Every variable the chart sets is one the operator reads, and parses.
    plain = {k: v for k, v in values.items() if isinstance(v, str)}
    unknown = {
        k for k in values if k.removeprefix("QWEN_OPERATOR_").lower() not in OperatorSettings.model_fields
    }
    assert not unknown, f"the chart sets variables the operator ignores: {unknown}"
    settings = OperatorSettings(**{k.removeprefix("QWEN_OPERATOR_").lower(): v for k, v in plain.items()})
    assert settings.prometheus_url == "https://prometheus.monitoring.svc:9091"
    assert settings.prometheus_allowed_urls == [
        "https://prom.research.svc:9090/",
        "*.monitoring.svc",
        "team-a=https://prom.team-a.svc:9090/",
        "team-a=*.team-a.svc",
    ]
    team_a_only = urls.rules(settings.prometheus_allowed_urls)
    assert urls.allowed(urls.parse("https://prom.team-a.svc:9090/"), team_a_only, "team-a")
    assert not urls.allowed(urls.parse("https://prom.team-a.svc:9090/"), team_a_only, "team-b")
    assert settings.policy() == validation.Policy(allow_host_path=True, allow_root=False)
    defaults = OperatorSettings(
        **{
            k.removeprefix("QWEN_OPERATOR_").lower(): v
            for k, v in env(operator_container(render({}))).items()
            if isinstance(v, str)  # not the pod name from the downward API
        }
    )
    assert defaults.prometheus_allowed_urls == [], "no service URL is allowed by default"
    assert defaults.policy() == validation.Policy(), "hostPath and root are off by default"

    basic = env(operator_container(render(VALUE_SETS["basic-auth-namespaced-monitoring"])))
    assert basic["QWEN_OPERATOR_PROMETHEUS_PASSWORD"] == {
        "secretKeyRef": {"name": "prom-basic", "key": "password"}
    }
    assert basic["QWEN_OPERATOR_NAMESPACES"] == "inference"


def test_probes_hit_the_endpoint_the_operator_serves() -> None:
    objects = render({})
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    default = OperatorSettings().liveness_endpoint or ""
    assert default.endswith(f":{ports['health']}/healthz")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports["metrics"] == OperatorSettings().metrics_port
    (service,) = only(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_only_the_monitoring_namespaces_may_read_the_operator_s_metrics() -> None:
    """The operator's /metrics names every tenant's services: a NetworkPolicy admits the monitoring
    namespaces to its metrics port only, and anyone (the kubelet) to its health port."""
    objects = render({})
    (policy,) = only(objects, "NetworkPolicy")
    container = operator_container(objects)
    (deployment,) = only(objects, "Deployment")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    metrics, health = policy["spec"]["ingress"]
    names = {p["name"] for p in container["ports"]}
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert [p["port"] for p in health["ports"]] == ["health"]
    assert {"metrics", "health"} <= names
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert "from" not in health
    closed = render({"networkPolicy": {"enabled": True, "monitoringNamespaces": []}})
    assert only(closed, "NetworkPolicy")[0]["spec"]["ingress"][0]["from"] == []
    assert not only(
        render({"networkPolicy": {"enabled": False, "monitoringNamespaces": []}}), "NetworkPolicy"
    )


def test_the_chat_page_s_default_image_follows_the_chart() -> None:
    """QWEN_OPERATOR_CHAT_UI_IMAGE: released with the chart (appVersion), or the admin's registry."""
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    default = env(operator_container(render({})))["QWEN_OPERATOR_CHAT_UI_IMAGE"]
    assert default == f"ghcr.io/qwenops/qwen-chat-ui:{app_version}"
    assert OperatorSettings(chat_ui_image=default).render_defaults().chat_ui_image == default
    mirrored = {
        "chatUI": {"image": {"repository": "registry.example.com/qwen-chat-ui", "tag": "", "digest": ""}}
    }
    assert env(operator_container(render(mirrored)))["QWEN_OPERATOR_CHAT_UI_IMAGE"] == (
        f"registry.example.com/qwen-chat-ui:{app_version}"
    )
    digest = "sha256:" + "cd" * 32
    pinned = {"chatUI": {"image": {"repository": "r/chat", "tag": "9", "digest": digest}}}
    assert env(operator_container(render(pinned)))["QWEN_OPERATOR_CHAT_UI_IMAGE"] == f"r/chat@{digest}"


def test_custom_image_and_pull_secrets() -> None:
    pod = only(render(VALUE_SETS["custom-image"]), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/ml/qwen-operator@sha256:" + "ab" * 32
    assert pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    default = only(render({}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert default["image"].endswith(":0.1.0"), "the tag defaults to the chart's appVersion"


# ------------------------------------------------------------------------------ RBAC


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def needed(
    *, cluster_scoped: bool | None = None, features: set[str], own_namespace: bool = False
) -> set[tuple[str, str, str]]:
    return {
        (c.group, c.resource, verb)
        for c in kube.API_CALLS
        if c.own_namespace == own_namespace
        and (cluster_scoped is None or c.cluster_scoped == cluster_scoped)
        and (c.feature is None or c.feature in features)
        for verb in c.verbs
    }


def test_cluster_wide_rbac_is_exactly_the_calls_the_operator_makes() -> None:
    objects = render({})
    (role,) = operator_roles(objects)
    assert not watch_rbac(objects, "Role")
    assert granted(role["rules"]) == needed(cluster_scoped=None, features=set())
    (binding,) = only(objects, "ClusterRoleBinding")
    (account,) = only(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "qwen-operator"}
    ]


def test_namespaced_rbac_uses_roles_in_each_listed_namespace() -> None:
    objects = render(VALUE_SETS["namespaced"])
    roles = watch_rbac(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert granted(role["rules"]) == needed(cluster_scoped=False, features=set())
    assert sorted(b["metadata"]["namespace"] for b in watch_rbac(objects, "RoleBinding")) == [
        "team-a",
        "team-b",
    ]
    (cluster_role,) = operator_roles(objects)
    assert granted(cluster_role["rules"]) == needed(cluster_scoped=True, features=set())


def test_secrets_are_readable_only_when_asked_for_and_never_cluster_wide() -> None:
    def secret_readers(objects: list[dict[str, Any]]) -> dict[str, str]:
        found = {}
        for obj in objects:
            if ("", "secrets", "get") in granted(obj.get("rules", [])):
                found[obj["metadata"].get("namespace", "(cluster)")] = obj["kind"]
        return found

    assert secret_readers(render({})) == {}
    assert secret_readers(render(VALUE_SETS["namespaced"])) == {}
    objects = render(VALUE_SETS["prometheus-auth"])
    assert secret_readers(objects) == {"inference": "Role", "research": "Role"}
    (role,) = operator_roles(objects)
    assert granted(role["rules"]) == needed(cluster_scoped=None, features=set())
    for secret_role in watch_rbac(objects, "Role"):
        assert granted(secret_role["rules"]) == {("", "secrets", "get")}
    bound = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in watch_rbac(objects, "RoleBinding")}
    assert bound == {(ns, secret_role["metadata"]["name"]) for ns in ("inference", "research")}
    # Watching listed namespaces: the Secret Role goes to each of them unless others are named.
    watched = render({"watchNamespaces": ["team-a"], "rbac": {"prometheusSecrets": True}})
    assert secret_readers(watched) == {"team-a": "Role"}


def test_cluster_wide_secret_reads_fail_the_render_with_what_to_set() -> None:
    with pytest.raises(Exception, match=r"rbac\.prometheusSecretNamespaces"):
        render({"rbac": {"prometheusSecrets": True}})


def test_no_rule_uses_a_wildcard() -> None:
    for values in VALUE_SETS.values():
        for obj in render(values):
            for rule in obj.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{obj['kind']} {rule}"


def test_rbac_off_renders_no_roles() -> None:
    kinds = {o["kind"] for o in render({"rbac": {"create": False}})}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# ------------------------------------------------------------------------------ monitoring objects


def test_monitoring_objects_are_optional() -> None:
    kinds = {o["kind"] for o in render({})}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    kinds = {o["kind"] for o in render(MONITORING_ON)}
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_pod_monitor_is_the_documented_one() -> None:
    example = yaml.safe_load((ROOT / "examples" / "prometheus" / "podmonitor.yaml").read_text())
    (rendered,) = only(render(MONITORING_ON), "PodMonitor")
    assert rendered["spec"] == example["spec"]
    assert rendered["spec"]["podTargetLabels"] == ["serving.qwenops.io/service"]
    (scoped,) = only(render(VALUE_SETS["basic-auth-namespaced-monitoring"]), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["inference"]}


def test_service_monitor_selects_the_metrics_service_and_keeps_service_labels() -> None:
    objects = render(MONITORING_ON)
    (monitor,) = only(objects, "ServiceMonitor")
    (service,) = only(objects, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_dashboard_config_map_is_labelled_for_the_grafana_sidecar() -> None:
    (config_map,) = only(render(MONITORING_ON), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(config_map["data"]["qwen-operator.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Replicas: desired, ready, recommended", "Time to first token", "KV-cache usage"} <= titles
    relabelled = only(render({**MONITORING_ON, "prometheus": {"serviceLabel": "qsvc"}}), "ConfigMap")[0][
        "data"
    ]["qwen-operator.json"]
    assert "serving_qwenops_io_service" not in relabelled
    assert "by (namespace, qsvc)" in relabelled


def _lost(ours: Any, back: Any, path: str = "") -> list[str]:
    """Paths of ``ours`` that are missing or changed in ``back`` (what the model dropped or rewrote)."""
    if isinstance(ours, dict) and isinstance(back, dict):
        return [
            p
            for k, v in ours.items()
            for p in ([f"{path}/{k}"] if k not in back else _lost(v, back[k], f"{path}/{k}"))
        ]
    if isinstance(ours, list) and isinstance(back, list) and len(ours) == len(back):
        return [
            p for i, (a, b) in enumerate(zip(ours, back, strict=True)) for p in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if ours == back else [path]


def test_the_dashboard_is_one_grafana_s_own_dashboard_model_reads_whole() -> None:
    """The rendered dashboard through Grafana Labs' generated model (grafana-foundation-sdk, Grafana
    11.6): every field we wrote is one the schema knows and comes back unchanged (a misspelt key, a
    panel field in the wrong place, or a wrong type would be dropped or rewritten). The model does not
    check enums or references, so the test also checks that every panel type is one Grafana ships, that
    ids are unique, that panels do not overlap, and that every $variable a query uses is defined."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    (config_map,) = only(render(MONITORING_ON), "ConfigMap")
    ours = json.loads(config_map["data"]["qwen-operator.json"])
    back = json.loads(json.dumps(Dashboard.from_json(ours), cls=JSONEncoder))
    lost = _lost(ours, back)
    # A query variable's "definition" is what Grafana's editor shows; the 11.6 schema does not list it.
    assert [p for p in lost if not p.endswith("/definition")] == []
    panels = ours["panels"]
    assert {p["type"] for p in panels} <= {"row", "timeseries", "state-timeline", "stat", "table"}
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = [
        (x, y)
        for p in panels
        for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
        for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    defined = {v["name"] for v in ours["templating"]["list"]} | {"__rate_interval"}
    used = {m for p in panels for t in p.get("targets", []) for m in re.findall(r"\$(\w+)", t["expr"])}
    assert used <= defined, used - defined
    # Every QwenService is listed, autoscaled or not: the variables come from the per-service status
    # gauges the operator exports for all of them.
    service_vars = [v for v in ours["templating"]["list"] if v["type"] == "query"]
    assert all("qwen_operator_service_desired_replicas" in v["query"]["query"] for v in service_vars)


def test_notes_tell_what_to_do_next() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        notes = next(
            t
            for p, t in chart.render({}, name="qwen-operator", namespace="ops").items()
            if p.endswith("NOTES.txt")
        )
    assert "kubectl -n ops rollout status deployment/qwen-operator" in notes
    assert "monitoring.podMonitor.enabled=true" in notes


def test_make_chart_packages_the_chart_with_its_readme(tmp_path: Path) -> None:
    """`qwen-operator chart` (make chart): a .tgz Helm can install, the versions in lockstep, the
    generated README inside (what `helm show readme` prints for the OCI artifact)."""
    assert cli.main(["chart", "--chart", str(CHART), "--pyproject", str(ROOT / "pyproject.toml"),
                     "--output", str(tmp_path), "--tag", "v0.1.0"]) == 0  # fmt: skip
    (archive,) = tmp_path.glob("qwen-operator-*.tgz")
    with helm.Chart.load_archive(archive.read_bytes()) as chart:
        assert (chart.metadata["version"], chart.metadata["appVersion"]) == ("0.1.0", "0.1.0")
        files = {f["name"]: f["data"] for f in chart.files}
    assert files["README.md"] == (CHART / "README.md").read_text()


def test_the_install_guide_s_helm_command_labels_every_monitor_for_its_prometheus() -> None:
    """docs/install.md's main Helm command: the PodMonitor, ServiceMonitor and PrometheusRule carry the
    release label kube-prometheus-stack selects on (without it nothing is scraped)."""
    guide = (ROOT / "docs" / "install.md").read_text()
    command = guide.split("## Helm", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    values: dict[str, Any] = {}
    for key, value in re.findall(r"--set ([\w.]+)=(\S+)", command):
        *path, last = key.split(".")
        node = values
        for part in path:
            node = node.setdefault(part, {})
        node[last] = {"true": True, "false": False}.get(value, value)
    objects = render(values)
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule"):
        (monitor,) = only(objects, kind)
        assert monitor["metadata"]["labels"].get("release") == "kube-prometheus-stack", kind
    assert only(objects, "ConfigMap"), "the dashboard"
