"""Names, labels and annotations shared by the renderers, the reconciler and the scaler (pure)."""

from __future__ import annotations

MANAGED_BY = "qwen-operator"
APP_NAME = "vllm"
COMPONENT = "inference-server"

SERVICE_LABEL = "serving.qwenops.io/service"
SPEC_HASH_ANNOTATION = "serving.qwenops.io/spec-hash"
CACHE_KEY_ANNOTATION = "serving.qwenops.io/cache-key"  # on the download Job: the model@revision it fills
CACHE_OF_LABEL = "serving.qwenops.io/model-cache-of"  # the download Job's pods (not the serving pods)
POD_DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select a QwenService's pods; Deployment selectors are immutable, so these never change."""
    return {"app.kubernetes.io/instance": name, SERVICE_LABEL: name}


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(name),
    }


def selector_string(name: str) -> str:
    """The pods' label selector in the string form of the scale subresource (``status.selector``)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def download_labels(name: str) -> dict[str, str]:
    """The model download Job's labels: none of the serving pods' selector (the Service, the scaler and
    the PodDisruptionBudget must never count a download pod as a replica)."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": "model-download",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        CACHE_OF_LABEL: name,
    }


PREPULL_OF_LABEL = "serving.qwenops.io/image-prepull-of"


def prepull_labels(name: str) -> dict[str, str]:
    """The image pre-pull DaemonSet's labels: none of the serving pods' selector either."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": "image-prepull",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        PREPULL_OF_LABEL: name,
    }


def prepull_name(name: str) -> str:
    """The image pre-pull DaemonSet."""
    return _suffixed(name, "-prepull")


CHAT_UI_OF_LABEL = "serving.qwenops.io/chat-ui-of"


def _suffixed(name: str, suffix: str) -> str:
    """``name`` and ``suffix`` in at most 63 characters: a DNS-1035 label (a Service's name) and a label
    value (a Job's name labels its pods)."""
    return f"{name[: 63 - len(suffix)].rstrip('-')}{suffix}"


def chat_ui_name(name: str) -> str:
    """The chat page's Deployment and Service."""
    return _suffixed(name, "-chat")


def download_job_name(name: str) -> str:
    """The model download Job."""
    return _suffixed(name, "-download")


def chat_ui_selector(name: str) -> dict[str, str]:
    """The chat page's pods: none of the model's selector (the model's Service, scaler and budget must
    never count one)."""
    return {"app.kubernetes.io/component": "chat-ui", CHAT_UI_OF_LABEL: name}


def chat_ui_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "qwen-chat-ui",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **chat_ui_selector(name),
    }


ROUTER_OF_LABEL = "serving.qwenops.io/router-of"


def router_name(name: str) -> str:
    """The router's Deployment, ServiceAccount, Role, RoleBinding, budget and NetworkPolicy."""
    return _suffixed(name, "-router")


def engines_name(name: str) -> str:
    """The Service of the vLLM pods behind the router (the router watches its EndpointSlices)."""
    return _suffixed(name, "-engines")


def router_selector(name: str) -> dict[str, str]:
    """The router's pods: none of the model's selector (the scaler and the budget of the vLLM pods must
    never count one)."""
    return {"app.kubernetes.io/component": "router", ROUTER_OF_LABEL: name}


def router_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "qwen-router",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **router_selector(name),
    }


EPP_OF_LABEL = "serving.qwenops.io/endpoint-picker-of"


def epp_name(name: str) -> str:
    """The endpoint picker's Deployment, Service, ConfigMap, ServiceAccount, Role and RoleBinding."""
    return _suffixed(name, "-epp")


def epp_selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/component": "endpoint-picker", EPP_OF_LABEL: name}


def epp_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "endpoint-picker",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **epp_selector(name),
    }
