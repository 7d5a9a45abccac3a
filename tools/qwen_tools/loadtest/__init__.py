"""The load-testing kit: a Locust file for the OpenAI-compatible chat API of a QwenService."""
