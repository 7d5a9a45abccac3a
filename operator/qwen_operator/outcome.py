"""What a controller did to one QwenService: the Events to post, the writes it made, the status it set.

The shared vocabulary of the reconcile and the scaler (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    writes: int = 0
    status: dict[str, Any] | None = None
