"""The scaler: one loop for the operator that evaluates every QwenService with autoscaling on.

- :mod:`.loop`: when each service is due, and the tick that evaluates the due ones together;
- :mod:`.targets`: joins each due service with its Deployment and ready pods;
- :mod:`.actuate`: the pure decision, and the writes it leads to (replicas, deletion costs, status,
  Events), under the service's lock.
"""

from qwen_operator.scaler.actuate import Evaluated
from qwen_operator.scaler.loop import Autoscaler

__all__ = ["Autoscaler", "Evaluated"]
