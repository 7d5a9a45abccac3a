"""The chat page a QwenService deploys with ``spec.chatUI.enabled``: a Gradio chat with a login, that
streams chat completions from the service's own OpenAI-compatible endpoint.

Settings (environment; the operator sets them):
- ``QWEN_CHAT_BASE_URL``: the service's OpenAI base URL, e.g. ``http://qwen.ml.svc:8000/v1``;
- ``QWEN_CHAT_MODEL``: the served model name;
- ``QWEN_CHAT_USERNAME``, ``QWEN_CHAT_PASSWORD``: the login (from the Secret the QwenService names);
- ``QWEN_CHAT_API_KEY``: the service's API key, when it has one (sent as a bearer token);
- ``QWEN_CHAT_TITLE``; ``QWEN_CHAT_MAX_TOKENS`` (default 1024); ``QWEN_CHAT_TIMEOUT`` seconds (300);
- Gradio's own: ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``.

It refuses to start without a user name and password: the page is never served open.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import httpx


def _messages(message: str, history: Sequence[Any]) -> list[dict[str, str]]:
    """The conversation as OpenAI messages: Gradio's history (role/content dicts) and the new message."""
    out = []
    for turn in history:
        role, content = turn.get("role"), turn.get("content")
        if role in ("user", "assistant") and isinstance(content, str):
            out.append({"role": role, "content": content})
    out.append({"role": "user", "content": message})
    return out


def stream(
    base_url: str,
    model: str,
    messages: list[dict[str, str]],
    api_key: str | None,
    max_tokens: int,
    timeout: float,
) -> Iterator[str]:
    """The answer so far, after each streamed chunk (server-sent events, as vLLM sends them)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    payload = {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens}
    answer = ""
    with httpx.stream(
        "POST", f"{base_url.rstrip('/')}/chat/completions", json=payload, headers=headers, timeout=timeout
    ) as response:
        if response.status_code != 200:
            response.read()
            raise gr.Error(f"the model answered HTTP {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            for choice in json.loads(data).get("choices") or []:
                answer += (choice.get("delta") or {}).get("content") or ""
            yield answer


def build(settings: dict[str, str]) -> gr.ChatInterface:
    base_url, model = settings["QWEN_CHAT_BASE_URL"], settings["QWEN_CHAT_MODEL"]
    api_key = settings.get("QWEN_CHAT_API_KEY") or None
    max_tokens = int(settings.get("QWEN_CHAT_MAX_TOKENS", "1024"))
    timeout = float(settings.get("QWEN_CHAT_TIMEOUT", "300"))

    def respond(message: str, history: list[Any]) -> Iterator[str]:
        try:
            yield from stream(base_url, model, _messages(message, history), api_key, max_tokens, timeout)
        except httpx.HTTPError as exc:
            raise gr.Error(f"the model at {base_url} did not answer: {exc}") from exc

    return gr.ChatInterface(
        respond,
        title=settings.get("QWEN_CHAT_TITLE", "Qwen chat"),
        description=f"{model}, served by vLLM",
        analytics_enabled=False,
    )


def main() -> int:
    settings = dict(os.environ)
    missing = [k for k in ("QWEN_CHAT_BASE_URL", "QWEN_CHAT_MODEL") if not settings.get(k)]
    user, password = settings.get("QWEN_CHAT_USERNAME", ""), settings.get("QWEN_CHAT_PASSWORD", "")
    if not user or not password:
        missing.append("QWEN_CHAT_USERNAME and QWEN_CHAT_PASSWORD (the page is never served without a login)")
    if missing:
        print(f"qwen chat: missing settings: {', '.join(missing)}", file=sys.stderr)
        return 2
    build(settings).queue().launch(
        auth=(user, password),
        auth_message="Sign in with the user name and password your administrator gave you.",
        server_name=settings.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(settings.get("GRADIO_SERVER_PORT", "7860")),
        ssr_mode=False,
        show_error=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
