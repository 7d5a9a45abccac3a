"""qwen-operator: serve Qwen models with vLLM on Kubernetes, and autoscale them."""

__version__ = "0.1.0"
