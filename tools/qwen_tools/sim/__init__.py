"""What-if simulation of a QwenService fleet: vLLM replicas, a cluster, scaling policies, scoring.

Pure Python and deterministic for a seed. The policy "ours" is the operator's real
:func:`qwen_operator.scaling.decide`, fed the same Observation type the Prometheus source produces.
"""
