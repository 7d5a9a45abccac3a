"""What the scaler keeps for each service between evaluations, by the service's uid, in one place with
one ``forget``: a service deleted and created again under its name is a new service, and starts from
its status."""

from __future__ import annotations

import datetime
from collections.abc import Collection
from dataclasses import dataclass, field

from qwen_operator import scaling


@dataclass
class Memory:
    # The scaling state; its durable part is also in the status, for a restart (last_evaluated lives
    # only here).
    states: dict[str, scaling.State] = field(default_factory=dict)
    # When this process last wrote the service's status (its live figures are refreshed at most once
    # in QWEN_OPERATOR_STATUS_REFRESH_SECONDS while the decision holds).
    refreshed: dict[str, datetime.datetime] = field(default_factory=dict)

    def forget(self, alive: Collection[str]) -> None:
        """Drop every service whose uid is not in ``alive``."""
        for table in (self.states, self.refreshed):
            for uid in [uid for uid in table if uid not in alive]:
                del table[uid]
