"""The chat page a QwenService deploys with ``spec.chatUI.enabled``: a Gradio chat with a login, that
streams chat completions from the service's own OpenAI-compatible endpoint.

Settings (environment; the operator sets them):
- ``QWEN_CHAT_BASE_URL``: the service's OpenAI base URL, e.g. ``http://qwen.ml.svc:8000/v1``;
- ``QWEN_CHAT_MODEL``: the served model name;
- ``QWEN_CHAT_USERNAME``, ``QWEN_CHAT_PASSWORD``: the login (from the Secret the QwenService names);
- ``QWEN_CHAT_API_KEY``: the service's API key, when it has one (sent as a bearer token);
- ``QWEN_CHAT_TITLE``; ``QWEN_CHAT_MAX_TOKENS`` (default 1024); ``QWEN_CHAT_TIMEOUT`` seconds (300);
- ``QWEN_CHAT_TLS_CERT``, ``QWEN_CHAT_TLS_KEY``: a certificate and its key, to serve HTTPS;
- ``QWEN_CHAT_LOGIN_ATTEMPTS`` (default 5): failed logins a client may make per minute, after which it
  is answered 429 until the minute has passed;
- Gradio's own: ``GRADIO_SERVER_NAME``, ``GRADIO_SERVER_PORT``.

It refuses to start without a user name and password: the page is never served open. Secret values
lose one trailing line end (``echo secret > file`` adds one).
"""

from __future__ import annotations

import collections
import html
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import Any

import gradio as gr
import httpx
from starlette.middleware import Middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
SECRETS = ("QWEN_CHAT_USERNAME", "QWEN_CHAT_PASSWORD", "QWEN_CHAT_API_KEY")
NOTICE = "Not answered"  # the title of the page's own notes in the conversation (never sent to the model)
log = logging.getLogger("qwen-chat")


class LoginLimiter:
    """ASGI middleware: a client (by address) that failed ``attempts`` logins within ``window`` seconds
    is answered 429, with Retry-After, until the oldest of them is that old; a success forgets its
    failures. Other clients are not affected."""

    def __init__(
        self,
        app: ASGIApp,
        attempts: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.attempts, self.window, self.clock = app, attempts, window, clock
        self.failures: dict[str, collections.deque[float]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != "/login":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        now = self.clock()
        failed = self.failures.setdefault(client, collections.deque())
        while failed and failed[0] <= now - self.window:
            failed.popleft()
        if len(failed) >= self.attempts:
            wait = max(1, int(failed[0] + self.window - now + 0.999))
            body = json.dumps({"detail": f"Too many failed logins: try again in {wait} s."}).encode()
            headers = [(b"content-type", b"application/json"), (b"retry-after", str(wait).encode())]
            await send({"type": "http.response.start", "status": 429, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, receive, sending)
        if status and status[0] == 200:
            self.failures.pop(client, None)
        else:
            failed.append(now)
        if len(self.failures) > 10_000:  # many clients: forget those with nothing recent
            for key in [k for k, v in self.failures.items() if not v or v[-1] <= now - self.window]:
                del self.failures[key]


class TitledPages:
    """ASGI middleware: an HTML page without a ``<title>`` gets one (Gradio's login page has none: it
    titles a page from its config, which it withholds until the person has logged in)."""

    def __init__(self, app: ASGIApp, title: str) -> None:
        self.app, self.title = app, f"<title>{html.escape(title)}</title>".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/html"):
                    start = message  # held until the body is complete
                    return
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                page = b"".join(body)
                if b"<title>" not in page:
                    page = page.replace(b"<head>", b"<head>" + self.title, 1)
                headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(page)).encode())]})
                await send({"type": "http.response.body", "body": page})
                return
            await send(message)

        await self.app(scope, receive, sending)


def secret_value(text: str) -> str:
    """A value from a Secret, without the one line end a file written by ``echo`` ends in."""
    return text.removesuffix("\n").removesuffix("\r")


def _text(content: Any) -> str | None:
    """The text of a message's content as Gradio hands it over: a string, a part
    (``{"type": "text", "text": ...}``), or a list of parts (Gradio 6); files and images have none."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text") if content.get("type", "text") == "text" else None
        return text if isinstance(text, str) else None
    if isinstance(content, list | tuple):
        texts = [t for t in (_text(part) for part in content) if t]
        return "\n".join(texts) if texts else None
    return None


def _messages(message: Any, history: Sequence[Any]) -> list[dict[str, str]]:
    """The conversation as OpenAI messages: Gradio's history (role/content dicts) and the new message.
    The page's own notes (a message it could not get answered) are left out."""
    out = []
    for turn in history:
        role, text = turn.get("role"), _text(turn.get("content"))
        if (turn.get("metadata") or {}).get("title") == NOTICE:
            continue
        if role in ("user", "assistant") and text:
            out.append({"role": role, "content": text})
    out.append({"role": "user", "content": _text(message) or ""})
    return out


class NotAnswered(Exception):
    """The model did not answer; the message says what the person at the page can do."""


def _not_answered(exc: Exception) -> NotAnswered:
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status >= 500:
            return NotAnswered(f"The model is busy or restarting (HTTP {status}). Try again in a minute.")
        return NotAnswered(f"The model refused the question (HTTP {status}). Tell your administrator.")
    if isinstance(exc, httpx.TimeoutException):
        return NotAnswered("The model took too long to answer. Try again in a minute.")
    return NotAnswered(
        "The model is not answering yet: it may be starting, or adding a replica. Try again in a minute."
    )


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
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            for choice in json.loads(data).get("choices") or []:
                answer += (choice.get("delta") or {}).get("content") or ""
            yield answer


def build(settings: dict[str, str]) -> gr.Blocks:
    base_url, model = settings["QWEN_CHAT_BASE_URL"], settings["QWEN_CHAT_MODEL"]
    api_key = settings.get("QWEN_CHAT_API_KEY") or None
    max_tokens = int(settings.get("QWEN_CHAT_MAX_TOKENS", "1024"))
    timeout = float(settings.get("QWEN_CHAT_TIMEOUT", "300"))
    title = settings.get("QWEN_CHAT_TITLE", "Qwen chat")

    def respond(message: Any, history: list[Any]) -> Iterator[Any]:
        answer = ""
        try:
            for answer in stream(base_url, model, _messages(message, history), api_key, max_tokens, timeout):
                yield answer
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: a malformed event
            log.warning("the model at %s did not answer: %s", base_url, str(exc).splitlines()[0][:200])
            note = gr.ChatMessage(
                role="assistant", content=str(_not_answered(exc)), metadata={"title": NOTICE}
            )
            yield [answer, note] if answer else note

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        with gr.Row(equal_height=True):
            gr.Markdown(f"## {title}")
            # This session only: the page has one login, which other people may be using elsewhere.
            gr.Button("Log out", link="/logout?all_session=false", size="sm", scale=0, min_width=100)
        gr.ChatInterface(respond, description=f"{model}, served by vLLM", analytics_enabled=False)
    return page


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = dict(os.environ)
    for key in SECRETS:
        if key in settings:
            settings[key] = secret_value(settings[key])
    missing = [k for k in ("QWEN_CHAT_BASE_URL", "QWEN_CHAT_MODEL") if not settings.get(k)]
    user, password = settings.get("QWEN_CHAT_USERNAME", ""), settings.get("QWEN_CHAT_PASSWORD", "")
    if not user or not password:
        missing.append("QWEN_CHAT_USERNAME and QWEN_CHAT_PASSWORD (the page is never served without a login)")
    if missing:
        print(f"qwen chat: missing settings: {', '.join(missing)}", file=sys.stderr)
        return 2
    cert, key = settings.get("QWEN_CHAT_TLS_CERT") or None, settings.get("QWEN_CHAT_TLS_KEY") or None
    attempts = int(settings.get("QWEN_CHAT_LOGIN_ATTEMPTS", "5"))
    build(settings).queue().launch(
        auth=(user, password),
        auth_message="Sign in with the user name and password your administrator gave you.",
        server_name=settings.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(settings.get("GRADIO_SERVER_PORT", "7860")),
        ssr_mode=False,
        show_error=True,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_verify=False,  # Gradio's own check of its local URL (the certificate names the Service)
        app_kwargs={
            "middleware": [
                Middleware(LoginLimiter, attempts=attempts),
                Middleware(TitledPages, title=settings.get("QWEN_CHAT_TITLE", "Qwen chat")),
            ]
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
