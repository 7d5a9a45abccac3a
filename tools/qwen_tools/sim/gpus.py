"""Calibration of one vLLM replica (Qwen2.5-7B-Instruct, bf16, TP 1, --gpu-memory-utilization 0.9) per GPU.

Every input number, and where it comes from, is listed in docs/benchmark.md ("Calibration"). The step-time
model is ``floor + per_seq * seqs + prefill_tokens / prefill_rate + decode_context_bytes / bandwidth``;
``floor`` and ``per_seq`` are solved from two published points: the single-stream decode rate and the step
time at batch 32, both at a 1,000-token context.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import cached_property

GIB = 1024**3
KV_BYTES_PER_TOKEN = 2 * 28 * 4 * 128 * 2  # K and V x 28 layers x 4 KV heads x 128 dims x bf16 = 57,344
WEIGHTS_BYTES = 14.25 * GIB
ACTIVATION_GIB = 1.0  # activations, CUDA graphs and the sampler's buffers that vLLM profiles
KV_BLOCK_TOKENS = 16
CALIBRATION_CONTEXT = 1000  # tokens of context per sequence at which the step times were taken


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bandwidth: float  # bytes/s of HBM/GDDR
    single_stream_tok_s: float  # decode rate of one sequence
    step_b32_s: float  # step time with 32 decoding sequences
    prefill_tok_s: float
    product: str = ""  # the node label nvidia.com/gpu.product (NVIDIA GPU Feature Discovery)
    max_num_seqs: int = 256
    max_batched_tokens: int = 2048
    memory_utilization: float = 0.9
    activation_gib: float = ACTIVATION_GIB
    # The plausible band of the prefill rate (tok/s), low to high: see docs/benchmark.md, "Calibration".
    prefill_band: tuple[float, float] = (0.0, 0.0)
    calibration: str = "nominal"

    @cached_property
    def kv_tokens(self) -> int:
        """Tokens of KV cache vLLM allocates after weights and activations (in whole 16-token blocks)."""
        budget = self.memory_gib * GIB * self.memory_utilization - WEIGHTS_BYTES - self.activation_gib * GIB
        return int(budget // KV_BYTES_PER_TOKEN) // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS

    @property
    def kv_blocks(self) -> int:
        return self.kv_tokens // KV_BLOCK_TOKENS

    def _context_seconds(self, tokens: float) -> float:
        return tokens * KV_BYTES_PER_TOKEN / self.bandwidth

    @cached_property
    def per_seq_s(self) -> float:
        t1 = 1.0 / self.single_stream_tok_s
        extra_context = self._context_seconds(31 * CALIBRATION_CONTEXT)
        return max(0.0, (self.step_b32_s - t1 - extra_context) / 31)

    @cached_property
    def floor_s(self) -> float:
        t1 = 1.0 / self.single_stream_tok_s
        return t1 - self.per_seq_s - self._context_seconds(CALIBRATION_CONTEXT)

    @property
    def context_s_per_token(self) -> float:
        return KV_BYTES_PER_TOKEN / self.bandwidth

    def step_seconds(self, seqs: int, prefill_tokens: int, context_tokens: int) -> float:
        return (
            self.floor_s
            + self.per_seq_s * seqs
            + prefill_tokens / self.prefill_tok_s
            + context_tokens * self.context_s_per_token
        )

    @cached_property
    def peak_decode_tok_s(self) -> float:
        """Decode tokens/s at the largest batch that fits (at the calibration context)."""
        seqs = min(self.max_num_seqs, self.kv_tokens // CALIBRATION_CONTEXT)
        return seqs / self.step_seconds(seqs, 0, seqs * CALIBRATION_CONTEXT)


GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        # The L4 is a 72 W card: its prefill (compute-bound) runs well below the A10G's 150 W.
        GPU("l4", 22.5, 300e9, 15, 0.075, 4000, "NVIDIA-L4", prefill_band=(3000, 4500)),
        GPU("a10g", 22.5, 600e9, 30, 0.039, 6000, "NVIDIA-A10G", prefill_band=(4500, 7000)),
        GPU("v100", 32, 900e9, 45, 0.027, 9000, "Tesla-V100-SXM2-32GB", prefill_band=(6000, 10000)),
        GPU("a100-80gb", 80, 2039e9, 105, 0.012, 15000, "NVIDIA-A100-SXM4-80GB", prefill_band=(12000, 18000)),
        GPU(
            "h100",
            80,
            3350e9,
            155,
            0.0085,
            45000,
            "NVIDIA-H100-80GB-HBM3",
            max_num_seqs=1024,
            max_batched_tokens=8192,
            prefill_band=(30000, 50000),
        ),
    )
}

# The pessimistic end of the decode bands, relative to the nominal figures (docs/benchmark.md).
PESSIMISTIC_DECODE = 0.85  # single-stream decode rate x this
PESSIMISTIC_STEP = 1.2  # step time at batch 32 x this
PESSIMISTIC_ACTIVATION_GIB = 2.25  # leaves ~70k KV tokens on a 24 GB card, the low end of 70-93k


def pessimistic(gpu: GPU) -> GPU:
    """The same card at the slow end of every calibration band: the lowest plausible prefill rate,
    slower decode steps and the smallest plausible KV cache."""
    return replace(
        gpu,
        single_stream_tok_s=gpu.single_stream_tok_s * PESSIMISTIC_DECODE,
        step_b32_s=gpu.step_b32_s * PESSIMISTIC_STEP,
        prefill_tok_s=gpu.prefill_band[0],
        activation_gib=PESSIMISTIC_ACTIVATION_GIB,
        calibration="pessimistic",
    )


def drawn(gpu: GPU, seed: int) -> GPU:
    """The card a run actually has: every figure drawn, for this seed, uniformly from its calibration
    band (docs/benchmark.md), independently. A policy's defaults (the operator's GPU table, a peer's
    target) stay the nominal card's: they do not know the draw, as a user's published figure does not
    know their cluster's card."""
    rng = random.Random(f"{seed}:card:{gpu.name}")
    return replace(
        gpu,
        single_stream_tok_s=gpu.single_stream_tok_s * rng.uniform(PESSIMISTIC_DECODE, 1.0),
        step_b32_s=gpu.step_b32_s * rng.uniform(1.0, PESSIMISTIC_STEP),
        prefill_tok_s=rng.uniform(*gpu.prefill_band),
        activation_gib=rng.uniform(ACTIVATION_GIB, PESSIMISTIC_ACTIVATION_GIB),
        calibration=f"drawn:{seed}",
    )


def card_figures(gpu: GPU) -> dict[str, float | str]:
    """What a run's card was: the figures a draw sets, and what follows from them."""
    return {
        "calibration": gpu.calibration,
        "prefill_tok_s": round(gpu.prefill_tok_s, 1),
        "single_stream_tok_s": round(gpu.single_stream_tok_s, 2),
        "step_b32_s": round(gpu.step_b32_s, 5),
        "kv_tokens": gpu.kv_tokens,
        "peak_decode_tok_s": round(gpu.peak_decode_tok_s, 1),
    }


def model(name: str, calibration: str = "nominal", seed: int | None = None) -> GPU:
    """The card ``name`` at the ``nominal`` or the ``pessimistic`` calibration, or ``drawn`` for a seed."""
    if calibration == "drawn":
        if seed is None:
            raise ValueError("a drawn card needs a seed")
        return drawn(GPUS[name], seed)
    if calibration not in ("nominal", "pessimistic"):
        raise ValueError(f"unknown calibration {calibration!r}")
    return GPUS[name] if calibration == "nominal" else pessimistic(GPUS[name])
