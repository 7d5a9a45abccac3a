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


def default_concurrency(
    gpu_product: str | None, tensor_parallel_size: int = 1, max_num_seqs: int | None = None
) -> float:
    """The concurrency target for a GPU product (``NVIDIA-A100-SXM4-80GB``); 24 for any other card.

    The per-GPU values were measured for one model on one GPU per replica, so a replica spread over
    several GPUs (tensor parallelism, a larger model) gets the generic 24. Either way the target is at
    most ``max_num_seqs``: beyond it requests only queue, and the scaler would wait for a queue to grow
    before adding a replica."""
    tokens = set((gpu_product or "").upper().split("-"))
    value = DEFAULT_CONCURRENCY
    if tensor_parallel_size == 1:
        value = next((v for need, v in TUNED_CONCURRENCY if need <= tokens), DEFAULT_CONCURRENCY)
    return float(min(value, max_num_seqs)) if max_num_seqs else value


# SLO mode's seed for one replica's capacity, before the scaler has learned it from the pods: the peak
# throughput of a 7B-class model (bf16, one GPU) alone in each kind of token, (prompt tok/s, generated
# tok/s at a batch of 32), from the same calibration as the fleet simulator (docs/benchmark.md,
# "Calibration"). The scaler starts at a part of it (planner.seed_share) and corrects it.
DEFAULT_CAPACITY = (6000.0, 820.0)
SEED_CAPACITY: tuple[tuple[frozenset[str], tuple[float, float]], ...] = (
    (frozenset({"L4"}), (4000.0, 430.0)),
    (frozenset({"A10G"}), (6000.0, 820.0)),
    (frozenset({"A100", "80GB"}), (15000.0, 2670.0)),
    (frozenset({"H100"}), (45000.0, 3760.0)),
)


def seed_capacity(gpu_product: str | None, tensor_parallel_size: int = 1) -> tuple[float, float]:
    """(prompt, generated) tokens per second one replica on ``gpu_product`` serves at peak; a replica
    over several GPUs (a larger model) gets the generic seed, which learning corrects."""
    tokens = set((gpu_product or "").upper().split("-"))
    if tensor_parallel_size != 1:
        return DEFAULT_CAPACITY
    return next((v for need, v in SEED_CAPACITY if need <= tokens), DEFAULT_CAPACITY)
