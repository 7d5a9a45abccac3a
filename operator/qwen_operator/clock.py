"""The wall clock, read here only: the pure core is given the time, never reads it."""

from __future__ import annotations

import datetime


def utcnow() -> datetime.datetime:
    """Exact: a window of N seconds is N seconds (the status rounds its times to whole seconds)."""
    return datetime.datetime.now(datetime.UTC)
