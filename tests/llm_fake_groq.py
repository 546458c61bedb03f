"""A stand-in for Groq's HTTP API, for tests: the real `groq` client talks to it.

It speaks the OpenAI-compatible streaming protocol (`POST /openai/v1/chat/completions`,
SSE `data: {chat.completion.chunk}` ... `data: [DONE]`, chunked transfer) and can be told
to fail the way Groq fails: 401, 429, 500, a stall before the first token, or a dropped
connection after some text. It records every request it gets.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERRORS = {
    "401": (401, "Invalid API Key", "invalid_api_key"),
    "429": (429, "Rate limit reached for model, please try again in 7.5s", "rate_limit_exceeded"),
    "500": (500, "Internal Server Error", "internal_server_error"),
}


class FakeGroq:
    ANSWER = "Paris is the capital of France. It is known for the Eiffel Tower."

    def __init__(self) -> None:
        self.mode = "ok"  # ok | 401 | 429 | 500 | stall | drop
        self.answer = self.ANSWER
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # ends stalls (set at teardown)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                      "body": body})
                if self.path != "/openai/v1/chat/completions":
                    return self._error(404, "Unknown request URL", "unknown_url")
                if fake.mode in ERRORS:
                    return self._error(*ERRORS[fake.mode])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                model = body.get("model", "")
                self._event({"role": "assistant", "content": ""}, model)
                if fake.mode == "stall":  # headers and the role chunk, then nothing
                    fake.release.wait(30)
                    return self._close()
                words = fake.answer.split(" ")
                for index, word in enumerate(words):
                    self._event({"content": word if index == 0 else " " + word}, model)
                    if fake.mode == "drop" and index == 2:
                        return self._close()  # connection lost mid-answer, no final chunk
                self._event({}, model, finish="stop", usage={"prompt_tokens": 42, "completion_tokens": len(words),
                                                              "total_tokens": 42 + len(words)})
                self._send(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _event(self, delta: dict[str, Any], model: str, finish: str | None = None,
                       usage: dict[str, int] | None = None) -> None:
                chunk: dict[str, Any] = {
                    "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "system_fingerprint": "fp_test",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
                if usage:
                    chunk["x_groq"] = {"id": "req_test", "usage": usage}
                self._send(b"data: " + json.dumps(chunk).encode() + b"\n\n")

            def _send(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _close(self) -> None:
                self.close_connection = True
                self.wfile.flush()

            def _error(self, status: int, message: str, code: str) -> None:
                data = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                             "code": code}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
