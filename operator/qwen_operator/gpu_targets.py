"""The default concurrency target per GPU, where a QwenService sets none.

Measured, not modelled: each value was swept in the fleet benchmark on the Azure conversation trace
(Qwen2.5-7B, bf16, TP 1: the largest target that kept 99% of requests with TTFT <= 2 s;
docs/autoscaling.md), on the simulator's calibration of that time. Kept apart from the API model so that
re-measuring them touches no schema."""

from __future__ import annotations

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set on nodes by NVIDIA GPU Feature Discovery
DEFAULT_CONCURRENCY = 24.0
# By the tokens of the GPU product label that identify the card.
TUNED_CONCURRENCY: tuple[tuple[frozenset[str], float], ...] = (
    (frozenset({"L4"}), 32.0),
    (frozenset({"A10G"}), 24.0),
    (frozenset({"A100", "80GB"}), 48.0),
)


def default_concurrency(gpu_product: str | None) -> float:
    """The concurrency target for a GPU product (``NVIDIA-A100-SXM4-80GB``); 24 for any other card."""
    tokens = set((gpu_product or "").upper().split("-"))
    return next((value for need, value in TUNED_CONCURRENCY if need <= tokens), DEFAULT_CONCURRENCY)
