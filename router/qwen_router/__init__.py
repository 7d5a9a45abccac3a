"""qwen-router: one endpoint per model in front of a QwenService's vLLM pods.

- :mod:`.picker` (pure): which engine a request goes to: its session's, or one its prompt's leading
  text went to before (prefix affinity, with bounded load), else the one with the least prompt work
  pending, then the fewest requests outstanding.
- :mod:`.hold`: requests held while no engine is ready, in a bounded queue with deadlines.
- :mod:`.app`: the OpenAI-compatible pass-through (streaming), its limits and its metrics.
- :mod:`.endpoints`: the ready engines, from the engines' Service's EndpointSlices (or a fixed list).
"""
