"""Parse a QwenService and find what the schema cannot catch (pure).

The CRD's schema and CEL rules reject most bad input at ``kubectl apply``. This module is the second
line: objects stored before a CRD upgrade, clusters where validation was bypassed, and checks that
need more than CEL. Every message names the field and says what to do.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from qwen_operator import api, vllm_flags


class InvalidSpec(ValueError):
    """A QwenService that cannot work; ``messages`` tell the user what to change."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that holds the field at ``loc`` (its last part), walking the QwenService's
    annotations: lists by index, optional fields by their model."""
    node: Any = api.QwenService
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an item of a list: its type is already the list's item
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
        field = next((f for name, f in node.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        node = _item(field.annotation)
    return node if isinstance(node, type) and issubclass(node, BaseModel) else None


def _item(annotation: Any) -> Any:
    """The model inside an annotation: ``X | None``, ``list[X]``, ``Annotated[X, ...]``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0] if len(args) == 1 else annotation
            if len(args) != 1:
                return annotation
        elif origin in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """For a field the model does not have: the closest one it has."""
    model, name = _model_at(loc), loc[-1] if loc else None
    if model is None or not isinstance(name, str):
        return ""
    fields = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if close:
        return f": did you mean {close[0]}?"
    return f" (the fields here: {', '.join(sorted(fields))})" if len(fields) <= 12 else ""


def _pydantic_messages(exc: ValidationError) -> list[str]:
    messages = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        where = _loc(loc)
        if err["type"] == "extra_forbidden":
            message = f"{where}: no such field{_did_you_mean(loc)}"
        else:
            message = f"{where}: {err['msg']}" if where else err["msg"]
        messages.append(message)
    return messages


@dataclass(frozen=True)
class Policy:
    """What the operator's admin allows beyond the safe defaults (settings, chart values)."""

    allow_host_path: bool = False
    allow_root: bool = False


def policy_errors(spec: api.QwenServiceSpec, policy: Policy) -> list[str]:
    """What this operator's admin does not allow (the CRD cannot know the admin's choice)."""
    errors = []
    if spec.model.source.host_path is not None and not policy.allow_host_path:
        errors.append(
            "spec.model.source.hostPath: mounting a node path is not allowed by this operator "
            "(its admin can allow it with QWEN_OPERATOR_ALLOW_HOST_PATH / chart podSecurity.allowHostPath); "
            "use a pvc or hub source"
        )
    if spec.security.run_as_user == 0 and not policy.allow_root:
        errors.append(
            "spec.security.runAsUser: 0 (root) is not allowed by this operator (its admin can allow it with "
            "QWEN_OPERATOR_ALLOW_ROOT / chart podSecurity.allowRoot); use a non-root UID such as 1000"
        )
    return errors


def semantic_errors(spec: api.QwenServiceSpec) -> list[str]:
    errors: list[str] = []
    e = spec.engine
    for arg in e.extra_args:
        flag = vllm_flags.managed_option(arg, api.MANAGED_FLAGS)
        if flag is not None:
            errors.append(
                f"spec.engine.extraArgs: {arg!r} sets {flag}, which the operator manages; "
                "use the spec's field instead (model, engine, apiKeySecretRef, ...)"
            )
        elif e.load_format is not None and vllm_flags.managed_option(arg, api.LOAD_FORMAT_FLAG):
            errors.append(
                f"spec.engine.extraArgs: {arg!r} sets --load-format, which spec.engine.loadFormat sets; "
                "keep one of them"
            )
    for var in e.env:
        if var.name in api.MANAGED_ENV:
            errors.append(f"spec.engine.env: {var.name} is set by the operator; remove it from env")
    if e.enable_auto_tool_choice and not e.tool_call_parser:
        errors.append(
            "spec.engine.enableAutoToolChoice needs spec.engine.toolCallParser (hermes for Qwen2.5)"
        )
    gpus = spec.gpus_per_replica
    if gpus > 0 and gpus % e.tensor_parallel_size:
        errors.append(
            f"spec.resources.gpus ({gpus}) must be a multiple of spec.engine.tensorParallelSize "
            f"({e.tensor_parallel_size})"
        )
    a = spec.autoscaling
    if a.min_replicas > a.max_replicas:
        errors.append(
            f"spec.autoscaling.minReplicas ({a.min_replicas}) must be <= maxReplicas ({a.max_replicas})"
        )
    windows = a.schedule.windows if a.schedule is not None else []
    if spec.routing.router is None and (a.min_replicas == 0 or any(w.min_replicas == 0 for w in windows)):
        errors.append(f"spec.{api.SCALE_TO_ZERO_NEEDS_ROUTER}")
    if spec.model.source.kind != "hub" and ".." in spec.model.name.split("/"):
        errors.append("spec.model.name must not contain '..' path segments")
    return errors + schedule_errors(a)


def schedule_errors(a: api.AutoscalingSpec) -> list[str]:
    """A schedule's time zone must exist, and each window's bounds (the spec's where it sets none)
    must leave some replica count."""
    if a.schedule is None:
        return []
    errors = []
    if a.schedule.zone() is None:
        errors.append(
            f"spec.autoscaling.schedule.timeZone: unknown time zone {a.schedule.time_zone!r} "
            "(an IANA name, such as Europe/Berlin or UTC)"
        )
    for i, w in enumerate(a.schedule.windows):
        lo, hi = w.bounds(a.min_replicas, a.max_replicas)
        if lo > hi:
            errors.append(
                f"spec.autoscaling.schedule.windows[{i}]: minReplicas {lo} > maxReplicas {hi} "
                "(the spec's, where the window sets none)"
            )
    return errors


# The QwenService's name becomes its Service's and its pods' label value: a DNS-1035 label.
SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def name_errors(name: str) -> list[str]:
    if SERVICE_NAME.fullmatch(name):
        return []
    return [
        f"metadata.name {name!r}: the Service the operator creates takes this name, so it must be at most 63 "
        "lowercase letters, digits and '-', starting with a letter and ending with a letter or digit "
        "(e.g. qwen-7b)"
    ]


def parse(body: Mapping[str, Any], policy: Policy | None = None) -> api.QwenService:
    """A QwenService from an API object or a file; raises :class:`InvalidSpec` with every problem.

    With a ``policy``, also what the operator's admin does not allow (hostPath, root)."""
    try:
        svc = api.QwenService.model_validate(dict(body))
    except ValidationError as exc:
        raise InvalidSpec(_pydantic_messages(exc)) from None
    errors = name_errors(svc.metadata.name) + semantic_errors(svc.spec)
    errors += policy_errors(svc.spec, policy) if policy is not None else []
    if errors:
        raise InvalidSpec(errors)
    return svc
