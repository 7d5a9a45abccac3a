"""A local HTTP server that streams OpenAI chat completions as vLLM does (one token per chunk, a usage
chunk, ``[DONE]``): the load kit's and the chat page's tests talk to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    """Streams ``max_tokens`` chunks, ``delay`` seconds apart; ``fail`` answers 503 to every completion;
    with an ``api_key``, a request without ``Authorization: Bearer <key>`` gets 401, as vLLM's --api-key."""

    def __init__(
        self, model: str = "tiny", delay: float = 0.002, fail: bool = False, api_key: str | None = None
    ) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _refused(self) -> bool:
                if api_key is None or self.headers.get("Authorization") == f"Bearer {api_key}":
                    return False
                data = b'{"error": "Unauthorized"}'
                self.send_response(401)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return True

            def do_GET(self) -> None:
                if self._refused():
                    return
                data = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self._refused():
                    return
                outer.bodies.append(body)
                if fail or body.get("model") != model:
                    data = b'{"error": {"message": "busy"}}'
                    self.send_response(503 if fail else 404)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                n = int(body["max_tokens"])
                events = [{"choices": [{"delta": {"content": f"t{i} "}}]} for i in range(n)]
                events.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": n}})
                for event in events:
                    self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                    time.sleep(delay)
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
