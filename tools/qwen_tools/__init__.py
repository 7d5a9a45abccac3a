"""Tooling beside the qwen-operator runtime, never inside it: the fleet simulator and benchmark
(``sim``), the Kubernetes API emulator (``emulator``), the demo, the load-test kit (``loadtest``) and
the chart rendering (``install``). None of it is in the operator image."""
